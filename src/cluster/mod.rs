//! A fleet acting as one, through Redis.
//!
//! * Bans decided on a node are published to a Redis Stream
//!   (`<prefix>:events`) and kept as keys with the ban's remaining time
//!   (`<prefix>:ban:<jail>:<addr>`). Every node reads the stream and enforces
//!   what the others decided; a node that was away reads on from the last
//!   entry it saw, and a node that starts reads the keys first. A Stream
//!   rather than pub/sub: entries wait for a node that is away, pub/sub
//!   would drop them.
//! * A node never republishes what it received (each entry names its
//!   origin), so bans cannot loop; a received ban keeps its end time, so it
//!   is never stretched as it travels.
//! * Shared counting (`shared_count = true` on a jail): every failure is
//!   added to a per-address sorted set trimmed to findtime by one Lua
//!   script, which also takes a lock so exactly one node decides the ban.
//! * Redis down: detection and bans go on locally; what must be published
//!   waits in a bounded queue and goes out when Redis is back, and each node
//!   re-asserts the keys of its own active bans (a Redis restarted empty
//!   learns them again).
//!
//! * The link (`link.rs`, on the `redis` crate): one server, or the master
//!   the sentinels name; TLS with `rediss://`. The writer and the reader
//!   each run in a supervised loop (`supervise.rs`): a broken link or a
//!   panic restarts the task after a backoff with jitter, and `status` shows
//!   each task's health. A key or entry under the prefix that is not what
//!   sipwarden writes is skipped and counted, never a reason to reconnect.
//!
//! Redis is trusted like the configuration: whoever can write to it can
//! ban addresses on every node, but never an address a node must not ban
//! (ignoreip, its own addresses, cluster peers): those rules apply to
//! received bans too.

mod config;
mod link;
mod reader;
mod roster;
mod supervise;
mod target;
mod writer;

pub use config::{
    ClusterConfig, ClusterConfigError, Key, LinkKeys, Problem, RawCluster, link_config,
};
pub use supervise::TaskView;
pub use target::{HostPort, LinkConfig, Target};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::event::Time;

/// A ban as the fleet shares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedBan {
    /// Jail name (nodes match jails by name).
    pub jail: String,
    /// Address or prefix, as text.
    pub addr: String,
    /// Start, ms since the epoch.
    pub start: i64,
    /// End, ms since the epoch; `None` for permanent.
    pub end: Option<i64>,
    /// Failures that caused it.
    pub failures: u32,
    /// The node that decided it.
    pub origin: String,
}

/// What the daemon hands the cluster.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A ban this node decided.
    Ban(SharedBan),
    /// A ban this node lifted by hand.
    Unban {
        /// Jail name.
        jail: String,
        /// Address or prefix.
        addr: String,
    },
    /// A ban of this node lifted elsewhere: no longer this node's to
    /// re-assert after a reconnection (nothing is published).
    Forget {
        /// Jail name.
        jail: String,
        /// Address or prefix.
        addr: String,
    },
    /// A failure in a `shared_count` jail.
    Failure {
        /// Jail name.
        jail: String,
        /// Source.
        addr: IpAddr,
        /// When.
        time: Time,
        /// The jail's maxretry.
        maxretry: u32,
        /// Its findtime, in ms.
        findtime_ms: u64,
    },
}

/// What the cluster hands the daemon.
#[derive(Clone, Debug)]
pub enum Inbound {
    /// Another node banned.
    Ban(SharedBan),
    /// Another node lifted a ban by hand.
    Unban {
        /// Jail name.
        jail: String,
        /// Address or prefix.
        addr: String,
        /// Who.
        origin: String,
    },
    /// The fleet's failures reached maxretry and this node decides.
    SharedBan {
        /// Jail name.
        jail: String,
        /// Source.
        addr: IpAddr,
        /// Failures across the fleet.
        failures: u32,
    },
    /// The peers' own addresses (never to be banned).
    Peers(Vec<IpAddr>),
    /// The Redis master this node connected to (never to be banned): with
    /// Sentinel, it changes at a failover.
    Server(HostPort),
}

/// A peer as last seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// Its node name.
    pub node: String,
    /// Its addresses.
    pub addrs: Vec<String>,
    /// Milliseconds since its last heartbeat.
    pub seen_ms_ago: i64,
    /// Delay of the last entry received from it (publish to read), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<i64>,
}

