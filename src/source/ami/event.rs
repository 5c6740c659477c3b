//! What Asterisk's security events mean for sipwarden.
//!
//! Asterisk raises a security event (class `security`) for each
//! authentication outcome of its services, with the peer's address as it
//! saw it in `RemoteAddress` (`IPV4/UDP/203.0.113.7/5060`,
//! `IPV6/TCP/2001:db8::7/5061`, the transport left out when there is none):
//!
//! * `InvalidAccountID` (unknown user), `InvalidPassword`,
//!   `ChallengeResponseFailed` (a wrong digest) and `FailedACL` are
//!   failures, for the SIP services (`PJSIP`, `SIP`, `IAX2`) and for the
//!   manager itself (`AMI`: brute force against manager.conf's users).
//! * `ChallengeSent` is a challenge, not a failure.
//! * `SuccessfulAuth` with `UsingPassword: 1` is a success; a jail may
//!   trust the address for a while (`trust_registered`). Without a
//!   password (an endpoint identified by its address) it proves nothing.
//!
//! The address comes only from `RemoteAddress`, parsed strictly; never
//! from `AccountID`, `SessionID` or any other text, which an attacker
//! writes. A message that has `RemoteAddress` twice, or that misses the
//! fields every security event carries, is not counted: it is what a value
//! with a line break in it (an injection) would look like.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::frame::Message;
use crate::event::{FailureKind, canonical};

/// The Asterisk services whose security events are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// chan_pjsip.
    Pjsip,
    /// chan_sip.
    Sip,
    /// chan_iax2.
    Iax2,
    /// The manager interface itself.
    Ami,
}

impl Service {
    fn parse(v: &[u8]) -> Option<Service> {
        match v {
            b"PJSIP" => Some(Service::Pjsip),
            b"SIP" => Some(Service::Sip),
            b"IAX2" => Some(Service::Iax2),
            b"AMI" => Some(Service::Ami),
            _ => None,
        }
    }
}

/// What one message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal<'a> {
    /// A failure or a success from an address.
    Address {
        /// What happened.
        kind: FailureKind,
        /// The service.
        service: Service,
        /// The peer, from `RemoteAddress`.
        addr: IpAddr,
        /// `AccountID` (attacker text).
        account: Option<&'a [u8]>,
    },
    /// A security event of a kind sipwarden counts that cannot be read:
    /// not counted, but not silent either.
    Unreadable {
        /// The event's name.
        event: &'static str,
        /// What was wrong.
        why: Unreadable,
        /// The `RemoteAddress` value, cut short (attacker-reachable text:
        /// escape it to show it).
        raw: Option<Box<str>>,
    },
    /// Asterisk announces it is shutting down or restarting.
    Shutdown {
        /// `Shutdown` and `Restart`, as said (escape to show).
        detail: Box<str>,
    },
    /// Anything else: other events, other services, `ChallengeSent`,
    /// responses (`Ping: Pong`).
    Nothing,
}

/// Why a security event was not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// `RemoteAddress` missing or not `IPV4|IPV6/[transport/]address/port`.
    Address,
    /// `RemoteAddress`, `Service` or `Event` more than once.
    Twice,
    /// A field every such event carries is missing: the message was cut
    /// short by a line break in an earlier value.
    CutShort,
}

impl Unreadable {
    /// Says it in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Unreadable::Address => "whose RemoteAddress is not an address",
            Unreadable::Twice => "with a field given twice (a value with a line break in it?)",
            Unreadable::CutShort => {
                "cut short before its last fields (a value with a line break in it?)"
            }
        }
    }
}

/// The events sipwarden reads: name, what it means, and the fields that
/// come after every attacker-written one (present in every real event).
const EVENTS: [(&str, Option<FailureKind>, &[&str]); 6] = [
    (
        "InvalidAccountID",
        Some(FailureKind::UnknownUser),
        &["LocalAddress", "RemoteAddress"],
    ),
    (
        "InvalidPassword",
        Some(FailureKind::RegisterAuth),
        &["LocalAddress", "RemoteAddress"],
    ),
    (
        "ChallengeResponseFailed",
        Some(FailureKind::RegisterAuth),
        &["LocalAddress", "RemoteAddress", "ExpectedResponse"],
    ),
    (
        "FailedACL",
        Some(FailureKind::AclReject),
        &["LocalAddress", "RemoteAddress"],
    ),
    (
        "SuccessfulAuth",
        Some(FailureKind::Registered),
        &["LocalAddress", "RemoteAddress", "UsingPassword"],
    ),
    ("ChallengeSent", None, &[]),
];

