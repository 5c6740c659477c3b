//! Jails: the counting policy. `maxretry` failures within `findtime` ban an
//! address for `bantime`; `ignoreip` networks are never counted.
//!
//! A jail is plain data plus pure functions from (state, event, now) to
//! outcomes: no clock, no I/O, so every rule is unit-tested with numbers.

pub mod burst;
pub mod config;
mod escalation;
mod ignore;
pub mod ignore_file;
mod memory;
pub mod names;
pub mod prefix;
mod restore;
pub mod set;
mod spec;
mod times;

pub use crate::decision::{
    ActiveBan, BanDecision, BanReason, Decision, UnbanDecision, UnbanReason,
};
pub use crate::net::{DisplayNet, is_host};
pub use burst::Burst;
pub use config::JailConfig;
pub use escalation::{BanHistory, Escalation, Jitter};
pub use ignore::IgnoreList;
pub use prefix::Sample;
pub use set::{JailSet, JailSetError, RemoteBan};
pub use spec::JailSpec;

use times::Times;

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::duration::{BanTime, Duration, MAX_BANTIME};
use crate::event::{FailureEvent, FailureKind, JailId, Time};

/// A jail's counting policy, resolved from configuration.
#[derive(Clone, Debug)]
pub struct JailPolicy {
    /// Failures within `findtime` that trigger a ban.
    pub maxretry: u32,
    /// The counting window.
    pub findtime: Duration,
    /// How long a ban lasts.
    pub bantime: BanTime,
    /// Addresses that are never counted nor banned.
    pub ignore: IgnoreList,
    /// Most addresses with live failure state; the oldest is evicted first.
    pub max_tracked: usize,
    /// Longer bans for repeat offenders, when enabled.
    pub escalation: Option<Escalation>,
    /// Ban a known attack tool (by user agent) at its first failure.
    pub ban_scanners: bool,
    /// How long a successful registration makes an address trusted.
    pub trust_registered: Option<Duration>,
    /// Failures that ban a trusted address (at least `maxretry`).
    pub trusted_maxretry: u32,
    /// `wrong_call_state` events that ban on their own; 0 = not counted.
    pub wrong_call_state_maxretry: u32,
    /// Failures one failed INVITE authentication counts for, whichever
    /// source recognised it (`invite_weight`, at most
    /// [`MAX_INVITE_WEIGHT`](config::MAX_INVITE_WEIGHT)).
    pub invite_weight: u32,
    /// Ban at once when this many failures arrive this close together
    /// (`burst`), whatever `maxretry` says; `None` = off.
    pub burst: Option<Burst>,
    /// IPv6 sources are counted and banned as their prefix of this many
    /// bits (`ipv6_prefix`; 128 = each address alone; see [`prefix`]).
    pub ipv6_prefix: u8,
}

/// What one failure event did to a jail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The address is in `ignoreip` (or is the host itself).
    Ignored,
    /// The event is older than `findtime`.
    TooOld,
    /// The address is already banned; the event is not counted.
    AlreadyBanned,
    /// Counted; `count` failures now stand within `findtime`.
    Found {
        /// Failures within findtime, this one included.
        count: u32,
    },
    /// Counted, and the count reached `maxretry`.
    Ban(BanDecision),
    /// A success that makes the address trusted for a while.
    Trusted,
}

/// An address as the failure table keys it: 16 bytes, an IPv4 address in
/// its IPv4-mapped IPv6 form. `IpAddr` takes 17 bytes and pads to 24
/// beside the times; a flood of spoofed sources is a million of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key([u8; 16]);

impl From<IpAddr> for Key {
    fn from(a: IpAddr) -> Key {
        Key(match a {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        })
    }
}

impl Key {
    /// The address back (an IPv4-mapped key as IPv4: sources are
    /// canonical, so no IPv6 source has that form).
    fn addr(self) -> IpAddr {
        std::net::Ipv6Addr::from(self.0).to_canonical()
    }
}

/// Counters a jail keeps for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JailCounters {
    /// Failures counted since start.
    pub total_failed: u64,
    /// Bans decided since start.
    pub total_banned: u64,
    /// Bans lifted (expired or by hand) since start.
    pub total_unbanned: u64,
    /// Addresses dropped from tracking to respect `max_tracked`.
    pub evictions: u64,
}

pub use crate::net::{AddrHasher, AddrMap};

