//! Starting and stopping the sources of each jail: file followers, journal
//! followers and wire sensors (threads), Event Socket and manager (AMI)
//! clients (tasks). What status shows of them is `sources/views.rs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use super::DaemonError;
use crate::control::SourceView;
use crate::control::server::ControlMsg;
use crate::event::{FailureEvent, JailId};
use crate::filter::{self, Filter, FilterOptions};
use crate::jail::JailConfig;
use crate::jail::JailSet;
use crate::source::Window;
use crate::source::ami::{AmiMapper, AmiPeer, AmiSource, AmiStats};
use crate::source::esl::{EslPeer, EslSource, EslStats, EventMapper};
use crate::source::file::FollowStats;
use crate::source::hep::HepSenders;
use crate::source::journal::{Cursors, JournalConfig, JournalMatch, JournalSource};
use crate::source::scanner::ScannerList;
use crate::supervise::{self, Health, Tasks};

mod views;

/// What identifies a jail's sources: when it changes on reload, the
/// followers restart.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct SourceKey {
    filter: Option<String>,
    fail2ban_filter: Option<(PathBuf, String)>,
    logpath: Vec<PathBuf>,
    from_start: bool,
    logtimezone: String,
    options: FilterOptions,
    esl: Vec<EslPeer>,
    ami: Vec<AmiPeer>,
    fraud: Vec<Arc<crate::fraud::FraudRule>>,
    wire: Option<crate::source::wire::WireConfig>,
    hep: Option<crate::source::hep::HepConfig>,
    journal: Option<JournalConfig>,
}

impl SourceKey {
    pub(super) fn of(jc: &JailConfig) -> SourceKey {
        SourceKey {
            filter: jc.filter.clone(),
            fail2ban_filter: jc.fail2ban_filter.clone(),
            logpath: jc.logpath.clone(),
            from_start: jc.from_start,
            logtimezone: jc.logtimezone.clone(),
            options: jc.filter_options,
            esl: jc.esl.clone(),
            ami: jc.ami.clone(),
            fraud: jc.fraud.clone(),
            wire: jc.wire.clone(),
            hep: jc.hep.clone(),
            journal: jc.journal.clone(),
        }
    }
}

/// One Event Socket client: its label, counters, fraud watch and task.
type EslRun = (
    String,
    Arc<EslStats>,
    Option<Arc<crate::source::esl::calls::CallWatch>>,
    tokio::task::JoinHandle<()>,
);

/// The sources of one jail: file followers (threads) and Event Socket
/// clients (tasks).
pub(super) struct SourceGroup {
    key: SourceKey,
    stop: Arc<AtomicBool>,
    /// The jail's findtime, followed by running sources across reloads.
    window: Arc<Window>,
    /// The jail's log files (its `logpath` expanded), if it has any.
    files: Option<Arc<super::logfiles::LogFiles>>,
    journal: Option<(String, Arc<FollowStats>)>,
    /// The journal follower's thread, joined when the group stops.
    journal_thread: Option<std::thread::JoinHandle<()>>,
    ami: Vec<(String, Arc<AmiStats>, tokio::task::JoinHandle<()>)>,
    esl: Vec<EslRun>,
    wire: Option<(String, Arc<crate::source::wire::WireStats>)>,
    hep: Option<super::hep::HepGroup>,
    /// The supervised tasks of this group, listed in status until stopped.
    tasks: Tasks,
    healths: Vec<Arc<Health>>,
}

impl SourceGroup {
    /// Tells every source of the group to stop (see [`join`](Self::join)).
    fn signal(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, _, _, task) in &self.esl {
            task.abort();
        }
        for (_, _, task) in &self.ami {
            task.abort();
        }
        if let Some(h) = &self.hep {
            h.stop();
        }
        for h in &self.healths {
            self.tasks.forget(h);
        }
        if let Some(f) = &self.files {
            f.stop();
        }
    }

    /// Waits (at most [`JOIN_WAIT`]) for the journal follower to leave, so
    /// that a successor of the same jail starts after the last entry it
    /// sent, and a shutdown drains everything it sent. It leaves within
    /// its wait for a change (500 ms) and one batch; one that does not is
    /// left behind, warned about (its later marks are ignored, see
    /// `source/journal/cursor.rs`).
    fn join(&mut self, name: &str) {
        let Some(t) = self.journal_thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + JOIN_WAIT;
        while !t.is_finished() {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    "[{name}] the journal follower did not stop within {} s; left behind",
                    JOIN_WAIT.as_secs()
                );
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = t.join();
    }
}

