//! Writes: the daemon's [`StoreOp`]s, applied in one transaction per
//! batch.
//!
//! Apart from the reads because this is the one path that changes the
//! database; its rules (a new ban closes the open one, the bans in force
//! written once after a rebuild, a clock step moves only open bans) are
//! here together.

use std::net::IpAddr;

use rusqlite::params;

use super::schema::{reason_str, unban_str};
use super::{Store, StoreError, StoreOp, StoredBan};

impl Store {
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
                        StoreOp::JournalCursor {
                            jail,
                            source,
                            cursor,
                            at,
                        } => {
                            tx.execute(
                                "INSERT INTO journal_cursors (jail, source, cursor, saved_ms) VALUES (?1, ?2, ?3, ?4)
                                 ON CONFLICT(jail, source) DO UPDATE SET cursor = excluded.cursor, saved_ms = excluded.saved_ms",
                                params![jail, source, cursor, at.0],
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
}
