//! fail2ban filter files, read at run time and run with fail2ban's
//! semantics: `prefregex` with `<F-CONTENT>`, `failregex`, `ignoreregex`,
//! `datepattern`, option tags and `<HOST>`-style tags.
//!
//! The regexes come from the user's files; none are copied here.
//!
//! This file holds the filter's types and the single-line path the daemon
//! runs; `load.rs` reads a filter file into one, `full.rs` runs a line with
//! fail2ban's full semantics (multi-line buffer, connection ids).

pub mod dates;
pub mod ini;
pub mod multiline;
pub mod prefilter;
pub mod regex;
pub mod samples;

mod full;
mod load;

use std::net::IpAddr;

use jiff::tz::TimeZone;

use self::dates::DateDetector;
pub use self::load::parse_filter_spec;
use self::regex::{Captures, Pattern};
use super::{Filter, FilterContext, LineMatch};
use crate::event::{FailureKind, Time};

/// Why a fail2ban filter could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum F2bError {
    /// The files.
    #[error(transparent)]
    Ini(#[from] ini::IniError),
    /// No such filter file.
    #[error("no filter {0} (looked for {0}.conf and {0}.local)")]
    Missing(String),
    /// A regex that does not compile.
    #[error("{file}: {key}: {source}")]
    Regex {
        /// Filter file.
        file: String,
        /// Which option.
        key: String,
        /// The error.
        source: regex::PatternError,
    },
    /// A failregex that captures no host or failure id (neither does the
    /// prefregex): its matches would name nobody. fail2ban refuses such a
    /// filter too ("No failure-id group").
    #[error(
        "{file}: failregex {regex:?} has no <HOST>, <ADDR>, <IP4>, <IP6>, <DNS>, <F-ID> or \
         <F-MLFID> group (nor has the prefregex), so its matches would name nobody; \
         fail2ban refuses it too (\"No failure-id group\"): add the host to the regex"
    )]
    NoHost {
        /// Filter file.
        file: String,
        /// The failregex, tags expanded.
        regex: String,
    },
    /// A bad datepattern.
    #[error("{file}: datepattern: {source}")]
    Date {
        /// Filter file.
        file: String,
        /// The pattern and why it does not compile.
        source: dates::DatePatternError,
    },
}

/// What one line did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A failure.
    Fail(Failure),
    /// Matched an `ignoreregex`.
    Ignored,
    /// Matched a failregex whose `<F-NOFAIL>` group took part (not a failure).
    NoFail,
    /// Nothing matched.
    Missed,
}

/// A failure found by a fail2ban filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The host text as captured (address or name).
    pub host: String,
    /// The address, when the host is one.
    pub addr: Option<IpAddr>,
    /// Index of the failregex that matched.
    pub regex: usize,
    /// The line's date, when found (and asked for).
    pub time: Option<Time>,
    /// Whether the line has a date.
    pub dated: bool,
    /// Captured `<F-USER>`.
    pub user: Option<String>,
}

/// A fail2ban filter, compiled.
#[derive(Debug)]
pub struct F2bFilter {
    name: String,
    prefregex: Option<Pattern>,
    failregex: Vec<Pattern>,
    ignoreregex: Vec<Pattern>,
    dates: DateDetector,
    /// Literals one of which a line needs to match any pattern.
    prefilter: Option<prefilter::Literals>,
    /// Multi-line buffer size.
    pub maxlines: usize,
    /// Lines depend on earlier ones: a multi-line buffer, or failures tied
    /// by a connection id.
    stateful: bool,
    /// "No failure" groups in a failregex or the prefregex (decided once at
    /// load: [`counts_in_full`](Self::counts_in_full) is asked per line).
    nofail: bool,
    /// What the filter remembers between lines.
    state: std::sync::Mutex<multiline::State>,
    /// `journalmatch`, recorded for a journal source.
    pub journalmatch: Option<String>,
}

