//! What a feed may never drop, and feeds cut around it.
//!
//! A blocklist is someone else's list: it can be wrong, stale, or written
//! by an attacker who took over its URL. sipwarden never lets it drop what
//! it never bans itself (every jail's `ignoreip`, this host's addresses,
//! the Event Socket peers, the Redis servers and fleet peers): those
//! networks are subtracted from each feed before it reaches the kernel, as
//! an interval difference written back as prefixes (a /8 holding one
//! protected address becomes the 24 prefixes around it). A feed whose
//! entries, merged, cover every possible source address of a family is
//! refused whole: it is a mistake or an attack, never a blocklist. Pure: no
//! I/O, no clock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::net::NetSet;

/// Protected networks shown per cut in the log, at most.
pub const EXAMPLES: usize = 3;

/// A feed after the protected networks were taken out of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// What goes to the kernel: disjoint prefixes, sorted.
    pub nets: Vec<IpNet>,
    /// Feed entries that held protected addresses (each was cut).
    pub entries_cut: usize,
    /// The first few: (feed entry, a protected network inside it).
    pub examples: Vec<(IpNet, IpNet)>,
}

/// An address family's space as numbers: IPv4 in the low 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn bits(self) -> u32 {
        match self {
            Fam::V4 => 32,
            Fam::V6 => 128,
        }
    }

    fn top(self) -> u128 {
        match self {
            Fam::V4 => u128::from(u32::MAX),
            Fam::V6 => u128::MAX,
        }
    }

    /// The prefix of length `len` starting at address number `first`.
    fn net(self, first: u128, len: u8) -> Option<IpNet> {
        match self {
            Fam::V4 => {
                let a = Ipv4Addr::from(u32::try_from(first).ok()?);
                Ipv4Net::new(a, len).ok().map(IpNet::V4)
            }
            Fam::V6 => Ipv6Net::new(Ipv6Addr::from(first), len).ok().map(IpNet::V6),
        }
    }
}

