//! The running daemon: sources feed jails, jails feed the enforcer and the
//! store, the control socket reads and steers it all.
//!
//! Sources run on their own threads and send batches of events over a
//! channel. One task owns every jail (no locks on the counting path), turns
//! events into decisions, logs them in fail2ban's words, and hands them in
//! batches to the enforcer thread and the store thread.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::duration::{BanTime, parse_bantime};
use crate::config::{Backend, Config, JailConfig, parse_net};
use crate::control::server::{ControlMsg, ControlSocket};
use crate::control::{
    BanRef, BanView, JailView, Request, Response, SourceView, StatusView, UnbanView,
};
use crate::enforce::{Enforcer, LogOnly, NftEnforcer};
use crate::event::{FailureEvent, JailId, Time};
use crate::filter::{self, Filter, FilterOptions};
use crate::jail::{
    BanDecision, BanHistory, BanReason, Decision, DisplayNet, IgnoreList, Jail, JailPolicy,
    Outcome, UnbanDecision, is_host, own_addresses,
};
use crate::source::esl::{EslPeer, EslSource, EslStats, EventMapper};
use crate::source::file::{FileSource, FollowStats};
use crate::source::scanner::ScannerList;
use crate::store::{Store, StoreOp, StoredBan};

/// How the daemon was asked to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Log decisions, touch no firewall.
    pub dry_run: bool,
    /// The configuration file given with `--config`, re-read on reload.
    pub config_path: Option<PathBuf>,
    /// A fail2ban configuration directory (`--fail2ban-config`), re-read on reload.
    pub fail2ban_config: Option<PathBuf>,
}

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Something the configuration asks for cannot be set up.
    #[error("{0}")]
    Setup(String),
    /// The runtime failed (signals, threads).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Batches in flight between sources and jails (a batch is one read, up to a
/// few thousand events); sources block when the jails fall this far behind,
/// so a flood cannot pile up in memory.
const EVENT_QUEUE: usize = 16;

/// Builds a jail's policy from its configuration.
fn policy(jc: &JailConfig, own: &[IpNet], peers: &[IpNet]) -> JailPolicy {
    let mut ignore = IgnoreList::new(jc.ignoreip.clone());
    if jc.ignoreself {
        ignore.extend(own.iter().copied());
    }
    // Cluster peers (and the Redis server) are never banned.
    ignore.extend(peers.iter().copied());
    // The PBXs we listen to are never banned.
    ignore.extend(
        jc.esl
            .iter()
            .filter_map(|p| p.host.parse::<std::net::IpAddr>().ok())
            .map(IpNet::from),
    );
    JailPolicy {
        maxretry: jc.maxretry,
        findtime: jc.findtime,
        bantime: jc.bantime,
        ignore,
        max_tracked: jc.max_tracked,
        escalation: jc.escalation.clone(),
        ban_scanners: jc.ban_scanners,
        trust_registered: jc.trust_registered,
        trusted_maxretry: jc.trusted_maxretry,
        wrong_call_state_maxretry: jc.wrong_call_state_maxretry,
    }
}

/// The counting core: every jail, owned by one task. Jail ids stay stable
/// across reloads (a name keeps its id), so running sources keep working.
#[derive(Debug, Default)]
pub struct Core {
    slots: Vec<Option<Jail>>,
    ids: HashMap<String, JailId>,
    filters: HashMap<JailId, Option<String>>,
    history: BanHistory,
    own: Vec<IpNet>,
    /// Addresses of cluster peers and of the Redis server.
    peers: Vec<IpNet>,
}

impl Core {
    /// A core with the given jails.
    pub fn new(jails: &[&JailConfig]) -> Core {
        let mut core = Core {
            own: if jails.iter().any(|j| j.ignoreself) {
                own_addresses()
            } else {
                Vec::new()
            },
            ..Core::default()
        };
        core.configure(jails);
        core
    }

