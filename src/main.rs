//! The `sipwarden` command: the daemon and its tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sipwarden::config::{self, Config};
use sipwarden::daemon::{self, RunOptions};

/// SIP-aware intrusion prevention: counts failures per source address and
/// bans in the kernel.
#[derive(Parser, Debug)]
#[command(name = "sipwarden", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
    /// Validate a configuration file; exits non-zero on error.
    Check {
        /// Configuration file [default: /etc/sipwarden/sipwarden.toml, else the
        /// embedded default].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
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

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, dry_run } => {
            init_logging();
            let cfg = Config::load(config.as_deref())?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(daemon::run(cfg, RunOptions { dry_run }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let cfg = Config::load(config.as_deref())?;
            let enabled: Vec<&str> = cfg.enabled_jails().map(|j| j.name.as_str()).collect();
            println!(
                "{}: OK ({} jail(s) enabled: {}; firewall {})",
                cfg.origin,
                enabled.len(),
                enabled.join(", "),
                cfg.firewall.backend
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
