//! Recent failures kept for the dashboard: the last failures and the
//! failures per minute over the last hour.

use std::collections::HashMap;

use super::{Count, RecentEvent, RecentView};
use crate::event::{FailureEvent, JailId, Time};

/// Recent failures kept for the dashboard: a bounded ring, and counts per
/// minute over the last hour.
#[derive(Debug, Default)]
pub struct Recent {
    events: std::collections::VecDeque<FailureEvent>,
    /// (minute since the epoch, failures in it), oldest first.
    minutes: std::collections::VecDeque<(i64, u64)>,
}

/// Failures kept in the ring.
const RECENT_EVENTS: usize = 1000;

impl Recent {
    /// Notes a batch of failures seen at `now`.
    pub fn note(&mut self, batch: &[FailureEvent], now: Time) {
        let minute = now.0 / 60_000;
        match self.minutes.back_mut() {
            Some((m, n)) if *m == minute => *n += batch.len() as u64,
            _ => self.minutes.push_back((minute, batch.len() as u64)),
        }
        while self.minutes.front().is_some_and(|(m, _)| *m <= minute - 60) {
            self.minutes.pop_front();
        }
        // Only the newest RECENT_EVENTS of a large batch are kept.
        let skip = batch.len().saturating_sub(RECENT_EVENTS);
        for ev in &batch[skip..] {
            if self.events.len() == RECENT_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(ev.clone());
        }
    }

    /// The dashboard's view at `now`; `name` gives a jail's name.
    pub fn view(&self, now: Time, name: impl Fn(JailId) -> String) -> RecentView {
        let minute = now.0 / 60_000;
        let per_minute = (minute - 59..=minute)
            .map(|m| {
                self.minutes
                    .iter()
                    .find(|(k, _)| *k == m)
                    .map_or(0, |(_, n)| *n)
            })
            .collect();
        let top = |key: &dyn Fn(&FailureEvent) -> Option<String>| {
            let mut c: HashMap<String, u64> = HashMap::new();
            for e in &self.events {
                if let Some(k) = key(e) {
                    *c.entry(k).or_default() += 1;
                }
            }
            let mut v: Vec<Count> = c
                .into_iter()
                .map(|(value, count)| Count { value, count })
                .collect();
            v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
            v.truncate(10);
            v
        };
        RecentView {
            events: self
                .events
                .iter()
                .rev()
                .take(100)
                .map(|e| RecentEvent {
                    time: e.time.to_string(),
                    jail: name(e.jail),
                    addr: e.addr.to_string(),
                    kind: serde_json::to_value(e.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    user: e.user.as_deref().map(String::from),
                })
                .collect(),
            per_minute,
            top_addrs: top(&|e| Some(e.addr.to_string())),
            top_users: top(&|e| e.user.as_deref().map(String::from)),
        }
    }
}
