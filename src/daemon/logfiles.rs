//! A jail's log files: its `logpath` expanded (glob patterns matched as
//! fail2ban matches them, `source/file/glob.rs`), one follower per file,
//! and, when the list has patterns, a thread that expands them again every
//! [`RESCAN`](glob::RESCAN) so that a file appearing later (a new `*error.log`) is
//! followed without a reload.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::tz::TimeZone;
use tokio::sync::mpsc;

use super::DaemonError;
use crate::event::{FailureEvent, JailId};
use crate::filter::Filter;
use crate::source::Window;
use crate::source::file::{FileSource, FollowStats, distinct, glob};
use crate::source::scanner::ScannerList;
use crate::supervise::{Health, Tasks};

use glob::RESCAN;

/// What each follower of the jail shares.
pub(super) struct Template {
    pub(super) jail: JailId,
    pub(super) name: String,
    pub(super) filter: Arc<dyn Filter>,
    pub(super) tz: TimeZone,
    pub(super) window: Arc<Window>,
    pub(super) from_start: bool,
    pub(super) tx: mpsc::Sender<Vec<FailureEvent>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) scanners: Arc<ScannerList>,
    pub(super) tasks: Tasks,
}

/// One followed file.
struct One {
    path: PathBuf,
    stats: Arc<FollowStats>,
    health: Arc<Health>,
    /// This follower's own stop flag (set with the jail's, or when its
    /// file is gone).
    stop: Arc<AtomicBool>,
    /// Found by a pattern (else listed as written, and kept whatever
    /// happens to the file).
    matched: bool,
    /// Expansions in a row that did not find it.
    missed: u8,
}

/// Expansions in a row that must miss a matched file before its follower
/// stops: a rotation (rename, then create) is not mistaken for a removal,
/// and the follower has drained the file by then.
const MISSES: u8 = 2;

#[derive(Default)]
struct Followed {
    files: Vec<One>,
    /// Device and inode of each file the last expansion matched: a file
    /// found again under another name (rotated to `messages.1`) was read
    /// already and is followed from its end; any other new match is new
    /// since then and read from its start.
    seen: HashSet<(u64, u64)>,
    /// What a rescan logged already, so it says each thing once.
    told: HashSet<String>,
}

/// The files a jail follows.
pub(super) struct LogFiles {
    tpl: Template,
    /// The `logpath` entries with glob characters.
    patterns: Vec<PathBuf>,
    state: Mutex<Followed>,
}

fn lock(m: &Mutex<Followed>) -> MutexGuard<'_, Followed> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ident(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

impl LogFiles {
    /// Expands `logpath` and follows every file (a literal path whether
    /// or not it exists yet); a pattern over the match cap is an error
    /// naming it.
    pub(super) fn start(tpl: Template, logpath: &[PathBuf]) -> Result<Arc<LogFiles>, DaemonError> {
        let found = glob::expand_list(logpath)
            .map_err(|e| DaemonError::Setup(format!("jail {}: {e}", tpl.name)))?;
        for p in found.empty() {
            tracing::warn!(
                "[{}] logpath pattern {} matches no file yet; it is expanded again every {} s and a file that appears is followed",
                tpl.name,
                p.display(),
                RESCAN.as_secs()
            );
        }
        for (p, m) in &found.patterns {
            if !m.is_empty() {
                tracing::info!(
                    "[{}] logpath pattern {} matches {} file(s)",
                    tpl.name,
                    p.display(),
                    m.len()
                );
            }
        }
        let patterns: Vec<PathBuf> = logpath
            .iter()
            .filter(|p| glob::is_pattern(p))
            .cloned()
            .collect();
        let files = Arc::new(LogFiles {
            tpl,
            patterns,
            state: Mutex::new(Followed::default()),
        });
        // One follower per file, however many paths reach it.
        let (paths, same) = distinct(&found.paths);
        for s in &same {
            tracing::warn!("[{}] {s}", files.tpl.name);
        }
        {
            let mut st = lock(&files.state);
            st.seen = found.paths.iter().filter_map(|p| ident(p)).collect();
            for p in &paths {
                let matched = !logpath.contains(p);
                files.follow(&mut st, p, files.tpl.from_start, matched)?;
            }
        }
        if !files.patterns.is_empty() {
            let again = files.clone();
            std::thread::Builder::new()
                .name("logpath glob".into())
                .spawn(move || again.rescan_loop())
                .map_err(|source| DaemonError::Io {
                    what: format!("starting the logpath rescan of jail {}", files.tpl.name),
                    source,
                })?;
        }
        Ok(files)
    }