impl Clone for F2bFilter {
    /// A copy with the same patterns and a memory of its own.
    fn clone(&self) -> F2bFilter {
        F2bFilter {
            name: self.name.clone(),
            prefregex: self.prefregex.clone(),
            failregex: self.failregex.clone(),
            ignoreregex: self.ignoreregex.clone(),
            dates: self.dates.clone(),
            prefilter: self.prefilter.clone(),
            maxlines: self.maxlines,
            stateful: self.stateful,
            nofail: self.nofail,
            state: std::sync::Mutex::default(),
            journalmatch: self.journalmatch.clone(),
        }
    }
}

/// One failregex hit, with everything fail2ban's annotated samples check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Index of the failregex.
    pub regex: usize,
    /// Host (or failure id) text; `None` while a connection's failure waits
    /// for its host.
    pub host: Option<String>,
    /// The address, when the host is one.
    pub addr: Option<IpAddr>,
    /// The line's date.
    pub time: Option<Time>,
    /// `user`, as merged over the connection's lines.
    pub user: Option<String>,
    /// Every user tried on the connection.
    pub users: Vec<String>,
    /// Lines that make up the failure.
    pub attempts: usize,
    /// Not a failure (`<F-NOFAIL>`, or a success on the connection).
    pub nofail: bool,
    /// The host is a name, not an address: without DNS (sipwarden never
    /// resolves attacker text) it is no failure, as in fail2ban with
    /// `usedns = no`.
    pub name: bool,
}

impl Found {
    /// Whether this hit is a failure as `fail2ban-regex --usedns=no`
    /// counts it: not a "no failure" hit and not a host name. A hit whose
    /// connection's host is not known yet counts.
    pub fn is_failure(&self) -> bool {
        !self.nofail && !self.name
    }
}

/// One line run with fail2ban's full semantics ([`F2bFilter::process_line`]).
#[derive(Clone, Debug, Default)]
pub struct Processed {
    /// Every hit, "no failure" ones included.
    pub found: Vec<Found>,
    /// An ignoreregex matched.
    pub ignored: bool,
    /// Earlier lines of the multi-line buffer a match took (as buffered,
    /// dates cut out).
    pub released: Vec<String>,
    /// This line as buffered (its date cut out).
    pub text: String,
}

impl F2bFilter {
    /// The compiled patterns, as text (for `test-filter --verbose` and debugging).
    pub fn describe(&self) -> Vec<String> {
        let show = |p: &Pattern| p.as_str().to_string();
        let mut v = Vec::new();
        if let Some(p) = &self.prefregex {
            v.push(format!("prefregex: {}", show(p)));
        }
        v.extend(
            self.failregex
                .iter()
                .map(|p| format!("failregex: {}", show(p))),
        );
        v
    }

    /// The literal prefilter: a line holding none of its literals matches
    /// no pattern (so whole stretches of a log can be skipped unread).
    pub fn prefilter(&self) -> Option<&prefilter::Literals> {
        self.prefilter.as_ref()
    }

    /// Whether lines are independent of each other (no multi-line buffer,
    /// no connection ids).
    pub fn is_stateless(&self) -> bool {
        !self.stateful
    }

    /// Whether counting as `fail2ban-regex` does needs the full semantics
    /// ([`process_line`](Self::process_line)) rather than the first-match
    /// path: state across lines, "no failure" groups, or ignoreregexes
    /// (which fail2ban-regex applies to every line).
    pub fn counts_in_full(&self) -> bool {
        self.stateful || !self.ignoreregex.is_empty() || self.nofail
    }

    /// How many failregexes the filter has.
    pub fn failregex_count(&self) -> usize {
        self.failregex.len()
    }

    /// Runs one line; `tz` reads zone-less dates.
    pub fn process(&self, line: &str, tz: &TimeZone, now: Time) -> Outcome {
        // Every pattern's match holds one of the literals (made proof
        // against the date cut, see `prefilter`), so a line without any of
        // them can match none.
        if let Some(p) = &self.prefilter {
            if !p.is_match(line.as_bytes()) {
                return Outcome::Missed;
            }
        }
        self.process_prefiltered(line, tz, now, true)
    }

