//! Finding and reading the timestamp at the front of a log line.
//!
//! Built-in filters take the first `YYYY-MM-DD HH:MM:SS[.ffffff]` (or
//! `YYYY-MM-DDTHH:MM:SS`, or year-less `MM-DD HH:MM:SS`) in the head of the line,
//! as fail2ban does with its first matching date pattern. Lines carry no zone,
//! so the jail's `logtimezone` says how to read them.

use jiff::civil::{Date, DateTime, Time as CivilTime};
use jiff::tz::TimeZone;
use std::path::Path;

use crate::event::Time;

/// How far into a line to look for its timestamp (syslog prefixes included).
const DATE_SEARCH_LIMIT: usize = 160;

/// A date and time read from a line, before a zone is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineDate {
    /// Year, or `None` for year-less formats (`08-03 07:56:53`).
    pub year: Option<i16>,
    /// Month 1-12.
    pub month: i8,
    /// Day 1-31.
    pub day: i8,
    /// Hour, minute, second.
    pub hms: (i8, i8, i8),
    /// Fraction of a second, in nanoseconds.
    pub nanos: i32,
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<i32> {
    let s = b.get(at..at + n)?;
    let mut v = 0i32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i32::from(c - b'0');
    }
    Some(v)
}

/// Reads `HH:MM:SS[.fff...]` at `at`; returns the parts and the end offset.
fn read_hms(b: &[u8], at: usize) -> Option<((i8, i8, i8), i32, usize)> {
    let h = digits(b, at, 2)?;
    (b.get(at + 2) == Some(&b':')).then_some(())?;
    let m = digits(b, at + 3, 2)?;
    (b.get(at + 5) == Some(&b':')).then_some(())?;
    let s = digits(b, at + 6, 2)?;
    let mut end = at + 8;
    let mut nanos = 0i32;
    if matches!(b.get(end), Some(b'.') | Some(b',')) {
        let mut scale = 100_000_000;
        let mut k = end + 1;
        while let Some(c) = b.get(k).filter(|c| c.is_ascii_digit()) {
            nanos += i32::from(c - b'0') * scale;
            scale /= 10;
            k += 1;
        }
        if k > end + 1 {
            end = k;
        }
    }
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(((h as i8, m as i8, s as i8), nanos, end))
}

/// Reads a date-time starting exactly at `at`; returns it and its end.
pub fn read_at(b: &[u8], at: usize) -> Option<(LineDate, usize)> {
    // YYYY-MM-DD[ T]HH:MM:SS
    if let (Some(y), Some(b'-')) = (digits(b, at, 4), b.get(at + 4)) {
        let mo = digits(b, at + 5, 2)?;
        (b.get(at + 7) == Some(&b'-')).then_some(())?;
        let d = digits(b, at + 8, 2)?;
        matches!(b.get(at + 10), Some(b' ') | Some(b'T')).then_some(())?;
        let (hms, nanos, end) = read_hms(b, at + 11)?;
        return valid(Some(y as i16), mo, d, hms, nanos).map(|ld| (ld, end));
    }
    // MM-DD HH:MM:SS
    let mo = digits(b, at, 2)?;
    (b.get(at + 2) == Some(&b'-')).then_some(())?;
    let d = digits(b, at + 3, 2)?;
    (b.get(at + 5) == Some(&b' ')).then_some(())?;
    let (hms, nanos, end) = read_hms(b, at + 6)?;
    valid(None, mo, d, hms, nanos).map(|ld| (ld, end))
}

