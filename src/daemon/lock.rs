//! The single-instance lock on the state directory.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::DaemonError;

/// Takes the state directory's lock so a second daemon refuses to start.
/// `Ok(None)` when the directory cannot be used at all (the daemon then
/// runs without a store, still protecting).
pub(super) fn lock_state_dir(dir: &Path) -> Result<Option<File>, DaemonError> {
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
