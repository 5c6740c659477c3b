//! `ignoreip`: networks whose addresses are never counted nor banned.
//!
//! A jail's list is two parts: the configured networks, shared by every jail
//! that inherits them (one `Arc`, however many jails), and the few this jail
//! adds at run time (the host's own addresses, cluster peers, the PBXs it
//! listens to), which the daemon hands in. Both are looked up by binary
//! search, so a list of 100,000 networks costs a few comparisons per event.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::net::NetSet;

/// A list of networks to leave alone, checked for every event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoreList {
    shared: Arc<NetSet>,
    local: NetSet,
}

impl IgnoreList {
    /// A list of the given networks (single addresses are /32 or /128).
    pub fn new(nets: Vec<IpNet>) -> IgnoreList {
        IgnoreList::shared(Arc::new(NetSet::new(nets)), Vec::new())
    }

    /// The configured networks `shared` (not copied), plus `local` ones of
    /// this jail alone.
    pub fn shared(shared: Arc<NetSet>, local: Vec<IpNet>) -> IgnoreList {
        IgnoreList {
            shared,
            local: NetSet::new(local),
        }
    }

    /// Adds more networks of this jail alone (e.g. the host's own addresses).
    pub fn extend(&mut self, more: impl IntoIterator<Item = IpNet>) {
        let nets: Vec<IpNet> = self.local.nets().iter().copied().chain(more).collect();
        self.local = NetSet::new(nets);
    }

    /// Whether `addr` falls in one of the networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.local.contains(addr) || self.shared.contains(addr)
    }

    /// Whether a listed network shares addresses with `net` (cheap: no
    /// name for it, see [`IgnoreList::overlapping`]).
    pub fn overlaps(&self, net: &IpNet) -> bool {
        self.local.overlaps(net) || self.shared.overlaps(net)
    }

    /// A listed network that shares addresses with `net`.
    pub fn overlapping(&self, net: &IpNet) -> Option<IpNet> {
        self.local
            .overlapping(net)
            .or_else(|| self.shared.overlapping(net))
    }

    /// The configured networks, shared with other jails.
    pub fn configured(&self) -> &Arc<NetSet> {
        &self.shared
    }

    /// The networks this jail adds to them.
    pub fn local(&self) -> &NetSet {
        &self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_v4_v6_and_mapped() {
        let l = IgnoreList::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
            "192.0.2.7/32".parse().unwrap(),
        ]);
        assert!(l.contains("10.1.2.3".parse().unwrap()));
        assert!(l.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(l.contains("2001:db8:1::1".parse().unwrap()));
        assert!(l.contains("192.0.2.7".parse().unwrap()));
        assert!(!l.contains("192.0.2.8".parse().unwrap()));
        assert!(!l.contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn shared_part_is_not_copied_and_local_part_adds() {
        let shared = Arc::new(NetSet::new(["10.0.0.0/8".parse().unwrap()]));
        let mut a = IgnoreList::shared(shared.clone(), Vec::new());
        let b = IgnoreList::shared(shared.clone(), vec!["192.0.2.1/32".parse().unwrap()]);
        a.extend(["198.51.100.1/32".parse().unwrap()]);
        assert!(Arc::ptr_eq(a.configured(), b.configured()));
        assert_eq!(Arc::strong_count(&shared), 3);
        assert!(a.contains("10.9.9.9".parse().unwrap()) && b.contains("10.9.9.9".parse().unwrap()));
        assert!(a.contains("198.51.100.1".parse().unwrap()));
        assert!(!b.contains("198.51.100.1".parse().unwrap()));
        assert!(b.contains("192.0.2.1".parse().unwrap()));
        assert_eq!(
            b.overlapping(&"192.0.2.0/24".parse().unwrap()),
            Some("192.0.2.1/32".parse().unwrap())
        );
        assert_eq!(
            a.overlapping(&"::ffff:10.0.0.0/104".parse().unwrap()),
            Some("10.0.0.0/8".parse().unwrap()),
            "a mapped prefix is compared as the IPv4 prefix it is"
        );
    }
}
