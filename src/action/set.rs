//! The running jails' actions: which jail runs which, what was seen of each
//! address until its ban (the ticket's `<F-USER>` and `<matches>`), and
//! which bans ran `actionban` (so only they run `actionunban`).
//!
//! Owned by the run loop, which calls it after the kernel accepted a
//! decision; building a command is string work, running it is the
//! [`Runner`]'s threads'.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use super::load::{Action, Phase, Ticket};
use super::runner::{ActionStats, Build, Job, Runner, Step, Steps};
use super::spec::ActionRef;
use crate::decision::{BanDecision, BanReason, UnbanDecision};
use crate::event::{FailureEvent, JailId, Time};

/// Addresses whose failures are kept for their tickets (per daemon). With
/// [`MAX_MATCHES`] lines of at most about 330 bytes each, about 33 MB at
/// worst, whatever an attacker sends.
const MAX_SEEN: usize = 10_000;
/// Failures kept per address (fail2ban keeps `maxmatches`).
const MAX_MATCHES: usize = 10;
/// Longest user name kept, in bytes.
const MAX_USER: usize = 256;
/// What is kept of an address not seen for this long (fail2ban's default
/// `findtime`) goes when the table is full; if it is still full, a new
/// address's ticket goes without its failures.
const SEEN_FOR_MS: i64 = 600_000;
/// How long stopping waits for `actionflush` and `actionstop`.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// One jail's actions.
#[derive(Debug)]
struct JailActions {
    name: Arc<str>,
    refs: Vec<ActionRef>,
    actions: Vec<Arc<Action>>,
}

/// What was seen of one address in one jail.
#[derive(Debug, Default)]
struct Seen {
    /// Its first failure kept (for notifications' `first_seen`).
    first: Time,
    last: Time,
    /// Its key in [`ActionSet::by_age`].
    age: (i64, u64),
    user: Option<String>,
    lines: VecDeque<String>,
}

/// What a ban that ran `actionban` tells its `actionunban`.
#[derive(Clone, Copy, Debug)]
struct Ran {
    failures: u32,
    time: Time,
    bantime: i64,
    /// Restored at start: `norestored` actions did not ban it.
    restored: bool,
}

impl Ran {
    fn ticket(&self, addr: IpNet) -> Ticket {
        Ticket {
            addr,
            failures: self.failures,
            time: self.time,
            bantime: self.bantime,
            restored: self.restored,
            user: None,
            matches: Vec::new(),
        }
    }
}

/// The running jails' actions.
#[derive(Debug)]
pub struct ActionSet {
    jails: HashMap<JailId, JailActions>,
    /// Ordered, so a prefix's ban finds the addresses inside it (an IPv6
    /// source's /64) by a range, not a scan.
    seen: BTreeMap<(JailId, IpAddr), Seen>,
    /// `seen`'s keys by their last failure (then arrival), oldest first:
    /// making room for a new address looks at one entry, never the table.
    by_age: BTreeMap<(i64, u64), (JailId, IpAddr)>,
    /// Arrivals so far, for `by_age`'s keys (0 is never one).
    arrivals: u64,
    /// Bans that ran `actionban`, with what their unban's ticket tells.
    ran: HashMap<(JailId, IpNet), Ran>,
    runner: Option<Runner>,
    stats: Arc<ActionStats>,
    hostname: String,
    /// Entries examined to make room in `seen` (bounded work per event).
    scanned: u64,
    /// The jails' `notify` targets, run on the same lanes.
    notify: crate::notify::Notifier,
}

/// This host's name for `<fq-hostname>` (not looked up in DNS).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Default for ActionSet {
    fn default() -> Self {
        ActionSet::new()
    }
}

