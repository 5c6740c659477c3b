//! fail2ban filter files, read at run time and run with fail2ban's
//! semantics: `prefregex` with `<F-CONTENT>`, `failregex`, `ignoreregex`,
//! `datepattern`, option tags and `<HOST>`-style tags.
//!
//! The regexes come from the user's files; none are copied here.

pub mod dates;
pub mod ini;
pub mod prefilter;
pub mod regex;
pub mod samples;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use jiff::tz::TimeZone;

use self::dates::DateDetector;
use self::ini::Ini;
use self::regex::{Captures, Pattern, expand_tags};
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
    /// A bad datepattern.
    #[error("{file}: datepattern: {message}")]
    Date {
        /// Filter file.
        file: String,
        /// The error.
        message: String,
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
#[derive(Debug, Clone)]
pub struct F2bFilter {
    name: String,
    prefregex: Option<Pattern>,
    failregex: Vec<Pattern>,
    ignoreregex: Vec<Pattern>,
    dates: DateDetector,
    /// Literals one of which a line needs to match any pattern.
    prefilter: Option<prefilter::Literals>,
    /// Multi-line buffer size (recorded; multi-line matching is not done yet).
    pub maxlines: usize,
    /// `journalmatch`, recorded for a journal source.
    pub journalmatch: Option<String>,
}

/// Splits `name[opt=v, opt2="x y"]` into the name and its options.
pub fn parse_filter_spec(spec: &str) -> (String, BTreeMap<String, String>) {
    let spec = spec.trim();
    let Some(open) = spec.find('[') else {
        return (spec.to_string(), BTreeMap::new());
    };
    let name = spec[..open].trim().to_string();
    let body = spec[open + 1..]
        .trim_end()
        .strip_suffix(']')
        .unwrap_or(&spec[open + 1..]);
    let mut opts = BTreeMap::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut parts = Vec::new();
    for c in body.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, ',') => parts.push(std::mem::take(&mut cur)),
            (None, c) => cur.push(c),
        }
    }
    parts.push(cur);
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            opts.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    (name, opts)
}

/// Replaces `<option>` tags with option values (innermost first), leaving
/// fail2ban's own tags (`<HOST>`, `<F-USER>`...) for the regex stage.
fn substitute(ini: &Ini, opts: &BTreeMap<String, String>, v: &str) -> String {
    let lookup = |name: &str| -> Option<String> {
        if let Some((sec, key)) = name.split_once('/') {
            return ini
                .raw(sec, key)
                .map(|raw| ini.interpolate(sec, raw, &BTreeMap::new(), 0));
        }
        if let Some(v) = opts.get(name) {
            return Some(ini.interpolate("Definition", v, opts, 0));
        }
        ini.raw("Definition", name)
            .map(|raw| ini.interpolate("Definition", raw, opts, 0))
    };
    let mut s = v.to_string();
    for _ in 0..40 {
        let mut changed = false;
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        let b = s.as_bytes();
        while i < b.len() {
            // `(?P<name>` and `(?<!` / `(?<=` are regex syntax, not tags.
            let syntax = (i >= 3 && &b[i - 3..i] == b"(?P") || (i >= 2 && &b[i - 2..i] == b"(?");
            if b[i] == b'<' && !syntax {
                if let Some(rel) = s[i + 1..].find(['<', '>']) {
                    let j = i + 1 + rel;
                    if b[j] == b'>' {
                        let name = &s[i + 1..j];
                        let plausible = !name.is_empty()
                            && name
                                .bytes()
                                .all(|c| c.is_ascii_alphanumeric() || b"_-/.".contains(&c));
                        if plausible && !name.starts_with("F-") && !name.starts_with("/F-") {
                            if let Some(val) = lookup(name) {
                                out.push_str(&val);
                                i = j + 1;
                                changed = true;
                                continue;
                            }
                        }
                    }
                }
            }
            let ch = s[i..].chars().next().unwrap_or('\0');
            out.push(ch);
            i += ch.len_utf8().max(1);
        }
        s = out;
        if !changed {
            break;
        }
    }
    s
}

