//! Directory watches for the log followers: one inotify instance for the
//! whole process.
//!
//! The kernel allows 128 inotify instances per user by default, shared with
//! every other program of that user. One instance (and one notify thread) per
//! followed path ran out with a few hundred log paths, or beside other
//! programs, and the followers fell back to polling every 500 ms, where a
//! fast rotation loses lines. So every follower subscribes to its file's
//! directory here instead.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

/// Renames of a followed file noted and not yet looked at. More rotations
/// than this between two looks lose the oldest rotated files (with a
/// warning).
pub const MAX_RENAMES: usize = 1024;

/// Where a followed file was renamed to, noted as the renames happen (on the
/// watch's own thread) for its follower to look at.
#[derive(Debug, Default)]
pub struct Renames {
    /// Where each generation went, oldest first.
    pub to: VecDeque<PathBuf>,
    /// Renames not noted: the list was full, or the kernel's event queue
    /// overflowed.
    pub lost: u64,
}

/// Why a directory is not watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The directory does not exist (yet).
    #[error("{0}: no such directory")]
    NoDirectory(PathBuf),
    /// inotify refused (instances or watches used up, or not supported).
    #[error("inotify: {0}")]
    Inotify(#[from] notify::Error),
}

/// A follower's subscription to its file's directory; dropping it ends it.
#[derive(Debug)]
pub struct DirWatch {
    dir: PathBuf,
    id: u64,
}

/// One follower, as the shared watch sees it.
struct Subscriber {
    id: u64,
    /// The followed file's name in the directory.
    name: Option<OsString>,
    wake: SyncSender<()>,
    renames: Arc<Mutex<Renames>>,
}

type Dirs = HashMap<PathBuf, Vec<Subscriber>>;

struct Hub {
    /// Created on first use; creating it again is tried until it works.
    /// Held while subscribing, never by the event callback (which takes
    /// `dirs` only): `watch()` waits for notify's thread, which may be in
    /// the callback.
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    /// Subscribers per directory, keyed as notify reports event paths
    /// (absolute).
    dirs: Arc<Mutex<Dirs>>,
    next: AtomicU64,
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Hub {
        watcher: Mutex::new(None),
        dirs: Arc::default(),
        next: AtomicU64::new(0),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every step below leaves the data consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DirWatch {
    /// Watches `path`'s directory: `wake` gets a message on every event in
    /// it, and renames of `path`'s file within it are noted in `renames`.
    pub fn new(
        path: &Path,
        wake: SyncSender<()>,
        renames: Arc<Mutex<Renames>>,
    ) -> Result<DirWatch, WatchError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(WatchError::NoDirectory(dir.to_path_buf()));
        }
        // notify reports event paths under the absolute form of what it
        // watches.
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(notify::Error::io)?
                .join(dir)
        };
        let hub = hub();
        let mut watcher = lock(&hub.watcher);
        let id = hub.next.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut dirs = lock(&hub.dirs);
            let list = dirs.entry(dir.clone()).or_default();
            list.push(Subscriber {
                id,
                name: path.file_name().map(|n| n.to_os_string()),
                wake,
                renames,
            });
            list.len() == 1
        };
        let watched = if first {
            let created = match watcher.as_mut() {
                Some(w) => Ok(w),
                None => new_watcher(&hub.dirs).map(|w| watcher.insert(w)),
            };
            created.and_then(|w| w.watch(&dir, RecursiveMode::NonRecursive))
        } else {
            Ok(())
        };
        match watched {
            Ok(()) => Ok(DirWatch { dir, id }),
            Err(e) => {
                forget(&mut lock(&hub.dirs), &dir, id);
                Err(e.into())
            }
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        let hub = hub();
        let mut watcher = lock(&hub.watcher);
        let last = forget(&mut lock(&hub.dirs), &self.dir, self.id);
        if last {
            if let Some(w) = watcher.as_mut() {
                // Gone with the directory already, at worst.
                let _ = w.unwatch(&self.dir);
            }
        }
    }
}

/// Removes a subscriber; true when it was the directory's last.
fn forget(dirs: &mut Dirs, dir: &Path, id: u64) -> bool {
    let Some(list) = dirs.get_mut(dir) else {
        return false;
    };
    list.retain(|s| s.id != id);
    if list.is_empty() {
        dirs.remove(dir);
        return true;
    }
    false
}

fn new_watcher(dirs: &Arc<Mutex<Dirs>>) -> notify::Result<notify::RecommendedWatcher> {
    let dirs = dirs.clone();
    notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let dirs = lock(&dirs);
        let ev = match res {
            Ok(ev) if !ev.need_rescan() => ev,
            // The kernel's queue overflowed (renames may be missing) or the
            // watch failed: everyone looks again.
            _ => {
                for s in dirs.values().flatten() {
                    lock(&s.renames).lost += 1;
                    let _ = s.wake.try_send(());
                }
                return;
            }
        };
        let mut woken: Vec<&Path> = Vec::new();
        for p in &ev.paths {
            // An event on a file in the directory, or on the directory.
            for dir in [p.parent(), Some(p.as_path())].into_iter().flatten() {
                if woken.contains(&dir) {
                    continue;
                }
                let Some(list) = dirs.get(dir) else {
                    continue;
                };
                woken.push(dir);
                for s in list {
                    note_rename(&ev, s);
                    // Coalesced: one pending wake-up is enough.
                    let _ = s.wake.try_send(());
                }
            }
        }
    })
}

/// Notes where `s`'s file went, when `ev` is its rename within the
/// directory.
fn note_rename(ev: &notify::Event, s: &Subscriber) {
    if ev.kind != EventKind::Modify(ModifyKind::Name(RenameMode::Both)) {
        return;
    }
    let [from, to] = ev.paths.as_slice() else {
        return;
    };
    if s.name.is_none() || from.file_name() != s.name.as_deref() {
        return;
    }
    let mut r = lock(&s.renames);
    if r.to.len() < MAX_RENAMES {
        r.to.push_back(to.clone());
    } else {
        r.lost += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::{Duration, Instant};

    #[test]
    fn renames_are_noted_for_the_subscriber_of_that_name_only() {
        let dir = std::env::temp_dir().join(format!("sw-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a_tx, a_rx) = sync_channel(1);
        let (b_tx, _b_rx) = sync_channel(1);
        let a = Arc::new(Mutex::new(Renames::default()));
        let b = Arc::new(Mutex::new(Renames::default()));
        let wa = DirWatch::new(&dir.join("a.log"), a_tx, a.clone()).unwrap();
        let wb = DirWatch::new(&dir.join("b.log"), b_tx, b.clone()).unwrap();
        std::fs::write(dir.join("a.log"), "x").unwrap();
        std::fs::rename(dir.join("a.log"), dir.join("a.log.1")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&a).to.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lock(&a).to, [dir.join("a.log.1")]);
        assert!(a_rx.try_recv().is_ok(), "woken");
        assert!(lock(&b).to.is_empty());
        drop(wa);
        drop(wb);
        assert!(!lock(&hub().dirs).contains_key(&dir), "unsubscribed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let (tx, _rx) = sync_channel(1);
        let e = DirWatch::new(Path::new("/nonexistent-sw/x.log"), tx, Arc::default()).unwrap_err();
        assert!(matches!(e, WatchError::NoDirectory(_)), "{e}");
    }
}