    /// [`process`](Self::process) for a line known to hold one of the
    /// prefilter's literals. Without `want_time` a failure's date is located
    /// (and cut out) but not read: `fail2ban-regex`-style counting needs no
    /// instants.
    pub fn process_prefiltered(
        &self,
        line: &str,
        tz: &TimeZone,
        now: Time,
        want_time: bool,
    ) -> Outcome {
        if self.stateful {
            return outcome_of(&self.process_all(line, tz, now, false));
        }
        let found = self.dates.locate(line);
        // The date is cut out of the line, as fail2ban does.
        let text: std::borrow::Cow<'_, str> = match found {
            Some(f) => {
                let mut t = String::with_capacity(line.len());
                t.push_str(&line[..f.span.0]);
                t.push_str(&line[f.span.1..]);
                t.into()
            }
            None => line.into(),
        };
        let mut pre = Captures::default();
        let content: &str = match &self.prefregex {
            Some(p) => match p.captures(&text) {
                Some(c) => {
                    pre = c;
                    match pre.get("content") {
                        Some(_) => "",
                        None => &text,
                    }
                }
                None => return Outcome::Missed,
            },
            None => &text,
        };
        let owned_content;
        let content = if self.prefregex.is_some() && pre.get("content").is_some() {
            owned_content = pre.get("content").unwrap_or_default().to_string();
            owned_content.as_str()
        } else {
            content
        };
        if self.ignoreregex.iter().any(|r| r.is_match(content)) {
            return Outcome::Ignored;
        }
        for (i, r) in self.failregex.iter().enumerate() {
            let Some(c) = r.captures(content) else {
                continue;
            };
            if c.get("nofail").is_some() || pre.get("nofail").is_some() {
                return Outcome::NoFail;
            }
            let host = c
                .get("ip4")
                .or(c.get("ip6"))
                .or(c.get("dns"))
                .or(pre.get("ip4"))
                .or(pre.get("ip6"))
                .or(pre.get("dns"));
            let Some(host) = host else { continue };
            let addr = host.parse::<IpAddr>().ok().map(|a| a.to_canonical());
            let name = addr.is_none() && c.get("ip4").or(c.get("ip6")).is_none() && {
                pre.get("ip4").or(pre.get("ip6")).is_none()
            };
            if name {
                // A host name: never resolved (attacker text), so no
                // failure, as fail2ban counts it with `usedns = no`.
                continue;
            }
            return Outcome::Fail(Failure {
                host: host.to_string(),
                addr,
                regex: i,
                // Read only now, for lines that fail: most lines do not.
                time: found
                    .filter(|_| want_time)
                    .and_then(|at| self.dates.time_at(line, &at, tz, now)),
                dated: found.is_some(),
                user: c.get("user").or(pre.get("user")).map(String::from),
            });
        }
        Outcome::Missed
    }
}

/// The single outcome a line had, from its hits.
fn outcome_of(found: &[Found]) -> Outcome {
    if let Some(f) = found.iter().find(|f| f.is_failure() && f.host.is_some()) {
        return Outcome::Fail(Failure {
            host: f.host.clone().unwrap_or_default(),
            addr: f.addr,
            regex: f.regex,
            time: f.time,
            dated: f.time.is_some(),
            user: f.user.clone(),
        });
    }
    if found.iter().any(|f| f.nofail) {
        return Outcome::NoFail;
    }
    Outcome::Missed
}