impl ActionSet {
    /// No jail has actions yet; threads start with the first.
    pub fn new() -> ActionSet {
        ActionSet {
            jails: HashMap::new(),
            seen: BTreeMap::new(),
            by_age: BTreeMap::new(),
            arrivals: 0,
            ran: HashMap::new(),
            runner: None,
            stats: Arc::default(),
            hostname: hostname(),
            scanned: 0,
            notify: crate::notify::Notifier::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<ActionStats> {
        &self.stats
    }

    /// Whether any jail has actions or notifications.
    pub fn is_empty(&self) -> bool {
        self.jails.is_empty() && self.notify.is_empty()
    }

    /// The counters, notifications' included.
    pub fn view(&self) -> super::ActionsView {
        let mut v = self.stats.view();
        if !self.notify.is_empty() {
            v.notify = self.notify.stats().view();
        }
        v
    }

    /// Sets each jail's `notify` targets and this node's name (the
    /// fleet's `node`, else the host name), at start and reload, before
    /// [`ActionSet::configure`].
    pub fn configure_notify<'a>(
        &mut self,
        jails: impl IntoIterator<Item = (JailId, &'a [crate::notify::NotifyTarget])>,
        node: Option<&str>,
    ) {
        let node = node.unwrap_or(&self.hostname).to_string();
        self.notify.configure(jails, &node);
    }

    /// Queues a notification on its jail's lane (shed like a ban when the
    /// lane is full).
    fn submit_delivery(&mut self, id: JailId, jail: &Arc<str>, d: crate::notify::Delivery) {
        let run = d.run;
        let job = Job {
            jail: jail.clone(),
            action: d.kind.into(),
            addr: d.addr,
            phase: Phase::Ban,
            timeout: std::time::Duration::from_secs(60),
            build: Box::new(move || {
                run();
                None
            }),
        };
        let runner = self
            .runner
            .get_or_insert_with(|| Runner::new(self.stats.clone()));
        runner.submit(usize::from(id.0), job);
    }

    /// Sets each jail's actions (at start and reload): a jail whose list
    /// changed stops its old actions and starts its new ones; firewall
    /// actions are left out with one log line; an action that cannot be
    /// read is logged and left out.
    pub fn configure<'a>(
        &mut self,
        jails: impl IntoIterator<Item = (JailId, &'a str, &'a [ActionRef])>,
    ) {
        let mut keep = HashSet::new();
        let mut skipped = Vec::new();
        for (id, name, refs) in jails {
            let refs: Vec<ActionRef> = refs
                .iter()
                .filter(|r| {
                    let fw = r.is_firewall();
                    if fw {
                        skipped.push(format!("{name}: {}", r.name));
                    }
                    !fw
                })
                .cloned()
                .collect();
            if refs.is_empty() {
                continue;
            }
            keep.insert(id);
            // Read again each time: a file edited since counts as a change.
            let actions: Vec<Arc<Action>> = refs
                .iter()
                .filter_map(|r| match Action::load(r, name, &self.hostname) {
                    Ok(a) => Some(Arc::new(a)),
                    Err(e) => {
                        tracing::error!("[{name}] action {r} not run: {e}");
                        None
                    }
                })
                .collect();
            let same = |j: &JailActions| {
                *j.name == *name
                    && j.refs == refs
                    && j.actions.len() == actions.len()
                    && j.actions
                        .iter()
                        .zip(&actions)
                        .all(|(a, b)| a.fingerprint == b.fingerprint)
            };
            if self.jails.get(&id).is_some_and(same) {
                continue;
            }
            if let Some(old) = self.jails.remove(&id) {
                self.stop_jail(id, &old);
            }
            let j = JailActions {
                name: name.into(),
                refs,
                actions,
            };
            for a in &j.actions {
                self.submit(id, &j.name, a, Phase::Start, None);
            }
            self.jails.insert(id, j);
        }
        let gone: Vec<JailId> = self
            .jails
            .keys()
            .filter(|id| !keep.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(old) = self.jails.remove(&id) {
                self.stop_jail(id, &old);
            }
        }
        let notify = &self.notify;
        let kept = |id: &JailId| keep.contains(id) || notify.has(*id);
        self.seen.retain(|(id, _), _| kept(id));
        self.by_age.retain(|_, (id, _)| kept(id));
        self.ran.retain(|(id, _), _| keep.contains(id));
        if !skipped.is_empty() {
            tracing::info!(
                "firewall actions are not run; sipwarden's nftables enforcer bans instead ({})",
                skipped.join("; ")
            );
        }
    }

    /// Stops a jail's actions as fail2ban does: `actionflush`, or for an
    /// action without one an `actionunban` per ban it ran (a remote block
    /// must not outlive the jail), then `actionstop`. Its bans are then
    /// forgotten: its later unbans find nothing to run.
    fn stop_jail(&mut self, id: JailId, j: &JailActions) {
        let mut bans: Vec<(IpNet, Ran)> = self
            .ran
            .extract_if(|(jail, _), _| *jail == id)
            .map(|((_, addr), r)| (addr, r))
            .collect();
        bans.sort_by_key(|(addr, r)| (r.time, *addr));
        for a in &j.actions {
            if a.has(Phase::Flush) {
                self.submit(id, &j.name, a, Phase::Flush, None);
            } else if a.has(Phase::Unban) {
                for (addr, r) in &bans {
                    if !(r.restored && a.norestored) {
                        self.submit(id, &j.name, a, Phase::Unban, Some(&r.ticket(*addr)));
                    }
                }
            }
            self.submit(id, &j.name, a, Phase::Stop, None);
        }
    }

    /// Queues one command, when the action has it.
    fn submit(
        &mut self,
        id: JailId,
        jail: &Arc<str>,
        a: &Arc<Action>,
        phase: Phase,
        t: Option<&Ticket>,
    ) {
        if !a.has(phase) {
            return;
        }
        let action = a.clone();
        let ticket = t.cloned();
        let build: Build = Box::new(move || {
            let t = ticket.as_ref();
            let step = |phase| {
                action
                    .command(phase, t)
                    .map(|command| Step { phase, command })
            };
            let main = step(phase)?;
            let (check, repair) = match phase {
                Phase::Ban => (step(Phase::Check), step(Phase::Repair)),
                _ => (None, None),
            };
            Some(Steps {
                check,
                repair,
                main,
            })
        });
        let job = Job {
            jail: jail.clone(),
            action: a.name.as_str().into(),
            addr: t
                .map(|t| crate::net::DisplayNet(&t.addr).to_string())
                .unwrap_or_default(),
            phase,
            timeout: a.timeout,
            build,
        };
        let runner = self
            .runner
            .get_or_insert_with(|| Runner::new(self.stats.clone()));
        runner.submit(usize::from(id.0), job);
    }

    /// Keeps what the failures of jails with actions tell their tickets.
    pub fn note(&mut self, batch: &[FailureEvent]) {
        if self.is_empty() {
            return;
        }
        for ev in batch {
            if !self.jails.contains_key(&ev.jail) && !self.notify.has(ev.jail) {
                continue;
            }
            let key = (ev.jail, ev.addr);
            if !self.seen.contains_key(&key) && self.seen.len() >= MAX_SEEN {
                // The oldest entry goes if it is old enough; if it is not,
                // none is, and the new address goes without.
                self.scanned += 1;
                let old = ev.time.0 - SEEN_FOR_MS;
                match self.by_age.first_key_value() {
                    Some((age, k)) if age.0 <= old => {
                        let k = *k;
                        self.forget(k);
                    }
                    _ => continue,
                }
            }
            let s = self.seen.entry(key).or_default();
            self.by_age.remove(&s.age);
            self.arrivals += 1;
            s.age = (ev.time.0, self.arrivals);
            self.by_age.insert(s.age, key);
            if s.lines.is_empty() {
                s.first = ev.time;
            }
            s.last = ev.time;
            let mut line = format!("{} {} {}", ev.time, ev.addr, ev.kind.as_str());
            if let Some(u) = &ev.user {
                let mut cut = u.len().min(MAX_USER);
                while !u.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.user = Some(u[..cut].to_string());
                line.push_str(" user ");
                line.push_str(&u[..cut]);
            }
            if s.lines.len() == MAX_MATCHES {
                s.lines.pop_front();
            }
            s.lines.push_back(line);
        }
    }

    /// Drops what was seen of one address in one jail.
    fn forget(&mut self, key: (JailId, IpAddr)) -> Option<Seen> {
        let s = self.seen.remove(&key)?;
        self.by_age.remove(&s.age);
        Some(s)
    }

    /// Drops what was seen of the addresses inside prefix `net` in one
    /// jail, told as one: the first and last failure of any of them, the
    /// newest lines (a jail counts an IPv6 source as its prefix).
    fn forget_within(&mut self, jail: JailId, net: &IpNet) -> Seen {
        let keys: Vec<(JailId, IpAddr)> = self
            .seen
            .range((jail, net.network())..=(jail, net.broadcast()))
            .map(|(k, _)| *k)
            .collect();
        let mut all = Seen::default();
        let mut lines: Vec<String> = Vec::new();
        let mut any = false;
        for k in keys {
            let Some(s) = self.forget(k) else { continue };
            if !any || s.first < all.first {
                all.first = s.first;
            }
            if !any || s.last >= all.last {
                all.last = s.last;
                all.user = s.user.or(all.user.take());
            }
            any = true;
            lines.extend(s.lines);
        }
        // Each line starts with its time (RFC 3339): the newest are kept.
        lines.sort();
        let cut = lines.len().saturating_sub(MAX_MATCHES);
        all.lines = lines.into_iter().skip(cut).collect();
        all
    }

    /// A decision the kernel accepted.
    pub fn accepted(&mut self, d: &crate::decision::Decision) {
        match d {
            crate::decision::Decision::Ban(b) => self.banned(b, false),
            crate::decision::Decision::Unban(u) => self.unbanned(u),
        }
    }

    /// A ban the kernel accepted (or restored at start): its jail's
    /// actions run `actionban`, except for bans another node decided and,
    /// for actions with `norestored`, restored ones; its notifications go
    /// out for bans decided here only (not restored, not from the fleet).
    pub fn banned(&mut self, b: &BanDecision, restored: bool) {
        if b.reason == BanReason::Cluster {
            return;
        }
        let notify = !restored && self.notify.has(b.jail);
        let acts = self
            .jails
            .get(&b.jail)
            .map(|j| (j.name.clone(), j.actions.clone()));
        if acts.is_none() && !notify {
            return;
        }
        let seen = if b.addr.prefix_len() == b.addr.max_prefix_len() {
            self.forget((b.jail, b.addr.addr())).unwrap_or_default()
        } else {
            self.forget_within(b.jail, &b.addr)
        };
        if notify {
            let when = (!seen.lines.is_empty()).then_some((seen.first, seen.last));
            for d in self.notify.deliveries(b, when) {
                self.submit_delivery(b.jail, &b.jail_name, d);
            }
        }
        let Some((name, actions)) = acts else {
            return;
        };
        let t = Ticket {
            addr: b.addr,
            failures: b.failures,
            time: b.start,
            bantime: b.end.map_or(-1, |e| (e.0 - b.start.0).max(0) / 1000),
            restored,
            user: seen.user,
            matches: seen.lines.into(),
        };
        let ran = Ran {
            failures: t.failures,
            time: t.time,
            bantime: t.bantime,
            restored,
        };
        self.ran.insert((b.jail, b.addr), ran);
        for a in &actions {
            if restored && a.norestored {
                continue;
            }
            self.submit(b.jail, &name, a, Phase::Ban, Some(&t));
        }
    }

    /// An unban the kernel accepted: `actionunban` for bans that ran
    /// `actionban` (a restored ban's, with `<restored>` 1, not for
    /// `norestored` actions, which did not ban it).
    pub fn unbanned(&mut self, u: &UnbanDecision) {
        let Some(ran) = self.ran.remove(&(u.jail, u.addr)) else {
            return;
        };
        let Some(j) = self.jails.get(&u.jail) else {
            return;
        };
        let (name, actions) = (j.name.clone(), j.actions.clone());
        let t = ran.ticket(u.addr);
        for a in &actions {
            if ran.restored && a.norestored {
                continue;
            }
            self.submit(u.jail, &name, a, Phase::Unban, Some(&t));
        }
    }

    /// The daemon stops: what is queued, then every jail's `actionflush`
    /// (or its bans' `actionunban`) and `actionstop`, run; waited for 30 s
    /// at most.
    pub fn stop(mut self) {
        let jails: Vec<(JailId, JailActions)> = self.jails.drain().collect();
        for (id, j) in &jails {
            self.stop_jail(*id, j);
        }
        if let Some(r) = self.runner.take() {
            r.finish(Instant::now() + STOP_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::UnbanReason;
    use crate::duration::{BanTime, Duration};
    use crate::event::FailureKind;

    fn ban(jail: JailId, addr: &str, reason: BanReason) -> BanDecision {
        BanDecision {
            jail,
            jail_name: "sip".into(),
            addr: addr.parse().unwrap(),
            start: Time(1_795_621_254_000),
            end: Some(Time(1_795_621_854_000)),
            bantime: BanTime::For(Duration(600)),
            failures: 3,
            reason,
        }
    }

    /// Cluster bans run nothing; restored ones run with `<restored>` 1
    /// except for `norestored` actions; an unban follows only a ban that
    /// ran; the user and what was seen reach the ticket; at stop, an
    /// action without `actionflush` unbans the bans still in force.
    #[test]
    fn who_runs_what() {
        let d = std::env::temp_dir().join(format!("sipwarden-set-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let log = d.join("log");
        std::fs::write(
            d.join("rec.conf"),
            format!(
                "[Definition]\nactionstart = echo start <name> >> {l}\nactionstop = echo stop >> {l}\n\
                 actionban = printf 'ban %s %s %s %s\\n' <ip> <restored> <failures> \"<F-USER>\" >> {l}; printf '%s\\n' \"<matches>\" >> {l}\n\
                 actionunban = echo unban <ip> <failures> <bantime> >> {l}\n",
                l = log.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("quiet.conf"),
            format!(
                "[Definition]\nnorestored = 1\nactionban = echo quiet <ip> >> {}\n",
                log.display()
            ),
        )
        .unwrap();
        let refs = vec![
            ActionRef::from_path_spec(&format!("{}/rec.conf", d.display())).unwrap(),
            ActionRef::from_path_spec(&format!("{}/quiet.conf", d.display())).unwrap(),
            ActionRef::from_path_spec(&format!("{}/rec.conf", d.display()))
                .map(|mut r| {
                    r.name = "nftables".into();
                    r
                })
                .unwrap(),
        ];
        let id = JailId(0);
        let mut set = ActionSet::new();
        set.configure([(id, "sip", refs.as_slice())]);
        set.note(&[FailureEvent {
            time: Time(1_795_621_253_000),
            jail: id,
            addr: "192.0.2.7".parse().unwrap(),
            kind: FailureKind::RegisterAuth,
            user: Some("$(touch x)'\"".into()),
            scanner: false,
        }]);
        set.banned(&ban(id, "198.51.100.1/32", BanReason::Cluster), false);
        set.banned(&ban(id, "192.0.2.9/32", BanReason::Failures), true);
        set.banned(&ban(id, "192.0.2.7/32", BanReason::Failures), false);
        set.unbanned(&UnbanDecision {
            jail: id,
            jail_name: "sip".into(),
            addr: "198.51.100.1/32".parse().unwrap(),
            reason: UnbanReason::Expired,
            lifted: None,
        });
        set.unbanned(&UnbanDecision {
            jail: id,
            jail_name: "sip".into(),
            addr: "192.0.2.7/32".parse().unwrap(),
            reason: UnbanReason::Manual,
            lifted: None,
        });
        let stats = set.stats().clone();
        set.stop();
        let got = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(
            got,
            "start sip\n\
             ban 192.0.2.9 1 3 \n\n\
             ban 192.0.2.7 0 3 $(touch x)'\"\n\
             2026-11-25T15:40:53.000Z 192.0.2.7 register_auth user $(touch x)'\"\n\
             quiet 192.0.2.7\n\
             unban 192.0.2.7 3 600\n\
             unban 192.0.2.9 3 600\n\
             stop\n"
        );
        assert_eq!(stats.view().failed, 0);
    }

    /// A reload stops and starts only the jails whose action list changed,
    /// and stops those that lost their actions.
    #[test]
    fn a_reload_restarts_only_what_changed() {
        let d = std::env::temp_dir().join(format!("sipwarden-set-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let log = d.join("log");
        std::fs::write(
            d.join("rec.conf"),
            format!(
                "[Definition]\nactionstart = echo start <name> <tag> >> {l}\nactionstop = echo stop <name> <tag> >> {l}\n",
                l = log.display()
            ),
        )
        .unwrap();
        let r = |tag: &str| {
            vec![
                ActionRef::from_path_spec(&format!("{}/rec.conf[tag={tag}]", d.display())).unwrap(),
            ]
        };
        let (a1, b1, b2) = (r("1"), r("1"), r("2"));
        let mut set = ActionSet::new();
        set.configure([
            (JailId(0), "a", a1.as_slice()),
            (JailId(1), "b", b1.as_slice()),
        ]);
        // a unchanged, b changed, then a gone.
        set.configure([
            (JailId(0), "a", a1.as_slice()),
            (JailId(1), "b", b2.as_slice()),
        ]);
        set.configure([(JailId(1), "b", b2.as_slice())]);
        set.stop();
        let got = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_dir_all(&d);
        let mut lines: Vec<&str> = got.lines().collect();
        // Two lanes run at once: each jail's own order is what holds.
        let a: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains(" a "))
            .collect();
        let b: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains(" b "))
            .collect();
        assert_eq!(a, ["start a 1", "stop a 1"]);
        assert_eq!(b, ["start b 1", "stop b 1", "start b 2", "stop b 2"]);
        lines.sort();
        assert_eq!(lines.len(), 6);
    }
    /// A directory of action files for one test, and its log.
    fn actions_dir(tag: &str, files: &[(&str, &str)]) -> (std::path::PathBuf, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!("sipwarden-set-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let log = d.join("log");
        for (name, text) in files {
            let text = text.replace("LOG", &log.display().to_string());
            std::fs::write(d.join(format!("{name}.conf")), text).unwrap();
        }
        (d, log)
    }

    fn aref(d: &std::path::Path, name: &str) -> ActionRef {
        ActionRef::from_path_spec(&format!("{}/{name}.conf", d.display())).unwrap()
    }

    fn unban(jail: JailId, addr: &str) -> UnbanDecision {
        UnbanDecision {
            jail,
            jail_name: "sip".into(),
            addr: addr.parse().unwrap(),
            reason: UnbanReason::Expired,
            lifted: None,
        }
    }

    fn finish(set: ActionSet, d: &std::path::Path, log: &std::path::Path) -> String {
        set.stop();
        let got = std::fs::read_to_string(log).unwrap_or_default();
        let _ = std::fs::remove_dir_all(d);
        got
    }

    const REC: &str = "[Definition]\nactionban = echo ban <ip> <restored> >> LOG\nactionunban = echo unban <ip> <restored> >> LOG\n";
    const FLUSHED: &str = "[Definition]\nactionban = echo fban <ip> >> LOG\nactionunban = echo funban <ip> >> LOG\nactionflush = echo flush >> LOG\n";

    /// With the table full of recent addresses, each new address costs a
    /// bounded number of entries examined, not a pass over the table; old
    /// entries still make room.
    #[test]
    fn a_full_table_makes_room_in_bounded_work() {
        let mut set = ActionSet::new();
        set.jails.insert(
            JailId(0),
            JailActions {
                name: "j".into(),
                refs: Vec::new(),
                actions: Vec::new(),
            },
        );
        let ev = |i: u128, t: i64| FailureEvent {
            time: Time(t),
            jail: JailId(0),
            addr: IpAddr::V6(std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | i)),
            kind: FailureKind::RegisterAuth,
            user: None,
            scanner: false,
        };
        let t0 = 1_795_621_254_000;
        let full: Vec<FailureEvent> = (0..MAX_SEEN as u128).map(|i| ev(i, t0)).collect();
        set.note(&full);
        assert_eq!(set.seen.len(), MAX_SEEN);
        let before = set.scanned;
        let fresh: Vec<FailureEvent> = (0..1000).map(|i| ev(1_000_000 + i, t0 + 1000)).collect();
        set.note(&fresh);
        let work = set.scanned - before;
        assert!(
            work <= 2 * 1000,
            "{work} entries examined for 1000 new addresses"
        );
        assert_eq!(set.seen.len(), MAX_SEEN);
        // Once the first ones are old, new addresses take their place.
        let late: Vec<FailureEvent> = (0..10)
            .map(|i| ev(2_000_000 + i, t0 + SEEN_FOR_MS + 1))
            .collect();
        set.note(&late);
        assert_eq!(set.seen.len(), MAX_SEEN);
        assert!(set.seen.contains_key(&(JailId(0), late[9].addr)));
        assert!(!set.seen.contains_key(&(JailId(0), full[0].addr)));
    }

    /// A jail a reload removes runs `actionunban` for each of its bans
    /// (its lifted unbans come after the jail is gone), or `actionflush`
    /// for actions that have one, as fail2ban stops a jail.
    #[test]
    fn a_removed_jail_unbans_remotely() {
        let (d, log) = actions_dir("gone", &[("rec", REC), ("fl", FLUSHED)]);
        let refs = vec![aref(&d, "rec"), aref(&d, "fl")];
        let id = JailId(0);
        let mut set = ActionSet::new();
        set.configure([(id, "sip", refs.as_slice())]);
        set.banned(&ban(id, "192.0.2.7/32", BanReason::Failures), false);
        // Reload's order: the actions are synced, then the lifted bans
        // dispatched.
        set.configure(std::iter::empty());
        set.unbanned(&unban(id, "192.0.2.7/32"));
        assert_eq!(
            finish(set, &d, &log),
            "ban 192.0.2.7 0\nfban 192.0.2.7\nunban 192.0.2.7 0\nflush\n"
        );
    }

    /// An action a reload removes from a jail runs `actionunban` for the
    /// jail's bans when it has no `actionflush`.
    #[test]
    fn a_removed_action_unbans_remotely() {
        let (d, log) = actions_dir("dropped", &[("rec", REC), ("fl", FLUSHED)]);
        let both = vec![aref(&d, "rec"), aref(&d, "fl")];
        let one = vec![aref(&d, "fl")];
        let id = JailId(0);
        let mut set = ActionSet::new();
        set.configure([(id, "sip", both.as_slice())]);
        set.banned(&ban(id, "192.0.2.7/32", BanReason::Failures), false);
        set.configure([(id, "sip", one.as_slice())]);
        let got = finish(set, &d, &log);
        assert!(got.contains("unban 192.0.2.7 0\n"), "{got}");
    }

    /// A reload re-reads an action file whose content changed.
    #[test]
    fn a_reload_rereads_a_changed_action_file() {
        let (d, log) = actions_dir(
            "changed",
            &[("v", "[Definition]\nactionstart = echo start 1 >> LOG\n")],
        );
        let refs = vec![aref(&d, "v")];
        let mut set = ActionSet::new();
        set.configure([(JailId(0), "sip", refs.as_slice())]);
        std::fs::write(
            d.join("v.conf"),
            format!(
                "[Definition]\nactionstart = echo start 2 >> {}\n",
                log.display()
            ),
        )
        .unwrap();
        set.configure([(JailId(0), "sip", refs.as_slice())]);
        assert_eq!(finish(set, &d, &log), "start 1\nstart 2\n");
    }

    /// A restored ban's unban says `<restored>` 1, and `norestored`
    /// actions, which did not ban it, do not unban it.
    #[test]
    fn a_restored_ban_unbans_as_restored() {
        let quiet = "[Definition]\nnorestored = 1\nactionban = echo qban <ip> >> LOG\nactionunban = echo qunban <ip> >> LOG\n";
        let (d, log) = actions_dir("restored", &[("rec", REC), ("quiet", quiet)]);
        let refs = vec![aref(&d, "rec"), aref(&d, "quiet")];
        let id = JailId(0);
        let mut set = ActionSet::new();
        set.configure([(id, "sip", refs.as_slice())]);
        set.banned(&ban(id, "192.0.2.9/32", BanReason::Failures), true);
        set.unbanned(&unban(id, "192.0.2.9/32"));
        assert_eq!(
            finish(set, &d, &log),
            "ban 192.0.2.9 1\nunban 192.0.2.9 1\n"
        );
    }

    /// Through the action set: a ban decided here is told; a restored ban, a
    /// ban from the fleet and (for AbuseIPDB) a prefix or a manual ban are not.
    /// The first and last failure seen reach the report.
    #[test]
    fn only_bans_decided_here_are_told() {
        use crate::notify::test_server::{Got, Server};
        let srv = Server::start(&["200", "200", "200", "200"], None);
        let key = std::env::temp_dir().join(format!("sipwarden-set-key-{}", std::process::id()));
        std::fs::write(&key, "k").unwrap();
        let v: toml::Table = toml::from_str(&format!(
            "notify = [{{ type = \"webhook\", url = \"{}\", retries = 0 }}, \
             {{ type = \"abuseipdb\", key_file = \"{}\", categories = [8], url = \"http://127.0.0.1:{}/report\" }}]",
            srv.url("http"),
            key.display(),
            srv.port
        ))
        .unwrap();
        let targets = crate::notify::parse_notify(&v["notify"]).unwrap();
        let _ = std::fs::remove_file(&key);
        let mut set = ActionSet::new();
        set.configure_notify([(JailId(0), targets.as_slice())], Some("node-a"));
        set.configure(std::iter::empty());
        assert!(!set.is_empty());
        let ev = |ms: i64| crate::event::FailureEvent {
            time: Time(ms),
            jail: JailId(0),
            addr: "198.51.100.7".parse().unwrap(),
            kind: crate::event::FailureKind::RegisterAuth,
            user: Some("\"},{\"x".into()),
            scanner: false,
        };
        set.note(&[ev(1_795_621_253_000), ev(1_795_621_253_400)]);
        set.banned(
            &ban(JailId(0), "198.51.100.20/32", BanReason::Failures),
            true,
        );
        set.banned(
            &ban(JailId(0), "198.51.100.21/32", BanReason::Cluster),
            false,
        );
        // A prefix and a manual ban: the webhook only.
        set.banned(&ban(JailId(0), "203.0.113.0/24", BanReason::Manual), false);
        set.banned(&ban(JailId(0), "198.51.100.7/32", BanReason::Burst), false);
        let v = set.view();
        set.stop();
        let got = srv.finish();
        let hooks: Vec<serde_json::Value> = got
            .iter()
            .filter(|g| g.line.contains("/hook/"))
            .map(|g| serde_json::from_slice(&g.body).unwrap())
            .collect();
        assert_eq!(hooks.len(), 2, "{hooks:?}");
        assert_eq!(hooks[0]["prefix"], "203.0.113.0/24");
        assert_eq!(hooks[0]["reason"], "manual");
        assert_eq!(hooks[1]["address"], "198.51.100.7");
        assert_eq!(hooks[1]["first_seen"], "2026-11-25T15:40:53.000Z");
        assert_eq!(hooks[1]["last_seen"], "2026-11-25T15:40:53.400Z");
        assert_eq!(hooks[1]["node"], "node-a");
        let reports: Vec<&Got> = got.iter().filter(|g| g.line.contains("/report")).collect();
        assert_eq!(reports.len(), 1);
        assert!(String::from_utf8_lossy(&reports[0].body).contains("ip=198.51.100.7"));
        assert_eq!(v.notify.len(), 2);
    }

    /// A jail bans an IPv6 source as its /64: the webhook's first and last
    /// seen, and an action's `<matches>`, are those of the addresses inside
    /// it (before: none, as no failure came from the prefix's own address);
    /// what was seen outside it stays.
    #[test]
    fn a_prefix_ban_tells_what_was_seen_inside_it() {
        use crate::notify::test_server::Server;
        let srv = Server::start(&["200"], None);
        let v: toml::Table = toml::from_str(&format!(
            "notify = [{{ type = \"webhook\", url = \"{}\", retries = 0 }}]",
            srv.url("http"),
        ))
        .unwrap();
        let targets = crate::notify::parse_notify(&v["notify"]).unwrap();
        let mut set = ActionSet::new();
        set.configure_notify([(JailId(0), targets.as_slice())], Some("node-a"));
        set.configure(std::iter::empty());
        let ev = |addr: &str, ms: i64| FailureEvent {
            time: Time(ms),
            jail: JailId(0),
            addr: addr.parse().unwrap(),
            kind: FailureKind::RegisterAuth,
            user: Some(format!("u{ms}").into()),
            scanner: false,
        };
        let t0 = 1_795_621_253_000;
        let mut batch = vec![
            ev("2001:db8:1:3::1", t0 - 5000),
            ev("2001:db8:1:1::1", t0 + 9000),
        ];
        batch.extend((0..12).map(|i| ev(&format!("2001:db8:1:2::{:x}", 0x10 + i), t0 + 100 * i)));
        // What an action's ticket gets: the newest lines, the last user.
        let mut other = ActionSet::new();
        other.configure_notify([(JailId(0), targets.as_slice())], None);
        other.note(&batch);
        let s = other.forget_within(JailId(0), &"2001:db8:1:2::/64".parse().unwrap());
        assert_eq!(s.user.as_deref(), Some(&*format!("u{}", t0 + 1100)));
        assert_eq!(s.lines.len(), MAX_MATCHES);
        assert!(s.lines[0].contains("2001:db8:1:2::12"), "{:?}", s.lines);
        assert!(s.lines[9].contains("2001:db8:1:2::1b"), "{:?}", s.lines);
        // The webhook of the ban.
        set.note(&batch);
        set.banned(
            &ban(JailId(0), "2001:db8:1:2::/64", BanReason::Failures),
            false,
        );
        assert_eq!(set.seen.len(), 2, "the other /64s are kept");
        set.stop();
        let got = srv.finish();
        let hook: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
        assert_eq!(hook["prefix"], "2001:db8:1:2::/64");
        assert_eq!(hook["first_seen"], "2026-11-25T15:40:53.000Z", "{hook}");
        assert_eq!(hook["last_seen"], "2026-11-25T15:40:54.100Z", "{hook}");
    }
}
