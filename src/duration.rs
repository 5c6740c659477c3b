//! Durations as operators write them: `"30s"`, `"10m"`, `"1h30m"`, `"1w"`, or
//! plain seconds; `-1` means "for ever" where a ban length is expected.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The longest duration accepted anywhere (a ban, `findtime`, `ban --for`,
/// the API): 213,000 days, about 583 years. nftables keeps element timeouts
/// in milliseconds and the kernel refuses (ERANGE) any timeout at or above
/// `u64::MAX / 1,000,000` ms, about 213,503 days; a ban longer than this
/// could never reach the kernel. Ends that arrive as data (the fleet, a
/// restore) are clamped to it; for longer, a ban is permanent (`-1`).
pub const MAX_BANTIME: Duration = Duration(213_000 * 86_400);

// The kernel's own limit, in milliseconds: ours stays below it.
const _: () = assert!(MAX_BANTIME.0 * 1000 < u64::MAX / 1_000_000);

/// A non-negative length of time, in whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub u64);

impl Duration {
    /// The length in milliseconds, the unit the jail engine counts in.
    pub fn as_millis(self) -> i64 {
        (self.0 as i64).saturating_mul(1000)
    }
}

/// How long a ban lasts: a finite duration or for ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BanTime {
    /// The ban lapses after this long.
    For(Duration),
    /// The ban never lapses (written `-1`).
    Permanent,
}

impl BanTime {
    /// The length in milliseconds, `None` for a permanent ban.
    pub fn as_millis(self) -> Option<i64> {
        match self {
            BanTime::For(d) => Some(d.as_millis()),
            BanTime::Permanent => None,
        }
    }
}

/// Why a duration could not be read; the message says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {why}{}", if *.syntax { EXPECTED } else { "" })]
pub struct DurationError {
    text: String,
    why: &'static str,
    /// The text is not a duration at all: say how one is written.
    syntax: bool,
}

/// How a duration is written, appended to every syntax error.
const EXPECTED: &str = "; write a whole number with a unit, s, m, h, d or w (the smallest is 1s), e.g. \"30s\", \"10m\", \"1h30m\", \"1d\", or a number of seconds";

/// Why a ban length of zero is refused, wherever a person writes one (the
/// configuration's `bantime`, `ban --for`, the API's `for`).
pub const ZERO_BAN: &str =
    "must be at least 1s (0 would lift each ban as it is made; -1 bans for ever)";
/// [`ZERO_BAN`], said of a typed ban length (a unit test keeps them equal).
const ZERO_BAN_TYPED: &str =
    "a ban must last at least 1s (0 would lift each ban as it is made; -1 bans for ever)";

/// Why a duration is too long, with the largest accepted.
const TOO_LONG: &str = "it is longer than the largest accepted, 213000d (about 583 years; nftables refuses longer timeouts); use -1 for a permanent ban";

/// Parses `"1h30m"`, `"45s"`, `"2d"`, `"1w"` or `"600"` (seconds), up to
/// [`MAX_BANTIME`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let d = parse_unbounded(text)?;
    if d > MAX_BANTIME {
        return Err(DurationError {
            text: text.to_string(),
            why: TOO_LONG,
            syntax: false,
        });
    }
    Ok(d)
}

