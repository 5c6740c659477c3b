//! The store writer: ban records go to SQLite on a thread of their own, a
//! transaction per burst, with a bounded backlog while the disk refuses.
//!
//! The thread also watches the database. Every few seconds, and after every
//! failed write, it checks that the state directory and the file are still
//! the ones it opened and that the file still looks like a database
//! (`Store::check`). A problem is logged at once, shown in `status` and
//! `/metrics`, and repaired without a restart: the old file's history is
//! copied out of the open connection when it still reads cleanly, the file
//! at the path is moved aside, the database is created again, and the run
//! loop hands over every ban in force (`StoreOp::InForce`, sent on the same
//! channel as every other write, so it lands in order), so the next start
//! restores every ban.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::DaemonError;
use super::lock::StateLock;
use super::runtime::Runtime;
use crate::control::StoreView;
use crate::enforce::Enforcer;
use crate::event::Time;
use crate::jail::{BanHistory, Decision, JailSet};
use crate::store::{Store, StoreError, StoreFault, StoreOp, StoredBan, is_damage, move_aside};

/// Turns decisions into store writes.
pub(super) fn store_ops(decisions: &[Decision], now: Time) -> Vec<StoreOp> {
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

/// Where each journal source stood when the store was last written.
pub(super) fn journal_cursors(store: Option<&Store>) -> Arc<crate::source::journal::Cursors> {
    let stored = match store.map(Store::journal_cursors).transpose() {
        Ok(rows) => rows.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(
                "cannot read where the journal sources stood ({e}); they follow from the journal's end"
            );
            Vec::new()
        }
    };
    Arc::new(crate::source::journal::Cursors::new(
        stored.into_iter().map(|(jail, source, cursor)| {
            (crate::source::journal::CursorKey { jail, source }, cursor)
        }),
    ))
}

/// Most store operations kept while the disk refuses them (a full or
/// read-only state directory); beyond it the oldest are dropped, counted.
const STORE_BACKLOG: usize = 1_000_000;

/// How often the database is checked (and a failed write retried).
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The store's health, shared with `status` and `/metrics`.
pub(super) type Health = Arc<Mutex<StoreView>>;

impl Runtime {
    /// Sends every ban in force to the store thread, which asked for them
    /// after it created the database again.
    pub(super) fn store_in_force(&self) {
        let Some(tx) = &self.store_tx else {
            return;
        };
        let bans: Vec<StoredBan> = self
            .jails
            .jails()
            .flat_map(|j| {
                j.banned().iter().map(|(addr, b)| StoredBan {
                    jail: j.name().to_string(),
                    addr: *addr,
                    start: b.start,
                    end: b.end,
                    failures: b.failures,
                    reason: b.reason,
                })
            })
            .collect();
        let mut ops = vec![StoreOp::InForce(bans)];
        ops.extend(self.resolved_ops());
        // Where the journal jails stand, so the next start resumes there.
        ops.extend(self.sources.cursor_ops());
        let _ = tx.send(ops);
    }
}

/// The store thread's state.
struct Writer {
    /// The state directory, as configured.
    dir: PathBuf,
    store: Option<Store>,
    lock: StateLock,
    /// Operations not yet written, in order.
    backlog: Vec<StoreOp>,
    dropped: usize,
    /// A write failed and is retried (disk full, read-only, I/O error).
    failing: bool,
    health: Health,
    /// Asks the run loop for the bans in force.
    want_in_force: Arc<Notify>,
    /// The database was created again and waits for the bans in force.
    rebuilding: bool,
}

