//! `sipwarden test-filter LOG FILTER`: the fail2ban-regex equivalent. The
//! scan is `crate::filter::test_filter`; this prints what it found.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use super::{CliError, out};
use crate::event::{Time, escape_text};
use crate::filter::test_filter::{Show, TestFilterRun, scan_log};

/// A shown log line is cut after this many characters.
const SHOWN_CHARS: usize = 4096;

/// Logs past this size show how far the reading is, on a terminal.
const PROGRESS_FROM: u64 = 8 << 20;

/// Runs `log` through `spec` and prints the counts (as JSON with `json`),
/// the first failures found and the missed and matched lines `show` asks
/// for.
pub fn test_filter(
    log: &Path,
    spec: &str,
    json: bool,
    show: Show,
    zone: &str,
) -> Result<ExitCode, CliError> {
    let terminal = std::io::stderr().is_terminal();
    let progress = |read: u64, size: u64| {
        if terminal && size > PROGRESS_FROM {
            eprint!("\r{:>5.1}% read", read as f64 * 100.0 / size.max(1) as f64);
            let _ = std::io::stderr().flush();
        }
    };
    let run = scan_log(log, spec, zone, show, Time::now(), Some(&progress))?;
    if terminal && run.bytes > PROGRESS_FROM {
        eprintln!();
    }
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&run.report)?))?;
    } else {
        out(&text(&run))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The counts, hits per failregex, the first failures and the missed lines
/// asked for, escaped (log lines are attacker text).
fn text(run: &TestFilterRun) -> String {
    let r = &run.report;
    let mut out = format!(
        "Lines: {} lines, {} ignored, {} matched, {} missed\n",
        r.lines, r.ignored, r.matched, r.missed
    );
    for (i, h) in r.hits.iter().enumerate() {
        out.push_str(&format!("  failregex #{i}: {h} hit(s)\n"));
    }
    if r.unterminated {
        out.push_str("  (the last line has no newline yet: not read, as fail2ban-regex)\n");
    }
    out.push_str(&format!("Dates: {} lines with a date\n", r.dated));
    for (host, t) in &run.examples {
        out.push_str(&format!(
            "  e.g. {} at {}\n",
            escape_text(host, 100),
            t.map_or_else(|| "(no date)".to_string(), |t| t.to_string())
        ));
    }
    for (title, lines) in [("Matched", &r.matched_lines), ("Missed", &r.missed_lines)] {
        if !lines.is_empty() {
            out.push_str(&format!("{title} lines:\n"));
            for l in lines {
                out.push_str(&format!("  {}\n", escape_text(l, SHOWN_CHARS)));
            }
        }
    }
    out.push_str(&format!(
        "{:.3} s, {:.0} lines/s\n",
        r.seconds, r.lines_per_second
    ));
    out
}
