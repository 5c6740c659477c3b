//! Dates in fail2ban filters: `datepattern` (strptime directives inside a
//! regex, `{^LN-BEG}`, `{DATE}`, `EPOCH`, `LEPOCH`, `TAI64N`) and, without
//! one, a list of common log date formats tried in order (written here).
//!
//! The matched date is cut out of the line before the failure regexes run,
//! as fail2ban does (which is why its prefixes allow an empty `[]`).

use jiff::civil::{Date, DateTime, Time as CivilTime};
use jiff::tz::{Offset, TimeZone};

use super::regex::{Pattern, PatternError};
use crate::event::Time;
use crate::filter::date::local_to_time;

/// Common formats, as strptime-style templates, most specific first.
const DEFAULT_TEMPLATES: &[&str] = &[
    r"^EPOCH",
    r"^TAI64N",
    r"%Y-%m-%d(?:T| +)%H:%M:%S(?:[.,]%f)?(?:\s*%z)?",
    r"%Y/%m/%d[T ]%H:%M:%S(?:[.,]%f)?",
    r"%Y\.%m\.%d[T ]%H:%M:%S(?:[.,]%f)?",
    r"%a %b %d %H:%M:%S(?:[.,]%f)? %Y",
    r"%a %b %d %Y %H:%M:%S(?:[.,]%f)?",
    r"%b %d %Y %H:%M:%S(?:[.,]%f)?",
    r"%d/%b/%Y[: ]%H:%M:%S(?:[.,]%f)?(?: ?%z)?",
    r"%d-%b-%Y %H:%M:%S(?:[.,]%f)?(?: ?%z)?",
    r"%d/%m/%Y %H:%M:%S",
    r"%d-%m-%Y %H:%M:%S",
    r"%m/%d/%Y:? ?%H:%M:%S",
    r"%m/%d/%Y - %H:%M:%S",
    r"%a %b %d %H:%M:%S(?:[.,]%f)?",
    // A zone name before the date, as monit writes it.
    r"(?P<dZ>UTC|GMT|CES?T|EES?T|WES?T|[ECMP][SD]T|MSK|JST) %b %d %H:%M:%S(?:[.,]%f)?",
    r"%b %d %H:%M:%S(?:[.,]%f)?",
    r"%d %b %Y %H:%M:%S",
    r"\b%Exy%Exm%Exd\s*%H:%M:%S",
    r"\b%Y%m%d ?%H%M%S\b",
    r"%m-%d %H:%M:%S(?:[.,]%f)?",
    r"%H:%M:%S %d/%m/%Y",
    r"%b-%d-%y %H:%M:%S",
    r"%Y:%m:%d-%H:%M:%S",
];

