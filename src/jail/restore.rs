//! Bans put back: from the store at start (held once the firewall accepted
//! them) and from the fleet (on their way to the kernel like a new ban).

use std::cmp::Reverse;

use ipnet::IpNet;

use super::{ActiveBan, BanDecision, BanReason, Jail};
use crate::duration::{BanTime, Duration};
use crate::event::Time;

/// The ban in force that decision `d` makes.
fn active_ban(d: &BanDecision) -> ActiveBan {
    ActiveBan {
        start: d.start,
        end: d.end,
        failures: d.failures,
        reason: d.reason,
    }
}

impl Jail {
    /// Puts back a ban read from the store or the fleet (counted as a ban,
    /// not decided again): on its way to the kernel, like a new one.
    /// Returns the decision the enforcer needs.
    pub fn restore(
        &mut self,
        addr: IpNet,
        start: Time,
        end: Option<Time>,
        failures: u32,
        reason: BanReason,
    ) -> BanDecision {
        let d = self.restored(addr, start, end, failures, reason);
        if self.scanned(&addr) && !self.holds(&addr) {
            self.prefixes.push(addr);
        }
        self.pending.insert(addr, active_ban(&d));
        d
    }

    /// The decision that puts back a ban of this jail, without holding it:
    /// [`Jail::reinstate`] holds it once the firewall accepted it (the
    /// restore at start, which applies every stored ban before anything
    /// else runs).
    pub fn restored(
        &self,
        addr: IpNet,
        start: Time,
        end: Option<Time>,
        failures: u32,
        reason: BanReason,
    ) -> BanDecision {
        let bantime = match end {
            Some(e) => BanTime::For(Duration(((e.0 - start.0).max(0) / 1000) as u64)),
            None => BanTime::Permanent,
        };
        BanDecision {
            jail: self.id,
            jail_name: self.name.clone(),
            addr,
            start,
            end,
            bantime,
            failures,
            reason,
        }
    }

    /// Holds ban `d` (from [`Jail::restored`]), which the firewall
    /// accepted: in force at once, replacing any ban of its address.
    pub fn reinstate(&mut self, d: &BanDecision) {
        if self.scanned(&d.addr) && !self.holds(&d.addr) {
            self.prefixes.push(d.addr);
        }
        self.pending.remove(&d.addr);
        if let Some(end) = d.end {
            self.expiries.push(Reverse((end, d.addr)));
        }
        self.banned.insert(d.addr, active_ban(d));
    }

    /// Room for `n` more bans in force (a restore knows how many).
    pub fn reserve_bans(&mut self, n: usize) {
        self.banned.reserve(n);
        self.expiries.reserve(n);
    }
}
