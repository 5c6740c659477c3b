//! Prefix bans as the kernel must hold them: disjoint intervals.
//!
//! An nftables interval set refuses an interval that overlaps one it holds,
//! so overlapping prefix bans (a /31 inside a /24, from two jails or two
//! operators) cannot each be an element. The union of the bans is split
//! into disjoint intervals instead, each carrying the latest end among the
//! bans that cover it: the kernel's own timeouts then lift each part exactly
//! when the last ban covering it ends, and lifting one ban leaves the parts
//! another ban still covers in force. Pure: no clock, no I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::event::Time;

/// An address family's space as numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: 0 ..= 2^32 - 1.
    V4,
    /// IPv6: 0 ..= 2^128 - 1.
    V6,
}

impl Family {
    /// The family of `net`.
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    fn top(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }

    /// The address numbered `v` in this family.
    pub fn addr(self, v: u128) -> IpAddr {
        match self {
            // Callers only pass values within the family's space.
            Family::V4 => IpAddr::from((v as u32).to_be_bytes()),
            Family::V6 => IpAddr::from(v.to_be_bytes()),
        }
    }
}

/// The number of an address in its family's space.
pub fn number(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

/// One interval the kernel holds: `first ..= last`, until `end` (`None`:
/// permanent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// The family of both bounds.
    pub family: Family,
    /// The first address, as a number.
    pub first: u128,
    /// The last address (inclusive), as a number.
    pub last: u128,
    /// When the last ban covering it ends; `None` for permanent.
    pub end: Option<Time>,
}

impl Segment {
    /// The first address.
    pub fn first_addr(&self) -> IpAddr {
        self.family.addr(self.first)
    }

    /// The first address after the interval, or `None` when it runs to the
    /// top of the address space (the kernel's interval is then open-ended).
    pub fn after_last(&self) -> Option<IpAddr> {
        (self.last < self.family.top()).then(|| self.family.addr(self.last + 1))
    }
}

/// Sweep events at one point: (a ban starts here, its end).
type Edges = Vec<(bool, Option<Time>)>;

/// An end as a sort key: permanent is the latest.
fn key(end: Option<Time>) -> i64 {
    end.map_or(i64::MAX, |t| t.0)
}

/// Splits the union of `bans` (prefixes, each with its end) into disjoint
/// intervals, each with the latest end among the bans covering it, adjacent
/// intervals with the same end merged. Sorted by family, then address.
pub fn segments(bans: impl IntoIterator<Item = (IpNet, Option<Time>)>) -> Vec<Segment> {
    // Sweep events per family: at a ban's first address its end becomes
    // active, after its last address it stops being.
    let mut events: BTreeMap<(Family, u128), Edges> = BTreeMap::new();
    for (net, end) in bans {
        let family = Family::of(&net);
        let first = number(net.network());
        let last = number(net.broadcast());
        events.entry((family, first)).or_default().push((true, end));
        if last < family.top() {
            events
                .entry((family, last + 1))
                .or_default()
                .push((false, end));
        }
    }
    let mut out: Vec<Segment> = Vec::new();
    // The ends in force at the sweep's position, counted (several bans may
    // share an end).
    let mut active: BTreeMap<i64, (Option<Time>, usize)> = BTreeMap::new();
    let mut current_family = None;
    let points: Vec<((Family, u128), Edges)> = events.into_iter().collect();
    for (i, ((family, at), evs)) in points.iter().enumerate() {
        if current_family != Some(*family) {
            active.clear();
            current_family = Some(*family);
        }
        for (starts, end) in evs {
            let k = key(*end);
            if *starts {
                active.entry(k).or_insert((*end, 0)).1 += 1;
            } else if let Some(slot) = active.get_mut(&k) {
                slot.1 -= 1;
                if slot.1 == 0 {
                    active.remove(&k);
                }
            }
        }
        let Some((_, (end, _))) = active.last_key_value() else {
            continue;
        };
        // This stretch runs to the next event of the same family, or to the
        // top of the space.
        let last = match points.get(i + 1) {
            Some(((f, next), _)) if f == family => next - 1,
            _ => family.top(),
        };
        match out.last_mut() {
            Some(prev)
                if prev.family == *family
                    && prev.last.checked_add(1) == Some(*at)
                    && prev.end == *end =>
            {
                prev.last = last;
            }
            _ => out.push(Segment {
                family: *family,
                first: *at,
                last,
                end: *end,
            }),
        }
    }
    out
}