fn parse_unbounded(text: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        text: text.to_string(),
        why,
        syntax: true,
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    if s.starts_with('-') {
        return Err(DurationError {
            syntax: false,
            ..err(
                "it is negative (only -1, for a permanent ban, is accepted, and only as a ban length)",
            )
        });
    }
    // Finer units and fractions are slips worth naming: read as units,
    // "1ms" would be "1m" followed by an "s" without a number.
    let lower = s.to_ascii_lowercase();
    if lower.contains('.') || lower.contains(',') {
        return Err(err("fractions are not accepted (1h30m, not 1.5h)"));
    }
    if ["ms", "us", "µs", "ns"].iter().any(|u| {
        lower
            .split(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .any(|w| w == *u)
    }) {
        return Err(err("units below a second are not accepted"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration)
            .map_err(|_| err("the number is too large"));
    }
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(d) = c.to_digit(10) {
            let n = num.unwrap_or(0);
            num = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or_else(|| err("the number is too large"))?,
            );
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        let n = num
            .take()
            .ok_or_else(|| err("a unit has no number before it"))?;
        let unit: u64 = match c {
            's' => 1,
            'm' => {
                // "mo"/"min" are common slips; accept "min", refuse months.
                if chars.peek() == Some(&'i') {
                    chars.next();
                    if chars.next() != Some('n') {
                        return Err(err("unknown unit"));
                    }
                }
                60
            }
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(err("unknown unit")),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("it is too long"))?;
    }
    if num.is_some() {
        return Err(err("a number has no unit after it"));
    }
    Ok(Duration(total))
}

/// Parses a ban length: a duration, or `-1` for permanent.
pub fn parse_bantime(text: &str) -> Result<BanTime, DurationError> {
    if text.trim() == "-1" {
        return Ok(BanTime::Permanent);
    }
    parse_duration(text).map(BanTime::For)
}

/// Parses a ban length a person typed (`ban --for`, the API's `for`): as
/// [`parse_bantime`], and zero is refused as in a configuration, since the
/// kernel would hold such a ban for no time at all.
pub fn parse_ban_length(text: &str) -> Result<BanTime, DurationError> {
    match parse_bantime(text)? {
        BanTime::For(Duration(0)) => Err(DurationError {
            text: text.to_string(),
            why: ZERO_BAN_TYPED,
            syntax: false,
        }),
        b => Ok(b),
    }
}

impl fmt::Display for Duration {
    /// Writes the shortest unit combination, e.g. `1h30m`, `10m`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        if rest == 0 {
            return f.write_str("0s");
        }
        for (unit, name) in [
            (604_800, "w"),
            (86_400, "d"),
            (3600, "h"),
            (60, "m"),
            (1, "s"),
        ] {
            if rest >= unit {
                write!(f, "{}{}", rest / unit, name)?;
                rest %= unit;
            }
        }
        Ok(())
    }
}

impl fmt::Display for BanTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanTime::For(d) => d.fmt(f),
            BanTime::Permanent => f.write_str("permanent"),
        }
    }
}

