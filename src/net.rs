//! Addresses and prefixes: one parser, one canonical form, one display.
//!
//! Every address that enters sipwarden (a log line, an Event Socket frame, a
//! packet, a `ban` request, a fleet message, `ignoreip`) goes through here, so
//! one attacker is one key whichever way a server prints it: an IPv4-mapped
//! IPv6 address (`::ffff:192.0.2.1`) is the IPv4 address, and a mapped prefix
//! (`::ffff:0:0/96+n`) is the IPv4 prefix of length `n`, before any
//! comparison. Addresses that can never be a packet's source (unspecified,
//! broadcast, multicast) are never counted and never banned: a ban of them
//! blocks nobody an attacker could be, and a line naming them is forged or
//! misread.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why text is not an acceptable address or prefix. The text shown is
/// escaped and cut: it may come from anyone who can reach the API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// Neither an address nor a CIDR prefix.
    #[error(
        "{0} is not an IP address or CIDR network (expected e.g. \"192.0.2.1\", \"198.51.100.0/24\", \"2001:db8::/32\")"
    )]
    NotAnAddress(Quoted),
    /// A prefix with bits set beyond its length (`198.51.100.7/24`).
    #[error("{given} has host bits set; did you mean {net}?")]
    HostBits {
        /// What was written.
        given: Quoted,
        /// The prefix it would be, truncated.
        net: IpNet,
    },
    /// A prefix covering every address of its family.
    #[error("{given} would ban everything ({net} covers every address); refusing")]
    Everything {
        /// What was written.
        given: Quoted,
        /// The canonical prefix (`::ffff:0:0/96` is `0.0.0.0/0`).
        net: IpNet,
    },
    /// An address that can never be a packet's source.
    #[error(
        "{given} is never a packet's source ({why}); banning it would block no attacker, refusing"
    )]
    NeverASource {
        /// What was written.
        given: Quoted,
        /// Which kind of address it is.
        why: &'static str,
    },
}

/// Text from outside, shown quoted and escaped, cut at 64 characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quoted(String);

impl Quoted {
    fn new(s: &str) -> Quoted {
        Quoted(crate::event::escape_text(s, 64))
    }
}

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// The canonical form of an address: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// The canonical form of a prefix: host bits cleared, and a prefix inside
/// `::ffff:0:0/96` the IPv4 prefix it maps (`::ffff:0:0/96` is `0.0.0.0/0`,
/// `::ffff:192.0.2.0/120` is `192.0.2.0/24`).
pub fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(n) = net {
        if n.prefix_len() >= 96 {
            if let Some(v4) = n.network().to_ipv4_mapped() {
                if let Ok(m) = Ipv4Net::new(v4, n.prefix_len() - 96) {
                    return IpNet::V4(m);
                }
            }
        }
    }
    net
}

/// Whether `net` is a single address (/32 or /128).
pub fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// What kind of never-a-source address `addr` is, if it is one: the
/// unspecified addresses (`0.0.0.0`, `::`), the limited broadcast
/// `255.255.255.255`, IPv4 multicast `224.0.0.0/4` and IPv6 multicast
/// `ff00::/8`. The rest of `0.0.0.0/8` and `240.0.0.0/4` are not here on
/// purpose: Linux accepts them as unicast (since 5.3 and 2.6.25), so a host
/// on such a network can attack, and must stay bannable.
pub fn never_a_source_why(addr: IpAddr) -> Option<&'static str> {
    match canonical(addr) {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(a) if a.is_multicast() => Some("IPv4 multicast, 224.0.0.0/4"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_multicast() => Some("IPv6 multicast, ff00::/8"),
        _ => None,
    }
}

/// Whether `addr` can never be a packet's source (see [`never_a_source_why`]).
pub fn never_a_source(addr: IpAddr) -> bool {
    never_a_source_why(addr).is_some()
}

/// Why no address of `net` can be a packet's source, if none can: the
/// prefix lies wholly inside the never-a-source ranges. A wider prefix that
/// merely includes some of them (`192.0.0.0/2`) holds real sources too.
pub fn net_never_a_source_why(net: &IpNet) -> Option<&'static str> {
    let net = canonical_net(*net);
    if is_host(&net) {
        return never_a_source_why(net.addr());
    }
    let (first, last) = (net.network(), net.broadcast());
    // The multicast ranges are the only never-a-source prefixes wider than
    // one address; both ends inside means all of it is.
    match (never_a_source_why(first), never_a_source_why(last)) {
        (Some(a), Some(b)) if a == b => Some(a),
        _ => None,
    }
}