    /// Applies a (new) set of jail configurations: existing jails keep their
    /// state with the new policy, new ones start empty, and jails no longer
    /// configured are dropped with their bans lifted (returned).
    pub fn configure(&mut self, jails: &[&JailConfig]) -> Vec<Decision> {
        let mut keep = vec![false; self.slots.len()];
        for jc in jails {
            let p = policy(jc, &self.own, &self.peers);
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
                None => *slot = Some(Jail::new(id, &jc.name, p)),
            }
            keep[usize::from(id.0)] = true;
            self.filters.insert(id, jc.filter.clone());
        }
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if !keep[i] {
                if let Some(mut j) = slot.take() {
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

    /// The id of the running jail `name`.
    pub fn jail_id(&self, name: &str) -> Option<JailId> {
        self.ids
            .get(name)
            .copied()
            .filter(|id| self.jail(*id).is_some())
    }

    fn jail(&self, id: JailId) -> Option<&Jail> {
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
                    tracing::warn!("{d}");
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

    /// Forgets stale failure state.
    pub fn sweep(&mut self, now: Time) {
        for jail in self.slots.iter_mut().flatten() {
            jail.sweep(now);
        }
    }

    /// Loads escalation history from the store.
    pub fn load_history(&mut self, counts: Vec<(String, IpNet, u32)>) {
        for (jail, addr, n) in counts {
            self.history.note_ban(&Arc::from(jail.as_str()), addr, n);
        }
    }

    /// Puts back bans read from the store; returns the decisions to enforce
    /// and how many bans belonged to jails no longer configured.
    pub fn restore(&mut self, bans: Vec<StoredBan>) -> (Vec<Decision>, usize) {
        let mut out = Vec::with_capacity(bans.len());
        let mut orphans = 0;
        for b in bans {
            match self
                .ids
                .get(&b.jail)
                .and_then(|id| self.slots.get_mut(usize::from(id.0)))
                .and_then(Option::as_mut)
            {
                Some(j) => out.push(Decision::Ban(
                    j.restore(b.addr, b.start, b.end, b.failures, b.reason),
                )),
                None => orphans += 1,
            }
        }
        (out, orphans)
    }

    /// Adds cluster peers' addresses (never banned); `jails` re-applies the
    /// policies. The set only grows: a heartbeat that misses a peer for a
    /// moment (a restart, Redis coming back empty) must not leave it
    /// bannable.
    pub fn set_peers(&mut self, peers: Vec<IpNet>, jails: &[&JailConfig]) {
        let before = self.peers.len();
        for p in peers {
            if !self.peers.contains(&p) {
                self.peers.push(p);
            }
        }
        if self.peers.len() != before {
            self.configure(jails);
        }
    }

    /// A ban another node decided: kept with its own start and end. `None`
    /// when this node has no such jail, already holds the ban at least as
    /// long, or must never ban the address.
    pub fn remote_ban(&mut self, b: &crate::cluster::SharedBan) -> Option<BanDecision> {
        let net = parse_request_net(&b.addr).ok()?;
        let id = self.jail_id(&b.jail)?;
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
        let end = b.end.map(Time);
        if let Some(cur) = j.banned().get(&net) {
            let longer = match (cur.end, end) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(c), Some(e)) => c >= e,
            };
            if longer {
                return None;
            }
        }
        let d = j.restore(net, Time(b.start), end, b.failures, BanReason::Cluster);
        tracing::warn!("{d} (from node {})", b.origin);
        Some(d)
    }

    /// The jail's `shared_count` failures: what the cluster counts.
    pub fn shared_failure(&self, ev: &FailureEvent) -> Option<(String, u32, u64)> {
        let j = self.jail(ev.jail)?;
        if j.policy().ignore.contains(ev.addr) || j.banned().contains_key(&IpNet::from(ev.addr)) {
            return None;
        }
        Some((
            j.name().to_string(),
            j.policy().maxretry,
            j.policy().findtime.0 * 1000,
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
        let net = IpNet::from(addr);
        if j.policy().ignore.contains(addr) || j.banned().contains_key(&net) {
            return None;
        }
        let bantime = j.policy().bantime;
        let d = j.ban(net, now, bantime, failures, BanReason::Failures);
        self.history.note_ban(j.name_arc(), net, 1);
        tracing::warn!("{d} (counted across the cluster)");
        Some(d)
    }

    /// A ban by hand. Refuses addresses a jail must never ban unless `force`.
    pub fn manual_ban(
        &mut self,
        jail: &str,
        net: IpNet,
        bantime: Option<BanTime>,
        force: bool,
        now: Time,
    ) -> Result<BanDecision, String> {
        let id = self.jail_id(jail).ok_or_else(|| self.no_such_jail(jail))?;
        let Some(Some(j)) = self.slots.get_mut(usize::from(id.0)) else {
            return Err(format!("no jail named {jail:?}"));
        };
        if !force {
            if let Some(n) = j.policy().ignore.overlapping(&net) {
                return Err(format!(
                    "{} is covered by ignoreip/ignoreself ({n}) of jail {jail}; refusing (add --force to ban it anyway)",
                    DisplayNet(&net)
                ));
            }
        }
        let bantime = bantime.unwrap_or(j.policy().bantime);
        let d = j.ban(net, now, bantime, 0, BanReason::Manual);
        self.history.note_ban(j.name_arc(), net, 1);
        tracing::warn!("{d}");
        Ok(d)
    }

    /// Lifts bans by hand: of `addr` (in `jail`, or every jail), or all of
    /// them. A lifted address starts over with a clean slate.
    pub fn unban(
        &mut self,
        addr: Option<IpNet>,
        jail: Option<&str>,
        all: bool,
    ) -> Result<Vec<UnbanDecision>, String> {
        if let Some(name) = jail {
            if self.jail_id(name).is_none() {
                return Err(self.no_such_jail(name));
            }
        }
        let mut out = Vec::new();
        for j in self.slots.iter_mut().flatten() {
            if jail.is_some_and(|n| n != j.name()) {
                continue;
            }
            if all {
                out.extend(j.unban_all());
            } else if let Some(a) = addr {
                out.extend(j.unban(a));
            }
        }
        for u in &out {
            self.history.clear(&u.addr);
            tracing::info!("{u}");
        }
        if out.is_empty() && !all {
            if let Some(a) = addr {
                return Err(format!(
                    "{} is not banned{}",
                    DisplayNet(&a),
                    jail.map(|j| format!(" in jail {j}")).unwrap_or_default()
                ));
            }
        }
        Ok(out)
    }

    fn no_such_jail(&self, name: &str) -> String {
        let names: Vec<&str> = self.jails().map(Jail::name).collect();
        format!(
            "no running jail named {name:?}; jails: {}",
            names.join(", ")
        )
    }

    /// The view of one jail for `status`.
    pub fn jail_view(
        &self,
        j: &Jail,
        sources: Vec<SourceView>,
        with_bans: bool,
        now: Time,
        origins: &HashMap<(JailId, IpNet), Arc<str>>,
    ) -> JailView {
        let c = j.counters();
        JailView {
            name: j.name().to_string(),
            filter: self.filters.get(&j.id()).cloned().flatten(),
            maxretry: j.policy().maxretry,
            findtime: j.policy().findtime,
            bantime: j.policy().bantime,
            currently_failing: j.failing_count() as u64,
            total_failed: c.total_failed,
            currently_banned: j.banned().len() as u64,
            total_banned: c.total_banned,
            total_unbanned: c.total_unbanned,
            evictions: c.evictions,
            sources,
            banned: with_bans.then(|| {
                let mut v: Vec<BanView> = j
                    .banned()
                    .iter()
                    .map(|(addr, b)| BanView {
                        addr: DisplayNet(addr).to_string(),
                        jail: j.name().to_string(),
                        start: b.start.to_string(),
                        end: b.end.map(|e| e.to_string()),
                        remaining_s: b.end.map(|e| (e.0 - now.0).max(0) / 1000),
                        failures: b.failures,
                        reason: match b.reason {
                            BanReason::Failures => "failures".into(),
                            BanReason::Manual => "manual".into(),
                            BanReason::Cluster => "cluster".into(),
                        },
                        origin: origins.get(&(j.id(), *addr)).map(|o| o.to_string()),
                    })
                    .collect();
                v.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.addr.cmp(&b.addr)));
                v
            }),
        }
    }
}

/// What identifies a jail's sources: when it changes on reload, the
/// followers restart.
#[derive(Clone, Debug, PartialEq)]
struct SourceKey {
    filter: Option<String>,
    fail2ban_filter: Option<(PathBuf, String)>,
    logpath: Vec<PathBuf>,
    from_start: bool,
    logtimezone: String,
    options: FilterOptions,
    esl: Vec<EslPeer>,
    invite_weight: u32,
    wire: Option<crate::source::wire::WireConfig>,
}

impl SourceKey {
    fn of(jc: &JailConfig) -> SourceKey {
        SourceKey {
            filter: jc.filter.clone(),
            fail2ban_filter: jc.fail2ban_filter.clone(),
            logpath: jc.logpath.clone(),
            from_start: jc.from_start,
            logtimezone: jc.logtimezone.clone(),
            options: jc.filter_options,
            esl: jc.esl.clone(),
            invite_weight: jc.invite_weight,
            wire: jc.wire.clone(),
        }
    }
}

/// The sources of one jail: file followers (threads) and Event Socket
/// clients (tasks).
struct SourceGroup {
    key: SourceKey,
    stop: Arc<AtomicBool>,
    stats: Vec<(PathBuf, Arc<FollowStats>)>,
    esl: Vec<(String, Arc<EslStats>, tokio::task::JoinHandle<()>)>,
    wire: Option<(String, Arc<crate::source::wire::WireStats>)>,
}

impl SourceGroup {
    fn views(&self) -> Vec<SourceView> {
        let files = self.stats.iter().map(|(p, s)| SourceView {
            kind: "file".into(),
            path: p.display().to_string(),
            healthy: s.open.load(Ordering::Relaxed),
            lines: s.lines.load(Ordering::Relaxed),
            matched: s.matched.load(Ordering::Relaxed),
        });
        let esl = self.esl.iter().map(|(label, s, _)| SourceView {
            kind: "esl".into(),
            path: label.clone(),
            healthy: s.connected.load(Ordering::Relaxed),
            lines: s.events.load(Ordering::Relaxed),
            matched: s.failures.load(Ordering::Relaxed),
        });
        let wire = self.wire.iter().map(|(label, s)| SourceView {
            kind: "wire".into(),
            path: label.clone(),
            healthy: s.up.load(Ordering::Relaxed),
            lines: s.messages.load(Ordering::Relaxed),
            matched: s.failures.load(Ordering::Relaxed),
        });
        files.chain(esl).chain(wire).collect()
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, _, task) in &self.esl {
            task.abort();
        }
    }
}

