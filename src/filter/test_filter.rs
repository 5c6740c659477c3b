//! `sipwarden test-filter LOG FILTER`: the fail2ban-regex equivalent.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use super::f2b::{F2bFilter, Outcome};
use super::{FilterContext, FilterOptions, builtin, date::parse_zone};
use crate::event::Time;

/// The counts `--json` prints.
#[derive(Debug, Default, Serialize)]
pub struct TestFilterReport {
    /// Lines read.
    pub lines: u64,
    /// Lines that gave a failure.
    pub matched: u64,
    /// Lines an ignoreregex matched.
    pub ignored: u64,
    /// Lines that matched nothing.
    pub missed: u64,
    /// Matches per failregex (fail2ban filters; one entry for built-ins).
    pub hits: Vec<u64>,
    /// Lines with a date.
    pub dated: u64,
    /// Seconds spent.
    pub seconds: f64,
    /// Lines per second.
    pub lines_per_second: f64,
}

enum Which {
    Builtin(Box<dyn super::Filter>),
    F2b(Box<F2bFilter>),
}

fn load(spec: &str) -> anyhow::Result<Which> {
    if let Some(f) = builtin(spec, FilterOptions::default()) {
        return Ok(Which::Builtin(f));
    }
    let (name, opts) = super::f2b::parse_filter_spec(spec);
    let p = Path::new(&name);
    if p.is_file() && (name.ends_with(".conf") || name.ends_with(".local")) {
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let dir = p.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        let base_dir_has_filter_d = p.parent().is_some_and(|d| d.ends_with("filter.d"));
        let f = if base_dir_has_filter_d {
            F2bFilter::load(dir, &stem, &opts)?
        } else {
            let ini = super::f2b::ini::Ini::load(&p.with_extension(""))?;
            F2bFilter::from_ini(&ini, &stem, &opts, &name)?
        };
        return Ok(Which::F2b(Box::new(f)));
    }
    // A bare regex: one failregex, default dates.
    let mut ini = super::f2b::ini::Ini::default();
    ini.set("Definition", "failregex", spec);
    let f = F2bFilter::from_ini(&ini, "regex", &BTreeMap::new(), "<command line>")?;
    Ok(Which::F2b(Box::new(f)))
}

/// Runs the command.
pub fn run(
    log: &Path,
    spec: &str,
    json: bool,
    show_missed: usize,
    zone: &str,
) -> anyhow::Result<ExitCode> {
    let filter = load(spec)?;
    let tz = parse_zone(zone).map_err(anyhow::Error::msg)?;
    let file = std::fs::File::open(log).map_err(|e| anyhow::anyhow!("{}: {e}", log.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = size > 8 << 20 && std::io::stderr().is_terminal();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let now = Time::now();
    let cx = FilterContext {
        tz: tz.clone(),
        now,
    };
    let mut r = TestFilterReport::default();
    let mut missed_lines = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    let mut read = 0u64;
    let t0 = std::time::Instant::now();
    let mut fails: Vec<(String, Option<Time>)> = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        r.lines += 1;
        let (hit, ignored, date) = match &filter {
            Which::Builtin(f) => match f.match_line(line, &cx) {
                Some(m) => {
                    if r.hits.is_empty() {
                        r.hits.push(0);
                    }
                    r.hits[0] += 1;
                    if fails.len() < 5 {
                        fails.push((m.addr.to_string(), m.time));
                    }
                    (true, false, m.time.is_some())
                }
                None => (false, false, false),
            },
            Which::F2b(f) => {
                let text = String::from_utf8_lossy(line);
                match f.process(&text, &tz, now) {
                    Outcome::Fail(fl) => {
                        if r.hits.len() < f.failregex_count() {
                            r.hits.resize(f.failregex_count(), 0);
                        }
                        r.hits[fl.regex] += 1;
                        if fails.len() < 5 {
                            fails.push((fl.host.clone(), fl.time));
                        }
                        (true, false, fl.time.is_some())
                    }
                    Outcome::Ignored => (false, true, false),
                    _ => (false, false, false),
                }
            }
        };
        if hit {
            r.matched += 1;
        } else if ignored {
            r.ignored += 1;
        } else {
            r.missed += 1;
            if missed_lines.len() < show_missed {
                missed_lines.push(String::from_utf8_lossy(line).into_owned());
            }
        }
        if date {
            r.dated += 1;
        }
        if progress && r.lines % 100_000 == 0 {
            eprint!(
                "\r{:>5.1}% {} lines",
                read as f64 * 100.0 / size as f64,
                r.lines
            );
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    r.seconds = t0.elapsed().as_secs_f64();
    r.lines_per_second = if r.seconds > 0.0 {
        r.lines as f64 / r.seconds
    } else {
        0.0
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "Lines: {} lines, {} ignored, {} matched, {} missed",
            r.lines, r.ignored, r.matched, r.missed
        );
        for (i, h) in r.hits.iter().enumerate() {
            println!("  failregex #{i}: {h} hit(s)");
        }
        println!("Dates: {} lines with a date", r.dated);
        for (host, t) in &fails {
            println!(
                "  e.g. {host} at {}",
                t.map_or_else(|| "(no date)".to_string(), |t| t.to_string())
            );
        }
        if !missed_lines.is_empty() {
            println!("Missed lines:");
            for l in &missed_lines {
                println!("  {}", crate::event::escape_text(l, 300));
            }
        }
        println!("{:.3} s, {:.0} lines/s", r.seconds, r.lines_per_second);
    }
    Ok(ExitCode::SUCCESS)
}
