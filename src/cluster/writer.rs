//! The writer: publishes this node's bans and unbans (stream entry plus
//! expiring key), counts shared failures with the Lua script, refreshes
//! this node's key and reads its peers'. While Redis is away it queues
//! what must be published; when it is back it re-asserts this node's own
//! bans first.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::link::{self, Failure, Read};
use super::roster;
use super::supervise::{SessionError, Task, backoff, random};
use super::{ClusterConfig, ClusterStats, Inbound, Outbound, PeerView, SharedBan, key_ban, now_ms};

/// Most publications kept while Redis is unreachable.
const QUEUE_MAX: usize = 100_000;
/// How often a node refreshes its key and reads its peers'.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Entries kept in the stream (approximately).
const STREAM_MAXLEN: u64 = 100_000;

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

/// The writer task's state: it outlives each connection (and a panic).
pub(super) struct Writer {
    cfg: ClusterConfig,
    stats: Arc<ClusterStats>,
    inbound: mpsc::Sender<Inbound>,
    own_addrs: Vec<IpAddr>,
    rx: mpsc::Receiver<Outbound>,
    /// Bans and unbans waiting to be published.
    queue: VecDeque<Outbound>,
    /// This node's active bans, re-asserted after a reconnection.
    own: HashMap<(String, String), SharedBan>,
    seq: u64,
    /// The sentinel to ask first.
    next_sentinel: usize,
    /// Said once that this Redis has no `SET ... GET`.
    warned_old: bool,
    /// The reader's connection broke: Redis may be gone (or restarted
    /// empty), so this task checks its own link now rather than at the
    /// next heartbeat, and re-asserts its bans that much sooner.
    lost: Arc<tokio::sync::Notify>,
}

/// Why the queue is not being sent although connected: the server refuses
/// (the stream key is of the wrong type). Retried with backoff.
struct Blocked {
    attempt: u32,
    retry_at: tokio::time::Instant,
}

impl Writer {
    pub(super) fn new(
        cfg: ClusterConfig,
        stats: Arc<ClusterStats>,
        inbound: mpsc::Sender<Inbound>,
        own_addrs: Vec<IpAddr>,
        rx: mpsc::Receiver<Outbound>,
        lost: Arc<tokio::sync::Notify>,
    ) -> Writer {
        Writer {
            cfg,
            stats,
            inbound,
            own_addrs,
            rx,
            queue: VecDeque::new(),
            own: HashMap::new(),
            seq: 0,
            next_sentinel: 0,
            warned_old: false,
            lost,
        }
    }

    fn stream(&self) -> String {
        format!("{}:events", self.cfg.prefix)
    }