fn spawn_sources(
    jc: &JailConfig,
    id: JailId,
    tx: &mpsc::Sender<Vec<FailureEvent>>,
    scanners: &Arc<ScannerList>,
) -> Result<SourceGroup, DaemonError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut stats = Vec::new();
    let chosen: Option<Arc<dyn Filter>> = match (&jc.filter, &jc.fail2ban_filter) {
        (Some(fname), _) => Some(
            filter::builtin(fname, jc.filter_options)
                .map(Arc::from)
                .ok_or_else(|| {
                    DaemonError::Setup(format!("jail {}: unknown filter {fname:?}", jc.name))
                })?,
        ),
        (None, Some((dir, spec))) => Some(Arc::new(
            filter::f2b::F2bFilter::load(dir, spec, &Default::default())
                .map_err(|e| DaemonError::Setup(format!("jail {}: {e}", jc.name)))?,
        )),
        (None, None) => None,
    };
    if let Some(filter) = chosen {
        let tz = filter::date::parse_zone(&jc.logtimezone)
            .map_err(|e| DaemonError::Setup(format!("jail {}: {e}", jc.name)))?;
        for path in &jc.logpath {
            let st = Arc::new(FollowStats::default());
            FileSource {
                path: path.clone(),
                jail: id,
                filter: filter.clone(),
                tz: tz.clone(),
                from_start: jc.from_start,
                tx: tx.clone(),
                stop: stop.clone(),
                scanners: scanners.clone(),
                stats: st.clone(),
            }
            .spawn()
            .map_err(|source| DaemonError::Io {
                what: format!("starting the follower of {}", path.display()),
                source,
            })?;
            stats.push((path.clone(), st));
        }
    }
    let mut esl = Vec::new();
    for peer in &jc.esl {
        let st = Arc::new(EslStats::default());
        let src = EslSource {
            peer: peer.clone(),
            mapper: EventMapper {
                jail: id,
                invite_weight: jc.invite_weight,
                scanners: scanners.clone(),
            },
            tx: tx.clone(),
            stats: st.clone(),
        };
        esl.push((peer.label(), st, tokio::spawn(src.run())));
    }
    let wire = match &jc.wire {
        Some(w) => {
            let st = Arc::new(crate::source::wire::WireStats::default());
            crate::source::wire::WireSource {
                cfg: w.clone(),
                jail: id,
                tx: tx.clone(),
                stop: stop.clone(),
                scanners: scanners.clone(),
                stats: st.clone(),
            }
            .spawn()
            .map_err(|e| DaemonError::Setup(format!("jail {}: wire source: {e}", jc.name)))?;
            let label = format!(
                "{} ports {:?}",
                w.interface.as_deref().unwrap_or("all interfaces"),
                w.ports
            );
            tracing::info!("[{}] wire: capturing SIP on {label}", jc.name);
            Some((label, st))
        }
        None => None,
    };
    Ok(SourceGroup {
        key: SourceKey::of(jc),
        stop,
        stats,
        esl,
        wire,
    })
}

/// Picks the enforcer for the configuration.
fn build_enforcer(config: &Config, opts: &RunOptions) -> Result<Box<dyn Enforcer>, DaemonError> {
    if opts.dry_run || config.firewall.backend == Backend::None {
        tracing::info!("firewall backend none (dry run): decisions are logged, not enforced");
        return Ok(Box::new(LogOnly));
    }
    let feeds = config.feeds.iter().map(|f| f.name.clone()).collect();
    let nft = NftEnforcer::start_with_feeds(&config.firewall, feeds)
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    Ok(Box::new(nft))
}

