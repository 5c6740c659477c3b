//! What one frame means for one jail: an [`EventMapper`] turns a frame
//! (a plain or JSON event, or a log line for profile ACL rejections) into
//! a failure event, dated at arrival when the PBX's clock is off.
//!
//! Pure and synchronous, apart from the connection in `mod.rs`: the corpus
//! replays, the injection corpus and the fuzz target drive it without a
//! socket. What an event's headers say is `event.rs`.

use std::sync::Arc;

use super::event::{self, JsonEvent, Signal, classify, content_type_raw};
use super::frame::{Frame, FrameBuffer, PlainEvent, percent_decode};
use crate::event::{FailureEvent, FailureKind, JailId, Time, escape_text};
use crate::filter::freeswitch::acl_reject;
use crate::source::Window;
use crate::source::scanner::ScannerList;

/// Turns frames into failure events for one jail.
#[derive(Debug, Clone)]
pub struct EventMapper {
    /// The jail the events count in.
    pub jail: JailId,
    /// The jail's `findtime`, which bounds how far an event's own time may
    /// be from its arrival.
    pub window: Arc<Window>,
    /// Attack-tool user agents.
    pub scanners: Arc<ScannerList>,
}

/// What one frame means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// Nothing about an address.
    Nothing,
    /// FreeSWITCH's heartbeat.
    Heartbeat,
    /// A failure (or success) to count.
    Event {
        /// The event, dated at arrival when its own time was off.
        ev: FailureEvent,
        /// Its own time minus its arrival, when off by more than the bound.
        skew_ms: Option<i64>,
    },
    /// An event that should name an address but whose `network-ip` is
    /// missing or not an address; the source logs it (rate-limited).
    Unreadable {
        /// What the event reported.
        kind: FailureKind,
        /// The value, when there was one (attacker-reachable: escape it).
        raw: Option<Box<str>>,
    },
}

impl EventMapper {
    /// Maps one frame; `None` for frames that say nothing about an address.
    /// `heartbeat` is set when the frame was a heartbeat.
    pub fn map(&self, f: &Frame<'_>, now: Time, heartbeat: &mut bool) -> Option<FailureEvent> {
        match self.read(f, now) {
            Mapped::Event { ev, .. } => Some(ev),
            Mapped::Heartbeat => {
                *heartbeat = true;
                None
            }
            Mapped::Nothing | Mapped::Unreadable { .. } => None,
        }
    }

    /// What one frame means, including events that could not be counted.
    pub fn read(&self, f: &Frame<'_>, now: Time) -> Mapped {
        // Compared as bytes: borrowed unless it was percent-encoded, and
        // never through a UTF-8 check (the types are ASCII).
        let ct = percent_decode(content_type_raw(f.headers));
        let signal = match &*ct {
            b"text/event-plain" => classify(&event::PlainPick::from_body(f.body), &self.scanners),
            b"text/event-json" => {
                JsonEvent::parse(f.body).and_then(|e| classify(&e, &self.scanners))
            }
            b"log/data" => {
                // Profile ACL rejections fire no event: read them from the log.
                let msg = f.body.trim_ascii();
                let Some(addr) = acl_reject(msg).filter(|a| !crate::net::never_a_source(*a)) else {
                    return Mapped::Nothing;
                };
                return Mapped::Event {
                    ev: FailureEvent {
                        time: now,
                        jail: self.jail,
                        addr,
                        kind: FailureKind::AclReject,
                        user: None,
                        scanner: false,
                    },
                    skew_ms: None,
                };
            }
            _ => None,
        };
        let Some(signal) = signal else {
            return Mapped::Nothing;
        };
        match signal {
            Signal::Heartbeat => Mapped::Heartbeat,
            Signal::Unreadable { kind, raw } => Mapped::Unreadable { kind, raw },
            // A forged or misread address: counting it could only ban
            // nobody (or, for `0.0.0.0`, look like everybody).
            Signal::Address { addr, .. } if crate::net::never_a_source(addr) => Mapped::Nothing,
            Signal::Address {
                kind,
                addr,
                time,
                user,
                scanner,
            } => {
                // A live event happened now: its own time is kept only
                // while it agrees with that.
                let (time, skew_ms) = match time {
                    Some(t) if t.0.abs_diff(now.0) > self.window.skew_bound_ms().unsigned_abs() => {
                        (now, Some(t.0.saturating_sub(now.0)))
                    }
                    Some(t) => (t, None),
                    None => (now, None),
                };
                Mapped::Event {
                    ev: FailureEvent {
                        time,
                        jail: self.jail,
                        addr,
                        kind,
                        user,
                        scanner,
                    },
                    skew_ms,
                }
            }
        }
    }
}

