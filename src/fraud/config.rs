//! `[[fraud]]`: toll-fraud rules on the Event Socket. The keys as written
//! ([`RawFraud`]), checked by [`rules_from_raw`]; every error carries the
//! span of the value (or table) at fault, which `config/` turns into
//! file:line.

use serde::Deserialize;
use toml::Spanned;

use super::rule::{Actions, FraudRule, Hours, Limit, Metric, Prefixes, Threshold};
use super::watch::{MAX_RULES, MAX_WINDOW_MS};
use crate::duration::Duration;

/// One `[[fraud]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFraud {
    name: Spanned<String>,
    jail: Option<Spanned<String>>,
    esl: Option<Spanned<String>>,
    prefixes: Spanned<Vec<String>>,
    hours: Option<Spanned<Vec<String>>>,
    timezone: Option<Spanned<String>>,
    calls_per_minute: Option<Spanned<RawThreshold>>,
    concurrent_calls: Option<Spanned<RawThreshold>>,
    answered_minutes: Option<Spanned<RawThreshold>>,
    sequential_calls: Option<Spanned<RawThreshold>>,
    warning: Option<Spanned<Vec<String>>>,
    critical: Option<Spanned<Vec<String>>>,
    webhook: Option<Spanned<String>>,
    bantime: Option<Spanned<String>>,
    hold: Option<Spanned<Duration>>,
}

/// `{ warning = N, critical = N }` (and `window` for answered minutes).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThreshold {
    warning: Option<Spanned<i64>>,
    critical: Option<Spanned<i64>>,
    window: Option<Spanned<Duration>>,
}