/// Keeps one blocklist feed loaded: its last good copy first, then a fetch
/// every `refresh`; a failed fetch changes nothing.
async fn run_feed(
    f: crate::feed::FeedConfig,
    state_dir: PathBuf,
    tx: std::sync::mpsc::Sender<(String, Vec<IpNet>)>,
    view: Arc<std::sync::Mutex<crate::control::FeedView>>,
) {
    let note = |entries: Option<usize>, error: Option<String>| {
        if let Ok(mut v) = view.lock() {
            if let Some(n) = entries {
                v.entries = n as u64;
            }
            if error.is_none() {
                v.last_ok = Some(Time::now().to_string());
            }
            v.error = error;
        }
    };
    let mut current = crate::feed::load_saved(&state_dir, &f.name, f.max_entries);
    if let Some(nets) = &current {
        if let Ok(mut v) = view.lock() {
            v.entries = nets.len() as u64;
        }
        tracing::info!("feed {}: last good copy, {} entries", f.name, nets.len());
        let _ = tx.send((f.name.clone(), nets.clone()));
    }
    loop {
        let cfg = f.clone();
        match tokio::task::spawn_blocking(move || crate::feed::fetch(&cfg)).await {
            Ok(Ok(p)) if current.as_ref() == Some(&p.nets) => note(Some(p.nets.len()), None),
            Ok(Ok(p)) => {
                note(Some(p.nets.len()), None);
                if p.bad_lines > 0 {
                    if let Some((line, text)) = &p.first_bad {
                        tracing::warn!(
                            "feed {}: {} line(s) skipped, not an address or prefix (first: line {line}: {:?})",
                            f.name,
                            p.bad_lines,
                            text
                        );
                    }
                }
                if let Err(e) = crate::feed::save(&state_dir, &f.name, &p.nets) {
                    tracing::warn!(
                        "feed {}: cannot keep a copy in the state directory ({e})",
                        f.name
                    );
                }
                if tx.send((f.name.clone(), p.nets.clone())).is_err() {
                    return;
                }
                current = Some(p.nets);
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    "feed {}: {e}; keeping the last good copy ({} entries)",
                    f.name,
                    current.as_ref().map_or(0, Vec::len)
                );
                note(None, Some(e.to_string()));
            }
            Err(_) => return,
        }
        tokio::time::sleep(f.refresh).await;
    }
}

/// Takes the state directory's lock so a second daemon refuses to start.
/// `Ok(None)` when the directory cannot be used at all (the daemon then
/// runs without a store, still protecting).
fn lock_state_dir(dir: &Path) -> Result<Option<File>, DaemonError> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::error!(
            "state directory {}: {e}; running WITHOUT a state store: bans will not survive a restart",
            dir.display()
        );
        return Ok(None);
    }
    let path = dir.join("sipwarden.lock");
    let f = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(
                "{}: {e}; running WITHOUT a state store: bans will not survive a restart",
                path.display()
            );
            return Ok(None);
        }
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(DaemonError::Setup(format!(
            "another sipwarden is running with state directory {} (it holds {}); stop it first, or give this one another [daemon] state_dir",
            dir.display(),
            path.display()
        )));
    }
    let _ = f.set_len(0);
    let _ = std::io::Write::write_all(&mut &f, format!("{}\n", std::process::id()).as_bytes());
    Ok(Some(f))
}

/// Turns decisions into store writes.
fn store_ops(decisions: &[Decision], now: Time) -> Vec<StoreOp> {
    decisions
        .iter()
        .map(|d| match d {
            Decision::Ban(b) => StoreOp::Ban(StoredBan {
                jail: b.jail_name.to_string(),
                addr: b.addr,
                start: b.start,
                end: b.end,
                failures: b.failures,
                reason: b.reason,
            }),
            Decision::Unban(u) => StoreOp::Unban {
                jail: u.jail_name.to_string(),
                addr: u.addr,
                at: now,
                reason: u.reason,
            },
        })
        .collect()
}

/// Everything the main loop owns.
struct Runtime {
    core: Core,
    config: Config,
    opts: RunOptions,
    started: Time,
    firewall: &'static str,
    sources: HashMap<String, SourceGroup>,
    events_tx: mpsc::Sender<Vec<FailureEvent>>,
    dec_tx: std::sync::mpsc::Sender<Vec<Decision>>,
    store_tx: Option<std::sync::mpsc::Sender<Vec<StoreOp>>>,
    scanners: Arc<ScannerList>,
    /// The fleet, when `[cluster]` is set.
    cluster: Option<crate::cluster::Cluster>,
    /// Which node decided each ban received from the cluster.
    origins: HashMap<(JailId, IpNet), Arc<str>>,
    /// The last failures and attacks per minute (the dashboard's data).
    recent: Recent,
    /// Each blocklist feed's state, kept by its task.
    feeds: Vec<Arc<std::sync::Mutex<crate::control::FeedView>>>,
    /// Adds a few new bans' elements at once, before the enforcer thread.
    fast: Option<crate::enforce::nftables::FastAdd>,
}

/// Recent failures kept for the dashboard: a bounded ring, and counts per
/// minute over the last hour.
#[derive(Debug, Default)]
struct Recent {
    events: std::collections::VecDeque<FailureEvent>,
    /// (minute since the epoch, failures in it), oldest first.
    minutes: std::collections::VecDeque<(i64, u64)>,
}

/// Failures kept in the ring.
const RECENT_EVENTS: usize = 1000;

impl Recent {
    fn note(&mut self, batch: &[FailureEvent], now: Time) {
        let minute = now.0 / 60_000;
        match self.minutes.back_mut() {
            Some((m, n)) if *m == minute => *n += batch.len() as u64,
            _ => self.minutes.push_back((minute, batch.len() as u64)),
        }
        while self.minutes.front().is_some_and(|(m, _)| *m <= minute - 60) {
            self.minutes.pop_front();
        }
        // Only the newest RECENT_EVENTS of a large batch are kept.
        let skip = batch.len().saturating_sub(RECENT_EVENTS);
        for ev in &batch[skip..] {
            if self.events.len() == RECENT_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(ev.clone());
        }
    }

