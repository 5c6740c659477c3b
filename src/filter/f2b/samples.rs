//! fail2ban's annotated sample format, run against fail2ban filter files:
//! `# failJSON` (expected outcome of the next line), `# filterOptions`
//! (option sets every following line is tested with), `# fileOptions`,
//! `# addFILE`. "Now" is frozen at 1124013600 and local time is
//! `CET-1CEST,M3.5.0,M10.5.0`, as the corpus README describes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::Value;

use super::ini::{Ini, IniError};
use super::{F2bError, F2bFilter, Found};
use crate::event::Time;

/// The frozen "now" of the samples.
pub const SAMPLES_NOW: Time = Time(1_124_013_600_000);

/// One evaluation that did not give the annotated result.
#[derive(Clone, Debug, Serialize)]
pub struct SampleFailure {
    /// Filter name.
    pub filter: String,
    /// Sample file and line.
    pub at: String,
    /// Options of this evaluation.
    pub options: String,
    /// What differs.
    pub diff: String,
}

/// The result of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SampleReport {
    /// Evaluations run.
    pub total: usize,
    /// Evaluations that gave the annotated result.
    pub passed: usize,
    /// Evaluations that did not.
    pub failed: usize,
    /// Filters tested.
    pub filters: usize,
    /// Per filter: (passed, failed).
    pub per_filter: BTreeMap<String, (usize, usize)>,
    /// Every failed evaluation.
    pub failures: Vec<SampleFailure>,
}

/// Why the samples could not be run (a filter that does not load is a
/// failed evaluation, not this). The I/O and JSON errors are part of the
/// message, not its cause: the message says it once.
#[derive(Debug, thiserror::Error)]
pub enum SamplesError {
    /// A directory (filter.d) could not be listed.
    #[error("{}: {error}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A filter file could not be read or parsed.
    #[error("{0}")]
    Filter(IniError),
    /// A sample log could not be read.
    #[error("{}: {error}", path.display())]
    Log {
        /// The sample log.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// An annotation's JSON does not parse.
    #[error("{at}: {error}")]
    Annotation {
        /// Sample file and line.
        at: String,
        /// Why.
        error: serde_json::Error,
    },
}

/// The zone of the samples.
pub fn samples_zone() -> TimeZone {
    TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0").unwrap_or(TimeZone::UTC)
}

/// Evaluates the corpus' small constraint language: `name == 'x'`,
/// `opts.get('k') != 'v'`.
fn condition(expr: &str, name: &str, opts: &BTreeMap<String, String>) -> bool {
    let e: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs, eq) = if let Some((l, r)) = e.split_once("==") {
        (l, r, true)
    } else if let Some((l, r)) = e.split_once("!=") {
        (l, r, false)
    } else {
        return true;
    };
    let rhs = rhs.trim_matches(|c| c == '\'' || c == '"');
    let value = if lhs == "name" {
        Some(name)
    } else if let Some(k) = lhs
        .strip_prefix("opts.get(")
        .and_then(|s| s.strip_suffix(')'))
    {
        opts.get(k.trim_matches(|c| c == '\'' || c == '"'))
            .map(String::as_str)
    } else {
        return true;
    };
    (value == Some(rhs)) == eq
}