/// A wrong `[[fraud]]` value.
#[derive(Debug, thiserror::Error)]
pub enum FraudConfigError {
    /// A name that cannot be told apart in logs.
    #[error("a fraud rule's name must be 1-64 letters, digits, '-', '_' or '.'")]
    Name,
    /// Two rules with one name.
    #[error("a second fraud rule named {0:?}")]
    SecondName(String),
    /// `prefixes = []`.
    #[error(
        "prefixes is empty: list the numbers watched as dialled (e.g. [\"00\", \"0900\"]), or [\"*\"] for every destination"
    )]
    EmptyPrefixes,
    /// `""` among the prefixes.
    #[error("prefixes holds an empty prefix; write \"*\" to watch every destination")]
    EmptyPrefix,
    /// A threshold of zero or less.
    #[error("{0}: a threshold must be at least 1 (0 would fire on every call)")]
    ZeroThreshold(&'static str),
    /// A threshold table without either.
    #[error("{0} needs warning, critical or both")]
    NoThreshold(&'static str),
    /// `warning` above `critical`.
    #[error("{0}: warning is above critical")]
    WarningAboveCritical(&'static str),
    /// No measure at all.
    #[error(
        "a fraud rule measures nothing: set calls_per_minute, concurrent_calls, answered_minutes or sequential_calls"
    )]
    NoLimit,
    /// `window` anywhere but `answered_minutes`, or missing there.
    #[error("{0}")]
    Window(&'static str),
    /// Wrong `hours`.
    #[error("hours: {0}")]
    Hours(String),
    /// A zone the system does not know.
    #[error("timezone: {0}")]
    Zone(String),
    /// An action that does not exist.
    #[error("unknown action {0:?}; use log, webhook, hangup, ban")]
    Action(String),
    /// A webhook action without a URL, or a URL of another scheme.
    #[error("{0}")]
    Webhook(&'static str),
    /// A wrong `bantime`.
    #[error("bantime: {0}")]
    Bantime(String),
    /// A jail that is not configured, or has no Event Socket.
    #[error("{0}")]
    Jail(String),
    /// More rules than one connection follows.
    #[error("more than {MAX_RULES} fraud rules")]
    TooMany,
}

fn threshold(
    key: &'static str,
    raw: &Spanned<RawThreshold>,
) -> Result<Threshold, Spanned<FraudConfigError>> {
    let t = raw.get_ref();
    let one = |v: &Option<Spanned<i64>>| -> Result<Option<u32>, Spanned<FraudConfigError>> {
        match v {
            None => Ok(None),
            Some(n) if *n.get_ref() < 1 => {
                Err(Spanned::new(n.span(), FraudConfigError::ZeroThreshold(key)))
            }
            Some(n) => Ok(Some(u32::try_from(*n.get_ref()).unwrap_or(u32::MAX))),
        }
    };
    let th = Threshold {
        warning: one(&t.warning)?,
        critical: one(&t.critical)?,
    };
    match (th.warning, th.critical) {
        (None, None) => Err(Spanned::new(raw.span(), FraudConfigError::NoThreshold(key))),
        (Some(w), Some(c)) if w > c => Err(Spanned::new(
            raw.span(),
            FraudConfigError::WarningAboveCritical(key),
        )),
        _ => Ok(th),
    }
}

fn actions(
    raw: &Option<Spanned<Vec<String>>>,
    default: Actions,
) -> Result<Actions, Spanned<FraudConfigError>> {
    match raw {
        None => Ok(default),
        Some(v) => Actions::parse(v.get_ref().iter().map(String::as_str))
            .map_err(|n| Spanned::new(v.span(), FraudConfigError::Action(n))),
    }
}

/// Checks every `[[fraud]]` table. `labels` names the Event Sockets
/// (`host:port`) of one jail (`None`: no such jail), or of every jail.
pub fn rules_from_raw(
    raw: &[Spanned<RawFraud>],
    labels: impl Fn(Option<&str>) -> Option<Vec<String>>,
) -> Result<Vec<FraudRule>, Spanned<FraudConfigError>> {
    if raw.len() > MAX_RULES {
        return Err(Spanned::new(
            raw[MAX_RULES].span(),
            FraudConfigError::TooMany,
        ));
    }
    let mut rules: Vec<FraudRule> = Vec::new();
    for rf in raw {
        let f = rf.get_ref();
        let at = |s: std::ops::Range<usize>, e| Spanned::new(s, e);
        let name = f.name.get_ref();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(at(f.name.span(), FraudConfigError::Name));
        }
        if rules.iter().any(|r| &r.name == name) {
            return Err(at(
                f.name.span(),
                FraudConfigError::SecondName(name.clone()),
            ));
        }
        let watched = match &f.jail {
            Some(j) => labels(Some(j.get_ref())).ok_or_else(|| {
                at(
                    j.span(),
                    FraudConfigError::Jail(format!("no jail named {:?}", j.get_ref())),
                )
            })?,
            None => labels(None).unwrap_or_default(),
        };
        if watched.is_empty() {
            let span = f.jail.as_ref().map_or(f.name.span(), Spanned::span);
            return Err(at(
                span,
                FraudConfigError::Jail(
                    "no Event Socket to watch: fraud rules watch calls on a jail's esl".into(),
                ),
            ));
        }
        if let Some(e) = &f.esl {
            if !watched.contains(e.get_ref()) {
                return Err(at(
                    e.span(),
                    FraudConfigError::Jail(format!(
                        "no Event Socket {:?} to watch; there are: {}",
                        e.get_ref(),
                        watched.join(", ")
                    )),
                ));
            }
        }
        let list = f.prefixes.get_ref();
        if list.is_empty() {
            return Err(at(f.prefixes.span(), FraudConfigError::EmptyPrefixes));
        }
        if list.iter().any(|p| p.trim().is_empty()) {
            return Err(at(f.prefixes.span(), FraudConfigError::EmptyPrefix));
        }
        let prefixes = if list.iter().any(|p| p.trim() == "*") {
            Prefixes::Any
        } else {
            Prefixes::List(list.iter().map(|p| p.trim().to_string()).collect())
        };
        let hours = f
            .hours
            .as_ref()
            .map(|h| {
                Hours::parse(h.get_ref().iter().map(String::as_str))
                    .map_err(|e| at(h.span(), FraudConfigError::Hours(e)))
            })
            .transpose()?;
        let timezone = match &f.timezone {
            Some(z) => {
                crate::filter::date::parse_zone(z.get_ref())
                    .map_err(|e| at(z.span(), FraudConfigError::Zone(e.to_string())))?;
                z.get_ref().clone()
            }
            None => "local".into(),
        };
        let mut limits = Vec::new();
        for (key, raw, metric) in [
            (
                "calls_per_minute",
                &f.calls_per_minute,
                Metric::CallsPerMinute,
            ),
            (
                "concurrent_calls",
                &f.concurrent_calls,
                Metric::ConcurrentCalls,
            ),
            (
                "answered_minutes",
                &f.answered_minutes,
                Metric::AnsweredMinutes { window_ms: 0 },
            ),
            (
                "sequential_calls",
                &f.sequential_calls,
                Metric::SequentialCalls,
            ),
        ] {
            let Some(raw) = raw else { continue };
            let threshold = threshold(key, raw)?;
            let metric = match (metric, &raw.get_ref().window) {
                (Metric::AnsweredMinutes { .. }, Some(w)) => {
                    let ms = w.get_ref().as_millis();
                    if !(60_000..=MAX_WINDOW_MS).contains(&ms) {
                        return Err(at(
                            w.span(),
                            FraudConfigError::Window(
                                "answered_minutes window must be between 1m and 24h",
                            ),
                        ));
                    }
                    Metric::AnsweredMinutes { window_ms: ms }
                }
                (Metric::AnsweredMinutes { .. }, None) => {
                    return Err(at(
                        raw.span(),
                        FraudConfigError::Window(
                            "answered_minutes needs a window, e.g. { warning = 60, critical = 120, window = \"1h\" }",
                        ),
                    ));
                }
                (_, Some(w)) => {
                    return Err(at(
                        w.span(),
                        FraudConfigError::Window("window belongs to answered_minutes only"),
                    ));
                }
                (m, None) => m,
            };
            limits.push(Limit { metric, threshold });
        }
        if limits.is_empty() {
            return Err(at(rf.span(), FraudConfigError::NoLimit));
        }
        let warning = actions(&f.warning, Actions::default())?;
        let critical = actions(
            &f.critical,
            Actions {
                webhook: f.webhook.is_some(),
                hangup: true,
                ban: true,
            },
        )?;
        let webhook = match &f.webhook {
            Some(u) => {
                let url = u.get_ref();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(at(
                        u.span(),
                        FraudConfigError::Webhook("webhook must start with http:// or https://"),
                    ));
                }
                Some(url.clone())
            }
            None if warning.webhook || critical.webhook => {
                return Err(at(
                    rf.span(),
                    FraudConfigError::Webhook("a webhook action needs webhook = \"https://...\""),
                ));
            }
            None => None,
        };
        let bantime = match &f.bantime {
            Some(b) => {
                crate::duration::parse_ban_length(b.get_ref())
                    .map_err(|e| at(b.span(), FraudConfigError::Bantime(e.to_string())))?;
                Some(b.get_ref().clone())
            }
            None => None,
        };
        rules.push(FraudRule {
            name: name.clone(),
            jail: f.jail.as_ref().map(|j| j.get_ref().clone()),
            esl: f.esl.as_ref().map(|e| e.get_ref().clone()),
            prefixes,
            hours,
            timezone,
            limits,
            warning,
            critical,
            webhook,
            bantime,
            hold_ms: f
                .hold
                .as_ref()
                .map_or(15 * 60_000, |h| h.get_ref().as_millis()),
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        fraud: Vec<Spanned<RawFraud>>,
    }

    fn read(text: &str) -> Result<Vec<FraudRule>, (usize, String)> {
        let doc: Doc = toml::from_str(text).map_err(|e| (0, e.to_string()))?;
        let labels = |j: Option<&str>| {
            j.is_none_or(|j| j == "fs")
                .then(|| vec!["127.0.0.1:8021".to_string()])
        };
        rules_from_raw(&doc.fraud, labels).map_err(|e| {
            let line = text[..e.span().start].matches('\n').count() + 1;
            (line, e.into_inner().to_string())
        })
    }

    const GOOD: &str = "[[fraud]]\nname = \"intl-night\"\nprefixes = [\"00\", \"0900\"]\nhours = [\"mon-fri 18-8\", \"sat-sun\"]\ntimezone = \"Europe/Berlin\"\ncalls_per_minute = { warning = 5, critical = 10 }\nanswered_minutes = { warning = 60, critical = 120, window = \"1h\" }\n";

    #[test]
    fn a_rule_an_operator_would_write() {
        let r = read(GOOD).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].limits.len(), 2);
        assert_eq!(
            r[0].limits[1].metric,
            Metric::AnsweredMinutes {
                window_ms: 3_600_000
            }
        );
        assert!(r[0].critical.hangup && r[0].critical.ban && !r[0].warning.hangup);
        assert_eq!(r[0].hold_ms, 900_000);
    }

    /// Issue 21: an empty prefix set or a zero threshold is an error with
    /// its line.
    #[test]
    fn empty_prefixes_and_zero_thresholds_are_errors_with_their_line() {
        let cases = [
            (
                GOOD.replace("[\"00\", \"0900\"]", "[]"),
                3,
                "prefixes is empty",
            ),
            (
                GOOD.replace("[\"00\", \"0900\"]", "[\"\"]"),
                3,
                "empty prefix",
            ),
            (GOOD.replace("warning = 5", "warning = 0"), 6, "at least 1"),
            (
                GOOD.replace("critical = 120", "critical = 0"),
                7,
                "at least 1",
            ),
            (
                GOOD.replace("warning = 5, critical = 10", "warning = 11, critical = 10"),
                6,
                "above critical",
            ),
            (GOOD.replace(", window = \"1h\"", ""), 7, "needs a window"),
            (GOOD.replace("sat-sun", "someday"), 4, "not a day"),
            (
                GOOD.replace("Europe/Berlin", "Mars/Olympus"),
                5,
                "unknown time zone",
            ),
            (
                format!("{GOOD}critical = [\"shell\"]\n"),
                8,
                "unknown action",
            ),
            (
                format!("{GOOD}critical = [\"webhook\"]\n"),
                1,
                "needs webhook",
            ),
            (format!("{GOOD}webhook = \"ftp://x\"\n"), 8, "http://"),
            (format!("{GOOD}jail = \"nope\"\n"), 8, "no jail"),
            (
                format!("{GOOD}esl = \"10.0.0.1:8021\"\n"),
                8,
                "no Event Socket \"10.0.0.1:8021\" to watch; there are: 127.0.0.1:8021",
            ),
            (format!("{GOOD}bantime = \"0\"\n"), 8, "bantime"),
            (
                "[[fraud]]\nname = \"x\"\nprefixes = [\"*\"]\n".into(),
                1,
                "measures nothing",
            ),
        ];
        for (text, line, want) in cases {
            let (l, e) = read(&text).expect_err(want);
            assert!(e.contains(want), "{want}: {e}");
            assert_eq!(l, line, "{want}: {e}");
        }
    }
}