/// Starts the store thread. `store` is the database opened at start (`None`
/// when it could not be: the thread keeps trying). The thread returns the
/// lock when `ops` closes, so the caller holds it to the very end.
pub(super) fn spawn(
    dir: PathBuf,
    store: Option<Store>,
    lock: StateLock,
    health: Health,
    want_in_force: Arc<Notify>,
    ops: Receiver<Vec<StoreOp>>,
    task: Arc<crate::supervise::Health>,
) -> Result<std::thread::JoinHandle<StateLock>, DaemonError> {
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            let mut w = Writer {
                dir,
                store,
                lock,
                backlog: Vec::new(),
                dropped: 0,
                failing: false,
                health,
                want_in_force,
                rebuilding: false,
            };
            // Supervised: after a panic the connection is opened afresh and
            // the records waiting in the backlog are written again.
            let mut first = true;
            crate::supervise::run_thread("store writer", &task, &|| false, || {
                if !first {
                    w.store = None;
                }
                first = false;
                w.run(&ops);
            });
            w.lock
        })
        .map_err(|source| DaemonError::Io {
            what: "starting the store thread".into(),
            source,
        })
}

impl Writer {
    /// A transaction per burst; the database checked every `CHECK_EVERY`.
    /// When a write fails (disk full, read-only, I/O error) the bans are
    /// still enforced; the operations wait in a bounded backlog and are
    /// written, in order, once the store takes them again.
    fn run(&mut self, rx: &Receiver<Vec<StoreOp>>) {
        let mut last_check = Instant::now();
        if self.store.is_none() {
            self.reopen(Time::now());
        }
        loop {
            let wait = CHECK_EVERY.saturating_sub(last_check.elapsed());
            match rx.recv_timeout(wait) {
                Ok(ops) => self.backlog.extend(ops),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Stopping: one last try, then say what is lost.
                    self.flush(Time::now());
                    if !self.backlog.is_empty() {
                        tracing::error!(
                            "state store: {} ban record(s) could not be written before exit",
                            self.backlog.len()
                        );
                    }
                    return;
                }
            }
            while let Ok(more) = rx.try_recv() {
                self.backlog.extend(more);
            }
            if self.backlog.len() > STORE_BACKLOG {
                let over = self.backlog.len() - STORE_BACKLOG;
                self.backlog.drain(..over);
                self.dropped += over;
            }
            let now = Time::now();
            if last_check.elapsed() >= CHECK_EVERY {
                last_check = Instant::now();
                self.check(now);
            }
            self.flush(now);
        }
    }

    /// Checks the open database; without one, tries to create it again.
    fn check(&mut self, now: Time) {
        match &self.store {
            Some(s) => {
                if let Err(fault) = s.check() {
                    self.repair(&fault, now);
                }
            }
            None => self.reopen(now),
        }
    }

    /// Writes the backlog; a failure is checked for a vanished or damaged
    /// database (repaired, then written once more) before it is treated as
    /// a disk that refuses for now.
    fn flush(&mut self, now: Time) {
        for attempt in 0..2 {
            if self.backlog.is_empty() {
                return;
            }
            let Some(s) = &mut self.store else {
                return;
            };
            let in_force = self.backlog.iter().rev().find_map(|op| match op {
                StoreOp::InForce(b) => Some(b.len()),
                _ => None,
            });
            crate::supervise::inject_fault("store");
            match s.write(&self.backlog) {
                Ok(()) => {
                    if self.failing {
                        tracing::info!(
                            "state store writable again; {} waiting record(s) written, {} dropped",
                            self.backlog.len(),
                            self.dropped
                        );
                        self.failing = false;
                        self.dropped = 0;
                    }
                    if self.backlog.len() >= super::TRIM_AFTER {
                        self.backlog = Vec::new();
                        super::give_back_memory();
                    } else {
                        self.backlog.clear();
                    }
                    if let (Some(n), true) = (in_force, self.rebuilding) {
                        self.rebuilding = false;
                        tracing::info!(
                            "state store rebuilt at {}: the {n} ban(s) in force are in it; a restart restores them",
                            s.path().display()
                        );
                        self.healthy(true);
                    } else if !self.rebuilding
                        && self.health.lock().is_ok_and(|h| !h.ok)
                        && s.check().is_ok()
                    {
                        self.healthy(false);
                    }
                    return;
                }
                Err(e) => {
                    let fault = match s.check() {
                        Err(f) => Some(f),
                        Ok(()) if is_damage(&e) => Some(StoreFault::Damaged {
                            path: s.path().display().to_string(),
                            why: e.source.to_string(),
                        }),
                        Ok(()) => None,
                    };
                    match fault {
                        Some(f) if attempt == 0 => self.repair(&f, now),
                        Some(f) => self.refusing(&f.to_string(), now),
                        None => self.refusing(&e.to_string(), now),
                    }
                }
            }
        }
    }

    /// A write the disk refuses: logged once, retried every `CHECK_EVERY`.
    fn refusing(&mut self, what: &str, now: Time) {
        self.failing = true;
        self.unhealthy(
            what,
            &format!(
                "bans are still enforced; their records wait in memory and are retried every {} s",
                CHECK_EVERY.as_secs()
            ),
            now,
        );
    }

    /// Rebuilds the database after `fault`.
    fn repair(&mut self, fault: &StoreFault, now: Time) {
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            // The open database still takes writes, and its history is
            // copied out once the directory can be created again.
            self.unhealthy(
                &format!("{fault}; it cannot be created again: {e}"),
                &format!(
                    "bans are enforced; retried every {} s",
                    CHECK_EVERY.as_secs()
                ),
                now,
            );
            return;
        }
        self.unhealthy(
            &fault.to_string(),
            "rebuilding it from memory now (bans are enforced meanwhile)",
            now,
        );
        let Some(old) = self.store.take() else {
            self.reopen(now);
            return;
        };
        // The open connection may still read the old file whole (deleted
        // or replaced files stay readable through it): keep its history.
        let copy = self.dir.join("sipwarden.db.rebuild");
        let copied = old.copy_to(&copy).is_ok();
        old.abandon();
        let kind = match fault {
            StoreFault::Damaged { .. } => "corrupt",
            _ => "replaced",
        };
        if let Some(aside) = move_aside(&self.dir, kind, now) {
            tracing::warn!(
                "state store: the file found at the database's path was moved aside to {}",
                aside.display()
            );
        }
        if copied && std::fs::rename(&copy, self.dir.join("sipwarden.db")).is_ok() {
            tracing::info!("state store: the ban history was copied out of the open database");
        } else {
            let _ = std::fs::remove_file(&copy);
            tracing::warn!(
                "state store: the ban history could not be copied (escalation starts over); the bans in force are written again"
            );
        }
        self.reopen(now);
    }

    /// Creates the directory and opens (or creates) the database; then asks
    /// the run loop for the bans in force.
    fn reopen(&mut self, now: Time) {
        let retry = format!(
            "bans are enforced but not stored; retried every {} s",
            CHECK_EVERY.as_secs()
        );
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            self.unhealthy(
                &format!("state directory {}: {e}", self.dir.display()),
                &retry,
                now,
            );
            return;
        }
        if let Err(e) = self.lock.relock() {
            self.unhealthy(&e.to_string(), &retry, now);
            return;
        }
        match Store::open(&self.dir, now) {
            Ok(s) => {
                self.store = Some(s);
                self.rebuilding = true;
                self.want_in_force.notify_one();
            }
            Err(e) => self.unhealthy(&e.to_string(), &retry, now),
        }
    }

    /// Records a problem; a new one is logged at once (with `advice`) and
    /// counted, the same one again is not.
    fn unhealthy(&mut self, what: &str, advice: &str, now: Time) {
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        if h.error.as_deref() == Some(what) {
            return;
        }
        tracing::error!("state store: {what}; {advice}");
        if h.ok {
            h.since = Some(now.to_string());
        }
        h.ok = false;
        h.error = Some(what.to_string());
        h.errors += 1;
        h.last_error = Some(what.to_string());
        h.last_error_at = Some(now.to_string());
    }

    /// Records a good write (`rebuilt`: the first after a rebuild).
    fn healthy(&mut self, rebuilt: bool) {
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        if let Some(s) = &self.store {
            h.path = s.path().display().to_string();
        }
        if rebuilt {
            h.repairs += 1;
        }
        h.ok = true;
        h.error = None;
        h.since = None;
    }
}

