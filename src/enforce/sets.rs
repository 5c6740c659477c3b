//! The names of the kernel sets of bans: four kinds (single addresses and
//! prefixes, per family), once for bans of every packet and once per port
//! scope (`banned_v4_s<id>`, see [`super::scope`]).

use ipnet::IpNet;

use super::intervals::Family;
use super::scope::ScopeId;
use crate::net::is_host;

/// One of the four kinds of set of bans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SetKind {
    V4,
    V6,
    NetV4,
    NetV6,
}

impl SetKind {
    /// Every kind, in the order the layout lists them.
    pub(super) const ALL: [SetKind; 4] = [SetKind::V4, SetKind::V6, SetKind::NetV4, SetKind::NetV6];

    /// The unscoped set's name.
    pub(super) fn base(self) -> &'static str {
        match self {
            SetKind::V4 => "banned_v4",
            SetKind::V6 => "banned_v6",
            SetKind::NetV4 => "banned_net_v4",
            SetKind::NetV6 => "banned_net_v6",
        }
    }
}

/// A set of bans: its kind and the scope it drops (`ScopeId::ALL`: every
/// packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct SetName {
    pub(super) kind: SetKind,
    pub(super) scope: ScopeId,
}

impl SetName {
    /// Where an unscoped ban of `net` goes: single addresses in the plain
    /// sets, prefixes in the interval sets.
    pub(super) fn for_net(net: &IpNet) -> SetName {
        let kind = match (net, is_host(net)) {
            (IpNet::V4(_), true) => SetKind::V4,
            (IpNet::V6(_), true) => SetKind::V6,
            (IpNet::V4(_), false) => SetKind::NetV4,
            (IpNet::V6(_), false) => SetKind::NetV6,
        };
        SetName {
            kind,
            scope: ScopeId::ALL,
        }
    }

    /// The interval set of `family`.
    pub(super) fn for_family(f: Family) -> SetName {
        let kind = match f {
            Family::V4 => SetKind::NetV4,
            Family::V6 => SetKind::NetV6,
        };
        SetName {
            kind,
            scope: ScopeId::ALL,
        }
    }

    /// The same kind of set, of scope `scope`.
    pub(super) fn in_scope(self, scope: ScopeId) -> SetName {
        SetName { scope, ..self }
    }

    /// The set's name in the table, on the stack (no allocation per
    /// message).
    pub(super) fn label(self) -> SetLabel {
        let mut l = SetLabel {
            bytes: [0; 32],
            len: 0,
        };
        let base = self.kind.base().as_bytes();
        l.bytes[..base.len()].copy_from_slice(base);
        l.len = base.len();
        if self.scope != ScopeId::ALL {
            let suffix = format!("_s{:08x}", self.scope.0);
            l.bytes[l.len..l.len + suffix.len()].copy_from_slice(suffix.as_bytes());
            l.len += suffix.len();
        }
        l
    }
}

/// A set's name (at most `banned_net_v6_s` and 8 hex digits).
#[derive(Clone, Copy)]
pub(super) struct SetLabel {
    bytes: [u8; 32],
    len: usize,
}

impl std::ops::Deref for SetLabel {
    type Target = str;
    fn deref(&self) -> &str {
        // Only ASCII is ever written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Display for SetLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_by_address_kind_and_scope() {
        let f = |s: &str| SetName::for_net(&s.parse().unwrap()).label().to_string();
        assert_eq!(f("192.0.2.1/32"), "banned_v4");
        assert_eq!(f("2001:db8::1/128"), "banned_v6");
        assert_eq!(f("192.0.2.0/24"), "banned_net_v4");
        assert_eq!(f("2001:db8::/48"), "banned_net_v6");
        let s = SetName::for_net(&"2001:db8::/64".parse().unwrap()).in_scope(ScopeId(0xab));
        assert_eq!(&*s.label(), "banned_net_v6_s000000ab");
        let s = SetName::for_family(Family::V4).in_scope(ScopeId(u32::MAX));
        assert_eq!(&*s.label(), "banned_net_v4_sffffffff");
    }
}
