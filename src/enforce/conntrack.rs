//! Deleting the conntrack entries of banned sources, over netlink: what
//! `conntrack -D -s ADDR` does, for a whole batch of addresses in one dump.
//! A port-scoped ban deletes only the entries its scope matches (original
//! direction: protocol and destination port), as `conntrack -D -s ADDR -p
//! udp --dport 5060` would.
//!
//! Packets of a banned source are dropped before conntrack anyway; deleting
//! its entries also ends NAT mappings and stops replies to flows it opened.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::netlink::{
    NFNL_SUBSYS_CTNETLINK, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NfSocket, Reply, attrs, explain,
};
use super::scope::PortScope;
use crate::net::is_host;

const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
/// Delete requests per datagram.
const DELETES_PER_SEND: usize = 512;

/// An entry to delete: its family and the raw attributes that name it.
struct Victim {
    family: u8,
    tuple: Vec<u8>,
    zone: Option<Vec<u8>>,
}

/// The original-direction source address of a dumped entry.
fn orig_source(tuple: &[u8]) -> Option<IpAddr> {
    let ip = attrs(tuple).find(|a| a.ty == CTA_TUPLE_IP)?;
    for a in attrs(ip.data) {
        match (a.ty, a.data.len()) {
            (CTA_IP_V4_SRC, 4) => return Some(IpAddr::from(<[u8; 4]>::try_from(a.data).ok()?)),
            (CTA_IP_V6_SRC, 16) => {
                return Some(IpAddr::from(<[u8; 16]>::try_from(a.data).ok()?).to_canonical());
            }
            _ => {}
        }
    }
    None
}

/// The original direction's IP protocol and destination port (0 for a
/// protocol without ports).
fn orig_proto(tuple: &[u8]) -> (u8, u16) {
    let Some(p) = attrs(tuple).find(|a| a.ty == CTA_TUPLE_PROTO) else {
        return (0, 0);
    };
    let mut out = (0, 0);
    for a in attrs(p.data) {
        match (a.ty, a.data) {
            (CTA_PROTO_NUM, [n]) => out.0 = *n,
            (CTA_PROTO_DST_PORT, [h, l]) => out.1 = u16::from_be_bytes([*h, *l]),
            _ => {}
        }
    }
    out
}

/// Why the conntrack entries of banned sources were not deleted.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The kernel refused the dump (errno); the message says what to do
    /// (run as root, load the module, ...).
    #[error("{}", explain(*.errno, "dumping the conntrack table"))]
    DumpRefused {
        /// The kernel's errno.
        errno: i32,
    },
    /// The dump failed on the netlink socket.
    #[error("dumping the conntrack table: {0}")]
    Dump(#[source] std::io::Error),
    /// Sending the deletes failed on the netlink socket.
    #[error("deleting conntrack entries: {0}")]
    Delete(#[source] std::io::Error),
}

/// How many conntrack entries the calling thread's network namespace holds
/// (`None`: unknown, e.g. the conntrack module is not loaded). Read from
/// the namespace's own `nf_conntrack_count`: cheap, unlike a dump, which
/// walks the host's whole table whatever the namespace holds.
pub fn count_here() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Deletes every conntrack entry whose original source is in `banned`.
/// Returns how many were deleted.
pub fn flush_sources(sock: &mut NfSocket, banned: &[IpNet]) -> Result<usize, ConntrackError> {
    flush(sock, banned, &[])
}

/// Which entries a batch of bans deletes: every flow of the unscoped ones,
/// the flows in scope of the scoped ones.
struct Targets<'a> {
    hosts: HashSet<IpAddr>,
    nets: Vec<&'a IpNet>,
    scoped_hosts: HashMap<IpAddr, Vec<&'a PortScope>>,
    scoped_nets: Vec<(&'a IpNet, &'a PortScope)>,
}