/// Opens the state database; when it cannot be opened, bans are still
/// enforced, the health says why, and the store thread keeps trying.
pub(super) fn open(state_dir: &Path, now: Time) -> (Option<Store>, Health) {
    let store_health = Arc::new(std::sync::Mutex::new(crate::control::StoreView {
        path: state_dir.join("sipwarden.db").display().to_string(),
        ok: true,
        ..Default::default()
    }));
    let store = match Store::open(state_dir, now) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(
                "{e}; bans are enforced but not stored until the database can be created (retried every few seconds)"
            );
            if let Ok(mut h) = store_health.lock() {
                h.ok = false;
                h.error = Some(e.to_string());
                h.since = Some(now.to_string());
                h.errors = 1;
            }
            None
        }
    };
    (store, store_health)
}

/// A read of the store on a thread of its own, through a read-only
/// connection, started before the firewall is laid out (the kernel's commit
/// waits for other CPUs there, tens of milliseconds with the process idle).
/// With 100,000 bans each read is a fifth to a quarter of a start.
pub(super) struct Reading<T, F> {
    thread: Option<std::thread::JoinHandle<Result<T, StoreError>>>,
    /// The read, kept to be done again in line when the thread could not.
    read: F,
}

impl<T, F> Reading<T, F>
where
    T: Send + 'static,
    F: Fn(&Store) -> Result<T, StoreError> + Clone + Send + 'static,
{
    /// Starts `read` on a thread named `name` (when no thread can start,
    /// [`Reading::join`] reads in line).
    pub(super) fn start(name: &str, state_dir: &Path, read: F) -> Reading<T, F> {
        let dir = state_dir.to_path_buf();
        let on_thread = read.clone();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || on_thread(&Store::open_read_only(&dir)?));
        Reading {
            thread: spawned
                .map_err(|e| tracing::warn!("{name}: no thread ({e}); read in line"))
                .ok(),
            read,
        }
    }

    /// What the thread read; when it could not start, failed or panicked,
    /// the same read again on `s` (the main connection).
    pub(super) fn join(self, s: &Store) -> Result<T, StoreError> {
        match self.thread.map(std::thread::JoinHandle::join) {
            Some(Ok(Ok(v))) => return Ok(v),
            Some(Ok(Err(e))) => tracing::warn!("{e}; read again on the main connection"),
            Some(Err(_)) => tracing::error!("a store reader thread failed; read again"),
            None => {}
        }
        (self.read)(s)
    }
}