struct DurationVisitor {
    allow_permanent: bool,
}

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = BanTime;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.allow_permanent {
            f.write_str(
                "a duration such as \"10m\", \"1h30m\", a number of seconds, or -1 for permanent",
            )
        } else {
            f.write_str("a duration such as \"30s\", \"10m\", \"1h30m\" or a number of seconds")
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<BanTime, E> {
        if v == -1 && self.allow_permanent {
            return Ok(BanTime::Permanent);
        }
        match u64::try_from(v) {
            Ok(s) => self.visit_u64(s),
            Err(_) => Err(E::custom(DurationError {
                text: v.to_string(),
                why: if self.allow_permanent {
                    "it is negative (only -1, for a permanent ban, is accepted)"
                } else {
                    "it is negative"
                },
                syntax: false,
            })),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<BanTime, E> {
        if Duration(v) > MAX_BANTIME {
            return Err(E::custom(DurationError {
                text: v.to_string(),
                why: TOO_LONG,
                syntax: false,
            }));
        }
        Ok(BanTime::For(Duration(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<BanTime, E> {
        let r = if self.allow_permanent {
            parse_bantime(v)
        } else {
            parse_duration(v).map(BanTime::For)
        };
        r.map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(DurationVisitor {
            allow_permanent: false,
        })? {
            BanTime::For(d) => Ok(d),
            BanTime::Permanent => Err(de::Error::custom(
                "a permanent duration is not allowed here",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for BanTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor {
            allow_permanent: true,
        })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for BanTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BanTime::For(d) => s.collect_str(d),
            BanTime::Permanent => s.serialize_i64(-1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("30s"), Ok(Duration(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration(86_400)));
        assert_eq!(parse_duration("1w"), Ok(Duration(604_800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration(5400)));
        assert_eq!(parse_duration("1h 30m 5s"), Ok(Duration(5405)));
        assert_eq!(parse_duration("600"), Ok(Duration(600)));
        assert_eq!(parse_duration("5min"), Ok(Duration(300)));
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "h",
            "10x",
            "1h30",
            "-5m",
            "99999999999999999999s",
            "5mo",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn bantime_minus_one_is_permanent() {
        assert_eq!(parse_bantime("-1"), Ok(BanTime::Permanent));
        assert_eq!(parse_bantime("2h"), Ok(BanTime::For(Duration(7200))));
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn longest_accepted_is_the_kernels_range() {
        assert_eq!(MAX_BANTIME.to_string(), "30428w4d");
        assert_eq!(parse_duration("213000d"), Ok(MAX_BANTIME));
        assert_eq!(parse_bantime("213000d"), Ok(BanTime::For(MAX_BANTIME)));
        assert!(TOO_LONG.contains(&format!(", {}d ", MAX_BANTIME.0 / 86_400)));
        for long in ["300000d", "213000d1s", "18446744073s", "999999999999d"] {
            let e = parse_bantime(long).unwrap_err().to_string();
            assert!(e.contains("largest accepted, 213000d"), "{long}: {e}");
        }
        #[derive(Debug, Deserialize)]
        struct T {
            #[allow(dead_code)]
            b: BanTime,
        }
        let e = toml::from_str::<T>("b = 18403200001")
            .unwrap_err()
            .to_string();
        assert!(e.contains("largest accepted"), "{e}");
        assert!(toml::from_str::<T>("b = 18403200000").is_ok());
    }

    /// Issue N9: `ban --for 0s` (and the API's `"for":"0s"`) reported a
    /// ban the kernel never held; `--for 1ms` said "a unit has no number
    /// before it".
    #[test]
    fn a_typed_ban_length_of_zero_is_refused_and_units_are_named() {
        for zero in ["0", "0s", "0m", " 0h0s "] {
            let e = parse_ban_length(zero).unwrap_err().to_string();
            assert!(
                e.contains("at least 1s") && e.contains("-1 bans for ever"),
                "{zero}: {e}"
            );
        }
        assert_eq!(
            ZERO_BAN_TYPED,
            format!("a ban {ZERO_BAN}").replace(" be ", " last ")
        );
        assert_eq!(parse_ban_length("1s"), Ok(BanTime::For(Duration(1))));
        assert_eq!(parse_ban_length("-1"), Ok(BanTime::Permanent));
        for small in ["1ms", "500ms", "10us", "5ns", "1.5s", "0.5h"] {
            let e = parse_ban_length(small).unwrap_err().to_string();
            assert!(
                e.contains("s, m, h, d or w") && e.contains("smallest is 1s"),
                "{small}: {e}"
            );
            assert!(!e.contains("no number before it"), "{small}: {e}");
        }
        // Every syntax error names the units.
        for bad in ["", "h", "10x", "1h30", "5mo"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("s, m, h, d or w"), "{bad}: {e}");
        }
    }

    #[test]
    fn negative_durations_say_so() {
        for bad in ["-5m", "-2", " -1s"] {
            let e = parse_bantime(bad).unwrap_err().to_string();
            assert!(e.contains("negative"), "{bad}: {e}");
        }
        #[derive(Debug, Deserialize)]
        struct T {
            #[allow(dead_code)]
            b: BanTime,
        }
        let e = toml::from_str::<T>("b = -5").unwrap_err().to_string();
        assert!(e.contains("negative") && e.contains("-1"), "{e}");
    }

    #[test]
    fn displays_shortest_form() {
        assert_eq!(Duration(5400).to_string(), "1h30m");
        assert_eq!(Duration(0).to_string(), "0s");
        assert_eq!(Duration(86_400 + 1).to_string(), "1d1s");
        assert_eq!(BanTime::Permanent.to_string(), "permanent");
    }

    #[test]
    fn deserializes_integers_and_strings() {
        #[derive(Deserialize)]
        struct T {
            a: Duration,
            b: BanTime,
            c: BanTime,
            d: BanTime,
        }
        let t: T = toml::from_str("a = 60\nb = -1\nc = \"-1\"\nd = \"1h\"").unwrap();
        assert_eq!(t.a, Duration(60));
        assert_eq!(t.b, BanTime::Permanent);
        assert_eq!(t.c, BanTime::Permanent);
        assert_eq!(t.d, BanTime::For(Duration(3600)));
        assert!(toml::from_str::<T>("a = -1\nb = 1\nc = 1\nd = 1").is_err());
    }
}