impl<'a> Targets<'a> {
    fn new(banned: &'a [IpNet], scoped: &'a [(IpNet, &'a PortScope)]) -> Targets<'a> {
        let mut scoped_hosts: HashMap<IpAddr, Vec<&PortScope>> = HashMap::new();
        for (n, s) in scoped.iter().filter(|(n, _)| is_host(n)) {
            scoped_hosts.entry(n.addr()).or_default().push(*s);
        }
        Targets {
            hosts: banned
                .iter()
                .filter(|n| is_host(n))
                .map(|n| n.addr())
                .collect(),
            nets: banned.iter().filter(|n| !is_host(n)).collect(),
            scoped_hosts,
            scoped_nets: scoped
                .iter()
                .filter(|(n, _)| !is_host(n))
                .map(|(n, s)| (n, *s))
                .collect(),
        }
    }

    /// Whether an entry from `src` of protocol `proto` to `dport` goes.
    fn hit(&self, src: IpAddr, tuple: &[u8]) -> bool {
        if self.hosts.contains(&src) || self.nets.iter().any(|n| n.contains(&src)) {
            return true;
        }
        if self.scoped_hosts.is_empty() && self.scoped_nets.is_empty() {
            return false;
        }
        let (proto, dport) = orig_proto(tuple);
        self.scoped_hosts
            .get(&src)
            .is_some_and(|v| v.iter().any(|s| s.matches(proto, dport)))
            || self
                .scoped_nets
                .iter()
                .any(|(n, s)| n.contains(&src) && s.matches(proto, dport))
    }
}

/// Deletes every conntrack entry whose original source is in `banned`, and
/// those whose source is in one of `scoped` and whose protocol and
/// destination port its scope matches. Returns how many were deleted.
pub fn flush(
    sock: &mut NfSocket,
    banned: &[IpNet],
    scoped: &[(IpNet, &PortScope)],
) -> Result<usize, ConntrackError> {
    let targets = Targets::new(banned, scoped);

    let mut req = sock.buffer();
    let s = req.begin(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        0,
        0,
    );
    req.end(s);
    let mut victims = Vec::new();
    let res = sock.dump(&req, |m| {
        let Some(family) = m.payload.first().copied() else {
            return;
        };
        let body = m.payload.get(4..).unwrap_or_default();
        let mut tuple = None;
        let mut zone = None;
        for a in attrs(body) {
            match a.ty {
                CTA_TUPLE_ORIG => tuple = Some(a),
                CTA_ZONE => zone = Some(a.raw.to_vec()),
                _ => {}
            }
        }
        if let Some(t) = tuple {
            if orig_source(t.data).is_some_and(|a| targets.hit(a, t.data)) {
                victims.push(Victim {
                    family,
                    tuple: t.raw.to_vec(),
                    zone,
                });
            }
        }
    });
    match res {
        Ok(None) => {}
        Ok(Some(errno)) => return Err(ConntrackError::DumpRefused { errno }),
        Err(e) => return Err(ConntrackError::Dump(e)),
    }
    let mut deleted = 0;
    for chunk in victims.chunks(DELETES_PER_SEND) {
        let mut b = sock.buffer();
        for v in chunk {
            let s = b.begin(
                (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                v.family,
                0,
            );
            b.attr_raw(&v.tuple);
            if let Some(z) = &v.zone {
                b.attr_raw(z);
            }
            b.end(s);
        }
        let replies = sock.transact(&b).map_err(ConntrackError::Delete)?;
        // ENOENT: the entry ended on its own meanwhile.
        deleted += replies.iter().filter(|r| **r == Reply::Ack).count();
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tuple as the kernel nests it: CTA_TUPLE_IP { src }, CTA_TUPLE_PROTO
    /// { num, sport, dport }.
    fn tuple(src: [u8; 4], proto: u8, dport: u16) -> Vec<u8> {
        fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
            let len = 4 + data.len();
            let mut v = Vec::new();
            v.extend_from_slice(&(len as u16).to_ne_bytes());
            v.extend_from_slice(&ty.to_ne_bytes());
            v.extend_from_slice(data);
            while v.len() % 4 != 0 {
                v.push(0);
            }
            v
        }
        let ip = attr(CTA_TUPLE_IP | 0x8000, &attr(CTA_IP_V4_SRC, &src));
        let mut p = attr(CTA_PROTO_NUM, &[proto]);
        p.extend(attr(2, &5555u16.to_be_bytes()));
        p.extend(attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()));
        let mut t = ip;
        t.extend(attr(CTA_TUPLE_PROTO | 0x8000, &p));
        t
    }

    #[test]
    fn a_scoped_ban_deletes_only_the_flows_its_scope_matches() {
        let sip = PortScope::new(&[crate::enforce::Proto::Udp], &[(5060, 5060)]).unwrap();
        let scoped = [("192.0.2.7/32".parse().unwrap(), &sip)];
        let every: [IpNet; 1] = ["198.51.100.0/24".parse().unwrap()];
        let t = Targets::new(&every, &scoped);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let tu = tuple([192, 0, 2, 7], 17, 5060);
        assert_eq!(orig_source(&tu), Some(a));
        assert_eq!(orig_proto(&tu), (17, 5060));
        assert!(t.hit(a, &tu));
        assert!(
            !t.hit(a, &tuple([192, 0, 2, 7], 6, 22)),
            "the operator's SSH stays"
        );
        assert!(
            !t.hit(a, &tuple([192, 0, 2, 7], 6, 5060)),
            "TCP is out of a UDP-only scope"
        );
        let b: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(
            t.hit(b, &tuple([198, 51, 100, 9], 6, 22)),
            "unscoped: every flow"
        );
        let c: IpAddr = "203.0.113.1".parse().unwrap();
        assert!(!t.hit(c, &tuple([203, 0, 113, 1], 17, 5060)));
    }

    /// The conntrack warning's wording, as the strings had it.
    #[test]
    fn why_entries_were_not_deleted_reads_as_before() {
        assert_eq!(
            ConntrackError::DumpRefused { errno: libc::EPERM }.to_string(),
            "dumping the conntrack table: permission denied; run sipwarden as root or give it CAP_NET_ADMIN"
        );
        let io = || std::io::Error::from_raw_os_error(libc::ENOBUFS);
        assert_eq!(
            ConntrackError::Dump(io()).to_string(),
            format!("dumping the conntrack table: {}", io())
        );
        assert_eq!(
            ConntrackError::Delete(io()).to_string(),
            format!("deleting conntrack entries: {}", io())
        );
    }
}