/// Expands strptime directives into regex groups.
fn strptime_to_regex(p: &str) -> String {
    let mut out = String::new();
    let mut chars = p.chars().peekable();
    let mut seen: Vec<&str> = Vec::new();
    let mut group = |name: &'static str, re: &str, out: &mut String| {
        if seen.contains(&name) {
            out.push_str(&format!("(?:{re})"));
        } else {
            seen.push(name);
            out.push_str(&format!("(?P<{name}>{re})"));
        }
    };
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut d = chars.next().unwrap_or('%');
        let mut exact = false;
        if d == 'E' && chars.peek() == Some(&'x') {
            chars.next();
            exact = true;
            d = chars.next().unwrap_or('%');
        }
        match d {
            '%' => out.push('%'),
            'Y' => group("dY", if exact { r"20\d\d" } else { r"\d{4}" }, &mut out),
            'y' => group("dy", r"\d\d", &mut out),
            'm' => group(
                "dm",
                if exact {
                    r"0[1-9]|1[0-2]"
                } else {
                    r"1[0-2]|0?[1-9]"
                },
                &mut out,
            ),
            'd' => group(
                "dd",
                if exact {
                    r"0[1-9]|[12]\d|3[01]"
                } else {
                    r"3[01]|[12]\d|0?[1-9]| [1-9]"
                },
                &mut out,
            ),
            'e' => group("dd", r" ?[1-9]|[12]\d|3[01]", &mut out),
            'H' | 'k' => group(
                "dH",
                if exact {
                    r"[01]\d|2[0-3]"
                } else {
                    r"2[0-3]|[01]?\d"
                },
                &mut out,
            ),
            'I' | 'l' => group("dI", r"1[0-2]|0?[1-9]", &mut out),
            'M' => group("dM", if exact { r"[0-5]\d" } else { r"[0-5]?\d" }, &mut out),
            'S' => group(
                "dS",
                if exact { r"[0-5]\d|60" } else { r"[0-5]?\d|60" },
                &mut out,
            ),
            'f' => group("df", r"\d+", &mut out),
            'p' => group("dp", r"[AaPp][Mm]", &mut out),
            // Month names in any case, abbreviated any way (`Sep`, `sept.`).
            'b' | 'B' | 'h' => group(
                "db",
                r"(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-zA-Z]*",
                &mut out,
            ),
            'a' | 'A' => out.push_str(r"(?:[A-Z][a-z]{2,8})"),
            'z' => group("dz", r"Z|UTC|GMT|[+-]\d\d(?::?\d\d){0,2}", &mut out),
            'Z' => group("dZ", r"[A-Z]{3,5}", &mut out),
            'j' => group("dj", r"\d{1,3}", &mut out),
            's' => group("ds", r"\d{9,11}", &mut out),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

/// Regex of a template (keywords and strptime).
fn template_regex(t: &str) -> String {
    // Keywords are read in any case (`Epoch`, as nsd's filter writes it).
    let keyword = |r: &str| {
        let u = r.trim().to_ascii_uppercase();
        matches!(u.as_str(), "EPOCH" | "LEPOCH" | "TAI64N").then_some(u)
    };
    if let Some(rest) = t.strip_prefix('^').and_then(keyword) {
        return format!("^{}", template_regex(&rest));
    }
    match keyword(t).as_deref().unwrap_or(t.trim()) {
        "EPOCH" => r"(?P<ds>\d{9,11})(?:\.(?P<df>\d{1,6}))?".to_string(),
        "LEPOCH" => r"(?P<dms>\d{12,16})".to_string(),
        "TAI64N" => r"@(?P<dtai>[0-9a-fA-F]{24})".to_string(),
        other => strptime_to_regex(other),
    }
}

/// How a filter finds dates.
#[derive(Debug, Clone)]
pub struct DateDetector {
    patterns: Vec<Pattern>,
    /// How many bytes of the line can precede the cut-out date, when that is
    /// bounded for every pattern (the prefilter needs it).
    max_lead: Option<usize>,
}

/// A date found in a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoundDate {
    /// The instant, when the text is a valid date.
    pub time: Option<Time>,
    /// Byte range of the date text in the line.
    pub span: (usize, usize),
}

impl DateDetector {
    /// The default list of formats, found anywhere in the line.
    pub fn default_templates() -> DateDetector {
        DateDetector::from_datepattern("{DATE}").unwrap_or(DateDetector {
            patterns: Vec::new(),
            max_lead: Some(0),
        })
    }

