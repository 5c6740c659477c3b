//! The running daemon: sources feed jails, jails feed the enforcer and the
//! store, the control socket reads and steers it all.
//!
//! ```text
//! sources ──► events ──► jails ──► decisions ──► enforcer thread (enforcer.rs)
//! (sources.rs)           (JailSet,      │
//!                         one task)     ├──► store thread (store.rs)
//!                            ▲          └──► cluster (cluster.rs)
//!                            │
//!          control socket, HTTP API, reload (runtime.rs, reload.rs)
//! ```
//!
//! Sources run on their own threads or tasks and send batches of events over
//! a channel. One task owns every jail (no locks on the counting path),
//! turns events into decisions, and hands them in batches to the enforcer
//! thread and the store thread. This file only wires the parts together.

mod cluster;
mod enforcer;
mod feeds;
mod fraud;
mod hep;
mod ignore_files;
mod lock;
mod logfiles;
mod names;
mod reload;
mod runtime;
mod sources;
mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use self::runtime::{JobMeta, Runtime};
use self::sources::Sources;
use crate::config::Config;
use crate::control::recent::Recent;
use crate::control::server::{ControlMsg, ControlSocket};
use crate::event::{ClockWatch, FailureEvent, Time};
use crate::jail::{JailConfig, JailSet, JailSpec};
use crate::source::scanner::ScannerList;
use crate::store::{Store, StoreOp};

