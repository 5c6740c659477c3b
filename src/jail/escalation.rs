//! Longer bans for repeat offenders (fail2ban's `bantime.increment`).
//!
//! The n-th ban of an address (counting bans since its last manual unban,
//! in this jail or, with `bantime_overalljails`, in any jail) lasts
//! `bantime × factor × 2^(n-1)`, or `bantime × multipliers[n-1]` when
//! multipliers are given, never more than `bantime_maxtime`. The first ban
//! lasts `bantime`.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::duration::{BanTime, Duration};

/// How a jail escalates.
#[derive(Clone, Debug, PartialEq)]
pub struct Escalation {
    /// Growth factor applied to increments (`bantime_factor`, default 1).
    pub factor: f64,
    /// Explicit multipliers per repeat (`bantime_multipliers`); the last one
    /// repeats.
    pub multipliers: Vec<u32>,
    /// Upper bound (`bantime_maxtime`).
    pub maxtime: Option<Duration>,
    /// Count bans from every jail, not just this one (`bantime_overalljails`).
    pub overall_jails: bool,
}

impl Escalation {
    /// The ban length for an address with `prior` earlier bans.
    pub fn bantime(&self, base: BanTime, prior: u32) -> BanTime {
        let BanTime::For(base) = base else {
            return base;
        };
        if prior == 0 {
            return BanTime::For(base);
        }
        let mult = if self.multipliers.is_empty() {
            self.factor * f64::from(1u32 << prior.min(20))
        } else {
            let i = (prior as usize).min(self.multipliers.len()) - 1;
            f64::from(self.multipliers[i])
        };
        let secs = (base.0 as f64 * mult).min(u64::MAX as f64 / 2.0) as u64;
        let secs = self.maxtime.map_or(secs, |m| secs.min(m.0));
        BanTime::For(Duration(secs.max(1)))
    }
}

/// Earlier bans per (jail, address) and per address, from the store's
/// history and updated as bans happen.
#[derive(Clone, Debug, Default)]
pub struct BanHistory {
    per_jail: HashMap<(Arc<str>, IpNet), u32>,
    total: HashMap<IpNet, u32>,
}

impl BanHistory {
    /// Records that `addr` was banned once more in `jail`.
    pub fn note_ban(&mut self, jail: &Arc<str>, addr: IpNet, n: u32) {
        *self.per_jail.entry((jail.clone(), addr)).or_default() += n;
        *self.total.entry(addr).or_default() += n;
    }

    /// A manual unban is a clean slate.
    pub fn clear(&mut self, addr: &IpNet) {
        self.total.remove(addr);
        self.per_jail.retain(|(_, a), _| a != addr);
    }

    /// Earlier bans of `addr`: in `jail`, or in all jails.
    pub fn prior(&self, jail: &Arc<str>, addr: &IpNet, overall: bool) -> u32 {
        if overall {
            self.total.get(addr).copied().unwrap_or(0)
        } else {
            self.per_jail
                .get(&(jail.clone(), *addr))
                .copied()
                .unwrap_or(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc() -> Escalation {
        Escalation {
            factor: 1.0,
            multipliers: vec![],
            maxtime: Some(Duration(86_400)),
            overall_jails: false,
        }
    }

    #[test]
    fn doubles_then_caps() {
        let base = BanTime::For(Duration(3600));
        let e = esc();
        assert_eq!(e.bantime(base, 0), BanTime::For(Duration(3600)));
        assert_eq!(e.bantime(base, 1), BanTime::For(Duration(7200)));
        assert_eq!(e.bantime(base, 2), BanTime::For(Duration(14_400)));
        assert_eq!(e.bantime(base, 10), BanTime::For(Duration(86_400)));
        assert_eq!(e.bantime(BanTime::Permanent, 3), BanTime::Permanent);
    }

    #[test]
    fn factor_and_multipliers() {
        let base = BanTime::For(Duration(600));
        let mut e = esc();
        e.factor = 3.0;
        assert_eq!(e.bantime(base, 1), BanTime::For(Duration(3600)));
        e.multipliers = vec![1, 5, 30];
        assert_eq!(e.bantime(base, 1), BanTime::For(Duration(600)));
        assert_eq!(e.bantime(base, 2), BanTime::For(Duration(3000)));
        assert_eq!(e.bantime(base, 3), BanTime::For(Duration(18_000)));
        assert_eq!(e.bantime(base, 9), BanTime::For(Duration(18_000)));
    }

    #[test]
    fn history_per_jail_overall_and_clean_slate() {
        let mut h = BanHistory::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let ip: IpNet = "192.0.2.1/32".parse().unwrap();
        h.note_ban(&a, ip, 1);
        h.note_ban(&b, ip, 2);
        assert_eq!(h.prior(&a, &ip, false), 1);
        assert_eq!(h.prior(&a, &ip, true), 3);
        h.clear(&ip);
        assert_eq!(h.prior(&b, &ip, true), 0);
        assert_eq!(h.prior(&b, &ip, false), 0);
    }
}