    fn follow(
        &self,
        st: &mut Followed,
        path: &Path,
        from_start: bool,
        matched: bool,
    ) -> Result<(), DaemonError> {
        let t = &self.tpl;
        let stats = Arc::new(FollowStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let health = t
            .tasks
            .register(&format!("[{}] follower {}", t.name, path.display()));
        FileSource {
            path: path.to_path_buf(),
            jail: t.jail,
            filter: t.filter.clone(),
            tz: t.tz.clone(),
            window: t.window.clone(),
            from_start,
            tx: t.tx.clone(),
            stop: stop.clone(),
            scanners: t.scanners.clone(),
            stats: stats.clone(),
        }
        .spawn(health.clone())
        .map_err(|source| DaemonError::Io {
            what: format!("starting the follower of {}", path.display()),
            source,
        })?;
        st.files.push(One {
            path: path.to_path_buf(),
            stats,
            health,
            stop,
            matched,
            missed: 0,
        });
        Ok(())
    }

    fn rescan_loop(&self) {
        let step = Duration::from_millis(250);
        loop {
            for _ in 0..(RESCAN.as_millis() / step.as_millis()) {
                if self.tpl.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(step);
            }
            if self.tpl.stop.load(Ordering::Relaxed) {
                return;
            }
            self.rescan();
        }
    }

    /// Expands the patterns again and follows the files that are new.
    pub(super) fn rescan(&self) {
        let name = &self.tpl.name;
        let mut matched = Vec::new();
        let mut complete = true;
        let mut st = lock(&self.state);
        // The jail stopped while this waited for the lock: its followers
        // were told already, so none may start now.
        if self.tpl.stop.load(Ordering::Relaxed) {
            return;
        }
        for p in &self.patterns {
            match glob::expand(p) {
                Ok(m) => matched.extend(m),
                Err(e) => {
                    complete = false;
                    let msg = format!("[{name}] {e}; its new files are not followed");
                    if st.told.insert(msg.clone()) {
                        tracing::error!("{msg}");
                    }
                }
            }
        }
        if complete {
            self.drop_gone(&mut st, &matched);
        }
        // What is followed first, so `distinct` keeps it and drops a new
        // name of a file already followed (a link, a second pattern).
        let mut all: Vec<PathBuf> = st.files.iter().map(|f| f.path.clone()).collect();
        let known = all.len();
        all.extend(
            matched
                .iter()
                .filter(|m| !st.files.iter().any(|f| f.path == **m))
                .cloned(),
        );
        if all.len() == known {
            st.seen = matched.iter().filter_map(|p| ident(p)).collect();
            return;
        }
        let (paths, _) = distinct(&all);
        let new: Vec<PathBuf> = paths
            .into_iter()
            .filter(|p| !st.files.iter().any(|f| f.path == *p))
            .collect();
        for p in &new {
            if st.files.len() >= glob::MAX_MATCHES {
                let msg = format!(
                    "[{name}] follows {} files already; {} is not followed (restart to start over)",
                    glob::MAX_MATCHES,
                    p.display()
                );
                if st.told.insert(msg.clone()) {
                    tracing::error!("{msg}");
                }
                continue;
            }
            let from_start = self.tpl.from_start || !ident(p).is_some_and(|i| st.seen.contains(&i));
            tracing::info!(
                "[{name}] logpath: new file {} matches a pattern; following it{}",
                p.display(),
                if from_start { " from its start" } else { "" }
            );
            if let Err(e) = self.follow(&mut st, p, from_start, true) {
                tracing::error!("[{name}] {e}");
            }
        }
        st.seen = matched.iter().filter_map(|p| ident(p)).collect();
    }

    /// Stops the followers of matched files that `MISSES` expansions in
    /// a row did not find (removed, or rotated away for good), so that
    /// names that come and go (`access.log-20261201`) do not pile up.
    fn drop_gone(&self, st: &mut Followed, matched: &[PathBuf]) {
        let name = &self.tpl.name;
        let tasks = &self.tpl.tasks;
        st.files.retain_mut(|f| {
            if !f.matched || matched.contains(&f.path) {
                f.missed = 0;
                return true;
            }
            f.missed += 1;
            if f.missed < MISSES {
                return true;
            }
            tracing::info!(
                "[{name}] logpath: {} no longer matches a pattern; no longer followed",
                f.path.display()
            );
            f.stop.store(true, Ordering::Relaxed);
            tasks.forget(&f.health);
            false
        });
    }

    /// Whether every follower has made its first look at its file.
    pub(super) fn looked(&self) -> bool {
        lock(&self.state)
            .files
            .iter()
            .all(|f| f.stats.looked.load(Ordering::Acquire))
    }

    /// Each followed path with its counters.
    pub(super) fn stats(&self) -> Vec<(PathBuf, Arc<FollowStats>)> {
        lock(&self.state)
            .files
            .iter()
            .map(|f| (f.path.clone(), f.stats.clone()))
            .collect()
    }

    /// Stops every follower and takes them out of the task list (the
    /// rescan thread stops with the jail's stop flag).
    pub(super) fn stop(&self) {
        for f in &lock(&self.state).files {
            f.stop.store(true, Ordering::Relaxed);
            self.tpl.tasks.forget(&f.health);
        }
    }
}
