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

use super::frame::{header_lines, text};
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
    fn of_line(line: &[u8]) -> Option<(Field, usize)> {
        use Field::*;
        let candidates: &[Field] = match line.first()? | 0x20 {
            b't' => &[ToUser],
            b'f' => &[FromUser, FromUserUnderscore],
            b'e' => &[EventName, EventSubclass, EventDateTimestamp],
            b'n' => &[NetworkIp, NetworkIpUnderscore],
            b'u' => &[UserAgent],
            b'r' => &[RegistrationType],
            _ => return None,
        };
        candidates.iter().copied().find_map(|f| {
            let n = f.name().len();
            (line.get(n) == Some(&b':') && f.name().as_bytes().eq_ignore_ascii_case(&line[..n]))
                .then_some((f, n + 1))
        })
    }
}

/// Read access to an event's headers, whichever the format.
pub trait Headers {
    /// The first value of `f`, decoded.
    fn get(&self, f: Field) -> Option<Cow<'_, str>>;

    /// Whether the first value of `f` decodes to exactly `value`.
    fn is(&self, f: Field, value: &str) -> bool {
        self.get(f).is_some_and(|v| v == value)
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
        // One vectorised pass finds every line end; a per-line search
        // costs more in set-up than in scanning on lines this short.
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())) {
            let line = &body[start..end];
            start = end + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break; // end of the header block
            }
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
    fn get(&self, f: Field) -> Option<Cow<'_, str>> {
        self.fields[f as usize].map(text)
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
    let us: i64 = h.get(Field::EventDateTimestamp)?.trim().parse().ok()?;
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
        let invite = h.get(Field::RegistrationType);
        let kind = if invite.is_some_and(|t| t.eq_ignore_ascii_case("INVITE")) {
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
    let Some(raw) = h.get(addr_field).or_else(|| h.get(other)) else {
        return Some(Signal::Unreadable { kind, raw: None });
    };
    // `parse_addr` drops an IPv6 zone (`fe80::1%eth0`): the kernel sees the
    // address without it as the packet's source.
    let Some(addr) = parse_addr(raw.trim().as_bytes()) else {
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
            .get(Field::UserAgent)
            .is_some_and(|ua| scanners.matches(&ua)),
    })
}

/// The `Content-Type` of a frame's header block.
pub fn content_type(headers: &[u8]) -> Cow<'_, str> {
    header_lines(headers)
        .find(|(n, _)| n.eq_ignore_ascii_case(b"Content-Type"))
        .map_or(Cow::Borrowed(""), |(_, v)| text(v))
}