fn valid(year: Option<i16>, mo: i32, d: i32, hms: (i8, i8, i8), nanos: i32) -> Option<LineDate> {
    ((1..=12).contains(&mo) && (1..=31).contains(&d)).then_some(LineDate {
        year,
        month: mo as i8,
        day: d as i8,
        hms,
        nanos,
    })
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Reads syslog's `Mmm DD HH:MM:SS` (day space-padded) at `at`.
fn read_syslog_at(b: &[u8], at: usize) -> Option<(LineDate, usize)> {
    let m = b.get(at..at + 3)?;
    let month = MONTHS.iter().position(|x| x.as_slice() == m)? as i32 + 1;
    let mut i = at + 3;
    (b.get(i) == Some(&b' ')).then_some(())?;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let d1 = digits(b, i, 1)?;
    let (day, next) = match digits(b, i + 1, 1) {
        Some(d2) => (d1 * 10 + d2, i + 2),
        None => (d1, i + 1),
    };
    (b.get(next) == Some(&b' ')).then_some(())?;
    // Some logs put the year after the day: `Mar 27 2024 10:06:14`.
    let (year, hms_at) = match (digits(b, next + 1, 4), b.get(next + 5)) {
        (Some(y), Some(b' ')) => (Some(y as i16), next + 6),
        _ => (None, next + 1),
    };
    let (hms, nanos, end) = read_hms(b, hms_at)?;
    valid(year, month, day, hms, nanos).map(|ld| (ld, end))
}

/// Finds the first date-time in the head of `line`; returns it and the offset
/// just past it.
pub fn find_line_date(line: &[u8]) -> Option<(LineDate, usize)> {
    let limit = line.len().min(DATE_SEARCH_LIMIT);
    let mut i = 0;
    while i < limit {
        let c = line[i];
        if c.is_ascii_digit() && (i == 0 || !line[i - 1].is_ascii_digit()) {
            if let Some(found) = read_at(line, i) {
                return Some(found);
            }
        } else if c.is_ascii_uppercase() && (i == 0 || !line[i - 1].is_ascii_alphabetic()) {
            if let Some(found) = read_syslog_at(line, i) {
                return Some(found);
            }
        }
        i += 1;
    }
    None
}

/// The instant a zone-less local time in `tz` names, read as close to `now`
/// as it can be without being in the future. Every filter's dates go
/// through here (built-in and fail2ban alike), so one rule holds everywhere:
///
/// * Most local times name one instant.
/// * A time in the hour repeated when clocks go back (02:14 on the last
///   Sunday of October in Berlin) names two: the later one when it is not in
///   the future, else the earlier. At 02:15 CET a line stamped 02:14 is a
///   minute old, not an hour; at 02:20 CEST it is the summer 02:14.
/// * A time in the hour skipped when clocks go forward (02:30 on the last
///   Sunday of March in Berlin) comes from no correct clock. It is read with
///   the offset before the jump (as a writer whose clock has not jumped yet
///   writes it: 02:30 is 01:30 UTC) by the same rule, so with the offset
///   after the jump (00:30 UTC) only while the former is still to come.
///
/// Both readings in the future (a log ahead of this host's clock): the
/// earlier, the closer to now.
pub fn local_to_time(dt: DateTime, tz: &TimeZone, now: Time) -> Option<Time> {
    let amb = tz.to_ambiguous_timestamp(dt);
    let earlier = Time(amb.earlier().ok()?.as_millisecond());
    if !amb.is_ambiguous() {
        return Some(earlier);
    }
    let later = Time(amb.later().ok()?.as_millisecond());
    Some(if later <= now { later } else { earlier })
}

/// Turns a line date into a point in time in zone `tz` (read by
/// [`local_to_time`]). A year-less date takes the year of `now`, or the year
/// before when that would put it more than a day in the future (a December
/// line read in January).
pub fn resolve(date: LineDate, tz: &TimeZone, now: Time) -> Option<Time> {
    let (h, m, s) = date.hms;
    let time = CivilTime::new(h, m, s.min(59), date.nanos).ok()?;
    let to_time = |year: i16| -> Option<Time> {
        let dt = DateTime::from_parts(Date::new(year, date.month, date.day).ok()?, time);
        local_to_time(dt, tz, now)
    };
    match date.year {
        Some(y) => to_time(y),
        None => {
            let now_ts = jiff::Timestamp::from_millisecond(now.0).ok()?;
            let year = now_ts.to_zoned(tz.clone()).year();
            let t = to_time(year)?;
            if t.0 > now.0 + 86_400_000 {
                to_time(year - 1)
            } else {
                Some(t)
            }
        }
    }
}

/// Reads a zone name as the `logtimezone` key accepts it: `local`, `UTC`, an
/// IANA name (`Europe/Berlin`), or a fixed offset (`+0530`, `-03:00`).
pub fn parse_zone(name: &str) -> Result<TimeZone, ZoneError> {
    let n = name.trim();
    if n.eq_ignore_ascii_case("local") || n.is_empty() {
        return Ok(local_zone());
    }
    if n.eq_ignore_ascii_case("utc") || n.eq_ignore_ascii_case("z") || n.eq_ignore_ascii_case("gmt")
    {
        return Ok(TimeZone::UTC);
    }
    if let Some(secs) = parse_offset(n.as_bytes()) {
        return jiff::tz::Offset::from_seconds(secs)
            .map(TimeZone::fixed)
            .map_err(|source| ZoneError::Offset {
                name: n.to_string(),
                source,
            });
    }
    TimeZone::get(n).map_err(|source| ZoneError::Unknown {
        name: n.to_string(),
        source,
    })
}

/// The host's zone (`local`): `TZ` as jiff reads it when set, else
/// `/etc/localtime` read directly when it links into a zoneinfo tree,
/// named as jiff names it. jiff's own lookup would first list every zone
/// name on the host (about 40 directory reads, a millisecond or two of
/// every `test-filter` and start) only to name the same file.
fn local_zone() -> TimeZone {
    std::env::var_os("TZ")
        .is_none()
        .then(|| zone_file(Path::new("/etc/localtime")))
        .flatten()
        .unwrap_or_else(|| TimeZone::try_system().unwrap_or(TimeZone::UTC))
}

/// The zone in the TZif file the link `path` points to, named after the
/// target's path below its last `zoneinfo/` directory, as jiff names it.
/// `None` when `path` is not such a link: jiff then reads the file unnamed
/// without listing the zones, and its answer is the one to keep.
fn zone_file(path: &Path) -> Option<TimeZone> {
    let link = std::fs::read_link(path).ok()?;
    let (_, name) = link.to_str()?.rsplit_once("zoneinfo/")?;
    let data = std::fs::read(path).ok()?;
    TimeZone::tzif(name, &data).ok()
}

/// Why a `logtimezone` (or `test-filter --tz`) is not a zone.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// A numeric offset beyond what any zone has.
    #[error("offset {name:?} is out of range: {source}")]
    Offset {
        /// As written.
        name: String,
        /// jiff's reason.
        source: jiff::Error,
    },
    /// A name the system's zone database does not have.
    #[error(
        "unknown time zone {name:?} ({source}); use \"local\", \"UTC\", an IANA name such as \"Europe/Berlin\" or an offset such as \"+0530\""
    )]
    Unknown {
        /// As written.
        name: String,
        /// jiff's reason.
        source: jiff::Error,
    },
}