    /// Builds a detector from a `datepattern` value (one pattern per line).
    pub fn from_datepattern(v: &str) -> Result<DateDetector, DatePatternError> {
        let mut patterns = Vec::new();
        let mut max_lead = Some(0);
        for line in v.lines().map(str::trim).filter(|l| !l.is_empty()) {
            // `**` at either end only lifts fail2ban's word boundaries,
            // which sipwarden does not add.
            let line = line.strip_prefix("**").unwrap_or(line);
            let line = line.strip_suffix("**").unwrap_or(line);
            let (line, anchored) = match line.strip_prefix("{^LN-BEG}") {
                Some(rest) => (if rest.is_empty() { "{DATE}" } else { rest }, true),
                None => (line, false),
            };
            let bodies: Vec<String> = if line.contains("{DATE}") {
                DEFAULT_TEMPLATES
                    .iter()
                    .map(|t| line.replace("{DATE}", &template_regex(t)))
                    .collect()
            } else {
                vec![template_regex(line)]
            };
            let mut lead = Some(0);
            for body in bodies {
                // What is cut out of the line: the pattern's first plain
                // group when it has one, else all of it; never the
                // `{^LN-BEG}` anchor (fail2ban's rule).
                let (mut re, explicit) = cut_group(&body);
                if anchored {
                    re = format!(r"^\W{{0,3}}{re}");
                }
                let p = Pattern::new(&re).map_err(|source| DatePatternError {
                    line: line.to_string(),
                    source,
                })?;
                // How much of the line can precede the cut (the prefilter
                // needs a bound): the anchor's three characters, nothing
                // for a pattern tied to the line's start, else unknown.
                let l = if explicit {
                    None
                } else if anchored {
                    Some(3)
                } else if starts_at_line_start(&p) {
                    Some(0)
                } else {
                    None
                };
                lead = lead.zip(l).map(|(a, b)| a.max(b));
                patterns.push(p);
            }
            max_lead = max_lead.zip(lead).map(|(a, b)| a.max(b));
        }
        Ok(DateDetector { patterns, max_lead })
    }

    /// How many bytes of a line can precede its cut-out date; `None` when
    /// a pattern can find a date anywhere.
    pub fn max_lead(&self) -> Option<usize> {
        self.max_lead
    }

    /// Where the date of `line` is: the first pattern (in order) that
    /// matches, and the span to cut out. Found with DFAs where the pattern
    /// allows; reading the date's fields is left to [`time_at`](Self::time_at).
    pub fn locate(&self, line: &str) -> Option<Located> {
        self.patterns.iter().enumerate().find_map(|(i, p)| {
            p.group_span(line, "dt")
                .map(|span| Located { pattern: i, span })
        })
    }

    /// The instant of a located date; `None` when its text is not a valid
    /// date (fail2ban then also goes on without a date, the text still cut).
    pub fn time_at(&self, line: &str, at: &Located, tz: &TimeZone, now: Time) -> Option<Time> {
        let c = self.patterns.get(at.pattern)?.captures(line)?;
        to_time(&c, tz, now)
    }

    /// Finds the date of `line` and reads it.
    pub fn find(&self, line: &str, tz: &TimeZone, now: Time) -> Option<FoundDate> {
        let at = self.locate(line)?;
        Some(FoundDate {
            time: self.time_at(line, &at, tz, now),
            span: at.span,
        })
    }
}

/// A `datepattern` line that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("datepattern {line:?}: {source}")]
pub struct DatePatternError {
    /// The line, as it reads once `**` and `{^LN-BEG}` are taken off.
    pub line: String,
    /// Why its regex does not compile.
    pub source: PatternError,
}

/// A date located in a line, not read yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// Which pattern found it.
    pub pattern: usize,
    /// Byte range of the date text in the line.
    pub span: (usize, usize),
}

/// `re` with its cut marked as group `dt`: the first plain (unnamed,
/// capturing) group becomes it, or the whole pattern is wrapped. Also
/// whether the pattern had such a group.
fn cut_group(re: &str) -> (String, bool) {
    let b = re.as_bytes();
    let mut i = 0;
    let mut in_class = false;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !in_class => in_class = true,
            b']' if in_class => in_class = false,
            b'(' if !in_class && b.get(i + 1) != Some(&b'?') => {
                return (format!("{}(?P<dt>{}", &re[..i], &re[i + 1..]), true);
            }
            _ => {}
        }
        i += 1;
    }
    (format!("(?P<dt>{re})"), false)
}

