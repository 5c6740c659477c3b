//! The `sipwarden` command's verbs: each parses nothing (clap did, in
//! [`args`]), calls into the library, and prints. Nothing outside this
//! folder prints to stdout; `main.rs` only parses, calls [`run()`] and
//! turns the error into an exit code.
//!
//! One file per verb group: [`run`](mod@run) (run, check, config default), [`talk`]
//! (status, ban, unban, reload, ping, set: the requests to the daemon and
//! their text renderings), [`test_filter`], [`samples`], [`doctor`] and
//! [`probe`] (doctor --probe), [`import`] (import-fail2ban), [`completions`] (completions, man).

pub mod args;
pub mod completions;
pub mod doctor;
pub mod import;
pub mod probe;
pub mod run;
pub mod samples;
pub mod talk;
pub mod test_filter;

use std::process::ExitCode;

pub use args::{Cli, Command, ConfigCommand, Talk};

use crate::config::ConfigError;
use crate::control::Request;
use crate::control::client::ClientError;
use crate::daemon::DaemonError;
use crate::filter::f2b::samples::SamplesError;
use crate::filter::test_filter::TestFilterError;

/// Why a verb failed. Each message is the library's own (one `Display`);
/// `main` prints it with the causes the error carries, after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration with a fail2ban one, or a fail2ban one alone,
    /// does not load. Said once: its cause is part of the message.
    #[error("{0}")]
    Load(ConfigError),
    /// The configuration loads, but has nothing to run.
    #[error("{0}; not starting")]
    Empty(String),
    /// The async runtime could not start.
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The daemon stopped with an error.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The daemon did not answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `samples` could not run.
    #[error(transparent)]
    Samples(#[from] SamplesError),
    /// `test-filter` could not run.
    #[error(transparent)]
    TestFilter(#[from] TestFilterError),
    /// The manual page could not be rendered.
    #[error("rendering the manual page")]
    Man(#[source] std::io::Error),
    /// An answer could not be written as JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Writing to stdout failed.
    #[error(transparent)]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// Whether this is a write to a closed pipe (`sipwarden status | head`):
    /// the reader went away, and nothing is left to say to anyone.
    pub fn is_closed_pipe(&self) -> bool {
        let broken = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
        if let CliError::Output(e) = self {
            return broken(e);
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(c) = cause {
            if c.downcast_ref::<std::io::Error>().is_some_and(broken) {
                return true;
            }
            cause = c.source();
        }
        false
    }
}

/// Runs the verb `cli` names; the exit code says how it went (a failed
/// check, a refused request), the error why it could not run at all.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Run {
            config,
            dry_run,
            fail2ban_config,
        } => run::daemon(config, dry_run, fail2ban_config),
        Command::Check { config, json } => run::check(config.as_deref(), json),
        Command::ImportFail2ban { dir } => import::import_fail2ban(&dir),
        Command::Config(ConfigCommand::Default) => run::config_default(),
        Command::Samples {
            config,
            logs,
            filter,
            json,
        } => samples::samples(&config, &logs, filter.as_deref(), json),
        Command::TestFilter {
            log,
            filter,
            json,
            show_missed,
            print_all_missed,
            print_all_matched,
            logtimezone,
        } => {
            die_quietly_on_closed_pipe();
            let show = crate::filter::test_filter::Show {
                missed: if print_all_missed {
                    usize::MAX
                } else {
                    show_missed
                },
                matched: if print_all_matched { usize::MAX } else { 0 },
            };
            test_filter::test_filter(&log, &filter, json, show, &logtimezone)
        }
        Command::Status {
            jail,
            limit,
            cursor,
            talk: t,
        } => talk::talk(
            t,
            Request::Status {
                jail,
                limit,
                cursor,
            },
        ),
        Command::Ban {
            jail,
            addr,
            duration,
            force,
            talk: t,
        } => talk::talk(
            t,
            Request::Ban {
                jail,
                addr,
                duration,
                force,
            },
        ),
        Command::Unban {
            addr,
            jail,
            all,
            talk: t,
        } => talk::talk(t, Request::Unban { addr, jail, all }),
        Command::Reload { force, talk: t } => talk::talk(t, Request::Reload { force }),
        Command::Doctor { config, probe } => {
            die_quietly_on_closed_pipe();
            Ok(if probe {
                probe::run(config.as_deref())
            } else {
                doctor::run(config.as_deref())
            })
        }
        Command::Completions { shell } => completions::completions(shell),
        Command::Man => completions::man(),
        Command::Ping { talk: t } => talk::talk(t, Request::Ping {}),
        Command::Set {
            jail,
            action,
            addr,
            talk: t,
        } => talk::talk(t, talk::set_request(jail, &action, addr)),
    }
}

/// Writes `text` to stdout. A reader that went away (`sipwarden status |
/// head`) surfaces as a BrokenPipe error, which `main` turns into a quiet
/// exit instead of a panic.
fn out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())?;
    o.flush()
}

/// Lets a closed pipe end the process silently, as it ends `cat`: for the
/// verbs that print as they go (std's `println!` panics on a closed pipe
/// because Rust ignores SIGPIPE). They touch no socket a peer could close
/// under them, except the doctor's TCP probes, which std sends without
/// raising SIGPIPE.
fn die_quietly_on_closed_pipe() {
    // SAFETY: restoring the default disposition of a signal has no
    // preconditions; no other thread exists yet to race with.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> std::io::Error {
        std::io::ErrorKind::BrokenPipe.into()
    }

    /// A closed stdout ends quietly, whether the write was ours or a cause
    /// deeper down; any other error is reported.
    #[test]
    fn closed_pipes_are_recognised_through_causes() {
        assert!(CliError::Output(pipe()).is_closed_pipe());
        let deep = CliError::Client(ClientError::Io {
            path: "/run/x.sock".into(),
            source: pipe(),
        });
        assert!(deep.is_closed_pipe());
        assert!(!CliError::Output(std::io::ErrorKind::StorageFull.into()).is_closed_pipe());
        assert!(!CliError::Empty("no jail".into()).is_closed_pipe());
    }

    /// fail2ban-client's spellings become the same requests as ban/unban.
    #[test]
    fn set_banip_and_unbanip_are_ban_and_unban() {
        assert_eq!(
            talk::set_request("sshd".into(), "banip", "192.0.2.1".into()),
            Request::Ban {
                jail: "sshd".into(),
                addr: "192.0.2.1".into(),
                duration: None,
                force: false,
            }
        );
        assert_eq!(
            talk::set_request("sshd".into(), "unbanip", "192.0.2.1".into()),
            Request::Unban {
                addr: Some("192.0.2.1".into()),
                jail: Some("sshd".into()),
                all: false,
            }
        );
    }
}
