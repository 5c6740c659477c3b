//! A fraud rule as the engine uses it: which calls it watches (destination
//! prefixes, hours of the week), what it measures per account, at which
//! thresholds, and what each level does. Built and checked by `config.rs`.

use serde::{Deserialize, Serialize};

/// How serious a crossed threshold is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The warning threshold.
    Warning,
    /// The critical threshold.
    Critical,
}

impl Level {
    /// `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

/// What a rule measures per account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Calls to the prefix set started in the last 60 s.
    CallsPerMinute,
    /// Live calls to the prefix set.
    ConcurrentCalls,
    /// Answered minutes to the prefix set within the window (live calls
    /// count with their current duration).
    AnsweredMinutes {
        /// The window, in milliseconds.
        window_ms: i64,
    },
    /// Calls to the prefix set in a row, without a call elsewhere between.
    SequentialCalls,
}

impl Metric {
    /// The configuration key.
    pub fn key(self) -> &'static str {
        match self {
            Metric::CallsPerMinute => "calls_per_minute",
            Metric::ConcurrentCalls => "concurrent_calls",
            Metric::AnsweredMinutes { .. } => "answered_minutes",
            Metric::SequentialCalls => "sequential_calls",
        }
    }
}

/// A warning and a critical threshold (at least one; never zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold {
    /// Reached: the warning actions.
    pub warning: Option<u32>,
    /// Reached: the critical actions.
    pub critical: Option<u32>,
}

impl Threshold {
    /// The level `value` reaches, if any.
    pub fn level(&self, value: u64) -> Option<Level> {
        let reached = |t: Option<u32>| t.is_some_and(|t| value >= u64::from(t));
        if reached(self.critical) {
            Some(Level::Critical)
        } else if reached(self.warning) {
            Some(Level::Warning)
        } else {
            None
        }
    }

    /// The threshold of `level`.
    pub fn of(&self, level: Level) -> Option<u32> {
        match level {
            Level::Warning => self.warning,
            Level::Critical => self.critical,
        }
    }
}

/// One measure and its thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// What is measured.
    pub metric: Metric,
    /// When it fires.
    pub threshold: Threshold,
}

/// Destinations a rule watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prefixes {
    /// `*`: every destination.
    Any,
    /// Numbers starting with one of these, as dialled.
    List(Vec<String>),
}

impl Prefixes {
    /// Whether `dest` (the dialled number) is watched.
    pub fn matches(&self, dest: &str) -> bool {
        match self {
            Prefixes::Any => true,
            Prefixes::List(l) => l.iter().any(|p| dest.starts_with(p.as_str())),
        }
    }
}

/// What a level does, besides the log line every firing gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Actions {
    /// POST the firing to the rule's webhook.
    pub webhook: bool,
    /// Hang up the account's live calls matching the rule.
    pub hangup: bool,
    /// Ban the A-leg's source address through the jail.
    pub ban: bool,
}

impl Actions {
    /// The action names as written in the configuration.
    pub const NAMES: [&str; 4] = ["log", "webhook", "hangup", "ban"];

    /// Reads a list of action names; the unknown name on error.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Actions, String> {
        let mut a = Actions::default();
        for n in names {
            match n {
                "log" => {}
                "webhook" => a.webhook = true,
                "hangup" => a.hangup = true,
                "ban" => a.ban = true,
                other => return Err(other.to_string()),
            }
        }
        Ok(a)
    }
}

/// Hours of the week, Monday 00:00 first, one bit an hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hours([u32; 7]);

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Hours {
    /// Every hour of the week.
    pub const ALWAYS: Hours = Hours([(1 << 24) - 1; 7]);

    /// Whether the hour `hour` (0-23) of day `day` (0 Monday - 6 Sunday)
    /// is in the set.
    pub fn contains(&self, day: usize, hour: u32) -> bool {
        self.0
            .get(day)
            .is_some_and(|d| hour < 24 && d & (1 << hour) != 0)
    }

    /// Reads entries such as `"mon-fri 18-8"` (Monday to Friday, 18:00 to
    /// 08:00 the next morning), `"sat,sun"` (whole days), `"22-6"` (every
    /// night). Hours are whole (`18` or `18:00`); a span past midnight
    /// belongs to the day it starts on.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Hours, String> {
        let mut h = Hours([0; 7]);
        for e in entries {
            let e = e.trim();
            let (days, span) = match e.split_once(' ') {
                Some((d, s)) => (Some(d.trim()), Some(s.trim())),
                None if e.starts_with(|c: char| c.is_ascii_digit()) => (None, Some(e)),
                None => (Some(e), None),
            };
            let days = match days {
                Some(d) => parse_days(d)?,
                None => [true; 7],
            };
            let (from, to) = match span {
                Some(s) => parse_span(s)?,
                None => (0, 24),
            };
            for (day, on) in days.iter().enumerate() {
                if !on {
                    continue;
                }
                if from < to {
                    h.0[day] |= bits(from, to);
                } else {
                    // Past midnight (or `from == to`: a whole day from `from`).
                    h.0[day] |= bits(from, 24);
                    h.0[(day + 1) % 7] |= bits(0, to);
                }
            }
        }
        if h.0.iter().all(|d| *d == 0) {
            return Err("no hour at all".into());
        }
        Ok(h)
    }
}

