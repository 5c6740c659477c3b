//! The single-instance lock on the state directory.
//!
//! Two holds, neither of them a file someone can delete: an abstract unix
//! socket named after the canonical state directory (it cannot be removed
//! from the file system and vanishes with the process; see `crate::claim`),
//! and an `flock` on the directory itself (it also holds across network
//! namespaces, which abstract sockets do not). `rm -rf` of the directory
//! leaves the socket in place, so a second daemon still refuses; the store
//! thread takes the directory lock again once it has re-created the
//! directory.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::DaemonError;
use crate::claim::{self, Claim, Taken};

/// The held lock; released when dropped.
#[derive(Debug)]
pub(super) struct StateLock {
    /// The state directory, canonical.
    pub(super) dir: PathBuf,
    /// The abstract socket `sipwarden-state:<dir>` (`None` when squatted).
    _claim: Option<Claim>,
    /// The directory, flocked (`None` while it cannot be opened).
    dir_lock: Option<(File, (u64, u64))>,
}

/// `dir` as an absolute path with symbolic links resolved, as far as it
/// exists: two daemons given the same directory by different spellings get
/// the same name, and a removed directory keeps the name it had.
pub(super) fn canonical(dir: &Path) -> PathBuf {
    if let Ok(c) = dir.canonicalize() {
        return c;
    }
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(p), Some(name)) => p
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

impl StateLock {
    /// Takes the state directory's lock, so a second daemon on it refuses
    /// to start and names the one running. A directory that cannot be
    /// created is not an error here: the store thread reports it and keeps
    /// trying.
    pub(super) fn take(dir: &Path) -> Result<StateLock, DaemonError> {
        let canon = canonical(dir);
        let name = claim::name("sipwarden-state", &canon.to_string_lossy());
        let answer = format!("sipwarden state_dir={}", canon.display());
        let claim = match claim::take(&name, &answer) {
            Ok(Taken::Mine(c)) => Some(c),
            Ok(Taken::Held(h)) if h.trusted() => {
                return Err(DaemonError::Setup(format!(
                    "another sipwarden is running with state directory {} ({h}); stop it first, or give this one another [daemon] state_dir",
                    canon.display()
                )));
            }
            Ok(Taken::Held(h)) => {
                tracing::warn!(
                    "the abstract socket @{name} is held by a process of another user ({h}), not a sipwarden of this one; only the directory lock guards {}",
                    canon.display()
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    "cannot bind the abstract socket @{name}: {e}; only the directory lock guards {}",
                    canon.display()
                );
                None
            }
        };
        let mut lock = StateLock {
            dir: canon,
            _claim: claim,
            dir_lock: None,
        };
        if let Err(e) = std::fs::create_dir_all(&lock.dir) {
            tracing::error!(
                "state directory {}: {e}; bans are enforced but not stored until it can be created (retried every few seconds)",
                lock.dir.display()
            );
            return Ok(lock);
        }
        lock.relock()?;
        Ok(lock)
    }

    /// Takes the `flock` on the directory as it is now (again, after it was
    /// removed and re-created). Another process holding it is an error
    /// that names it when the kernel says who (`/proc/locks`).
    pub(super) fn relock(&mut self) -> Result<(), DaemonError> {
        let f = match File::open(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                // Not there (yet): the store thread says so and retries.
                tracing::debug!("state directory {}: {e}", self.dir.display());
                self.dir_lock = None;
                return Ok(());
            }
        };
        let id = match f.metadata() {
            Ok(m) => (m.dev(), m.ino()),
            Err(_) => (0, 0),
        };
        if self.dir_lock.as_ref().is_some_and(|(_, held)| *held == id) {
            return Ok(());
        }
        // std's try_lock is flock(LOCK_EX | LOCK_NB) on Linux: the lock
        // `flock_holder` finds in /proc/locks.
        if f.try_lock().is_err() {
            let who = flock_holder(id)
                .map(|p| format!("pid {p}"))
                .unwrap_or_else(|| "pid unknown".into());
            return Err(DaemonError::Setup(format!(
                "another sipwarden ({who}, perhaps in another network namespace) holds the lock on state directory {}; stop it first, or give this one another [daemon] state_dir",
                self.dir.display()
            )));
        }
        self.dir_lock = Some((f, id));
        Ok(())
    }
}

/// The pid holding an flock on the file `(dev, ino)`, from `/proc/locks`
/// (lines like `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`).
fn flock_holder((dev, ino): (u64, u64)) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    // The kernel's device number split as /proc/locks prints it (hex).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_survive_removal_and_spelling() {
        let base = std::env::temp_dir().join(format!("sipwarden-lock-{}", std::process::id()));
        let d = base.join("state");
        std::fs::create_dir_all(&d).unwrap();
        let spelled = base.join("x/../state");
        std::fs::create_dir_all(base.join("x")).unwrap();
        assert_eq!(canonical(&spelled), canonical(&d));
        let before = canonical(&d);
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(canonical(&d), before, "a removed directory keeps its name");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_second_lock_refuses_and_names_the_holder_even_after_rm_rf() {
        let base = std::env::temp_dir().join(format!("sipwarden-lock2-{}", std::process::id()));
        let d = base.join("state");
        let first = StateLock::take(&d).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        let e = StateLock::take(&d).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("state"),
            "{e}"
        );
        drop(first);
        let again = StateLock::take(&d).unwrap();
        assert!(again.dir_lock.is_some());
        drop(again);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// The directory lock alone (no abstract socket, as across network
    /// namespaces): a held flock refuses and names the holder.
    #[test]
    fn a_held_directory_flock_refuses_and_names_the_holder() {
        let base = std::env::temp_dir().join(format!("sipwarden-lock4-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let held = File::open(&base).unwrap();
        held.lock().unwrap();
        let mut lock = StateLock {
            dir: canonical(&base),
            _claim: None,
            dir_lock: None,
        };
        let e = lock.relock().unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("holds the lock"),
            "{e}"
        );
        drop(held);
        lock.relock().unwrap();
        assert!(lock.dir_lock.is_some());
        drop(lock);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn flock_holders_are_found_in_proc_locks() {
        let base = std::env::temp_dir().join(format!("sipwarden-lock3-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let f = File::open(&base).unwrap();
        f.lock().unwrap();
        let m = f.metadata().unwrap();
        assert_eq!(flock_holder((m.dev(), m.ino())), Some(std::process::id()));
        drop(f);
        let _ = std::fs::remove_dir_all(&base);
    }
}
