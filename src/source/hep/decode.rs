//! The HEP decoder: bytes in, a [`HepPacket`] borrowing from them out, or a
//! typed [`HepError`]. Pure and bounded: one pass over at most
//! [`MAX_FRAME`] bytes, no allocation, no panics whatever the input.
//!
//! HEPv3 (the `HEP3` header, then chunks of vendor id, type id and length)
//! carries what the capturing server filled in: the IP family and protocol,
//! source and destination address and port, the capture time, the capture
//! agent's id, an authentication key, the payload's type and the payload.
//! HEPv1 and HEPv2 (a fixed header: version, header length, family,
//! protocol, ports, addresses, and in v2 the capture time and id) are read
//! too; they carry no authentication key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Largest HEP packet read: a HEPv3 length is 16 bits.
pub const MAX_FRAME: usize = 65_535;

/// HEPv3's generic vendor id: the chunk types below are this vendor's.
const GENERIC: u16 = 0;

/// The HEP payload type of SIP.
pub const PAYLOAD_SIP: u8 = 1;

/// The transport of a captured message, from the HEP protocol chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// IPPROTO_UDP.
    Udp,
    /// IPPROTO_TCP (also WebSocket, in the capture agents that mark it so).
    Tcp,
    /// TLS, which capture agents mark with IPPROTO_IDP (22), a number no
    /// SIP travels over (seen from Kamailio 5.6's siptrace; FreeSWITCH's
    /// Sofia and reSIProcate write the same).
    Tls,
    /// IPPROTO_SCTP.
    Sctp,
    /// Any other number, as sent.
    Other(u8),
}

impl Transport {
    /// The protocol chunk's number as capture agents use it.
    pub fn from_number(n: u8) -> Transport {
        match n {
            17 => Transport::Udp,
            6 => Transport::Tcp,
            22 => Transport::Tls,
            132 => Transport::Sctp,
            other => Transport::Other(other),
        }
    }

    /// A short name for logs and status.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Sctp => "SCTP",
            Transport::Other(_) => "other",
        }
    }
}

/// One decoded HEP packet; every slice borrows from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HepPacket<'a> {
    /// 1, 2 or 3.
    pub version: u8,
    /// The IP protocol chunk's number, as sent.
    pub protocol: u8,
    /// Where the captured message came from (its IP family is the family
    /// chunk's).
    pub src: (IpAddr, u16),
    /// Where it went.
    pub dst: (IpAddr, u16),
    /// Capture time: seconds and microseconds since the epoch, by the
    /// sender's clock.
    pub time: Option<(u32, u32)>,
    /// The capture agent's id.
    pub capture_id: Option<u32>,
    /// The authentication key chunk (HEPv3 only).
    pub auth_key: Option<&'a [u8]>,
    /// The payload type chunk (1: SIP); `None` when absent (HEPv1/v2
    /// carry SIP only).
    pub payload_type: Option<u8>,
    /// Whether the payload chunk was the compressed one (not read).
    pub compressed: bool,
    /// The captured message.
    pub payload: &'a [u8],
}

impl HepPacket<'_> {
    /// The transport the captured message travelled over.
    pub fn transport(&self) -> Transport {
        Transport::from_number(self.protocol)
    }

    /// Whether the payload is an uncompressed SIP message.
    pub fn is_sip(&self) -> bool {
        !self.compressed && self.payload_type.is_none_or(|t| t == PAYLOAD_SIP)
    }
}

