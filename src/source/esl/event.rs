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

use super::frame::{percent_decode, text, utf8_text};
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
    pub const fn name(self) -> &'static str {
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
    /// begins (after the colon). Most lines are none of them: their first
    /// eight bytes, case folded, pick one slot of a small table and differ
    /// from its key, one compare and no branch on the line's text before
    /// it. A hit is then checked exactly, a word at a time.
    #[inline(always)]
    fn of_line(line: &[u8]) -> Option<(Field, usize)> {
        if line.len() < 8 {
            return None;
        }
        let w0 = word(line, 0);
        let key = w0 | FOLD;
        let slot = &SLOTS[slot_of(key)];
        if slot.key != key {
            return None;
        }
        let name = &NAMES[slot.name as usize];
        let n = name.len;
        if line.len() < n {
            return None;
        }
        let [a, b, c] = name.at;
        let [p0, p1, p2] = name.words;
        let [f0, f1, f2] = name.folds;
        let diff =
            ((word(line, a) | f0) ^ p0) | ((word(line, b) | f1) ^ p1) | ((word(line, c) | f2) ^ p2);
        (diff == 0).then_some((name.field, n))
    }
}

/// The eight bytes of `b` from `at` (which the caller has checked are
/// there), as one little-endian word.
#[inline(always)]
fn word(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Folds the case of ASCII letters in every byte of a word (and maps a few
/// control bytes onto punctuation: only good for picking a slot).
const FOLD: u64 = 0x2020_2020_2020_2020;

/// A header name with its colon, as three words that cover it (the first
/// eight bytes, the next eight or those overlapping the end, the last
/// eight): compared exactly, letters in either case, in three loads.
#[derive(Clone, Copy)]
struct Name {
    field: Field,
    /// The name's length with its colon: where the value starts.
    len: usize,
    /// Where each word starts in the line.
    at: [usize; 3],
    /// The words, letters lowercased.
    words: [u64; 3],
    /// 0x20 in the bytes of letters (case folded), 0 elsewhere (compared
    /// exactly: a `\r` is not a `-`).
    folds: [u64; 3],
}

impl Name {
    const fn of(field: Field) -> Name {
        let name = field.name().as_bytes();
        let len = name.len() + 1;
        assert!(len >= 8 && len <= 24, "a name the three words do not cover");
        let mid = if len >= 16 { 8 } else { len - 8 };
        let at = [0, mid, len - 8];
        let mut words = [0u64; 3];
        let mut folds = [0u64; 3];
        let mut w = 0;
        while w < 3 {
            let mut i = 0;
            while i < 8 {
                let at = at[w] + i;
                let c = if at < name.len() { name[at] } else { b':' };
                let fold = if c.is_ascii_alphabetic() { 0x20 } else { 0 };
                words[w] |= ((c | fold) as u64) << (8 * i);
                folds[w] |= (fold as u64) << (8 * i);
                i += 1;
            }
            w += 1;
        }
        Name {
            field,
            len,
            at,
            words,
            folds,
        }
    }
}

const NAMES: [Name; Field::ALL.len()] = {
    let mut out = [Name::of(Field::EventName); Field::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = Name::of(Field::ALL[i]);
        i += 1;
    }
    out
};

/// A slot of the table: the folded first word of a name (0: empty; a
/// folded word never is) and which name it is.
#[derive(Clone, Copy)]
struct Slot {
    key: u64,
    name: u8,
}

const SLOT_BITS: u32 = 5;

/// Which slot a folded first word picks (a multiplicative hash; the
/// multiplier was chosen so the ten names never share a slot, which the
/// table's construction checks when this file compiles).
#[inline(always)]
const fn slot_of(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOT_BITS)) as usize
}