/// The cluster's state, for `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node.
    pub node: String,
    /// `host:port` of the Redis master in use (or last tried), or how it
    /// is found.
    pub redis: String,
    /// Whether the writer and the reader are both up (connected and doing
    /// their work).
    pub connected: bool,
    /// Bans and unbans published.
    pub published: u64,
    /// Bans and unbans received from peers.
    pub received: u64,
    /// Publications waiting for Redis.
    pub queued: u64,
    /// Shared-count failures not counted because Redis was away.
    pub uncounted: u64,
    /// Keys and stream entries under the prefix of the wrong type or
    /// shape, skipped (counted at each read).
    #[serde(default)]
    pub skipped: u64,
    /// Peers seen.
    pub peers: Vec<PeerView>,
    /// The writer and reader tasks.
    #[serde(default)]
    pub tasks: Vec<TaskView>,
    /// Why the link is not (fully) up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counters shared with `status`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    writer: Arc<supervise::Health>,
    reader: Arc<supervise::Health>,
    published: AtomicU64,
    received: AtomicU64,
    queued: AtomicU64,
    uncounted: AtomicU64,
    skipped: AtomicU64,
    server: Mutex<Option<String>>,
    peers: Mutex<Vec<PeerView>>,
    lags: Mutex<HashMap<String, i64>>,
    /// Keys already named in the log as skipped (each once; bounded).
    logged_odd: Mutex<std::collections::HashSet<String>>,
}

impl ClusterStats {
    /// Counts a key or entry of the wrong type or shape; logs it the first
    /// time (at most [`ODD_LOGGED`] distinct ones).
    fn odd(&self, what: &str) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut seen) = self.logged_odd.lock() {
            if seen.len() < ODD_LOGGED && seen.insert(what.to_string()) {
                tracing::warn!(
                    "cluster: skipped, not what sipwarden writes under its key prefix: {} (counted in status as skipped; delete the key if it is stray)",
                    crate::event::escape_text(what, 200)
                );
            }
        }
    }

    fn set_server(&self, s: &HostPort) {
        if let Ok(mut g) = self.server.lock() {
            *g = Some(s.to_string());
        }
    }
}

/// Distinct odd keys named in the log.
const ODD_LOGGED: usize = 100;

/// The daemon's handle on the running cluster tasks.
pub struct Cluster {
    /// The configuration it runs with.
    pub config: ClusterConfig,
    tx: mpsc::Sender<Outbound>,
    stats: Arc<ClusterStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// Starts the writer and reader tasks, each supervised; received bans
    /// arrive on `inbound`.
    pub fn start(
        config: ClusterConfig,
        own_addrs: Vec<IpAddr>,
        inbound: mpsc::Sender<Inbound>,
    ) -> Cluster {
        let stats = Arc::new(ClusterStats::default());
        let (tx, rx) = mpsc::channel(65_536);
        let target = config.link.describe();
        let lost = Arc::new(tokio::sync::Notify::new());
        let writer = writer::Writer::new(
            config.clone(),
            stats.clone(),
            inbound.clone(),
            own_addrs,
            rx,
            lost.clone(),
        );
        let reader = reader::Reader::new(config.clone(), stats.clone(), inbound, lost);
        tracing::info!(
            "cluster: node {} with {target} (key prefix {})",
            config.node,
            config.prefix
        );
        Cluster {
            tasks: vec![
                tokio::spawn(supervise::supervise(
                    writer,
                    stats.writer.clone(),
                    target.clone(),
                )),
                tokio::spawn(supervise::supervise(reader, stats.reader.clone(), target)),
            ],
            config,
            tx,
            stats,
        }
    }

    /// Hands an operation to the cluster without waiting. A full channel
    /// (Redis far behind) drops it, counted.
    pub fn send(&self, op: Outbound) {
        if self.tx.try_send(op).is_err() {
            self.stats.uncounted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The state for `status`.
    pub fn view(&self) -> ClusterView {
        let s = &self.stats;
        let lags = s.lags.lock().map(|g| g.clone()).unwrap_or_default();
        let mut peers = s.peers.lock().map(|g| g.clone()).unwrap_or_default();
        for p in &mut peers {
            p.lag_ms = lags.get(&p.node).copied();
        }
        let tasks = vec![s.writer.view("writer"), s.reader.view("reader")];
        let error = tasks
            .iter()
            .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.name)))
            .collect::<Vec<_>>();
        ClusterView {
            node: self.config.node.clone(),
            redis: s
                .server
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .unwrap_or_else(|| self.config.link.describe()),
            connected: tasks.iter().all(|t| t.up),
            published: s.published.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            uncounted: s.uncounted.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
            peers,
            tasks,
            error: (!error.is_empty()).then(|| error.join("; ")),
        }
    }

    /// Stops the tasks (what is still queued is lost with the process; the
    /// bans themselves are in the local store).
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn key_ban(p: &str, jail: &str, addr: &str) -> String {
    format!("{p}:ban:{jail}:{addr}")
}

fn now_ms() -> i64 {
    Time::now().0
}