/// One jail: policy plus state.
#[derive(Debug)]
pub struct Jail {
    id: JailId,
    name: Arc<str>,
    policy: JailPolicy,
    /// Addresses with live failure state: the newest failure times within
    /// findtime (at most `maxretry` of them), tagged with their creation
    /// number.
    failing: AddrMap<Key, Times>,
    /// Tracked addresses in creation order, for oldest-first eviction;
    /// entries whose address is gone or retagged are stale and skipped.
    order: VecDeque<(Key, u32)>,
    next_seq: u32,
    /// Weak signals (`wrong_call_state`), counted apart with their own
    /// threshold; only addresses that sent one are here.
    weak: AddrMap<IpAddr, Times>,
    /// Addresses that registered successfully, until when they are trusted.
    trusted: AddrMap<IpAddr, i64>,
    /// Bans the kernel accepted: what status, the store and the fleet see.
    banned: AddrMap<IpNet, ActiveBan>,
    /// Bans decided and on their way to the kernel: they already stop
    /// counting (no second decision), but are not "active" until the
    /// firewall accepts them ([`Jail::confirm`]) and are undone if it
    /// refuses ([`Jail::refuse`]).
    pending: AddrMap<IpNet, ActiveBan>,
    /// The banned prefixes (not single hosts), checked per event.
    prefixes: Vec<IpNet>,
    expiries: BinaryHeap<Reverse<(Time, IpNet)>>,
    counters: JailCounters,
    /// The random extra of `bantime_rndtime` (seeded by the set).
    jitter: Jitter,
    /// IPv6 prefixes' samples and log state (kept apart from `failing`).
    v6: prefix::PrefixBook,
}

impl Jail {
    /// A jail with no state.
    pub fn new(id: JailId, name: &str, policy: JailPolicy) -> Jail {
        Jail {
            id,
            name: name.into(),
            policy,
            failing: AddrMap::default(),
            order: VecDeque::new(),
            next_seq: 0,
            weak: AddrMap::default(),
            trusted: AddrMap::default(),
            banned: AddrMap::default(),
            pending: AddrMap::default(),
            prefixes: Vec::new(),
            expiries: BinaryHeap::new(),
            counters: JailCounters::default(),
            jitter: Jitter::default(),
            v6: prefix::PrefixBook::default(),
        }
    }

    /// Seeds the random extra of `bantime_rndtime`.
    pub fn seed(&mut self, seed: u64) {
        self.jitter = Jitter::new(seed);
    }

    /// The jail's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The jail's id.
    pub fn id(&self) -> JailId {
        self.id
    }

    /// The jail's policy.
    pub fn policy(&self) -> &JailPolicy {
        &self.policy
    }

    /// Counters since start.
    pub fn counters(&self) -> JailCounters {
        self.counters
    }

    /// Addresses with live failure state.
    pub fn failing_count(&self) -> usize {
        self.failing.len()
    }

    /// Bans in force: those the kernel accepted.
    pub fn banned(&self) -> &AddrMap<IpNet, ActiveBan> {
        &self.banned
    }

    /// Whether `net` is banned, or its ban is on its way to the kernel.
    pub fn holds(&self, net: &IpNet) -> bool {
        self.banned.contains_key(net) || self.pending.contains_key(net)
    }

    /// The ban of `net` in force or on its way (the newer one).
    pub fn ban_of(&self, net: &IpNet) -> Option<&ActiveBan> {
        self.pending.get(net).or_else(|| self.banned.get(net))
    }

    /// Whether `addr` is covered by one of this jail's bans.
    pub fn is_banned(&self, addr: IpAddr) -> bool {
        let host = IpNet::from(addr);
        self.banned.contains_key(&host)
            || self.pending.contains_key(&host)
            || self.prefix_held(addr)
            || self.prefixes.iter().any(|n| n.contains(&addr))
    }

    /// The firewall accepted `d`: the ban is in force from now on (unless it
    /// was lifted or replaced meanwhile). Returns whether it was.
    pub fn confirm(&mut self, d: &BanDecision) -> bool {
        match self.pending.get(&d.addr) {
            Some(p) if p.start == d.start && p.end == d.end => {}
            _ => return false,
        }
        let Some(b) = self.pending.remove(&d.addr) else {
            return false;
        };
        self.release_pending();
        if let Some(end) = b.end {
            self.expiries.push(Reverse((end, d.addr)));
        }
        self.banned.insert(d.addr, b);
        true
    }

    /// Once every ban of a burst was answered, the map that held them
    /// until the kernel answered gives its memory back (a burst of 100,000
    /// bans grows it to several MB).
    fn release_pending(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > 1024 {
            self.pending = AddrMap::default();
        }
    }