/// Whether every match of `p` starts at the start of the text.
fn starts_at_line_start(p: &Pattern) -> bool {
    p.hir().is_some_and(|h| {
        h.properties()
            .look_set_prefix()
            .contains(regex_syntax::hir::Look::Start)
    })
}

fn month_number(name: &str) -> Option<i8> {
    const M: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let l = name.get(..3)?.to_ascii_lowercase();
    M.iter().position(|m| *m == l).map(|i| i as i8 + 1)
}

fn offset_secs(z: &str) -> Option<i32> {
    if matches!(z, "Z" | "UTC" | "GMT") {
        return Some(0);
    }
    let sign = if z.starts_with('-') { -1 } else { 1 };
    let digits: String = z[1..].chars().filter(char::is_ascii_digit).collect();
    let h: i32 = digits.get(..2)?.parse().ok()?;
    let m: i32 = digits.get(2..4).map_or(Some(0), |s| s.parse().ok())?;
    Some(sign * (h * 3600 + m * 60))
}

/// The first `digits` digits of a fraction's digits, right-padded with
/// zeros (`"5"` is 500 milliseconds).
fn fraction(f: &str, digits: usize) -> i32 {
    let mut v = 0i32;
    let mut b = f.bytes();
    for _ in 0..digits {
        let d = match b.next() {
            Some(c @ b'0'..=b'9') => i32::from(c - b'0'),
            _ => 0,
        };
        v = v * 10 + d;
    }
    v
}

/// The date groups of a match, read in one pass.
#[derive(Default)]
struct Fields<'a> {
    epoch: Option<&'a str>,
    frac: Option<&'a str>,
    epoch_ms: Option<&'a str>,
    tai: Option<&'a str>,
    month: Option<&'a str>,
    month_name: Option<&'a str>,
    day: Option<&'a str>,
    hour24: Option<&'a str>,
    hour12: Option<&'a str>,
    ampm: Option<&'a str>,
    minute: Option<&'a str>,
    second: Option<&'a str>,
    zone: Option<&'a str>,
    zone_name: Option<&'a str>,
    year4: Option<&'a str>,
    year2: Option<&'a str>,
}