fn as_opts(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), String::from),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs every filter (or `only`) of `config/filter.d` against its sample log
/// in `logs`.
pub fn run(config: &Path, logs: &Path, only: Option<&str>) -> Result<SampleReport, SamplesError> {
    let fdir = config.join("filter.d");
    let mut names: Vec<String> = std::fs::read_dir(&fdir)
        .map_err(|error| SamplesError::Dir {
            path: fdir.clone(),
            error,
        })?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".conf"))
                .map(String::from)
        })
        .filter(|n| !n.ends_with("common"))
        .filter(|n| only.is_none_or(|o| o == n))
        .collect();
    names.sort();
    let mut report = SampleReport::default();
    let tz = samples_zone();
    for name in names {
        if !logs.join(&name).is_file() {
            continue;
        }
        report.filters += 1;
        let ini = Ini::load(&fdir.join(&name)).map_err(SamplesError::Filter)?;
        // One filter instance per option set, keeping its memory across
        // blocks and added files, as fail2ban's harness does.
        let mut cache: HashMap<String, Result<F2bFilter, F2bError>> = HashMap::new();
        let mut queue = vec![name.clone()];
        // The active option sets: (filter key, options).
        let mut tests: Vec<(String, BTreeMap<String, String>)> = Vec::new();
        let mut common: BTreeMap<String, String> = BTreeMap::new();
        let mut ignore_block = false;
        let mut i = 0;
        while i < queue.len() {
            let file = queue[i].clone();
            i += 1;
            let path = logs.join(&file);
            let text = std::fs::read(&path).map_err(|error| SamplesError::Log {
                path: path.clone(),
                error,
            })?;
            let text = String::from_utf8_lossy(&text);
            let mut lines = text.lines().enumerate();
            while let Some((n, line)) = lines.next() {
                let at = format!("{}:{}", path.display(), n + 1);
                let (line, want, at) = match annotation(line) {
                    Some(("fileOptions", v)) => {
                        let v: Value = serde_json::from_str(v.trim()).map_err(|error| {
                            SamplesError::Annotation {
                                at: at.clone(),
                                error,
                            }
                        })?;
                        common = as_opts(&v);
                        continue;
                    }
                    Some(("filterOptions", v)) => {
                        let v: Value = serde_json::from_str(v.trim()).map_err(|error| {
                            SamplesError::Annotation {
                                at: at.clone(),
                                error,
                            }
                        })?;
                        let sets = match v {
                            Value::Array(a) => a.iter().map(as_opts).collect(),
                            o => vec![as_opts(&o)],
                        };
                        tests.clear();
                        ignore_block = false;
                        for set in sets {
                            let mut opts = common.clone();
                            opts.extend(set);
                            if let Some(c) = opts.get("test.condition") {
                                ignore_block = !condition(c, &name, &opts);
                            }
                            if !ignore_block {
                                let key = opts
                                    .get("test.filter-name")
                                    .cloned()
                                    .unwrap_or_else(|| format!("{:?}", filter_options(&opts)));
                                tests.push((key, opts));
                            }
                        }
                        continue;
                    }
                    Some(("addFILE", v)) => {
                        queue.push(v.trim().trim_matches('"').to_string());
                        continue;
                    }
                    Some((_, v)) => {
                        // failJSON: the next line, whatever it is, is the one.
                        let want: Option<Value> = serde_json::from_str(v.trim()).ok();
                        let Some((n2, next)) = lines.next() else {
                            break;
                        };
                        (next, want, format!("{}:{}", path.display(), n2 + 1))
                    }
                    None if ignore_block || line.starts_with('#') || line.trim().is_empty() => {
                        continue;
                    }
                    // Unannotated: must not match.
                    None => (line, None, at),
                };
                if ignore_block {
                    continue;
                }
                if tests.is_empty() {
                    tests.push((
                        format!("{:?}", BTreeMap::<String, String>::new()),
                        common.clone(),
                    ));
                }
                for (key, opts) in &tests {
                    if let Some(c) = want
                        .as_ref()
                        .and_then(|w| w.get("constraint"))
                        .and_then(Value::as_str)
                    {
                        if !condition(c, &name, opts) {
                            continue;
                        }
                    }
                    let filter = cache.entry(key.clone()).or_insert_with(|| {
                        F2bFilter::from_ini(
                            &ini,
                            &name,
                            &filter_options(opts),
                            &fdir.join(&name).display().to_string(),
                        )
                    });
                    let journal = opts.get("logtype").is_some_and(|t| t == "journal");
                    let line = if journal {
                        format!(
                            "{}{line}",
                            opts.get("test.prefix-line").cloned().unwrap_or_default()
                        )
                    } else {
                        line.to_string()
                    };
                    let diff = match filter {
                        Err(e) => Some(format!("filter did not load: {e}")),
                        Ok(f) => {
                            // The journal gives each entry its time.
                            let date = journal.then_some(SAMPLES_NOW);
                            let found = f.process_all_at(&line, &tz, SAMPLES_NOW, true, date);
                            compare(want.as_ref(), &found, &tz)
                        }
                    };
                    if want.is_none() && diff.is_none() {
                        continue;
                    }
                    report.total += 1;
                    let entry = report.per_filter.entry(name.clone()).or_default();
                    match diff {
                        None => {
                            report.passed += 1;
                            entry.0 += 1;
                        }
                        Some(diff) => {
                            report.failed += 1;
                            entry.1 += 1;
                            report.failures.push(SampleFailure {
                                filter: name.clone(),
                                at: at.clone(),
                                options: key.clone(),
                                diff: format!("{diff}\n    line: {line}"),
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(report)
}

/// `2005-03-7T2:09:33` as `2005-03-07T02:09:33` (a fraction kept as is).
fn pad_time(t: &str) -> String {
    let (main, frac) = t.split_once('.').map_or((t, None), |(a, b)| (a, Some(b)));
    let mut out = String::new();
    let mut num = String::new();
    let flush = |num: &mut String, out: &mut String| {
        if num.len() == 1 {
            out.push('0');
        }
        out.push_str(num);
        num.clear();
    };
    for c in main.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            flush(&mut num, &mut out);
            out.push(c);
        }
    }
    flush(&mut num, &mut out);
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// The annotation's kind and value, when `line` is one.
fn annotation(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start_matches('#');
    if rest.len() == line.len() {
        return None;
    }
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    ["failJSON", "fileOptions", "filterOptions", "addFILE"]
        .into_iter()
        .find_map(|k| rest.strip_prefix(k)?.strip_prefix(':').map(|v| (k, v)))
}

/// The options a filter sees (the harness's own `test.*` keys removed).
fn filter_options(opts: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    opts.iter()
        .filter(|(k, _)| !k.starts_with("test."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Compares what a line gave with its annotation (`None`: an unannotated
/// line, which must give nothing); `None` when they agree.
fn compare(want: Option<&Value>, found: &[Found], tz: &TimeZone) -> Option<String> {
    // Hits without a host (waiting for one) or marked "no failure" are not
    // failures.
    let fails: Vec<&Found> = found
        .iter()
        .filter(|f| f.host.is_some() && !f.nofail)
        .collect();
    let should = want
        .and_then(|w| w.get("match"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let f = match (should, fails.as_slice()) {
        (false, []) => return None,
        (false, [f, ..]) => {
            return Some(format!(
                "expected no match, got host {}",
                f.host.as_deref().unwrap_or_default()
            ));
        }
        (true, []) => {
            let nofail = found.iter().any(|f| f.nofail);
            return Some(format!(
                "expected a match, got {}",
                if nofail { "NoFail" } else { "Missed" }
            ));
        }
        (true, [f]) => *f,
        (true, many) => {
            let which: Vec<usize> = many.iter().map(|f| f.regex).collect();
            return Some(format!("several failregexes matched: {which:?}"));
        }
    };
    let want = want?;
    let host = f.host.as_deref().unwrap_or_default();
    let mut diffs = Vec::new();
    if let Some(h) = want.get("host").and_then(Value::as_str) {
        let same = host == h
            || matches!((f.addr, h.parse::<std::net::IpAddr>()), (Some(a), Ok(b)) if a == b.to_canonical());
        if !same {
            diffs.push(format!("host: expected {h}, got {host}"));
        }
    }
    if let Some(t) = want.get("time").and_then(Value::as_str) {
        // The harness reads the annotation with strptime, which takes
        // one-digit fields (`2005-03-7T02:09:33`): compare zero-padded.
        let padded = pad_time(t);
        let t = padded.as_str();
        let got_t = f
            .time
            .and_then(|t| jiff::Timestamp::from_millisecond(t.0).ok())
            .map(|ts| {
                let z = ts.to_zoned(tz.clone());
                if t.contains('.') {
                    z.datetime().strftime("%Y-%m-%dT%H:%M:%S%.f").to_string()
                } else {
                    z.datetime().strftime("%Y-%m-%dT%H:%M:%S").to_string()
                }
            });
        let ok = got_t
            .as_deref()
            .is_some_and(|g| g == t || (t.contains('.') && g.starts_with(&t[..t.len().min(19)])));
        if !ok {
            diffs.push(format!(
                "time: expected {t}, got {}",
                got_t.unwrap_or_else(|| "none".into())
            ));
        }
    }
    if let Some(u) = want.get("user").and_then(Value::as_str) {
        if f.user.as_deref() != Some(u) {
            diffs.push(format!("user: expected {u:?}, got {:?}", f.user));
        }
    }
    if let Some(us) = want.get("users").and_then(Value::as_array) {
        let mut w: Vec<&str> = us.iter().filter_map(Value::as_str).collect();
        w.sort_unstable();
        let mut g: Vec<&str> = f.users.iter().map(String::as_str).collect();
        g.sort_unstable();
        if w != g {
            diffs.push(format!("users: expected {w:?}, got {g:?}"));
        }
    }
    if let Some(n) = want.get("attempts").and_then(Value::as_u64) {
        if f.attempts as u64 != n {
            diffs.push(format!("attempts: expected {n}, got {}", f.attempts));
        }
    }
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_times_are_padded() {
        assert_eq!(pad_time("2005-03-7T2:09:33"), "2005-03-07T02:09:33");
        assert_eq!(pad_time("2005-03-17T12:09:33.5"), "2005-03-17T12:09:33.5");
    }

    #[test]
    fn constraints() {
        let mut o = BTreeMap::new();
        o.insert("mode".to_string(), "aggressive".to_string());
        assert!(condition("name == 'sshd'", "sshd", &o));
        assert!(!condition("name=='sshd'", "asterisk", &o));
        assert!(condition("opts.get('mode') == 'aggressive'", "x", &o));
        assert!(!condition("opts.get('mode') != 'aggressive'", "x", &o));
        assert!(condition("opts.get('other') != 'aggressive'", "x", &o));
    }
}