    /// The firewall refused `d`: the ban never was (a ban it was to
    /// replace stays). Returns whether it was still pending.
    pub fn refuse(&mut self, d: &BanDecision) -> bool {
        match self.pending.get(&d.addr) {
            Some(p) if p.start == d.start && p.end == d.end => {}
            _ => return false,
        }
        self.pending.remove(&d.addr);
        self.release_pending();
        if !self.banned.contains_key(&d.addr) {
            if self.scanned(&d.addr) {
                self.prefixes.retain(|p| p != &d.addr);
            }
            self.forget_sample(&d.addr);
        }
        self.counters.total_banned = self.counters.total_banned.saturating_sub(1);
        true
    }

    /// Counts one failure at `now` (the event's own time decides whether it
    /// is inside `findtime`).
    pub fn record(&mut self, ev: &FailureEvent, now: Time, history: &BanHistory) -> Outcome {
        let addr = ev.addr;
        if self.policy.ignore.contains(addr) {
            return Outcome::Ignored;
        }
        // What the failure counts toward: the address, or its IPv6 prefix.
        let (net, protected) = self.count_net_of(addr);
        let key = net.addr();
        let findtime = self.policy.findtime.as_millis();
        // A line dated in the future (clock skew, wrong logtimezone) counts as now.
        let t = ev.time.min(now);
        if ev.kind == FailureKind::Registered {
            return match self.policy.trust_registered {
                Some(d)
                    if self.trusted.len() < self.policy.max_tracked
                        || self.trusted.contains_key(&key) =>
                {
                    self.trusted.insert(key, t.0 + d.as_millis());
                    Outcome::Trusted
                }
                _ => Outcome::Ignored,
            };
        }
        if self.is_banned(addr) {
            return Outcome::AlreadyBanned;
        }
        if t.0 <= now.0 - findtime {
            return Outcome::TooOld;
        }
        let weak = ev.kind == FailureKind::WrongCallState;
        if weak && self.policy.wrong_call_state_maxretry == 0 {
            return Outcome::Ignored;
        }
        let trusted = self.trusted.get(&key).is_some_and(|&until| until > now.0);
        let maxretry = if weak {
            self.policy.wrong_call_state_maxretry
        } else if trusted {
            self.policy.trusted_maxretry.max(self.policy.maxretry)
        } else {
            self.policy.maxretry
        }
        .max(1) as usize;
        let horizon = t.0 - findtime;
        // Applied here, once, for every source: a toll-fraud attempt weighs
        // the same read from a log, the Event Socket or the wire.
        let weight = if ev.kind == FailureKind::InviteAuth {
            self.policy.invite_weight.max(1)
        } else {
            1
        };
        let count = if weak {
            if !self.weak.contains_key(&key) && self.weak.len() >= self.policy.max_tracked.max(1) {
                return Outcome::Ignored;
            }
            match self.weak.get_mut(&key) {
                Some(w) => w.add(t.0, horizon, weight, maxretry),
                None => {
                    self.weak.insert(key, Times::one(t.0, 0));
                    1
                }
            }
        } else {
            let k = Key::from(key);
            // Room is made first (eviction needs the whole jail), and only
            // for a new address in a full table: then one hash and probe
            // per failure, found or inserted.
            if self.failing.len() >= self.policy.max_tracked.max(1)
                && !self.failing.contains_key(&k)
            {
                self.make_room();
            }
            match self.failing.entry(k) {
                Entry::Occupied(o) => o.into_mut().add(t.0, horizon, weight, maxretry),
                Entry::Vacant(v) => {
                    let seq = self.next_seq;
                    self.next_seq = self.next_seq.wrapping_add(1);
                    self.order.push_back((k, seq));
                    let times = v.insert(Times::one(t.0, seq));
                    let n = if weight > 1 {
                        times.add(t.0, horizon, weight - 1, maxretry)
                    } else {
                        1
                    };
                    self.compact_order();
                    n
                }
            }
        };
        self.counters.total_failed += 1;
        self.note_counted(net, addr, protected);
        // A known attack tool is banned at its first failure, where asked.
        let scanner = ev.scanner && self.policy.ban_scanners && !trusted;
        // Machine speed bans at once; a trusted phone keeps its allowance.
        let burst = !weak && !trusted && count < maxretry && self.burst_reached(key, t.0, weight);
        if count >= maxretry || scanner || burst {
            let count = count as u32;
            self.failing.remove(&Key::from(key));
            self.weak.remove(&key);
            let bantime = self.escalated_bantime(&net, history);
            let reason = if burst && !scanner {
                BanReason::Burst
            } else {
                BanReason::Failures
            };
            let decision = self.ban(net, now, bantime, count, reason);
            return Outcome::Ban(decision);
        }
        Outcome::Found {
            count: count as u32,
        }
    }

