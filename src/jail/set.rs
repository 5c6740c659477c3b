//! The registry of running jails: every jail of the daemon, events routed
//! to them by id, manual and shared bans, cluster bans, reload.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;

use super::ignore_file::IgnoreFile;

use super::names::{Change, NameState, ResolvedNames};
use super::spec::JailSpec;
use super::{BanDecision, BanHistory, BanReason, Decision, DisplayNet, Jail, JailPolicy, Outcome};
use crate::duration::MAX_BANTIME;
use crate::event::{FailureEvent, JailId, Time};

mod ignore;
mod manual;

pub use manual::JailSetError;

/// An end that arrived as data (the store, the fleet), cut to what the
/// kernel holds ([`MAX_BANTIME`] from `now`), with a log line when cut.
fn clamp_end(end: Option<Time>, now: Time, jail: &str, net: &IpNet, what: &str) -> Option<Time> {
    let limit = now.plus_millis(MAX_BANTIME.as_millis());
    match end {
        Some(e) if e > limit => {
            tracing::warn!(
                "[{jail}] {what} ban of {} ends at {e}, beyond what the kernel holds; cut to {limit} ({MAX_BANTIME} from now)",
                DisplayNet(net)
            );
            Some(limit)
        }
        e => e,
    }
}

/// A ban another node decided, as the registry takes it.
#[derive(Clone, Debug)]
pub struct RemoteBan<'a> {
    /// The jail's name.
    pub jail: &'a str,
    /// The address or prefix.
    pub addr: IpNet,
    /// When the deciding node began it.
    pub start: Time,
    /// When it ends there (and so here); `None` for permanent.
    pub end: Option<Time>,
    /// Failures the deciding node counted.
    pub failures: u32,
    /// The deciding node.
    pub origin: &'a str,
}