/// The escalation history: every stored ban, counted per jail and address.
/// Needed only once new bans are decided: installed after the restore.
pub(super) fn history(s: &Store) -> Result<BanHistory, StoreError> {
    Ok(BanHistory::from_counts(s.ban_counts()?))
}

/// Puts the bans still in force back: into the jails and, in a few batches,
/// into the kernel, before anything new is decided. A ban the firewall
/// refuses is not shown (and said why); stored bans of jails no longer
/// configured are counted and left out. Returns the bans back in force
/// (their actions run with `<restored>`).
pub(super) fn restore(
    jails: &mut JailSet,
    active: Result<Vec<StoredBan>, StoreError>,
    enforcer: &mut dyn Enforcer,
    now: Time,
) -> Vec<crate::jail::BanDecision> {
    let mut restored = Vec::new();
    match active {
        Ok(active) => {
            let t0 = std::time::Instant::now();
            let mut decisions = Vec::with_capacity(active.len());
            let mut orphans = 0;
            for b in active {
                match jails.restored(&b.jail, b.addr, b.start, b.end, b.failures, b.reason, now) {
                    Some(d) => decisions.push(Decision::Ban(d)),
                    None => orphans += 1,
                }
            }
            // Nothing else runs yet: the jails hold each ban once the
            // firewall accepted it, without a pending step.
            let refused = super::enforcer::apply_now(enforcer, &decisions);
            let refused: HashMap<usize, String> =
                refused.into_iter().map(|r| (r.index, r.reason)).collect();
            jails.reserve_bans(&decisions);
            restored.reserve(decisions.len());
            let mut in_force = decisions.len();
            for (i, d) in decisions.into_iter().enumerate() {
                let Decision::Ban(b) = d else { continue };
                match refused.get(&i) {
                    None => {
                        jails.reinstate(&b);
                        restored.push(b);
                    }
                    Some(reason) => {
                        in_force -= 1;
                        tracing::error!(
                            "[{}] stored ban of {} not restored, the firewall refused it: {reason}",
                            b.jail_name,
                            crate::jail::DisplayNet(&b.addr),
                        );
                    }
                }
            }
            tracing::info!("restored {in_force} active ban(s) in {:?}", t0.elapsed());
            if orphans > 0 {
                tracing::warn!(
                    "{orphans} stored ban(s) belong to jails no longer configured; not restored"
                );
            }
        }
        Err(e) => tracing::error!("{e}; no bans restored"),
    }
    restored
}