impl F2bFilter {
    /// Loads `filter.d/NAME` (with `.d`/`.local` layers) from `dir` with
    /// options (`mode=aggressive`...), which override `[Init]`.
    pub fn load(
        dir: &Path,
        spec: &str,
        extra: &BTreeMap<String, String>,
    ) -> Result<F2bFilter, F2bError> {
        let (name, mut opts) = parse_filter_spec(spec);
        opts.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        let base = dir.join("filter.d").join(&name);
        if !base.with_extension("conf").is_file() && !base.with_extension("local").is_file() {
            return Err(F2bError::Missing(base.display().to_string()));
        }
        let ini = Ini::load(&base)?;
        F2bFilter::from_ini(&ini, &name, &opts, &base.display().to_string())
    }

    /// Builds a filter from already-read configuration.
    pub fn from_ini(
        ini: &Ini,
        name: &str,
        caller: &BTreeMap<String, String>,
        file: &str,
    ) -> Result<F2bFilter, F2bError> {
        // [Init] values, then the caller's, are the options tags see first.
        let mut opts: BTreeMap<String, String> = ini
            .sections
            .get("Init")
            .map(|s| s.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (k, v) in caller {
            opts.insert(k.clone(), v.clone());
        }
        let get = |key: &str| -> Option<String> {
            let raw = opts
                .get(key)
                .cloned()
                .or_else(|| ini.raw("Definition", key).map(String::from))?;
            let v = ini.interpolate("Definition", &raw, &opts, 0);
            Some(substitute(ini, &opts, &v))
        };
        let compile_list = |key: &str| -> Result<Vec<Pattern>, F2bError> {
            get(key)
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    Pattern::new(&expand_tags(l)).map_err(|source| F2bError::Regex {
                        file: file.to_string(),
                        key: key.to_string(),
                        source,
                    })
                })
                .collect()
        };
        let prefregex =
            match get("prefregex").filter(|p| !p.trim().is_empty()) {
                Some(p) => Some(Pattern::new(&expand_tags(p.trim())).map_err(|source| {
                    F2bError::Regex {
                        file: file.to_string(),
                        key: "prefregex".into(),
                        source,
                    }
                })?),
                None => None,
            };
        let dates = match get("datepattern").filter(|d| !d.trim().is_empty()) {
            Some(d) => DateDetector::from_datepattern(&d).map_err(|message| F2bError::Date {
                file: file.to_string(),
                message,
            })?,
            None => DateDetector::default_templates(),
        };
        let failregex = compile_list("failregex")?;
        let ignoreregex = compile_list("ignoreregex")?;
        let maxlines = get("maxlines")
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(1);
        // Single lines only: a multi-line buffer's match spans lines.
        let prefilter = if maxlines <= 1 {
            prefilter::build(failregex.iter().chain(&ignoreregex), dates.max_lead())
        } else {
            None
        };
        Ok(F2bFilter {
            name: name.to_string(),
            prefregex,
            failregex,
            ignoreregex,
            dates,
            prefilter,
            maxlines,
            journalmatch: get("journalmatch"),
        })
    }

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

    /// Whether lines are independent of each other (no multi-line buffer).
    pub fn is_stateless(&self) -> bool {
        self.maxlines <= 1
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_spec_options() {
        let (n, o) = parse_filter_spec("sshd[mode=aggressive, port=\"22, 2222\"]");
        assert_eq!(n, "sshd");
        assert_eq!(o.get("mode").map(String::as_str), Some("aggressive"));
        assert_eq!(o.get("port").map(String::as_str), Some("22, 2222"));
        assert_eq!(parse_filter_spec("asterisk").0, "asterisk");
    }

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
            eprintln!("skipped: corpus not present");
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

    #[test]
    fn stock_freeswitch_filter_from_the_corpus() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/fail2ban-1.1.2.dev1/config"
        ));
        if !dir.exists() {
            eprintln!("skipped: corpus not present");
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
