//! The counters one follower keeps, shared with status and metrics: lines
//! read and matched, lines skipped or not counted and why, whether the file
//! is open and watched, and why it is not.
//!
//! Apart from the following itself so that what status shows of a followed
//! path is read in one place.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::lock;
use crate::source::DateStats;

/// Counters a follower keeps; shared with status output.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Lines read.
    pub lines: AtomicU64,
    /// Lines a filter matched.
    pub matched: AtomicU64,
    /// Lines skipped for being longer than [`MAX_LINE`](super::MAX_LINE).
    pub overlong: AtomicU64,
    /// Lines that were not valid UTF-8 (still filtered, bytes as they are).
    pub non_utf8: AtomicU64,
    /// Matched lines naming an address that is never a packet's source
    /// (`0.0.0.0`, broadcast, multicast): not counted.
    pub never_source: AtomicU64,
    /// Whether the file is open and followed right now.
    pub open: AtomicBool,
    /// Whether the first look at the path was made: the file is open at
    /// the place reading starts from, or known to be missing. A line
    /// written after this is read; the daemon says it has started only
    /// once every follower has looked (or a short wait ran out).
    pub looked: AtomicBool,
    /// Whether its directory is watched (else it is polled every 500 ms).
    pub watched: AtomicBool,
    /// Why it is not, when it is not (`does not exist yet`, `a FIFO (named
    /// pipe), not a regular file`, ...).
    pub waiting: Mutex<Option<String>>,
    /// Matched lines dated before `findtime` or ahead of the clock.
    pub dates: DateStats,
}

impl FollowStats {
    /// Why the file is not followed right now; `None` while it is.
    pub fn reason(&self) -> Option<String> {
        if self.open.load(Ordering::Relaxed) {
            return None;
        }
        lock(&self.waiting).clone()
    }
}