/// Reads a numeric UTC offset: `+HHMM`, `+HH:MM`, `+HH`, and mod_fail2ban's
/// broken form for half-hour zones, `+HHSSSS`, where the part after the hours
/// is seconds (it writes `+051800` for +05:30).
pub fn parse_offset(b: &[u8]) -> Option<i32> {
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let rest: Vec<u8> = b[1..].iter().copied().filter(|&c| c != b':').collect();
    if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hours = digits(&rest, 0, 2)?;
    let tail = &rest[2..];
    let extra = match tail.len() {
        0 => 0,
        // Well-formed minutes.
        2 => {
            let m = digits(tail, 0, 2)?;
            if m > 59 {
                return None;
            }
            m * 60
        }
        // mod_fail2ban's seconds-after-the-hour ("+05900" is +05:15).
        3 | 4 => {
            let s = digits(tail, 0, tail.len())?;
            if s >= 3600 {
                return None;
            }
            s
        }
        _ => return None,
    };
    if hours > 25 {
        return None;
    }
    Some(sign * (hours * 3600 + extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: &str) -> Option<Time> {
        let (d, _) = find_line_date(line.as_bytes())?;
        resolve(d, &TimeZone::UTC, Time(1_795_621_254_000))
    }

    #[test]
    fn the_local_zone_is_read_like_jiff_reads_it() {
        let offsets = |tz: &TimeZone| {
            // Winter and summer, before and after 2000.
            [0i64, 962_409_600, 1_795_621_254, 1_784_000_000]
                .map(|s| tz.to_offset(jiff::Timestamp::from_second(s).unwrap()))
        };
        let jiffs = TimeZone::try_system().unwrap_or(TimeZone::UTC);
        assert_eq!(offsets(&local_zone()), offsets(&jiffs));
        // A zone with summer time, through a link as /etc/localtime is.
        // (tzdata: other tests read Europe/Berlin from it too.)
        let berlin = Path::new("/usr/share/zoneinfo/Europe/Berlin");
        let dir = std::env::temp_dir().join(format!("sw-localtime-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("localtime");
        std::os::unix::fs::symlink(berlin, &link).unwrap();
        let ours = zone_file(&link).unwrap();
        assert_eq!(ours.iana_name(), Some("Europe/Berlin"));
        let theirs = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(offsets(&ours), offsets(&theirs));
        assert_ne!(offsets(&ours)[2], offsets(&ours)[3]);
        // Not a link, or a link into no zoneinfo tree: left to jiff.
        assert!(zone_file(berlin).is_none());
        let elsewhere = dir.join("elsewhere");
        std::fs::copy(berlin, dir.join("berlin")).unwrap();
        std::os::unix::fs::symlink(dir.join("berlin"), &elsewhere).unwrap();
        assert!(zone_file(&elsewhere).is_none());
        assert!(zone_file(&dir.join("absent")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_first_date() {
        let t = at("2026-11-25 15:40:54.659156 98.73% [WARNING] x").unwrap();
        assert_eq!(t, Time(1_795_621_254_659));
        let t =
            at("9e1e9dbe-206b-4400-8b9e-370389cdeea4 2026-11-25 15:41:44.179158 98.50% [WARNING]");
        assert_eq!(t.unwrap().as_secs(), 1_795_621_304);
        // Syslog dual time: the first one wins, as in fail2ban.
        let t = at(
            "2016-09-25T18:57:58.150982 www.srv.tld freeswitch[122921]: 2016-09-25 18:57:59.1 [WARNING]",
        );
        assert_eq!(t.unwrap().as_secs(), 1_474_829_878);
    }

    #[test]
    fn yearless_takes_year_of_now() {
        let t = at("08-03 07:56:53.026292 [WARN] [SOFIA] x").unwrap();
        let z = jiff::Timestamp::from_millisecond(t.0)
            .unwrap()
            .to_zoned(TimeZone::UTC);
        assert_eq!((z.year(), z.month(), z.day()), (2026, 8, 3));
        // A date more than a day ahead of now belongs to last year.
        let t = at("12-30 07:56:53 [WARN] x").unwrap();
        let z = jiff::Timestamp::from_millisecond(t.0)
            .unwrap()
            .to_zoned(TimeZone::UTC);
        assert_eq!(z.year(), 2025);
    }

    #[test]
    fn syslog_dates() {
        let t = at("Nov  4 18:30:40 localhost asterisk[32229]: x").unwrap();
        let z = jiff::Timestamp::from_millisecond(t.0)
            .unwrap()
            .to_zoned(TimeZone::UTC);
        assert_eq!((z.month(), z.day(), z.hour(), z.second()), (11, 4, 18, 40));
        let t = at("[Jan 18 17:39:50] NOTICE[12049]: res_pjsip").unwrap();
        let z = jiff::Timestamp::from_millisecond(t.0)
            .unwrap()
            .to_zoned(TimeZone::UTC);
        assert_eq!((z.year(), z.month(), z.day()), (2026, 1, 18));
        assert!(at("Nov x").is_none());
        assert!(at("Jun 31 10:00:00 x").is_none());
    }

    #[test]
    fn rejects_non_dates() {
        assert!(at("no date here").is_none());
        assert!(at("2026-13-25 15:40:54 x").is_none());
        assert!(at("2026-11-25 25:40:54 x").is_none());
    }

    #[test]
    fn applies_zone() {
        let (d, _) = find_line_date(b"2026-11-25 16:40:54 x").unwrap();
        let tz = parse_zone("Europe/Berlin").unwrap();
        assert_eq!(resolve(d, &tz, Time(0)).unwrap().as_secs(), 1_795_621_254);
        let tz = parse_zone("+01:00").unwrap();
        assert_eq!(resolve(d, &tz, Time(0)).unwrap().as_secs(), 1_795_621_254);
        assert!(parse_zone("Mars/Olympus").is_err());
    }

    fn utc(s: &str) -> Time {
        Time(s.parse::<jiff::Timestamp>().unwrap().as_millisecond())
    }

    /// Issue 16, finding 14: in the repeated hour of a DST change, a local
    /// time used to be read with the summer offset always, so during the
    /// second pass it looked an hour old.
    #[test]
    fn repeated_dst_hour_reads_the_pass_closest_to_now() {
        let tz = parse_zone("Europe/Berlin").unwrap();
        let (d, _) = find_line_date(b"2026-10-25 02:14:00.250000 x").unwrap();
        // 02:15 CET, the second pass: the line is a minute old.
        assert_eq!(
            resolve(d, &tz, utc("2026-10-25T01:15:00Z")),
            Some(utc("2026-10-25T01:14:00.250Z"))
        );
        // 02:20 CEST, the first pass: the CET reading is still to come.
        assert_eq!(
            resolve(d, &tz, utc("2026-10-25T00:20:00Z")),
            Some(utc("2026-10-25T00:14:00.250Z"))
        );
        // Long after: the later pass, the last one not in the future.
        assert_eq!(
            resolve(d, &tz, utc("2026-11-01T00:00:00Z")),
            Some(utc("2026-10-25T01:14:00.250Z"))
        );
        // Before both (a log from the future): the one closer to now.
        assert_eq!(
            resolve(d, &tz, utc("2026-10-24T00:00:00Z")),
            Some(utc("2026-10-25T00:14:00.250Z"))
        );
        // A year-less date goes through the same rule.
        let (d, _) = find_line_date(b"10-25 02:14:00 x").unwrap();
        assert_eq!(
            resolve(d, &tz, utc("2026-10-25T01:15:00Z")),
            Some(utc("2026-10-25T01:14:00Z"))
        );
    }

    /// The hour skipped in spring cannot come from a correct clock; it is
    /// read with the offset before the jump (as a writer whose clock has
    /// not jumped yet writes it) unless that is still in the future.
    #[test]
    fn skipped_dst_hour_has_a_documented_reading() {
        let tz = parse_zone("Europe/Berlin").unwrap();
        let (d, _) = find_line_date(b"2026-03-29 02:30:00 x").unwrap();
        assert_eq!(
            resolve(d, &tz, utc("2026-03-29T01:31:00Z")),
            Some(utc("2026-03-29T01:30:00Z"))
        );
        assert_eq!(
            resolve(d, &tz, utc("2026-03-29T00:40:00Z")),
            Some(utc("2026-03-29T00:30:00Z"))
        );
    }

    #[test]
    fn offsets_including_mod_fail2ban_bug() {
        assert_eq!(parse_offset(b"+0000"), Some(0));
        assert_eq!(parse_offset(b"+0530"), Some(19_800));
        assert_eq!(parse_offset(b"+051800"), Some(19_800));
        assert_eq!(parse_offset(b"+054500"), None);
        assert_eq!(parse_offset(b"+052700"), Some(5 * 3600 + 2700));
        assert_eq!(parse_offset(b"+05900"), Some(5 * 3600 + 900));
        assert_eq!(parse_offset(b"-0330"), Some(-12_600));
        assert_eq!(parse_offset(b"-031800"), Some(-12_600));
        assert_eq!(parse_offset(b"+05:30"), Some(19_800));
        assert_eq!(parse_offset(b"0530"), None);
        assert_eq!(parse_offset(b"+0575"), None);
    }
}
