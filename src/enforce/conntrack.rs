//! Deleting the conntrack entries of banned sources, over netlink: what
//! `conntrack -D -s ADDR` does, for a whole batch of addresses in one dump.
//!
//! Packets of a banned source are dropped before conntrack anyway; deleting
//! its entries also ends NAT mappings and stops replies to flows it opened.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::netlink::{
    NFNL_SUBSYS_CTNETLINK, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NfSocket, Reply, attrs, explain,
};
use crate::net::is_host;

const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_SRC: u16 = 3;
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

/// Deletes every conntrack entry whose original source is in `banned`.
/// Returns how many were deleted.
pub fn flush_sources(sock: &mut NfSocket, banned: &[IpNet]) -> Result<usize, ConntrackError> {
    let hosts: HashSet<IpAddr> = banned
        .iter()
        .filter(|n| is_host(n))
        .map(|n| n.addr())
        .collect();
    let nets: Vec<&IpNet> = banned.iter().filter(|n| !is_host(n)).collect();
    let hit = |a: IpAddr| hosts.contains(&a) || nets.iter().any(|n| n.contains(&a));

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
            if orig_source(t.data).is_some_and(hit) {
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
