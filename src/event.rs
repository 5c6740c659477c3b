//! The values that flow between stages: a point in time, and the failure event
//! every source produces.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// Milliseconds since the Unix epoch. The pure core never reads a clock; the
/// edges pass `Time` in as a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Time(pub i64);

impl Time {
    /// Reads the system clock. Only the async edges call this.
    pub fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time(d.as_millis() as i64)
    }

    /// Whole seconds since the epoch.
    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This time plus `ms` milliseconds, saturating.
    pub fn plus_millis(self, ms: i64) -> Time {
        Time(self.0.saturating_add(ms))
    }
}

/// Steps of the wall clock smaller than this are slewing or scheduling
/// noise, not a step (NTP slews at most 0.5 ms per second).
pub const CLOCK_STEP_MS: i64 = 2_000;

/// Notices steps of the wall clock (an operator's `date -s`, an NTP step
/// after a long outage) by comparing it with a monotonic clock, which the
/// kernel's timeouts follow too. Pure: both readings come in as values.
#[derive(Clone, Copy, Debug)]
pub struct ClockWatch {
    /// Wall minus monotonic, in milliseconds, at the last step.
    offset: i64,
}

impl ClockWatch {
    /// Starts watching at these readings.
    pub fn new(wall: Time, monotonic_ms: i64) -> ClockWatch {
        ClockWatch {
            offset: wall.0 - monotonic_ms,
        }
    }

    /// The step (milliseconds, negative when the clock went back) since the
    /// last one seen, when it is at least [`CLOCK_STEP_MS`].
    pub fn observe(&mut self, wall: Time, monotonic_ms: i64) -> Option<i64> {
        let offset = wall.0 - monotonic_ms;
        let step = offset - self.offset;
        if step.abs() < CLOCK_STEP_MS {
            return None;
        }
        self.offset = offset;
        Some(step)
    }
}

impl fmt::Display for Time {
    /// RFC 3339 in UTC, e.g. `2026-11-25T15:40:54.659Z`. Beyond the years
    /// RFC 3339 writes (0000-9999), which only a stepped clock or odd data
    /// reach, the year is written the ISO 8601 expanded way with a sign and
    /// at least six digits (`+010383-...`), as JavaScript's `toISOString`
    /// and jiff write such years: one shape for every time an `i64` holds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400_000);
        let ms = self.0.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        if (0..=9999).contains(&y) {
            write!(f, "{y:04}")?;
        } else {
            write!(f, "{y:+07}")?;
        }
        write!(
            f,
            "-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    }
}

/// The proleptic Gregorian date of day `days` since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`), for any day an `i64` of milliseconds holds.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Which jail an event belongs to: an index into the daemon's jail list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JailId(pub u16);

/// What kind of failure a source saw. Jails count all kinds alike, except
/// [`FailureKind::InviteAuth`], which counts `invite_weight` times (the jail
/// applies it, whichever source recognised the INVITE), and the kinds
/// documented as apart; the kind is kept for history, metrics and display.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A REGISTER whose digest credentials were wrong (or whose user is unknown).
    RegisterAuth,
    /// An INVITE whose credentials were wrong: a toll-fraud attempt.
    InviteAuth,
    /// A request for a user the server does not know.
    UnknownUser,
    /// A request refused by an access-control list.
    AclReject,
    /// A digest challenge (counted only where a jail asks for it).
    Challenge,
    /// A challenged call that was never answered with credentials.
    Abandoned,
    /// Any other failure a filter reports.
    Other,
    /// A call left in the wrong state (FreeSWITCH `sofia::wrong_call_state`):
    /// a weak signal with its own threshold.
    WrongCallState,
    /// Not a failure: a successful registration, which a jail may use to
    /// trust the address (`trust_registered`).
    Registered,
}

impl FailureKind {
    /// A short lowercase name, as used in logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::RegisterAuth => "register_auth",
            FailureKind::InviteAuth => "invite_auth",
            FailureKind::UnknownUser => "unknown_user",
            FailureKind::AclReject => "acl_reject",
            FailureKind::Challenge => "challenge",
            FailureKind::Abandoned => "abandoned",
            FailureKind::Other => "other",
            FailureKind::WrongCallState => "wrong_call_state",
            FailureKind::Registered => "registered",
        }
    }
}