    fn view(&self, core: &Core, now: Time) -> crate::control::RecentView {
        use crate::control::{Count, RecentEvent, RecentView};
        let name = |id: JailId| {
            core.jail(id)
                .map(|j| j.name().to_string())
                .unwrap_or_default()
        };
        let minute = now.0 / 60_000;
        let per_minute = (minute - 59..=minute)
            .map(|m| {
                self.minutes
                    .iter()
                    .find(|(k, _)| *k == m)
                    .map_or(0, |(_, n)| *n)
            })
            .collect();
        let top = |key: &dyn Fn(&FailureEvent) -> Option<String>| {
            let mut c: HashMap<String, u64> = HashMap::new();
            for e in &self.events {
                if let Some(k) = key(e) {
                    *c.entry(k).or_default() += 1;
                }
            }
            let mut v: Vec<Count> = c
                .into_iter()
                .map(|(value, count)| Count { value, count })
                .collect();
            v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
            v.truncate(10);
            v
        };
        RecentView {
            events: self
                .events
                .iter()
                .rev()
                .take(100)
                .map(|e| RecentEvent {
                    time: e.time.to_string(),
                    jail: name(e.jail),
                    addr: e.addr.to_string(),
                    kind: serde_json::to_value(e.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    user: e.user.as_deref().map(String::from),
                })
                .collect(),
            per_minute,
            top_addrs: top(&|e| Some(e.addr.to_string())),
            top_users: top(&|e| e.user.as_deref().map(String::from)),
        }
    }
}

impl Runtime {
    /// Sends decisions to the enforcer and the store.
    /// Hands this node's own decisions to the cluster: its bans, and its
    /// manual unbans (expiries happen on every node by themselves).
    fn publish(&self, decisions: &[Decision]) {
        let Some(c) = &self.cluster else { return };
        for d in decisions {
            match d {
                Decision::Ban(b) if b.reason != BanReason::Cluster => {
                    c.send(crate::cluster::Outbound::Ban(crate::cluster::SharedBan {
                        jail: b.jail_name.to_string(),
                        addr: DisplayNet(&b.addr).to_string(),
                        start: b.start.0,
                        end: b.end.map(|e| e.0),
                        failures: b.failures,
                        origin: c.config.node.clone(),
                    }));
                }
                Decision::Unban(u) if u.reason == crate::jail::UnbanReason::Manual => {
                    c.send(crate::cluster::Outbound::Unban {
                        jail: u.jail_name.to_string(),
                        addr: DisplayNet(&u.addr).to_string(),
                    });
                }
                _ => {}
            }
        }
    }

    /// Failures of `shared_count` jails go to the cluster's counter.
    fn share_failures(&self, batch: &[FailureEvent]) {
        let Some(c) = &self.cluster else { return };
        // Which jails share their counts: looked up once per batch, not per event.
        let shared: Vec<JailId> = self
            .config
            .enabled_jails()
            .filter(|j| j.shared_count)
            .filter_map(|j| self.core.jail_id(&j.name))
            .collect();
        if shared.is_empty() {
            return;
        }
        for ev in batch {
            if !shared.contains(&ev.jail) {
                continue;
            }
            if let Some((jail, maxretry, findtime_ms)) = self.core.shared_failure(ev) {
                c.send(crate::cluster::Outbound::Failure {
                    jail,
                    addr: ev.addr,
                    time: ev.time,
                    maxretry,
                    findtime_ms,
                });
            }
        }
    }

    /// Applies what the cluster says.
    fn apply_cluster(&mut self, msg: crate::cluster::Inbound) -> Vec<Decision> {
        use crate::cluster::Inbound;
        match msg {
            Inbound::Ban(b) => match self.core.remote_ban(&b) {
                Some(d) => {
                    self.origins
                        .insert((d.jail, d.addr), Arc::from(b.origin.as_str()));
                    vec![Decision::Ban(d)]
                }
                None => Vec::new(),
            },
            Inbound::Unban { jail, addr, origin } => {
                let Ok(net) = parse_request_net(&addr) else {
                    return Vec::new();
                };
                if self.core.jail_id(&jail).is_none() {
                    return Vec::new();
                }
                match self.core.unban(Some(net), Some(&jail), false) {
                    Ok(us) => {
                        tracing::info!("[{jail}] unban of {addr} came from node {origin}");
                        if let Some(c) = &self.cluster {
                            c.send(crate::cluster::Outbound::Forget {
                                jail: jail.clone(),
                                addr: addr.clone(),
                            });
                        }
                        us.into_iter()
                            .map(|u| {
                                self.origins.remove(&(u.jail, u.addr));
                                Decision::Unban(u)
                            })
                            .collect()
                    }
                    Err(_) => Vec::new(),
                }
            }
            Inbound::SharedBan {
                jail,
                addr,
                failures,
            } => match self.core.shared_ban(&jail, addr, failures, Time::now()) {
                Some(d) => {
                    let ds = vec![Decision::Ban(d)];
                    self.publish(&ds);
                    ds
                }
                None => Vec::new(),
            },
            Inbound::Peers(addrs) => {
                let mut nets: Vec<IpNet> = addrs.into_iter().map(IpNet::from).collect();
                if let Some(ip) = self
                    .config
                    .cluster
                    .as_ref()
                    .and_then(|c| c.redis.host.parse::<std::net::IpAddr>().ok())
                {
                    nets.push(IpNet::from(ip));
                }
                nets.sort();
                nets.dedup();
                let enabled: Vec<JailConfig> = self.config.enabled_jails().cloned().collect();
                let refs: Vec<&JailConfig> = enabled.iter().collect();
                self.core.set_peers(nets, &refs);
                Vec::new()
            }
        }
    }

    fn dispatch(&mut self, decisions: Vec<Decision>) -> Result<(), DaemonError> {
        if decisions.is_empty() {
            return Ok(());
        }
        if !self.origins.is_empty() {
            for d in &decisions {
                if let Decision::Unban(u) = d {
                    self.origins.remove(&(u.jail, u.addr));
                }
            }
        }
        // A few new bans: into the kernel from here, now; the enforcer
        // thread follows with the same decisions and does the rest.
        if let Some(f) = &mut self.fast {
            if decisions.len() <= crate::enforce::nftables::FastAdd::MAX {
                f.add(decisions.iter().filter_map(|d| match d {
                    Decision::Ban(b) => Some(b),
                    Decision::Unban(_) => None,
                }));
            }
        }
        if let Some(tx) = &self.store_tx {
            let _ = tx.send(store_ops(&decisions, Time::now()));
        }
        self.dec_tx.send(decisions).map_err(|_| {
            DaemonError::Setup("the enforcer thread stopped; see the error above".into())
        })
    }

