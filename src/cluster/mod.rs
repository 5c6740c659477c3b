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
//! Redis is trusted like the configuration: whoever can write to it can
//! ban addresses on every node, but never an address a node must not ban
//! (ignoreip, its own addresses, cluster peers): those rules apply to
//! received bans too.

pub mod resp;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use self::resp::{Conn, RedisUrl, Value};
use crate::event::Time;

/// Most publications kept while Redis is unreachable.
const QUEUE_MAX: usize = 100_000;
/// A node key lives this long without a refresh.
const NODE_TTL_MS: u64 = 10_000;
/// How often a node refreshes its key and reads its peers'.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Entries kept in the stream (approximately).
const STREAM_MAXLEN: &str = "100000";

/// Shared counting: add the failure, trim to findtime, count, and take the
/// decision lock when the count reaches maxretry. Returns the count when
/// this node decides, else 0.
const COUNT_SCRIPT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[4]) then
  if redis.call('SET', KEYS[2], ARGV[5], 'NX', 'PX', ARGV[2]) then
    redis.call('DEL', KEYS[1])
    return n
  end
end
return 0
";

/// `[cluster]`, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The Redis server.
    pub redis: RedisUrl,
    /// This node's name (unique in the fleet).
    pub node: String,
    /// Prefix of every key.
    pub prefix: String,
}

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
    /// `host:port` of Redis.
    pub redis: String,
    /// Whether both connections are up.
    pub connected: bool,
    /// Bans and unbans published.
    pub published: u64,
    /// Bans and unbans received from peers.
    pub received: u64,
    /// Publications waiting for Redis.
    pub queued: u64,
    /// Shared-count failures not counted because Redis was away.
    pub uncounted: u64,
    /// Peers seen.
    pub peers: Vec<PeerView>,
    /// The last connection error, when disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counters shared with `status`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    writer_up: AtomicBool,
    reader_up: AtomicBool,
    published: AtomicU64,
    received: AtomicU64,
    queued: AtomicU64,
    uncounted: AtomicU64,
    peers: Mutex<Vec<PeerView>>,
    lags: Mutex<HashMap<String, i64>>,
    error: Mutex<Option<String>>,
}

impl ClusterStats {
    fn set_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.error.lock() {
            *g = e;
        }
    }
}

