//! Bans scoped to ports and protocols: a jail's `port = [5060, "10000-20000"]`
//! and `protocol = ["udp", "tcp"]`. Pure: parsing, the canonical form, the
//! rule's match text, and the test conntrack entries are held to.
//!
//! Jails with the same scope share one group of kernel sets, named after
//! the scope's [`ScopeId`] (a hash of its canonical text, so a group keeps
//! its name whatever other jails come and go).

use std::fmt;

/// Most entries in `port` (after merging adjacent ranges, a rule's
/// anonymous set holds at most this many intervals).
pub const MAX_PORT_ENTRIES: usize = 64;

/// A transport protocol a scope matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Proto {
    /// The IP protocol number (`meta l4proto`, conntrack's `CTA_PROTO_NUM`).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    /// The name nft and the configuration use.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    fn parse(s: &str) -> Option<Proto> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

/// A scope's name in the kernel: the suffix of its sets (`banned_v4_s<id>`).
/// Never 0 (0 is the unscoped sets, which have no suffix).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeId(pub u32);

impl ScopeId {
    /// The unscoped sets (`banned_v4`, ...): every packet of a banned source.
    pub const ALL: ScopeId = ScopeId(0);
}

/// What a scoped ban drops: these protocols to these destination ports.
/// Protocols sorted by number, ports as sorted, merged, inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortScope {
    protocols: Vec<Proto>,
    ports: Vec<(u16, u16)>,
}

/// Why `port` or `protocol` is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Not a list of ports and ranges.
    #[error(
        "port must be a list of ports and ranges, such as [5060, 5061, \"10000-20000\"] (leave port out to drop every packet of a banned source)"
    )]
    PortShape,
    /// An entry that is not a port 1-65535 or a range of them.
    #[error("port entry {0} must be a port 1-65535 or a range \"A-B\" of them with A <= B")]
    PortEntry(String),
    /// `port = []`.
    #[error(
        "port = [] would scope bans to no traffic at all; list the ports to drop, or leave port out to drop everything"
    )]
    PortEmpty,
    /// Too many entries.
    #[error("port has more than {MAX_PORT_ENTRIES} entries; use ranges such as \"10000-20000\"")]
    TooMany,
    /// Not a list of protocol names.
    #[error("protocol must be a list such as [\"udp\", \"tcp\"]")]
    ProtocolShape,
    /// An unknown protocol.
    #[error("protocol {0:?} is not one of \"udp\", \"tcp\", \"sctp\"")]
    Protocol(String),
    /// `protocol = []`.
    #[error(
        "protocol = [] would scope bans to no traffic at all; list \"udp\", \"tcp\" or \"sctp\""
    )]
    ProtocolEmpty,
    /// `protocol` without `port`.
    #[error(
        "protocol scopes bans only together with port; add port = [...] or remove protocol (a jail without port drops every packet of a banned source)"
    )]
    ProtocolWithoutPort,
}

fn port_number(n: i64, shown: &str) -> Result<u16, ScopeError> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ScopeError::PortEntry(shown.to_string())),
    }
}

fn port_entry(v: &toml::Value) -> Result<(u16, u16), ScopeError> {
    match v {
        toml::Value::Integer(n) => {
            let p = port_number(*n, &n.to_string())?;
            Ok((p, p))
        }
        toml::Value::String(s) => {
            let shown = format!("{s:?}");
            let num = |t: &str| {
                t.trim()
                    .parse::<i64>()
                    .map_err(|_| ScopeError::PortEntry(shown.clone()))
                    .and_then(|n| port_number(n, &shown))
            };
            let (a, b) = match s.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let p = num(s)?;
                    (p, p)
                }
            };
            if a > b {
                return Err(ScopeError::PortEntry(shown));
            }
            Ok((a, b))
        }
        other => Err(ScopeError::PortEntry(other.to_string())),
    }
}

/// Reads `port` (a list, or one port or range) into sorted, merged ranges.
pub fn parse_ports(v: &toml::Value) -> Result<Vec<(u16, u16)>, ScopeError> {
    let items: Vec<&toml::Value> = match v {
        toml::Value::Array(a) => a.iter().collect(),
        toml::Value::Integer(_) | toml::Value::String(_) => vec![v],
        _ => return Err(ScopeError::PortShape),
    };
    if items.is_empty() {
        return Err(ScopeError::PortEmpty);
    }
    if items.len() > MAX_PORT_ENTRIES * 4 {
        return Err(ScopeError::TooMany);
    }
    let mut ranges = items
        .into_iter()
        .map(port_entry)
        .collect::<Result<Vec<_>, _>>()?;
    ranges.sort_unstable();
    // Overlapping or adjacent ranges merged: an interval set refuses
    // overlaps, and the canonical form must not depend on how it was written.
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    if merged.len() > MAX_PORT_ENTRIES {
        return Err(ScopeError::TooMany);
    }
    Ok(merged)
}

