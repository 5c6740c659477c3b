//! fail2ban's annotated sample format, run against fail2ban filter files:
//! `# failJSON` (expected outcome of the next line), `# filterOptions`
//! (option sets every following line is tested with), `# fileOptions`,
//! `# addFILE`. "Now" is frozen at 1124013600 and local time is
//! `CET-1CEST,M3.5.0,M10.5.0`, as the corpus README describes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::Value;

use super::ini::Ini;
use super::{F2bFilter, Outcome};
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
pub fn run(config: &Path, logs: &Path, only: Option<&str>) -> Result<SampleReport, String> {
    let fdir = config.join("filter.d");
    let mut names: Vec<String> = std::fs::read_dir(&fdir)
        .map_err(|e| format!("{}: {e}", fdir.display()))?
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
        let ini = Ini::load(&fdir.join(&name)).map_err(|e| e.to_string())?;
        let mut cache: HashMap<String, Result<F2bFilter, String>> = HashMap::new();
        let mut queue = vec![name.clone()];
        let mut sets: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
        let mut file_opts: BTreeMap<String, String> = BTreeMap::new();
        while let Some(file) = queue.pop() {
            let path = logs.join(&file);
            let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let text = String::from_utf8_lossy(&text);
            let mut pending: Option<Value> = None;
            for (n, line) in text.lines().enumerate() {
                let at = format!("{}:{}", path.display(), n + 1);
                let annotation = line.trim_start_matches('#').trim_start();
                if line.starts_with('#') {
                    if let Some(v) = annotation.strip_prefix("filterOptions:") {
                        let v: Value =
                            serde_json::from_str(v.trim()).map_err(|e| format!("{at}: {e}"))?;
                        sets = match v {
                            Value::Array(a) => a.iter().map(as_opts).collect(),
                            o => vec![as_opts(&o)],
                        };
                    } else if let Some(v) = annotation.strip_prefix("fileOptions:") {
                        let v: Value =
                            serde_json::from_str(v.trim()).map_err(|e| format!("{at}: {e}"))?;
                        file_opts.extend(as_opts(&v));
                    } else if let Some(v) = annotation.strip_prefix("addFILE:") {
                        queue.insert(0, v.trim().trim_matches('"').to_string());
                    } else if let Some(v) = annotation.strip_prefix("failJSON:") {
                        pending = serde_json::from_str(v.trim()).ok();
                    }
                    continue;
                }
                if line.trim().is_empty() {
                    continue;
                }
                let Some(want) = pending.take() else { continue };
                for set in &sets {
                    let mut opts = file_opts.clone();
                    opts.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                    if let Some(c) = opts.get("test.condition") {
                        if !condition(c, &name, &opts) {
                            continue;
                        }
                    }
                    if let Some(c) = want.get("constraint").and_then(Value::as_str) {
                        if !condition(c, &name, &opts) {
                            continue;
                        }
                    }
                    let prefix = opts.get("test.prefix-line").cloned().unwrap_or_default();
                    let filter_opts: BTreeMap<String, String> = opts
                        .iter()
                        .filter(|(k, _)| !k.starts_with("test."))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let key = format!("{filter_opts:?}");
                    let filter = cache.entry(key.clone()).or_insert_with(|| {
                        F2bFilter::from_ini(
                            &ini,
                            &name,
                            &filter_opts,
                            &fdir.join(&name).display().to_string(),
                        )
                        .map_err(|e| e.to_string())
                    });
                    report.total += 1;
                    let line = format!("{prefix}{line}");
                    let diff = match filter {
                        Err(e) => Some(format!("filter did not load: {e}")),
                        Ok(f) => compare(&want, &f.process(&line, &tz, SAMPLES_NOW), &tz),
                    };
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
                                options: key,
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

/// Compares an outcome with its annotation; `None` when they agree.
fn compare(want: &Value, got: &Outcome, tz: &TimeZone) -> Option<String> {
    let should = want.get("match").and_then(Value::as_bool).unwrap_or(false);
    let fail = match got {
        Outcome::Fail(f) => Some(f),
        _ => None,
    };
    match (should, fail) {
        (false, None) => None,
        (false, Some(f)) => Some(format!("expected no match, got host {}", f.host)),
        (true, None) => Some(format!("expected a match, got {got:?}")),
        (true, Some(f)) => {
            let mut diffs = Vec::new();
            if let Some(h) = want.get("host").and_then(Value::as_str) {
                let same = f.host == h
                    || matches!((f.addr, h.parse::<std::net::IpAddr>()), (Some(a), Ok(b)) if a == b.to_canonical());
                if !same {
                    diffs.push(format!("host: expected {h}, got {}", f.host));
                }
            }
            if let Some(t) = want.get("time").and_then(Value::as_str) {
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
                let ok = got_t.as_deref().is_some_and(|g| {
                    g == t || (t.contains('.') && g.starts_with(&t[..t.len().min(19)]))
                });
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
            (!diffs.is_empty()).then(|| diffs.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