/// The daemon's handle on the running cluster tasks.
pub struct Cluster {
    /// The configuration it runs with.
    pub config: ClusterConfig,
    tx: mpsc::Sender<Outbound>,
    stats: Arc<ClusterStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// Starts the writer and reader tasks; received bans arrive on `inbound`.
    pub fn start(
        config: ClusterConfig,
        own_addrs: Vec<IpAddr>,
        inbound: mpsc::Sender<Inbound>,
    ) -> Cluster {
        let stats = Arc::new(ClusterStats::default());
        let (tx, rx) = mpsc::channel(65_536);
        let writer = Writer {
            cfg: config.clone(),
            stats: stats.clone(),
            inbound: inbound.clone(),
            own_addrs,
            queue: VecDeque::new(),
            own: HashMap::new(),
            seq: 0,
        };
        let reader = Reader {
            cfg: config.clone(),
            stats: stats.clone(),
            inbound,
            last_id: None,
        };
        tracing::info!(
            "cluster: node {} with redis {} (key prefix {})",
            config.node,
            config.redis.endpoint(),
            config.prefix
        );
        Cluster {
            config,
            tx,
            stats,
            tasks: vec![tokio::spawn(writer.run(rx)), tokio::spawn(reader.run())],
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
        ClusterView {
            node: self.config.node.clone(),
            redis: self.config.redis.endpoint(),
            connected: s.writer_up.load(Ordering::Relaxed) && s.reader_up.load(Ordering::Relaxed),
            published: s.published.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            uncounted: s.uncounted.load(Ordering::Relaxed),
            peers,
            error: s.error.lock().ok().and_then(|g| g.clone()),
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

/// Backoff between reconnection attempts.
fn backoff(n: u32) -> Duration {
    Duration::from_millis((250u64 << n.min(5)).min(5_000))
}

struct Writer {
    cfg: ClusterConfig,
    stats: Arc<ClusterStats>,
    inbound: mpsc::Sender<Inbound>,
    own_addrs: Vec<IpAddr>,
    /// Bans and unbans waiting to be published.
    queue: VecDeque<Outbound>,
    /// This node's active bans, re-asserted after a reconnection.
    own: HashMap<(String, String), SharedBan>,
    seq: u64,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Outbound>) {
        let mut attempt = 0u32;
        loop {
            let mut conn = match Conn::open(&self.cfg.redis).await {
                Ok(c) => c,
                Err(e) => {
                    self.down(&e.to_string(), attempt);
                    // Keep taking work while waiting.
                    let wait = tokio::time::sleep(backoff(attempt));
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            _ = &mut wait => break,
                            op = rx.recv() => match op {
                                Some(op) => self.take(op),
                                None => return,
                            },
                        }
                    }
                    attempt += 1;
                    continue;
                }
            };
            attempt = 0;
            match self.serve(&mut conn, &mut rx).await {
                Ok(()) => return,
                Err(e) => self.down(&e.to_string(), 0),
            }
        }
    }

    fn down(&self, e: &str, attempt: u32) {
        let was_up = self.stats.writer_up.swap(false, Ordering::Relaxed);
        if was_up || attempt == 0 {
            tracing::warn!(
                "cluster: redis {} unreachable ({e}); banning locally, {} publication(s) queued",
                self.cfg.redis.endpoint(),
                self.queue.len()
            );
        }
        self.stats.set_error(Some(e.to_string()));
    }

    /// Queues an operation while Redis is away (failures are not queued:
    /// the local jail counts them anyway, and late counts would mislead).
    fn take(&mut self, op: Outbound) {
        match op {
            Outbound::Failure { .. } => {
                self.stats.uncounted.fetch_add(1, Ordering::Relaxed);
            }
            op @ Outbound::Forget { .. } => self.note_own(&op),
            op => {
                self.note_own(&op);
                if self.queue.len() >= QUEUE_MAX {
                    self.queue.pop_front();
                }
                self.queue.push_back(op);
            }
        }
        self.stats
            .queued
            .store(self.queue.len() as u64, Ordering::Relaxed);
    }

    fn note_own(&mut self, op: &Outbound) {
        match op {
            Outbound::Ban(b) => {
                self.own.insert((b.jail.clone(), b.addr.clone()), b.clone());
            }
            Outbound::Unban { jail, addr } | Outbound::Forget { jail, addr } => {
                self.own.remove(&(jail.clone(), addr.clone()));
            }
            Outbound::Failure { .. } => {}
        }
    }

    async fn serve(
        &mut self,
        conn: &mut Conn,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), resp::RespError> {
        // Back: our own active bans' keys first (Redis may have restarted
        // empty), then whatever waited.
        let now = now_ms();
        self.own.retain(|_, b| b.end.is_none_or(|e| e > now));
        let own: Vec<SharedBan> = self.own.values().cloned().collect();
        for b in &own {
            self.queue_key(conn, b, now);
        }
        conn.flush(own.len()).await?;
        let waiting = self.queue.len();
        while let Some(op) = self.queue.front().cloned() {
            self.publish(conn, &op).await?;
            self.queue.pop_front();
            self.stats
                .queued
                .store(self.queue.len() as u64, Ordering::Relaxed);
        }
        self.stats.writer_up.store(true, Ordering::Relaxed);
        self.stats.set_error(None);
        tracing::info!(
            "cluster: connected to redis {} as node {} ({} own ban(s) re-asserted, {waiting} queued publication(s) sent)",
            self.cfg.redis.endpoint(),
            self.cfg.node,
            own.len()
        );
        self.heartbeat(conn).await?;
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                op = rx.recv() => {
                    let Some(op) = op else { return Ok(()) };
                    if let Err(e) = self.handle(conn, op.clone()).await {
                        if matches!(op, Outbound::Ban(_) | Outbound::Unban { .. }) {
                            self.queue.push_back(op);
                        }
                        return Err(e);
                    }
                }
                _ = beat.tick() => self.heartbeat(conn).await?,
            }
        }
    }

    async fn handle(&mut self, conn: &mut Conn, op: Outbound) -> Result<(), resp::RespError> {
        match op {
            Outbound::Failure {
                jail,
                addr,
                time,
                maxretry,
                findtime_ms,
            } => {
                self.seq += 1;
                let p = &self.cfg.prefix;
                let member = format!("{}:{}", self.cfg.node, self.seq);
                let r = conn
                    .cmd(&[
                        "EVAL",
                        COUNT_SCRIPT,
                        "2",
                        &format!("{p}:count:{jail}:{addr}"),
                        &format!("{p}:decided:{jail}:{addr}"),
                        &time.0.to_string(),
                        &findtime_ms.max(1).to_string(),
                        &member,
                        &maxretry.to_string(),
                        &self.cfg.node,
                    ])
                    .await?;
                if let Some(n) = r.int().filter(|&n| n > 0) {
                    let _ = self
                        .inbound
                        .send(Inbound::SharedBan {
                            jail,
                            addr,
                            failures: n as u32,
                        })
                        .await;
                }
                Ok(())
            }
            op @ Outbound::Forget { .. } => {
                self.note_own(&op);
                Ok(())
            }
            op => {
                self.note_own(&op);
                self.publish(conn, &op).await
            }
        }
    }

    fn queue_key(&self, conn: &mut Conn, b: &SharedBan, now: i64) {
        let key = key_ban(&self.cfg.prefix, &b.jail, &b.addr);
        let v = serde_json::to_string(b).unwrap_or_default();
        match b.end {
            Some(e) => conn.queue(&["SET", &key, &v, "PX", &(e - now).max(1).to_string()]),
            None => conn.queue(&["SET", &key, &v]),
        }
    }

    /// Stream entry plus key, in one round trip.
    async fn publish(&self, conn: &mut Conn, op: &Outbound) -> Result<(), resp::RespError> {
        let stream = format!("{}:events", self.cfg.prefix);
        let now = now_ms();
        match op {
            Outbound::Ban(b) => {
                if b.end.is_some_and(|e| e <= now) {
                    return Ok(()); // ran out while queued
                }
                let v = serde_json::to_string(b).unwrap_or_default();
                queue_entry(conn, &stream, "ban", &v);
                self.queue_key(conn, b, now);
            }
            Outbound::Unban { jail, addr } => {
                let v = serde_json::json!({"jail": jail, "addr": addr, "origin": self.cfg.node})
                    .to_string();
                queue_entry(conn, &stream, "unban", &v);
                conn.queue(&["DEL", &key_ban(&self.cfg.prefix, jail, addr)]);
            }
            Outbound::Failure { .. } | Outbound::Forget { .. } => return Ok(()),
        }
        for r in conn.flush(2).await? {
            if let Err(e) = r {
                return Err(resp::RespError::Server(e));
            }
        }
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Refreshes this node's key and reads the peers'.
    async fn heartbeat(&mut self, conn: &mut Conn) -> Result<(), resp::RespError> {
        let p = &self.cfg.prefix;
        let me = serde_json::json!({
            "node": self.cfg.node,
            "addrs": self.own_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "at": now_ms(),
        })
        .to_string();
        conn.cmd(&[
            "SET",
            &format!("{p}:node:{}", self.cfg.node),
            &me,
            "PX",
            &NODE_TTL_MS.to_string(),
        ])
        .await?;
        let keys = scan(conn, &format!("{p}:node:*")).await?;
        let mut peers = Vec::new();
        let mut addrs = Vec::new();
        let now = now_ms();
        for k in keys {
            let Ok(v) = conn.cmd(&["GET", &k]).await else {
                continue;
            };
            let Some(v) = v
                .text()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            else {
                continue;
            };
            let node = v["node"].as_str().unwrap_or_default().to_string();
            if node == self.cfg.node || node.is_empty() {
                continue;
            }
            let a: Vec<String> = v["addrs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            addrs.extend(a.iter().filter_map(|x| x.parse::<IpAddr>().ok()));
            peers.push(PeerView {
                node,
                addrs: a,
                seen_ms_ago: now - v["at"].as_i64().unwrap_or(now),
                lag_ms: None,
            });
        }
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        if let Ok(mut g) = self.stats.peers.lock() {
            *g = peers;
        }
        let _ = self.inbound.send(Inbound::Peers(addrs)).await;
        Ok(())
    }
}

/// Queues one stream entry (`op`, and the ban or unban as JSON), the stream
/// trimmed to about `STREAM_MAXLEN` entries.
fn queue_entry(conn: &mut Conn, stream: &str, op: &str, value: &str) {
    conn.queue(&[
        "XADD",
        stream,
        "MAXLEN",
        "~",
        STREAM_MAXLEN,
        "*",
        "op",
        op,
        "ban",
        value,
    ]);
}

/// Every key matching `pattern` (SCAN, so Redis is never blocked).
async fn scan(conn: &mut Conn, pattern: &str) -> Result<Vec<String>, resp::RespError> {
    let mut cursor = "0".to_string();
    let mut out = Vec::new();
    loop {
        let r = conn
            .cmd(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"])
            .await?;
        let items = r.items();
        cursor = items
            .first()
            .and_then(Value::text)
            .unwrap_or("0")
            .to_string();
        if let Some(keys) = items.get(1) {
            out.extend(
                keys.items()
                    .iter()
                    .filter_map(|k| k.text().map(String::from)),
            );
        }
        if cursor == "0" || out.len() > 10_000_000 {
            return Ok(out);
        }
    }
}

struct Reader {
    cfg: ClusterConfig,
    stats: Arc<ClusterStats>,
    inbound: mpsc::Sender<Inbound>,
    /// The last stream entry read: a node that was away reads on from here.
    last_id: Option<String>,
}

impl Reader {
    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            match Conn::open(&self.cfg.redis).await {
                Ok(mut c) => {
                    attempt = 0;
                    if let Err(e) = self.serve(&mut c).await {
                        self.stats.reader_up.store(false, Ordering::Relaxed);
                        self.stats.set_error(Some(e.to_string()));
                    }
                }
                Err(e) => {
                    self.stats.reader_up.store(false, Ordering::Relaxed);
                    self.stats.set_error(Some(e.to_string()));
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn serve(&mut self, conn: &mut Conn) -> Result<(), resp::RespError> {
        let stream = format!("{}:events", self.cfg.prefix);
        // Where to read on from: the last entry seen, or (first time) the
        // stream's end as it is before the keys are read, so nothing that
        // happens while they are read is missed.
        let from = match self.last_id.clone() {
            Some(id) => id,
            None => {
                let r = conn
                    .cmd(&["XREVRANGE", &stream, "+", "-", "COUNT", "1"])
                    .await?;
                r.items()
                    .first()
                    .and_then(|e| e.items().first())
                    .and_then(Value::text)
                    .unwrap_or("0-0")
                    .to_string()
            }
        };
        // The current set of bans, on every (re)connection.
        let keys = scan(conn, &format!("{}:ban:*", self.cfg.prefix)).await?;
        let mut synced = 0;
        for k in keys {
            if let Some(b) = conn
                .cmd(&["GET", &k])
                .await?
                .text()
                .and_then(|t| serde_json::from_str::<SharedBan>(t).ok())
            {
                if b.origin != self.cfg.node {
                    synced += 1;
                    if self.inbound.send(Inbound::Ban(b)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        self.stats.reader_up.store(true, Ordering::Relaxed);
        tracing::info!(
            "cluster: {synced} active ban(s) of other nodes read; following {stream} from {from}"
        );
        self.last_id = Some(from);
        loop {
            let id = self.last_id.clone().unwrap_or_else(|| "$".into());
            let r = conn
                .cmd(&[
                    "XREAD", "COUNT", "1000", "BLOCK", "1000", "STREAMS", &stream, &id,
                ])
                .await?;
            for s in r.items() {
                for entry in s.items().get(1).map(Value::items).unwrap_or_default() {
                    let items = entry.items();
                    let Some(id) = items.first().and_then(Value::text) else {
                        continue;
                    };
                    self.last_id = Some(id.to_string());
                    let fields = items.get(1).map(Value::items).unwrap_or_default();
                    let field = |name: &str| {
                        fields
                            .chunks(2)
                            .find(|kv| kv[0].text() == Some(name))
                            .and_then(|kv| kv.get(1))
                            .and_then(Value::text)
                    };
                    let lag = id
                        .split('-')
                        .next()
                        .and_then(|ms| ms.parse::<i64>().ok())
                        .map(|ms| now_ms() - ms);
                    let msg = match (field("op"), field("ban")) {
                        (Some("ban"), Some(v)) => match serde_json::from_str::<SharedBan>(v) {
                            Ok(b) => Inbound::Ban(b),
                            Err(_) => continue,
                        },
                        (Some("unban"), Some(v)) => {
                            let Ok(u) = serde_json::from_str::<serde_json::Value>(v) else {
                                continue;
                            };
                            Inbound::Unban {
                                jail: u["jail"].as_str().unwrap_or_default().into(),
                                addr: u["addr"].as_str().unwrap_or_default().into(),
                                origin: u["origin"].as_str().unwrap_or_default().into(),
                            }
                        }
                        _ => continue,
                    };
                    let origin = match &msg {
                        Inbound::Ban(b) => b.origin.clone(),
                        Inbound::Unban { origin, .. } => origin.clone(),
                        _ => String::new(),
                    };
                    // Our own entries come back too: never applied twice,
                    // never republished.
                    if origin == self.cfg.node {
                        continue;
                    }
                    if let (Some(l), Ok(mut g)) = (lag, self.stats.lags.lock()) {
                        g.insert(origin, l);
                    }
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if self.inbound.send(msg).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