const SLOTS: [Slot; 1 << SLOT_BITS] = {
    let mut out = [Slot { key: 0, name: 0 }; 1 << SLOT_BITS];
    let mut i = 0;
    while i < NAMES.len() {
        let key = NAMES[i].words[0] | FOLD;
        let s = slot_of(key);
        assert!(
            out[s].key == 0,
            "two header names share a slot: change the multiplier"
        );
        out[s] = Slot { key, name: i as u8 };
        i += 1;
    }
    out
};

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
/// into a new buffer. The runs between escapes are compared as slices (one
/// `memcmp` each: `sofia%3A%3Aregister_failure` is three).
fn decoded_eq(raw: &[u8], want: &[u8]) -> bool {
    let hex = |c: Option<&u8>| c.and_then(|&c| (c as char).to_digit(16));
    let (mut i, mut j) = (0, 0);
    loop {
        let end = raw[i..]
            .iter()
            .position(|&b| b == b'%')
            .map_or(raw.len(), |p| i + p);
        let run = &raw[i..end];
        if want.get(j..j + run.len()) != Some(run) {
            return false;
        }
        j += run.len();
        if end == raw.len() {
            return j == want.len();
        }
        // An escape, or a `%` that starts none (kept as it is).
        let b = match (hex(raw.get(end + 1)), hex(raw.get(end + 2))) {
            (Some(h), Some(l)) => {
                i = end + 3;
                (h * 16 + l) as u8
            }
            _ => {
                i = end + 1;
                b'%'
            }
        };
        if want.get(j) != Some(&b) {
            return false;
        }
        j += 1;
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
    text(content_type_raw(headers))
}

/// The `Content-Type` of a frame's header block as it was sent (not
/// decoded); empty when there is none. The event path compares this with
/// the usual types first and decodes only what is none of them.
pub fn content_type_raw(headers: &[u8]) -> &[u8] {
    const NAME: &[u8] = b"Content-Type:";
    super::lines::lines(headers)
        .find(|l| l.len() >= NAME.len() && l[..NAME.len()].eq_ignore_ascii_case(NAME))
        .map_or(b"", |l| {
            let v = &l[NAME.len()..];
            v.strip_prefix(b" ").unwrap_or(v)
        })
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

    /// What `of_line` must say, read the plain way.
    fn of_line_plainly(line: &[u8]) -> Option<(Field, usize)> {
        Field::ALL.iter().find_map(|&f| {
            let n = f.name().len();
            (line.len() > n
                && line[n] == b':'
                && line[..n].eq_ignore_ascii_case(f.name().as_bytes()))
            .then_some((f, n + 1))
        })
    }

    #[test]
    fn of_line_agrees_with_the_plain_reading_byte_by_byte() {
        // Bytes that fold onto a name's punctuation under `| 0x20` (`\r`
        // onto `-`, DEL onto `_`, 0x1A onto `:`), the case flip of each
        // byte, and others.
        let odd = [
            b'\r', 0x7f, 0x1a, 0, b'-', b'_', b':', b' ', b'@', b'`', 0xff, b'A', b'z',
        ];
        let mut checked = 0;
        for f in Field::ALL {
            let line = format!("{}: v", f.name()).into_bytes();
            for i in 0..line.len() {
                for c in odd.iter().copied().chain([line[i] ^ 0x20]) {
                    let mut l = line.clone();
                    l[i] = c;
                    assert_eq!(
                        Field::of_line(&l),
                        of_line_plainly(&l),
                        "{:?}",
                        String::from_utf8_lossy(&l)
                    );
                    checked += 1;
                }
            }
            for k in 0..=line.len() {
                assert_eq!(Field::of_line(&line[..k]), of_line_plainly(&line[..k]));
            }
        }
        assert!(checked > 1000);
        // Every header line of the corpus's events.
        let Some(raw) = crate::test_support::corpus_file("freeswitch-1.10.12/esl-plain.raw") else {
            return;
        };
        let mut hits = 0;
        for line in raw.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert_eq!(Field::of_line(line), of_line_plainly(line));
            hits += usize::from(Field::of_line(line).is_some());
        }
        assert!(hits > 100, "{hits} header lines of the corpus found");
    }

    #[test]
    fn decoded_eq_agrees_with_decoding_then_comparing() {
        let raws: &[&[u8]] = &[
            b"",
            b"%",
            b"%3",
            b"%3A",
            b"%3a%3A",
            b"%zz",
            b"%%3A",
            b"a%",
            b"a%4",
            b"sofia%3A%3Aregister_failure",
            b"sofia::register_failure",
            b"sofia%3A%3Aregister",
            b"%41%42C",
            b"x%2",
            b"%e2%82%ac",
            b"%FF",
        ];
        let wants: Vec<Vec<u8>> = raws
            .iter()
            .flat_map(|r| [r.to_vec(), percent_decode(r).into_owned()])
            .chain([
                b"sofia::register_failure".to_vec(),
                b"".to_vec(),
                b"%".to_vec(),
            ])
            .collect();
        for raw in raws {
            for want in &wants {
                assert_eq!(
                    decoded_eq(raw, want),
                    *percent_decode(raw) == **want,
                    "{:?} {:?}",
                    String::from_utf8_lossy(raw),
                    String::from_utf8_lossy(want)
                );
            }
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
