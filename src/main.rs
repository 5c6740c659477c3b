//! The `sipwarden` command: parses the arguments, runs the verb
//! (`sipwarden::cli`), and turns its error into an exit code.

use std::process::ExitCode;

use clap::Parser;

use sipwarden::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::run(Cli::parse()) {
        Ok(code) => code,
        // The reader went away (`| head`): nothing left to say to anyone.
        Err(e) if e.is_closed_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the message, then each cause it carries.
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