/// Longest wait for a stopped journal follower to leave.
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

// What every source of a jail shares, passed down as it is held.
#[allow(clippy::too_many_arguments)]
fn spawn_sources(
    jc: &JailConfig,
    id: JailId,
    tx: &mpsc::Sender<Vec<FailureEvent>>,
    scanners: &Arc<ScannerList>,
    tasks: &Tasks,
    cursors: &Arc<Cursors>,
    control: Option<&mpsc::Sender<ControlMsg>>,
    senders: &Arc<HepSenders>,
    dry_run: bool,
) -> Result<SourceGroup, DaemonError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut healths = Vec::new();
    let window = Window::new(jc.findtime);
    let mut files = None;
    // A fail2ban filter's `journalmatch`, for a journal jail without its own.
    let mut filter_match = None;
    let chosen: Option<Arc<dyn Filter>> = match (&jc.filter, &jc.fail2ban_filter) {
        (Some(fname), _) => Some(
            filter::builtin(fname, jc.filter_options)
                .map(Arc::from)
                .ok_or_else(|| {
                    DaemonError::Setup(format!("jail {}: unknown filter {fname:?}", jc.name))
                })?,
        ),
        (None, Some((dir, spec))) => {
            // fail2ban reads a journal jail's filter with logtype=journal
            // (the short prefix formatJournalEntry's lines have), unless
            // the filter's options say otherwise.
            let mut extra = std::collections::BTreeMap::new();
            if jc.journal.is_some()
                && jc.logpath.is_empty()
                && !filter::f2b::parse_filter_spec(spec)
                    .1
                    .contains_key("logtype")
            {
                extra.insert("logtype".to_string(), "journal".to_string());
            }
            let f = filter::f2b::F2bFilter::load(dir, spec, &extra)
                .map_err(|e| DaemonError::Setup(format!("jail {}: {e}", jc.name)))?;
            filter_match = f.journalmatch.clone();
            Some(Arc::new(f))
        }
        (None, None) => None,
    };
    let mut journal = None;
    let mut journal_thread = None;
    if let Some(filter) = chosen {
        let tz = filter::date::parse_zone(&jc.logtimezone)
            .map_err(|e| DaemonError::Setup(format!("jail {}: {e}", jc.name)))?;
        if let Some(cfg) = &jc.journal {
            let matches = match (&cfg.matches, &filter_match) {
                (Some(m), _) => m.clone(),
                (None, Some(text)) => JournalMatch::parse(text).map_err(|e| {
                    DaemonError::Setup(format!("jail {}: its filter's {e}", jc.name))
                })?,
                // Every entry, and any local process writes entries:
                // refused rather than read (a TOML jail's built-in filter
                // got its units when the configuration was read).
                (None, None) => {
                    return Err(DaemonError::Setup(format!(
                        "jail {}: reads the journal with no journalmatch (its filter sets none), so any local process could write an entry that reads as a failure; name the service's units: journalmatch = \"_SYSTEMD_UNIT=myservice.service\" in the TOML jail, or in the fail2ban filter's [Init] section",
                        jc.name
                    )));
                }
            };
            let st = Arc::new(FollowStats::default());
            let t = JournalSource {
                cfg: cfg.clone(),
                matches,
                jail: id,
                jail_name: jc.name.clone(),
                filter: filter.clone(),
                tz: tz.clone(),
                window: window.clone(),
                from_start: jc.from_start,
                tx: tx.clone(),
                stop: stop.clone(),
                scanners: scanners.clone(),
                stats: st.clone(),
                cursors: cursors.clone(),
            }
            .spawn({
                let h = tasks.register(&format!("[{}] {}", jc.name, cfg.label()));
                healths.push(h.clone());
                h
            })
            .map_err(|source| DaemonError::Io {
                what: format!("starting the journal follower of jail {}", jc.name),
                source,
            })?;
            journal = Some((cfg.label(), st));
            journal_thread = Some(t);
        }
        if !jc.logpath.is_empty() {
            files = Some(super::logfiles::LogFiles::start(
                super::logfiles::Template {
                    jail: id,
                    name: jc.name.clone(),
                    filter: filter.clone(),
                    tz: tz.clone(),
                    window: window.clone(),
                    from_start: jc.from_start,
                    tx: tx.clone(),
                    stop: stop.clone(),
                    scanners: scanners.clone(),
                    tasks: tasks.clone(),
                },
                &jc.logpath,
            )?);
        }
    }
    let mut esl = Vec::new();
    for peer in &jc.esl {
        let st = Arc::new(EslStats::default());
        let calls = super::fraud::call_watch(jc, peer, control, dry_run);
        let src = EslSource {
            peer: peer.clone(),
            mapper: EventMapper {
                jail: id,
                window: window.clone(),
                scanners: scanners.clone(),
            },
            tx: tx.clone(),
            stats: st.clone(),
            calls: calls.clone(),
        };
        // Supervised: a panic (a frame no test foresaw) starts the client
        // again after a pause instead of leaving the jail blind.
        let name = format!("[{}] event socket {}", jc.name, peer.label());
        let health = tasks.register(&name);
        healths.push(health.clone());
        let task = supervise::spawn_task(name, health, move || src.clone().run());
        esl.push((peer.label(), st, calls, task));
    }
    let mut ami = Vec::new();
    for peer in &jc.ami {
        let st = Arc::new(AmiStats::default());
        let src = AmiSource {
            peer: peer.clone(),
            mapper: AmiMapper::new(id),
            tx: tx.clone(),
            stats: st.clone(),
        };
        let name = format!("[{}] manager interface {}", jc.name, peer.label());
        let health = tasks.register(&name);
        healths.push(health.clone());
        let task = supervise::spawn_task(name, health, move || src.clone().run());
        ami.push((peer.label(), st, task));
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
            .spawn({
                let h = tasks.register(&format!(
                    "[{}] wire {}",
                    jc.name,
                    w.interface.as_deref().unwrap_or("all interfaces")
                ));
                healths.push(h.clone());
                h
            })
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
    let hep = super::hep::start(jc, id, tx, scanners, tasks, senders, &mut healths)?;
    Ok(SourceGroup {
        key: SourceKey::of(jc),
        stop,
        window,
        files,
        journal,
        journal_thread,
        esl,
        ami,
        wire,
        hep,
        tasks: tasks.clone(),
        healths,
    })
}