    /// Queues an operation while it cannot be published (failures are not
    /// queued: the local jail counts them anyway, and late counts would
    /// mislead).
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
        self.note_queue();
    }

    fn note_queue(&self) {
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

    /// Back: this node's own active bans' keys first (Redis may have
    /// restarted empty, or a failover lost the last writes). A key that was
    /// missing is announced on the stream again, so nodes that are
    /// following it learn the ban too.
    async fn reassert(&mut self, conn: &mut MultiplexedConnection) -> Result<usize, Failure> {
        let now = now_ms();
        self.own.retain(|_, b| b.end.is_none_or(|e| e > now));
        let own: Vec<SharedBan> = self.own.values().cloned().collect();
        let stream = self.stream();
        for chunk in own.chunks(500) {
            let mut p = redis::pipe();
            p.ignore_errors();
            for b in chunk {
                set_key(&mut p, &self.cfg.prefix, b, now).arg("GET");
            }
            let replies: Vec<Value> = p.query_async(conn).await.map_err(|e| link::classify(&e))?;
            let mut announce = redis::pipe();
            announce.ignore_errors();
            for (b, r) in chunk.iter().zip(&replies) {
                match r {
                    Value::Nil => {
                        add_entry(&mut announce, &stream, "ban", &ban_json(b));
                    }
                    Value::ServerError(e) if e.code() == "WRONGTYPE" => self.stats.odd(&format!(
                        "{}: {}",
                        key_ban(&self.cfg.prefix, &b.jail, &b.addr),
                        e.code()
                    )),
                    // A Redis older than 6.2 has no SET ... GET: the key
                    // is written without knowing whether it was missing.
                    Value::ServerError(e) => {
                        if !self.warned_old {
                            tracing::warn!(
                                "cluster: redis refused SET ... GET ({}): re-asserted bans are not announced again (Redis 6.2 or later does)",
                                e.details().unwrap_or(e.code())
                            );
                            self.warned_old = true;
                        }
                        set_key(&mut announce, &self.cfg.prefix, b, now);
                    }
                    _ => {}
                }
            }
            if !announce.is_empty() {
                let _: Vec<Value> = announce
                    .query_async(conn)
                    .await
                    .map_err(|e| link::classify(&e))?;
            }
        }
        Ok(own.len())
    }

    /// Sends what waited, in order. `Refused` leaves the rest queued.
    async fn flush_queue(&mut self, conn: &mut MultiplexedConnection) -> Result<(), Failure> {
        while let Some(op) = self.queue.front().cloned() {
            self.publish(conn, &op).await?;
            self.queue.pop_front();
            self.note_queue();
        }
        Ok(())
    }

    /// Stream entry plus key, in one round trip. `Refused` when the
    /// stream key cannot take entries.
    async fn publish(
        &self,
        conn: &mut MultiplexedConnection,
        op: &Outbound,
    ) -> Result<(), Failure> {
        let stream = self.stream();
        let now = now_ms();
        let mut p = redis::pipe();
        p.ignore_errors();
        match op {
            Outbound::Ban(b) => {
                if b.end.is_some_and(|e| e <= now) {
                    return Ok(()); // ran out while queued
                }
                add_entry(&mut p, &stream, "ban", &ban_json(b));
                set_key(&mut p, &self.cfg.prefix, b, now);
            }
            Outbound::Unban { jail, addr } => {
                let v = serde_json::json!({"jail": jail, "addr": addr, "origin": self.cfg.node})
                    .to_string();
                add_entry(&mut p, &stream, "unban", &v);
                p.cmd("DEL").arg(key_ban(&self.cfg.prefix, jail, addr));
            }
            Outbound::Failure { .. } | Outbound::Forget { .. } => return Ok(()),
        }
        let replies: Vec<Value> = p.query_async(conn).await.map_err(|e| link::classify(&e))?;
        if let Some(Value::ServerError(e)) = replies.first() {
            return Err(Failure::Refused(format!(
                "cannot publish: {stream} is not a stream ({}); bans wait in the queue until it is deleted (redis-cli DEL {stream})",
                e.code()
            )));
        }
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn handle(
        &mut self,
        conn: &mut MultiplexedConnection,
        op: Outbound,
        blocked: &mut Option<Blocked>,
    ) -> Result<(), Failure> {
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
                let count_key = format!("{p}:count:{jail}:{addr}");
                let r = link::query(
                    conn,
                    redis::cmd("EVAL")
                        .arg(COUNT_SCRIPT)
                        .arg(2)
                        .arg(&count_key)
                        .arg(format!("{p}:decided:{jail}:{addr}"))
                        .arg(time.0)
                        .arg(findtime_ms.max(1))
                        .arg(format!("{}:{}", self.cfg.node, self.seq))
                        .arg(maxretry)
                        .arg(&self.cfg.node),
                )
                .await;
                match r {
                    Ok(v) => {
                        if let Some(n) = link::int(&v).filter(|&n| n > 0) {
                            let _ = self
                                .inbound
                                .send(Inbound::SharedBan {
                                    jail,
                                    addr,
                                    failures: u32::try_from(n).unwrap_or(u32::MAX),
                                })
                                .await;
                        }
                    }
                    // A count key of the wrong type: this failure is not
                    // counted across the fleet (the local jail counts it).
                    Err(Failure::Refused(e)) => {
                        self.stats.uncounted.fetch_add(1, Ordering::Relaxed);
                        self.stats.odd(&format!("{count_key}: {e}"));
                    }
                    Err(e) => {
                        self.stats.uncounted.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                Ok(())
            }
            op @ Outbound::Forget { .. } => {
                self.note_own(&op);
                Ok(())
            }
            op => {
                if blocked.is_some() || !self.queue.is_empty() {
                    // Behind what waits: order is kept.
                    self.take(op);
                    return Ok(());
                }
                self.note_own(&op);
                match self.publish(conn, &op).await {
                    Ok(()) => Ok(()),
                    Err(Failure::Refused(e)) => {
                        self.queue.push_back(op);
                        self.note_queue();
                        self.block(blocked, &e);
                        Ok(())
                    }
                    Err(e) => {
                        self.queue.push_back(op);
                        self.note_queue();
                        Err(e)
                    }
                }
            }
        }
    }

    fn block(&self, blocked: &mut Option<Blocked>, why: &str) {
        let attempt = blocked.as_ref().map_or(0, |b| b.attempt + 1);
        let wait = backoff(attempt, random());
        if attempt == 0 || attempt.is_power_of_two() {
            tracing::error!("cluster: {why}; retried in {} ms", wait.as_millis());
        }
        self.stats.writer.set_down(why);
        *blocked = Some(Blocked {
            attempt,
            retry_at: tokio::time::Instant::now() + wait,
        });
    }

    /// Refreshes this node's key and name in the roster and reads the
    /// peers' keys by name: two round trips for a fleet of up to 500
    /// nodes, never a scan of the keyspace (see [`roster`]).
    async fn heartbeat(&mut self, conn: &mut MultiplexedConnection) -> Result<(), Failure> {
        let me = serde_json::json!({
            "node": self.cfg.node,
            "addrs": self.own_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "at": now_ms(),
        })
        .to_string();
        let beat = roster::beat(conn, &self.cfg.prefix, &self.cfg.node, &me, now_ms()).await?;
        for what in &beat.odd {
            self.stats.odd(what);
        }
        let own = roster::node_key(&self.cfg.prefix, &self.cfg.node);
        let keys: Vec<String> = beat.keys.into_iter().filter(|k| *k != own).collect();
        let reads = link::read_keys(conn, &keys).await?;
        let mut peers = Vec::new();
        let mut addrs = Vec::new();
        let now = now_ms();
        for (k, r) in keys.iter().zip(reads) {
            let text = match r {
                Read::Text(t) => t,
                Read::Gone => continue,
                Read::Odd(what) => {
                    self.stats.odd(&what);
                    continue;
                }
            };
            let Some(v) = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .filter(|v| v["node"].is_string())
            else {
                self.stats.odd(&format!("{k}: not a node record"));
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
                        .take(256)
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

    async fn serve(
        &mut self,
        conn: &mut MultiplexedConnection,
        server: &super::HostPort,
    ) -> Result<(), Failure> {
        let reasserted = self.reassert(conn).await?;
        let waiting = self.queue.len();
        let mut blocked = None;
        match self.flush_queue(conn).await {
            Ok(()) => {}
            Err(Failure::Refused(e)) => self.block(&mut blocked, &e),
            Err(e) => return Err(e),
        }
        self.heartbeat(conn).await?;
        if blocked.is_none() {
            self.stats.writer.set_up();
        }
        tracing::info!(
            "cluster: connected to redis {} as node {} ({reasserted} own ban(s) re-asserted, {} queued publication(s) sent)",
            self.stats
                .server
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .unwrap_or_default(),
            self.cfg.node,
            waiting - self.queue.len()
        );
        let mut beat = tokio::time::interval(HEARTBEAT);
        // A late heartbeat is not made up in a burst (tokio's default),
        // which left publications one turn in many on a busy machine.
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        let mut check = tokio::time::interval(link::MASTER_CHECK);
        check.tick().await;
        let sentinel = matches!(self.cfg.link.target, super::Target::Sentinel { .. });
        loop {
            tokio::select! {
                _ = check.tick(), if sentinel => {
                    if let Some(now) = link::master_moved(&self.cfg.link, server).await {
                        return Err(Failure::Link(format!("the sentinels name {now} as the master now")));
                    }
                }
                op = self.rx.recv() => {
                    let Some(op) = op else { return Ok(()) };
                    self.handle(conn, op, &mut blocked).await?;
                }
                _ = self.lost.notified() => {
                    // Only a broken link ends the session: a user whose
                    // ACL refuses PING (`Refused`) is still connected.
                    if let Err(e @ Failure::Link(_)) = link::query(conn, &redis::cmd("PING")).await {
                        return Err(e);
                    }
                }
                _ = beat.tick() => {
                    self.heartbeat(conn).await?;
                    if blocked.as_ref().is_some_and(|b| tokio::time::Instant::now() >= b.retry_at) {
                        match self.flush_queue(conn).await {
                            Ok(()) => {
                                blocked = None;
                                self.stats.writer.set_up();
                                tracing::info!("cluster: publishing again");
                            }
                            Err(Failure::Refused(e)) => self.block(&mut blocked, &e),
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
    }
}

impl Task for Writer {
    const NAME: &'static str = "writer";

    async fn session(&mut self) -> Result<(), SessionError> {
        let mut l = link::open(&self.cfg.link, &mut self.next_sentinel).await?;
        self.stats.set_server(&l.server);
        if self
            .inbound
            .send(Inbound::Server(l.server.clone()))
            .await
            .is_err()
        {
            return Ok(());
        }
        match self.serve(&mut l.conn, &l.server).await {
            Ok(()) => Ok(()),
            Err(failure) => Err(SessionError::Lost {
                server: l.server,
                failure,
            }),
        }
    }

    fn meanwhile(&self) -> String {
        format!(
            "; banning locally, {} publication(s) queued",
            self.queue.len()
        )
    }

    /// Keeps taking work while waiting.
    async fn pause(&mut self, d: Duration) {
        let wait = tokio::time::sleep(d);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => return,
                op = self.rx.recv() => match op {
                    Some(op) => self.take(op),
                    // Stopping: the next session sees the closed channel.
                    None => return,
                },
            }
        }
    }
}

fn ban_json(b: &SharedBan) -> String {
    serde_json::to_string(b).unwrap_or_default()
}

/// `SET key ban PX remaining` (no PX for a permanent ban), added to `p`.
fn set_key<'a>(
    p: &'a mut redis::Pipeline,
    prefix: &str,
    b: &SharedBan,
    now: i64,
) -> &'a mut redis::Pipeline {
    let cmd = p
        .cmd("SET")
        .arg(key_ban(prefix, &b.jail, &b.addr))
        .arg(ban_json(b));
    match b.end {
        Some(e) => cmd.arg("PX").arg((e - now).max(1)),
        None => cmd,
    }
}

/// One stream entry (`op`, and the ban or unban as JSON), the stream
/// trimmed to about [`STREAM_MAXLEN`] entries.
fn add_entry(p: &mut redis::Pipeline, stream: &str, op: &str, value: &str) {
    p.cmd("XADD")
        .arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_MAXLEN)
        .arg("*")
        .arg("op")
        .arg(op)
        .arg("ban")
        .arg(value);
}
