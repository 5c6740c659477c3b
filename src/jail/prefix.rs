//! IPv6 prefixes (`ipv6_prefix`, 64 by default): an IPv6 source is counted,
//! trusted and banned as its prefix, not as the one address. A provider
//! hands each customer a /64 (or more), and an attacker rotates through it
//! at will: counted per address, each of its 2^64 addresses would get
//! `maxretry` free guesses (fail2ban's longest-open request, #1123).
//!
//! A prefix that holds an address the jail must never ban (`ignoreip`, this
//! host's own, a fleet peer, a PBX it listens to) is never banned as a
//! whole: its addresses are counted and banned one by one, and the log says
//! so once per prefix. IPv4 is counted per address as before.
//!
//! What this adds per prefix (a bounded sample of the addresses seen in it,
//! for `status`) lives here, apart from the per-address track, so an IPv4
//! address tracked costs what it cost before.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

use super::{DisplayNet, Jail, is_host};

/// `ipv6_prefix` when none is given: what a provider hands one customer.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The widest `ipv6_prefix` taken: a /32 is a whole provider's allocation;
/// wider is a typing slip that would ban strangers by the million.
pub const MIN_IPV6_PREFIX: u8 = 32;

/// Most addresses kept as a prefix's sample (shown by `status`).
pub const SAMPLE_ADDRS: usize = 8;

/// Most prefixes remembered as told in the log (then it starts over: a
/// prefix may be told again, never once per failure).
const MAX_TOLD: usize = 4096;

/// Some of the addresses seen in one prefix: the first [`SAMPLE_ADDRS`]
/// distinct ones, and whether others came after them. Most prefixes of a
/// flood are one-off: their one address is kept inline, with no allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sample {
    /// One address seen.
    One(Ipv6Addr),
    /// Several: those kept, and whether others came after them.
    Many(Box<(Vec<Ipv6Addr>, bool)>),
}

impl Sample {
    /// Notes a failure from `a`.
    fn note(&mut self, a: Ipv6Addr) {
        match self {
            Sample::One(x) if *x == a => {}
            Sample::One(x) => {
                let mut v = Vec::with_capacity(2);
                v.extend([*x, a]);
                *self = Sample::Many(Box::new((v, false)));
            }
            Sample::Many(m) if m.0.contains(&a) => {}
            Sample::Many(m) if m.0.len() < SAMPLE_ADDRS => m.0.push(a),
            Sample::Many(m) => m.1 = true,
        }
    }

    /// The addresses kept, in the order first seen.
    pub fn addrs(&self) -> &[Ipv6Addr] {
        match self {
            Sample::One(a) => std::slice::from_ref(a),
            Sample::Many(m) => &m.0,
        }
    }

    /// Whether addresses beyond those kept were seen.
    pub fn more(&self) -> bool {
        matches!(self, Sample::Many(m) if m.1)
    }
}

/// What a jail keeps for its IPv6 prefixes, beside its tracks.
#[derive(Debug, Default)]
pub(super) struct PrefixBook {
    /// A sample per prefix failing or banned (at most `max_tracked`).
    samples: HashMap<Ipv6Net, Sample>,
    /// Prefixes already told in the log as holding a protected address.
    told: HashSet<Ipv6Net>,
}

/// Whether `a` stands for an IPv4 source behind a translator: NAT64/SIIT's
/// well-known prefix 64:ff9b::/96 (RFC 6052) or Teredo's 2001::/32. One
/// /64 there holds every IPv4 client (of the translator, or of one Teredo
/// relay), so counting it as a prefix would let one attacker ban them all.
fn translated_v4(a: Ipv6Addr) -> bool {
    let s = a.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) || (s[0] == 0x2001 && s[1] == 0)
}

/// The `len` prefix of `a`.
fn prefix_of(a: Ipv6Addr, len: u8) -> Ipv6Net {
    Ipv6Net::new(a, len.min(128)).map_or_else(|_| Ipv6Net::from(a), |n| n.trunc())
}

impl Jail {
    /// The prefix length IPv6 sources are counted with, when it is not
    /// each address alone.
    fn v6_len(&self) -> Option<u8> {
        let len = self.policy.ipv6_prefix;
        (len < 128).then_some(len)
    }

    /// What failures of `addr` are counted (and it is banned) as, and
    /// whether that is `addr` alone because its prefix holds an address
    /// the jail must never ban: its prefix for IPv6, itself otherwise.
    pub(super) fn count_net_of(&self, addr: IpAddr) -> (IpNet, Option<Ipv6Net>) {
        let (IpAddr::V6(a), Some(len)) = (addr, self.v6_len()) else {
            return (IpNet::from(addr), None);
        };
        // fe80::/64 is every neighbour on every link, the router's
        // advertisements included: never banned whole.
        if a.to_ipv4_mapped().is_some() || translated_v4(a) || a.is_unicast_link_local() {
            return (IpNet::from(addr), None);
        }
        let net = prefix_of(a, len);
        if self.policy.ignore.overlaps(&IpNet::V6(net)) {
            return (IpNet::from(addr), Some(net));
        }
        (IpNet::V6(net), None)
    }