/// Every jail's running sources, by jail name.
pub(super) struct Sources {
    groups: HashMap<String, SourceGroup>,
    /// Where every source sends its batches.
    pub(super) events_tx: mpsc::Sender<Vec<FailureEvent>>,
    /// Attack-tool user agents, shared by every source.
    pub(super) scanners: Arc<ScannerList>,
    /// Where supervised sources show their health.
    pub(super) tasks: Tasks,
    /// Where each journal follower stands.
    pub(super) cursors: Arc<Cursors>,
    /// Where fraud rules' bans go (the control path).
    pub(super) control: Option<mpsc::Sender<ControlMsg>>,
    /// The HEP senders seen by every HEP listener: never banned.
    hep_senders: Arc<HepSenders>,
    /// `--dry-run`: fraud rules hang up nothing and post nothing.
    pub(super) dry_run: bool,
}

impl Sources {
    /// No sources yet; they send to `events_tx`.
    pub(super) fn new(
        events_tx: mpsc::Sender<Vec<FailureEvent>>,
        scanners: Arc<ScannerList>,
        tasks: Tasks,
        cursors: Arc<Cursors>,
    ) -> Sources {
        Sources {
            groups: HashMap::new(),
            events_tx,
            scanners,
            tasks,
            cursors,
            control: None,
            hep_senders: Arc::default(),
            dry_run: false,
        }
    }

    /// HEP senders seen since the last call: protected in every jail
    /// before the failures they reported are counted (each sender is
    /// recorded before its batch is queued).
    pub(super) fn new_hep_senders(&self) -> Vec<ipnet::IpNet> {
        self.hep_senders.take_new()
    }