/// `net` as (family, first, last), canonical.
fn range(net: &IpNet) -> (Fam, u128, u128) {
    match crate::net::canonical_net(*net) {
        IpNet::V4(n) => (
            Fam::V4,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (Fam::V6, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// Sorted, disjoint, inclusive ranges of `nets` (per family), merged where
/// they overlap or touch.
fn merged(nets: impl IntoIterator<Item = IpNet>) -> Vec<(Fam, u128, u128)> {
    merge_ranges(nets.into_iter().map(|n| range(&n)).collect())
}

fn merge_ranges(mut r: Vec<(Fam, u128, u128)>) -> Vec<(Fam, u128, u128)> {
    r.sort_unstable();
    let mut out: Vec<(Fam, u128, u128)> = Vec::with_capacity(r.len());
    for (f, a, b) in r {
        match out.last_mut() {
            Some(l) if l.0 == f && (a <= l.2 || l.2.checked_add(1) == Some(a)) => {
                l.2 = l.2.max(b);
            }
            _ => out.push((f, a, b)),
        }
    }
    out
}

/// The fewest prefixes covering exactly `first ..= last`.
fn prefixes(f: Fam, first: u128, last: u128, out: &mut Vec<IpNet>) {
    let mut a = first;
    // At most two prefixes per bit of the family's width.
    for _ in 0..2 * f.bits() + 2 {
        if a > last {
            return;
        }
        // The largest block aligned at `a` that stays within `last`.
        let align = a.trailing_zeros().min(f.bits());
        let span = last - a; // addresses after `a`
        let fit = if span == u128::MAX {
            128
        } else {
            127 - (span + 1).leading_zeros()
        };
        let k = align.min(fit).min(f.bits());
        if let Some(n) = f.net(a, (f.bits() - k) as u8) {
            out.push(n);
        }
        match (k < 128).then(|| a.checked_add(1u128 << k)).flatten() {
            Some(next) => a = next,
            None => return,
        }
    }
}

/// `feed` without any address of `protected`: the interval difference,
/// written back as prefixes. `feed` need not be merged.
pub fn subtract(feed: &[IpNet], protected: &NetSet) -> Cut {
    let feed = merged(feed.iter().copied());
    let prot = merged(protected.nets().iter().copied());
    let mut cut = Cut::default();
    // Both sorted by (family, first): one pass over each.
    let mut j = 0;
    for &(f, a, b) in &feed {
        while j < prot.len() && (prot[j].0, prot[j].2) < (f, a) {
            j += 1;
        }
        let mut from = Some(a);
        let mut hit = None;
        let mut k = j;
        while let (Some(start), Some(&(pf, pa, pb))) = (from, prot.get(k)) {
            if pf != f || pa > b {
                break;
            }
            hit.get_or_insert((pa.max(a), pb.min(b)));
            if pa > start {
                prefixes(f, start, pa - 1, &mut cut.nets);
            }
            from = pb.checked_add(1).filter(|&n| n <= b);
            k += 1;
        }
        if let Some(start) = from {
            prefixes(f, start, b, &mut cut.nets);
        }
        if let Some((pa, pb)) = hit {
            cut.entries_cut += 1;
            if cut.examples.len() < EXAMPLES {
                let mut whole = Vec::new();
                prefixes(f, a, b, &mut whole);
                let mut inside = Vec::new();
                prefixes(f, pa, pb, &mut inside);
                if let (Some(w), Some(i)) = (whole.first(), inside.first()) {
                    cut.examples.push((*w, *i));
                }
            }
        }
    }
    cut
}

/// Never-a-source ranges of each family (see [`crate::net::never_a_source`]):
/// a feed that covers everything else covers every packet.
fn never_sources() -> [(Fam, u128, u128); 5] {
    let v4 = |a: [u8; 4]| u128::from(u32::from(Ipv4Addr::from(a)));
    [
        (Fam::V4, 0, 0),
        (Fam::V4, v4([224, 0, 0, 0]), v4([239, 255, 255, 255])),
        (Fam::V4, Fam::V4.top(), Fam::V4.top()),
        (Fam::V6, 0, 0),
        (Fam::V6, 0xff << 120, u128::MAX),
    ]
}

/// The family whose every possible packet source `nets` cover together
/// (`"IPv4"` or `"IPv6"`), if one is.
pub fn covers_everything(nets: &[IpNet]) -> Option<&'static str> {
    let mut all: Vec<(Fam, u128, u128)> = merged(nets.iter().copied());
    all.extend(never_sources());
    let all = merge_ranges(all);
    let full = |f: Fam| {
        all.iter()
            .any(|&(g, a, b)| g == f && a == 0 && b == f.top())
    };
    // A feed with no entry of a family does not cover it through the
    // never-a-source ranges alone.
    let has = |v4: bool| nets.iter().any(|n| matches!(n, IpNet::V4(_)) == v4);
    if has(true) && full(Fam::V4) {
        Some("IPv4")
    } else if has(false) && full(Fam::V6) {
        Some("IPv6")
    } else {
        None
    }
}

/// Networks a feed never drops whatever the configuration says: the
/// loopback ranges (a feed that drops them cuts this host off from itself).
pub fn always_protected() -> [IpNet; 2] {
    [
        IpNet::V4(
            Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8)
                .unwrap_or_else(|_| Ipv4Net::from(Ipv4Addr::LOCALHOST)),
        ),
        IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

/// The set feeds are cut around: `nets` (what the jails never ban) and
/// [`always_protected`].
pub fn protected_set(nets: Vec<IpNet>) -> std::sync::Arc<NetSet> {
    std::sync::Arc::new(NetSet::new(nets.into_iter().chain(always_protected())))
}

/// A log line's account of a cut: how many entries, and the first few
/// with a protected network inside each.
pub fn describe(cut: &Cut) -> String {
    let ex: Vec<String> = cut
        .examples
        .iter()
        .map(|(entry, inside)| {
            format!(
                "{} holds {}",
                crate::net::DisplayNet(entry),
                crate::net::DisplayNet(inside)
            )
        })
        .collect();
    format!(
        "{} entr{} cut around addresses sipwarden never blocks (ignoreip, this host, Event Socket peers, cluster peers and servers, loopback): {}{}",
        cut.entries_cut,
        if cut.entries_cut == 1 { "y" } else { "ies" },
        ex.join("; "),
        if cut.entries_cut > ex.len() {
            "; ..."
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn strs(v: &[IpNet]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    /// The difference covers exactly the feed minus the protected addresses:
    /// checked address by address over a small space.
    #[test]
    fn subtract_is_the_interval_difference() {
        let feed = nets(&[
            "10.0.0.0/8",
            "192.0.2.0/24",
            "198.51.100.7/32",
            "2001:db8::/32",
        ]);
        let prot = NetSet::new(nets(&[
            "10.1.2.3/32",
            "10.200.0.0/16",
            "192.0.2.0/25",
            "203.0.113.0/24",
            "2001:db8::1/128",
        ]));
        let cut = subtract(&feed, &prot);
        assert_eq!(cut.entries_cut, 3);
        assert_eq!(
            cut.examples[0],
            (nets(&["10.0.0.0/8"])[0], nets(&["10.1.2.3/32"])[0])
        );
        let kept = NetSet::new(cut.nets.clone());
        for a in [
            "10.1.2.2",
            "10.1.2.4",
            "10.0.0.0",
            "10.255.255.255",
            "10.199.255.255",
            "10.201.0.0",
            "192.0.2.128",
            "198.51.100.7",
            "2001:db8::",
            "2001:db8::2",
            "2001:db8:ffff::1",
        ] {
            assert!(kept.contains(a.parse().unwrap()), "{a} kept");
        }
        for a in [
            "10.1.2.3",
            "10.200.0.0",
            "10.200.255.255",
            "192.0.2.0",
            "192.0.2.127",
            "203.0.113.1",
            "2001:db8::1",
            "11.0.0.0",
        ] {
            assert!(!kept.contains(a.parse().unwrap()), "{a} cut");
        }
        // One protected /32 inside a /8: the 24 prefixes around it.
        let one = subtract(&nets(&["10.0.0.0/8"]), &NetSet::new(nets(&["10.1.2.3/32"])));
        assert_eq!(one.nets.len(), 24, "{:?}", strs(&one.nets));
        // Disjoint and sorted, so the kernel's interval set takes them.
        for w in cut.nets.windows(2) {
            assert!(w[0] < w[1] && !w[0].contains(&w[1].network()), "{w:?}");
        }
    }

    #[test]
    fn untouched_feeds_stay_as_they_are() {
        let feed = nets(&["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"]);
        let cut = subtract(&feed, &NetSet::new(nets(&["203.0.113.0/24", "::1/128"])));
        assert_eq!(cut.nets, feed);
        assert_eq!(cut.entries_cut, 0);
        assert_eq!(subtract(&feed, &NetSet::default()).nets, feed);
        // Wholly protected: nothing left of it.
        let cut = subtract(&nets(&["10.1.0.0/16"]), &NetSet::new(nets(&["10.0.0.0/8"])));
        assert!(cut.nets.is_empty() && cut.entries_cut == 1);
    }

    /// Exhaustive over a /24 with random holes: every address is in the
    /// result exactly when it is in the feed and not protected.
    #[test]
    fn difference_matches_address_by_address() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let pick = |r: u64| {
                let len = 24 + (r % 9) as u8;
                IpNet::new(IpAddr::from([192, 0, 2, (r >> 8) as u8]), len)
                    .unwrap()
                    .trunc()
            };
            let feed: Vec<IpNet> = (0..1 + rnd() % 4).map(|_| pick(rnd())).collect();
            let prot: Vec<IpNet> = (0..rnd() % 5).map(|_| pick(rnd())).collect();
            let cut = subtract(&feed, &NetSet::new(prot.clone()));
            let (f, p, c) = (NetSet::new(feed), NetSet::new(prot), NetSet::new(cut.nets));
            for last in 0..=255u8 {
                let a = IpAddr::from([192, 0, 2, last]);
                assert_eq!(c.contains(a), f.contains(a) && !p.contains(a), "{a}");
            }
        }
    }

    /// Black-box pass N1: `0.0.0.0/1` and `128.0.0.0/1` merged into
    /// `0.0.0.0/0` and were loaded.
    #[test]
    fn a_feed_covering_every_source_is_found() {
        assert_eq!(
            covers_everything(&nets(&["0.0.0.0/1", "128.0.0.0/1"])),
            Some("IPv4")
        );
        assert_eq!(covers_everything(&nets(&["0.0.0.0/0"])), Some("IPv4"));
        // Everything but the never-a-source ranges is everything too.
        assert_eq!(
            covers_everything(&nets(&[
                "0.0.0.0/1",
                "128.0.0.0/2",
                "192.0.0.0/3",
                "240.0.0.0/4"
            ])),
            Some("IPv4")
        );
        assert_eq!(
            covers_everything(&nets(&[
                "::/1", "8000::/2", "c000::/3", "e000::/4", "f000::/5", "f800::/6", "fc00::/7",
                "fe00::/8", "::/128"
            ])),
            Some("IPv6")
        );
        assert_eq!(
            covers_everything(&nets(&["0.0.0.0/1", "128.0.0.0/2"])),
            None
        );
        assert_eq!(covers_everything(&nets(&["224.0.0.0/4"])), None);
        assert_eq!(covers_everything(&[]), None);
    }

    #[test]
    fn prefixes_of_the_edges() {
        let mut out = Vec::new();
        prefixes(Fam::V6, 0, u128::MAX, &mut out);
        assert_eq!(strs(&out), ["::/0"]);
        out.clear();
        prefixes(Fam::V4, 0, u128::from(u32::MAX), &mut out);
        assert_eq!(strs(&out), ["0.0.0.0/0"]);
        out.clear();
        prefixes(Fam::V4, 1, u128::from(u32::MAX) - 1, &mut out);
        assert_eq!(out.len(), 62);
        assert_eq!(strs(&always_protected()), ["127.0.0.0/8", "::1/128"]);
    }
}
