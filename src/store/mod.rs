//! The state store: every ban ever decided, in SQLite (WAL), so a restart
//! restores the bans still in force and escalation knows repeat offenders.
//!
//! A corrupt or unreadable database is moved aside with a loud error and a
//! fresh one is started: the daemon never refuses to protect because of its
//! history. While the daemon runs, `Store::check` notices a database that
//! vanished, was replaced or damaged under it (the store thread then
//! rebuilds it; see `daemon/store.rs`).
//!
//! This file opens the database; `schema.rs` holds the migrations and the
//! words stored for reasons, `write.rs` applies the daemon's writes,
//! `read.rs` the queries, `health.rs` the checks of the file under a
//! running daemon and what a rebuild needs.

mod health;
mod read;
mod schema;
mod write;

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use rusqlite::Connection;

pub use self::health::{StoreFault, is_damage, move_aside};
use crate::decision::{BanReason, UnbanReason};
use crate::event::Time;

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
    /// Where a journal source stands: the cursor of the last entry whose
    /// failures the jails handled (replacing the one kept).
    JournalCursor {
        /// The jail.
        jail: String,
        /// The journal it reads (its label).
        source: String,
        /// The cursor.
        cursor: String,
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

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError {
            path: self.path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use std::sync::Arc;

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
    fn an_unreadable_row_is_skipped_and_the_other_bans_are_restored() {
        let d = tmp();
        let mut s = Store::open(&d, Time(0)).unwrap();
        s.write(&[
            ban("fs", "192.0.2.1/32", 1000, None),
            ban("fs", "192.0.2.2/32", 1100, None),
            ban("fs", "192.0.2.3/32", 1200, None),
            ban("fs", "192.0.2.4/32", 1300, None),
        ])
        .unwrap();
        // Edited by hand: a count past u32, a jail that is not text, an
        // address that is no address.
        s.conn
            .execute(
                "UPDATE bans SET failures = 1099511627776 WHERE addr = '192.0.2.1/32'",
                [],
            )
            .unwrap();
        s.conn
            .execute(
                "UPDATE bans SET jail = x'00ff' WHERE addr = '192.0.2.2/32'",
                [],
            )
            .unwrap();
        s.conn
            .execute("UPDATE bans SET addr = 'x' WHERE addr = '192.0.2.3/32'", [])
            .unwrap();
        let active = s.active(Time(2000)).unwrap();
        let addrs: Vec<String> = active.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(addrs, vec!["192.0.2.4/32"]);
    }

    #[test]
    fn ban_counts_per_jail_and_address_after_the_addresss_last_manual_unban() {
        let d = tmp();
        let mut s = Store::open(&d, Time(0)).unwrap();
        s.write(&[
            ban("fs", "192.0.2.1/32", 1000, Some(1500)),
            ban("sip", "192.0.2.1/32", 1100, Some(1600)),
            ban("fs", "192.0.2.2/32", 1200, Some(1700)),
            ban("fs", "192.0.2.2/32", 2000, Some(2500)),
            ban("fs", "2001:db8::/64", 2100, None),
        ])
        .unwrap();
        let sorted = |s: &Store| {
            let mut v: Vec<(String, String, u32)> = s
                .ban_counts()
                .unwrap()
                .into_iter()
                .map(|(j, a, n)| (j.to_string(), a.to_string(), n))
                .collect();
            v.sort();
            v
        };
        let row = |j: &str, a: &str, n| (j.to_string(), a.to_string(), n);
        assert_eq!(
            sorted(&s),
            vec![
                row("fs", "192.0.2.1/32", 1),
                row("fs", "192.0.2.2/32", 2),
                row("fs", "2001:db8::/64", 1),
                row("sip", "192.0.2.1/32", 1),
            ]
        );
        // A manual unban in one jail is a clean slate for the address in
        // every jail; bans after it count again.
        s.write(&[StoreOp::Unban {
            jail: "fs".into(),
            addr: "2001:db8::/64".parse().unwrap(),
            at: Time(2200),
            reason: UnbanReason::Manual,
        }])
        .unwrap();
        s.write(&[ban("sip", "2001:db8::/64", 2300, Some(2400))])
            .unwrap();
        // A row this build cannot read is skipped, not fatal.
        s.conn
            .execute(
                "INSERT INTO bans (jail, addr, start_ms, end_ms, failures, reason) VALUES ('fs', 'not-an-address', 1, NULL, 1, 'failures')",
                [],
            )
            .unwrap();
        assert_eq!(
            sorted(&s),
            vec![
                row("fs", "192.0.2.1/32", 1),
                row("fs", "192.0.2.2/32", 2),
                row("sip", "192.0.2.1/32", 1),
                row("sip", "2001:db8::/64", 1),
            ]
        );
        // One name per jail, shared by its rows.
        let counts = s.ban_counts().unwrap();
        let fs: Vec<_> = counts.iter().filter(|c| &*c.0 == "fs").collect();
        assert!(fs.windows(2).all(|w| Arc::ptr_eq(&w[0].0, &w[1].0)));
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
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
            vec![(Arc::from("fs"), "192.0.2.1/32".parse().unwrap(), 2)]
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

    /// Issue 19: where a journal source stands survives a restart; a
    /// later cursor replaces it.
    #[test]
    fn journal_cursors_are_kept_and_replaced() {
        let d = tmp();
        let mut s = Store::open(&d, Time(0)).unwrap();
        let op = |jail: &str, cursor: &str| StoreOp::JournalCursor {
            jail: jail.into(),
            source: "journal".into(),
            cursor: cursor.into(),
            at: Time(1000),
        };
        s.write(&[op("sshd", "c1"), op("other", "o1")]).unwrap();
        s.write(&[op("sshd", "c2")]).unwrap();
        drop(s);
        let s = Store::open(&d, Time(0)).unwrap();
        let mut got = s.journal_cursors().unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("other".into(), "journal".into(), "o1".into()),
                ("sshd".into(), "journal".into(), "c2".into())
            ]
        );
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
