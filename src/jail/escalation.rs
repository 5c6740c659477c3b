//! Longer bans for repeat offenders (fail2ban's `bantime.increment`).
//!
//! The n-th ban of an address (counting bans since its last manual unban,
//! in this jail or, with `bantime_overalljails`, in any jail) lasts
//! `bantime × factor × 2^(n-1)` (the first: `bantime`), or
//! `bantime × multipliers[n-1]` when multipliers are given (the last one
//! repeats), never more than `bantime_maxtime`. Multipliers are indexed by
//! the count of earlier bans, as fail2ban's `bantime.multipliers` is
//! documented: `1 5 30 60` makes the bans 1, 5, 30, 60 × `bantime`.
//!
//! `bantime_rndtime` (fail2ban's `bantime.rndtime`) adds a random extra of
//! less than that many seconds to each escalated ban, before the
//! `bantime_maxtime` cap, as fail2ban mixes it into its increment formula:
//! a botnet cannot compute when an address it burnt comes free again. As in
//! fail2ban, a first ban (no earlier one) is not mixed. The randomness is a
//! value handed in ([`Jitter`], seeded by the daemon), so tests are exact.

use crate::net::AddrMap;
use std::sync::Arc;

use ipnet::IpNet;

use crate::duration::{BanTime, Duration, MAX_BANTIME};

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
    /// Random extra below this added to each escalated ban
    /// (`bantime_rndtime`); `None` or 0: none.
    pub rndtime: Option<Duration>,
}

/// The random source of `bantime_rndtime`: a small generator (SplitMix64)
/// from a seed handed in, so the jail stays pure and tests deterministic.
/// Not for secrets: it only spreads ban ends.
#[derive(Clone, Debug, Default)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator starting at `seed`.
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed)
    }

    /// The next number.
    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Escalation {
    /// The ban length for an address with `prior` earlier bans, without
    /// the random extra.
    pub fn bantime(&self, base: BanTime, prior: u32) -> BanTime {
        self.length(base, prior, 0)
    }

    /// The ban length for an address with `prior` earlier bans, with the
    /// random extra of `bantime_rndtime` drawn from `jitter` (for a repeat
    /// offender only, as fail2ban; never past `bantime_maxtime`, and the
    /// extra never takes a ban past [`MAX_BANTIME`]).
    pub fn bantime_mixed(&self, base: BanTime, prior: u32, jitter: &mut Jitter) -> BanTime {
        let extra = match self.rndtime {
            Some(r) if r.0 > 0 && prior > 0 && matches!(base, BanTime::For(_)) => {
                jitter.draw() % r.0
            }
            _ => 0,
        };
        self.length(base, prior, extra)
    }

    fn length(&self, base: BanTime, prior: u32, extra: u64) -> BanTime {
        let BanTime::For(base) = base else {
            return base;
        };
        let mult = match self.multipliers.as_slice() {
            [] if prior == 0 => 1.0,
            [] => self.factor * f64::from(1u32 << prior.min(20)),
            // Earlier bans index the list: the second ban is x m[1].
            m => f64::from(m[(prior as usize).min(m.len() - 1)]),
        };
        let secs = (base.0 as f64 * mult).min(u64::MAX as f64 / 2.0) as u64;
        let secs = if extra > 0 {
            secs.saturating_add(extra).min(secs.max(MAX_BANTIME.0))
        } else {
            secs
        };
        let secs = self.maxtime.map_or(secs, |m| secs.min(m.0));
        BanTime::For(Duration(secs.max(1)))
    }
}

/// Earlier bans per (jail, address) and per address, from the store's
/// history and updated as bans happen.
#[derive(Clone, Debug, Default)]
pub struct BanHistory {
    per_jail: AddrMap<(Arc<str>, IpNet), u32>,
    total: AddrMap<IpNet, u32>,
}

impl BanHistory {
    /// Records that `addr` was banned once more in `jail`.
    pub fn note_ban(&mut self, jail: &Arc<str>, addr: IpNet, n: u32) {
        *self.per_jail.entry((jail.clone(), addr)).or_default() += n;
        *self.total.entry(addr).or_default() += n;
    }

