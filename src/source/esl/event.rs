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

use super::frame::{PlainEvent, header_lines, text};
use crate::event::{FailureKind, Time};
use crate::filter::parse_addr;

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
    /// FreeSWITCH's periodic heartbeat: the connection is alive.
    Heartbeat,
}

/// Read access to an event's headers, whichever the format.
pub trait Headers {
    /// The first value of `name` (case-insensitive), decoded.
    fn get(&self, name: &str) -> Option<Cow<'_, str>>;
}

impl Headers for PlainEvent<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        PlainEvent::get(self, name)
    }
}

/// The headers `classify` reads, picked from a plain event in one pass.
pub struct PlainPick<'a> {
    fields: [Option<&'a [u8]>; PICKED.len()],
}

const PICKED: [&str; 10] = [
    "Event-Name",
    "Event-Subclass",
    "registration-type",
    "network-ip",
    "network_ip",
    "to-user",
    "from-user",
    "from_user",
    "user-agent",
    "Event-Date-Timestamp",
];

impl<'a> PlainPick<'a> {
    /// Reads the event's header block once, keeping the first value of each
    /// header `classify` needs.
    pub fn new(ev: &PlainEvent<'a>) -> PlainPick<'a> {
        let mut fields = [None; PICKED.len()];
        for (name, value) in super::frame::header_lines(ev.headers) {
            if let Some(i) = PICKED
                .iter()
                .position(|p| p.len() == name.len() && p.as_bytes().eq_ignore_ascii_case(name))
            {
                if fields[i].is_none() {
                    fields[i] = Some(value);
                }
            }
        }
        PlainPick { fields }
    }
}

impl Headers for PlainPick<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        let i = PICKED.iter().position(|p| p.eq_ignore_ascii_case(name))?;
        self.fields[i].map(text)
    }
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
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
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
    let us: i64 = h.get("Event-Date-Timestamp")?.trim().parse().ok()?;
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
    let name = h.get("Event-Name")?;
    if name == "HEARTBEAT" {
        return Some(Signal::Heartbeat);
    }
    if name != "CUSTOM" {
        return None;
    }
    let sub = h.get("Event-Subclass")?;
    let (kind, addr_header) = match &*sub {
        "sofia::register_failure" => {
            let kind = match h.get("registration-type").as_deref() {
                Some(t) if t.eq_ignore_ascii_case("INVITE") => FailureKind::InviteAuth,
                _ => FailureKind::RegisterAuth,
            };
            (kind, "network-ip")
        }
        "sofia::register" => (FailureKind::Registered, "network-ip"),
        "sofia::wrong_call_state" => (FailureKind::WrongCallState, "network_ip"),
        _ => return None,
    };
    let raw = h.get(addr_header).or_else(|| {
        h.get(if addr_header == "network-ip" {
            "network_ip"
        } else {
            "network-ip"
        })
    })?;
    let addr = parse_addr(raw.trim().as_bytes())?;
    let user = match kind {
        FailureKind::WrongCallState => h.get("from_user"),
        _ => h.get("to-user").or_else(|| h.get("from-user")),
    };
    Some(Signal::Address {
        kind,
        addr,
        time: event_time(h),
        user: boxed(user),
        scanner: h.get("user-agent").is_some_and(|ua| scanners.matches(&ua)),
    })
}

/// The `Content-Type` of a frame's header block.
pub fn content_type(headers: &[u8]) -> Cow<'_, str> {
    header_lines(headers)
        .find(|(n, _)| n.eq_ignore_ascii_case(b"Content-Type"))
        .map_or(Cow::Borrowed(""), |(_, v)| text(v))
}