    /// The ban length for `addr` now, given its earlier bans (with the
    /// random extra of `bantime_rndtime`, if set).
    pub fn escalated_bantime(&mut self, addr: &IpNet, history: &BanHistory) -> BanTime {
        match &self.policy.escalation {
            Some(e) => e.bantime_mixed(
                self.policy.bantime,
                history.prior(&self.name, addr, e.overall_jails),
                &mut self.jitter,
            ),
            None => self.policy.bantime,
        }
    }

    /// The name as shared text (for history keys).
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// Replaces the policy (on reload), keeping failure state and bans.
    pub fn set_policy(&mut self, policy: JailPolicy) {
        let old_len = self.policy.ipv6_prefix;
        self.policy = policy;
        self.prefix_policy_changed(old_len);
    }

    /// Lifts every ban of this jail (manual), returning the decisions.
    pub fn unban_all(&mut self) -> Vec<UnbanDecision> {
        let mut addrs: Vec<IpNet> = self.banned.keys().copied().collect();
        addrs.extend(self.pending.keys().filter(|a| !self.banned.contains_key(a)));
        addrs.into_iter().filter_map(|a| self.unban(a)).collect()
    }

    /// Bans `addr` from `now` for `bantime`. Replaces an existing ban of the
    /// same address.
    pub fn ban(
        &mut self,
        addr: IpNet,
        now: Time,
        bantime: BanTime,
        failures: u32,
        reason: BanReason,
    ) -> BanDecision {
        // Escalation can reach past what the kernel holds: cut there.
        let bantime = match bantime {
            BanTime::For(d) if d > MAX_BANTIME => {
                tracing::warn!(
                    "[{}] ban of {} for {d} cut to {MAX_BANTIME}, the longest the kernel holds",
                    self.name,
                    DisplayNet(&addr)
                );
                BanTime::For(MAX_BANTIME)
            }
            b => b,
        };
        let end = bantime.as_millis().map(|ms| now.plus_millis(ms));
        if self.scanned(&addr) && !self.holds(&addr) {
            self.prefixes.push(addr);
        }
        self.pending.insert(
            addr,
            ActiveBan {
                start: now,
                end,
                failures,
                reason,
            },
        );
        self.counters.total_banned += 1;
        BanDecision {
            jail: self.id,
            jail_name: self.name.clone(),
            addr,
            start: now,
            end,
            bantime,
            failures,
            reason,
        }
    }

    /// Lifts the ban on `addr` and forgets its failures (a clean slate).
    pub fn unban(&mut self, addr: IpNet) -> Option<UnbanDecision> {
        let lifted = self.remove_ban(&addr)?;
        // A clean slate for what was counted as it: an address, or the
        // prefix IPv6 sources are counted as.
        if is_host(&addr) || self.is_count_prefix(&addr) {
            self.failing.remove(&Key::from(addr.network()));
            self.weak.remove(&addr.network());
        }
        Some(UnbanDecision {
            jail: self.id,
            jail_name: self.name.clone(),
            addr,
            reason: UnbanReason::Manual,
            lifted: Some(lifted),
        })
    }

    /// When the next ban runs out, if any.
    pub fn next_expiry(&mut self) -> Option<Time> {
        while let Some(Reverse((end, addr))) = self.expiries.peek().copied() {
            match self.banned.get(&addr) {
                Some(b) if b.end == Some(end) => return Some(end),
                // Stale entry: the ban was lifted or replaced.
                _ => {
                    self.expiries.pop();
                }
            }
        }
        None
    }

    /// Lifts every ban whose time ran out by `now`.
    pub fn expire(&mut self, now: Time) -> Vec<UnbanDecision> {
        let mut out = Vec::new();
        while let Some(end) = self.next_expiry() {
            if end > now {
                break;
            }
            if let Some(Reverse((_, addr))) = self.expiries.pop() {
                // Only the ban in force ends; a replacement on its way
                // carries on (and the enforcer already holds its end).
                if self.banned.remove(&addr).is_some() {
                    self.counters.total_unbanned += 1;
                }
                if self.pending.contains_key(&addr) {
                    continue;
                }
                if self.scanned(&addr) {
                    self.prefixes.retain(|p| p != &addr);
                }
                self.forget_sample(&addr);
                out.push(UnbanDecision {
                    jail: self.id,
                    jail_name: self.name.clone(),
                    addr,
                    reason: UnbanReason::Expired,
                    lifted: None,
                });
            }
        }
        out
    }

    fn remove_ban(&mut self, addr: &IpNet) -> Option<ActiveBan> {
        let pending = self.pending.remove(addr);
        let b = match self.banned.remove(addr) {
            Some(b) => {
                self.counters.total_unbanned += 1;
                b
            }
            None => pending?,
        };
        if self.scanned(addr) {
            self.prefixes.retain(|p| p != addr);
        }
        self.forget_sample(addr);
        Some(b)
    }

