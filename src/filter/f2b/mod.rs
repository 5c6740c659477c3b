//! fail2ban filter files, read at run time and run with fail2ban's
//! semantics: `prefregex` with `<F-CONTENT>`, `failregex`, `ignoreregex`,
//! `datepattern`, option tags and `<HOST>`-style tags.
//!
//! The regexes come from the user's files; none are copied here.

pub mod dates;
pub mod ini;
pub mod multiline;
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
        let maxlines: usize = get("maxlines")
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(1);
        // Over a multi-line buffer `^` and `$` mean line starts and ends.
        let flags = if maxlines > 1 { "(?m)" } else { "" };
        let compile_list = |key: &str| -> Result<Vec<Pattern>, F2bError> {
            get(key)
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    Pattern::new(&format!("{flags}{}", expand_tags(l))).map_err(|source| {
                        F2bError::Regex {
                            file: file.to_string(),
                            key: key.to_string(),
                            source,
                        }
                    })
                })
                .collect()
        };
        let prefregex = match get("prefregex").filter(|p| !p.trim().is_empty()) {
            Some(p) => Some(
                Pattern::new(&format!("{flags}{}", expand_tags(p.trim()))).map_err(|source| {
                    F2bError::Regex {
                        file: file.to_string(),
                        key: "prefregex".into(),
                        source,
                    }
                })?,
            ),
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
        let mlfid = failregex
            .iter()
            .chain(&prefregex)
            .any(|p| p.as_str().contains("(?P<mlfid>"));
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
            stateful: maxlines > 1 || mlfid,
            state: std::sync::Mutex::default(),
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

    /// Whether lines are independent of each other (no multi-line buffer,
    /// no connection ids).
    pub fn is_stateless(&self) -> bool {
        !self.stateful
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
    if let Some(f) = found.iter().find(|f| !f.nofail && f.host.is_some()) {
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

/// Owned copies of a match's named groups.
fn owned(c: &Captures<'_>) -> multiline::Groups {
    c.named
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// The lines of a buffer as the patterns see them: joined, and ending in
/// a newline when there are several (fail2ban's form).
fn joined(lines: &[String]) -> String {
    if lines.len() == 1 {
        return lines[0].clone();
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

impl F2bFilter {
    /// Runs one line with fail2ban's full semantics: the multi-line buffer,
    /// connection ids, and (`check_all`) every failregex rather than the
    /// first that matches. Returns every hit, "no failure" ones included.
    pub fn process_all(&self, line: &str, tz: &TimeZone, now: Time, check_all: bool) -> Vec<Found> {
        self.process_all_at(line, tz, now, check_all, None)
    }

    /// [`process_all`](Self::process_all) for a line whose time is known
    /// (`date`, as a journal gives it): no date is looked for in the text.
    pub fn process_all_at(
        &self,
        line: &str,
        tz: &TimeZone,
        now: Time,
        check_all: bool,
        date: Option<Time>,
    ) -> Vec<Found> {
        let mut out = Vec::new();
        let located = if date.is_some() {
            None
        } else {
            self.dates.locate(line)
        };
        let (text, time) = match located {
            Some(at) => (
                format!("{}{}", &line[..at.span.0], &line[at.span.1..]),
                self.dates.time_at(line, &at, tz, now),
            ),
            None => (line.to_string(), date),
        };
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // A line without a (readable) date takes the last one seen, when
        // that is recent or ahead of now, as fail2ban does.
        let time = match time {
            Some(t) => {
                st.last_date = Some(t);
                Some(t)
            }
            None => st.last_date.filter(|l| l.0 > now.0 - 60_000),
        };
        let multi = self.maxlines > 1;
        if multi {
            st.buffer.push(text);
            let excess = st.buffer.len().saturating_sub(self.maxlines);
            st.buffer.drain(..excess);
        } else {
            st.buffer = vec![text];
        }
        let mut buf = joined(&st.buffer);
        // Many ignoreregexes, few failregexes: fail2ban looks at them first.
        if !self.ignoreregex.is_empty()
            && self.ignoreregex.len() + 2 < self.failregex.len()
            && self.ignoreregex.iter().any(|r| r.is_match(&buf))
        {
            return out;
        }
        let mut pre = multiline::Groups::new();
        if let Some(p) = &self.prefregex {
            let Some(c) = p.captures(&buf) else {
                return out;
            };
            pre = owned(&c);
            if let Some(content) = pre.remove("content").filter(|c| !c.is_empty()) {
                st.buffer = vec![content];
                buf = joined(&st.buffer);
            }
        }
        for (i, r) in self.failregex.iter().enumerate() {
            let Some(c) = r.captures(&buf) else {
                continue;
            };
            let groups = owned(&c);
            let skipped: Vec<&str> = c
                .named
                .iter()
                .filter(|(n, _)| n.starts_with("skiplines"))
                .map(|(_, v)| *v)
                .collect();
            let (matched, unmatched) = multiline::split_lines(&st.buffer, &buf, c.span, &skipped);
            if !self.ignoreregex.is_empty() {
                let seen = if multi { joined(&matched) } else { buf.clone() };
                if self.ignoreregex.iter().any(|r| r.is_match(&seen)) {
                    if multi || !check_all {
                        st.buffer = unmatched;
                        buf = joined(&st.buffer);
                    }
                    if !check_all {
                        break;
                    }
                    continue;
                }
            }
            if multi || !check_all {
                st.buffer = unmatched;
                buf = if st.buffer.is_empty() {
                    String::new()
                } else {
                    joined(&st.buffer)
                };
            }
            let mut fail = pre.clone();
            fail.extend(groups);
            // `alt_user` and the like stand in for a missing `user`.
            let alts: Vec<(String, String)> = fail
                .iter()
                .filter_map(|(k, v)| {
                    let base = k.strip_prefix("alt_")?;
                    let base = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_');
                    Some((base.to_string(), v.clone()))
                })
                .collect();
            for (k, v) in alts {
                if !v.is_empty() && !multiline::flag(&fail, &k) {
                    fail.insert(k, v);
                }
            }
            let mlfid = fail.get("mlfid").cloned();
            let (groups, users, attempts, nofail) = match &mlfid {
                Some(id) => {
                    let e = st.ids.merge(id, fail, matched.len(), now);
                    (e.groups, e.users.into_iter().collect(), e.matches, e.nofail)
                }
                None => {
                    let nofail = multiline::flag(&fail, "nofail");
                    let users = fail.get("user").cloned().into_iter().collect();
                    (fail, users, matched.len(), nofail)
                }
            };
            if nofail && !check_all {
                out.push(Found {
                    regex: i,
                    nofail,
                    ..Found::default()
                });
                return out;
            }
            let host = ["ip4", "ip6", "dns", "fid"]
                .iter()
                .find_map(|g| groups.get(*g).filter(|v| !v.is_empty()))
                .cloned();
            if host.is_none() {
                if let Some(id) = &mlfid {
                    // The connection's host comes on a later line.
                    st.ids.set_pending(id);
                }
                if !check_all {
                    return out;
                }
            }
            let addr = host
                .as_deref()
                .and_then(|h| h.parse::<IpAddr>().ok())
                .map(|a| a.to_canonical());
            out.push(Found {
                regex: i,
                host,
                addr,
                time,
                user: groups.get("user").cloned(),
                users,
                attempts,
                nofail,
            });
            if !check_all {
                break;
            }
        }
        out
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