/// Parses an address or network as configuration and feeds write it:
/// `192.0.2.1`, `2001:db8::1`, `198.51.100.0/24`, `2001:db8::/32`. Host bits
/// are cleared (`198.51.100.7/24` is `198.51.100.0/24`); the result is
/// canonical.
pub fn parse_net(s: &str) -> Result<IpNet, NetError> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(canonical(ip)));
    }
    s.parse::<IpNet>()
        .map(canonical_net)
        .map_err(|_| NetError::NotAnAddress(Quoted::new(s)))
}

/// Parses an address or prefix a person or a peer names (`unban`, the
/// history API, a fleet unban): a prefix with host bits set is refused
/// rather than silently widened, and a prefix of every address is refused.
pub fn parse_prefix(s: &str) -> Result<IpNet, NetError> {
    let net = parse_net(s)?;
    if let Ok(given) = s.trim().parse::<IpNet>() {
        if given.trunc() != given {
            return Err(NetError::HostBits {
                given: Quoted::new(s),
                net,
            });
        }
    }
    if net.prefix_len() == 0 {
        return Err(NetError::Everything {
            given: Quoted::new(s),
            net,
        });
    }
    Ok(net)
}

/// Parses what is to be banned (`ban`, the API, a fleet ban): a
/// [`parse_prefix`] that holds at least one possible packet source.
pub fn parse_ban_target(s: &str) -> Result<IpNet, NetError> {
    let net = parse_prefix(s)?;
    match net_never_a_source_why(&net) {
        Some(why) => Err(NetError::NeverASource {
            given: Quoted::new(s),
            why,
        }),
        None => Ok(net),
    }
}

/// The address a configured peer's `host` is, when it is one (`192.0.2.1`,
/// `2001:db8::1`, `[2001:db8::1]`, `fe80::1%eth0`), canonical; `None` for a
/// host name, whose addresses the daemon looks up (`daemon/names.rs`).
pub fn host_addr(host: &str) -> Option<IpAddr> {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    parse_addr(h.as_bytes())
}

/// Longest IPv6 zone id accepted: an interface name (at most 15 bytes on
/// Linux) or an interface index.
const MAX_ZONE: usize = 15;

/// Parses an address a server wrote: plain IPv4 or IPv6 text, nothing
/// around it, canonical. An IPv6 zone id (`fe80::1%eth0`, `fe80::1%2`) is
/// dropped: it names the interface, and the kernel sees the address without
/// it as the packet's source.
pub fn parse_addr(b: &[u8]) -> Option<IpAddr> {
    let (b, zone) = match memchr::memchr(b'%', b) {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    if b.is_empty() || b.len() > 45 {
        return None;
    }
    if zone.is_none() {
        // Most sources are dotted quads: read them without the general
        // parser (a third of an ESL event's cost went to it).
        if let Some(v4) = dotted_quad(b) {
            return Some(IpAddr::V4(v4));
        }
    }
    let s = std::str::from_utf8(b).ok()?;
    let addr = s.parse::<IpAddr>().ok()?;
    if let Some(z) = zone {
        // What Linux allows in an interface name, no more.
        let name_like = (1..=MAX_ZONE).contains(&z.len())
            && z.iter()
                .all(|&c| c.is_ascii_graphic() && !matches!(c, b'/' | b':' | b'%'));
        if !(addr.is_ipv6() && name_like) {
            return None;
        }
    }
    Some(canonical(addr))
}

/// A strict dotted quad (what `Ipv4Addr`'s parser accepts: four decimal
/// octets of one to three digits, no leading zero, each at most 255);
/// `None` for anything else, which then goes to the general parser.
fn dotted_quad(b: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (k, octet) in octets.iter_mut().enumerate() {
        let start = i;
        let mut v: u32 = 0;
        while let Some(&c) = b.get(i) {
            if !c.is_ascii_digit() || i - start == 3 {
                break;
            }
            v = v * 10 + u32::from(c - b'0');
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || (digits > 1 && b[start] == b'0') || v > 255 {
            return None;
        }
        *octet = v as u8;
        if k < 3 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    (i == b.len()).then_some(std::net::Ipv4Addr::from(octets))
}

/// Writes an address the way logs show it: bare for a single host.
pub struct DisplayNet<'a>(pub &'a IpNet);

impl fmt::Display for DisplayNet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_host(self.0) {
            self.0.addr().fmt(f)
        } else {
            self.0.fmt(f)
        }
    }
}