impl<'a> Fields<'a> {
    fn of(c: &super::regex::Captures<'a>) -> Fields<'a> {
        let mut f = Fields::default();
        for (n, v) in &c.named {
            match *n {
                "ds" => f.epoch = Some(*v),
                "df" => f.frac = Some(*v),
                "dms" => f.epoch_ms = Some(*v),
                "dtai" => f.tai = Some(*v),
                "dm" => f.month = Some(*v),
                "db" => f.month_name = Some(*v),
                "dd" => f.day = Some(*v),
                "dH" => f.hour24 = Some(*v),
                "dI" => f.hour12 = Some(*v),
                "dp" => f.ampm = Some(*v),
                "dM" => f.minute = Some(*v),
                "dS" => f.second = Some(*v),
                "dz" => f.zone = Some(*v),
                "dZ" => f.zone_name = Some(*v),
                "dY" => f.year4 = Some(*v),
                "dy" => f.year2 = Some(*v),
                _ => {}
            }
        }
        f
    }
}

/// Offsets of the zone names logs write (standard and summer time).
fn zone_name_secs(z: &str) -> Option<i32> {
    let h = match z {
        "UTC" | "GMT" | "WET" | "Z" => 0,
        "CET" | "WEST" => 1,
        "CEST" | "EET" => 2,
        "EEST" | "MSK" => 3,
        "JST" => 9,
        "EST" | "CDT" => -5,
        "EDT" => -4,
        "CST" | "MDT" => -6,
        "MST" | "PDT" => -7,
        "PST" => -8,
        _ => return None,
    };
    Some(h * 3600)
}

fn to_time(c: &super::regex::Captures, tz: &TimeZone, now: Time) -> Option<Time> {
    let f = Fields::of(c);
    if let Some(s) = f.epoch {
        let secs: i64 = s.parse().ok()?;
        let frac = f.frac.map_or(0, |f| i64::from(fraction(f, 3)));
        return Some(Time(secs * 1000 + frac));
    }
    if let Some(ms) = f.epoch_ms {
        let v: i64 = ms.parse().ok()?;
        return Some(Time(match ms.len() {
            12 | 13 => v,
            _ => v / 1000,
        }));
    }
    if let Some(t) = f.tai {
        // The label read as Unix seconds, with no TAI-UTC correction: what
        // fail2ban does, and what its samples expect.
        let secs = i64::from_str_radix(&t[..16], 16).ok()? - (1i64 << 62);
        return Some(Time(secs * 1000));
    }
    // A time without a date is today's (yesterday's, if that is ahead).
    let time_only = f.month.is_none() && f.month_name.is_none() && f.day.is_none();
    let (month, day): (i8, i8) = if time_only {
        (1, 1)
    } else {
        let month = match (f.month, f.month_name) {
            (Some(m), _) => m.trim().parse().ok()?,
            (None, Some(b)) => month_number(b)?,
            _ => return None,
        };
        (month, f.day?.trim().parse().ok()?)
    };
    let mut hour: i8 = c
        .get("dH")
        .or(f.hour12)
        .map_or(Some(0), |h| h.parse().ok())?;
    if let Some(p) = f.ampm {
        let pm = p.eq_ignore_ascii_case("pm");
        hour = match (hour, pm) {
            (12, false) => 0,
            (12, true) => 12,
            (h, true) => h + 12,
            (h, false) => h,
        };
    }
    let minute: i8 = f.minute.map_or(Some(0), |m| m.parse().ok())?;
    let second: i8 = f.second.map_or(Some(0), |s| s.parse().ok())?;
    let nanos: i32 = f.frac.map_or(0, |f| fraction(f, 9));
    let time = CivilTime::new(hour, minute, second.min(59), nanos).ok()?;
    // Borrowed, not cloned: a zone is shared, and cloning it on every line
    // made threads fight over its reference count.
    let fixed;
    let zone: &TimeZone = match f
        .zone
        .and_then(offset_secs)
        .or_else(|| f.zone_name.and_then(zone_name_secs))
    {
        Some(s) => {
            fixed = TimeZone::fixed(Offset::from_seconds(s).ok()?);
            &fixed
        }
        None => tz,
    };
    // One rule for local times in every filter, DST changes included.
    let at = |d: Date| local_to_time(DateTime::from_parts(d, time), zone, now);
    let mk = |year: i16| at(Date::new(year, month, day).ok()?);
    if time_only {
        if f.hour24.is_none() && f.hour12.is_none() {
            return None;
        }
        let today = zone
            .to_datetime(jiff::Timestamp::from_millisecond(now.0).ok()?)
            .date();
        let t = at(today)?;
        return if t.0 > now.0 + 60_000 {
            at(today.yesterday().ok()?)
        } else {
            Some(t)
        };
    }
    match (f.year4, f.year2) {
        (Some(y), _) => mk(y.parse().ok()?),
        (None, Some(y)) => {
            let y: i16 = y.parse().ok()?;
            mk(if y < 69 { 2000 + y } else { 1900 + y })
        }
        (None, None) => {
            let year = zone
                .to_datetime(jiff::Timestamp::from_millisecond(now.0).ok()?)
                .year();
            let t = mk(year)?;
            // A year-less date more than a day ahead belongs to last year.
            if t.0 > now.0 + 86_400_000 {
                mk(year - 1)
            } else {
                Some(t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn civil(t: Time, tz: &TimeZone) -> String {
        jiff::Timestamp::from_millisecond(t.0)
            .unwrap()
            .to_zoned(tz.clone())
            .datetime()
            .strftime("%Y-%m-%dT%H:%M:%S")
            .to_string()
    }

    #[test]
    fn default_formats() {
        let d = DateDetector::default_templates();
        let tz = TimeZone::UTC;
        let now = Time(1_124_013_600_000);
        let cases = [
            (
                "2013-12-31 17:39:54.767815 [WARNING] x",
                "2013-12-31T17:39:54",
            ),
            (
                "Nov  4 18:30:40 localhost sshd[1]: x",
                "2004-11-04T18:30:40",
            ),
            ("[Jan 18 17:39:50] NOTICE x", "2005-01-18T17:39:50"),
            (
                "1.2.3.4 - - [23/Jan/2005:21:59:59 +0000] \"GET /\"",
                "2005-01-23T21:59:59",
            ),
            ("Sun Jan 23 21:59:59 2005 x", "2005-01-23T21:59:59"),
            ("1124013599.5 x", "2005-08-14T09:59:59"),
        ];
        for (line, want) in cases {
            let f = d
                .find(line, &tz, now)
                .unwrap_or_else(|| panic!("no date in {line:?}"));
            assert_eq!(civil(f.time.unwrap(), &tz), want, "{line}");
        }
    }

    #[test]
    fn datepattern_directives_and_anchor() {
        let tz = TimeZone::UTC;
        let now = Time(1_124_013_600_000);
        let d = DateDetector::from_datepattern(r"^%Y-%m-%d %H:%M:%S").unwrap();
        let f = d.find("2005-08-14 10:00:00 host x", &tz, now).unwrap();
        assert_eq!(f.span, (0, 19));
        assert!(d.find("x 2005-08-14 10:00:00", &tz, now).is_none());
        let d = DateDetector::from_datepattern("{^LN-BEG}").unwrap();
        assert!(d.find("[2005-08-14 10:00:00] x", &tz, now).is_some());
        assert!(d.find("host says 2005-08-14 10:00:00", &tz, now).is_none());
        let d = DateDetector::from_datepattern(r"^%d-%b-%Y %I:%M:%S %p").unwrap();
        let f = d.find("14-Aug-2005 01:02:03 PM x", &tz, now).unwrap();
        assert_eq!(civil(f.time.unwrap(), &tz), "2005-08-14T13:02:03");
    }

    /// Issue 16, finding 14, in fail2ban's date code: the same rule as the
    /// built-in filters' (one shared function).
    #[test]
    fn repeated_dst_hour_reads_the_pass_closest_to_now() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let utc = |s: &str| Time(s.parse::<jiff::Timestamp>().unwrap().as_millisecond());
        let second_pass = utc("2026-10-25T01:15:00Z");
        let first_pass = utc("2026-10-25T00:20:00Z");
        let d = DateDetector::default_templates();
        let line = "2026-10-25 02:14:00 sshd[1]: Failed password";
        assert_eq!(
            d.find(line, &tz, second_pass).unwrap().time,
            Some(utc("2026-10-25T01:14:00Z"))
        );
        assert_eq!(
            d.find(line, &tz, first_pass).unwrap().time,
            Some(utc("2026-10-25T00:14:00Z"))
        );
        // Year-less syslog and time-only dates alike.
        let line = "Oct 25 02:14:00 host sshd[1]: Failed password";
        assert_eq!(
            d.find(line, &tz, second_pass).unwrap().time,
            Some(utc("2026-10-25T01:14:00Z"))
        );
        let d = DateDetector::from_datepattern(r"^%H:%M:%S").unwrap();
        assert_eq!(
            d.find("02:14:00 x", &tz, second_pass).unwrap().time,
            Some(utc("2026-10-25T01:14:00Z"))
        );
        assert_eq!(
            d.find("02:14:00 x", &tz, first_pass).unwrap().time,
            Some(utc("2026-10-25T00:14:00Z"))
        );
    }
}