/// How the daemon was asked to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Log decisions, touch no firewall.
    pub dry_run: bool,
    /// The configuration file given with `--config`, re-read on reload.
    pub config_path: Option<PathBuf>,
    /// A fail2ban configuration directory (`--fail2ban-config`), re-read on reload.
    pub fail2ban_config: Option<PathBuf>,
}

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Something the configuration asks for cannot be set up.
    #[error("{0}")]
    Setup(String),
    /// The control socket cannot be bound.
    #[error(transparent)]
    Control(#[from] crate::control::server::ControlSocketError),
    /// The HTTP listener cannot be bound.
    #[error(transparent)]
    Http(#[from] crate::http::BindError),
    /// The runtime failed (signals, threads).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Batches in flight between sources and jails (a batch is one read, up to a
/// few thousand events); sources block when the jails fall this far behind,
/// so a flood cannot pile up in memory.
const EVENT_QUEUE: usize = 16;

/// A burst of at least this many decisions (or store records) is followed
/// by [`give_back_memory`].
const TRIM_AFTER: usize = 10_000;

/// Returns to the kernel the pages a burst's short-lived buffers left free:
/// glibc keeps freed memory in its arenas, so a daemon that lived through
/// one burst of 100,000 bans would otherwise keep that peak for good.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas, under their locks;
    // it touches no memory this program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks of at least this size get their own mapping from the kernel, and
/// go back to it when freed.
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Makes glibc give large blocks their own mappings, always. By default its
/// threshold rises after the first large block is freed, so the jails' and
/// the ledger's big tables of a burst (several MB each, freed when they
/// grow or a burst is answered) land in the arenas and stay as free holes
/// there: measured on W4 (1,000,000 tracked addresses, 100,000 bans), the
/// daemon settled at 196 MB with the default and 171 MB with this, its peak
/// 204 MB and 191 MB. Small allocations, the hot paths', are unchanged.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's allocator (under its
    // lock); it touches no memory this program holds. Called before the
    // daemon's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// This host's addresses, read from the kernel: never banned by jails with
/// `ignoreself`, and announced to the cluster.
fn own_addresses() -> Vec<IpNet> {
    match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs
            .into_iter()
            .map(|i| IpNet::from(i.ip().to_canonical()))
            .collect(),
        Err(e) => {
            tracing::warn!(
                "cannot read this host's addresses for ignoreself ({e}); only ignoreip applies"
            );
            Vec::new()
        }
    }
}

/// The jails of the enabled configuration, with what they never ban: this
/// host's addresses, the fleet's Redis given by name, and the addresses
/// the store remembers for peers given by name.
fn build_jails(config: &Config, enabled: &[JailConfig], store: Option<&Store>) -> JailSet {
    let specs: Vec<JailSpec> = enabled.iter().map(JailSpec::from_config).collect();
    // Read even when no jail has `ignoreself`: feeds never drop them.
    let own = own_addresses();
    let mut jails = JailSet::new(own, &specs);
    // bantime_rndtime's extras: unpredictable from outside, per process.
    jails.seed(crate::supervise::random());
    // Peers given by name are protected with every address they resolve
    // to: at first those the store kept, then what the lookups answer.
    if let Some(cc) = &config.cluster {
        for name in cluster::configured_names(cc) {
            jails.protect_everywhere(name);
        }
    }
    if let Some(s) = store {
        names::remember_stored(&mut jails, s);
    }
    jails
}

/// The dashboard, API and metrics, when `[http]` is set.
async fn start_http(
    config: &Config,
    ctl_tx: &mpsc::Sender<ControlMsg>,
    metrics: &Arc<crate::http::metrics::Metrics>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    Ok(match config.http.clone() {
        Some(h) => {
            let listener = crate::http::bind(h.listen).await?;
            tracing::info!(
                "http: dashboard, API and metrics on http://{}/{}",
                h.listen,
                if h.token.is_some() {
                    ""
                } else {
                    " (read-only: no [http] token)"
                }
            );
            Some(tokio::spawn(crate::http::serve(
                listener,
                ctl_tx.clone(),
                h.token,
                h.allowed_hosts,
                config.daemon.state_dir.clone(),
                metrics.clone(),
            )))
        }
        None => None,
    })
}

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads.
pub async fn run(config: Config, opts: RunOptions) -> Result<(), DaemonError> {
    let enabled: Vec<JailConfig> = config.enabled_jails().cloned().collect();
    if enabled.len() > usize::from(u16::MAX) / 2 {
        return Err(DaemonError::Setup("too many jails".into()));
    }
    let lock = lock::StateLock::take(&config.daemon.state_dir)?;
    let control =
        ControlSocket::bind(&config.daemon.socket, config.daemon.socket_group.as_deref())?;
    let now = Time::now();
    let state_dir = config.daemon.state_dir.clone();
    let (store, store_health) = store::open(&state_dir, now);
    // The store's two big reads run beside the firewall's layout.
    let reads = store.as_ref().map(|_| {
        (
            store::Reading::start("active", &state_dir, move |s| s.active(now)),
            store::Reading::start("history", &state_dir, store::history),
        )
    });
    let mut jails = build_jails(&config, &enabled, store.as_ref());
    let journal_cursors = store::journal_cursors(store.as_ref());
    let scopes = enforcer::scopes(&jails, &enabled);
    let mut enforcer = enforcer::build(&config, &opts, &lock.dir.to_string_lossy(), &scopes)?;
    let firewall = enforcer.name();

    // The bans still in force, back in the kernel before anything new.
    let restored = match (&store, reads) {
        (Some(s), Some((active, history))) => {
            let active = active.join(s);
            let restored = store::restore(&mut jails, active, enforcer.as_mut(), now);
            match history.join(s) {
                Ok(h) => jails.install_history(h),
                Err(e) => tracing::error!("{e}; escalation starts without history"),
            }
            restored
        }
        _ => Vec::new(),
    };

    // The enforcer runs on its own thread: firewall calls are blocking, and
    // decisions that pile up while one call runs go out together.
    let (dec_tx, dec_rx) = std::sync::mpsc::channel::<enforcer::Work>();
    // The kernel's answers come back to this loop.
    let (verdict_tx, mut verdict_rx) = mpsc::unbounded_channel::<enforcer::Verdict>();
    // Blocklist feeds' contents, replaced whole (checked on every turn).
    let (feed_tx, feed_rx) = std::sync::mpsc::channel::<(String, Vec<IpNet>)>();
    let metrics = Arc::new(crate::http::metrics::Metrics::default());
    let fast = enforcer::FastPath::of(enforcer.as_ref());
    let mut enforcer_thread = Some(enforcer::spawn(
        enforcer,
        dec_rx,
        feed_rx,
        verdict_tx,
        metrics.clone(),
    )?);
    // The store writes on its own thread too, a transaction per burst, and
    // watches the database; it asks for the bans in force when it had to
    // create the database again.
    let want_in_force = Arc::new(tokio::sync::Notify::new());
    let (store_tx, store_rx) = std::sync::mpsc::channel::<Vec<StoreOp>>();
    let tasks = crate::supervise::Tasks::default();
    let store_thread = store::spawn(
        state_dir,
        store,
        lock,
        store_health.clone(),
        want_in_force.clone(),
        store_rx,
        tasks.register("store writer"),
    )?;

    let (events_tx, mut rx) = mpsc::channel::<Vec<FailureEvent>>(EVENT_QUEUE);
    // Lookups of peer host names answer here; they never hold up start.
    let (names_tx, mut names_rx) = mpsc::channel::<names::Answer>(64);
    let scanners = Arc::new(ScannerList::new(&config.scanners));
    let mut rt = Runtime {
        jails,
        config,
        opts,
        started: now,
        firewall,
        sources: Sources::new(events_tx, scanners, tasks.clone(), journal_cursors),
        tasks,
        dec_tx,
        jobs: HashMap::new(),
        next_job: 0,
        store_tx: Some(store_tx),
        store_health,
        cluster: None,
        origins: HashMap::new(),
        recent: Recent::default(),
        feeds: Vec::new(),
        fast,
        resolver: names::Resolver::new(names_tx, names::system_lookup()),
        ignore_files: ignore_files::IgnoreFiles::default(),
        actions: crate::action::ActionSet::new(),
    };
    // Made before the sources: fraud rules ban through it.
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlMsg>(64);
    rt.sources.control = Some(ctl_tx.clone());
    rt.sources.dry_run = rt.opts.dry_run;
    rt.sync_actions(&enabled);
    for b in &restored {
        rt.actions.banned(b, true);
    }
    // Before the first event is counted.
    rt.read_ignore_files(true);
    rt.resolver.sync(rt.jails.names_in_use().keys());
    rt.sources.sync(&enabled, &rt.jails)?;
    let (cluster_tx, mut cluster_rx) = mpsc::channel::<crate::cluster::Inbound>(4096);
    rt.start_cluster(cluster_tx);

    // Feeds never drop what the jails never ban; they hear of every change.
    let mut protection = rt.jails.protection_generation();
    let (protect_tx, protect_rx) =
        tokio::sync::watch::channel(crate::feed::protect::protected_set(rt.jails.protected()));
    let feed_tasks = feeds::start(&mut rt, feed_tx, &protect_rx);

    let http = start_http(&rt.config, &ctl_tx, &metrics).await?;
    // "Started" (and the control socket's first answer) means a line
    // written from now on is read: the followers open their files on
    // threads of their own, each placed at its file's end. A slow disk must
    // not hold the start for long: 2 s at most.
    let looking = std::time::Instant::now();
    while !rt.sources.files_looked() && looking.elapsed() < std::time::Duration::from_secs(2) {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let server = tokio::spawn(control.serve(ctl_tx));

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
        "sipwarden {} started: {} jail(s) [{}], configuration {}, control socket {}",
        env!("CARGO_PKG_VERSION"),
        enabled.len(),
        enabled
            .iter()
            .map(|j| j.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        rt.config.origin,
        rt.config.daemon.socket.display()
    );

    crate::systemd::notify("READY=1");
    let mut watchdog = tokio::time::interval(
        crate::systemd::watchdog_interval().unwrap_or(std::time::Duration::from_secs(3600)),
    );
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(60));
    // The wall clock against the monotonic one, once a second.
    let mono = std::time::Instant::now();
    let mono_ms = || mono.elapsed().as_millis() as i64;
    let mut clock = ClockWatch::new(Time::now(), mono_ms());
    let mut clock_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut decisions = Vec::new();
    loop {
        // Before anything reads the time: a stepped wall clock must not
        // expire (or extend) bans the kernel still holds as they were.
        if let Some(step) = clock.observe(Time::now(), mono_ms()) {
            rt.on_clock_step(step);
        }
        let wake = rt.jails.next_expiry().map(|t| {
            let wait = (t.0 - Time::now().0).max(0) as u64;
            tokio::time::Instant::now() + std::time::Duration::from_millis(wait)
        });
        tokio::select! {
            Some(batch) = rx.recv() => {
                let now = Time::now();
                rt.protect_hep_senders();
                rt.jails.handle(&batch, now, &mut decisions);
                rt.share_failures(&batch);
                rt.recent.note(&batch, now);
                rt.actions.note(&batch);
                // Journal positions marked by now belong to batches queued
                // by now: kept once the drain below has handled them.
                let marks = rt.sources.take_cursors();
                // Take whatever else is queued, so a burst becomes one batch.
                while let Ok(more) = rx.try_recv() {
                    rt.protect_hep_senders();
                    rt.jails.handle(&more, now, &mut decisions);
                    rt.share_failures(&more);
                    rt.recent.note(&more, now);
                    rt.actions.note(&more);
                }
                rt.sources.commit_cursors(marks, rt.store_tx.as_ref());
            }
            v = verdict_rx.recv() => match v {
                Some(v) => rt.on_verdict(v),
                // The enforcer thread is gone (it panicked): its ledger may be
                // half updated, so no restart in place; the daemon exits and
                // the service manager starts it again, which restores every
                // ban from the store (the kernel keeps them meanwhile).
                None => {
                    let why = match enforcer_thread.take().map(std::thread::JoinHandle::join) {
                        Some(Err(p)) => format!("panicked: {}", crate::supervise::panic_message(p.as_ref())),
                        _ => "it stopped".into(),
                    };
                    return Err(DaemonError::Setup(format!(
                        "the enforcer thread stopped ({why}); exiting so that the service manager starts sipwarden again (the kernel keeps every ban meanwhile)"
                    )));
                }
            },
            Some(a) = names_rx.recv() => rt.on_resolved(a),
            Some(msg) = cluster_rx.recv() => {
                let (ds, meta) = rt.apply_cluster(msg);
                rt.dispatch(ds, meta)?;
            }
            Some((req, reply)) = ctl_rx.recv() => rt.control(req, reply),
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                rt.jails.expire(Time::now(), &mut decisions);
            }
            _ = sweep.tick() => rt.jails.sweep(Time::now()),
            _ = want_in_force.notified() => rt.store_in_force(),
            // Wakes the loop so a step is seen even when nothing happens.
            _ = clock_tick.tick() => {
                if rt.ignore_files.due(std::time::Instant::now()) {
                    rt.read_ignore_files(false);
                }
            }
            // Pinged from the loop that does the work: a stuck loop misses it.
            _ = watchdog.tick() => crate::systemd::notify("WATCHDOG=1"),
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => { tracing::info!("SIGHUP: reloading the configuration"); rt.reload(false); }
        }
        rt.dispatch(
            std::mem::take(&mut decisions),
            JobMeta {
                publish: true,
                ..JobMeta::default()
            },
        )?;
        feeds::tell(&rt.jails, &mut protection, &protect_tx);
    }
    crate::systemd::notify("STOPPING=1");
    for t in &feed_tasks {
        t.abort();
    }
    server.abort();
    if let Some(h) = &http {
        h.abort();
    }
    rt.sources.stop_all();
    // What is queued is handled, so the journal positions marked for it
    // are kept: a restart neither reads it again nor loses it.
    let marks = rt.sources.take_cursors();
    while let Ok(more) = rx.try_recv() {
        rt.jails.handle(&more, Time::now(), &mut decisions);
        rt.actions.note(&more);
    }
    rt.dispatch(
        std::mem::take(&mut decisions),
        JobMeta {
            publish: true,
            ..JobMeta::default()
        },
    )?;
    rt.sources.commit_cursors(marks, rt.store_tx.as_ref());
    drop(rx);
    // Everything decided reaches the kernel, then (as accepted) the store
    // and the fleet, before exit.
    let (closed, _) = std::sync::mpsc::channel();
    drop(std::mem::replace(&mut rt.dec_tx, closed));
    if enforcer_thread.take().is_some_and(|h| h.join().is_err()) {
        tracing::error!("the enforcer thread panicked while stopping");
    }
    while let Ok(v) = verdict_rx.try_recv() {
        rt.on_verdict(v);
    }
    if let Some(c) = &rt.cluster {
        c.stop();
    }
    // Each jail's actionflush and actionstop, bounded in time.
    std::mem::take(&mut rt.actions).stop();
    drop(rt.store_tx.take());
    // The state directory stays locked until here, after the table was
    // closed.
    let _lock = store_thread.join();
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_include_loopback() {
        let own = own_addresses();
        assert!(own.iter().any(|n| n.addr().is_loopback()), "{own:?}");
    }
}
