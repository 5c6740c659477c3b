//! The running daemon: sources feed jails, jails feed the enforcer.
//!
//! Sources run on their own threads and send batches of events over a
//! channel. One task owns every jail (no locks on the counting path), turns
//! events into decisions, logs them in fail2ban's words, and hands them to
//! the enforcer thread in batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{Backend, Config, JailConfig};
use crate::enforce::{Enforcer, LogOnly, NftEnforcer};
use crate::event::{FailureEvent, JailId, Time};
use crate::filter::{self, Filter};
use crate::jail::{Decision, IgnoreList, Jail, JailPolicy, Outcome, own_addresses};
use crate::source::file::{FileSource, FollowStats};

/// How the daemon was asked to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Log decisions, touch no firewall.
    pub dry_run: bool,
}

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Something the configuration asks for cannot be set up.
    #[error("{0}")]
    Setup(String),
    /// The runtime failed (signals, threads).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Events per channel slot; sources block when the jails fall this far behind.
const EVENT_QUEUE: usize = 1024;

/// The counting core: every jail, owned by one task.
pub struct Core {
    jails: Vec<Jail>,
}

impl Core {
    /// Builds jails for the enabled jail configurations, in order; a jail's
    /// [`JailId`] is its index here.
    pub fn new(jails: &[&JailConfig]) -> Core {
        let own = if jails.iter().any(|j| j.ignoreself) {
            own_addresses()
        } else {
            Vec::new()
        };
        let jails = jails
            .iter()
            .enumerate()
            .map(|(i, jc)| {
                let mut ignore = IgnoreList::new(jc.ignoreip.clone());
                if jc.ignoreself {
                    ignore.extend(own.iter().copied());
                }
                let policy = JailPolicy {
                    maxretry: jc.maxretry,
                    findtime: jc.findtime,
                    bantime: jc.bantime,
                    ignore,
                    max_tracked: jc.max_tracked,
                };
                Jail::new(JailId(i as u16), &jc.name, policy)
            })
            .collect();
        Core { jails }
    }

    /// The jails, in id order.
    pub fn jails(&self) -> &[Jail] {
        &self.jails
    }

    /// Counts a batch of events at `now`; logs what happened and returns the
    /// decisions to enforce.
    pub fn handle(&mut self, batch: &[FailureEvent], now: Time, out: &mut Vec<Decision>) {
        for ev in batch {
            let Some(jail) = self.jails.get_mut(usize::from(ev.jail.0)) else {
                continue;
            };
            match jail.record(ev, now) {
                Outcome::Found { .. } => tracing::info!("[{}] Found {}", jail.name(), ev.addr),
                Outcome::Ban(d) => {
                    tracing::info!("[{}] Found {}", jail.name(), ev.addr);
                    tracing::warn!("{d}");
                    out.push(Decision::Ban(d));
                }
                Outcome::AlreadyBanned => {
                    tracing::debug!("[{}] {} already banned", jail.name(), ev.addr)
                }
                Outcome::Ignored => {
                    tracing::debug!("[{}] Ignore {} (ignoreip)", jail.name(), ev.addr)
                }
                Outcome::TooOld => {
                    tracing::debug!("[{}] Ignore {} (older than findtime)", jail.name(), ev.addr)
                }
            }
        }
    }

    /// Lifts bans that ran out by `now`.
    pub fn expire(&mut self, now: Time, out: &mut Vec<Decision>) {
        for jail in &mut self.jails {
            for u in jail.expire(now) {
                tracing::info!("{u}");
                out.push(Decision::Unban(u));
            }
        }
    }

    /// The earliest ban expiry across jails.
    pub fn next_expiry(&mut self) -> Option<Time> {
        self.jails.iter_mut().filter_map(Jail::next_expiry).min()
    }

    /// Forgets stale failure state.
    pub fn sweep(&mut self, now: Time) {
        for jail in &mut self.jails {
            jail.sweep(now);
        }
    }
}