fn bits(from: u32, to: u32) -> u32 {
    (from..to.min(24)).fold(0, |m, b| m | (1 << b))
}

fn day(name: &str) -> Result<usize, String> {
    let n = name.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| n.starts_with(d) && d.len() <= n.len())
        .ok_or_else(|| format!("{name:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"))
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut out = [false; 7];
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                for _ in 0..7 {
                    out[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => out[day(part)?] = true,
        }
    }
    Ok(out)
}

fn hour(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let t = t.strip_suffix(":00").unwrap_or(t);
    match t.parse::<u32>() {
        Ok(h) if h <= 24 => Ok(h),
        _ => Err(format!(
            "{text:?} is not a whole hour (0-24, or HH:00: rules apply by the hour)"
        )),
    }
}

fn parse_span(text: &str) -> Result<(u32, u32), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not a span of hours such as 18-8"))?;
    let (a, b) = (hour(a)?, hour(b)?);
    if a == 24 {
        return Err(format!("{text:?} starts at 24; write 0"));
    }
    Ok((a, b))
}

/// One `[[fraud]]` rule, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FraudRule {
    /// Its name, in logs, status and webhooks.
    pub name: String,
    /// Only the Event Sockets of this jail (all jails with one otherwise).
    pub jail: Option<String>,
    /// Only this Event Socket (`host:port`, as status shows it).
    pub esl: Option<String>,
    /// Destinations watched.
    pub prefixes: Prefixes,
    /// When the rule applies (every hour when absent).
    pub hours: Option<Hours>,
    /// The zone `hours` are read in (`local`: the host's).
    pub timezone: String,
    /// What is measured and when it fires.
    pub limits: Vec<Limit>,
    /// What the warning level does.
    pub warning: Actions,
    /// What the critical level does.
    pub critical: Actions,
    /// Where `webhook` actions POST.
    pub webhook: Option<String>,
    /// How long a `ban` lasts, as the control `ban` takes it (the jail's
    /// bantime when absent).
    pub bantime: Option<String>,
    /// How long after the critical level an account's new calls to the
    /// prefix set are hung up at once, in milliseconds.
    pub hold_ms: i64,
}

impl FraudRule {
    /// What `level` does.
    pub fn actions(&self, level: Level) -> Actions {
        match level {
            Level::Warning => self.warning,
            Level::Critical => self.critical,
        }
    }

    /// Whether the rule watches the Event Socket `label` of jail `jail`.
    pub fn applies_to(&self, jail: &str, label: &str) -> bool {
        self.jail.as_deref().is_none_or(|j| j == jail)
            && self.esl.as_deref().is_none_or(|e| e == label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_of_the_week() {
        let night = Hours::parse(["mon-fri 18-8", "sat-sun"]).unwrap();
        assert!(night.contains(0, 18) && night.contains(1, 7) && !night.contains(1, 8));
        assert!(!night.contains(0, 12) && !night.contains(0, 7));
        // Friday 18-8 runs into Saturday, which is whole anyway; a whole
        // Sunday does not run into Monday morning (write "mon 0-8" for it).
        assert!(night.contains(5, 12) && night.contains(6, 23) && !night.contains(0, 3));
        let every = Hours::parse(["22-6"]).unwrap();
        assert!(every.contains(3, 23) && every.contains(4, 5) && !every.contains(4, 6));
        assert_eq!(Hours::parse(["mon 0-24"]).unwrap().0[0], (1 << 24) - 1);
        assert_eq!(Hours::parse(["fri-mon 9:00-10:00"]).unwrap().0[2], 0);
        assert_eq!(Hours::parse(["fri-mon 9-10"]).unwrap().0[6], 1 << 9);
        for bad in [
            "someday",
            "mon 18",
            "mon 25-3",
            "mon 24-3",
            "8.5-9",
            "mon 9:30-10",
        ] {
            assert!(Hours::parse([bad]).is_err(), "{bad}");
        }
        assert!(Hours::parse([]).is_err());
    }

    #[test]
    fn thresholds_and_prefixes() {
        let t = Threshold {
            warning: Some(3),
            critical: Some(5),
        };
        assert_eq!(
            [2, 3, 4, 5, 9].map(|v| t.level(v)),
            [
                None,
                Some(Level::Warning),
                Some(Level::Warning),
                Some(Level::Critical),
                Some(Level::Critical)
            ]
        );
        let p = Prefixes::List(vec!["00".into(), "0900".into()]);
        assert!(p.matches("00882123") && p.matches("0900123") && !p.matches("9196"));
        assert!(Prefixes::Any.matches(""));
        assert_eq!(
            Actions::parse(["log", "hangup", "ban"]),
            Ok(Actions {
                webhook: false,
                hangup: true,
                ban: true
            })
        );
        assert_eq!(Actions::parse(["shell"]), Err("shell".into()));
    }
}