#[cfg(test)]
mod tests {
    use ipnet::IpNet;

    use super::*;
    use crate::jail::BanReason;

    fn stored(jail: &str, addr: &str, start: i64) -> StoreOp {
        StoreOp::Ban(StoredBan {
            jail: jail.into(),
            addr: addr.parse().unwrap(),
            start: Time(start),
            end: Some(Time(start + 3_600_000)),
            failures: 5,
            reason: BanReason::Failures,
        })
    }

    /// Whether this runs on the reader thread `name`.
    fn on(name: &str) -> bool {
        std::thread::current().name() == Some(name)
    }

    fn store(name: &str) -> (PathBuf, Store) {
        let d = std::env::temp_dir().join(format!(
            "sipwarden-daemon-store-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut s = Store::open(&d, Time(0)).unwrap();
        s.write(&[
            stored("fs", "192.0.2.1/32", 1_000),
            stored("fs", "192.0.2.1/32", 2_000),
            stored("sip", "192.0.2.1/32", 3_000),
            stored("fs", "2001:db8::/64", 4_000),
        ])
        .unwrap();
        (d, s)
    }

    #[test]
    fn the_reads_beside_the_start_give_what_the_main_connection_reads() {
        let (d, s) = store("same");
        let now = Time(5_000);
        // Each read panics unless it runs on its own thread: the join
        // must not have read in line.
        let active = Reading::start("active", &d, move |s: &Store| {
            assert!(on("active"), "read in line");
            s.active(now)
        });
        let history = Reading::start("history", &d, |s: &Store| {
            assert!(on("history"), "read in line");
            history(s)
        });
        let active = active.join(&s).unwrap();
        assert_eq!(active, s.active(now).unwrap());
        assert_eq!(
            active.len(),
            3,
            "the second fs ban of 192.0.2.1 replaced the first"
        );
        let h = history.join(&s).unwrap();
        let a: IpNet = "192.0.2.1/32".parse().unwrap();
        assert_eq!(h.prior(&Arc::from("fs"), &a, false), 2);
        assert_eq!(h.prior(&Arc::from("sip"), &a, false), 1);
        assert_eq!(h.prior(&Arc::from("fs"), &a, true), 3);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_read_that_fails_or_panics_on_its_thread_is_done_again_in_line() {
        let (d, s) = store("again");
        // Each read fails (or panics) on its thread and succeeds in line.
        let failed = Reading::start("active", &d, |s: &Store| {
            if on("active") {
                return Err(StoreError {
                    path: "x".into(),
                    source: rusqlite::Error::InvalidQuery,
                });
            }
            s.active(Time(0))
        });
        assert_eq!(failed.join(&s).unwrap().len(), 3);
        let panicked = Reading::start("history", &d, |s: &Store| {
            assert!(!on("history"), "a reader that fails");
            history(s)
        });
        let h = panicked.join(&s).unwrap();
        let a: IpNet = "2001:db8::/64".parse().unwrap();
        assert_eq!(h.prior(&Arc::from("fs"), &a, false), 1);
        // No database where the thread looks: read in line too.
        let elsewhere = std::env::temp_dir().join(format!(
            "sipwarden-daemon-store-none-{}",
            std::process::id()
        ));
        let missing = Reading::start("active", &elsewhere, move |s| s.active(Time(0)));
        assert_eq!(missing.join(&s).unwrap().len(), 3);
        let _ = std::fs::remove_dir_all(&d);
    }
}