impl Filter for F2bFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn match_line(&self, line: &[u8], cx: &FilterContext) -> Option<LineMatch> {
        let text = String::from_utf8_lossy(line);
        match self.process(&text, &cx.tz, cx.now) {
            Outcome::Fail(f) => Some(LineMatch {
                addr: f.addr?,
                time: f.time,
                kind: FailureKind::Other,
                user: f.user.map(|u| crate::filter::user_text(u.as_bytes())),
                user_agent: None,
            }),
            _ => None,
        }
    }

    /// No date is looked for in the text, as fail2ban reads journal
    /// entries.
    fn match_dated(&self, line: &[u8], cx: &FilterContext, time: Time) -> Option<LineMatch> {
        let text = String::from_utf8_lossy(line);
        match outcome_of(&self.process_all_at(&text, &cx.tz, cx.now, false, Some(time))) {
            Outcome::Fail(f) => Some(LineMatch {
                addr: f.addr?,
                time: f.time.or(Some(time)),
                kind: FailureKind::Other,
                user: f.user.map(|u| crate::filter::user_text(u.as_bytes())),
                user_agent: None,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;

    /// Every pattern of every corpus filter, on every sample line (with
    /// its date cut and without): the fast capture paths agree with the
    /// reference engine.
    #[test]
    fn fast_paths_agree_with_the_reference_on_the_corpus() {
        let base = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/fail2ban-1.1.2.dev1"
        ));
        if !base.exists() {
            assert!(
                !crate::test_support::need("corpus"),
                "the reference corpus is missing a file"
            );
            return;
        }
        let (config, logs) = (base.join("config"), base.join("tests/files/logs"));
        let mut checked = 0;
        for e in std::fs::read_dir(config.join("filter.d"))
            .unwrap()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(name) = name.strip_suffix(".conf") else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(logs.join(name)) else {
                continue;
            };
            let Ok(f) = F2bFilter::load(&config, name, &BTreeMap::new()) else {
                continue;
            };
            let patterns: Vec<&Pattern> = f
                .prefregex
                .iter()
                .chain(&f.failregex)
                .chain(&f.ignoreregex)
                .collect();
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let cut = f.dates.locate(line).map_or(line.to_string(), |at| {
                    format!("{}{}", &line[..at.span.0], &line[at.span.1..])
                });
                for p in &patterns {
                    for t in [line, cut.as_str()] {
                        assert_eq!(p.captures(t), p.slow_captures(t), "{name}: {}", p.as_str());
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000, "only {checked} checks");
    }

    /// What the daemon takes from sshd's lines (fail2ban 1.1's filter):
    /// a connection's failure whose host comes on a later line is found on
    /// that line, and a host name is no failure (never resolved).
    #[test]
    fn the_daemon_completes_a_connection_from_a_later_line_and_never_takes_a_name() {
        let dir = crate::test_support::corpus_dir().join("fail2ban-1.1.2.dev1/config");
        if !dir.exists() {
            assert!(
                !crate::test_support::need("corpus"),
                "the reference corpus is missing a file"
            );
            return;
        }
        let f = F2bFilter::load(&dir, "sshd", &BTreeMap::new()).unwrap();
        let cx = FilterContext {
            tz: TimeZone::UTC,
            now: Time(1_124_013_600_000),
        };
        let lines = [
            "Apr 24 01:39:19 host sshd[3719]: User root not allowed because account is locked",
            "Apr 24 01:39:19 host sshd[3719]: input_userauth_request: invalid user root [preauth]",
            "Apr 24 01:39:19 host sshd[3719]: error: Received disconnect from 198.51.100.34: 11: Bye Bye [preauth]",
            "Feb 12 04:09:18 localhost sshd[26713]: Connection from 115.249.163.77 port 51353",
            "Feb 12 04:09:21 localhost sshd[26713]: Disconnecting: Too many authentication failures for root [preauth]",
            "May 29 20:56:52 imago sshd[28732]: error: PAM: Authentication failure for stefanor from example.com",
        ];
        let got: Vec<String> = lines
            .iter()
            .filter_map(|l| f.match_line(l.as_bytes(), &cx))
            .map(|m| m.addr.to_string())
            .collect();
        assert_eq!(got, ["198.51.100.34", "115.249.163.77"]);
        assert_eq!(f.process(lines[5], &cx.tz, cx.now), Outcome::Missed);
    }

    #[test]
    fn stock_freeswitch_filter_from_the_corpus() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/fail2ban-1.1.2.dev1/config"
        ));
        if !dir.exists() {
            assert!(
                !crate::test_support::need("corpus"),
                "the reference corpus is missing a file"
            );
            return;
        }
        let f = F2bFilter::load(dir, "freeswitch", &BTreeMap::new()).unwrap();
        let now = Time(1_124_013_600_000);
        let o = f.process(
            "2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:1478 SIP auth failure (INVITE) on sofia profile 'internal' for [000972543480510@192.168.2.51] from ip 5.11.47.236",
            &TimeZone::UTC,
            now,
        );
        let Outcome::Fail(fl) = o else {
            panic!("{o:?}")
        };
        assert_eq!(fl.host, "5.11.47.236");
        assert!(fl.time.is_some());
    }
}
