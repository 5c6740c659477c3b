//! The jail's memory stays bounded: addresses whose failures left the
//! window are forgotten, and past `max_tracked` the oldest are evicted.

use super::Jail;
use crate::event::Time;

impl Jail {
    /// Forgets addresses whose failures have all left the window.
    pub fn sweep(&mut self, now: Time) {
        let horizon = now.0 - self.policy.findtime.as_millis();
        self.failing.retain(|_, t| t.last() > horizon);
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
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(times) = self.failing.get_mut(&key) else {
                continue;
            };
            if times.tag() != seq {
                continue;
            }
            if times.is_many() && spared < 64 {
                spared += 1;
                times.set_tag(self.next_seq);
                self.order.push_back((key, self.next_seq));
                self.next_seq = self.next_seq.wrapping_add(1);
                continue;
            }
            self.failing.remove(&key);
            self.forget_key(key.addr());
            self.counters.evictions += 1;
        }
        self.compact_order();
    }

    /// Drops stale queue entries once they outnumber live ones.
    pub(super) fn compact_order(&mut self) {
        if self.order.len() > 2 * self.failing.len() + 1024 {
            let failing = &self.failing;
            self.order
                .retain(|(a, s)| failing.get(a).is_some_and(|t| t.tag() == *s));
        }
    }
}