/// A set of networks, looked up by binary search: the networks merged into
/// disjoint ranges per family, plus the networks as given (sorted, for
/// display and for naming the one that matched). Build it once and share it
/// (`Arc`): 100,000 networks are a few megabytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetSet {
    nets: Box<[IpNet]>,
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl NetSet {
    /// A set of the given networks, canonicalised; duplicates are dropped.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> NetSet {
        let mut nets: Vec<IpNet> = nets.into_iter().map(canonical_net).collect();
        nets.sort_unstable();
        nets.dedup();
        let mut v4: Vec<(u32, u32)> = Vec::new();
        let mut v6: Vec<(u128, u128)> = Vec::new();
        for n in &nets {
            match n {
                IpNet::V4(n) => v4.push(range4(n)),
                IpNet::V6(n) => v6.push(range6(n)),
            }
        }
        NetSet {
            nets: nets.into_boxed_slice(),
            v4: merge(v4, |x: u32| x.checked_add(1)).into_boxed_slice(),
            v6: merge(v6, |x: u128| x.checked_add(1)).into_boxed_slice(),
        }
    }

    /// Whether `addr` (canonicalised) falls in one of the networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match canonical(addr) {
            IpAddr::V4(a) => hit(&self.v4, u32::from(a), u32::from(a)),
            IpAddr::V6(a) => hit(&self.v6, u128::from(a), u128::from(a)),
        }
    }

    /// Whether a listed network shares addresses with `net` (by binary
    /// search alone: cheap enough for every event).
    pub fn overlaps(&self, net: &IpNet) -> bool {
        match &canonical_net(*net) {
            IpNet::V4(n) => {
                let (a, b) = range4(n);
                hit(&self.v4, a, b)
            }
            IpNet::V6(n) => {
                let (a, b) = range6(n);
                hit(&self.v6, a, b)
            }
        }
    }

    /// A listed network that shares addresses with `net`, if any.
    pub fn overlapping(&self, net: &IpNet) -> Option<IpNet> {
        let net = canonical_net(*net);
        let found = match &net {
            IpNet::V4(n) => {
                let (a, b) = range4(n);
                hit(&self.v4, a, b)
            }
            IpNet::V6(n) => {
                let (a, b) = range6(n);
                hit(&self.v6, a, b)
            }
        };
        // Only on a hit (a refused ban): name the network that matched.
        found.then(|| {
            self.nets
                .iter()
                .copied()
                .find(|n| n.contains(&net.network()) || net.contains(&n.network()))
        })?
    }

    /// The networks, sorted, as given (canonicalised).
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// How many networks were given (after removing duplicates).
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The heap memory the set holds, in bytes.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.nets)
            + std::mem::size_of_val(&*self.v4)
            + std::mem::size_of_val(&*self.v6)
    }
}

impl FromIterator<IpNet> for NetSet {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> NetSet {
        NetSet::new(iter)
    }
}

fn range4(n: &Ipv4Net) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

fn range6(n: &Ipv6Net) -> (u128, u128) {
    (u128::from(n.network()), u128::from(n.broadcast()))
}

/// Sorted, inclusive ranges merged where they overlap or touch.
fn merge<T: Copy + Ord>(mut ranges: Vec<(T, T)>, succ: fn(T) -> Option<T>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 || Some(a) == succ(last.1) => {
                if b > last.1 {
                    last.1 = b;
                }
            }
            _ => out.push((a, b)),
        }
    }
    out.shrink_to_fit();
    out
}

/// Whether a range of `ranges` (sorted, disjoint) meets `[a, b]`.
fn hit<T: Copy + Ord>(ranges: &[(T, T)], a: T, b: T) -> bool {
    // The first range ending at or after `a`; it meets [a, b] if it starts
    // by `b`.
    let i = ranges.partition_point(|r| r.1 < a);
    ranges.get(i).is_some_and(|r| r.0 <= b)
}

