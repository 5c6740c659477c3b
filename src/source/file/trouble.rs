//! Read errors of one followed path, kept from flooding the log and from
//! spinning: a file that fails every read (a bad disk, a file system gone
//! away) is logged at its 1st, 10th, 100th... failure in a row, and opened
//! again after a wait that doubles from [`FIRST_WAIT`] to [`MAX_WAIT`].
//! Pure: the time comes in as a value.

use std::time::{Duration, Instant};

use super::generation::Ident;

/// The wait after the first failure.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);

/// The longest wait between two tries.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Failed reads in a row, and where to go on from.
#[derive(Debug, Default)]
pub(super) struct Trouble {
    failures: u64,
    retry_at: Option<Instant>,
    /// The file that failed and how far it was read: opened again, it is
    /// read on from there, not from its start.
    resume: Option<(Ident, u64)>,
}

/// What to do about one more failure.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Failed {
    /// Failures in a row, this one included.
    pub total: u64,
    /// Whether this one is logged.
    pub log: bool,
    /// How long until the path is opened again.
    pub wait: Duration,
}

impl Trouble {
    /// A read of `file` failed at offset `pos`, at `now`.
    pub(super) fn failed(&mut self, now: Instant, file: Option<(Ident, u64)>) -> Failed {
        self.failures += 1;
        let doublings = u32::try_from(self.failures - 1).unwrap_or(u32::MAX).min(16);
        let wait = FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT);
        self.retry_at = Some(now + wait);
        if file.is_some() {
            self.resume = file;
        }
        Failed {
            total: self.failures,
            log: crate::source::rare(self.failures, 1),
            wait,
        }
    }

    /// Whether the path may be opened at `now`.
    pub(super) fn may_open(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// Whether reads failed last time (a reopen is not news for the log).
    pub(super) fn failing(&self) -> bool {
        self.failures > 0
    }

    /// Where to go on reading `id` from, when it is the file that failed.
    pub(super) fn resume_at(&mut self, id: Ident) -> Option<u64> {
        match self.resume {
            Some((i, pos)) if i == id => {
                self.resume = None;
                Some(pos)
            }
            _ => None,
        }
    }

    /// A read succeeded: the failures in a row before it, if there were.
    pub(super) fn recovered(&mut self) -> Option<u64> {
        let n = std::mem::take(&mut self.failures);
        self.retry_at = None;
        self.resume = None;
        (n > 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Black-box pass N10: a file failing every read logged two lines per
    /// try, four tries per 0.5 s wake-up, forever. A day of failures now
    /// logs a handful of lines and tries about once a minute.
    #[test]
    fn failures_back_off_and_are_logged_rarely() {
        let t0 = Instant::now();
        let mut tr = Trouble::default();
        let mut now = t0;
        let (mut logged, mut tries) = (0, 0);
        while now < t0 + Duration::from_secs(86_400) {
            if tr.may_open(now) {
                tries += 1;
                let f = tr.failed(now, None);
                logged += u32::from(f.log);
                assert!(f.wait >= FIRST_WAIT && f.wait <= MAX_WAIT);
            }
            // The follower wakes every 0.5 s at most.
            now += Duration::from_millis(500);
        }
        assert!(logged <= 4, "{logged} lines in a day");
        assert!(tries < 86_400 / 60 + 10, "{tries} tries in a day");
        assert!(tr.failing());
        assert!(tr.recovered().is_some_and(|n| n == tries));
        assert!(!tr.failing() && tr.may_open(now));
        assert_eq!(tr.recovered(), None);
    }

    #[test]
    fn the_waits_double_up_to_the_cap() {
        let now = Instant::now();
        let mut tr = Trouble::default();
        let waits: Vec<u64> = (0..9)
            .map(|_| tr.failed(now, None).wait.as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(!tr.may_open(now));
        assert!(tr.may_open(now + MAX_WAIT));
    }
}