    fn start_sources(&mut self) -> Result<(), DaemonError> {
        let enabled: Vec<JailConfig> = self.config.enabled_jails().cloned().collect();
        let wanted: HashMap<&str, &JailConfig> =
            enabled.iter().map(|j| (j.name.as_str(), j)).collect();
        // Stop followers of jails that went away or changed.
        self.sources.retain(|name, g| {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|jc| SourceKey::of(jc) == g.key);
            if !keep {
                g.stop();
            }
            keep
        });
        for jc in &enabled {
            if self.sources.contains_key(&jc.name) {
                continue;
            }
            let Some(id) = self.core.jail_id(&jc.name) else {
                continue;
            };
            let g = spawn_sources(jc, id, &self.events_tx, &self.scanners)?;
            self.sources.insert(jc.name.clone(), g);
        }
        Ok(())
    }

    fn status(&self, jail: Option<&str>) -> Response {
        let now = Time::now();
        let views = |j: &Jail| {
            self.sources
                .get(j.name())
                .map(SourceGroup::views)
                .unwrap_or_default()
        };
        match jail {
            Some(name) => match self.core.jail_id(name).and_then(|id| self.core.jail(id)) {
                Some(j) => Response::ok(self.core.jail_view(j, views(j), true, now, &self.origins)),
                None => Response::error(self.core.no_such_jail(name)),
            },
            None => Response::ok(StatusView {
                version: env!("CARGO_PKG_VERSION").into(),
                started: self.started.to_string(),
                uptime_s: (now.0 - self.started.0) / 1000,
                firewall: self.firewall.into(),
                config: self.config.origin.clone(),
                jails: self
                    .core
                    .jails()
                    .map(|j| self.core.jail_view(j, views(j), false, now, &self.origins))
                    .collect(),
                cluster: self.cluster.as_ref().map(crate::cluster::Cluster::view),
                feeds: self
                    .feeds
                    .iter()
                    .filter_map(|f| f.lock().ok().map(|v| v.clone()))
                    .collect(),
            }),
        }
    }

    fn reload(&mut self) -> Response {
        let cfg = match Config::load_with(
            self.opts.config_path.as_deref(),
            self.opts.fail2ban_config.as_deref(),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reload refused, the running configuration stays: {e}");
                return Response::error(format!(
                    "reload refused, the running configuration stays: {e}"
                ));
            }
        };
        if cfg.firewall != self.config.firewall
            || cfg.daemon != self.config.daemon
            || cfg.cluster != self.config.cluster
            || cfg.http != self.config.http
            || cfg.feeds != self.config.feeds
        {
            tracing::warn!(
                "reload: [firewall], [daemon], [cluster], [http] and [[feed]] changes take effect at the next restart"
            );
        }
        let enabled: Vec<JailConfig> = cfg.enabled_jails().cloned().collect();
        let refs: Vec<&JailConfig> = enabled.iter().collect();
        let lifted = self.core.configure(&refs);
        self.scanners = Arc::new(ScannerList::new(&cfg.scanners));
        self.config = cfg;
        if let Err(e) = self.start_sources().and_then(|_| self.dispatch(lifted)) {
            return Response::error(e.to_string());
        }
        tracing::info!("reloaded {}: {} jail(s)", self.config.origin, enabled.len());
        Response::ok(serde_json::json!({ "config": self.config.origin, "jails": enabled.len() }))
    }

    fn control(&mut self, req: Request) -> Response {
        let now = Time::now();
        match req {
            Request::Ping {} => Response::ok(
                serde_json::json!({ "pong": true, "version": env!("CARGO_PKG_VERSION") }),
            ),
            Request::Status { jail } => self.status(jail.as_deref()),
            Request::Reload {} => self.reload(),
            Request::Recent {} => Response::ok(self.recent.view(&self.core, now)),
            Request::Ban {
                jail,
                addr,
                duration,
                force,
            } => {
                let net = match parse_request_net(&addr) {
                    Ok(n) => n,
                    Err(e) => return Response::error(e),
                };
                let bantime = match duration.as_deref().map(parse_bantime).transpose() {
                    Ok(b) => b,
                    Err(e) => return Response::error(e.to_string()),
                };
                match self.core.manual_ban(&jail, net, bantime, force, now) {
                    Ok(d) => {
                        let view = serde_json::json!({
                            "jail": d.jail_name.to_string(),
                            "addr": DisplayNet(&d.addr).to_string(),
                            "bantime": d.bantime.to_string(),
                            "end": d.end.map(|e| e.to_string()),
                        });
                        let ds = vec![Decision::Ban(d)];
                        self.publish(&ds);
                        match self.dispatch(ds) {
                            Ok(()) => Response::ok(view),
                            Err(e) => Response::error(e.to_string()),
                        }
                    }
                    Err(e) => Response::error(e),
                }
            }
            Request::Unban { addr, jail, all } => {
                let net = match (&addr, all) {
                    (Some(a), false) => match parse_request_net(a) {
                        Ok(n) => Some(n),
                        Err(e) => return Response::error(e),
                    },
                    (None, false) => return Response::error("unban needs an address, or --all"),
                    (Some(_), true) => {
                        return Response::error("give either an address or --all, not both");
                    }
                    (None, true) => None,
                };
                match self.core.unban(net, jail.as_deref(), all) {
                    Ok(us) => {
                        let view = UnbanView {
                            unbanned: us
                                .iter()
                                .map(|u| BanRef {
                                    jail: u.jail_name.to_string(),
                                    addr: DisplayNet(&u.addr).to_string(),
                                })
                                .collect(),
                        };
                        let ds: Vec<Decision> = us.into_iter().map(Decision::Unban).collect();
                        self.publish(&ds);
                        match self.dispatch(ds) {
                            Ok(()) => Response::ok(view),
                            Err(e) => Response::error(e.to_string()),
                        }
                    }
                    Err(e) => Response::error(e),
                }
            }
        }
    }
}