/// Reads `protocol`, sorted by number, duplicates dropped.
pub fn parse_protocols(v: &toml::Value) -> Result<Vec<Proto>, ScopeError> {
    let items: Vec<&toml::Value> = match v {
        toml::Value::Array(a) => a.iter().collect(),
        toml::Value::String(_) => vec![v],
        _ => return Err(ScopeError::ProtocolShape),
    };
    let mut out = Vec::new();
    for item in items {
        let s = item.as_str().ok_or(ScopeError::ProtocolShape)?;
        out.push(Proto::parse(s).ok_or_else(|| ScopeError::Protocol(s.to_string()))?);
    }
    if out.is_empty() {
        return Err(ScopeError::ProtocolEmpty);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Which of the two keys is wrong, for the error's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKey {
    /// `port`.
    Port,
    /// `protocol`.
    Protocol,
}

impl PortScope {
    /// A jail's scope from its `port` and `protocol` values: `None` (drop
    /// everything) without `port`; `protocol` defaults to UDP and TCP.
    pub fn from_keys(
        port: Option<&toml::Value>,
        protocol: Option<&toml::Value>,
    ) -> Result<Option<PortScope>, (ScopeKey, ScopeError)> {
        let protocols = protocol
            .map(parse_protocols)
            .transpose()
            .map_err(|e| (ScopeKey::Protocol, e))?;
        let Some(port) = port else {
            return match protocols {
                Some(_) => Err((ScopeKey::Protocol, ScopeError::ProtocolWithoutPort)),
                None => Ok(None),
            };
        };
        let ports = parse_ports(port).map_err(|e| (ScopeKey::Port, e))?;
        Ok(Some(PortScope {
            protocols: protocols.unwrap_or_else(|| vec![Proto::Tcp, Proto::Udp]),
            ports,
        }))
    }

    /// A scope from parts already checked (tests, `doctor --probe`).
    /// `None` when either list is empty.
    pub fn new(protocols: &[Proto], ports: &[(u16, u16)]) -> Option<PortScope> {
        if protocols.is_empty() || ports.is_empty() || ports.iter().any(|&(a, b)| a == 0 || a > b) {
            return None;
        }
        let mut p = protocols.to_vec();
        p.sort_unstable();
        p.dedup();
        let v: Vec<toml::Value> = ports
            .iter()
            .map(|&(a, b)| toml::Value::String(format!("{a}-{b}")))
            .collect();
        Some(PortScope {
            protocols: p,
            ports: parse_ports(&toml::Value::Array(v)).ok()?,
        })
    }

    /// The protocols, sorted by number.
    pub fn protocols(&self) -> &[Proto] {
        &self.protocols
    }

    /// The port ranges (inclusive), sorted and merged.
    pub fn ports(&self) -> &[(u16, u16)] {
        &self.ports
    }

    /// The canonical text (`tcp,udp:5060-5061,5080`): equal scopes, equal
    /// text, however they were written.
    pub fn canonical(&self) -> String {
        let protos: Vec<&str> = self.protocols.iter().map(|p| p.name()).collect();
        format!("{}:{}", protos.join(","), self.port_list())
    }

    fn port_list(&self) -> String {
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        ports.join(", ")
    }

    /// The scope's id: FNV-1a of the canonical text (stable across builds
    /// and restarts, unlike std's hasher), never 0.
    pub fn id(&self) -> ScopeId {
        let mut h: u32 = 0x811c_9dc5;
        for b in self.canonical().bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        ScopeId(if h == 0 { 1 } else { h })
    }

    /// What the rule matches after the address:
    /// `meta l4proto { tcp, udp } th dport { 5060-5061, 5080 }`.
    pub fn nft_match(&self) -> String {
        let protos: Vec<&str> = self.protocols.iter().map(|p| p.name()).collect();
        let protos = match protos.as_slice() {
            [one] => one.to_string(),
            many => format!("{{ {} }}", many.join(", ")),
        };
        let ports = match self.ports.as_slice() {
            [(a, b)] if a == b => a.to_string(),
            [(a, b)] => format!("{a}-{b}"),
            _ => format!("{{ {} }}", self.port_list()),
        };
        format!("meta l4proto {protos} th dport {ports}")
    }

    /// Whether a flow of IP protocol `proto` to port `dport` is in scope
    /// (the conntrack entries a scoped ban deletes).
    pub fn matches(&self, proto: u8, dport: u16) -> bool {
        self.protocols.iter().any(|p| p.number() == proto)
            && self.ports.iter().any(|&(a, b)| a <= dport && dport <= b)
    }
}

impl fmt::Display for PortScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protos: Vec<&str> = self.protocols.iter().map(|p| p.name()).collect();
        write!(f, "{} port {}", protos.join("/"), self.port_list())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> toml::Value {
        toml::from_str::<toml::Table>(&format!("v = {s}")).unwrap()["v"].clone()
    }

    fn scope(port: Option<&str>, proto: Option<&str>) -> Result<Option<PortScope>, ScopeError> {
        let p = port.map(val);
        let q = proto.map(val);
        PortScope::from_keys(p.as_ref(), q.as_ref()).map_err(|(_, e)| e)
    }

    #[test]
    fn ports_and_ranges_are_sorted_merged_and_default_to_udp_and_tcp() {
        let s = scope(
            Some(r#"[5080, "5060-5061", 5061, "10000-20000", 20001]"#),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.ports(), &[(5060, 5061), (5080, 5080), (10000, 20001)]);
        assert_eq!(s.protocols(), &[Proto::Tcp, Proto::Udp]);
        assert_eq!(s.canonical(), "tcp,udp:5060-5061, 5080, 10000-20001");
        assert_eq!(
            s.nft_match(),
            "meta l4proto { tcp, udp } th dport { 5060-5061, 5080, 10000-20001 }"
        );
        let one = scope(Some("[5060]"), Some(r#"["udp"]"#)).unwrap().unwrap();
        assert_eq!(one.nft_match(), "meta l4proto udp th dport 5060");
        assert_eq!(one.to_string(), "udp port 5060");
    }

    #[test]
    fn no_port_is_no_scope_and_equal_scopes_share_an_id() {
        assert_eq!(scope(None, None).unwrap(), None);
        let a = scope(Some("[5061, 5060]"), Some(r#"["udp", "tcp", "udp"]"#))
            .unwrap()
            .unwrap();
        let b = scope(Some(r#"["5060-5061"]"#), None).unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), ScopeId::ALL);
        let c = scope(Some("[5060]"), None).unwrap().unwrap();
        assert_ne!(a.id(), c.id());
        assert_eq!(
            c.id(),
            PortScope::new(&[Proto::Udp, Proto::Tcp], &[(5060, 5060)])
                .unwrap()
                .id()
        );
        // Stable across builds and restarts: FNV-1a of "tcp,udp:5060".
        assert_eq!(c.id(), ScopeId(0x3619_67ac));
    }

    #[test]
    fn wrong_ports_and_protocols_are_refused_with_the_entry() {
        for (p, want) in [
            ("[0]", ScopeError::PortEntry("0".into())),
            ("[65536]", ScopeError::PortEntry("65536".into())),
            (
                r#"["5061-5060"]"#,
                ScopeError::PortEntry("\"5061-5060\"".into()),
            ),
            (r#"["sip"]"#, ScopeError::PortEntry("\"sip\"".into())),
            (r#"["1-2-3"]"#, ScopeError::PortEntry("\"1-2-3\"".into())),
            ("[]", ScopeError::PortEmpty),
            ("{ a = 1 }", ScopeError::PortShape),
            ("[1.5]", ScopeError::PortEntry("1.5".into())),
        ] {
            assert_eq!(scope(Some(p), None), Err(want), "{p}");
        }
        let many: Vec<String> = (0..65).map(|i| (1000 + 2 * i).to_string()).collect();
        assert_eq!(
            scope(Some(&format!("[{}]", many.join(","))), None),
            Err(ScopeError::TooMany)
        );
        assert_eq!(
            scope(Some("[5060]"), Some(r#"["icmp"]"#)),
            Err(ScopeError::Protocol("icmp".into()))
        );
        assert_eq!(
            scope(Some("[5060]"), Some("[]")),
            Err(ScopeError::ProtocolEmpty)
        );
        assert_eq!(
            scope(Some("[5060]"), Some("[6]")),
            Err(ScopeError::ProtocolShape)
        );
        assert_eq!(
            scope(None, Some(r#"["udp"]"#)),
            Err(ScopeError::ProtocolWithoutPort)
        );
        // Which key is wrong, for the error's place.
        let p = val("[5060]");
        let q = val(r#"["gre"]"#);
        assert_eq!(
            PortScope::from_keys(Some(&p), Some(&q)).unwrap_err().0,
            ScopeKey::Protocol
        );
    }

    #[test]
    fn a_flow_is_in_scope_by_protocol_and_destination_port() {
        let s = scope(Some(r#"[5060, "10000-20000"]"#), Some(r#"["udp"]"#))
            .unwrap()
            .unwrap();
        assert!(s.matches(17, 5060));
        assert!(s.matches(17, 10000) && s.matches(17, 20000));
        assert!(!s.matches(17, 20001));
        assert!(!s.matches(6, 5060), "TCP is out of a UDP-only scope");
        assert!(!s.matches(17, 22));
        let sctp = scope(Some("[5060]"), Some(r#"["sctp"]"#)).unwrap().unwrap();
        assert!(sctp.matches(132, 5060));
    }
}