    /// The history of the store's counts per (jail, address), each map
    /// grown once.
    pub fn from_counts(counts: Vec<(Arc<str>, IpNet, u32)>) -> BanHistory {
        let mut h = BanHistory::default();
        h.per_jail.reserve(counts.len());
        h.total.reserve(counts.len());
        for (jail, addr, n) in counts {
            h.note_ban(&jail, addr, n);
        }
        h
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: BanHistory) {
        if self.per_jail.is_empty() && self.total.is_empty() {
            *self = other;
            return;
        }
        for ((jail, addr), n) in other.per_jail {
            *self.per_jail.entry((jail, addr)).or_default() += n;
        }
        for (addr, n) in other.total {
            *self.total.entry(addr).or_default() += n;
        }
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
            rndtime: None,
        }
    }

    /// `bantime_rndtime`: a repeat offender's ban gets a random extra below
    /// rndtime (drawn from the injected generator: the same seed gives the
    /// same lengths), a first ban none (fail2ban mixes it into the
    /// increment formula only), `bantime_maxtime` still caps, and a huge
    /// rndtime never takes a ban past MAX_BANTIME.
    #[test]
    fn rndtime_adds_a_seeded_extra_to_repeat_bans_within_the_caps() {
        let base = BanTime::For(Duration(3600));
        let mut e = esc();
        e.maxtime = None;
        e.rndtime = Some(Duration(600));
        let lengths = |seed| {
            let mut j = Jitter::new(seed);
            (0..50)
                .map(|_| match e.bantime_mixed(base, 1, &mut j) {
                    BanTime::For(d) => d.0,
                    BanTime::Permanent => u64::MAX,
                })
                .collect::<Vec<u64>>()
        };
        let a = lengths(7);
        assert_eq!(a, lengths(7));
        assert_ne!(a, lengths(8));
        assert!(a.iter().all(|&s| (7200..7800).contains(&s)), "{a:?}");
        // Spread, not a constant offset.
        assert!(a.iter().min() != a.iter().max());
        let mut j = Jitter::new(7);
        assert_eq!(e.bantime_mixed(base, 0, &mut j), base);
        assert_eq!(
            e.bantime_mixed(BanTime::Permanent, 3, &mut j),
            BanTime::Permanent
        );
        // bantime_maxtime caps after the extra, as fail2ban's min(formula, maxtime).
        e.maxtime = Some(Duration(7300));
        for _ in 0..50 {
            let BanTime::For(d) = e.bantime_mixed(base, 1, &mut j) else {
                panic!("permanent")
            };
            assert!((7200..=7300).contains(&d.0), "{d}");
        }
        e.maxtime = None;
        e.rndtime = Some(Duration(u64::MAX / 4));
        for _ in 0..50 {
            let BanTime::For(d) = e.bantime_mixed(base, 1, &mut j) else {
                panic!("permanent")
            };
            assert!(d <= MAX_BANTIME, "{d}");
        }
        // No rndtime (or 0): exactly the escalated length.
        e.rndtime = Some(Duration(0));
        assert_eq!(e.bantime_mixed(base, 2, &mut j), e.bantime(base, 2));
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
        assert_eq!(e.bantime(base, 0), BanTime::For(Duration(600)));
        assert_eq!(e.bantime(base, 1), BanTime::For(Duration(3000)));
        assert_eq!(e.bantime(base, 2), BanTime::For(Duration(18_000)));
        assert_eq!(e.bantime(base, 9), BanTime::For(Duration(18_000)));
        // A first multiplier other than 1 applies to the first ban too.
        e.multipliers = vec![2, 3];
        assert_eq!(e.bantime(base, 0), BanTime::For(Duration(1200)));
    }

    /// Issue N12: fail2ban's jail.conf documents `bantime.multipliers` as
    /// indexed by the count of earlier bans, the last one repeating: with
    /// `bantime = 60` and `1 5 30 60 300 720 1440 2880` the bans last "1 min,
    /// 5 min, 30 min, 1 hour, 5 hour, 12 hour, 1 day, 2 day", and with
    /// `bantime = 600` and `1 2 4 8 16 32 64` they grow "by 1, 2, 4, 8, 16
    /// ..." up to 10.6 hours. The second ban is x multipliers[1].
    #[test]
    fn multipliers_follow_fail2bans_documented_examples() {
        let mut e = esc();
        e.maxtime = None;
        e.multipliers = vec![1, 5, 30, 60, 300, 720, 1440, 2880];
        let base = BanTime::For(Duration(60));
        let minutes: Vec<u64> = (0..10)
            .map(|prior| match e.bantime(base, prior) {
                BanTime::For(d) => d.0 / 60,
                BanTime::Permanent => u64::MAX,
            })
            .collect();
        assert_eq!(minutes, [1, 5, 30, 60, 300, 720, 1440, 2880, 2880, 2880]);

        e.multipliers = vec![1, 2, 4, 8, 16, 32, 64];
        let base = BanTime::For(Duration(600));
        let secs: Vec<u64> = (0..9)
            .map(|prior| match e.bantime(base, prior) {
                BanTime::For(d) => d.0,
                BanTime::Permanent => u64::MAX,
            })
            .collect();
        assert_eq!(
            secs,
            [600, 1200, 2400, 4800, 9600, 19_200, 38_400, 38_400, 38_400]
        );
        // "10.6 hours" at the last multiplier.
        assert_eq!(38_400 / 360, 106);
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
