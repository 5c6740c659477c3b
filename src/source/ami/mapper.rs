//! What one AMI message means for one jail: an [`AmiMapper`] turns a
//! message into a failure event (or a success, for `trust_registered`),
//! counted at its arrival.
//!
//! Pure and synchronous, apart from the connection in `mod.rs`: the unit
//! tests and the fuzz target drive it without a socket. What a message's
//! fields say is `event.rs`.

use std::net::IpAddr;

use super::event::{Service, Signal, Unreadable, classify};
use super::frame::{Message, MessageBuffer};
use crate::event::{FailureEvent, JailId, Time, escape_text};

/// sipwarden's own login, as Asterisk reports it (a `SuccessfulAuth` of
/// service `AMI` for its user, from the address it connected from): never
/// counted, never trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnLogin {
    /// The `username` sipwarden logs in with.
    pub username: String,
    /// The local address of its connection.
    pub local: IpAddr,
}

/// Turns messages into failure events for one jail.
#[derive(Clone, Debug)]
pub struct AmiMapper {
    /// The jail the events count in.
    pub jail: JailId,
    /// This connection's own login, once connected.
    pub own: Option<OwnLogin>,
    /// Messages left to distrust after a security event cut short: what
    /// follows may be the rest of a value with a line break in it, made to
    /// look like events. Ends early at the tail of the cut event (a
    /// message whose first line is neither `Event` nor `Response`).
    after_cut: u8,
}

/// Messages distrusted after a security event cut short, at most.
const AFTER_CUT: u8 = 16;

/// What one message means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// Nothing to count.
    Nothing,
    /// sipwarden's own login (or a failure of it from its own address).
    OwnLogin,
    /// A failure (or a success) to count.
    Event(FailureEvent),
    /// A security event that could not be counted; the source logs it
    /// (rate-limited).
    Unreadable {
        /// The event.
        event: &'static str,
        /// Why.
        why: Unreadable,
        /// `RemoteAddress` as given (attacker-reachable: escape it).
        raw: Option<Box<str>>,
    },
    /// A security event that followed one cut short: not counted.
    AfterCut,
    /// Asterisk is shutting down or restarting.
    Shutdown(Box<str>),
}

impl AmiMapper {
    /// A mapper for jail `jail`, before the connection is made.
    pub fn new(jail: JailId) -> AmiMapper {
        AmiMapper {
            jail,
            own: None,
            after_cut: 0,
        }
    }

    /// What one message means, at its arrival `now`.
    pub fn read(&mut self, m: &Message<'_>, now: Time) -> Mapped {
        let after_cut = self.after_cut > 0;
        if after_cut {
            let head = m.first_name();
            let tail = !head.is_some_and(|h| {
                h.eq_ignore_ascii_case(b"Event") || h.eq_ignore_ascii_case(b"Response")
            });
            self.after_cut = if tail { 0 } else { self.after_cut - 1 };
        }
        match classify(m) {
            Signal::Nothing => Mapped::Nothing,
            Signal::Shutdown { detail } => Mapped::Shutdown(detail),
            Signal::Unreadable { event, why, raw } => {
                if why == Unreadable::CutShort {
                    self.after_cut = AFTER_CUT;
                }
                Mapped::Unreadable { event, why, raw }
            }
            Signal::Address { .. } if after_cut => Mapped::AfterCut,
            // A forged or misread address: counting it could only ban
            // nobody (or, for `0.0.0.0`, look like everybody).
            Signal::Address { addr, .. } if crate::net::never_a_source(addr) => Mapped::Nothing,
            Signal::Address {
                kind,
                service,
                addr,
                account,
            } => {
                if service == Service::Ami
                    && let Some(own) = &self.own
                    && addr == own.local
                    && account == Some(own.username.as_bytes())
                {
                    return Mapped::OwnLogin;
                }
                Mapped::Event(FailureEvent {
                    time: now,
                    jail: self.jail,
                    addr,
                    kind,
                    user: account.map(user),
                    scanner: false,
                })
            }
        }
    }
}

