//! The state store: every ban ever decided, in SQLite (WAL), so a restart
//! restores the bans still in force and escalation knows repeat offenders.
//!
//! A corrupt or unreadable database is moved aside with a loud error and a
//! fresh one is started: the daemon never refuses to protect because of its
//! history. While the daemon runs, `Store::check` notices a database that
//! vanished, was replaced or damaged under it (the store thread then
//! rebuilds it; see `daemon/store.rs`).

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use rusqlite::{Connection, OptionalExtension, params};

use crate::decision::{BanReason, UnbanReason};
use crate::event::Time;

/// Schema migrations, applied in order and tracked by `PRAGMA user_version`.
/// Append only: never edit or remove one.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE bans (
        id INTEGER PRIMARY KEY,
        jail TEXT NOT NULL,
        addr TEXT NOT NULL,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER,
        failures INTEGER NOT NULL,
        reason TEXT NOT NULL,
        lifted_ms INTEGER,
        lifted_reason TEXT
    );
    CREATE INDEX bans_open ON bans(lifted_ms) WHERE lifted_ms IS NULL;
    CREATE INDEX bans_addr ON bans(addr, start_ms);",
    // What each peer host name last resolved to (addresses separated by
    // spaces): protected at the next start while DNS is down.
    "CREATE TABLE resolved (
        name TEXT PRIMARY KEY,
        addrs TEXT NOT NULL,
        resolved_ms INTEGER NOT NULL
    );",
];

/// Why the store failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {source}")]
pub struct StoreError {
    /// The database file.
    pub path: String,
    /// What SQLite said.
    #[source]
    pub source: rusqlite::Error,
}

/// A ban as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBan {
    /// The jail's name.
    pub jail: String,
    /// Address or prefix.
    pub addr: IpNet,
    /// Start.
    pub start: Time,
    /// End; `None` for permanent.
    pub end: Option<Time>,
    /// Failures that caused it.
    pub failures: u32,
    /// Why.
    pub reason: BanReason,
}

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

/// A ban with, once it ended, when and why.
pub type HistoryRow = (StoredBan, Option<(Time, String)>);

/// A write the daemon asks of the store.
#[derive(Clone, Debug)]
pub enum StoreOp {
    /// A ban began.
    Ban(StoredBan),
    /// The wall clock stepped by this many milliseconds while bans ran on:
    /// the open bans' start and end move with it, so a restart gives each
    /// the time it really has left.
    ClockStep(i64),
    /// A ban of `addr` in `jail` ended.
    Unban {
        /// Jail name.
        jail: String,
        /// Address or prefix.
        addr: IpNet,
        /// When.
        at: Time,
        /// Why.
        reason: UnbanReason,
    },
    /// The bans in force when the database was re-created: each gets an
    /// open row unless it has one already (same jail, address and start).
    InForce(Vec<StoredBan>),
    /// A peer host name resolved to these addresses (replacing what was
    /// kept for it).
    Resolved {
        /// The host name.
        name: String,
        /// Its addresses.
        addrs: Vec<IpAddr>,
        /// When.
        at: Time,
    },
}

/// What a peer host name last resolved to, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredName {
    /// The host name.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
    /// When they were resolved.
    pub at: Time,
}

/// Most names read back at start: a peer list is short, and a database
/// grown by other hands must not grow the daemon.
const MAX_STORED_NAMES: i64 = 10_000;

/// The open database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The state directory.
    dir: PathBuf,
    /// Device and inode of the file this connection opened: another file
    /// at the path means the database was replaced.
    id: (u64, u64),
    /// The page size the header must keep.
    page_size: u32,
}

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

fn reason_str(r: BanReason) -> &'static str {
    match r {
        BanReason::Failures => "failures",
        BanReason::Manual => "manual",
        BanReason::Cluster => "cluster",
    }
}

fn parse_reason(s: &str) -> BanReason {
    match s {
        "manual" => BanReason::Manual,
        "cluster" => BanReason::Cluster,
        _ => BanReason::Failures,
    }
}