/// Says what was wrong with an event's address, its text escaped.
pub(super) fn unreadable_text(kind: FailureKind, raw: Option<&str>) -> String {
    match raw {
        Some(r) => format!(
            "a {} event whose network-ip \"{}\" is not an address",
            kind.as_str(),
            escape_text(r, 64)
        ),
        None => format!("a {} event without network-ip", kind.as_str()),
    }
}

/// The fuzz target's body, also replayed by `cargo test` over the fuzz
/// corpus: feeds arbitrary bytes through the framing, both event formats and
/// the mapping, split at an arbitrary point. Must never panic.
pub fn fuzz_frames(data: &[u8]) {
    let mapper = EventMapper {
        jail: JailId(0),
        window: Window::new(crate::duration::Duration(600)),
        scanners: Arc::new(ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS)),
    };
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut fb = FrameBuffer::default();
    let mut hb = false;
    for part in [&data[..split], &data[split..]] {
        fb.extend(part);
        let r = fb.drain(|f| {
            if let Some(ev) = mapper.map(&f, Time(0), &mut hb) {
                // The address must have come from a network-ip header, not
                // from anywhere else: it always parses back.
                assert!(ev.addr.to_string().parse::<std::net::IpAddr>().is_ok());
            }
            let _ = PlainEvent::parse(f.body).get("user-agent");
        });
        if r.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of the FreeSWITCH capture (`None`: the run opted out).
    fn corpus(name: &str) -> Option<Vec<u8>> {
        crate::test_support::corpus_file(&format!("freeswitch-1.10.12/{name}"))
    }

    fn mapper() -> EventMapper {
        EventMapper {
            jail: JailId(0),
            window: Window::new(crate::duration::Duration(600)),
            scanners: Arc::new(ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS)),
        }
    }

    /// Half-way through the corpus's events (they span 74 s): every one is
    /// within a minute of it and keeps its own time.
    const CORPUS_NOW: Time = Time(1_795_621_291_000);

    /// Feeds `stream` in pieces of `step` bytes; returns the events.
    fn replay(stream: &[u8], step: usize) -> (Vec<FailureEvent>, usize) {
        let m = mapper();
        let mut fb = FrameBuffer::default();
        let mut out = Vec::new();
        let mut frames = 0;
        let mut hb = false;
        for chunk in stream.chunks(step.max(1)) {
            fb.extend(chunk);
            frames += fb
                .drain(|f| {
                    if let Some(e) = m.map(&f, CORPUS_NOW, &mut hb) {
                        out.push(e);
                    }
                })
                .unwrap();
        }
        (out, frames)
    }

    fn check_corpus_counts(evs: &[FailureEvent]) {
        let n = |k: FailureKind| evs.iter().filter(|e| e.kind == k).count();
        assert_eq!(n(FailureKind::RegisterAuth), 11);
        assert_eq!(n(FailureKind::InviteAuth), 2);
        assert_eq!(n(FailureKind::Registered), 2);
        assert_eq!(n(FailureKind::WrongCallState), 3);
        assert_eq!(
            evs.len(),
            18,
            "pre_register and register_attempt are not signals"
        );
        assert!(evs.iter().all(|e| e.addr.to_string() == "10.77.0.2"));
        // Their own times, all within a minute of CORPUS_NOW.
        assert!(evs.iter().all(|e| e.time != CORPUS_NOW));
        assert!(evs.iter().all(|e| e.time.0.abs_diff(CORPUS_NOW.0) < 60_000));
        // svcrack's friendly-scanner is flagged; SIPp is not.
        // svcrack's 10 wrong passwords; SIPp's requests are not flagged.
        assert_eq!(
            evs.iter()
                .filter(|e| e.scanner && e.kind == FailureKind::RegisterAuth)
                .count(),
            10
        );
        let invite = evs
            .iter()
            .find(|e| e.kind == FailureKind::InviteAuth)
            .unwrap();
        assert_eq!(invite.user.as_deref(), Some("0046812345678"));
    }

    #[test]
    fn plain_corpus_whole_coalesced_and_byte_by_byte() {
        let Some(raw) = corpus("esl-plain.raw") else {
            return;
        };
        let (whole, frames) = replay(&raw, raw.len());
        check_corpus_counts(&whole);
        // 1 auth/request + 2 replies + 58 events.
        assert_eq!(frames, 61);
        let (bytewise, frames1) = replay(&raw, 1);
        assert_eq!(frames1, frames);
        assert_eq!(bytewise, whole);
        for step in [2, 3, 7, 64, 4096] {
            assert_eq!(replay(&raw, step).0, whole, "step {step}");
        }
    }

    #[test]
    fn json_corpus_gives_the_same_events() {
        let (Some(raw), Some(plain)) = (corpus("esl-json.raw"), corpus("esl-plain.raw")) else {
            return;
        };
        let (json, _) = replay(&raw, raw.len());
        check_corpus_counts(&json);
        assert_eq!(json, replay(&plain, plain.len()).0);
        assert_eq!(replay(&raw, 1).0, json);
    }

    #[test]
    fn address_only_from_network_ip() {
        let body = "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nto-user: from%20ip%201.2.3.4\nto-host: ip%5B1.2.3.4%5D\nuser-agent: from ip 1.2.3.4\nnetwork-ip: 10.77.0.9\nregistration-type: INVITE\n\n";
        let frame = format!(
            "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
            body.len()
        );
        let (evs, _) = replay(frame.as_bytes(), 5);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].addr.to_string(), "10.77.0.9");
        assert_eq!(evs[0].kind, FailureKind::InviteAuth);
        assert_eq!(evs[0].user.as_deref(), Some("from ip 1.2.3.4"));
        // No network-ip: nothing, whatever else the event says.
        let body =
            "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nto-user: 1.2.3.4\n\n";
        let frame = format!(
            "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
            body.len()
        );
        assert!(replay(frame.as_bytes(), 100).0.is_empty());
    }

    /// Issue 16, finding 10: an event naming an address that is never a
    /// packet's source was counted.
    #[test]
    fn never_a_source_is_not_counted() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "ff02::1",
            "::ffff:0.0.0.0",
        ] {
            let body = format!(
                "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nnetwork-ip: {}\n\n",
                ip.replace(':', "%3A")
            );
            let frame = format!(
                "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
                body.len()
            );
            assert!(replay(frame.as_bytes(), 64).0.is_empty(), "{ip}");
            let log = format!("IP {ip} Rejected by acl \"domains\"\n");
            let f = Frame {
                headers: b"Content-Type: log/data",
                body: log.as_bytes(),
            };
            assert!(mapper().map(&f, Time(5), &mut false).is_none(), "{ip}");
        }
    }

    #[test]
    fn acl_rejections_from_log_frames() {
        let m = mapper();
        let mut hb = false;
        let body = b"IP 203.0.113.5 Rejected by acl \"domains\"\n";
        let f = Frame {
            headers: b"Content-Type: log/data\nContent-Length: 41",
            body,
        };
        assert_eq!(
            m.map(&f, Time(5), &mut hb).unwrap().kind,
            FailureKind::AclReject
        );
        let f = Frame {
            headers: b"Content-Type: log/data",
            body: b"IP 203.0.113.5 Rejected by acl \"domains\". Falling back to Digest auth.\n",
        };
        assert!(m.map(&f, Time(5), &mut hb).is_none());
    }

    #[test]
    fn heartbeat_is_noted() {
        let m = mapper();
        let mut hb = false;
        let f = Frame {
            headers: b"Content-Type: text/event-plain",
            body: b"Event-Name: HEARTBEAT\nUp-Time: 0%20years\n\n",
        };
        assert!(m.map(&f, Time(5), &mut hb).is_none());
        assert!(hb);
    }

    /// A plain `register_failure` frame with `network-ip` as given.
    fn register_failure(network_ip: &str) -> String {
        let body = format!(
            "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nnetwork-ip: {network_ip}\nregistration-type: REGISTER\n\n"
        );
        format!(
            "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
            body.len()
        )
    }

    /// Issue 16, finding 11: FreeSWITCH percent-encodes plain values, so a
    /// link-local source arrives as `fe80%3A%3A1%25eth0`; the zone is the
    /// interface, the kernel sees `fe80::1` as the source.
    #[test]
    fn zone_id_is_removed_before_counting() {
        let want: std::net::IpAddr = "fe80::1".parse().unwrap();
        for raw in [
            "fe80%3A%3A1%25eth0",
            "fe80::1%25eth0",
            "fe80%3A%3A1%252",
            "fe80::1%25vlan.100",
        ] {
            let (evs, _) = replay(register_failure(raw).as_bytes(), 7);
            assert_eq!(
                evs.iter().map(|e| e.addr).collect::<Vec<_>>(),
                vec![want],
                "{raw}"
            );
        }
        let body = r#"{"Event-Name":"CUSTOM","Event-Subclass":"sofia::register_failure","network-ip":"fe80::1%eth0"}"#;
        let frame = format!(
            "Content-Length: {}\nContent-Type: text/event-json\n\n{body}",
            body.len()
        );
        let (evs, _) = replay(frame.as_bytes(), 3);
        assert_eq!(evs.iter().map(|e| e.addr).collect::<Vec<_>>(), vec![want]);
        // A zone on an IPv4 address, or a zone that is not an interface
        // name, is not an address.
        for raw in [
            "10.0.0.1%25eth0",
            "fe80::1%25",
            "fe80::1%25a/b",
            "fe80::1%25%25",
        ] {
            assert!(
                replay(register_failure(raw).as_bytes(), 100).0.is_empty(),
                "{raw}"
            );
        }
    }

    /// Issue N8: an event whose `Event-Date-Timestamp` was an hour old was
    /// dropped as older than findtime, without a word; one two hours ahead
    /// was counted. A live event happened now: off by more than the bound,
    /// either way, it is counted at arrival and the offset reported.
    #[test]
    fn a_live_event_is_dated_at_arrival_when_the_pbx_clock_is_off() {
        let now = Time(1_800_000_000_000);
        let frame = |t: Time| {
            let body = format!(
                "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nnetwork-ip: 203.0.113.30\nregistration-type: REGISTER\nEvent-Date-Timestamp: {}\n\n",
                t.0 * 1000 + 123
            );
            format!(
                "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
                body.len()
            )
        };
        let read = |m: &EventMapper, t: Time| {
            let text = frame(t);
            let mut fb = FrameBuffer::default();
            fb.extend(text.as_bytes());
            let mut got = Vec::new();
            fb.drain(|f| got.push(m.read(&f, now))).unwrap();
            match got.pop() {
                Some(Mapped::Event { ev, skew_ms }) => (ev.time, skew_ms),
                other => panic!("{other:?}"),
            }
        };
        let m = mapper();
        let hour = 3_600_000;
        assert_eq!(read(&m, Time(now.0 - hour)), (now, Some(-hour)));
        assert_eq!(read(&m, Time(now.0 + 2 * hour)), (now, Some(2 * hour)));
        // Within a minute: its own time (a burst read late stays in order).
        assert_eq!(read(&m, Time(now.0 - 59_000)), (Time(now.0 - 59_000), None));
        assert_eq!(read(&m, Time(now.0 + 2_000)), (Time(now.0 + 2_000), None));
        // A findtime under two minutes narrows the bound to half of it, so
        // a time taken is always inside the window.
        m.window.set(crate::duration::Duration(30));
        assert_eq!(read(&m, Time(now.0 - 20_000)), (now, Some(-20_000)));
        assert_eq!(read(&m, Time(now.0 - 14_000)), (Time(now.0 - 14_000), None));
    }

    /// An address that does not parse is reported (and logged, escaped),
    /// not dropped in silence.
    #[test]
    fn unreadable_network_ip_is_reported() {
        let m = mapper();
        let frame = register_failure("fe80%3A%3Azz%0A%1B%5B31m");
        let mut fb = FrameBuffer::default();
        fb.extend(frame.as_bytes());
        let mut got = Vec::new();
        fb.drain(|f| got.push(m.read(&f, Time(1)))).unwrap();
        let [Mapped::Unreadable { kind, raw }] = &got[..] else {
            panic!("{got:?}");
        };
        assert_eq!(raw.as_deref(), Some("fe80::zz\n\u{1b}[31m"));
        assert_eq!(
            unreadable_text(*kind, raw.as_deref()),
            "a register_auth event whose network-ip \"fe80::zz\\n\\u{1b}[31m\" is not an address"
        );
    }

    #[test]
    fn fuzz_corpus_and_past_crashes_replay_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/esl_frames");
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if let Ok(data) = std::fs::read(e.path()) {
                    fuzz_frames(&data);
                    n += 1;
                }
            }
        }
        for data in [
            &b""[..],
            b"\n\n\n",
            b"Content-Length: 5\n\n",
            b"Content-Length: 3\nContent-Type: text/event-json\n\n[1]",
        ] {
            fuzz_frames(data);
        }
        eprintln!("replayed {n} fuzz inputs");
    }
}