/// One jail's seed from the set's: distinct per jail.
fn jail_seed(seed: u64, id: JailId) -> u64 {
    seed ^ u64::from(id.0).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Most host names protected in every jail (the Redis server, sentinels,
/// masters announced by name through failovers).
pub const MAX_EVERYWHERE_NAMES: usize = 64;

/// The registry of running jails, owned by one task: no locks on the
/// counting path. Pure: no clock (every call takes `now`), no I/O. Jail ids
/// stay stable across reloads (a name keeps its id), so running sources
/// keep working.
#[derive(Debug, Default)]
pub struct JailSet {
    slots: Vec<Option<Jail>>,
    ids: HashMap<String, JailId>,
    specs: HashMap<JailId, JailSpec>,
    history: BanHistory,
    /// This host's addresses, handed in by the daemon.
    own: Vec<IpNet>,
    /// Addresses of cluster peers and of the Redis server.
    peers: Vec<IpNet>,
    /// Host names protected in every jail (the Redis server of `[cluster]`).
    everywhere: Vec<String>,
    /// Every running jail's Event Socket peers, by address and by name:
    /// protected in every jail.
    esl_addrs: Vec<IpNet>,
    esl_names: Vec<String>,
    /// What each host name resolved to.
    resolved: ResolvedNames,
    /// Bumped whenever what the set protects may have changed (see
    /// [`JailSet::protected`]).
    protection: u64,
    /// Seed of the jails' `bantime_rndtime` extras (see [`JailSet::seed`]).
    seed: u64,
    /// What each `ignoreip` file held when last read well.
    files: HashMap<PathBuf, IgnoreFile>,
}

impl JailSet {
    /// A registry running `jails`; `own` are this host's addresses (for
    /// jails with `ignoreself`).
    pub fn new(own: Vec<IpNet>, jails: &[JailSpec]) -> JailSet {
        let mut set = JailSet {
            own,
            ..JailSet::default()
        };
        set.configure(jails);
        set
    }

    /// Seeds the random extra `bantime_rndtime` adds to escalated bans
    /// (the daemon hands in a random number at start; tests a fixed one).
    /// Each jail draws from its own sequence.
    pub fn seed(&mut self, seed: u64) {
        self.seed = seed;
        for j in self.slots.iter_mut().flatten() {
            j.seed(jail_seed(seed, j.id()));
        }
    }

    /// The policy of `spec` with the addresses this set protects on its own.
    fn effective(&self, spec: &JailSpec) -> JailPolicy {
        let mut p = spec.policy.clone();
        if spec.ignoreself {
            p.ignore.extend(self.own.iter().copied());
        }
        // Cluster peers (and the Redis server) are never banned.
        p.ignore.extend(self.peers.iter().copied());
        // Nor the PBXs any jail listens to (banning one in any jail cuts
        // its Event Socket), nor any address of a peer given by name.
        // Rebuilt from every name in use, so an address a refresh dropped
        // stays protected while another name still gives it.
        p.ignore.extend(self.esl_addrs.iter().copied());
        for name in self.esl_names.iter().chain(&self.everywhere) {
            p.ignore.extend(self.resolved.addrs(name).iter().copied());
        }
        // This jail's own ignoreip names and files.
        for name in self.ignore_names_of(spec) {
            p.ignore.extend(self.resolved.addrs(name).iter().copied());
        }
        for f in spec.ignore_files.iter().filter_map(|f| self.files.get(f)) {
            p.ignore.extend(f.nets.iter().copied());
        }
        p
    }

    /// Applies every jail's policy again (what the set adds changed).
    fn refresh_policies(&mut self) {
        let specs: Vec<JailSpec> = self.specs.values().cloned().collect();
        self.configure(&specs);
    }

    /// Applies a (new) set of jails: existing jails keep their state with
    /// the new policy, new ones start empty, and jails no longer configured
    /// are dropped with their bans lifted (returned).
    pub fn configure(&mut self, jails: &[JailSpec]) -> Vec<Decision> {
        // Every change of what is protected comes through here.
        self.protection += 1;
        self.esl_addrs = jails.iter().flat_map(|j| j.peers.iter().copied()).collect();
        self.esl_addrs.sort();
        self.esl_addrs.dedup();
        self.esl_names = jails.iter().flat_map(|j| j.names.iter().cloned()).collect();
        self.esl_names.sort();
        self.esl_names.dedup();
        let mut keep = vec![false; self.slots.len()];
        for jc in jails {
            let p = self.effective(jc);
            let id = match self.ids.get(&jc.name) {
                Some(&id) => id,
                None => {
                    let id = JailId(self.slots.len() as u16);
                    self.slots.push(None);
                    keep.push(false);
                    self.ids.insert(jc.name.clone(), id);
                    id
                }
            };
            let slot = &mut self.slots[usize::from(id.0)];
            match slot {
                Some(j) => j.set_policy(p),
                None => {
                    let mut j = Jail::new(id, &jc.name, p);
                    j.seed(jail_seed(self.seed, id));
                    *slot = Some(j);
                }
            }
            keep[usize::from(id.0)] = true;
            self.specs.insert(id, jc.clone());
        }
        // Files no running jail names any more are forgotten.
        self.files
            .retain(|f, _| jails.iter().any(|j| j.ignore_files.contains(f)));
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if !keep[i] {
                if let Some(mut j) = slot.take() {
                    self.specs.remove(&j.id());
                    tracing::info!(
                        "[{}] jail removed from the configuration; lifting its bans",
                        j.name()
                    );
                    out.extend(j.unban_all().into_iter().map(Decision::Unban));
                }
            }
        }
        out
    }

    /// Every network some part of the set never bans: each running jail's
    /// `ignoreip` and the peers it listens to, this host's addresses (for
    /// every jail, `ignoreself` or not), and the cluster's peers. Blocklist
    /// feeds never drop any of them. A configured list shared by many jails
    /// is taken once.
    pub fn protected(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = self.own.iter().chain(&self.peers).copied().collect();
        let mut shared: Vec<*const crate::net::NetSet> = Vec::new();
        for j in self.jails() {
            let ignore = &j.policy().ignore;
            let ptr = Arc::as_ptr(ignore.configured());
            if !shared.contains(&ptr) {
                shared.push(ptr);
                out.extend(ignore.configured().nets().iter().copied());
            }
            out.extend(ignore.local().nets().iter().copied());
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// A number that changes whenever [`JailSet::protected`] may have
    /// (a reload, a new peer, a peer's name resolved again).
    pub fn protection_generation(&self) -> u64 {
        self.protection
    }

    /// The id of the running jail `name`.
    pub fn jail_id(&self, name: &str) -> Option<JailId> {
        self.ids
            .get(name)
            .copied()
            .filter(|id| self.jail(*id).is_some())
    }

    /// The running jail with id `id`.
    pub fn jail(&self, id: JailId) -> Option<&Jail> {
        self.slots.get(usize::from(id.0)).and_then(Option::as_ref)
    }

    /// The running jails, in id order.
    pub fn jails(&self) -> impl Iterator<Item = &Jail> {
        self.slots.iter().flatten()
    }

    /// Counts a batch of events at `now`; logs what happened and appends the
    /// decisions to enforce.
    pub fn handle(&mut self, batch: &[FailureEvent], now: Time, out: &mut Vec<Decision>) {
        for ev in batch {
            let Some(Some(jail)) = self.slots.get_mut(usize::from(ev.jail.0)) else {
                continue;
            };
            match jail.record(ev, now, &self.history) {
                Outcome::Found { .. } => tracing::info!("[{}] Found {}", jail.name(), ev.addr),
                Outcome::Ban(d) => {
                    tracing::info!("[{}] Found {}", jail.name(), ev.addr);
                    self.history.note_ban(jail.name_arc(), d.addr, 1);
                    out.push(Decision::Ban(d));
                }
                Outcome::AlreadyBanned => {
                    tracing::debug!("[{}] {} already banned", jail.name(), ev.addr)
                }
                Outcome::Trusted => {
                    tracing::debug!("[{}] Trust {} (registered)", jail.name(), ev.addr)
                }
                Outcome::Ignored => {
                    tracing::debug!("[{}] Ignore {} (ignoreip)", jail.name(), ev.addr)
                }
                Outcome::TooOld => {
                    tracing::debug!("[{}] Ignore {} (older than findtime)", jail.name(), ev.addr)
                }
            }
        }
    }

    /// Lifts bans that ran out by `now`.
    pub fn expire(&mut self, now: Time, out: &mut Vec<Decision>) {
        for jail in self.slots.iter_mut().flatten() {
            for u in jail.expire(now) {
                tracing::info!("{u}");
                out.push(Decision::Unban(u));
            }
        }
    }

    /// The earliest ban expiry across jails.
    pub fn next_expiry(&mut self) -> Option<Time> {
        self.slots
            .iter_mut()
            .flatten()
            .filter_map(Jail::next_expiry)
            .min()
    }

    /// The wall clock stepped by `delta_ms` (see [`Jail::shift_clock`]).
    pub fn shift_clock(&mut self, delta_ms: i64) {
        for jail in self.slots.iter_mut().flatten() {
            jail.shift_clock(delta_ms);
        }
    }

    /// Forgets stale failure state.
    pub fn sweep(&mut self, now: Time) {
        for jail in self.slots.iter_mut().flatten() {
            jail.sweep(now);
        }
    }

    /// Adds a history built elsewhere (at start, on a thread of its own
    /// while the bans in force are restored) to the jails'.
    pub fn install_history(&mut self, h: BanHistory) {
        self.history.merge(h);
    }

    /// The decision that puts back a ban read from the store, with its own
    /// start and end, without holding it yet: the restore at start applies
    /// every stored ban first and holds only those the firewall accepted
    /// ([`JailSet::reinstate`]). `None` when its jail is no longer
    /// configured.
    #[allow(clippy::too_many_arguments)]
    pub fn restored(
        &self,
        jail: &str,
        addr: IpNet,
        start: Time,
        end: Option<Time>,
        failures: u32,
        reason: BanReason,
        now: Time,
    ) -> Option<BanDecision> {
        let id = self.jail_id(jail)?;
        let j = self.slots.get(usize::from(id.0))?.as_ref()?;
        let end = clamp_end(end, now, jail, &addr, "stored");
        Some(j.restored(addr, start, end, failures, reason))
    }

    /// Holds ban `d` (from [`JailSet::restored`]), which the firewall
    /// accepted: in force at once. Returns whether its jail is there.
    pub fn reinstate(&mut self, d: &BanDecision) -> bool {
        self.slot_mut(d.jail).map(|j| j.reinstate(d)).is_some()
    }

    /// Room for the bans of `decisions` in their jails (a restore of many
    /// bans grows each map once).
    pub fn reserve_bans(&mut self, decisions: &[Decision]) {
        let mut per_jail: HashMap<JailId, usize> = HashMap::new();
        for d in decisions {
            if let Decision::Ban(b) = d {
                *per_jail.entry(b.jail).or_default() += 1;
            }
        }
        for (id, n) in per_jail {
            if let Some(j) = self.slot_mut(id) {
                j.reserve_bans(n);
            }
        }
    }

    /// The firewall accepted ban `d`: it is in force from now on.
    pub fn confirm(&mut self, d: &BanDecision) -> bool {
        self.slot_mut(d.jail).is_some_and(|j| j.confirm(d))
    }

    /// The firewall refused ban `d`: it never was.
    pub fn refuse(&mut self, d: &BanDecision) -> bool {
        self.slot_mut(d.jail).is_some_and(|j| j.refuse(d))
    }

    fn slot_mut(&mut self, id: JailId) -> Option<&mut Jail> {
        self.slots
            .get_mut(usize::from(id.0))
            .and_then(Option::as_mut)
    }

    /// The filter jail `id` reads, for status.
    pub fn filter(&self, id: JailId) -> Option<&str> {
        self.specs.get(&id).and_then(|s| s.filter.as_deref())
    }

    /// Adds cluster peers' addresses (never banned) to every jail. The set
    /// only grows: a heartbeat that misses a peer for a moment (a restart,
    /// Redis coming back empty) must not leave it bannable.
    pub fn add_peers(&mut self, peers: Vec<IpNet>) {
        let before = self.peers.len();
        for p in peers {
            if !self.peers.contains(&p) {
                self.peers.push(p);
            }
        }
        if self.peers.len() != before {
            self.refresh_policies();
        }
    }

    /// Protects every address of host name `name` in every jail (the Redis
    /// server of `[cluster]`, its sentinels, a master they announce).
    /// Returns whether `name` is new. The list only grows, up to
    /// [`MAX_EVERYWHERE_NAMES`].
    pub fn protect_everywhere(&mut self, name: &str) -> bool {
        if self.everywhere.iter().any(|n| n == name) {
            return false;
        }
        if self.everywhere.len() >= MAX_EVERYWHERE_NAMES {
            tracing::warn!(
                "peer name {}: not protected, already {MAX_EVERYWHERE_NAMES} names are protected in every jail",
                crate::event::escape_text(name, 255)
            );
            return false;
        }
        self.everywhere.push(name.to_string());
        self.refresh_policies();
        true
    }

    /// Every host name the running jails protect, with the jails that
    /// protect it: every jail, since a peer's address banned anywhere cuts
    /// the link to it.
    pub fn names_in_use(&self) -> BTreeMap<String, Vec<String>> {
        let jails: Vec<String> = self.jails().map(|j| j.name().to_string()).collect();
        let mut out: BTreeMap<String, Vec<String>> = self
            .esl_names
            .iter()
            .chain(&self.everywhere)
            .map(|n| (n.clone(), jails.clone()))
            .collect();
        // ignoreip names protect in their own jail only.
        for spec in self.specs.values() {
            for name in self.ignore_names_of(spec) {
                let used = out.entry(name.clone()).or_default();
                if !used.contains(&spec.name) {
                    used.push(spec.name.clone());
                }
            }
        }
        out
    }

    /// What is known about host name `name`.
    pub fn resolved(&self, name: &str) -> Option<&NameState> {
        self.resolved.get(name)
    }

    /// Addresses `name` resolved to in an earlier run (kept in the store,
    /// resolved at `at`): protected until a lookup of this run answers.
    pub fn remember_resolved(&mut self, name: &str, addrs: Vec<IpAddr>, at: Time) {
        self.resolved.remember(name, addrs, at);
        let addrs = self.resolved.addrs(name);
        if !addrs.is_empty() && self.names_in_use().contains_key(name) {
            tracing::info!(
                "peer name {}: protecting {} as last resolved at {at}, until a lookup answers",
                crate::event::escape_text(name, 255),
                list(addrs)
            );
            self.refresh_policies();
        }
    }

    /// A lookup of host name `name` answered at `now`. Its addresses replace
    /// the ones protected for it in the jails that use it; an error or an
    /// empty answer keeps the last good ones (a warning). Returns what
    /// changed.
    pub fn set_resolved(
        &mut self,
        name: &str,
        answer: Result<Vec<IpAddr>, String>,
        now: Time,
    ) -> Change {
        let had_problem = self.resolved.get(name).is_some_and(|s| s.problem.is_some());
        // A master's name comes from the sentinels: shown escaped.
        let shown = crate::event::escape_text(name, 255);
        let change = self.resolved.apply(name, answer, now);
        let jails = self.names_in_use().remove(name).unwrap_or_default();
        let used = if jails.is_empty() {
            "no running jail uses it".to_string()
        } else {
            format!("protected in jail(s) {}", jails.join(", "))
        };
        let st = self.resolved.get(name).cloned().unwrap_or_default();
        match &change {
            Change::Addrs { before } => {
                if before.is_empty() {
                    tracing::info!("peer name {shown} resolves to {}; {used}", list(&st.addrs));
                } else {
                    tracing::info!(
                        "peer name {shown} now resolves to {} (was {}); {used}",
                        list(&st.addrs),
                        list(before)
                    );
                }
                self.refresh_policies();
            }
            Change::Same if had_problem => {
                tracing::info!("peer name {shown} resolves again: {}", list(&st.addrs));
            }
            Change::Same => {}
            Change::Kept { first } => {
                let why = st.problem.as_deref().unwrap_or("no answer");
                let kept = match st.resolved_at {
                    None => "nothing is protected for it until a lookup answers".to_string(),
                    Some(at) => format!(
                        "the addresses it last resolved to ({}, at {at}{}) stay protected",
                        list(&st.addrs),
                        if st.from_store {
                            ", kept in the store"
                        } else {
                            ""
                        }
                    ),
                };
                if *first {
                    tracing::warn!("peer name {shown}: {why}; {kept}; retrying");
                } else {
                    tracing::debug!("peer name {shown}: {why} again; {kept}");
                }
            }
        }
        change
    }

    /// A ban another node decided: kept with its own start and end. `None`
    /// when this node has no such jail, already holds the ban at least as
    /// long, or must never ban the address.
    pub fn remote_ban(&mut self, b: &RemoteBan<'_>, now: Time) -> Option<BanDecision> {
        let net = b.addr;
        let id = self.jail_id(b.jail)?;
        let j = self.slots.get_mut(usize::from(id.0))?.as_mut()?;
        if let Some(n) = j.policy().ignore.overlapping(&net) {
            tracing::warn!(
                "[{}] cluster ban of {} from node {} refused: covered by ignoreip/ignoreself/peers ({n})",
                b.jail,
                DisplayNet(&net),
                b.origin
            );
            return None;
        }
        let end = clamp_end(b.end, now, b.jail, &net, "received");
        if let Some(cur) = j.ban_of(&net) {
            let longer = match (cur.end, end) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(c), Some(e)) => c >= e,
            };
            if longer {
                return None;
            }
        }
        let d = j.restore(net, b.start, end, b.failures, BanReason::Cluster);
        Some(d)
    }

    /// The jail's `shared_count` failures: what the cluster counts (the
    /// jail's name, maxretry, findtime in ms), and the address it counts
    /// them as (an IPv6 source's prefix is its first address).
    pub fn shared_failure(&self, ev: &FailureEvent) -> Option<(String, u32, u64, IpAddr)> {
        let j = self.jail(ev.jail)?;
        if j.policy().ignore.contains(ev.addr) || j.is_banned(ev.addr) {
            return None;
        }
        Some((
            j.name().to_string(),
            j.policy().maxretry,
            j.policy().findtime.0 * 1000,
            j.count_net_of(ev.addr).0.network(),
        ))
    }

    /// The cluster's count reached maxretry and this node decides.
    pub fn shared_ban(
        &mut self,
        jail: &str,
        addr: std::net::IpAddr,
        failures: u32,
        now: Time,
    ) -> Option<BanDecision> {
        let id = self.jail_id(jail)?;
        let j = self.slots.get_mut(usize::from(id.0))?.as_mut()?;
        // The address the fleet counted as: an IPv6 prefix's first address
        // bans the prefix (unless it holds an address never banned).
        let net = j.count_net_of(addr).0;
        if crate::net::never_a_source(addr) || j.policy().ignore.contains(addr) || j.holds(&net) {
            return None;
        }
        let bantime = j.policy().bantime;
        let d = j.ban(net, now, bantime, failures, BanReason::Failures);
        self.history.note_ban(j.name_arc(), net, 1);
        Some(d)
    }
}

/// Addresses for a log line.
fn list(addrs: &[IpNet]) -> String {
    let v: Vec<String> = addrs.iter().map(|a| DisplayNet(a).to_string()).collect();
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::{BanTime, Duration};
    use crate::event::FailureKind;
    use crate::jail::IgnoreList;

    fn spec(name: &str, maxretry: u32) -> JailSpec {
        JailSpec {
            name: name.into(),
            filter: Some("freeswitch".into()),
            ignoreself: true,
            policy: super::super::tests::policy(maxretry, 600, BanTime::For(Duration(3600))),
            peers: Vec::new(),
            names: Vec::new(),
            ignore_files: Vec::new(),
            ignore_names: Vec::new(),
        }
    }

    fn ev(set: &JailSet, jail: &str, addr: &str, secs: i64) -> FailureEvent {
        FailureEvent {
            time: Time(secs * 1000),
            jail: set.jail_id(jail).unwrap(),
            addr: addr.parse().unwrap(),
            kind: FailureKind::RegisterAuth,
            user: None,
            scanner: false,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn own() -> Vec<IpNet> {
        vec![net("10.0.0.1/32")]
    }

    /// The restore at start: a stored ban is held only once the firewall
    /// accepted it, and then at once (no pending step), with its own end.
    #[test]
    fn a_restored_ban_is_held_only_when_reinstated_and_expires_at_its_end() {
        let mut set = JailSet::new(own(), &[spec("sip", 3)]);
        let now = Time(1_000_000);
        let d = set
            .restored(
                "sip",
                net("198.51.100.7/32"),
                Time(0),
                Some(Time(2_000_000)),
                5,
                BanReason::Failures,
                now,
            )
            .unwrap();
        assert!(
            set.restored(
                "gone",
                net("198.51.100.8/32"),
                Time(0),
                None,
                1,
                BanReason::Manual,
                now
            )
            .is_none(),
            "a jail no longer configured restores nothing"
        );
        let id = set.jail_id("sip").unwrap();
        assert!(
            !set.jail(id).unwrap().holds(&d.addr),
            "not held before the firewall's answer"
        );
        set.reserve_bans(&[Decision::Ban(d.clone())]);
        assert!(set.reinstate(&d));
        let j = set.jail(id).unwrap();
        assert_eq!(j.banned()[&d.addr].end, Some(Time(2_000_000)));
        assert_eq!(j.banned()[&d.addr].failures, 5);
        let mut out = Vec::new();
        set.expire(Time(1_999_999), &mut out);
        assert!(out.is_empty());
        set.expire(Time(2_000_000), &mut out);
        assert!(
            matches!(&out[..], [Decision::Unban(u)] if u.addr == d.addr),
            "{out:?}"
        );
    }

    /// Issue 16, findings 10 and 18: the fleet's count never bans what is
    /// never a source, and the configured list is shared, not copied, with
    /// this host's and the peers' addresses added per jail.
    #[test]
    fn shared_bans_refuse_never_a_source_and_ignore_lists_are_shared() {
        // As configuration hands them in: one list for both jails.
        let (sa, mut sb) = (spec("a", 5), spec("b", 5));
        sb.policy.ignore = sa.policy.ignore.clone();
        let mut set = JailSet::new(own(), &[sa, sb]);
        let now = Time(1_000_000);
        for a in ["0.0.0.0", "255.255.255.255", "224.0.0.9", "::", "ff02::1"] {
            assert_eq!(set.shared_ban("a", a.parse().unwrap(), 9, now), None, "{a}");
        }
        assert!(
            set.shared_ban("a", "203.0.113.9".parse().unwrap(), 9, now)
                .is_some()
        );
        set.add_peers(vec![net("198.51.100.1/32")]);
        let (a, b) = (set.jail_id("a").unwrap(), set.jail_id("b").unwrap());
        let (pa, pb) = (set.jail(a).unwrap().policy(), set.jail(b).unwrap().policy());
        assert!(Arc::ptr_eq(pa.ignore.configured(), pb.ignore.configured()));
        for p in [pa, pb] {
            assert!(p.ignore.contains("192.0.2.7".parse().unwrap()));
            assert!(p.ignore.contains("10.0.0.1".parse().unwrap()), "own");
            assert!(p.ignore.contains("198.51.100.1".parse().unwrap()), "peer");
        }
    }

    /// fail2ban 1.1's `ignoreip` host names (in the list or in a
    /// `file:`): looked up by the peers' machinery (`names_in_use` lists
    /// them with the jail that uses them), their addresses left alone in
    /// that jail only, a failed refresh keeps the last answer; a file's
    /// names and networks come and go with the file's reads.
    #[test]
    fn ignoreip_names_and_files_protect_in_their_own_jail() {
        let mut a = spec("a", 5);
        a.ignore_names = vec!["office.example.org".into()];
        a.ignore_files = vec!["/etc/ignore.txt".into()];
        let mut set = JailSet::new(own(), &[a, spec("b", 5)]);
        let used = set.names_in_use();
        assert_eq!(used.get("office.example.org"), Some(&vec!["a".to_string()]));
        assert_eq!(set.ignore_files(), [PathBuf::from("/etc/ignore.txt")]);
        set.set_resolved("office.example.org", Ok(ips(&["203.0.113.10"])), Time(1));
        assert!(protects(&set, "a", "203.0.113.10"));
        assert!(!protects(&set, "b", "203.0.113.10"), "only its own jail");
        set.set_resolved("office.example.org", Err("timeout".into()), Time(2));
        assert!(protects(&set, "a", "203.0.113.10"), "last answer kept");
        let file = crate::jail::ignore_file::IgnoreFile {
            nets: vec![net("198.51.100.0/24")],
            names: vec!["branch.example.org".into()],
        };
        assert!(set.set_ignore_file(std::path::Path::new("/etc/ignore.txt"), Ok(file.clone())));
        assert!(!set.set_ignore_file(std::path::Path::new("/etc/ignore.txt"), Ok(file)));
        assert!(protects(&set, "a", "198.51.100.77"));
        assert!(!protects(&set, "b", "198.51.100.77"));
        assert!(set.names_in_use().contains_key("branch.example.org"));
        set.set_resolved("branch.example.org", Ok(ips(&["203.0.113.5"])), Time(3));
        assert!(protects(&set, "a", "203.0.113.5"));
        // A failed read keeps the file's last good entries.
        assert!(!set.set_ignore_file(std::path::Path::new("/etc/ignore.txt"), Err("gone".into())));
        assert!(protects(&set, "a", "198.51.100.77"));
        // Read again without the name: it is no longer in use.
        let file = crate::jail::ignore_file::IgnoreFile {
            nets: vec![net("198.51.100.0/24")],
            names: vec![],
        };
        assert!(set.set_ignore_file(std::path::Path::new("/etc/ignore.txt"), Ok(file)));
        assert!(!set.names_in_use().contains_key("branch.example.org"));
        assert!(!protects(&set, "a", "203.0.113.5"));
    }

    /// `bantime_rndtime`: the set seeds each jail's random extra; the same
    /// seed gives the same escalated bans (tests and replays are exact), two
    /// jails draw apart, and a reseed changes them.
    #[test]
    fn rndtime_extras_come_from_the_sets_seed() {
        let with_rnd = |name: &str| {
            let mut s = spec(name, 1);
            s.policy.escalation = Some(crate::jail::Escalation {
                factor: 1.0,
                multipliers: vec![],
                maxtime: None,
                overall_jails: false,
                rndtime: Some(Duration(3600)),
            });
            s
        };
        let run = |seed: u64, jail: &str| {
            let mut set = JailSet::new(own(), &[with_rnd("a"), with_rnd("b")]);
            set.seed(seed);
            let mut ends = Vec::new();
            for n in 0..20u8 {
                let addr = format!("203.0.113.{n}");
                set.install_history(BanHistory::from_counts(vec![(
                    Arc::from(jail),
                    net(&format!("{addr}/32")),
                    1,
                )]));
                let mut out = Vec::new();
                set.handle(&[ev(&set, jail, &addr, 100)], Time(100_000), &mut out);
                let [Decision::Ban(d)] = out.as_slice() else {
                    panic!("{out:?}")
                };
                let BanTime::For(len) = d.bantime else {
                    panic!("permanent")
                };
                // Second ban: 2 x 3600, plus less than 3600.
                assert!((7200..10_800).contains(&len.0), "{len}");
                ends.push(len.0);
            }
            ends
        };
        assert_eq!(run(42, "a"), run(42, "a"));
        assert_ne!(run(42, "a"), run(43, "a"));
        assert_ne!(run(42, "a"), run(42, "b"));
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn protects(set: &JailSet, jail: &str, addr: &str) -> bool {
        let j = set.jail(set.jail_id(jail).unwrap()).unwrap();
        j.policy().ignore.contains(addr.parse().unwrap())
    }

    /// Issue 16, finding 5: a peer given by name protects all its addresses
    /// in every jail (banning a PBX's address in any jail cuts the Event
    /// Socket to it); a refresh replaces them, an address stays protected
    /// while another name still gives it, and a failed lookup keeps the
    /// last good ones.
    #[test]
    fn names_protect_their_addresses_in_every_jail() {
        let mut a = spec("a", 5);
        a.names = vec!["pbx1".into(), "pbx2".into()];
        let mut set = JailSet::new(own(), &[a, spec("b", 5)]);
        assert!(
            !protects(&set, "a", "198.51.100.1"),
            "nothing before a lookup"
        );
        set.set_resolved("pbx1", Ok(ips(&["198.51.100.1", "2001:db8::1"])), Time(1));
        set.set_resolved("pbx2", Ok(ips(&["198.51.100.2"])), Time(1));
        for addr in ["198.51.100.1", "2001:db8::1", "198.51.100.2"] {
            assert!(protects(&set, "a", addr), "{addr} in a");
            assert!(protects(&set, "b", addr), "{addr} in b too");
        }
        assert!(
            set.manual_ban("a", net("198.51.100.1/32"), None, false, Time(1))
                .is_err()
        );
        // pbx1 moves; pbx2 now also gives pbx1's old address.
        set.set_resolved("pbx2", Ok(ips(&["198.51.100.2", "198.51.100.1"])), Time(2));
        set.set_resolved("pbx1", Ok(ips(&["198.51.100.3"])), Time(2));
        assert!(protects(&set, "a", "198.51.100.3"));
        assert!(protects(&set, "a", "198.51.100.1"), "pbx2 still gives it");
        assert!(
            !protects(&set, "a", "2001:db8::1"),
            "no name gives it any more"
        );
        // A failed refresh keeps what was protected.
        let c = set.set_resolved("pbx1", Err("timed out after 5 s".into()), Time(3));
        assert_eq!(c, Change::Kept { first: true });
        assert!(protects(&set, "a", "198.51.100.3"));
        // The own addresses and the configured list are still there.
        assert!(protects(&set, "a", "10.0.0.1") && protects(&set, "a", "192.0.2.7"));
        // The Redis server's name: every jail.
        set.protect_everywhere("redis");
        set.set_resolved("redis", Ok(ips(&["203.0.113.50"])), Time(4));
        assert!(protects(&set, "a", "203.0.113.50") && protects(&set, "b", "203.0.113.50"));
        let used = set.names_in_use();
        assert_eq!(used["pbx1"], vec!["a".to_string(), "b".to_string()]);
        assert_eq!(used["redis"], vec!["a".to_string(), "b".to_string()]);
        // A reload whose jail no longer names pbx1 stops protecting it.
        let mut a = spec("a", 5);
        a.names = vec!["pbx2".into()];
        set.configure(&[a, spec("b", 5)]);
        assert!(!protects(&set, "a", "198.51.100.3"));
        assert!(protects(&set, "a", "198.51.100.2"));
        assert!(!set.names_in_use().contains_key("pbx1"));
    }

    /// DNS down at start: the addresses kept in the store are protected
    /// at once and stay when the lookups fail.
    /// The black-box pass's N2: a PBX given by address in one jail is
    /// protected in every jail.
    #[test]
    fn event_socket_peers_are_protected_in_every_jail() {
        let mut a = spec("a", 5);
        a.peers = vec![net("10.200.0.2/32")];
        let mut set = JailSet::new(own(), &[a, spec("b", 5)]);
        for j in ["a", "b"] {
            assert!(protects(&set, j, "10.200.0.2"), "{j}");
            assert!(
                set.manual_ban(j, net("10.200.0.2/32"), None, false, Time(1))
                    .is_err()
            );
        }
        let mut out = Vec::new();
        let b = set.jail_id("b").unwrap();
        let ev = FailureEvent {
            time: Time(1000),
            jail: b,
            addr: "10.200.0.2".parse().unwrap(),
            kind: FailureKind::RegisterAuth,
            user: None,
            scanner: false,
        };
        // maxretry failures: a ban, were the PBX not protected.
        set.handle(&vec![ev; 5], Time(1000), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn stored_addresses_are_protected_until_a_lookup_answers() {
        let mut a = spec("a", 5);
        a.names = vec!["pbx".into()];
        let mut set = JailSet::new(own(), &[a]);
        set.remember_resolved("pbx", ips(&["198.51.100.7", "2001:db8::7"]), Time(1));
        // A name no jail uses protects nothing.
        set.remember_resolved("gone", ips(&["198.51.100.8"]), Time(1));
        assert!(protects(&set, "a", "198.51.100.7") && protects(&set, "a", "2001:db8::7"));
        assert!(!protects(&set, "a", "198.51.100.8"));
        for t in 2..5 {
            set.set_resolved(
                "pbx",
                Err("Temporary failure in name resolution".into()),
                Time(t),
            );
        }
        assert!(protects(&set, "a", "198.51.100.7"));
        let st = set.resolved("pbx").unwrap();
        assert!(st.from_store && st.failures == 3 && st.problem.is_some());
        set.set_resolved("pbx", Ok(ips(&["198.51.100.9"])), Time(9));
        assert!(protects(&set, "a", "198.51.100.9") && !protects(&set, "a", "198.51.100.7"));
    }

    #[test]
    fn esl_hosts_split_into_addresses_and_names() {
        let c = crate::config::Config::parse(
            "[jail.j]\nesl = [{ host = \"127.0.0.1\" }, { host = \"pbx.example\" }, { host = \"pbx.example\", port = 8022 }, { host = \"[::1]\" }]\n",
            "t.toml",
        )
        .unwrap();
        let s = JailSpec::from_config(&c.jails[0]);
        assert_eq!(s.names, vec!["pbx.example".to_string()]);
        assert!(s.policy.ignore.contains("127.0.0.1".parse().unwrap()));
        assert!(s.policy.ignore.contains("::1".parse().unwrap()));
    }

    /// The Asterisk a jail's `ami` reads from is never banned, in any
    /// jail; one given by name once its addresses are known.
    #[test]
    fn ami_peers_are_protected_in_every_jail() {
        let c = crate::config::Config::parse(
            "[jail.ast]\nami = [{ host = \"198.51.100.30\", secret = \"s\" }, { host = \"ast.example\", secret = \"s\" }]\n[jail.other]\nesl = {}\n",
            "t.toml",
        )
        .unwrap();
        let specs: Vec<JailSpec> = c.jails.iter().map(JailSpec::from_config).collect();
        assert_eq!(specs[0].names, vec!["ast.example".to_string()]);
        let mut set = JailSet::new(own(), &specs);
        assert!(protects(&set, "ast", "198.51.100.30"));
        assert!(protects(&set, "other", "198.51.100.30"));
        set.set_resolved("ast.example", Ok(ips(&["198.51.100.31"])), Time(1));
        assert!(protects(&set, "other", "198.51.100.31"));
    }

    #[test]
    fn routes_events_to_their_jail_and_bans_at_maxretry() {
        let mut set = JailSet::new(own(), &[spec("a", 2), spec("b", 3)]);
        let mut out = Vec::new();
        let batch = [
            ev(&set, "a", "203.0.113.1", 1),
            ev(&set, "b", "203.0.113.1", 1),
        ];
        set.handle(&batch, Time(1000), &mut out);
        assert!(out.is_empty());
        set.handle(&[ev(&set, "a", "203.0.113.1", 2)], Time(2000), &mut out);
        assert!(
            matches!(&out[..], [Decision::Ban(b)] if &*b.jail_name == "a" && b.addr == net("203.0.113.1/32"))
        );
        assert_eq!(set.filter(set.jail_id("a").unwrap()), Some("freeswitch"));
    }

    #[test]
    fn manual_bans_respect_ignore_own_and_peers_unless_forced() {
        let mut set = JailSet::new(own(), &[spec("a", 5)]);
        let now = Time(0);
        for refused in ["192.0.2.7/32", "10.0.0.1/32", "192.0.0.0/16"] {
            assert!(
                set.manual_ban("a", net(refused), None, false, now).is_err(),
                "{refused}"
            );
        }
        set.add_peers(vec![net("198.51.100.9/32")]);
        assert!(
            set.manual_ban("a", net("198.51.100.9/32"), None, false, now)
                .is_err()
        );
        assert!(
            set.manual_ban("a", net("198.51.100.9/32"), None, true, now)
                .is_ok()
        );
        assert!(
            set.manual_ban("nope", net("203.0.113.1/32"), None, false, now)
                .is_err()
        );
        let d = set
            .manual_ban("a", net("203.0.113.0/24"), None, false, now)
            .unwrap();
        assert_eq!(d.end, Some(Time(3_600_000)));
    }

    #[test]
    fn unban_lifts_in_every_jail_and_says_when_nothing_was_banned() {
        let mut set = JailSet::new(own(), &[spec("a", 5), spec("b", 5)]);
        for j in ["a", "b"] {
            set.manual_ban(j, net("203.0.113.1/32"), None, false, Time(0))
                .unwrap();
        }
        let lifted = set.unban(Some(net("203.0.113.1/32")), None, false).unwrap();
        assert_eq!(lifted.len(), 2);
        assert!(set.unban(Some(net("203.0.113.1/32")), None, false).is_err());
        assert!(set.unban(None, Some("zz"), true).is_err());
    }

    #[test]
    fn refusals_by_hand_keep_their_wording() {
        let mut set = JailSet::new(own(), &[spec("a", 5), spec("b", 5)]);
        let now = Time(0);
        let told = |e: JailSetError| e.to_string();
        assert_eq!(
            told(
                set.manual_ban("a", net("10.0.0.1/32"), None, false, now)
                    .unwrap_err()
            ),
            "10.0.0.1 is covered by ignoreip/ignoreself (10.0.0.1/32) of jail a; refusing (add --force to ban it anyway)"
        );
        assert_eq!(
            told(
                set.manual_ban("zz", net("203.0.113.1/32"), None, false, now)
                    .unwrap_err()
            ),
            "no running jail named \"zz\"; jails: a, b"
        );
        assert_eq!(
            told(set.unban(None, Some("zz"), true).unwrap_err()),
            "no running jail named \"zz\"; jails: a, b"
        );
        assert_eq!(
            told(
                set.unban(Some(net("203.0.113.0/24")), None, false)
                    .unwrap_err()
            ),
            "203.0.113.0/24 is not banned"
        );
        assert_eq!(
            told(
                set.unban(Some(net("203.0.113.1/32")), Some("b"), false)
                    .unwrap_err()
            ),
            "203.0.113.1 is not banned in jail b"
        );
    }

    #[test]
    fn reconfigure_keeps_ids_and_state_and_lifts_removed_jails() {
        let mut set = JailSet::new(own(), &[spec("a", 5), spec("b", 5)]);
        let b = set.jail_id("b").unwrap();
        set.manual_ban("a", net("203.0.113.1/32"), None, false, Time(0))
            .unwrap();
        let lifted = set.configure(&[spec("b", 7)]);
        assert!(
            matches!(&lifted[..], [Decision::Unban(u)] if &*u.jail_name == "a"),
            "{lifted:?}"
        );
        assert_eq!(set.jail_id("b"), Some(b));
        assert_eq!(set.jail_id("a"), None);
        assert_eq!(set.jail(b).unwrap().policy().maxretry, 7);
        // A jail coming back gets its old id, empty.
        set.configure(&[spec("a", 5), spec("b", 7)]);
        assert!(
            set.jail(set.jail_id("a").unwrap())
                .unwrap()
                .banned()
                .is_empty()
        );
    }

    #[test]
    fn remote_bans_keep_their_end_and_never_shorten_a_longer_one() {
        let mut set = JailSet::new(own(), &[spec("a", 5)]);
        let rb = |end: Option<i64>| RemoteBan {
            jail: "a",
            addr: net("203.0.113.5/32"),
            start: Time(0),
            end: end.map(Time),
            failures: 5,
            origin: "n2",
        };
        assert!(set.remote_ban(&rb(Some(10_000)), Time(0)).is_some());
        assert!(set.remote_ban(&rb(Some(5_000)), Time(0)).is_none());
        assert!(set.remote_ban(&rb(None), Time(0)).is_some());
        let protected = RemoteBan {
            addr: net("192.0.2.1/32"),
            ..rb(None)
        };
        assert!(set.remote_ban(&protected, Time(0)).is_none());
        // An end beyond what the kernel holds is cut to it.
        let far = RemoteBan {
            addr: net("203.0.113.6/32"),
            ..rb(Some(i64::MAX / 2))
        };
        let d = set.remote_ban(&far, Time(0)).unwrap();
        assert_eq!(d.end, Some(Time(MAX_BANTIME.as_millis())));
    }

    #[test]
    fn shared_counts_skip_ignored_and_banned_addresses() {
        let mut set = JailSet::new(own(), &[spec("a", 5)]);
        let e = ev(&set, "a", "203.0.113.9", 1);
        assert_eq!(
            set.shared_failure(&e),
            Some(("a".to_string(), 5, 600_000, e.addr))
        );
        assert!(set.shared_failure(&ev(&set, "a", "192.0.2.3", 1)).is_none());
        let d = set.shared_ban("a", e.addr, 5, Time(1000)).unwrap();
        assert_eq!(d.failures, 5);
        assert!(set.shared_failure(&e).is_none());
        assert!(set.shared_ban("a", e.addr, 5, Time(1000)).is_none());
    }

    #[test]
    fn expiry_lifts_bans_in_order() {
        let mut set = JailSet::new(own(), &[spec("a", 5)]);
        let d = set
            .manual_ban(
                "a",
                net("203.0.113.1/32"),
                Some(BanTime::For(Duration(10))),
                false,
                Time(0),
            )
            .unwrap();
        // Expiry counts from when the firewall accepted the ban.
        assert_eq!(set.next_expiry(), None);
        assert!(set.confirm(&d));
        assert_eq!(set.next_expiry(), Some(Time(10_000)));
        let mut out = Vec::new();
        set.expire(Time(9_999), &mut out);
        assert!(out.is_empty());
        set.expire(Time(10_000), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(set.next_expiry(), None);
    }

    /// Black-box pass N1: a feed dropped loopback, `ignoreip` and the Event
    /// Socket peers. The set hands out everything it protects, for every
    /// jail, and says when that changed.
    #[test]
    fn protected_is_every_jails_ignoreip_peers_and_own_addresses() {
        let mut a = spec("a", 5);
        a.ignoreself = false;
        a.policy.ignore = IgnoreList::shared(
            Arc::new(crate::net::NetSet::new([net("192.168.0.0/16")])),
            vec![net("198.51.100.20/32")], // an ESL peer of jail a
        );
        let b = spec("b", 5);
        let mut set = JailSet::new(own(), &[a.clone(), b.clone()]);
        let p = crate::net::NetSet::new(set.protected());
        for addr in ["192.168.3.4", "198.51.100.20", "10.0.0.1"] {
            assert!(p.contains(addr.parse().unwrap()), "{addr} protected");
        }
        // b's own list (the test policy's) is in too.
        for n in b.policy.ignore.configured().nets() {
            assert!(p.contains(n.addr()), "{n}");
        }
        let g = set.protection_generation();
        set.add_peers(vec![net("203.0.113.9/32")]);
        assert_ne!(set.protection_generation(), g, "a new peer");
        assert!(set.protected().contains(&net("203.0.113.9/32")));
        let g = set.protection_generation();
        set.add_peers(vec![net("203.0.113.9/32")]);
        assert_eq!(set.protection_generation(), g, "nothing new");
        set.configure(&[b]);
        assert_ne!(set.protection_generation(), g, "a reload");
        let p = crate::net::NetSet::new(set.protected());
        assert!(
            !p.contains("192.168.3.4".parse().unwrap()),
            "jail a is gone"
        );
        assert!(p.contains("10.0.0.1".parse().unwrap()));
        // A list shared by many jails is taken once.
        let shared = Arc::new(crate::net::NetSet::new([net("172.16.0.0/12")]));
        let many: Vec<JailSpec> = (0..50)
            .map(|i| {
                let mut s = spec(&format!("j{i}"), 5);
                s.policy.ignore = IgnoreList::shared(shared.clone(), Vec::new());
                s
            })
            .collect();
        let set = JailSet::new(Vec::new(), &many);
        assert_eq!(set.protected(), vec![net("172.16.0.0/12")]);
    }
}