    /// A failure of `addr` was counted as `net` (from
    /// [`Jail::count_net_of`]): notes `addr` in its prefix's sample, and
    /// logs (once per prefix) why a protected prefix is counted address by
    /// address.
    pub(super) fn note_counted(&mut self, net: IpNet, addr: IpAddr, protected: Option<Ipv6Net>) {
        if let Some(p) = protected {
            self.tell_protected(p);
        }
        if let (IpNet::V6(n), IpAddr::V6(a)) = (net, addr) {
            if !is_host(&net) {
                let cap = self.policy.max_tracked.max(1);
                let book = &mut self.v6;
                if let Some(s) = book.samples.get_mut(&n) {
                    s.note(a);
                } else if book.samples.len() < cap {
                    book.samples.insert(n, Sample::One(a));
                }
            }
        }
    }

    fn tell_protected(&mut self, p: Ipv6Net) {
        if self.v6.told.contains(&p) {
            return;
        }
        if self.v6.told.len() >= MAX_TOLD {
            self.v6.told.clear();
        }
        self.v6.told.insert(p);
        let net = IpNet::V6(p);
        let by = self
            .policy
            .ignore
            .overlapping(&net)
            .map_or_else(|| "?".to_string(), |n| DisplayNet(&n).to_string());
        tracing::info!(
            "[{}] {net} holds {by} (ignoreip, this host or a peer): its addresses are counted and banned one by one, never as the /{}",
            self.name,
            p.prefix_len()
        );
    }

    /// Whether `net` is what this jail counts IPv6 sources as (a prefix of
    /// `ipv6_prefix` bits): such bans are found by their key, not by the
    /// scan of [`Jail::is_banned`].
    pub(super) fn is_count_prefix(&self, net: &IpNet) -> bool {
        matches!(net, IpNet::V6(n) if Some(n.prefix_len()) == self.v6_len())
    }

    /// Whether `net` is a ban of a prefix that [`Jail::is_banned`] finds by
    /// scanning its list of prefixes.
    pub(super) fn scanned(&self, net: &IpNet) -> bool {
        !is_host(net) && !self.is_count_prefix(net)
    }

    /// Whether the `ipv6_prefix` prefix of `addr` is banned (or on its way).
    pub(super) fn prefix_held(&self, addr: IpAddr) -> bool {
        match (addr, self.v6_len()) {
            (IpAddr::V6(a), Some(len)) => self.holds(&IpNet::V6(prefix_of(a, len))),
            _ => false,
        }
    }

    /// The ban of this jail that covers `addr`, if one does: its own, its
    /// prefix's, or a wider one's.
    pub fn covering(&self, addr: IpAddr) -> Option<IpNet> {
        let host = IpNet::from(addr);
        if self.holds(&host) {
            return Some(host);
        }
        if let (IpAddr::V6(a), Some(len)) = (addr, self.v6_len()) {
            let p = IpNet::V6(prefix_of(a, len));
            if self.holds(&p) {
                return Some(p);
            }
        }
        self.prefixes.iter().find(|n| n.contains(&addr)).copied()
    }

    /// Some of the addresses seen in prefix `net` (failing or banned).
    pub fn seen(&self, net: &IpNet) -> Option<&Sample> {
        match net {
            IpNet::V6(n) => self.v6.samples.get(n),
            IpNet::V4(_) => None,
        }
    }

    /// Prefixes with a sample (at most `max_tracked`).
    pub fn sampled(&self) -> usize {
        self.v6.samples.len()
    }

    /// Forgets the sample of `net` (its ban was lifted).
    pub(super) fn forget_sample(&mut self, net: &IpNet) {
        if let IpNet::V6(n) = net {
            self.v6.samples.remove(n);
        }
    }

    /// Forgets the sample of the prefix counted under `key` (its track was
    /// evicted), unless the prefix is banned.
    pub(super) fn forget_key(&mut self, key: IpAddr) {
        if let (IpAddr::V6(a), Some(len)) = (key, self.v6_len()) {
            let n = prefix_of(a, len);
            if n.network() == a && !self.holds(&IpNet::V6(n)) {
                self.v6.samples.remove(&n);
            }
        }
    }

    /// Keeps the samples of prefixes still failing or banned.
    pub(super) fn sweep_samples(&mut self) {
        let mut samples = std::mem::take(&mut self.v6.samples);
        samples.retain(|n, _| {
            let key = IpAddr::V6(n.network());
            self.failing.contains_key(&super::Key::from(key))
                || self.weak.contains_key(&key)
                || self.holds(&IpNet::V6(*n))
        });
        self.v6.samples = samples;
    }

    /// The policy changed: what was told may no longer hold, and with a new
    /// `ipv6_prefix` the bans found by key are not those of before.
    pub(super) fn prefix_policy_changed(&mut self, old_len: u8) {
        self.v6.told.clear();
        if old_len == self.policy.ipv6_prefix {
            return;
        }
        let mut nets: Vec<IpNet> = self
            .banned
            .keys()
            .chain(self.pending.keys())
            .filter(|n| self.scanned(n))
            .copied()
            .collect();
        nets.sort_unstable();
        nets.dedup();
        self.prefixes = nets;
        self.v6.samples.clear();
    }
}

#[cfg(test)]
mod tests;