/// A table keyed by addresses an attacker chooses, hashed by
/// [`AddrHasher`]: the jails' counters (each bounded by `max_tracked`),
/// the ban history and the enforcer's ledger.
pub type AddrMap<K, V> = std::collections::HashMap<K, V, AddrHasher>;

/// A set of addresses, hashed as [`AddrMap`] is (what the kernel's sets hold
/// when they are compared with the ledger).
pub type AddrSet<K> = std::collections::HashSet<K, AddrHasher>;

/// foldhash, several times cheaper than SipHash on the 16 bytes of an
/// address (which the Event Socket path hashes per event: 20 % of its cost
/// in process), with its secrets drawn from the operating system's
/// randomness (through std's `RandomState`): once per process for the
/// shared part, once per table for the rest. foldhash's own default draws
/// them from memory addresses and the clock, and foldhash claims no
/// resistance to an attacker who can observe its hashes; here nothing
/// outside the process sees a hash or a table's order of iteration that an
/// unprivileged client could time or read.
#[derive(Clone, Debug)]
pub struct AddrHasher(foldhash::quality::SeedableRandomState);

impl Default for AddrHasher {
    fn default() -> AddrHasher {
        static SHARED: std::sync::LazyLock<foldhash::SharedSeed> =
            std::sync::LazyLock::new(|| foldhash::SharedSeed::from_u64(crate::supervise::random()));
        AddrHasher(foldhash::quality::SeedableRandomState::with_seed(
            crate::supervise::random(),
            &SHARED,
        ))
    }
}

impl std::hash::BuildHasher for AddrHasher {
    type Hasher = foldhash::quality::FoldHasher<'static>;

