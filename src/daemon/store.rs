//! The store writer: ban records go to SQLite on a thread of their own, a
//! transaction per burst, with a bounded backlog while the disk refuses.

use crate::event::Time;
use crate::jail::Decision;
use crate::store::{Store, StoreOp, StoredBan};

/// Turns decisions into store writes.
pub(super) fn store_ops(decisions: &[Decision], now: Time) -> Vec<StoreOp> {
    decisions
        .iter()
        .map(|d| match d {
            Decision::Ban(b) => StoreOp::Ban(StoredBan {
                jail: b.jail_name.to_string(),
                addr: b.addr,
                start: b.start,
                end: b.end,
                failures: b.failures,
                reason: b.reason,
            }),
            Decision::Unban(u) => StoreOp::Unban {
                jail: u.jail_name.to_string(),
                addr: u.addr,
                at: now,
                reason: u.reason,
            },
        })
        .collect()
}

/// Most store operations kept while the disk refuses them (a full or
/// read-only state directory); beyond it the oldest are dropped, counted.
const STORE_BACKLOG: usize = 1_000_000;

/// The store thread: a transaction per burst. When a write fails (disk full,
/// read-only, I/O error) the bans are still enforced; the operations wait in
/// a bounded backlog and are written, in order, once the store takes them
/// again, so a full disk loses no history that fits the backlog.
pub(super) fn store_writer(s: &mut Store, rx: &std::sync::mpsc::Receiver<Vec<StoreOp>>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut backlog: Vec<StoreOp> = Vec::new();
    let mut dropped = 0usize;
    let mut failing = false;
    loop {
        // While failing, retry every few seconds even without new work.
        let next = if backlog.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(std::time::Duration::from_secs(2))
        };
        match next {
            Ok(ops) => backlog.extend(ops),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if backlog.is_empty() => return,
            Err(RecvTimeoutError::Disconnected) => {
                // Stopping: one last try, then say what is lost.
                if let Err(e) = s.write(&backlog) {
                    tracing::error!(
                        "{e}; {} ban record(s) could not be written before exit",
                        backlog.len()
                    );
                }
                return;
            }
        }
        while let Ok(more) = rx.try_recv() {
            backlog.extend(more);
        }
        if backlog.len() > STORE_BACKLOG {
            let over = backlog.len() - STORE_BACKLOG;
            backlog.drain(..over);
            dropped += over;
        }
        match s.write(&backlog) {
            Ok(()) => {
                if failing {
                    tracing::info!(
                        "state store writable again; {} waiting record(s) written, {dropped} dropped",
                        backlog.len()
                    );
                    failing = false;
                    dropped = 0;
                }
                backlog.clear();
            }
            Err(e) => {
                if !failing {
                    tracing::error!(
                        "{e}; bans are still enforced; their records wait in memory and are retried every 2 s"
                    );
                }
                failing = true;
            }
        }
    }
}
