//! The `sipwarden` command: the daemon, and the verbs that talk to it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use sipwarden::config::{self, Config};
use sipwarden::control::{Request, client};
use sipwarden::daemon::{self, RunOptions};

/// SIP-aware intrusion prevention: counts failures per source address and
/// bans in the kernel.
#[derive(Parser, Debug)]
#[command(name = "sipwarden", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of every verb that talks to the running daemon.
#[derive(Args, Debug, Clone)]
struct Talk {
    /// Control socket [default: `[daemon] socket` of the configuration,
    /// else /run/sipwarden/sipwarden.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Configuration whose `[daemon] socket` to use.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the daemon's JSON answer instead of text (for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Run {
        /// Configuration file [default: /etc/sipwarden/sipwarden.toml, else the
        /// embedded default].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log decisions only; touch no firewall (same as `backend = "none"`).
        #[arg(long)]
        dry_run: bool,
        /// Also run the enabled jails of this fail2ban configuration
        /// (e.g. /etc/fail2ban: jail.conf, jail.d/, jail.local, filter.d/);
        /// sipwarden's nftables enforcer bans instead of fail2ban's actions.
        #[arg(long, value_name = "DIR")]
        fail2ban_config: Option<PathBuf>,
    },
    /// Check this machine and the configuration; one line per check, with
    /// what to fix. Exits non-zero when a check fails.
    Doctor {
        /// Configuration file [default: /etc/sipwarden/sipwarden.toml, else the
        /// embedded default].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `sipwarden man > sipwarden.1`.
    Man,
    /// Print the sipwarden TOML equivalent of a fail2ban configuration.
    ImportFail2ban {
        /// fail2ban configuration directory (e.g. /etc/fail2ban).
        dir: PathBuf,
    },
    /// Validate a configuration file; exits non-zero on error.
    Check {
        /// Configuration file [default: /etc/sipwarden/sipwarden.toml, else the
        /// embedded default].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run fail2ban's annotated sample logs against fail2ban filter files
    /// and report pass/fail per evaluation.
    Samples {
        /// fail2ban configuration directory (holding filter.d/).
        #[arg(long, value_name = "DIR")]
        config: PathBuf,
        /// Directory of annotated sample logs (one file per filter name).
        #[arg(long, value_name = "DIR")]
        logs: PathBuf,
        /// Only this filter.
        #[arg(long, value_name = "NAME")]
        filter: Option<String>,
        /// Print the report as JSON (`total`, `passed`, `failed`, ...).
        #[arg(long)]
        json: bool,
    },
    /// Run a log file through a filter, like fail2ban-regex: a built-in filter
    /// name, a fail2ban filter file (`path/to/sshd.conf[mode=aggressive]`), or
    /// a regex with <HOST>.
    TestFilter {
        /// The log file.
        log: PathBuf,
        /// Built-in name, fail2ban filter file, or regex.
        filter: String,
        /// Print the counts as JSON (`lines`, `matched`, `ignored`, `missed`).
        #[arg(long)]
        json: bool,
        /// Print up to this many missed lines.
        #[arg(long, value_name = "N", default_value_t = 0)]
        show_missed: usize,
        /// Zone of zone-less timestamps.
        #[arg(long, default_value = "local")]
        logtimezone: String,
    },
    /// Jails with their counts, or one jail in detail with its banned addresses.
    Status {
        /// Show this jail in detail.
        jail: Option<String>,
        /// Show one page of this many bans (at most 10,000) instead of every
        /// ban; with --json the page carries `next_cursor` when more follow.
        #[arg(long, value_name = "N", requires = "jail")]
        limit: Option<usize>,
        /// Start the page after this cursor (a page's `next_cursor`).
        #[arg(long, value_name = "CURSOR", requires = "jail")]
        cursor: Option<String>,
        #[command(flatten)]
        talk: Talk,
    },
    /// Ban an address or prefix by hand.
    Ban {
        /// The jail the ban belongs to.
        jail: String,
        /// Address or CIDR prefix (e.g. 203.0.113.7, 198.51.100.0/24).
        addr: String,
        /// Ban length, e.g. 30m, 2h, 1d; -1 for permanent [default: the jail's bantime].
        #[arg(long = "for", value_name = "DURATION", allow_hyphen_values = true)]
        duration: Option<String>,
        /// Ban even an address in ignoreip or one of this host's.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        talk: Talk,
    },
    /// Lift a ban (in every jail unless --jail), or every ban with --all.
    Unban {
        /// Address or CIDR prefix.
        #[arg(required_unless_present = "all")]
        addr: Option<String>,
        /// Only in this jail.
        #[arg(long)]
        jail: Option<String>,
        /// Every ban (of --jail, or of all jails).
        #[arg(long, conflicts_with = "addr")]
        all: bool,
        #[command(flatten)]
        talk: Talk,
    },
    /// Re-read the configuration; one that does not parse, is empty or would
    /// remove every running jail is refused and the old one keeps running.
    Reload {
        /// Apply it even when empty or removing every running jail (their
        /// bans are lifted).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        talk: Talk,
    },
    /// Check that the daemon answers.
    Ping {
        #[command(flatten)]
        talk: Talk,
    },
    /// fail2ban-client spellings: `set JAIL banip ADDR`, `set JAIL unbanip ADDR`.
    Set {
        /// The jail.
        jail: String,
        /// `banip` or `unbanip`.
        #[arg(value_parser = ["banip", "unbanip"])]
        action: String,
        /// Address or prefix.
        addr: String,
        #[command(flatten)]
        talk: Talk,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the embedded default configuration (commented: it is the reference).
    Default,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
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

/// Whether `e` is a write to a closed pipe.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Sends one request to the daemon and prints the answer. `status JAIL`
/// without a page asked for fetches every page.
fn talk(t: Talk, req: Request) -> anyhow::Result<ExitCode> {
    let socket = match t.socket {
        Some(s) => s,
        None => Config::load(t.config.as_deref())?.daemon.socket,
    };
    let resp = match &req {
        Request::Status {
            jail: Some(jail),
            limit: None,
            cursor: None,
        } => client::jail_status(&socket, jail)?,
        _ => client::request(&socket, &req)?,
    };
    if t.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&resp)?))?;
    } else if resp.ok {
        out(&client::render(&req, &resp))?;
    } else {
        eprintln!(
            "error: {}",
            resp.error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(if resp.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Lets a closed pipe end the process silently, as it ends `cat`: for the
/// verbs whose printing lives in other modules (std's `println!` panics on a
/// closed pipe because Rust ignores SIGPIPE). They touch no socket a peer
/// could close under them, except the doctor's TCP probes, which std sends
/// without raising SIGPIPE.
fn die_quietly_on_closed_pipe() {
    // SAFETY: restoring the default disposition of a signal has no
    // preconditions; no other thread exists yet to race with.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            dry_run,
            fail2ban_config,
        } => {
            init_logging();
            let cfg = Config::load_with(config.as_deref(), fail2ban_config.as_deref())
                .map_err(anyhow::Error::msg)?;
            if let Some(why) = cfg.emptiness() {
                anyhow::bail!("{why}; not starting");
            }
            for w in &cfg.warnings {
                tracing::warn!("{w}");
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let ran = rt.block_on(daemon::run(
                cfg,
                RunOptions {
                    dry_run,
                    config_path: config,
                    fail2ban_config,
                },
            ));
            // Everything that must finish was joined inside `run`. A name
            // lookup stuck in getaddrinfo (DNS down) cannot be cancelled,
            // and stopping must not wait the resolver's own timeouts.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            ran?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, json } => {
            let mut cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) if json => {
                    out(&format!(
                        "{}\n",
                        serde_json::json!({ "ok": false, "error": e.to_string() })
                    ))?;
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(why) = cfg.emptiness() {
                if json {
                    out(&format!(
                        "{}\n",
                        serde_json::json!({ "ok": false, "error": why })
                    ))?;
                } else {
                    eprintln!("error: {why}");
                }
                return Ok(ExitCode::FAILURE);
            }
            let same = cfg.same_file_warnings();
            cfg.warnings.extend(same);
            let enabled: Vec<&str> = cfg.enabled_jails().map(|j| j.name.as_str()).collect();
            let size = cfg.footprint();
            if json {
                out(&format!(
                    "{}\n",
                    serde_json::json!({
                        "ok": true,
                        "config": cfg.origin,
                        "jails": enabled,
                        "firewall": cfg.firewall.backend.to_string(),
                        "warnings": cfg.warnings,
                        "footprint": {
                            "jails": size.jails,
                            "ignoreip_networks": size.ignoreip_networks,
                            "bytes": size.bytes,
                        },
                    })
                ))?;
            } else {
                for w in &cfg.warnings {
                    eprintln!("warning: {w}");
                }
                let mut shown = enabled[..enabled.len().min(20)].join(", ");
                if enabled.len() > 20 {
                    shown.push_str(&format!(", and {} more", enabled.len() - 20));
                }
                out(&format!(
                    "{}: OK ({} jail(s) enabled: {shown}; firewall {})\n{size}\n",
                    cfg.origin,
                    enabled.len(),
                    cfg.firewall.backend
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportFail2ban { dir } => {
            let c = config::fail2ban::from_fail2ban(&dir).map_err(anyhow::Error::msg)?;
            out(&config::fail2ban::to_toml(&c))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Default) => {
            out(config::DEFAULT_CONFIG)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Samples {
            config,
            logs,
            filter,
            json,
        } => {
            let report = sipwarden::filter::f2b::samples::run(&config, &logs, filter.as_deref())
                .map_err(anyhow::Error::msg)?;
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
            } else {
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
                out(&text)?;
            }
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::TestFilter {
            log,
            filter,
            json,
            show_missed,
            logtimezone,
        } => {
            die_quietly_on_closed_pipe();
            sipwarden::filter::test_filter::run(&log, &filter, json, show_missed, &logtimezone)
        }
        Command::Status {
            jail,
            limit,
            cursor,
            talk: t,
        } => talk(
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
        } => talk(
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
        } => talk(t, Request::Unban { addr, jail, all }),
        Command::Reload { force, talk: t } => talk(t, Request::Reload { force }),
        Command::Doctor { config } => {
            die_quietly_on_closed_pipe();
            Ok(sipwarden::doctor::run(config.as_deref()))
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into memory first: the generator panics on a closed pipe.
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "sipwarden", &mut out);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("rendering the manual page")?;
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ping { talk: t } => talk(t, Request::Ping {}),
        Command::Set {
            jail,
            action,
            addr,
            talk: t,
        } => {
            let req = if action == "banip" {
                Request::Ban {
                    jail,
                    addr,
                    duration: None,
                    force: false,
                }
            } else {
                Request::Unban {
                    addr: Some(addr),
                    jail: Some(jail),
                    all: false,
                }
            };
            talk(t, req)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        // The reader went away (`| head`): nothing left to say to anyone.
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
