//! What a follower does with one line: the jail's filter, then the checks
//! before it becomes a failure event (an address that is never a packet's
//! source is not counted, invalid UTF-8 is, a date out of the window is
//! noted), each counted in [`FollowStats`](super::FollowStats) and warned
//! about rarely.
//!
//! Apart from the reading (rotation, truncation, budgets) in `file.rs`:
//! this part is the same for every file a path had, and is where a line's
//! meaning is decided.

use std::sync::atomic::Ordering;

use jiff::tz::TimeZone;

use super::FileSource;
use crate::event::{FailureEvent, Time};
use crate::filter::FilterContext;
use crate::source::{Dated, rare, span};

impl FileSource {
    pub(super) fn context(&self) -> FilterContext {
        FilterContext {
            tz: self.tz.clone(),
            now: Time::now(),
        }
    }

    pub(super) fn filter_line(
        &self,
        line: &[u8],
        cx: &FilterContext,
        batch: &mut Vec<FailureEvent>,
    ) {
        self.stats.lines.fetch_add(1, Ordering::Relaxed);
        let Some(m) = self.filter.match_line(line, cx) else {
            return;
        };
        if let Some(why) = crate::net::never_a_source_why(m.addr) {
            let total = self.stats.never_source.fetch_add(1, Ordering::Relaxed) + 1;
            if rare(total, 1) {
                tracing::warn!(
                    "{}: a matching line names {}, {why}, never a packet's source ({total} so far); not counted",
                    self.path.display(),
                    m.addr
                );
            }
            return;
        }
        if std::str::from_utf8(line).is_err() {
            // Still counted: an attacker must not hide a failure behind one
            // bad byte in a user name.
            let total = self.stats.non_utf8.fetch_add(1, Ordering::Relaxed) + 1;
            if rare(total, 1) {
                tracing::warn!(
                    "{}: a matching line is not valid UTF-8 ({total} so far); counted as bytes",
                    self.path.display()
                );
            }
        }
        self.stats.matched.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = m.time {
            self.note_date(t, cx);
        }
        batch.push(FailureEvent {
            time: m.time.unwrap_or(cx.now),
            jail: self.jail,
            addr: m.addr,
            kind: m.kind,
            scanner: m
                .user_agent
                .as_deref()
                .is_some_and(|ua| self.scanners.matches(ua)),
            user: m.user,
        });
    }

    /// Counts a line dated out of the window or ahead of the clock, and
    /// says so rarely: such lines are failures the jail will not count (or
    /// counts as now), most often from a wrong `logtimezone`.
    pub(super) fn note_date(&self, t: Time, cx: &FilterContext) {
        match self.stats.dates.note_line(t, cx.now, &self.window) {
            Dated::Fresh => {}
            Dated::TooOld { streak, age_ms } if rare(streak, 1) => tracing::warn!(
                "{}: {streak} matching line(s) in a row dated older than findtime ({} ago, findtime {}); not counted. If they are new, logtimezone ({}) or the clock of the host writing them is wrong",
                self.path.display(),
                span(age_ms),
                span(self.window.findtime_ms()),
                tz_name(&self.tz)
            ),
            Dated::TooOld { .. } => {}
            Dated::Ahead { total, ahead_ms } if rare(total, 1) => tracing::warn!(
                "{}: a matching line is dated {} ahead of this host's clock; counted as now ({total} such line(s) so far). Is logtimezone ({}) right?",
                self.path.display(),
                span(ahead_ms),
                tz_name(&self.tz)
            ),
            Dated::Ahead { .. } => {}
        }
    }
}

/// A zone's name for messages (`UTC`, `Europe/Berlin`, or `local`).
fn tz_name(tz: &TimeZone) -> String {
    tz.iana_name()
        .map_or_else(|| "local".to_string(), str::to_string)
}