    /// The wall clock stepped by `delta_ms`: every time this jail holds
    /// moves with it, so a ban keeps the length it has left (as the
    /// kernel's timeout does) and failures keep their age.
    pub fn shift_clock(&mut self, delta_ms: i64) {
        let shift = |t: &mut Time| t.0 += delta_ms;
        for b in self.banned.values_mut().chain(self.pending.values_mut()) {
            shift(&mut b.start);
            if let Some(e) = &mut b.end {
                shift(e);
            }
        }
        for times in self.failing.values_mut() {
            times.shift(delta_ms);
        }
        for w in self.weak.values_mut() {
            w.shift(delta_ms);
        }
        for until in self.trusted.values_mut() {
            *until += delta_ms;
        }
        self.expiries = self
            .banned
            .iter()
            .filter_map(|(a, b)| Some(Reverse((b.end?, *a))))
            .collect();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The compact key loses nothing: IPv4 and IPv6 sources come back as
    /// given, and an IPv4 address is not confused with any IPv6 one a
    /// source can have (sources are canonical: never IPv4-mapped).
    #[test]
    fn keys_are_distinct_and_give_the_address_back() {
        let addrs: Vec<IpAddr> = [
            "192.0.2.7",
            "0.0.0.0",
            "255.255.255.255",
            "2001:db8::7",
            "::",
            "::1",
            "::c000:207",
            "64:ff9b::c000:207",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let keys: std::collections::HashSet<Key> = addrs.iter().map(|&a| Key::from(a)).collect();
        assert_eq!(keys.len(), addrs.len());
        for a in addrs {
            assert_eq!(Key::from(a).addr(), a);
        }
        assert_eq!(std::mem::size_of::<Key>(), 16);
    }

    /// A policy for tests: 127.0.0.0/8 and 192.0.2.0/24 ignored.
    pub(crate) fn policy(maxretry: u32, findtime: u64, bantime: BanTime) -> JailPolicy {
        JailPolicy {
            maxretry,
            findtime: Duration(findtime),
            bantime,
            ignore: IgnoreList::new(vec![
                "127.0.0.0/8".parse().unwrap(),
                "192.0.2.0/24".parse().unwrap(),
            ]),
            max_tracked: 1000,
            escalation: None,
            ban_scanners: false,
            trust_registered: None,
            trusted_maxretry: 0,
            wrong_call_state_maxretry: 0,
            invite_weight: 1,
            burst: None,
            ipv6_prefix: 128,
        }
    }

    fn ev(addr: &str, secs: i64) -> FailureEvent {
        FailureEvent {
            time: Time(secs * 1000),
            jail: JailId(0),
            addr: addr.parse().unwrap(),
            kind: FailureKind::RegisterAuth,
            user: None,
            scanner: false,
        }
    }

    fn t(secs: i64) -> Time {
        Time(secs * 1000)
    }

    #[test]
    fn bans_at_maxretry_within_findtime() {
        let mut j = Jail::new(
            JailId(0),
            "fs",
            policy(3, 600, BanTime::For(Duration(3600))),
        );
        assert_eq!(
            j.record(&ev("198.51.100.1", 1000), t(1000), &BanHistory::default()),
            Outcome::Found { count: 1 }
        );
        assert_eq!(
            j.record(&ev("198.51.100.1", 1001), t(1001), &BanHistory::default()),
            Outcome::Found { count: 2 }
        );
        let Outcome::Ban(b) = j.record(&ev("198.51.100.1", 1002), t(1002), &BanHistory::default())
        else {
            panic!("expected a ban")
        };
        assert_eq!(b.failures, 3);
        assert_eq!(b.end, Some(t(1002 + 3600)));
        assert_eq!(b.to_string(), "[fs] Ban 198.51.100.1 (3 failures, 1h)");
        // Further failures do not re-ban.
        assert_eq!(
            j.record(&ev("198.51.100.1", 1003), t(1003), &BanHistory::default()),
            Outcome::AlreadyBanned
        );
        assert_eq!(j.counters().total_banned, 1);
        assert_eq!(j.failing_count(), 0);
    }

    #[test]
    fn failures_outside_findtime_do_not_add_up() {
        let mut j = Jail::new(JailId(0), "fs", policy(3, 600, BanTime::For(Duration(60))));
        j.record(&ev("198.51.100.2", 0), t(0), &BanHistory::default());
        j.record(&ev("198.51.100.2", 300), t(300), &BanHistory::default());
        // At 601 the first failure has left the window.
        assert_eq!(
            j.record(&ev("198.51.100.2", 601), t(601), &BanHistory::default()),
            Outcome::Found { count: 2 }
        );
        assert!(matches!(
            j.record(&ev("198.51.100.2", 700), t(700), &BanHistory::default()),
            Outcome::Ban(_)
        ));
    }

    #[test]
    fn old_events_are_ignored_and_future_ones_clamped() {
        let mut j = Jail::new(JailId(0), "fs", policy(2, 600, BanTime::For(Duration(60))));
        assert_eq!(
            j.record(&ev("198.51.100.3", 100), t(1000), &BanHistory::default()),
            Outcome::TooOld
        );
        assert_eq!(
            j.record(&ev("198.51.100.3", 5000), t(1000), &BanHistory::default()),
            Outcome::Found { count: 1 }
        );
        assert!(matches!(
            j.record(&ev("198.51.100.3", 1000), t(1000), &BanHistory::default()),
            Outcome::Ban(_)
        ));
    }

    #[test]
    fn ignoreip_and_ipv6() {
        let mut j = Jail::new(JailId(0), "fs", policy(1, 600, BanTime::Permanent));
        assert_eq!(
            j.record(&ev("192.0.2.77", 10), t(10), &BanHistory::default()),
            Outcome::Ignored
        );
        assert_eq!(
            j.record(&ev("127.0.0.1", 10), t(10), &BanHistory::default()),
            Outcome::Ignored
        );
        let Outcome::Ban(b) = j.record(&ev("2001:db8::5", 10), t(10), &BanHistory::default())
        else {
            panic!("expected a ban")
        };
        assert_eq!(b.end, None);
        assert_eq!(
            b.to_string(),
            "[fs] Ban 2001:db8::5 (1 failures, permanent)"
        );
        assert_eq!(j.next_expiry(), None);
    }

    #[test]
    fn a_burst_of_bans_answered_gives_its_waiting_room_back() {
        let mut j = Jail::new(JailId(0), "fs", policy(1, 600, BanTime::For(Duration(10))));
        let mut bans = Vec::new();
        for i in 0..5_000u32 {
            let a = std::net::Ipv4Addr::from(0xC633_6400 + i);
            bans.push(j.ban(
                IpNet::from(std::net::IpAddr::V4(a)),
                t(0),
                BanTime::For(Duration(10)),
                1,
                BanReason::Failures,
            ));
        }
        assert!(j.pending.capacity() >= 5_000);
        let (last, rest) = bans.split_last().unwrap();
        for b in rest {
            assert!(j.confirm(b));
        }
        assert!(j.pending.capacity() >= 1, "one still waits");
        assert!(j.refuse(last));
        assert_eq!(j.pending.capacity(), 0);
        assert_eq!(j.banned().len(), 4_999);
    }

    #[test]
    fn a_ban_is_in_force_only_once_the_firewall_accepts_it() {
        let mut j = Jail::new(JailId(0), "fs", policy(1, 600, BanTime::For(Duration(10))));
        let h = BanHistory::default();
        let Outcome::Ban(b) = j.record(&ev("198.51.100.4", 0), t(0), &h) else {
            panic!("expected a ban")
        };
        // On its way: no second decision, but not shown as in force.
        assert!(j.banned().is_empty());
        assert_eq!(
            j.record(&ev("198.51.100.4", 1), t(1), &h),
            Outcome::AlreadyBanned
        );
        assert_eq!(j.next_expiry(), None);
        // Refused: it never was, and the address counts again.
        assert!(j.refuse(&b));
        assert_eq!(j.counters().total_banned, 0);
        assert!(!j.is_banned("198.51.100.4".parse().unwrap()));
        let Outcome::Ban(b2) = j.record(&ev("198.51.100.4", 2), t(2), &h) else {
            panic!("expected a ban")
        };
        assert!(!j.confirm(&b), "a stale answer changes nothing");
        assert!(j.confirm(&b2));
        assert_eq!(j.banned().len(), 1);
        assert_eq!(j.next_expiry(), Some(t(12)));
        // A refused replacement leaves the ban in force as it was.
        let longer = j.ban(
            b2.addr,
            t(3),
            BanTime::For(Duration(100)),
            0,
            BanReason::Manual,
        );
        assert!(j.refuse(&longer));
        assert_eq!(j.banned()[&b2.addr].end, Some(t(12)));
        // A prefix refused stops covering its addresses.
        let p = j.ban(
            "203.0.113.0/24".parse().unwrap(),
            t(3),
            BanTime::For(Duration(100)),
            0,
            BanReason::Manual,
        );
        assert!(j.is_banned("203.0.113.9".parse().unwrap()));
        assert!(j.refuse(&p));
        assert!(!j.is_banned("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn expiry_and_manual_unban() {
        let mut j = Jail::new(JailId(0), "fs", policy(1, 600, BanTime::For(Duration(10))));
        for (a, at) in [("198.51.100.4", 0), ("198.51.100.5", 5)] {
            let Outcome::Ban(b) = j.record(&ev(a, at), t(at), &BanHistory::default()) else {
                panic!("expected a ban")
            };
            assert!(j.confirm(&b));
        }
        assert_eq!(j.next_expiry(), Some(t(10)));
        assert!(j.expire(t(9)).is_empty());
        let gone = j.expire(t(10));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].to_string(), "[fs] Unban 198.51.100.4 (expired)");
        let u = j.unban("198.51.100.5/32".parse().unwrap()).unwrap();
        assert_eq!(u.to_string(), "[fs] Unban 198.51.100.5 (manual)");
        assert!(j.expire(t(100)).is_empty());
        assert_eq!(j.next_expiry(), None);
    }

    #[test]
    fn repeat_offenders_get_longer_bans() {
        let mut p = policy(1, 600, BanTime::For(Duration(60)));
        p.escalation = Some(Escalation {
            factor: 1.0,
            multipliers: vec![],
            maxtime: Some(Duration(200)),
            overall_jails: false,
            rndtime: None,
        });
        let mut j = Jail::new(JailId(0), "fs", p);
        let mut h = BanHistory::default();
        let mut lengths = Vec::new();
        // Injected clock: each ban runs out before the next failure.
        for round in 0..4 {
            let now = t(round * 1000);
            j.expire(now);
            let Outcome::Ban(b) = j.record(&ev("198.51.100.9", round * 1000), now, &h) else {
                panic!("expected a ban")
            };
            assert!(j.confirm(&b));
            h.note_ban(j.name_arc(), b.addr, 1);
            lengths.push(b.bantime.to_string());
        }
        assert_eq!(lengths, vec!["1m", "2m", "3m20s", "3m20s"]);
        assert_eq!(j.counters().total_banned, 4);
    }

    #[test]
    fn scanners_trusted_phones_and_weak_signals() {
        let mut p = policy(3, 600, BanTime::For(Duration(60)));
        p.ban_scanners = true;
        p.trust_registered = Some(Duration(86_400));
        p.trusted_maxretry = 6;
        p.wrong_call_state_maxretry = 4;
        let mut j = Jail::new(JailId(0), "esl", p);
        let h = BanHistory::default();
        // A scanner is banned at its first failure.
        let mut e = ev("198.51.100.20", 0);
        e.scanner = true;
        assert!(matches!(
            j.record(&e, t(0), &h),
            Outcome::Ban(BanDecision { failures: 1, .. })
        ));
        // A phone that registered gets trusted_maxretry.
        let mut ok = ev("198.51.100.21", 0);
        ok.kind = FailureKind::Registered;
        assert_eq!(j.record(&ok, t(0), &h), Outcome::Trusted);
        for i in 1..=5 {
            assert_eq!(
                j.record(&ev("198.51.100.21", i), t(i), &h),
                Outcome::Found { count: i as u32 }
            );
        }
        assert!(matches!(
            j.record(&ev("198.51.100.21", 6), t(6), &h),
            Outcome::Ban(_)
        ));
        // Weak signals count apart, at their own threshold.
        let mut w = ev("198.51.100.22", 0);
        w.kind = FailureKind::WrongCallState;
        for i in 1..=3 {
            assert_eq!(j.record(&w, t(i), &h), Outcome::Found { count: i as u32 });
        }
        assert_eq!(
            j.record(&ev("198.51.100.22", 4), t(4), &h),
            Outcome::Found { count: 1 }
        );
        assert!(matches!(j.record(&w, t(5), &h), Outcome::Ban(_)));
        // Off by default: not counted at all.
        let mut j = Jail::new(JailId(0), "esl", policy(3, 600, BanTime::For(Duration(60))));
        assert_eq!(j.record(&w, t(5), &h), Outcome::Ignored);
        assert_eq!(j.record(&ok, t(5), &h), Outcome::Ignored);
    }

    #[test]
    fn weight_counts_more() {
        let mut p = policy(5, 600, BanTime::For(Duration(10)));
        p.invite_weight = 3;
        let mut j = Jail::new(JailId(0), "fs", p);
        let mut e = ev("198.51.100.6", 0);
        e.kind = FailureKind::InviteAuth;
        assert_eq!(
            j.record(&e, t(0), &BanHistory::default()),
            Outcome::Found { count: 3 }
        );
        assert!(matches!(
            j.record(&e, t(1), &BanHistory::default()),
            Outcome::Ban(BanDecision { failures: 5, .. })
        ));
    }

    /// Issue N4: `invite_weight` was applied by the Event Socket source
    /// only; a `(INVITE)` line in freeswitch.log counted 1. The jail applies
    /// it to every INVITE authentication failure, and to nothing else.
    #[test]
    fn invite_weight_applies_to_invite_failures_from_any_source() {
        let mut p = policy(6, 600, BanTime::For(Duration(10)));
        p.invite_weight = 3;
        let mut j = Jail::new(JailId(0), "fs", p);
        let h = BanHistory::default();
        for (i, kind) in [
            FailureKind::RegisterAuth,
            FailureKind::UnknownUser,
            FailureKind::Other,
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = ev("198.51.100.7", 0);
            e.kind = kind;
            assert_eq!(
                j.record(&e, t(0), &h),
                Outcome::Found {
                    count: i as u32 + 1
                },
                "{kind:?} counts 1"
            );
        }
        let mut e = ev("198.51.100.7", 1);
        e.kind = FailureKind::InviteAuth;
        assert!(matches!(
            j.record(&e, t(1), &h),
            Outcome::Ban(BanDecision { failures: 6, .. })
        ));
        // The largest weight bans at the first INVITE failure, at once.
        let mut p = policy(5, 600, BanTime::For(Duration(10)));
        p.invite_weight = config::MAX_INVITE_WEIGHT;
        let mut j = Jail::new(JailId(0), "fs", p);
        let mut e = ev("198.51.100.8", 1);
        e.kind = FailureKind::InviteAuth;
        assert!(matches!(
            j.record(&e, t(1), &h),
            Outcome::Ban(BanDecision { failures: 5, .. })
        ));
    }

    #[test]
    fn prefix_ban_covers_addresses() {
        let mut j = Jail::new(JailId(0), "fs", policy(5, 600, BanTime::For(Duration(10))));
        j.ban(
            "198.51.100.0/24".parse().unwrap(),
            t(0),
            BanTime::Permanent,
            0,
            BanReason::Manual,
        );
        assert_eq!(
            j.record(&ev("198.51.100.99", 0), t(0), &BanHistory::default()),
            Outcome::AlreadyBanned
        );
    }

    #[test]
    fn max_tracked_evicts_oldest_first() {
        let mut p = policy(5, 600, BanTime::For(Duration(10)));
        p.max_tracked = 3;
        let mut j = Jail::new(JailId(0), "fs", p);
        for i in 1..=3 {
            j.record(
                &ev(&format!("198.51.100.{i}"), 0),
                t(0),
                &BanHistory::default(),
            );
        }
        j.record(&ev("198.51.100.4", 1), t(1), &BanHistory::default());
        assert_eq!(j.failing_count(), 3);
        assert_eq!(j.counters().evictions, 1);
        // The oldest (.1) went; .2 still counts.
        assert_eq!(
            j.record(&ev("198.51.100.2", 2), t(2), &BanHistory::default()),
            Outcome::Found { count: 2 }
        );
        // Bounded under a flood of distinct sources.
        for i in 0..10_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            j.record(&ev(&a, 3), t(3), &BanHistory::default());
        }
        assert_eq!(j.failing_count(), 3);
        assert!(j.order.len() <= 2 * 3 + 1024 + 1);
    }

    #[test]
    fn spoofed_flood_stays_bounded_and_the_real_attacker_is_banned() {
        let mut p = policy(5, 600, BanTime::For(Duration(10)));
        p.max_tracked = 1000;
        let mut j = Jail::new(JailId(0), "fs", p);
        let h = BanHistory::default();
        let attacker = "203.0.113.66";
        let mut banned = false;
        // 1,000,000 spoofed one-off sources; the attacker's failures come in
        // pairs spread through the flood.
        for i in 0..1_000_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            j.record(&ev(&a, 1), t(1), &h);
            if i % 200_000 == 0 {
                for _ in 0..2 {
                    if let Outcome::Ban(b) = j.record(&ev(attacker, 1), t(1), &h) {
                        assert_eq!(b.addr.to_string(), "203.0.113.66/32");
                        banned = true;
                    }
                }
            }
            assert!(j.failing_count() <= 1000);
        }
        assert!(banned, "the real attacker is banned despite the flood");
        assert!(j.counters().evictions > 990_000);
    }

    #[test]
    fn sweep_forgets_stale_addresses() {
        let mut j = Jail::new(JailId(0), "fs", policy(5, 600, BanTime::For(Duration(10))));
        j.record(&ev("198.51.100.7", 0), t(0), &BanHistory::default());
        j.record(&ev("198.51.100.8", 500), t(500), &BanHistory::default());
        j.sweep(t(700));
        assert_eq!(j.failing_count(), 1);
    }
}