/// Reads an address or prefix given to `ban`/`unban`; a prefix with host
/// bits set is refused rather than silently widened.
pub fn parse_request_net(s: &str) -> Result<IpNet, String> {
    let net = parse_net(s)?;
    if let Ok(given) = s.trim().parse::<IpNet>() {
        if given != net {
            return Err(format!("{s} has host bits set; did you mean {net}?"));
        }
    }
    if net.prefix_len() == 0 {
        return Err(format!("{s} would ban everything; refusing"));
    }
    Ok(if is_host(&net) {
        IpNet::from(net.addr().to_canonical())
    } else {
        net
    })
}

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads.
pub async fn run(config: Config, opts: RunOptions) -> Result<(), DaemonError> {
    let enabled: Vec<JailConfig> = config.enabled_jails().cloned().collect();
    if enabled.len() > usize::from(u16::MAX) / 2 {
        return Err(DaemonError::Setup("too many jails".into()));
    }
    let lock = lock_state_dir(&config.daemon.state_dir)?;
    let control = ControlSocket::bind(&config.daemon.socket, config.daemon.socket_group.as_deref())
        .map_err(DaemonError::Setup)?;
    let now = Time::now();
    let mut store = match lock {
        Some(_) => match Store::open(&config.daemon.state_dir, now) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(
                    "{e}; running WITHOUT a state store: bans will not survive a restart"
                );
                None
            }
        },
        None => None,
    };
    let refs: Vec<&JailConfig> = enabled.iter().collect();
    let mut core = Core::new(&refs);
    let mut enforcer = build_enforcer(&config, &opts)?;
    let firewall = enforcer.name();

    // Restore the bans still in force, in a few batches, before anything new.
    if let Some(s) = &store {
        match s.ban_counts() {
            Ok(c) => core.load_history(c),
            Err(e) => tracing::error!("{e}; escalation starts without history"),
        }
        match s.active(now) {
            Ok(active) => {
                let t0 = std::time::Instant::now();
                let (decisions, orphans) = core.restore(active);
                if !decisions.is_empty() {
                    if let Err(e) = enforcer.apply(&decisions) {
                        tracing::error!("restoring bans: {e}");
                    }
                }
                tracing::info!(
                    "restored {} active ban(s) in {:?}",
                    decisions.len(),
                    t0.elapsed()
                );
                if orphans > 0 {
                    tracing::warn!(
                        "{orphans} stored ban(s) belong to jails no longer configured; not restored"
                    );
                }
            }
            Err(e) => tracing::error!("{e}; no bans restored"),
        }
    }

    // The enforcer runs on its own thread: firewall calls are blocking, and
    // decisions that pile up while one call runs go out together.
    let (dec_tx, dec_rx) = std::sync::mpsc::channel::<Vec<Decision>>();
    // Blocklist feeds' contents, replaced whole (checked on every turn).
    let (feed_tx, feed_rx) = std::sync::mpsc::channel::<(String, Vec<IpNet>)>();
    let metrics = Arc::new(crate::http::metrics::Metrics::default());
    let enf_metrics = metrics.clone();
    let enforcer_thread = std::thread::Builder::new()
        .name("enforce".into())
        .spawn(move || {
            loop {
                while let Ok((name, nets)) = feed_rx.try_recv() {
                    match enforcer.load_feed(&name, &nets) {
                        Ok(n) => tracing::info!("feed {name}: {n} entries in force"),
                        Err(e) => {
                            tracing::error!("feed {name}: {e}; the previous contents stay in force")
                        }
                    }
                }
                let mut batch = match dec_rx.recv_timeout(std::time::Duration::from_millis(500)) {
                    Ok(b) => b,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        // Idle: check for drift (a flushed ruleset, elements deleted by hand).
                        if let Err(e) = enforcer.tick() {
                            tracing::error!("firewall ({}): {e}", enforcer.name());
                        }
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                };
                while let Ok(more) = dec_rx.try_recv() {
                    batch.extend(more);
                }
                match enforcer.apply(&batch) {
                    Ok(()) => {
                        let now = Time::now();
                        for d in &batch {
                            if let Decision::Ban(b) = d {
                                if b.reason == BanReason::Failures {
                                    enf_metrics
                                        .observe_ban((now.0 - b.start.0).max(0) as f64 / 1000.0);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        enf_metrics
                            .firewall_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!("firewall ({}): {e}", enforcer.name());
                    }
                }
            }
            if let Err(e) = enforcer.close() {
                tracing::error!("firewall ({}): {e}", enforcer.name());
            }
        })
        .map_err(|source| DaemonError::Io {
            what: "starting the enforcer thread".into(),
            source,
        })?;
    // The store writes on its own thread too, a transaction per burst.
    let (store_tx, store_thread) = match store.take() {
        Some(mut s) => {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<StoreOp>>();
            let h = std::thread::Builder::new()
                .name("store".into())
                .spawn(move || store_writer(&mut s, &rx))
                .map_err(|source| DaemonError::Io {
                    what: "starting the store thread".into(),
                    source,
                })?;
            (Some(tx), Some(h))
        }
        None => (None, None),
    };

    let (events_tx, mut rx) = mpsc::channel::<Vec<FailureEvent>>(EVENT_QUEUE);
    let scanners = Arc::new(ScannerList::new(&config.scanners));
    let mut rt = Runtime {
        scanners,
        core,
        config,
        opts,
        started: now,
        firewall,
        sources: HashMap::new(),
        events_tx,
        dec_tx,
        store_tx,
        cluster: None,
        origins: HashMap::new(),
        recent: Recent::default(),
        feeds: Vec::new(),
        fast: None,
    };
    if firewall == "nftables" {
        rt.fast = crate::enforce::nftables::FastAdd::open(&rt.config.firewall.table);
    }
    rt.start_sources()?;
    let mut feed_tasks = Vec::new();
    for f in rt.config.feeds.clone() {
        let view = Arc::new(std::sync::Mutex::new(crate::control::FeedView {
            name: f.name.clone(),
            ..Default::default()
        }));
        rt.feeds.push(view.clone());
        feed_tasks.push(tokio::spawn(run_feed(
            f,
            rt.config.daemon.state_dir.clone(),
            feed_tx.clone(),
            view,
        )));
    }
    drop(feed_tx);
    let (cluster_tx, mut cluster_rx) = mpsc::channel::<crate::cluster::Inbound>(4096);
    if let Some(cc) = rt.config.cluster.clone() {
        let own: Vec<std::net::IpAddr> = own_addresses().iter().map(IpNet::addr).collect();
        // The Redis server itself is never banned either.
        let redis_addr: Vec<IpNet> = cc
            .redis
            .host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(IpNet::from)
            .into_iter()
            .collect();
        let enabled: Vec<JailConfig> = rt.config.enabled_jails().cloned().collect();
        let refs: Vec<&JailConfig> = enabled.iter().collect();
        rt.core.set_peers(redis_addr, &refs);
        rt.cluster = Some(crate::cluster::Cluster::start(cc, own, cluster_tx));
    } else {
        drop(cluster_tx);
    }

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlMsg>(64);
    let http = match rt.config.http.clone() {
        Some(h) => {
            let listener = crate::http::bind(h.listen)
                .await
                .map_err(DaemonError::Setup)?;
            tracing::info!(
                "http: dashboard, API and metrics on http://{}/{}",
                h.listen,
                if h.token.is_some() {
                    ""
                } else {
                    " (read-only: no [http] token)"
                }
            );
            Some(tokio::spawn(crate::http::serve(
                listener,
                ctl_tx.clone(),
                h.token,
                rt.config.daemon.state_dir.clone(),
                metrics.clone(),
            )))
        }
        None => None,
    };
    let server = tokio::spawn(control.serve(ctl_tx));

    let sig = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|source| DaemonError::Io {
            what: format!("installing the {name} handler"),
            source,
        })
    };
    let mut sigterm = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = sig(SignalKind::interrupt(), "SIGINT")?;
    let mut sighup = sig(SignalKind::hangup(), "SIGHUP")?;

    tracing::info!(
        "sipwarden {} started: {} jail(s) [{}], configuration {}, control socket {}",
        env!("CARGO_PKG_VERSION"),
        enabled.len(),
        enabled
            .iter()
            .map(|j| j.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        rt.config.origin,
        rt.config.daemon.socket.display()
    );

    crate::systemd::notify("READY=1");
    let mut watchdog = tokio::time::interval(
        crate::systemd::watchdog_interval().unwrap_or(std::time::Duration::from_secs(3600)),
    );
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(60));
    let mut decisions = Vec::new();
    loop {
        let wake = rt.core.next_expiry().map(|t| {
            let wait = (t.0 - Time::now().0).max(0) as u64;
            tokio::time::Instant::now() + std::time::Duration::from_millis(wait)
        });
        tokio::select! {
            Some(batch) = rx.recv() => {
                let now = Time::now();
                rt.core.handle(&batch, now, &mut decisions);
                rt.share_failures(&batch);
                rt.recent.note(&batch, now);
                // Take whatever else is queued, so a burst becomes one batch.
                while let Ok(more) = rx.try_recv() {
                    rt.core.handle(&more, now, &mut decisions);
                    rt.share_failures(&more);
                    rt.recent.note(&more, now);
                }
                rt.publish(&decisions);
            }
            Some(msg) = cluster_rx.recv() => {
                // Applied and enforced here, never published again.
                let ds = rt.apply_cluster(msg);
                rt.dispatch(ds)?;
            }
            Some((req, reply)) = ctl_rx.recv() => {
                let resp = rt.control(req);
                let _ = reply.send(resp);
            }
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                rt.core.expire(Time::now(), &mut decisions);
            }
            _ = sweep.tick() => rt.core.sweep(Time::now()),
            // Pinged from the loop that does the work: a stuck loop misses it.
            _ = watchdog.tick() => crate::systemd::notify("WATCHDOG=1"),
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => { tracing::info!("SIGHUP: reloading the configuration"); rt.reload(); }
        }
        rt.dispatch(std::mem::take(&mut decisions))?;
    }
    crate::systemd::notify("STOPPING=1");
    for t in &feed_tasks {
        t.abort();
    }
    server.abort();
    if let Some(h) = &http {
        h.abort();
    }
    if let Some(c) = &rt.cluster {
        c.stop();
    }
    for g in rt.sources.values() {
        g.stop();
    }
    drop(rx);
    let Runtime {
        dec_tx, store_tx, ..
    } = rt;
    // Everything decided reaches the store and the kernel before exit.
    drop(store_tx);
    if let Some(h) = store_thread {
        let _ = h.join();
    }
    drop(dec_tx);
    if enforcer_thread.join().is_err() {
        tracing::error!("the enforcer thread panicked while stopping");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Most store operations kept while the disk refuses them (a full or
/// read-only state directory); beyond it the oldest are dropped, counted.
const STORE_BACKLOG: usize = 1_000_000;

/// The store thread: a transaction per burst. When a write fails (disk full,
/// read-only, I/O error) the bans are still enforced; the operations wait in
/// a bounded backlog and are written, in order, once the store takes them
/// again, so a full disk loses no history that fits the backlog.
fn store_writer(s: &mut Store, rx: &std::sync::mpsc::Receiver<Vec<StoreOp>>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut backlog: Vec<StoreOp> = Vec::new();
    let mut dropped = 0usize;
    let mut failing = false;
    loop {
        // While failing, retry every few seconds even without new work.
        let next = if backlog.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(std::time::Duration::from_secs(2))
        };
        match next {
            Ok(ops) => backlog.extend(ops),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if backlog.is_empty() => return,
            Err(RecvTimeoutError::Disconnected) => {
                // Stopping: one last try, then say what is lost.
                if let Err(e) = s.write(&backlog) {
                    tracing::error!(
                        "{e}; {} ban record(s) could not be written before exit",
                        backlog.len()
                    );
                }
                return;
            }
        }
        while let Ok(more) = rx.try_recv() {
            backlog.extend(more);
        }
        if backlog.len() > STORE_BACKLOG {
            let over = backlog.len() - STORE_BACKLOG;
            backlog.drain(..over);
            dropped += over;
        }
        match s.write(&backlog) {
            Ok(()) => {
                if failing {
                    tracing::info!(
                        "state store writable again; {} waiting record(s) written, {dropped} dropped",
                        backlog.len()
                    );
                    failing = false;
                    dropped = 0;
                }
                backlog.clear();
            }
            Err(e) => {
                if !failing {
                    tracing::error!(
                        "{e}; bans are still enforced; their records wait in memory and are retried every 2 s"
                    );
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_addresses_are_validated() {
        assert_eq!(
            parse_request_net("192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            parse_request_net("198.51.100.0/24").unwrap().to_string(),
            "198.51.100.0/24"
        );
        assert_eq!(
            parse_request_net("::ffff:192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        for bad in [
            "999.1.1.1",
            "::g",
            "198.51.100.5/24",
            "0.0.0.0/0",
            "",
            "1.2.3.4/33",
        ] {
            assert!(parse_request_net(bad).is_err(), "{bad}");
        }
    }
}