/// Longest `RemoteAddress` read (`IPV6/WSS/` and a full IPv6 address with
/// a zone and a port fit well within).
const MAX_ADDRESS: usize = 96;

/// Parses a security event's `RemoteAddress` strictly:
/// `IPV4/` or `IPV6/`, an optional transport (`UDP`, `TCP`, `TLS`, `WS`,
/// `WSS`), the address of that family (IPv6 with or without brackets, a
/// zone dropped), a port. Anything else is not an address.
pub fn remote_address(v: &[u8]) -> Option<IpAddr> {
    if v.len() > MAX_ADDRESS || !v.is_ascii() {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.split('/');
    let family = parts.next()?;
    let mut next = parts.next()?;
    if matches!(next, "UDP" | "TCP" | "TLS" | "WS" | "WSS") {
        next = parts.next()?;
    }
    let port = parts.next()?;
    if parts.next().is_some()
        || port.is_empty()
        || port.len() > 5
        || !port.bytes().all(|b| b.is_ascii_digit())
        || port.parse::<u16>().is_err()
    {
        return None;
    }
    let addr = match family {
        "IPV4" => IpAddr::V4(next.parse::<Ipv4Addr>().ok()?),
        "IPV6" => {
            let inner = next
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(next);
            // IPv6 text (an IPv4-mapped one comes back as IPv4).
            if !inner.contains(':') {
                return None;
            }
            crate::net::parse_addr(inner.as_bytes())?
        }
        _ => return None,
    };
    // `::ffff:a.b.c.d` is the IPv4 peer the kernel sees.
    let addr = canonical(addr);
    if let IpAddr::V6(a) = addr
        && a == Ipv6Addr::UNSPECIFIED
    {
        return None;
    }
    Some(addr)
}

/// The value cut to 64 characters, for a report.
fn cut(v: &[u8]) -> Box<str> {
    let s = String::from_utf8_lossy(v);
    let end = s.char_indices().nth(64).map_or(s.len(), |(i, _)| i);
    Box::from(&s[..end])
}

/// Reads one message.
pub fn classify<'a>(m: &Message<'a>) -> Signal<'a> {
    let Some(name) = m.get("Event") else {
        return Signal::Nothing;
    };
    if name == b"Shutdown" {
        let field = |k| m.get(k).map(String::from_utf8_lossy).unwrap_or_default();
        let detail = format!(
            "Shutdown: {}, Restart: {}",
            field("Shutdown"),
            field("Restart")
        );
        return Signal::Shutdown {
            detail: cut(detail.as_bytes()),
        };
    }
    let Some(&(event, kind, required)) = EVENTS.iter().find(|(n, ..)| n.as_bytes() == name) else {
        return Signal::Nothing;
    };
    let Some(kind) = kind else {
        return Signal::Nothing; // ChallengeSent
    };
    // Security events come with the security class only: anything else
    // named so is not Asterisk's.
    let security = m.get("Privilege").is_some_and(|p| {
        p.split(|&c| c == b',')
            .any(|c| c.eq_ignore_ascii_case(b"security"))
    });
    let Some(service) = m.get("Service").and_then(Service::parse) else {
        return Signal::Nothing;
    };
    if !security {
        return Signal::Nothing;
    }
    let unreadable = |why, raw: Option<&[u8]>| Signal::Unreadable {
        event,
        why,
        raw: raw.map(cut),
    };
    let raw = m.get("RemoteAddress");
    if m.count("RemoteAddress") > 1 || m.count("Service") > 1 || m.count("Event") > 1 {
        return unreadable(Unreadable::Twice, raw);
    }
    if required.iter().any(|f| m.get(f).is_none()) {
        return unreadable(Unreadable::CutShort, raw);
    }
    let Some(addr) = raw.and_then(remote_address) else {
        return unreadable(Unreadable::Address, raw);
    };
    if kind == FailureKind::Registered && m.get("UsingPassword") != Some(b"1") {
        return Signal::Nothing;
    }
    Signal::Address {
        kind,
        service,
        addr,
        account: m.get("AccountID"),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn remote_addresses_as_asterisk_writes_them() {
        let ok = |s: &str, want: &str| {
            assert_eq!(
                remote_address(s.as_bytes()),
                Some(want.parse().unwrap()),
                "{s}"
            );
        };
        ok("IPV4/UDP/203.0.113.7/5060", "203.0.113.7");
        ok("IPV4/TCP/192.0.2.4/62389", "192.0.2.4");
        ok("IPV4/TLS/192.0.2.2/30245", "192.0.2.2");
        ok("IPV4/WSS/192.0.2.2/443", "192.0.2.2");
        ok("IPV4/192.0.2.9/5060", "192.0.2.9");
        ok("IPV6/UDP/2001:db8::7/5060", "2001:db8::7");
        ok("IPV6/UDP/[2001:db8::7]/5060", "2001:db8::7");
        ok("IPV6/WS/fe80::1%eth0/5060", "fe80::1");
        ok("IPV6/UDP/::ffff:192.0.2.1/5060", "192.0.2.1");
    }

    #[test]
    fn anything_else_is_not_an_address() {
        for s in [
            "",
            "203.0.113.7",
            "IPV4/UDP/203.0.113.7",
            "IPV4/UDP/203.0.113.7/",
            "IPV4/UDP/203.0.113.7/5060/x",
            "IPV4/UDP/203.0.113.7/65536",
            "IPV4/UDP/203.0.113.7/+5060",
            "IPV4/UDP/203.0.113.7 /5060",
            "IPV4/UDP/ 203.0.113.7/5060",
            "IPV4/SCTP/203.0.113.7/5060",
            "ipv4/UDP/203.0.113.7/5060",
            "IPV4/UDP/2001:db8::7/5060",
            "IPV6/UDP/203.0.113.7/5060",
            "IPV4/UDP/203.0.113.007/5060",
            "IPV4/UDP/host.example/5060",
            "IPV4/UDP/<unknown>/5060",
            "IPV6/UDP/::/5060",
            "IPV4/UDP/1.2.3.4/5060\",RemoteAddress=\"IPV4/UDP/5.6.7.8/1",
            "IPV4/UDP/1.2.3.4\r\n/5060",
            "IPV4/UDP/١.٢.٣.٤/5060",
        ] {
            assert_eq!(remote_address(s.as_bytes()), None, "{s:?}");
        }
        assert_eq!(remote_address(b"IPV4/UDP/\xff.2.3.4/5060"), None);
        let long = format!("IPV6/UDP/{}/5060", "0".repeat(200));
        assert_eq!(remote_address(long.as_bytes()), None);
    }

    fn msg(s: &str) -> Message<'_> {
        Message {
            block: s.as_bytes(),
        }
    }

    /// An event as Asterisk writes it, fields in its order.
    pub(crate) fn event(name: &str, service: &str, account: &str, remote: &str) -> String {
        let mut s = format!(
            "Event: {name}\r\nPrivilege: security,all\r\nEventTV: 2026-12-01T02:15:00.000+0000\r\nSeverity: Error\r\nService: {service}\r\nEventVersion: 1\r\nAccountID: {account}\r\nSessionID: 0x7f8ecc0421f8\r\nLocalAddress: IPV4/UDP/192.0.2.1/5060\r\nRemoteAddress: {remote}\r\n"
        );
        match name {
            "ChallengeResponseFailed" => s.push_str(
                "Challenge: 1432446136/6d16ccf2\r\nResponse: 849dfcf1\r\nExpectedResponse: \r\n",
            ),
            "SuccessfulAuth" => s.push_str("UsingPassword: 1\r\n"),
            "ChallengeSent" => s.push_str("Challenge: 41d26de5\r\n"),
            _ => {}
        }
        s
    }

    #[test]
    fn the_four_failures_for_the_four_services() {
        for (name, kind) in [
            ("InvalidAccountID", FailureKind::UnknownUser),
            ("InvalidPassword", FailureKind::RegisterAuth),
            ("ChallengeResponseFailed", FailureKind::RegisterAuth),
            ("FailedACL", FailureKind::AclReject),
        ] {
            for (svc, service) in [
                ("PJSIP", Service::Pjsip),
                ("SIP", Service::Sip),
                ("IAX2", Service::Iax2),
                ("AMI", Service::Ami),
            ] {
                let text = event(name, svc, "1001", "IPV4/UDP/203.0.113.7/5060");
                assert_eq!(
                    classify(&msg(&text)),
                    Signal::Address {
                        kind,
                        service,
                        addr: "203.0.113.7".parse().unwrap(),
                        account: Some(b"1001"),
                    },
                    "{name} {svc}"
                );
            }
        }
    }

    #[test]
    fn challenges_other_services_and_other_events_say_nothing() {
        let t = event(
            "ChallengeSent",
            "PJSIP",
            "1001",
            "IPV4/UDP/203.0.113.7/5060",
        );
        assert_eq!(classify(&msg(&t)), Signal::Nothing);
        let t = event(
            "InvalidPassword",
            "TEST",
            "1001",
            "IPV4/UDP/203.0.113.7/5060",
        );
        assert_eq!(classify(&msg(&t)), Signal::Nothing);
        let t = event(
            "RequestBadFormat",
            "PJSIP",
            "1",
            "IPV4/UDP/203.0.113.7/5060",
        );
        assert_eq!(classify(&msg(&t)), Signal::Nothing);
        let t = event("InvalidPassword", "PJSIP", "1", "IPV4/UDP/203.0.113.7/5060")
            .replace("Privilege: security,all", "Privilege: call,all");
        assert_eq!(
            classify(&msg(&t)),
            Signal::Nothing,
            "not the security class"
        );
        assert_eq!(
            classify(&msg("Response: Success\r\nPing: Pong\r\nTimestamp: 1.2")),
            Signal::Nothing
        );
        // Without a password, a success proves nothing.
        let t = event("SuccessfulAuth", "PJSIP", "1", "IPV4/UDP/203.0.113.7/5060")
            .replace("UsingPassword: 1", "UsingPassword: 0");
        assert_eq!(classify(&msg(&t)), Signal::Nothing);
        let t = event("SuccessfulAuth", "PJSIP", "1", "IPV4/UDP/203.0.113.7/5060");
        assert!(matches!(
            classify(&msg(&t)),
            Signal::Address {
                kind: FailureKind::Registered,
                ..
            }
        ));
    }

    #[test]
    fn shutdown_is_told() {
        let s = classify(&msg(
            "Event: Shutdown\r\nPrivilege: system,all\r\nShutdown: Cleanly\r\nRestart: True",
        ));
        assert_eq!(
            s,
            Signal::Shutdown {
                detail: "Shutdown: Cleanly, Restart: True".into()
            }
        );
    }

    #[test]
    fn suspicious_shapes_are_unreadable() {
        // RemoteAddress twice: a line break in AccountID, or a forged tail.
        let t = event(
            "InvalidPassword",
            "PJSIP",
            "x\r\nRemoteAddress: IPV4/UDP/198.51.100.1/5060",
            "IPV4/UDP/203.0.113.7/5060",
        );
        assert!(matches!(
            classify(&msg(&t)),
            Signal::Unreadable {
                why: Unreadable::Twice,
                ..
            }
        ));
        // Cut short: no LocalAddress / RemoteAddress after AccountID.
        let t =
            "Event: InvalidPassword\r\nPrivilege: security,all\r\nService: PJSIP\r\nAccountID: x";
        assert!(matches!(
            classify(&msg(t)),
            Signal::Unreadable {
                why: Unreadable::CutShort,
                ..
            }
        ));
        let t = event("InvalidPassword", "PJSIP", "1", "IPV4/UDP/attacker/5060");
        assert_eq!(
            classify(&msg(&t)),
            Signal::Unreadable {
                event: "InvalidPassword",
                why: Unreadable::Address,
                raw: Some("IPV4/UDP/attacker/5060".into()),
            }
        );
    }
}