/// One failure from one source address, as every source reports it.
///
/// `user` is attacker-controlled text: it is data, shown escaped, never
/// parsed for an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureEvent {
    /// When the failure happened (from the log line or event when known).
    pub time: Time,
    /// The jail that counts it.
    pub jail: JailId,
    /// The source address of the offending packet.
    pub addr: IpAddr,
    /// What went wrong.
    pub kind: FailureKind,
    /// The user name tried, if the source knows it (attacker-controlled).
    pub user: Option<Box<str>>,
    /// The request came from a known attack tool (by its user agent).
    pub scanner: bool,
}

/// Canonical form of an address: IPv4-mapped IPv6 (`::ffff:192.0.2.1`) becomes
/// plain IPv4, so one attacker is one key whichever way a server prints it.
pub fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// Escapes attacker-controlled text for display: control characters, quotes
/// and non-ASCII become escapes, and the result is cut at `max` characters.
pub fn escape_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 2);
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_ascii_graphic() && c != '\\' && c != '"' || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Black-box pass N12: with the clock stepped to year 9800, a ban's
    /// `end` was shown as `"@265494153599480ms"`. Every time is written in
    /// one shape, RFC 3339 where it can be, ISO 8601's expanded year past it.
    #[test]
    fn times_beyond_rfc3339_years_keep_the_same_shape() {
        assert_eq!(Time(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Time(1_795_621_254_659).to_string(),
            "2026-11-25T15:40:54.659Z"
        );
        let t = Time(265_494_153_599_480).to_string();
        assert!(!t.starts_with('@'), "{t}");
        assert_eq!(t, "+010383-03-05T23:59:59.480Z");
        // The last millisecond RFC 3339 writes, and the first after it.
        assert_eq!(
            Time(253_402_300_799_999).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            Time(253_402_300_800_000).to_string(),
            "+010000-01-01T00:00:00.000Z"
        );
        // Both ends of what a time holds are written, never a panic.
        for t in [i64::MAX, i64::MIN, -1, -62_167_219_200_001] {
            let s = Time(t).to_string();
            assert!(s.ends_with('Z') && s.contains('T'), "{t}: {s}");
        }
        assert_eq!(Time(-1).to_string(), "1969-12-31T23:59:59.999Z");
        // The same text as jiff's wherever jiff writes one.
        for t in [
            -62_135_596_800_000_i64,
            -1,
            0,
            951_782_400_000,
            1_795_621_254_659,
            4_107_542_400_001,
            253_402_207_200_000,
        ] {
            let ts = jiff::Timestamp::from_millisecond(t).unwrap();
            assert_eq!(Time(t).to_string(), format!("{ts:.3}"), "{t}");
        }
    }

    #[test]
    fn clock_steps_are_noticed_and_slewing_is_not() {
        let mut w = ClockWatch::new(Time(1_000_000), 0);
        // Both clocks advance together: no step.
        assert_eq!(w.observe(Time(1_060_000), 60_000), None);
        // Slewed by 1 s over a minute: noise.
        assert_eq!(w.observe(Time(1_121_000), 120_000), None);
        // Stepped back an hour.
        assert_eq!(
            w.observe(Time(1_121_000 - 3_600_000), 120_000),
            Some(-3_599_000)
        );
        // Then forward two hours; measured from the last step.
        assert_eq!(
            w.observe(Time(1_121_000 + 3_600_000), 120_000),
            Some(7_200_000)
        );
        assert_eq!(w.observe(Time(4_722_000), 121_000), None);
    }

    #[test]
    fn escapes_control_and_cuts() {
        assert_eq!(escape_text("a\nb\x1b[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(escape_text("abcdef", 3), "abc…");
        assert_eq!(escape_text("x\"y", 10), "x\\\"y");
    }

    #[test]
    fn mapped_v4_is_canonical() {
        let a: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(canonical(a), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn time_displays_utc() {
        assert_eq!(
            Time(1_795_621_254_659).to_string(),
            "2026-11-25T15:40:54.659Z"
        );
    }
}