/// Why bytes are not a HEP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HepError {
    /// Not `HEP3`, nor a HEPv1/v2 version byte.
    #[error("not a HEP packet (no HEP3 header, no HEPv1/v2 version byte)")]
    NotHep,
    /// The packet ends before its header or a chunk does.
    #[error("truncated: {needed} bytes needed, {got} there")]
    Truncated {
        /// Bytes the header or chunk says there are.
        needed: usize,
        /// Bytes there are.
        got: usize,
    },
    /// A length field smaller than its own header.
    #[error("a length of {0} is shorter than its header")]
    BadLength(usize),
    /// An address family other than IPv4 (2) and IPv6 (10).
    #[error("address family {0} (expected 2, IPv4, or 10, IPv6)")]
    Family(u8),
    /// A chunk of a fixed size with another size.
    #[error("chunk type {kind} has {len} data bytes, expected {expected}")]
    ChunkSize {
        /// The chunk type.
        kind: u16,
        /// Its data length.
        len: usize,
        /// What the type needs.
        expected: usize,
    },
    /// A required chunk is missing.
    #[error("no {0} chunk")]
    Missing(&'static str),
    /// Source and destination addresses of two families.
    #[error("the family chunk says {family}, but the addresses are of the other family")]
    MixedFamily {
        /// The family chunk's value.
        family: u8,
    },
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn truncated(needed: usize, got: usize) -> HepError {
    HepError::Truncated { needed, got }
}

/// The length of the HEP packet at the start of `buf`, once its header is
/// there: `Ok(None)` when more bytes are needed to tell (a stream's
/// framing), an error when the start is not HEP.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, HepError> {
    if buf.len() < 6 {
        // Refuse early what can never become HEP3.
        return if b"HEP3".starts_with(&buf[..buf.len().min(4)]) {
            Ok(None)
        } else {
            Err(HepError::NotHep)
        };
    }
    if &buf[..4] != b"HEP3" {
        return Err(HepError::NotHep);
    }
    let len = usize::from(be16(buf, 4).ok_or(truncated(6, buf.len()))?);
    if len < 6 {
        return Err(HepError::BadLength(len));
    }
    Ok(Some(len))
}

/// Decodes one HEP packet (v3, or v1/v2).
pub fn decode(buf: &[u8]) -> Result<HepPacket<'_>, HepError> {
    match buf.first() {
        Some(b'H') => decode_v3(buf),
        Some(1 | 2) => decode_v2(buf),
        _ => Err(HepError::NotHep),
    }
}

fn fixed<const N: usize>(kind: u16, data: &[u8]) -> Result<[u8; N], HepError> {
    data.try_into().map_err(|_| HepError::ChunkSize {
        kind,
        len: data.len(),
        expected: N,
    })
}

