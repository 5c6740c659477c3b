//! The enforcer thread: firewall calls are blocking, so they run on a
//! thread of their own, and decisions that pile up while one call runs go
//! out together.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use ipnet::IpNet;

use super::{DaemonError, RunOptions};
use crate::config::{Backend, Config};
use crate::enforce::{Enforcer, LogOnly, NftEnforcer};
use crate::event::Time;
use crate::http::metrics::Metrics;
use crate::jail::{BanReason, Decision};

/// How long the thread waits for decisions before it checks the firewall
/// for drift.
const IDLE_TICK: Duration = Duration::from_millis(500);

/// Picks the enforcer for the configuration.
/// `owner` is the canonical state directory, written into the table as its
/// owner.
pub(super) fn build(
    config: &Config,
    opts: &RunOptions,
    owner: &str,
) -> Result<Box<dyn Enforcer>, DaemonError> {
    if opts.dry_run || config.firewall.backend == Backend::None {
        tracing::info!("firewall backend none (dry run): decisions are logged, not enforced");
        return Ok(Box::new(LogOnly));
    }
    let feeds = config.feeds.iter().map(|f| f.name.clone()).collect();
    let nft = NftEnforcer::start_with_feeds(&config.firewall, feeds, owner)
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    Ok(Box::new(nft))
}

/// Starts the enforcer thread: it applies batches from `decisions`, loads
/// feeds from `feeds`, checks for drift when idle, and closes the enforcer
/// once `decisions` is closed.
pub(super) fn spawn(
    mut enforcer: Box<dyn Enforcer>,
    decisions: Receiver<Vec<Decision>>,
    feeds: Receiver<(String, Vec<IpNet>)>,
    metrics: Arc<Metrics>,
) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    let (dec_rx, feed_rx) = (decisions, feeds);
    std::thread::Builder::new()
        .name("enforce".into())
        .spawn(move || {
            loop {
                while let Ok((name, nets)) = feed_rx.try_recv() {
                    match enforcer.load_feed(&name, &nets) {
                        Ok(n) => tracing::info!("feed {name}: {n} entries in force"),
                        Err(e) => {
                            tracing::error!("feed {name}: {e}; the previous contents stay in force")
                        }
                    }
                }
                let mut batch = match dec_rx.recv_timeout(IDLE_TICK) {
                    Ok(b) => b,
                    Err(RecvTimeoutError::Timeout) => {
                        // Idle: check for drift (a flushed ruleset, elements deleted by hand).
                        if let Err(e) = enforcer.tick() {
                            tracing::error!("firewall ({}): {e}", enforcer.name());
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                while let Ok(more) = dec_rx.try_recv() {
                    batch.extend(more);
                }
                match enforcer.apply(&batch) {
                    Ok(()) => {
                        let now = Time::now();
                        for d in &batch {
                            if let Decision::Ban(b) = d {
                                if b.reason == BanReason::Failures {
                                    metrics.observe_ban((now.0 - b.start.0).max(0) as f64 / 1000.0);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        metrics
                            .firewall_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!("firewall ({}): {e}", enforcer.name());
                    }
                }
            }
            if let Err(e) = enforcer.close() {
                tracing::error!("firewall ({}): {e}", enforcer.name());
            }
        })
        .map_err(|source| DaemonError::Io {
            what: "starting the enforcer thread".into(),
            source,
        })
}
