//! The database's schema and the text its columns hold.
//!
//! Migrations are append-only and applied in order at open, tracked by
//! `PRAGMA user_version`; the reason words are what older and newer builds
//! read back. Apart so that what is on disk, which outlives any build, is
//! in one place.

use crate::decision::{BanReason, UnbanReason};

use super::Store;

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
    // Where each journal source stands, so that a restart resumes there.
    "CREATE TABLE journal_cursors (
        jail TEXT NOT NULL,
        source TEXT NOT NULL,
        cursor TEXT NOT NULL,
        saved_ms INTEGER NOT NULL,
        PRIMARY KEY (jail, source)
    );",
];

impl Store {
    /// Brings the schema up to the newest migration.
    pub(super) fn migrate(&mut self) -> rusqlite::Result<()> {
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
}

/// The word a ban's reason is stored as.
pub(super) fn reason_str(r: BanReason) -> &'static str {
    match r {
        BanReason::Failures => "failures",
        BanReason::Burst => "burst",
        BanReason::Manual => "manual",
        BanReason::Cluster => "cluster",
        BanReason::Fraud => "fraud",
    }
}

/// A stored reason word read back (an unknown word reads as failures).
pub(super) fn parse_reason(s: &str) -> BanReason {
    match s {
        "manual" => BanReason::Manual,
        "burst" => BanReason::Burst,
        "cluster" => BanReason::Cluster,
        "fraud" => BanReason::Fraud,
        _ => BanReason::Failures,
    }
}

/// The word an unban's reason is stored as.
pub(super) fn unban_str(r: UnbanReason) -> &'static str {
    match r {
        UnbanReason::Expired => "expired",
        UnbanReason::Manual => "manual",
    }
}
