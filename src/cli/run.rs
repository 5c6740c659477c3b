//! `sipwarden run`, `check` and `config default`: the verbs that load a
//! configuration (or print the embedded one).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{CliError, out};
use crate::config::{self, Config};
use crate::daemon::{self, RunOptions};

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

/// `run`: loads the configuration (and a fail2ban one beside it) and runs
/// the daemon until it is stopped.
pub fn daemon(
    config: Option<PathBuf>,
    dry_run: bool,
    fail2ban_config: Option<PathBuf>,
) -> Result<ExitCode, CliError> {
    init_logging();
    daemon::tune_allocator();
    let cfg =
        Config::load_with(config.as_deref(), fail2ban_config.as_deref()).map_err(CliError::Load)?;
    if let Some(why) = cfg.emptiness() {
        return Err(CliError::Empty(why));
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
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

/// `check`: validates the configuration and says what would run, as text
/// or JSON; exits non-zero on an error.
pub fn check(config: Option<&Path>, json: bool) -> Result<ExitCode, CliError> {
    let mut cfg = match Config::load(config) {
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

/// `config default`: the embedded default configuration, commented (it is
/// the reference).
pub fn config_default() -> Result<ExitCode, CliError> {
    out(config::DEFAULT_CONFIG)?;
    Ok(ExitCode::SUCCESS)
}