fn decode_v3(buf: &[u8]) -> Result<HepPacket<'_>, HepError> {
    let total = frame_len(buf)?.ok_or(truncated(6, buf.len()))?;
    let body = buf.get(..total).ok_or(truncated(total, buf.len()))?;
    let mut family = None;
    let mut protocol = None;
    let (mut src4, mut dst4, mut src6, mut dst6) = (None, None, None, None);
    let (mut sport, mut dport) = (None, None);
    let (mut secs, mut usecs) = (None, None);
    let mut p = HepPacket {
        version: 3,
        protocol: 0,
        src: (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        dst: (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        time: None,
        capture_id: None,
        auth_key: None,
        payload_type: None,
        compressed: false,
        payload: &[],
    };
    let mut payload = None;
    let mut at = 6;
    // Every chunk is at least 6 bytes: the walk ends within total / 6 steps.
    while at < total {
        let vendor = be16(body, at).ok_or(truncated(at + 6, total))?;
        let kind = be16(body, at + 2).ok_or(truncated(at + 6, total))?;
        let len = usize::from(be16(body, at + 4).ok_or(truncated(at + 6, total))?);
        if len < 6 {
            return Err(HepError::BadLength(len));
        }
        let data = body
            .get(at + 6..at + len)
            .ok_or(truncated(at + len, total))?;
        at += len;
        if vendor != GENERIC {
            continue; // another vendor's chunk: not ours to read
        }
        match kind {
            0x01 => family = Some(fixed::<1>(kind, data)?[0]),
            0x02 => protocol = Some(fixed::<1>(kind, data)?[0]),
            0x03 => src4 = Some(Ipv4Addr::from(fixed::<4>(kind, data)?)),
            0x04 => dst4 = Some(Ipv4Addr::from(fixed::<4>(kind, data)?)),
            0x05 => src6 = Some(Ipv6Addr::from(fixed::<16>(kind, data)?)),
            0x06 => dst6 = Some(Ipv6Addr::from(fixed::<16>(kind, data)?)),
            0x07 => sport = Some(u16::from_be_bytes(fixed(kind, data)?)),
            0x08 => dport = Some(u16::from_be_bytes(fixed(kind, data)?)),
            0x09 => secs = Some(u32::from_be_bytes(fixed(kind, data)?)),
            0x0a => usecs = Some(u32::from_be_bytes(fixed(kind, data)?)),
            0x0b => p.payload_type = Some(fixed::<1>(kind, data)?[0]),
            0x0c => p.capture_id = be32(data).or(p.capture_id),
            0x0e => p.auth_key = Some(data),
            0x0f => payload = Some((data, false)),
            0x10 => payload = Some((data, true)),
            _ => {}
        }
    }
    let family = family.ok_or(HepError::Missing("IP family"))?;
    (p.src.0, p.dst.0) = match family {
        2 => match (src4, dst4) {
            (Some(s), Some(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
            _ if src6.is_some() || dst6.is_some() => {
                return Err(HepError::MixedFamily { family });
            }
            (None, _) => return Err(HepError::Missing("IPv4 source")),
            (_, None) => return Err(HepError::Missing("IPv4 destination")),
        },
        10 => match (src6, dst6) {
            (Some(s), Some(d)) => (IpAddr::V6(s), IpAddr::V6(d)),
            _ if src4.is_some() || dst4.is_some() => {
                return Err(HepError::MixedFamily { family });
            }
            (None, _) => return Err(HepError::Missing("IPv6 source")),
            (_, None) => return Err(HepError::Missing("IPv6 destination")),
        },
        other => return Err(HepError::Family(other)),
    };
    p.src.1 = sport.ok_or(HepError::Missing("source port"))?;
    p.dst.1 = dport.ok_or(HepError::Missing("destination port"))?;
    p.protocol = protocol.ok_or(HepError::Missing("IP protocol"))?;
    p.time = secs.map(|s| (s, usecs.unwrap_or(0)));
    let (data, compressed) = payload.ok_or(HepError::Missing("payload"))?;
    p.payload = data;
    p.compressed = compressed;
    Ok(p)
}

/// HEPv1/v2: version, header length, family, protocol, source and
/// destination port (big endian), source and destination address; v2 then
/// the capture time (seconds, microseconds) and capture id, in the
/// sender's byte order (little endian on the machines that send it).
fn decode_v2(buf: &[u8]) -> Result<HepPacket<'_>, HepError> {
    let version = buf[0];
    let hl = usize::from(*buf.get(1).ok_or(truncated(2, buf.len()))?);
    let family = *buf.get(2).ok_or(truncated(3, buf.len()))?;
    let protocol = *buf.get(3).ok_or(truncated(4, buf.len()))?;
    let alen = match family {
        2 => 4,
        10 => 16,
        other => return Err(HepError::Family(other)),
    };
    let ip_end = 8 + 2 * alen;
    if hl != ip_end {
        return Err(HepError::BadLength(hl));
    }
    let head = buf.get(..ip_end).ok_or(truncated(ip_end, buf.len()))?;
    let addr = |b: &[u8]| -> IpAddr {
        match <[u8; 16]>::try_from(b) {
            Ok(a) => IpAddr::V6(Ipv6Addr::from(a)),
            Err(_) => {
                let mut a = [0u8; 4];
                a.copy_from_slice(&b[..4]);
                IpAddr::V4(Ipv4Addr::from(a))
            }
        }
    };
    let sport = be16(head, 4).ok_or(truncated(8, buf.len()))?;
    let dport = be16(head, 6).ok_or(truncated(8, buf.len()))?;
    let src = addr(&head[8..8 + alen]);
    let dst = addr(&head[8 + alen..ip_end]);
    let (time, capture_id, rest) = if version == 2 {
        let t = buf
            .get(ip_end..ip_end + 12)
            .ok_or(truncated(ip_end + 12, buf.len()))?;
        let le = |i: usize| u32::from_le_bytes([t[i], t[i + 1], t[i + 2], t[i + 3]]);
        let id = u32::from(u16::from_le_bytes([t[8], t[9]]));
        (Some((le(0), le(4))), Some(id), &buf[ip_end + 12..])
    } else {
        (None, None, &buf[ip_end..])
    };
    Ok(HepPacket {
        version,
        protocol,
        src: (src, sport),
        dst: (dst, dport),
        time,
        capture_id,
        auth_key: None,
        payload_type: None,
        compressed: false,
        payload: rest,
    })
}

/// Builds a HEPv3 packet (tests, benches, fuzz seeds, and the test
/// senders): `chunks` are (type, data) of the generic vendor.
pub fn encode_v3(chunks: &[(u16, &[u8])]) -> Vec<u8> {
    let mut out = b"HEP3\0\0".to_vec();
    for (kind, data) in chunks {
        out.extend_from_slice(&GENERIC.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        let len = u16::try_from(6 + data.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(data);
    }
    let total = u16::try_from(out.len()).unwrap_or(u16::MAX);
    out[4..6].copy_from_slice(&total.to_be_bytes());
    out
}

/// A whole HEPv3 SIP packet from `src` to `dst` over `protocol`, with an
/// authentication key when given.
pub fn encode_sip(
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    protocol: u8,
    auth_key: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let (family, s, d): (u8, Vec<u8>, Vec<u8>) = match (src.0, dst.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (2, s.octets().to_vec(), d.octets().to_vec()),
        (s, d) => (10, to_v6(s).octets().to_vec(), to_v6(d).octets().to_vec()),
    };
    let (sk, dk) = if family == 2 { (3, 4) } else { (5, 6) };
    let sp = src.1.to_be_bytes();
    let dp = dst.1.to_be_bytes();
    let secs = 1_795_621_254u32.to_be_bytes();
    let usecs = 1u32.to_be_bytes();
    let id = 2001u32.to_be_bytes();
    let mut chunks: Vec<(u16, &[u8])> = vec![
        (1, std::slice::from_ref(&family)),
        (2, std::slice::from_ref(&protocol)),
        (sk, &s),
        (dk, &d),
        (7, &sp),
        (8, &dp),
        (9, &secs),
        (10, &usecs),
        (11, &[PAYLOAD_SIP]),
        (12, &id),
    ];
    if let Some(k) = auth_key {
        chunks.push((14, k));
    }
    chunks.push((15, payload));
    encode_v3(&chunks)
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIP: &[u8] = b"REGISTER sip:x SIP/2.0\r\nCall-ID: a\r\nCSeq: 1 REGISTER\r\n\r\n";

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn decodes_every_chunk_of_a_hep3_sip_packet() {
        let pkt = encode_sip(
            (v4("203.0.113.7"), 5062),
            (v4("10.0.0.1"), 5061),
            22,
            Some(b"secret"),
            SIP,
        );
        let p = decode(&pkt).unwrap();
        assert_eq!(p.version, 3);
        assert_eq!(p.src, (v4("203.0.113.7"), 5062));
        assert_eq!(p.dst, (v4("10.0.0.1"), 5061));
        assert_eq!(p.transport(), Transport::Tls);
        assert_eq!(p.time, Some((1_795_621_254, 1)));
        assert_eq!(p.capture_id, Some(2001));
        assert_eq!(p.auth_key, Some(&b"secret"[..]));
        assert_eq!(p.payload_type, Some(PAYLOAD_SIP));
        assert!(p.is_sip());
        assert_eq!(p.payload, SIP);
        assert_eq!(frame_len(&pkt), Ok(Some(pkt.len())));
    }

    #[test]
    fn decodes_ipv6_and_skips_other_vendors_chunks() {
        let s: IpAddr = "2001:db8::7".parse().unwrap();
        let d: IpAddr = "2001:db8::1".parse().unwrap();
        let mut pkt = encode_sip((s, 5060), (d, 5060), 17, None, SIP);
        // A vendor chunk (vendor 0x0022, type 0x0001) appended.
        pkt.extend_from_slice(&[0, 0x22, 0, 1, 0, 8, 0xde, 0xad]);
        let total = pkt.len() as u16;
        pkt[4..6].copy_from_slice(&total.to_be_bytes());
        let p = decode(&pkt).unwrap();
        assert_eq!((p.src.0, p.dst.0, p.transport()), (s, d, Transport::Udp));
        assert_eq!(p.auth_key, None);
    }

    #[test]
    fn refuses_broken_packets_with_a_reason() {
        let good = encode_sip((v4("192.0.2.1"), 1), (v4("192.0.2.2"), 2), 17, None, SIP);
        assert_eq!(decode(b""), Err(HepError::NotHep));
        assert_eq!(decode(b"HTTP/1.1 200"), Err(HepError::NotHep));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(HepError::Truncated { .. })
        ));
        // A chunk whose length runs past the packet.
        let mut bad = good.clone();
        bad[6 + 4..6 + 6].copy_from_slice(&200u16.to_be_bytes());
        assert!(matches!(decode(&bad), Err(HepError::Truncated { .. })));
        // A chunk length below its header (would never advance).
        let mut bad = good.clone();
        bad[6 + 4..6 + 6].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(decode(&bad), Err(HepError::BadLength(3)));
        // A packet length below the header.
        let mut bad = good.clone();
        bad[4..6].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(decode(&bad), Err(HepError::BadLength(2)));
        // An address chunk of the wrong size.
        let pkt = encode_v3(&[(1, &[2]), (3, &[1, 2, 3])]);
        assert!(matches!(
            decode(&pkt),
            Err(HepError::ChunkSize { kind: 3, .. })
        ));
        // Missing pieces.
        let pkt = encode_v3(&[(2, &[17]), (15, SIP)]);
        assert_eq!(decode(&pkt), Err(HepError::Missing("IP family")));
        let pkt = encode_v3(&[(1, &[2]), (3, &[1, 2, 3, 4]), (4, &[1, 2, 3, 5])]);
        assert_eq!(decode(&pkt), Err(HepError::Missing("source port")));
        let pkt = encode_v3(&[(1, &[7]), (15, SIP)]);
        assert_eq!(decode(&pkt), Err(HepError::Family(7)));
        let pkt = encode_v3(&[(1, &[10]), (3, &[1, 2, 3, 4]), (4, &[1, 2, 3, 5])]);
        assert_eq!(decode(&pkt), Err(HepError::MixedFamily { family: 10 }));
    }

    #[test]
    fn stream_framing_needs_six_bytes_and_refuses_other_starts() {
        assert_eq!(frame_len(b""), Ok(None));
        assert_eq!(frame_len(b"HE"), Ok(None));
        assert_eq!(frame_len(b"HEP3\0"), Ok(None));
        assert_eq!(frame_len(b"GET"), Err(HepError::NotHep));
        assert_eq!(frame_len(b"HEP3\x01\x00"), Ok(Some(256)));
        assert_eq!(frame_len(b"HEP3\x00\x01"), Err(HepError::BadLength(1)));
    }

    #[test]
    fn decodes_hep2() {
        let mut pkt = vec![2, 16, 2, 17];
        pkt.extend_from_slice(&5062u16.to_be_bytes());
        pkt.extend_from_slice(&5060u16.to_be_bytes());
        pkt.extend_from_slice(&[198, 51, 100, 9, 10, 0, 0, 1]);
        pkt.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        pkt.extend_from_slice(&5u32.to_le_bytes());
        pkt.extend_from_slice(&7u16.to_le_bytes());
        pkt.extend_from_slice(&[0, 0]);
        pkt.extend_from_slice(SIP);
        let p = decode(&pkt).unwrap();
        assert_eq!(p.version, 2);
        assert_eq!(p.src, (v4("198.51.100.9"), 5062));
        assert_eq!(p.dst, (v4("10.0.0.1"), 5060));
        assert_eq!(p.time, Some((1_700_000_000, 5)));
        assert_eq!(p.capture_id, Some(7));
        assert_eq!(p.payload, SIP);
        assert!(p.is_sip());
        // A wrong header length, a cut time header.
        pkt[1] = 20;
        assert_eq!(decode(&pkt), Err(HepError::BadLength(20)));
        assert!(matches!(
            decode(
                &pkt[..20]
                    .iter()
                    .copied()
                    .enumerate()
                    .map(|(i, b)| if i == 1 { 16 } else { b })
                    .collect::<Vec<_>>()
            ),
            Err(HepError::Truncated { .. })
        ));
    }
}