fn unban_str(r: UnbanReason) -> &'static str {
    match r {
        UnbanReason::Expired => "expired",
        UnbanReason::Manual => "manual",
    }
}

impl Store {
    /// Opens (or creates) `state_dir/sipwarden.db`. When the file is corrupt
    /// or unreadable it is renamed `sipwarden.db.corrupt-<time>` and a fresh
    /// database replaces it.
    pub fn open(state_dir: &Path, now: Time) -> Result<Store, StoreError> {
        let path = state_dir.join("sipwarden.db");
        match Store::open_at(&path) {
            Ok(s) => Ok(s),
            Err(e) if path.exists() => {
                let aside = move_aside(state_dir, "corrupt", now);
                tracing::error!(
                    "{e}; moved it aside to {} and starting with an empty history (active bans in it are not restored)",
                    aside.map_or_else(|| "(could not move it)".into(), |a| a.display().to_string())
                );
                Store::open_at(&path)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the database read-only, for lookups beside the running daemon
    /// (the HTTP history view): never creates, migrates or moves anything.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("sipwarden.db");
        let err = |source| StoreError {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(err)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Store {
            conn,
            path,
            dir,
            id: (0, 0),
            page_size: 0,
        })
    }

    fn open_at(path: &Path) -> Result<Store, StoreError> {
        let err = |source| StoreError {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(err)?;
        let ok: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(err)?;
        if ok != "ok" {
            return Err(err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!("integrity check failed: {ok}")),
            )));
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let page_size: u32 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            id: (0, 0),
            page_size,
        };
        store.migrate().map_err(err)?;
        // Identified once it holds its schema (the file exists and has a
        // header from here on).
        store.id = std::fs::metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| StoreError {
                path: path.display().to_string(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(e.to_string()),
                ),
            })?;
        Ok(store)
    }

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

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
        }
        tx.commit()
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Applies writes in one transaction.
    pub fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let r = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO bans (jail, addr, start_ms, end_ms, failures, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                // A new ban of an address supersedes any open one in the jail.
                let mut close = tx.prepare_cached(
                    "UPDATE bans SET lifted_ms = ?3, lifted_reason = ?4 WHERE jail = ?1 AND addr = ?2 AND lifted_ms IS NULL",
                )?;
                let mut open = tx.prepare_cached(
                    "SELECT 1 FROM bans WHERE addr = ?2 AND start_ms = ?3 AND jail = ?1 AND lifted_ms IS NULL LIMIT 1",
                )?;
                let mut ban = |close: &mut rusqlite::CachedStatement<'_>,
                               b: &StoredBan|
                 -> rusqlite::Result<()> {
                    let addr = b.addr.to_string();
                    close.execute(params![b.jail, addr, b.start.0, "replaced"])?;
                    ins.execute(params![
                        b.jail,
                        addr,
                        b.start.0,
                        b.end.map(|e| e.0),
                        b.failures,
                        reason_str(b.reason)
                    ])?;
                    Ok(())
                };
                for op in ops {
                    match op {
                        StoreOp::Ban(b) => ban(&mut close, b)?,
                        StoreOp::InForce(bans) => {
                            for b in bans {
                                if !open.exists(params![b.jail, b.addr.to_string(), b.start.0])? {
                                    ban(&mut close, b)?;
                                }
                            }
                        }
                        StoreOp::ClockStep(delta) => {
                            tx.execute(
                                "UPDATE bans SET start_ms = start_ms + ?1, end_ms = end_ms + ?1 WHERE lifted_ms IS NULL",
                                params![delta],
                            )?;
                        }
                        StoreOp::Resolved { name, addrs, at } => {
                            let text: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                            tx.execute(
                                "INSERT INTO resolved (name, addrs, resolved_ms) VALUES (?1, ?2, ?3)
                                 ON CONFLICT(name) DO UPDATE SET addrs = excluded.addrs, resolved_ms = excluded.resolved_ms",
                                params![name, text.join(" "), at.0],
                            )?;
                        }
                        StoreOp::Unban {
                            jail,
                            addr,
                            at,
                            reason,
                        } => {
                            close.execute(params![
                                jail,
                                addr.to_string(),
                                at.0,
                                unban_str(*reason)
                            ])?;
                        }
                    }
                }
            }
            tx.commit()
        })();
        r.map_err(|e| self.err(e))
    }

    /// Bans still in force at `now`, oldest first.
    pub fn active(&self, now: Time) -> Result<Vec<StoredBan>, StoreError> {
        let r = (|| {
            let mut q = self.conn.prepare(
                "SELECT jail, addr, start_ms, end_ms, failures, reason FROM bans
                 WHERE lifted_ms IS NULL AND (end_ms IS NULL OR end_ms > ?1) ORDER BY start_ms",
            )?;
            let rows = q.query_map([now.0], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (jail, addr, start, end, failures, reason) = row?;
                // A row this build cannot read is skipped, not fatal.
                let Ok(addr) = addr.parse::<IpNet>() else {
                    continue;
                };
                out.push(StoredBan {
                    jail,
                    addr,
                    start: Time(start),
                    end: end.map(Time),
                    failures,
                    reason: parse_reason(&reason),
                });
            }
            Ok(out)
        })();
        r.map_err(|e| self.err(e))
    }

    /// For escalation: per (jail, address), how many bans began since the
    /// address's last manual unban (a manual unban is a clean slate).
    pub fn ban_counts(&self) -> Result<Vec<(String, IpNet, u32)>, StoreError> {
        let r = (|| {
            let mut q = self.conn.prepare(
                "SELECT b.jail, b.addr, COUNT(*) FROM bans b
                 WHERE b.start_ms > COALESCE((SELECT MAX(m.lifted_ms) FROM bans m
                        WHERE m.addr = b.addr AND m.lifted_reason = 'manual'), -1)
                 GROUP BY b.jail, b.addr",
            )?;
            let rows = q.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (jail, addr, n) = row?;
                if let Ok(addr) = addr.parse::<IpNet>() {
                    out.push((jail, addr, n));
                }
            }
            Ok(out)
        })();
        r.map_err(|e| self.err(e))
    }

    /// What each peer host name last resolved to. An address this build
    /// cannot read is skipped.
    pub fn resolved(&self) -> Result<Vec<StoredName>, StoreError> {
        let r = (|| {
            let mut q = self
                .conn
                .prepare("SELECT name, addrs, resolved_ms FROM resolved ORDER BY name LIMIT ?1")?;
            let rows = q.query_map([MAX_STORED_NAMES], |r| {
                Ok(StoredName {
                    name: r.get(0)?,
                    addrs: r
                        .get::<_, String>(1)?
                        .split_whitespace()
                        .filter_map(|a| a.parse().ok())
                        .collect(),
                    at: Time(r.get(2)?),
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })();
        r.map_err(|e| self.err(e))
    }

    /// Every ban of `addr`, newest first (for history views).
    pub fn history(&self, addr: &IpNet, limit: usize) -> Result<Vec<HistoryRow>, StoreError> {
        let r = (|| {
            let mut q = self.conn.prepare(
                "SELECT jail, start_ms, end_ms, failures, reason, lifted_ms, lifted_reason FROM bans
                 WHERE addr = ?1 ORDER BY start_ms DESC LIMIT ?2",
            )?;
            let rows = q.query_map(params![addr.to_string(), limit as i64], |r| {
                Ok((
                    StoredBan {
                        jail: r.get(0)?,
                        addr: *addr,
                        start: Time(r.get(1)?),
                        end: r.get::<_, Option<i64>>(2)?.map(Time),
                        failures: r.get(3)?,
                        reason: parse_reason(&r.get::<_, String>(4)?),
                    },
                    r.get::<_, Option<i64>>(5)?
                        .zip(r.get::<_, Option<String>>(6)?)
                        .map(|(t, w)| (Time(t), w)),
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })();
        r.map_err(|e| self.err(e))
    }

    /// Total rows, for tests and status.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM bans", [], |r| r.get::<_, i64>(0))
            .optional()
            .map(|v| v.unwrap_or(0).max(0) as u64)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn tmp() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "sipwarden-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ban(jail: &str, addr: &str, start: i64, end: Option<i64>) -> StoreOp {
        StoreOp::Ban(StoredBan {
            jail: jail.into(),
            addr: addr.parse().unwrap(),
            start: Time(start),
            end: end.map(Time),
            failures: 5,
            reason: BanReason::Failures,
        })
    }

    #[test]
    fn keeps_active_bans_across_reopen() {
        let d = tmp();
        let mut s = Store::open(&d, Time(0)).unwrap();
        s.write(&[
            ban("fs", "192.0.2.1/32", 1000, Some(5000)),
            ban("fs", "192.0.2.2/32", 1000, None),
            ban("fs", "192.0.2.3/32", 1000, Some(1500)),
            ban("fs", "198.51.100.0/24", 1000, Some(9000)),
        ])
        .unwrap();
        s.write(&[StoreOp::Unban {
            jail: "fs".into(),
            addr: "198.51.100.0/24".parse().unwrap(),
            at: Time(2000),
            reason: UnbanReason::Manual,
        }])
        .unwrap();
        drop(s);
        let s = Store::open(&d, Time(0)).unwrap();
        let active: Vec<String> = s
            .active(Time(2000))
            .unwrap()
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(active, vec!["192.0.2.1/32", "192.0.2.2/32"]);
        assert_eq!(s.count().unwrap(), 4);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rebans_replace_open_rows_and_manual_unban_resets_counts() {
        let d = tmp();
        let mut s = Store::open(&d, Time(0)).unwrap();
        s.write(&[
            ban("fs", "192.0.2.1/32", 1000, Some(2000)),
            ban("fs", "192.0.2.1/32", 3000, Some(5000)),
        ])
        .unwrap();
        assert_eq!(s.active(Time(3500)).unwrap().len(), 1);
        assert_eq!(
            s.ban_counts().unwrap(),
            vec![("fs".to_string(), "192.0.2.1/32".parse().unwrap(), 2)]
        );
        s.write(&[StoreOp::Unban {
            jail: "fs".into(),
            addr: "192.0.2.1/32".parse().unwrap(),
            at: Time(4000),
            reason: UnbanReason::Manual,
        }])
        .unwrap();
        assert!(s.ban_counts().unwrap().is_empty());
        s.write(&[ban("fs", "192.0.2.1/32", 6000, Some(7000))])
            .unwrap();
        assert_eq!(s.ban_counts().unwrap()[0].2, 1);
        assert_eq!(
            s.history(&"192.0.2.1/32".parse().unwrap(), 10)
                .unwrap()
                .len(),
            3
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    fn active_addrs(s: &Store) -> Vec<String> {
        s.active(Time(2000))
            .unwrap()
            .iter()
            .map(|b| b.addr.to_string())
            .collect()
    }

    #[test]
    fn check_notices_a_removed_replaced_or_overwritten_database() {
        let d = tmp();
        let mut s = Store::open(&d, Time(0)).unwrap();
        s.write(&[ban("fs", "192.0.2.1/32", 1000, None)]).unwrap();
        assert_eq!(s.check(), Ok(()));

        // Overwritten in place: same inode, no header.
        let db = d.join("sipwarden.db");
        let len = std::fs::metadata(&db).unwrap().len() as usize;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .unwrap()
            .write_all(&vec![0x5a; len])
            .unwrap();
        assert!(
            matches!(s.check(), Err(StoreFault::Damaged { .. })),
            "{:?}",
            s.check()
        );
        drop(s);
        let _ = std::fs::remove_dir_all(&d);

        // Replaced by another file.
        let d = tmp();
        let s = Store::open(&d, Time(0)).unwrap();
        std::fs::copy(d.join("sipwarden.db"), d.join("other")).unwrap();
        std::fs::rename(d.join("other"), d.join("sipwarden.db")).unwrap();
        assert!(matches!(s.check(), Err(StoreFault::Replaced(_))));
        std::fs::remove_file(d.join("sipwarden.db")).unwrap();
        assert!(matches!(s.check(), Err(StoreFault::FileGone(_))));
        // A FIFO in its place is reported, never opened (that would block).
        let fifo = std::ffi::CString::new(d.join("sipwarden.db").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(s.check(), Err(StoreFault::Replaced(_))));
        std::fs::remove_file(d.join("sipwarden.db")).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        let e = s.check().unwrap_err();
        assert!(matches!(e, StoreFault::DirGone { .. }));
        assert!(e.to_string().contains("vanished"), "{e}");
        std::fs::write(&d, "a file").unwrap();
        assert!(
            s.check()
                .unwrap_err()
                .to_string()
                .contains("something else"),
            "{:?}",
            s.check()
        );
        let _ = std::fs::remove_file(&d);
    }

    #[test]
    fn the_history_is_copied_out_of_a_removed_database_and_in_force_bans_are_not_doubled() {
        let d = tmp();
        let mut s = Store::open(&d, Time(0)).unwrap();
        s.write(&[
            ban("fs", "192.0.2.1/32", 1000, Some(9000)),
            ban("fs", "192.0.2.2/32", 1000, Some(1500)),
        ])
        .unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        // Writes into a removed database succeed: only `check` notices.
        s.write(&[ban("fs", "192.0.2.3/32", 1100, None)]).unwrap();
        std::fs::create_dir_all(&d).unwrap();
        let copy = d.join("sipwarden.db.rebuild");
        s.copy_to(&copy).unwrap();
        s.abandon();
        std::fs::rename(&copy, d.join("sipwarden.db")).unwrap();
        let mut s = Store::open(&d, Time(0)).unwrap();
        assert_eq!(s.count().unwrap(), 3, "the whole history came along");
        // The bans in force, one of them already there with the same start.
        let in_force = |addr: &str, start| StoredBan {
            jail: "fs".into(),
            addr: addr.parse().unwrap(),
            start: Time(start),
            end: None,
            failures: 1,
            reason: BanReason::Manual,
        };
        s.write(&[StoreOp::InForce(vec![
            in_force("192.0.2.3/32", 1100),
            in_force("192.0.2.4/32", 1200),
        ])])
        .unwrap();
        assert_eq!(s.count().unwrap(), 4, "an open row is not written twice");
        assert_eq!(
            active_addrs(&s),
            vec!["192.0.2.1/32", "192.0.2.3/32", "192.0.2.4/32"]
        );
        assert_eq!(s.check(), Ok(()));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Issue 16, finding 5: what a peer name resolved to survives a
    /// restart; a later answer replaces it.
    #[test]
    fn resolved_names_are_kept_and_replaced() {
        let d = tmp();
        let mut s = Store::open(&d, Time(0)).unwrap();
        let op = |name: &str, addrs: &[&str], at| StoreOp::Resolved {
            name: name.into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            at: Time(at),
        };
        s.write(&[
            op("pbx", &["192.0.2.1", "2001:db8::1"], 1000),
            op("redis", &["192.0.2.9"], 1000),
            op("pbx", &["192.0.2.2", "2001:db8::1"], 2000),
        ])
        .unwrap();
        drop(s);
        let s = Store::open(&d, Time(0)).unwrap();
        let got = s.resolved().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            StoredName {
                name: "pbx".into(),
                addrs: vec!["192.0.2.2".parse().unwrap(), "2001:db8::1".parse().unwrap()],
                at: Time(2000),
            }
        );
        assert_eq!(got[1].name, "redis");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_database_is_moved_aside() {
        let d = tmp();
        std::fs::write(d.join("sipwarden.db"), b"this is not a database, it is garbage........................................................................................").unwrap();
        let mut s = Store::open(&d, Time(1_000_000)).unwrap();
        s.write(&[ban("fs", "192.0.2.1/32", 1, None)]).unwrap();
        assert!(d.join("sipwarden.db.corrupt-1000").exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
