//! `ignoreip`: networks whose addresses are never counted nor banned.

use std::net::IpAddr;

use ipnet::IpNet;

/// A list of networks to leave alone, checked for every event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoreList {
    nets: Vec<IpNet>,
}

impl IgnoreList {
    /// A list of the given networks (single addresses are /32 or /128).
    pub fn new(nets: Vec<IpNet>) -> IgnoreList {
        let mut nets: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
        nets.sort();
        nets.dedup();
        IgnoreList { nets }
    }

    /// Adds more networks (e.g. the host's own addresses).
    pub fn extend(&mut self, more: impl IntoIterator<Item = IpNet>) {
        let mut nets = std::mem::take(&mut self.nets);
        nets.extend(more);
        *self = IgnoreList::new(nets);
    }

    /// Whether `addr` falls in one of the networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nets.iter().any(|n| n.contains(&addr))
    }

    /// The first listed network that shares addresses with `net`.
    pub fn overlapping(&self, net: &IpNet) -> Option<IpNet> {
        self.nets
            .iter()
            .copied()
            .find(|n| n.contains(&net.network()) || net.contains(&n.network()))
    }

    /// The networks, sorted.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

/// The host's own addresses, read from the kernel (`ignoreself`).
pub fn own_addresses() -> Vec<IpNet> {
    match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs
            .into_iter()
            .map(|i| IpNet::from(i.ip().to_canonical()))
            .collect(),
        Err(e) => {
            tracing::warn!(
                "cannot read this host's addresses for ignoreself ({e}); only ignoreip applies"
            );
            Vec::new()
        }
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
    fn own_addresses_include_loopback() {
        let own = own_addresses();
        assert!(own.iter().any(|n| n.addr().is_loopback()), "{own:?}");
    }
}
