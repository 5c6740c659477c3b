//! Whether the database under a running daemon is still the one it opened,
//! and what rebuilding it needs.
//!
//! SQLite notices none of this itself: writes into a deleted or overwritten
//! file succeed, and the loss shows only at the next start. The store
//! thread (`daemon/store.rs`) calls [`Store::check`] and, on a fault, copies
//! the history out, abandons the old connection and moves the damaged file
//! aside. Apart from reads and writes, which never look at the file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Store, StoreError};
use crate::event::Time;

/// What is wrong with the database under a running daemon: found by
/// `Store::check`, each repaired by rebuilding the database.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreFault {
    /// The state directory is gone (or something else is in its place).
    #[error("state directory {dir} vanished{detail}")]
    DirGone {
        /// The directory.
        dir: String,
        /// What is there instead, if anything (" (a file is in its place)").
        detail: String,
    },
    /// The database file is gone from its directory.
    #[error("state database {0} vanished (deleted or renamed)")]
    FileGone(String),
    /// Another file now sits at the database's path.
    #[error("state database {0} was replaced by another file")]
    Replaced(String),
    /// The file at the path is not the database any more.
    #[error("state database {path} is damaged ({why})")]
    Damaged {
        /// The file.
        path: String,
        /// What gave it away.
        why: String,
    },
}

/// The first 16 bytes of every SQLite database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Whether SQLite's error says the file itself is damaged.
pub fn is_damage(e: &StoreError) -> bool {
    matches!(
        e.source.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Moves `state_dir/sipwarden.db` aside as `sipwarden.db.<kind>-<secs>`
/// (kept for inspection) and removes its `-wal` and `-shm` files, which
/// belong to it and must not be replayed into a new database. Returns where
/// it went, `None` when there was nothing to move.
pub fn move_aside(state_dir: &Path, kind: &str, now: Time) -> Option<PathBuf> {
    let path = state_dir.join("sipwarden.db");
    let moved = if path.symlink_metadata().is_ok() {
        let base = format!("sipwarden.db.{kind}-{}", now.as_secs());
        let mut aside = state_dir.join(&base);
        let mut n = 1;
        while aside.symlink_metadata().is_ok() {
            n += 1;
            aside = state_dir.join(format!("{base}.{n}"));
        }
        std::fs::rename(&path, &aside).ok().map(|()| aside)
    } else {
        None
    };
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(state_dir.join(format!("sipwarden.db{ext}")));
    }
    moved
}

impl Store {
    /// Checks, cheaply, that the database this connection writes is still
    /// the one at the path: the directory is there, the file is the same
    /// (device and inode), and its header is still an SQLite header with
    /// our page size. SQLite itself notices none of this: writes into a
    /// deleted or overwritten file succeed, and the loss shows only at the
    /// next start.
    pub fn check(&self) -> Result<(), StoreFault> {
        let dir = || self.dir.display().to_string();
        let path = || self.path.display().to_string();
        match std::fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreFault::DirGone {
                    dir: dir(),
                    detail: " (something else is in its place)".into(),
                });
            }
            Err(_) => {
                return Err(StoreFault::DirGone {
                    dir: dir(),
                    detail: String::new(),
                });
            }
        }
        // stat first: only our own file is opened (a FIFO put at the path
        // would block an open).
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) != self.id => return Err(StoreFault::Replaced(path())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreFault::FileGone(path()));
            }
            Err(e) => {
                return Err(StoreFault::Damaged {
                    path: path(),
                    why: format!("cannot read its metadata: {e}"),
                });
            }
        }
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) => {
                return Err(StoreFault::Damaged {
                    path: path(),
                    why: format!("cannot open it: {e}"),
                });
            }
        };
        let mut head = [0u8; 18];
        let got = std::io::Read::read(&mut f, &mut head).unwrap_or(0);
        if got < head.len() || &head[..16] != MAGIC {
            return Err(StoreFault::Damaged {
                path: path(),
                why: "its header is not an SQLite header any more".into(),
            });
        }
        // Bytes 16-17: the page size, big-endian; 1 stands for 65536.
        let page = match u16::from_be_bytes([head[16], head[17]]) {
            1 => 65536,
            p => u32::from(p),
        };
        if page != self.page_size {
            return Err(StoreFault::Damaged {
                path: path(),
                why: format!(
                    "its header says pages of {page} bytes, not {}",
                    self.page_size
                ),
            });
        }
        Ok(())
    }

    /// Copies the whole database, as this connection reads it, into a new
    /// file at `dest` (`VACUUM INTO`): the history survives when the file
    /// was deleted or replaced under an open connection.
    pub fn copy_to(&self, dest: &Path) -> Result<(), StoreError> {
        let _ = std::fs::remove_file(dest);
        self.conn
            .execute("VACUUM INTO ?1", [dest.to_string_lossy()])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Closes the connection without the checkpoint SQLite makes on close:
    /// a checkpoint would write into a file that is not ours any more, and
    /// would delete the `-wal` file by its path, which may by then belong
    /// to a new database.
    pub fn abandon(self) {
        let _ = self.conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        );
    }
}
