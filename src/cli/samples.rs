//! `sipwarden samples`: fail2ban's annotated sample logs run against
//! fail2ban filter files (the evaluation is
//! `crate::filter::f2b::samples`), reported as text or JSON.

use std::path::Path;
use std::process::ExitCode;

use super::{CliError, out};
use crate::filter::f2b::samples::{self, SampleReport};

/// Runs the samples of `config/filter.d` (or of filter `only`) found in
/// `logs`, prints the report, and exits non-zero when an evaluation failed.
pub fn samples(
    config: &Path,
    logs: &Path,
    only: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let report = samples::run(config, logs, only)?;
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        out(&text(&report))?;
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every failure with what differs, then the counts.
fn text(report: &SampleReport) -> String {
    let mut text = String::new();
    for f in &report.failures {
        text.push_str(&format!(
            "FAIL {} {} {}\n    {}\n",
            f.filter, f.at, f.options, f.diff
        ));
    }
    text.push_str(&format!("{} filters tested\n", report.filters));
    text.push_str(&format!(
        "{} passed, {} failed\n",
        report.passed, report.failed
    ));
    text
}
