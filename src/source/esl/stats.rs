//! The counters of one Event Socket connection, shared with status and
//! metrics, and the rate-limited log lines that go with them.
//!
//! Apart from the connection so that what status shows of a source is read
//! in one place; the session only calls these.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::mapper::unreadable_text;
use crate::event::FailureKind;
use crate::source::rare;
use crate::source::{DateStats, span};

/// Counters and state of one ESL connection, shared with status output.
#[derive(Debug, Default)]
pub struct EslStats {
    /// Connected, authenticated and subscribed right now.
    pub connected: AtomicBool,
    /// Events read.
    pub events: AtomicU64,
    /// Failure events passed to the jail.
    pub failures: AtomicU64,
    /// Connections made.
    pub connects: AtomicU64,
    /// Events whose `network-ip` was missing or not an address (not counted).
    pub unreadable: AtomicU64,
    /// Events whose own time was off from their arrival by more than the
    /// bound (counted at arrival).
    pub dates: DateStats,
}

impl EslStats {
    /// Logs events that could not be counted, rarely (the 1st, 10th,
    /// 100th...): their text is FreeSWITCH's copy of what a packet said.
    pub(super) fn note_unreadable(&self, peer: &str, seen: &[(FailureKind, Option<Box<str>>)]) {
        let Some((kind, raw)) = seen.first() else {
            return;
        };
        let added = seen.len() as u64;
        let total = self.unreadable.fetch_add(added, Ordering::Relaxed) + added;
        if rare(total, added) {
            tracing::warn!(
                "event socket {peer}: {}; not counted ({total} such event(s) so far)",
                unreadable_text(*kind, raw.as_deref())
            );
        }
    }

    /// Notes events counted at arrival because their own time was off,
    /// and says so rarely (the 1st, 10th, 100th...), naming the peer and
    /// the offset.
    pub(super) fn note_skewed(&self, peer: &str, skews: &[i64]) {
        for &off in skews {
            let total = self.dates.note_skewed(off);
            if rare(total, 1) {
                tracing::warn!(
                    "event socket {peer}: an event is dated {} {} this host's clock (Event-Date-Timestamp); counted at its arrival instead ({total} such event(s) so far); check the clocks (NTP) of both hosts",
                    span(off),
                    if off < 0 { "behind" } else { "ahead of" }
                );
            }
        }
    }
}
