//! The jail's memory stays bounded: addresses whose failures left the
//! window are forgotten, and past `max_tracked` the oldest are evicted.

use super::{Jail, Times};
use crate::event::Time;

impl Jail {
    /// Forgets addresses whose failures have all left the window.
    pub fn sweep(&mut self, now: Time) {
        let horizon = now.0 - self.policy.findtime.as_millis();
        self.failing.retain(|_, t| t.times.last() > horizon);
        self.weak.retain(|_, w| w.last() > horizon);
        self.trusted.retain(|_, &mut until| until > now.0);
        self.sweep_samples();
        self.compact_order();
    }

    /// Evicts the oldest tracked addresses until one more fits. An address
    /// with more than one failure gets a second turn (a bounded number per
    /// call): a flood of spoofed one-off sources must not push a real,
    /// repeating attacker out before it reaches maxretry.
    pub(super) fn make_room(&mut self) {
        let mut spared = 0;
        while self.failing.len() >= self.policy.max_tracked.max(1) {
            let Some((addr, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(track) = self.failing.get_mut(&addr) else {
                continue;
            };
            if track.seq != seq {
                continue;
            }
            if matches!(track.times, Times::Many(_)) && spared < 64 {
                spared += 1;
                track.seq = self.next_seq;
                self.next_seq = self.next_seq.wrapping_add(1);
                self.order.push_back((addr, track.seq));
                continue;
            }
            self.failing.remove(&addr);
            self.forget_key(addr);
            self.counters.evictions += 1;
        }
        self.compact_order();
    }

    /// Drops stale queue entries once they outnumber live ones.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.failing.len() + 1024 {
            let failing = &self.failing;
            self.order
                .retain(|(a, s)| failing.get(a).is_some_and(|t| t.seq == *s));
        }
    }
}