    #[inline(always)]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_quad_agrees_with_the_standard_parser() {
        // Every string of up to 9 characters over "0129." plus chosen
        // edges: accepted exactly when `Ipv4Addr`'s parser accepts it.
        let alphabet = b"0129.";
        let mut cases: Vec<Vec<u8>> = vec![
            b"255.255.255.255".to_vec(),
            b"256.1.1.1".to_vec(),
            b"1.2.3.4.".to_vec(),
            b"01.2.3.4".to_vec(),
            b"1.2.3.04".to_vec(),
            b"0.0.0.0".to_vec(),
            b"1.2.3.1000".to_vec(),
            b"10.77.0.2".to_vec(),
            b"1..2.3".to_vec(),
        ];
        for len in 1..=9u32 {
            for n in 0..5usize.pow(len) {
                let mut s = Vec::new();
                let mut k = n;
                for _ in 0..len {
                    s.push(alphabet[k % 5]);
                    k /= 5;
                }
                cases.push(s);
            }
        }
        for c in cases {
            let std = std::str::from_utf8(&c)
                .ok()
                .and_then(|s| s.parse::<std::net::Ipv4Addr>().ok());
            assert_eq!(dotted_quad(&c), std, "{:?}", String::from_utf8_lossy(&c));
        }
    }
    use std::net::Ipv4Addr;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn host_addr_tells_addresses_from_names() {
        assert_eq!(host_addr(" 192.0.2.1 "), Some(ip("192.0.2.1")));
        assert_eq!(host_addr("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(host_addr("::ffff:192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(host_addr("fe80::1%eth0"), Some(ip("fe80::1")));
        for name in ["localhost", "pbx.example.com", "", "[", "1.2.3"] {
            assert_eq!(host_addr(name), None, "{name}");
        }
    }

    #[test]
    fn parses_addresses_and_networks() {
        assert_eq!(parse_net("192.0.2.1"), Ok(net("192.0.2.1/32")));
        assert_eq!(parse_net(" 2001:db8::1 "), Ok(net("2001:db8::1/128")));
        assert_eq!(parse_net("198.51.100.7/24"), Ok(net("198.51.100.0/24")));
        assert_eq!(parse_net("2001:db8::/32"), Ok(net("2001:db8::/32")));
        for bad in [
            "",
            "999.1.1.1",
            "192.0.2.1/33",
            "host.example",
            "1.2.3.4/-1",
            "::/129",
        ] {
            let e = parse_net(bad).unwrap_err();
            assert!(matches!(e, NetError::NotAnAddress(_)), "{bad}: {e}");
            assert!(e.to_string().contains("not an IP address"), "{e}");
        }
    }

    #[test]
    fn mapped_addresses_and_prefixes_are_ipv4() {
        assert_eq!(parse_net("::ffff:192.0.2.1"), Ok(net("192.0.2.1/32")));
        assert_eq!(parse_net("::ffff:192.0.2.1/128"), Ok(net("192.0.2.1/32")));
        assert_eq!(parse_net("::ffff:192.0.2.0/120"), Ok(net("192.0.2.0/24")));
        assert_eq!(parse_net("::ffff:0:0/96"), Ok(net("0.0.0.0/0")));
        assert_eq!(parse_net("::ffff:0:0/97"), Ok(net("0.0.0.0/1")));
        assert_eq!(parse_net("::ffff:128.0.0.0/97"), Ok(net("128.0.0.0/1")));
        // Wider than /96 is not a mapped prefix: it stays IPv6.
        assert_eq!(parse_net("::ffff:0:0/95"), Ok(net("::fffe:0:0/95")));
        assert_eq!(parse_net("::/64"), Ok(net("::/64")));
        // IPv4-compatible (deprecated) addresses are not mapped.
        assert_eq!(parse_net("::192.0.2.1"), Ok(net("::c000:201/128")));
        assert_eq!(canonical(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn prefixes_refuse_host_bits_and_everything() {
        assert_eq!(parse_prefix("198.51.100.0/24"), Ok(net("198.51.100.0/24")));
        assert_eq!(parse_prefix("::ffff:192.0.2.1"), Ok(net("192.0.2.1/32")));
        let e = parse_prefix("198.51.100.7/24").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"198.51.100.7/24\" has host bits set; did you mean 198.51.100.0/24?"
        );
        for all in ["0.0.0.0/0", "::/0", "::ffff:0:0/96", "::ffff:0.0.0.0/96"] {
            let e = parse_prefix(all).unwrap_err();
            assert!(e.to_string().contains("would ban everything"), "{all}: {e}");
        }
        // The mapped /96 is named as what it is.
        assert!(
            parse_prefix("::ffff:0:0/96")
                .unwrap_err()
                .to_string()
                .contains("0.0.0.0/0")
        );
    }

    #[test]
    fn never_a_source_addresses() {
        for a in [
            "0.0.0.0",
            "::ffff:0.0.0.0",
            "255.255.255.255",
            "::ffff:255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "::ffff:224.0.0.5",
            "::",
            "ff02::1",
            "ff0e::fb",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(never_a_source(ip(a)), "{a}");
        }
        for a in [
            "0.0.0.1",
            "1.2.3.4",
            "10.0.0.1",
            "127.0.0.1",
            "192.0.2.255",
            "223.255.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "::1",
            "fe80::1",
            "2001:db8::1",
            "feff::1",
            "::ffff:192.0.2.1",
        ] {
            assert!(!never_a_source(ip(a)), "{a}");
        }
    }

    #[test]
    fn ban_targets_refuse_what_is_never_a_source() {
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "224.0.0.0/4",
            "232.0.0.0/8",
            "::ffff:224.0.0.0/100",
            "::",
            "ff00::/8",
            "ff02::1",
            "ff02::/16",
        ] {
            let e = parse_ban_target(a).unwrap_err();
            assert!(matches!(e, NetError::NeverASource { .. }), "{a}: {e}");
            assert!(e.to_string().contains("never a packet's source"), "{e}");
        }
        for a in [
            "203.0.113.7",
            "192.0.0.0/2",
            "0.0.0.0/8",
            "240.0.0.0/4",
            "::/8",
            "fe00::/7",
            "2001:db8::/32",
        ] {
            assert!(parse_ban_target(a).is_ok(), "{a}");
        }
        // Still refused for the reasons every prefix is.
        assert!(matches!(
            parse_ban_target("::ffff:0:0/96"),
            Err(NetError::Everything { .. })
        ));
    }

    #[test]
    fn hostile_text_is_escaped_and_cut() {
        let long = format!("\u{1b}[31m{}", "9".repeat(500));
        let e = parse_net(&long).unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e}");
        assert!(e.len() < 300, "{e}");
    }

    #[test]
    fn server_written_addresses() {
        assert_eq!(parse_addr(b"192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(parse_addr(b"::ffff:192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(parse_addr(b"2001:db8::1"), Some(ip("2001:db8::1")));
        for bad in [
            &b""[..],
            b" 192.0.2.1",
            b"192.0.2.1:5060",
            b"\xff",
            &[b'1'; 46],
        ] {
            assert_eq!(parse_addr(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn host_and_display() {
        assert!(is_host(&net("192.0.2.1/32")));
        assert!(is_host(&net("::1/128")));
        assert!(!is_host(&net("192.0.2.0/24")));
        assert_eq!(DisplayNet(&net("192.0.2.1/32")).to_string(), "192.0.2.1");
        assert_eq!(DisplayNet(&net("192.0.2.0/24")).to_string(), "192.0.2.0/24");
        assert_eq!(
            DisplayNet(&net("2001:db8::/32")).to_string(),
            "2001:db8::/32"
        );
    }

    #[test]
    fn net_set_lookups() {
        let s = NetSet::new([
            net("10.0.0.0/8"),
            net("10.1.0.0/16"),
            net("192.0.2.7/32"),
            net("192.0.2.8/32"),
            net("2001:db8::/32"),
            net("::ffff:198.51.100.0/120"),
            net("10.0.0.0/8"),
        ]);
        assert_eq!(s.len(), 6);
        assert!(s.contains(ip("10.1.2.3")));
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        assert!(s.contains(ip("10.255.255.255")));
        assert!(!s.contains(ip("11.0.0.0")));
        assert!(!s.contains(ip("9.255.255.255")));
        assert!(s.contains(ip("192.0.2.7")) && s.contains(ip("192.0.2.8")));
        assert!(!s.contains(ip("192.0.2.6")) && !s.contains(ip("192.0.2.9")));
        assert!(s.contains(ip("198.51.100.200")));
        assert!(s.contains(ip("2001:db8:ffff::1")));
        assert!(!s.contains(ip("2001:db9::1")));
        assert!(!NetSet::default().contains(ip("10.0.0.1")));
        // Touching and nested ranges merge.
        assert_eq!(s.v4.len(), 3, "{:?}", s.v4);
        assert_eq!(s.overlapping(&net("10.2.0.0/16")), Some(net("10.0.0.0/8")));
        assert_eq!(s.overlapping(&net("0.0.0.0/1")), Some(net("10.0.0.0/8")));
        assert_eq!(
            s.overlapping(&net("192.0.2.0/24")),
            Some(net("192.0.2.7/32"))
        );
        assert_eq!(s.overlapping(&net("192.0.3.0/24")), None);
        assert_eq!(
            s.overlapping(&net("::ffff:0:0/96")),
            Some(net("10.0.0.0/8")),
            "a mapped prefix is compared as the IPv4 prefix it is"
        );
        assert_eq!(
            s.overlapping(&net("2001:db8:1::/48")),
            Some(net("2001:db8::/32"))
        );
        assert_eq!(s.overlapping(&net("2001::/16")), Some(net("2001:db8::/32")));
        assert_eq!(s.overlapping(&net("2002::/16")), None);
    }

    #[test]
    fn net_set_agrees_with_a_linear_scan() {
        // A deterministic pseudo-random mix of nested, touching and
        // disjoint networks, checked against the obvious answer.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut nets = Vec::new();
        for _ in 0..300 {
            let r = next();
            let len = 8 + (r % 25) as u8;
            let a = Ipv4Addr::from((r >> 32) as u32 & 0x0fff_ffff);
            nets.push(IpNet::V4(Ipv4Net::new(a, len).unwrap().trunc()));
        }
        let set = NetSet::new(nets.clone());
        for _ in 0..20_000 {
            let a = IpAddr::V4(Ipv4Addr::from((next() >> 32) as u32 & 0x0fff_ffff));
            assert_eq!(set.contains(a), nets.iter().any(|n| n.contains(&a)), "{a}");
        }
        for _ in 0..2_000 {
            let r = next();
            let q = IpNet::V4(
                Ipv4Net::new(
                    Ipv4Addr::from((r >> 32) as u32 & 0x0fff_ffff),
                    4 + (r % 29) as u8,
                )
                .unwrap()
                .trunc(),
            );
            let expect = nets
                .iter()
                .any(|n| n.contains(&q.network()) || q.contains(&n.network()));
            assert_eq!(set.overlapping(&q).is_some(), expect, "{q}");
        }
    }
}
