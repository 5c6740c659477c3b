//! What FreeSWITCH events mean for sipwarden.
//!
//! * `sofia::register_failure` with `registration-type: REGISTER`: a failed
//!   registration (wrong password, unknown user, per-user ACL); with
//!   `INVITE`: a failed call authentication, a toll-fraud attempt (`to-user`
//!   is then the dialled number). Both are failures.
//! * `sofia::pre_register` (a challenge) and `sofia::register_attempt`: not
//!   failures.
//! * `sofia::register`: a success; a jail may trust the address for a while.
//! * `sofia::wrong_call_state` (`network_ip`, with an underscore): a
//!   challenged INVITE never answered; a weak signal with its own threshold.
//!
//! The address always comes from `network-ip` / `network_ip`, the packet's
//! source as FreeSWITCH saw it; never from user, host or user-agent text.

use std::borrow::Cow;

use super::frame::{header_lines, percent_decode, text, utf8_text};
use crate::event::{FailureKind, Time};
use crate::net::parse_addr;

/// What one event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A failure, a success or a weak signal from an address.
    Address {
        /// What happened.
        kind: FailureKind,
        /// The packet's source.
        addr: std::net::IpAddr,
        /// The event's own time, when it has one.
        time: Option<Time>,
        /// The user tried (attacker text).
        user: Option<Box<str>>,
        /// The user agent is a known attack tool's.
        scanner: bool,
    },
    /// An event that should name an address, whose `network-ip` is missing
    /// or is not an address: not counted, but not silent either.
    Unreadable {
        /// What happened.
        kind: FailureKind,
        /// The header's decoded value, cut short (attacker-reachable text:
        /// escape it to show it); `None` when the header is missing.
        raw: Option<Box<str>>,
    },
    /// FreeSWITCH's periodic heartbeat: the connection is alive.
    Heartbeat,
}

/// The event headers `classify` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `Event-Name`
    EventName,
    /// `Event-Subclass`
    EventSubclass,
    /// `registration-type`
    RegistrationType,
    /// `network-ip` (register events)
    NetworkIp,
    /// `network_ip` (call-state events)
    NetworkIpUnderscore,
    /// `to-user`
    ToUser,
    /// `from-user`
    FromUser,
    /// `from_user`
    FromUserUnderscore,
    /// `user-agent`
    UserAgent,
    /// `Event-Date-Timestamp`
    EventDateTimestamp,
}

impl Field {
    const ALL: [Field; 10] = [
        Field::EventName,
        Field::EventSubclass,
        Field::RegistrationType,
        Field::NetworkIp,
        Field::NetworkIpUnderscore,
        Field::ToUser,
        Field::FromUser,
        Field::FromUserUnderscore,
        Field::UserAgent,
        Field::EventDateTimestamp,
    ];

    /// The header's name as FreeSWITCH writes it.
    pub fn name(self) -> &'static str {
        match self {
            Field::EventName => "Event-Name",
            Field::EventSubclass => "Event-Subclass",
            Field::RegistrationType => "registration-type",
            Field::NetworkIp => "network-ip",
            Field::NetworkIpUnderscore => "network_ip",
            Field::ToUser => "to-user",
            Field::FromUser => "from-user",
            Field::FromUserUnderscore => "from_user",
            Field::UserAgent => "user-agent",
            Field::EventDateTimestamp => "Event-Date-Timestamp",
        }
    }

    /// Which field starts the header line `line`, and where its value
    /// begins. The first byte picks the candidates; their names' lengths
    /// say where the colon must be, so no line is scanned for it.
    #[inline(always)]
    fn of_line(line: &[u8]) -> Option<(Field, usize)> {
        use Field::*;
        // (name, field) with the name's bytes at hand: no `name()` match
        // per candidate on the hot path.
        const T: &[(&[u8], Field)] = &[(b"to-user", ToUser)];
        const F: &[(&[u8], Field)] =
            &[(b"from-user", FromUser), (b"from_user", FromUserUnderscore)];
        const E: &[(&[u8], Field)] = &[
            (b"Event-Name", EventName),
            (b"Event-Subclass", EventSubclass),
            (b"Event-Date-Timestamp", EventDateTimestamp),
        ];
        const N: &[(&[u8], Field)] = &[
            (b"network-ip", NetworkIp),
            (b"network_ip", NetworkIpUnderscore),
        ];
        const U: &[(&[u8], Field)] = &[(b"user-agent", UserAgent)];
        const R: &[(&[u8], Field)] = &[(b"registration-type", RegistrationType)];
        let candidates = match line.first()? | 0x20 {
            b't' => T,
            b'f' => F,
            b'e' => E,
            b'n' => N,
            b'u' => U,
            b'r' => R,
            _ => return None,
        };
        for &(name, f) in candidates {
            let n = name.len();
            if line.get(n) == Some(&b':') && line[..n].eq_ignore_ascii_case(name) {
                return Some((f, n + 1));
            }
        }
        None
    }
}