/// Picks the enforcer for the configuration.
fn build_enforcer(config: &Config, opts: RunOptions) -> Result<Box<dyn Enforcer>, DaemonError> {
    if opts.dry_run || config.firewall.backend == Backend::None {
        tracing::info!("firewall backend none (dry run): decisions are logged, not enforced");
        return Ok(Box::new(LogOnly));
    }
    let nft =
        NftEnforcer::start(&config.firewall).map_err(|e| DaemonError::Setup(e.to_string()))?;
    Ok(Box::new(nft))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config, opts: RunOptions) -> Result<(), DaemonError> {
    let enabled: Vec<&JailConfig> = config.enabled_jails().collect();
    if enabled.len() > usize::from(u16::MAX) {
        return Err(DaemonError::Setup("too many jails (at most 65535)".into()));
    }
    let mut core = Core::new(&enabled);
    let mut enforcer = build_enforcer(&config, opts)?;

    let (tx, mut rx) = mpsc::channel::<Vec<FailureEvent>>(EVENT_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    for (i, jc) in enabled.iter().enumerate() {
        let Some(fname) = jc.filter.as_deref() else {
            continue;
        };
        let filter: Arc<dyn Filter> = filter::builtin(fname, jc.filter_options)
            .map(Arc::from)
            .ok_or_else(|| {
                DaemonError::Setup(format!("jail {}: unknown filter {fname:?}", jc.name))
            })?;
        let tz = filter::date::parse_zone(&jc.logtimezone)
            .map_err(|e| DaemonError::Setup(format!("jail {}: {e}", jc.name)))?;
        for path in &jc.logpath {
            let src = FileSource {
                path: path.clone(),
                jail: JailId(i as u16),
                filter: filter.clone(),
                tz: tz.clone(),
                from_start: jc.from_start,
                tx: tx.clone(),
                stop: stop.clone(),
                stats: Arc::new(FollowStats::default()),
            };
            src.spawn().map_err(|source| DaemonError::Io {
                what: format!("starting the follower of {}", path.display()),
                source,
            })?;
        }
    }
    drop(tx);

    // The enforcer runs on its own thread: firewall calls are blocking, and
    // decisions that pile up while one call runs go out together.
    let (dec_tx, dec_rx) = std::sync::mpsc::channel::<Vec<Decision>>();
    let enforcer_thread = std::thread::Builder::new()
        .name("enforce".into())
        .spawn(move || {
            while let Ok(mut batch) = dec_rx.recv() {
                while let Ok(more) = dec_rx.try_recv() {
                    batch.extend(more);
                }
                if let Err(e) = enforcer.apply(&batch) {
                    tracing::error!("firewall ({}): {e}", enforcer.name());
                }
            }
            if let Err(e) = enforcer.close() {
                tracing::error!("firewall ({}): {e}", enforcer.name());
            }
        })
        .map_err(|source| DaemonError::Io {
            what: "starting the enforcer thread".into(),
            source,
        })?;

    let sig = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|source| DaemonError::Io {
            what: format!("installing the {name} handler"),
            source,
        })
    };
    let mut sigterm = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = sig(SignalKind::interrupt(), "SIGINT")?;
    let mut sighup = sig(SignalKind::hangup(), "SIGHUP")?;

    tracing::info!(
        "sipwarden {} started: {} jail(s) [{}], configuration {}",
        env!("CARGO_PKG_VERSION"),
        enabled.len(),
        enabled
            .iter()
            .map(|j| j.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        config.origin
    );

    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(60));
    let mut decisions = Vec::new();
    let mut sources_open = true;
    loop {
        let wake = core.next_expiry().map(|t| {
            let wait = (t.0 - Time::now().0).max(0) as u64;
            tokio::time::Instant::now() + std::time::Duration::from_millis(wait)
        });
        tokio::select! {
            batch = rx.recv(), if sources_open => {
                let Some(batch) = batch else {
                    // Every source has ended; keep expiring bans until told to stop.
                    sources_open = false;
                    continue;
                };
                let now = Time::now();
                core.handle(&batch, now, &mut decisions);
                // Take whatever else is queued, so a burst becomes one batch.
                while let Ok(more) = rx.try_recv() {
                    core.handle(&more, now, &mut decisions);
                }
            }
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                core.expire(Time::now(), &mut decisions);
            }
            _ = sweep.tick() => core.sweep(Time::now()),
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => {
                tracing::warn!("SIGHUP: configuration reload is not supported yet; restart sipwarden to apply changes");
            }
        }
        if !decisions.is_empty() && dec_tx.send(std::mem::take(&mut decisions)).is_err() {
            return Err(DaemonError::Setup(
                "the enforcer thread stopped; see the error above".into(),
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    drop(dec_tx);
    if enforcer_thread.join().is_err() {
        tracing::error!("the enforcer thread panicked while stopping");
    }
    tracing::info!("stopped");
    Ok(())
}
