//! Sources turn the outside world into [`FailureEvent`](crate::event::FailureEvent)s.
//! They know nothing about banning.

pub mod ami;
pub mod config;
pub mod esl;
pub mod file;
pub mod hep;
pub mod journal;
pub mod scanner;
pub mod sip;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::duration::Duration;
use crate::event::Time;

/// A line or event dated this far ahead of this host's clock is noted as
/// skewed (files: counted as now; the Event Socket: counted at arrival),
/// and a live Event Socket event dated this far either way is counted at
/// its arrival rather than at its own time.
pub const MAX_SKEW_MS: i64 = 60_000;

/// A jail's counting window as its sources see it: shared, so that a reload
/// changing `findtime` reaches sources that keep running.
#[derive(Debug)]
pub struct Window {
    findtime_ms: AtomicI64,
}

impl Window {
    /// The window of a jail with this `findtime`.
    pub fn new(findtime: Duration) -> Arc<Window> {
        Arc::new(Window {
            findtime_ms: AtomicI64::new(findtime.as_millis()),
        })
    }

    /// A reload changed `findtime`.
    pub fn set(&self, findtime: Duration) {
        self.findtime_ms
            .store(findtime.as_millis(), Ordering::Relaxed);
    }

    /// `findtime` in milliseconds.
    pub fn findtime_ms(&self) -> i64 {
        self.findtime_ms.load(Ordering::Relaxed)
    }

    /// How far a live event's own time may be from its arrival and still be
    /// taken: [`MAX_SKEW_MS`], or half of `findtime` when that is shorter,
    /// so that a time taken is always well inside the window.
    pub fn skew_bound_ms(&self) -> i64 {
        MAX_SKEW_MS.min(self.findtime_ms() / 2).max(1)
    }
}

/// How one line's date compares with the clock, as [`DateStats::note_line`]
/// sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dated {
    /// Inside the window, not ahead of the clock by more than a minute.
    Fresh,
    /// Older than `findtime`: the jail will not count it. `streak` such
    /// lines came in a row; `age_ms` is how old this one is.
    TooOld {
        /// Too-old lines in a row, this one included.
        streak: u64,
        /// Its age in milliseconds.
        age_ms: i64,
    },
    /// Dated ahead of the clock by more than [`MAX_SKEW_MS`] (counted as
    /// now). `total` such lines so far.
    Ahead {
        /// Skewed lines so far, this one included.
        total: u64,
        /// How far ahead, in milliseconds.
        ahead_ms: i64,
    },
}

/// How a source's dates agree with this host's clock, shown in status: a
/// wrong `logtimezone` or a PBX whose clock is off is visible here instead
/// of as failures silently not counted.
#[derive(Debug, Default)]
pub struct DateStats {
    /// Lines or events dated before the jail's `findtime` when read: the
    /// jail does not count them.
    pub too_old: AtomicU64,
    /// Lines dated ahead of the clock by more than [`MAX_SKEW_MS`] (counted
    /// as now), or Event Socket events whose own time was off by more than
    /// the bound either way (counted at arrival).
    pub skewed: AtomicU64,
    /// The last too-old or skewed one's own time minus this host's, in
    /// milliseconds (negative: behind).
    pub last_skew_ms: AtomicI64,
    /// Too-old lines since the last line that was not.
    streak: AtomicU64,
}

impl DateStats {
    /// Notes a matched line dated `t`, read at `now`.
    pub fn note_line(&self, t: Time, now: Time, window: &Window) -> Dated {
        let off = t.0.saturating_sub(now.0);
        if t.0 <= now.0.saturating_sub(window.findtime_ms()) {
            self.too_old.fetch_add(1, Ordering::Relaxed);
            self.last_skew_ms.store(off, Ordering::Relaxed);
            let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
            return Dated::TooOld {
                streak,
                age_ms: -off,
            };
        }
        self.streak.store(0, Ordering::Relaxed);
        if off > MAX_SKEW_MS {
            self.last_skew_ms.store(off, Ordering::Relaxed);
            let total = self.skewed.fetch_add(1, Ordering::Relaxed) + 1;
            return Dated::Ahead {
                total,
                ahead_ms: off,
            };
        }
        Dated::Fresh
    }

    /// Notes a live event whose own time was `off_ms` from its arrival
    /// (and which is counted at arrival); returns how many so far.
    pub fn note_skewed(&self, off_ms: i64) -> u64 {
        self.last_skew_ms.store(off_ms, Ordering::Relaxed);
        self.skewed.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The last offset in whole seconds, once there was one.
    pub fn last_skew_s(&self) -> Option<i64> {
        let any = self.too_old.load(Ordering::Relaxed) + self.skewed.load(Ordering::Relaxed) > 0;
        any.then(|| self.last_skew_ms.load(Ordering::Relaxed) / 1000)
    }
}

/// `ms` as a short human duration: `1h2m`, `45s`, `0s`.
pub fn span(ms: i64) -> String {
    Duration(ms.unsigned_abs() / 1000).to_string()
}

/// Whether a running count just crossed 1, 10, 100, ...: warnings about
/// repeated bad input stay few.
pub(crate) fn rare(total: u64, added: u64) -> bool {
    let before = total - added;
    let mut p = 1;
    while p <= total {
        if p > before {
            return true;
        }
        p = p.saturating_mul(10);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_is_rare() {
        let hits: Vec<u64> = (1..=2000).filter(|&n| rare(n, 1)).collect();
        assert_eq!(hits, vec![1, 10, 100, 1000]);
        assert!(rare(15, 10));
    }
}