/// Read access to an event's headers, whichever the format.
pub trait Headers {
    /// The first value of `f`, decoded, as bytes (borrowed when nothing
    /// needed decoding): what `classify` reads on the hot path.
    fn raw(&self, f: Field) -> Option<Cow<'_, [u8]>>;

    /// The first value of `f`, decoded, as text (invalid UTF-8 replaced).
    fn get(&self, f: Field) -> Option<Cow<'_, str>> {
        self.raw(f).map(utf8_text)
    }

    /// Whether the first value of `f` decodes to exactly `value`.
    fn is(&self, f: Field, value: &str) -> bool {
        self.raw(f).is_some_and(|v| *v == *value.as_bytes())
    }
}

/// The headers `classify` reads, picked from a plain event in one pass.
pub struct PlainPick<'a> {
    fields: [Option<&'a [u8]>; Field::ALL.len()],
}

impl<'a> PlainPick<'a> {
    /// Reads a `text/event-plain` body's header block once, up to its empty
    /// line, keeping the first value of each header `classify` needs. The
    /// inner body (if any) is never looked at.
    pub fn from_body(body: &'a [u8]) -> PlainPick<'a> {
        let mut fields = [None; Field::ALL.len()];
        for line in super::lines::lines(body) {
            if let Some((f, at)) = Field::of_line(line) {
                let slot = &mut fields[f as usize];
                if slot.is_none() {
                    let v = &line[at..];
                    *slot = Some(v.strip_prefix(b" ").unwrap_or(v));
                }
            }
        }
        PlainPick { fields }
    }
}

impl Headers for PlainPick<'_> {
    fn raw(&self, f: Field) -> Option<Cow<'_, [u8]>> {
        self.fields[f as usize].map(percent_decode)
    }

    fn is(&self, f: Field, value: &str) -> bool {
        self.fields[f as usize].is_some_and(|raw| decoded_eq(raw, value.as_bytes()))
    }
}

/// Whether percent-encoded `raw` decodes to `want`, without decoding it
/// into a new buffer.
fn decoded_eq(raw: &[u8], want: &[u8]) -> bool {
    let hex = |c: u8| (c as char).to_digit(16);
    let (mut i, mut j) = (0, 0);
    while i < raw.len() {
        let mut b = raw[i];
        i += 1;
        if b == b'%' && i + 1 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i]), hex(raw[i + 1])) {
                b = (h * 16 + l) as u8;
                i += 2;
            }
        }
        if want.get(j) != Some(&b) {
            return false;
        }
        j += 1;
    }
    j == want.len()
}

/// A `text/event-json` body.
pub struct JsonEvent(serde_json::Map<String, serde_json::Value>);

impl JsonEvent {
    /// Parses a JSON event body; `None` when it is not a JSON object.
    pub fn parse(body: &[u8]) -> Option<JsonEvent> {
        match serde_json::from_slice::<serde_json::Value>(body).ok()? {
            serde_json::Value::Object(m) => Some(JsonEvent(m)),
            _ => None,
        }
    }
}

impl Headers for JsonEvent {
    fn raw(&self, f: Field) -> Option<Cow<'_, [u8]>> {
        match self.get(f)? {
            Cow::Borrowed(s) => Some(Cow::Borrowed(s.as_bytes())),
            Cow::Owned(s) => Some(Cow::Owned(s.into_bytes())),
        }
    }

    fn get(&self, f: Field) -> Option<Cow<'_, str>> {
        let name = f.name();
        let v = self.0.get(name).or_else(|| {
            self.0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })?;
        match v {
            serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_str())),
            serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
            _ => None,
        }
    }
}

/// `Event-Date-Timestamp`: microseconds since the epoch.
fn event_time(h: &impl Headers) -> Option<Time> {
    let v = h.raw(Field::EventDateTimestamp)?;
    let digits = v.trim_ascii();
    // At most 18 digits: no i64 overflow.
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let us = digits
        .iter()
        .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
    (us > 0).then_some(Time(us / 1000))
}

