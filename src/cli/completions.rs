//! `sipwarden completions SHELL` and `sipwarden man`: generated from the
//! clap definitions in [`super::args`]; packaging/build-deb.sh ships both.

use std::process::ExitCode;

use clap::CommandFactory;

use super::{Cli, CliError};

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode, CliError> {
    let mut cmd = Cli::command();
    // Into memory first: the generator panics on a closed pipe.
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "sipwarden", &mut out);
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &out);
    Ok(ExitCode::SUCCESS)
}

/// Prints the manual page (roff).
pub fn man() -> Result<ExitCode, CliError> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .map_err(CliError::Man)?;
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &out);
    Ok(ExitCode::SUCCESS)
}