    /// Starts the sources of `enabled` jails that are not running yet, and
    /// stops those of jails that went away or whose sources changed.
    pub(super) fn sync(
        &mut self,
        enabled: &[JailConfig],
        jails: &JailSet,
    ) -> Result<(), DaemonError> {
        let wanted: HashMap<&str, &JailConfig> =
            enabled.iter().map(|j| (j.name.as_str(), j)).collect();
        // Stop followers of jails that went away or changed, and wait
        // for them before their successors start.
        let gone: Vec<String> = self
            .groups
            .iter()
            .filter(|(name, g)| {
                wanted
                    .get(name.as_str())
                    .is_none_or(|jc| SourceKey::of(jc) != g.key)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut stopped: Vec<(String, SourceGroup)> = gone
            .into_iter()
            .filter_map(|name| self.groups.remove(&name).map(|g| (name, g)))
            .collect();
        for (_, g) in &stopped {
            g.signal();
        }
        for (name, g) in &mut stopped {
            g.join(name);
        }
        for (name, g) in &self.groups {
            // Kept running: a new findtime still reaches them, and a
            // reload expands the logpath patterns again now.
            if let Some(jc) = wanted.get(name.as_str()) {
                g.window.set(jc.findtime);
                if let Some(f) = &g.files {
                    f.rescan();
                }
            }
        }
        for jc in enabled {
            if self.groups.contains_key(&jc.name) {
                continue;
            }
            let Some(id) = jails.jail_id(&jc.name) else {
                continue;
            };
            let g = spawn_sources(
                jc,
                id,
                &self.events_tx,
                &self.scanners,
                &self.tasks,
                &self.cursors,
                self.control.as_ref(),
                &self.hep_senders,
                self.dry_run,
            )?;
            self.groups.insert(jc.name.clone(), g);
        }
        Ok(())
    }

    /// Whether every log follower has made its first look at its file
    /// (see `FollowStats::looked`).
    pub(super) fn files_looked(&self) -> bool {
        self.groups
            .values()
            .all(|g| g.files.as_ref().is_none_or(|f| f.looked()))
    }

    /// What status shows of jail `name`'s sources.
    pub(super) fn views(&self, name: &str) -> Vec<SourceView> {
        self.groups
            .get(name)
            .map(SourceGroup::views)
            .unwrap_or_default()
    }

    /// The journal positions marked so far (see `source/journal/cursor.rs`):
    /// call before draining the event queue, then commit them with
    /// [`commit_cursors`](Self::commit_cursors).
    pub(super) fn take_cursors(&self) -> Vec<crate::source::journal::cursor::Mark> {
        self.cursors.take()
    }

    /// Where every journal jail stands, as store writes (for a database
    /// created again).
    pub(super) fn cursor_ops(&self) -> Vec<crate::store::StoreOp> {
        let at = crate::event::Time::now();
        self.cursors
            .committed()
            .into_iter()
            .map(|m| crate::store::StoreOp::JournalCursor {
                jail: m.key.jail,
                source: m.key.source,
                cursor: m.cursor,
                at,
            })
            .collect()
    }

    /// Every batch before `marks` was handled: their cursors become where a
    /// restart resumes, written to the store.
    pub(super) fn commit_cursors(
        &self,
        marks: Vec<crate::source::journal::cursor::Mark>,
        store: Option<&std::sync::mpsc::Sender<Vec<crate::store::StoreOp>>>,
    ) {
        if marks.is_empty() {
            return;
        }
        self.cursors.commit(&marks);
        if let Some(tx) = store {
            let at = crate::event::Time::now();
            let _ = tx.send(
                marks
                    .into_iter()
                    .map(|m| crate::store::StoreOp::JournalCursor {
                        jail: m.key.jail,
                        source: m.key.source,
                        cursor: m.cursor,
                        at,
                    })
                    .collect(),
            );
        }
    }

    /// Stops every source, and waits (bounded) for the journal followers
    /// to leave: what they sent is queued before the shutdown drains.
    pub(super) fn stop_all(&mut self) {
        for g in self.groups.values() {
            g.signal();
        }
        for (name, g) in &mut self.groups {
            g.join(name);
        }
    }
}