fn boxed(v: Option<Cow<'_, str>>) -> Option<Box<str>> {
    v.map(|s| {
        let s: &str = &s;
        let cut = s.char_indices().nth(256).map_or(s.len(), |(i, _)| i);
        Box::from(&s[..cut])
    })
}

/// Reads one event; `scanners` flags attack tools by user agent.
pub fn classify(
    h: &impl Headers,
    scanners: &crate::source::scanner::ScannerList,
) -> Option<Signal> {
    if !h.is(Field::EventName, "CUSTOM") {
        return h
            .is(Field::EventName, "HEARTBEAT")
            .then_some(Signal::Heartbeat);
    }
    // Compared in place: most events are one of these three.
    let (kind, addr_field, other) = if h.is(Field::EventSubclass, "sofia::register_failure") {
        let invite = h.raw(Field::RegistrationType);
        let kind = if invite.is_some_and(|t| t.eq_ignore_ascii_case(b"INVITE")) {
            FailureKind::InviteAuth
        } else {
            FailureKind::RegisterAuth
        };
        (kind, Field::NetworkIp, Field::NetworkIpUnderscore)
    } else if h.is(Field::EventSubclass, "sofia::register") {
        (
            FailureKind::Registered,
            Field::NetworkIp,
            Field::NetworkIpUnderscore,
        )
    } else if h.is(Field::EventSubclass, "sofia::wrong_call_state") {
        (
            FailureKind::WrongCallState,
            Field::NetworkIpUnderscore,
            Field::NetworkIp,
        )
    } else {
        return None;
    };
    let Some(raw) = h.raw(addr_field).or_else(|| h.raw(other)) else {
        return Some(Signal::Unreadable { kind, raw: None });
    };
    // `parse_addr` drops an IPv6 zone (`fe80::1%eth0`): the kernel sees the
    // address without it as the packet's source.
    let Some(addr) = parse_addr(raw.trim_ascii()) else {
        let raw = String::from_utf8_lossy(&raw);
        let cut = raw.char_indices().nth(64).map_or(raw.len(), |(i, _)| i);
        return Some(Signal::Unreadable {
            kind,
            raw: Some(Box::from(&raw[..cut])),
        });
    };
    let user = match kind {
        FailureKind::WrongCallState => h.get(Field::FromUserUnderscore),
        _ => h.get(Field::ToUser).or_else(|| h.get(Field::FromUser)),
    };
    Some(Signal::Address {
        kind,
        addr,
        time: event_time(h),
        user: boxed(user),
        scanner: h
            .raw(Field::UserAgent)
            .is_some_and(|ua| scanners.matches_bytes(&ua)),
    })
}

/// The `Content-Type` of a frame's header block.
pub fn content_type(headers: &[u8]) -> Cow<'_, str> {
    header_lines(headers)
        .find(|(n, _)| n.eq_ignore_ascii_case(b"Content-Type"))
        .map_or(Cow::Borrowed(""), |(_, v)| text(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_found_by_its_name_in_any_case() {
        for f in Field::ALL {
            let line = format!("{}: v", f.name());
            assert_eq!(
                Field::of_line(line.as_bytes()),
                Some((f, f.name().len() + 1))
            );
            let upper = line.to_ascii_uppercase();
            assert_eq!(Field::of_line(upper.as_bytes()).map(|(g, _)| g), Some(f));
            // A longer name sharing the prefix is another header.
            let longer = format!("{}x: v", f.name());
            assert_eq!(Field::of_line(longer.as_bytes()), None);
        }
    }

    #[test]
    fn event_time_reads_microseconds_and_refuses_anything_else() {
        let at = |v: &[u8]| {
            let line = [b"Event-Date-Timestamp: ".as_slice(), v].concat();
            event_time(&PlainPick::from_body(&line))
        };
        assert_eq!(at(b"1795621254659156"), Some(Time(1_795_621_254_659)));
        assert_eq!(at(b" 1795621254659156 "), Some(Time(1_795_621_254_659)));
        assert_eq!(at(b"0"), None);
        assert_eq!(at(b"-5"), None);
        assert_eq!(at(b"12a"), None);
        assert_eq!(at(b""), None);
        assert_eq!(at(b"9999999999999999999999"), None);
    }
}