/// `AccountID` as the event's user: lossy UTF-8, at most 256 characters.
fn user(v: &[u8]) -> Box<str> {
    let s = String::from_utf8_lossy(v);
    let end = s.char_indices().nth(256).map_or(s.len(), |(i, _)| i);
    Box::from(&s[..end])
}

/// Says why an event was not counted, its text escaped.
pub(super) fn unreadable_text(event: &str, why: Unreadable, raw: Option<&str>) -> String {
    match raw {
        Some(r) => format!(
            "a {event} event {} (RemoteAddress \"{}\")",
            why.as_str(),
            escape_text(r, 64)
        ),
        None => format!("a {event} event {}", why.as_str()),
    }
}

/// The fuzz target's body, also replayed by `cargo test` over the fuzz
/// corpus: feeds arbitrary bytes through the banner, the framing and the
/// mapping, split at an arbitrary point. Must never panic.
pub fn fuzz_ami(data: &[u8]) {
    let mut mapper = AmiMapper::new(JailId(0));
    mapper.own = Some(OwnLogin {
        username: "sipwarden".into(),
        local: IpAddr::from([127, 0, 0, 1]),
    });
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut mb = MessageBuffer::default();
    let mut banner = false;
    for part in [&data[..split], &data[split..]] {
        mb.extend(part);
        if !banner {
            match mb.banner() {
                Ok(Some(_)) => banner = true,
                Ok(None) => continue,
                Err(_) => return,
            }
        }
        let r = mb.drain(|m| {
            if let Mapped::Event(ev) = mapper.read(&m, Time(0)) {
                // The address came from RemoteAddress: it is one, and the
                // message holds it once.
                assert!(ev.addr.to_string().parse::<IpAddr>().is_ok());
                assert_eq!(m.count("RemoteAddress"), 1);
            }
            let _ = m.first_name();
        });
        if r.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FailureKind;

    fn event(name: &str, service: &str, account: &str, remote: &str) -> String {
        super::super::event::tests::event(name, service, account, remote) + "\r\n"
    }

    fn mapper() -> AmiMapper {
        let mut m = AmiMapper::new(JailId(3));
        m.own = Some(OwnLogin {
            username: "sipwarden".into(),
            local: "192.0.2.50".parse().unwrap(),
        });
        m
    }

    fn replay(m: &mut AmiMapper, stream: &str, step: usize) -> Vec<Mapped> {
        let mut mb = MessageBuffer::default();
        let mut out = Vec::new();
        for chunk in stream.as_bytes().chunks(step.max(1)) {
            mb.extend(chunk);
            mb.drain(|msg| out.push(m.read(&msg, Time(7)))).unwrap();
        }
        out
    }

    fn events(out: &[Mapped]) -> Vec<(FailureKind, String, Option<String>)> {
        out.iter()
            .filter_map(|o| match o {
                Mapped::Event(e) => Some((
                    e.kind,
                    e.addr.to_string(),
                    e.user.as_deref().map(str::to_string),
                )),
                _ => None,
            })
            .collect()
    }

    /// The corpus's Asterisk security log lines (fail2ban's samples, real
    /// values), written as the AMI events they were: each is counted for
    /// its RemoteAddress, never for the addresses in other fields.
    #[test]
    fn corpus_values_as_ami_events() {
        let stream = [
            event(
                "InvalidAccountID",
                "SIP",
                "00972599580679",
                "IPV4/UDP/1.2.3.4/5070",
            ),
            event(
                "InvalidPassword",
                "SIP",
                "972592891005",
                "IPV4/UDP/141.255.164.106/5084",
            ),
            event("FailedACL", "SIP", "", "IPV4/UDP/50.30.42.14/5066"),
            event(
                "ChallengeResponseFailed",
                "PJSIP",
                "<unknown>",
                "IPV4/TLS/192.0.2.2/30245",
            ),
            event(
                "InvalidAccountID",
                "PJSIP",
                "70000180",
                "IPV4/UDP/10.250.251.252/5061",
            ),
            event("FailedACL", "AMI", "admin", "IPV4/TCP/192.0.2.4/62389"),
        ]
        .concat();
        for step in [1, 5, stream.len()] {
            let got = events(&replay(&mut mapper(), &stream, step));
            assert_eq!(
                got,
                vec![
                    (
                        FailureKind::UnknownUser,
                        "1.2.3.4".into(),
                        Some("00972599580679".into())
                    ),
                    (
                        FailureKind::RegisterAuth,
                        "141.255.164.106".into(),
                        Some("972592891005".into())
                    ),
                    (
                        FailureKind::AclReject,
                        "50.30.42.14".into(),
                        Some("".into())
                    ),
                    (
                        FailureKind::RegisterAuth,
                        "192.0.2.2".into(),
                        Some("<unknown>".into())
                    ),
                    (
                        FailureKind::UnknownUser,
                        "10.250.251.252".into(),
                        Some("70000180".into())
                    ),
                    (
                        FailureKind::AclReject,
                        "192.0.2.4".into(),
                        Some("admin".into())
                    ),
                ],
                "step {step}"
            );
        }
    }

    /// The corpus's injection attempts (a SessionID with quotes and a
    /// second RemoteAddress, a Cyrillic SessionID) and hostile values: the
    /// address is only ever RemoteAddress's.
    #[test]
    fn hostile_values_never_give_an_address() {
        let m = &mut mapper();
        let inj = event(
            "InvalidAccountID",
            "PJSIP",
            "70000180",
            "IPV4/UDP/10.250.251.252/5061",
        )
        .replace(
            "SessionID: 0x7f8ecc0421f8",
            "SessionID: \",LocalAddress=\"IPV4/UDP/127.0.0.1/5060\",RemoteAddress=\"IPV4/UDP/5.6.7.8/1111\"",
        );
        let cyr = event(
            "InvalidAccountID",
            "PJSIP",
            "Негодяй",
            "IPV4/UDP/10.250.251.252/5061",
        );
        let huge = event(
            "InvalidPassword",
            "PJSIP",
            &"1.2.3.4 ".repeat(500),
            "IPV4/UDP/203.0.113.9/5060",
        );
        let got = events(&replay(m, &(inj + &cyr + &huge), 7));
        assert_eq!(got.len(), 3);
        assert!(got[..2].iter().all(|g| g.1 == "10.250.251.252"), "{got:?}");
        assert_eq!(got[1].2.as_deref(), Some("Негодяй"));
        assert_eq!(got[2].1, "203.0.113.9");
        assert_eq!(got[2].2.as_ref().map(|u| u.chars().count()), Some(256));
        // Non-UTF-8 in AccountID: replaced, still counted for the address.
        let mut mb = MessageBuffer::default();
        let raw = event("InvalidPassword", "SIP", "@@", "IPV4/UDP/203.0.113.10/5060")
            .replace("@@", "\u{1b}[31m")
            .into_bytes();
        let mut bytes = raw.clone();
        bytes.extend_from_slice(b"Event: InvalidPassword\r\nPrivilege: security,all\r\nService: SIP\r\nAccountID: \xff\xfe\r\nLocalAddress: IPV4/UDP/192.0.2.1/5060\r\nRemoteAddress: IPV4/UDP/203.0.113.11/5060\r\n\r\n");
        mb.extend(&bytes);
        let mut out = Vec::new();
        mb.drain(|msg| out.push(m.read(&msg, Time(1)))).unwrap();
        let got = events(&out);
        assert_eq!(got[0].1, "203.0.113.10");
        assert_eq!(
            got[1],
            (
                FailureKind::RegisterAuth,
                "203.0.113.11".into(),
                Some("\u{fffd}\u{fffd}".into())
            )
        );
        // A RemoteAddress that is not an address: reported, escaped.
        let out = replay(
            m,
            &event(
                "InvalidPassword",
                "PJSIP",
                "1",
                "IPV4/UDP/1.2.3.4\u{1b}[0m/5060",
            ),
            64,
        );
        let [
            Mapped::Unreadable {
                event: name,
                why,
                raw,
            },
        ] = &out[..]
        else {
            panic!("{out:?}");
        };
        assert_eq!(
            unreadable_text(name, *why, raw.as_deref()),
            "a InvalidPassword event whose RemoteAddress is not an address (RemoteAddress \"IPV4/UDP/1.2.3.4\\u{1b}[0m/5060\")"
        );
        // Never-a-source addresses are not counted.
        for a in [
            "IPV4/UDP/0.0.0.0/5060",
            "IPV4/UDP/255.255.255.255/1",
            "IPV6/UDP/ff02::1/5060",
        ] {
            assert_eq!(
                replay(m, &event("InvalidPassword", "PJSIP", "1", a), 64),
                vec![Mapped::Nothing],
                "{a}"
            );
        }
    }

    /// A value with a line break that forges a whole event after the real
    /// one: the real one is cut short (not counted) and the forged one,
    /// right after it, is not counted either.
    #[test]
    fn an_event_forged_through_a_line_break_is_not_counted() {
        let m = &mut mapper();
        let forged = "Event: InvalidPassword\r\nPrivilege: security,all\r\nService: PJSIP\r\nAccountID: 1\r\nLocalAddress: IPV4/UDP/192.0.2.1/5060\r\nRemoteAddress: IPV4/UDP/198.51.100.77/5060";
        let real = event(
            "InvalidPassword",
            "PJSIP",
            &format!("x\r\n\r\n{forged}\r\n\r\nTail: "),
            "IPV4/UDP/203.0.113.5/5060",
        );
        let out = replay(m, &real, 11);
        assert!(events(&out).is_empty(), "{out:?}");
        assert!(matches!(
            out[0],
            Mapped::Unreadable {
                why: Unreadable::CutShort,
                ..
            }
        ));
        assert_eq!(out[1], Mapped::AfterCut);
        // A throwaway message between the cut and the forgery changes
        // nothing.
        let real = event(
            "InvalidPassword",
            "PJSIP",
            &format!("x\r\n\r\nEvent: Foo\r\n\r\n{forged}\r\n\r\nTail: "),
            "IPV4/UDP/203.0.113.5/5060",
        );
        let out = replay(m, &real, 11);
        assert!(events(&out).is_empty(), "{out:?}");
        // The next real event counts again.
        let out = replay(
            m,
            &event("InvalidPassword", "PJSIP", "1", "IPV4/UDP/203.0.113.5/5060"),
            64,
        );
        assert_eq!(events(&out).len(), 1);
    }

    #[test]
    fn own_login_is_never_counted_nor_trusted() {
        let m = &mut mapper();
        let mine = event(
            "SuccessfulAuth",
            "AMI",
            "sipwarden",
            "IPV4/TCP/192.0.2.50/40000",
        );
        assert_eq!(replay(m, &mine, 64), vec![Mapped::OwnLogin]);
        let mine = event(
            "InvalidPassword",
            "AMI",
            "sipwarden",
            "IPV4/TCP/192.0.2.50/40001",
        );
        assert_eq!(replay(m, &mine, 64), vec![Mapped::OwnLogin]);
        // The same user guessed from elsewhere is a brute force.
        let other = event(
            "InvalidPassword",
            "AMI",
            "sipwarden",
            "IPV4/TCP/203.0.113.8/40000",
        );
        assert_eq!(events(&replay(m, &other, 64)).len(), 1);
        // Another user from this host is not sipwarden's login.
        let other = event(
            "InvalidPassword",
            "AMI",
            "admin",
            "IPV4/TCP/192.0.2.50/40000",
        );
        assert_eq!(events(&replay(m, &other, 64)).len(), 1);
    }

    #[test]
    fn successful_auth_is_a_registration() {
        let m = &mut mapper();
        let ok = event(
            "SuccessfulAuth",
            "PJSIP",
            "1001",
            "IPV4/UDP/203.0.113.20/5060",
        );
        assert_eq!(
            events(&replay(m, &ok, 64)),
            vec![(
                FailureKind::Registered,
                "203.0.113.20".into(),
                Some("1001".into())
            )]
        );
    }

    /// `Key="value",...` of an Asterisk security log line as AMI fields:
    /// a value ends at the first quote followed by `,Key="` or the end.
    fn log_to_ami(line: &str) -> Option<String> {
        let mut rest = line.split_once("res_security_log.c: ")?.1.trim_end();
        let mut out = String::new();
        while let Some((key, after)) = rest.split_once("=\"") {
            let mut end = None;
            for (i, _) in after.match_indices('"') {
                let tail = &after[i + 1..];
                let next_key = tail.strip_prefix(',').is_some_and(|t| {
                    t.split_once("=\"")
                        .is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_alphabetic()))
                });
                if tail.is_empty() || next_key {
                    end = Some(i);
                    break;
                }
            }
            let end = end?;
            let key = if key == "SecurityEvent" { "Event" } else { key };
            out.push_str(&format!("{key}: {}\r\n", &after[..end]));
            if key == "Event" {
                out.push_str("Privilege: security,all\r\n");
            }
            rest = after[end + 1..].strip_prefix(',').unwrap_or("");
        }
        Some(out + "\r\n")
    }

    /// The corpus's real Asterisk security log lines (fail2ban's annotated
    /// samples), sent as the AMI events they were: each is counted for the
    /// address fail2ban's annotation names, or (the injection sample, whose
    /// fields cannot be told apart once logged) not at all; never for
    /// another address.
    #[test]
    fn corpus_security_log_lines_as_ami_events() {
        let path = format!(
            "{}/../shared/corpus/fail2ban-1.1.2.dev1/tests/files/logs/asterisk",
            env!("CARGO_MANIFEST_DIR")
        );
        let Ok(text) = std::fs::read_to_string(&path) else {
            assert!(
                !crate::test_support::need("corpus"),
                "the reference corpus is missing {path}"
            );
            return;
        };
        let mut want = None;
        let (mut seen, mut counted) = (0, 0);
        for line in text.lines() {
            if let Some(j) = line.strip_prefix("# failJSON: ") {
                let v: serde_json::Value = serde_json::from_str(j).unwrap();
                want = v["host"].as_str().map(str::to_string);
                continue;
            }
            if !line.contains("SecurityEvent=") {
                continue;
            }
            let host = want.take().expect("every sample is annotated");
            let msg = log_to_ami(line).unwrap_or_else(|| panic!("{line}"));
            seen += 1;
            let got = events(&replay(&mut mapper(), &msg, 5));
            match &got[..] {
                [] => {}
                [(_, addr, _)] => {
                    assert_eq!(addr, &host, "{line}");
                    counted += 1;
                }
                more => panic!("{line}: {more:?}"),
            }
        }
        assert_eq!(seen, 9);
        assert!(counted >= 8, "{counted} of {seen}");
    }

    /// Without a fuzzer at hand: deterministic mutations (bytes flipped,
    /// inserted, cut; line breaks and colons favoured) of the committed
    /// seeds through the fuzz body. Bounded: 20,000 inputs.
    #[test]
    fn mutated_seeds_never_panic() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/ami_frames");
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        assert!(!seeds.is_empty(), "the seeds are in the repository: {dir}");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        const PICKS: &[u8] = b"\r\n:/ .0123456789abcdefIPV46UDP\xff\x00";
        for i in 0..20_000usize {
            let mut d = seeds[i % seeds.len()].clone();
            for _ in 0..1 + next() % 8 {
                if d.is_empty() {
                    break;
                }
                let at = (next() % d.len() as u64) as usize;
                let b = PICKS[(next() % PICKS.len() as u64) as usize];
                match next() % 4 {
                    0 => d[at] = b,
                    1 => d.insert(at, b),
                    2 => {
                        d.remove(at);
                    }
                    _ => d.truncate(at),
                }
            }
            fuzz_ami(&d);
        }
    }

    #[test]
    fn fuzz_corpus_and_past_crashes_replay_clean() {
        for data in [
            &b""[..],
            b"\n\n\n",
            b"\x05Asterisk Call Manager/5.0.1\r\nEvent: InvalidPassword\r\n\r\n",
            b"Asterisk\nRemoteAddress: IPV4/UDP/1.2.3.4/1\n\n",
        ] {
            fuzz_ami(data);
        }
    }
}
