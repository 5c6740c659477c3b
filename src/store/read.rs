//! Reads: the bans in force for a restart, ban counts for escalation, the
//! names kept for peers, one address's history for the views.
//!
//! Apart from the writes: these are the queries, each turning rows this
//! build cannot read into skips rather than errors.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use rusqlite::{OptionalExtension, params};

use super::schema::parse_reason;
use super::{HistoryRow, Store, StoreError, StoredBan, StoredName};
use crate::event::Time;

/// Most names read back at start: a peer list is short, and a database
/// grown by other hands must not grow the daemon.
const MAX_STORED_NAMES: i64 = 10_000;

impl Store {
    /// Bans still in force at `now`, oldest first.
    pub fn active(&self, now: Time) -> Result<Vec<StoredBan>, StoreError> {
        let r = (|| {
            let mut q = self.conn.prepare(
                "SELECT jail, addr, start_ms, end_ms, failures, reason FROM bans
                 WHERE lifted_ms IS NULL AND (end_ms IS NULL OR end_ms > ?1) ORDER BY start_ms",
            )?;
            // A row this build cannot read (a value of another type, a
            // count out of range: an edited or damaged database) is
            // skipped, not fatal: the other bans are still restored.
            let rows = q.query_map([now.0], |r| {
                Ok((|| {
                    Some((
                        r.get::<_, String>(0).ok()?,
                        r.get::<_, String>(1).ok()?,
                        r.get::<_, i64>(2).ok()?,
                        r.get::<_, Option<i64>>(3).ok()?,
                        r.get::<_, u32>(4).ok()?,
                        r.get::<_, String>(5).ok()?,
                    ))
                })())
            })?;
            let mut out = Vec::new();
            let mut unreadable = 0u64;
            for row in rows {
                let Some((jail, addr, start, end, failures, reason)) = row? else {
                    unreadable += 1;
                    continue;
                };
                let Ok(addr) = addr.parse::<IpNet>() else {
                    unreadable += 1;
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
            if unreadable > 0 {
                tracing::warn!(
                    "{}: {unreadable} stored ban(s) unreadable (edited or damaged rows); skipped",
                    self.path.display()
                );
            }
            Ok(out)
        })();
        r.map_err(|e| self.err(e))
    }

    /// For escalation: per (jail, address), how many bans began since the
    /// address's last manual unban (a manual unban is a clean slate), in no
    /// particular order. Each jail's name is shared by its rows.
    pub fn ban_counts(&self) -> Result<Vec<(Arc<str>, IpNet, u32)>, StoreError> {
        let r = (|| {
            // The clean slates: one per address manually unbanned (few).
            let mut slate: HashMap<String, i64> = HashMap::new();
            let mut q = self.conn.prepare(
                "SELECT addr, MAX(lifted_ms) FROM bans WHERE lifted_reason = 'manual' GROUP BY addr",
            )?;
            let mut rows = q.query([])?;
            while let Some(r) = rows.next()? {
                if let Ok(addr) = r.get::<_, String>(0) {
                    slate.insert(addr, r.get::<_, Option<i64>>(1)?.unwrap_or(-1));
                }
            }
            // One pass over the rows, counted here. (A GROUP BY with a
            // subquery per row sorted every ban: a quarter of a second of
            // the start with 100,000 of them.) Rows are read in place, and
            // a jail's name is allocated once, however many rows it has.
            let mut names: HashMap<Arc<str>, usize> = HashMap::new();
            let mut jails: Vec<Arc<str>> = Vec::new();
            let mut counts: crate::net::AddrMap<(usize, IpNet), u32> = Default::default();
            let mut q = self.conn.prepare("SELECT jail, addr, start_ms FROM bans")?;
            let mut rows = q.query([])?;
            while let Some(r) = rows.next()? {
                let (Ok(jail), Ok(text)) = (r.get_ref(0)?.as_str(), r.get_ref(1)?.as_str()) else {
                    continue;
                };
                let start: i64 = r.get(2)?;
                if slate.get(text).is_some_and(|&cut| start <= cut) {
                    continue;
                }
                let Ok(addr) = text.parse::<IpNet>() else {
                    continue;
                };
                let j = match names.get(jail) {
                    Some(&j) => j,
                    None => {
                        let name: Arc<str> = Arc::from(jail);
                        names.insert(name.clone(), jails.len());
                        jails.push(name);
                        jails.len() - 1
                    }
                };
                let n = counts.entry((j, addr)).or_insert(0);
                *n = n.saturating_add(1);
            }
            Ok(counts
                .into_iter()
                .map(|((j, addr), n)| (jails[j].clone(), addr, n))
                .collect())
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

    /// Where each journal source stands: (jail, source, cursor).
    pub fn journal_cursors(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let r = (|| {
            let mut q = self
                .conn
                .prepare("SELECT jail, source, cursor FROM journal_cursors")?;
            let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
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