/// What turns the kernel's intervals `held` into `wanted`: the intervals to
/// remove and those to add (an interval whose end changed is both).
pub fn diff(held: &[Segment], wanted: &[Segment]) -> (Vec<Segment>, Vec<Segment>) {
    let held_set: std::collections::HashSet<&Segment> = held.iter().collect();
    let wanted_set: std::collections::HashSet<&Segment> = wanted.iter().collect();
    let remove = held
        .iter()
        .filter(|s| !wanted_set.contains(s))
        .copied()
        .collect();
    let add = wanted
        .iter()
        .filter(|s| !held_set.contains(s))
        .copied()
        .collect();
    (remove, add)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn show(segs: &[Segment]) -> Vec<String> {
        segs.iter()
            .map(|s| {
                format!(
                    "{}-{} {}",
                    s.first_addr(),
                    s.family.addr(s.last),
                    s.end.map_or("perm".to_string(), |t| t.0.to_string())
                )
            })
            .collect()
    }

    #[test]
    fn a_prefix_inside_a_longer_one_is_absorbed() {
        let s = segments([
            (n("203.0.113.0/24"), Some(Time(100))),
            (n("203.0.113.2/31"), Some(Time(50))),
        ]);
        assert_eq!(show(&s), ["203.0.113.0-203.0.113.255 100"]);
    }

    #[test]
    fn a_longer_prefix_inside_splits_the_outer_one() {
        let s = segments([
            (n("203.0.113.0/24"), Some(Time(100))),
            (n("203.0.113.2/31"), Some(Time(300))),
        ]);
        assert_eq!(
            show(&s),
            [
                "203.0.113.0-203.0.113.1 100",
                "203.0.113.2-203.0.113.3 300",
                "203.0.113.4-203.0.113.255 100"
            ]
        );
        // Lifting the /31 leaves the /24 whole; lifting the /24 leaves the /31.
        assert_eq!(
            show(&segments([(n("203.0.113.0/24"), Some(Time(100)))])),
            ["203.0.113.0-203.0.113.255 100"]
        );
        assert_eq!(
            show(&segments([(n("203.0.113.2/31"), Some(Time(300)))])),
            ["203.0.113.2-203.0.113.3 300"]
        );
    }

    #[test]
    fn permanent_wins_and_adjacent_equal_ends_merge() {
        let s = segments([
            (n("198.51.100.0/25"), None),
            (n("198.51.100.128/25"), None),
            (n("198.51.100.0/24"), Some(Time(5))),
            (n("192.0.2.0/24"), Some(Time(5))),
        ]);
        assert_eq!(
            show(&s),
            [
                "192.0.2.0-192.0.2.255 5",
                "198.51.100.0-198.51.100.255 perm"
            ]
        );
    }

    #[test]
    fn the_same_prefix_from_two_jails_takes_the_later_end() {
        let s = segments([
            (n("203.0.113.0/24"), Some(Time(10))),
            (n("203.0.113.0/24"), Some(Time(20))),
        ]);
        assert_eq!(show(&s), ["203.0.113.0-203.0.113.255 20"]);
    }

    #[test]
    fn families_stay_apart_and_the_top_of_the_space_is_open() {
        let s = segments([
            (n("255.255.255.0/24"), Some(Time(1))),
            (n("ffff::/16"), Some(Time(2))),
            (n("::/1"), Some(Time(3))),
        ]);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].after_last(), None);
        assert_eq!(s[2].after_last(), None);
        assert_eq!(s[1].after_last(), Some("8000::".parse().unwrap()));
    }

    #[test]
    fn diff_removes_what_changed_and_adds_its_replacement() {
        let before = segments([(n("203.0.113.0/24"), Some(Time(100)))]);
        let after = segments([
            (n("203.0.113.0/24"), Some(Time(100))),
            (n("203.0.113.2/31"), Some(Time(300))),
        ]);
        let (remove, add) = diff(&before, &after);
        assert_eq!(show(&remove), ["203.0.113.0-203.0.113.255 100"]);
        assert_eq!(add.len(), 3);
        let (remove, add) = diff(&after, &after);
        assert!(remove.is_empty() && add.is_empty());
    }

    #[test]
    fn many_overlapping_prefixes_stay_disjoint() {
        // Nested and staggered prefixes with assorted ends: the output never
        // overlaps and every covered address keeps the latest end.
        let mut bans = Vec::new();
        for i in 0..200u32 {
            let len = 20 + (i % 12) as u8;
            let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)) + (i * 997) % (1 << 16);
            let net = IpNet::new(IpAddr::from(base.to_be_bytes()), len)
                .unwrap()
                .trunc();
            bans.push((net, Some(Time(i64::from(i % 7)))));
        }
        let segs = segments(bans.clone());
        for w in segs.windows(2) {
            assert!(w[0].last < w[1].first);
        }
        for probe in (0..(1u32 << 16)).step_by(97) {
            let a = u128::from(u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)) + probe);
            let want = bans
                .iter()
                .filter(|(net, _)| number(net.network()) <= a && a <= number(net.broadcast()))
                .map(|(_, e)| *e)
                .max_by_key(|e| key(*e));
            let got = segs
                .iter()
                .find(|s| s.first <= a && a <= s.last)
                .map(|s| s.end);
            assert_eq!(got, want, "{probe}");
        }
    }
}
