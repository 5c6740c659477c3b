//! The reader: at every connection the bans other nodes hold (their keys),
//! then the stream, from the last entry it saw. What is not a ban (a key of
//! the wrong type, an entry that does not parse) is skipped and counted;
//! a stream key of the wrong type is waited out with backoff on the same
//! connection. Only a broken link ends a session.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::link::{self, Failure, Read};
use super::supervise::{SessionError, Task, backoff, random};
use super::{ClusterConfig, ClusterStats, Inbound, SharedBan, now_ms};

/// Most ban keys read at a (re)connection.
const KEYS_MAX: usize = 2_000_000;
/// Entries per XREAD.
const READ_COUNT: u64 = 1000;
/// How long one XREAD waits for entries, ms (well under the reply timeout).
const READ_BLOCK_MS: u64 = 1000;

/// An empty XREAD answer faster than this is followed by this pause.
const EMPTY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// The reader task's state: it outlives each connection (and a panic).
pub(super) struct Reader {
    cfg: ClusterConfig,
    stats: Arc<ClusterStats>,
    inbound: mpsc::Sender<Inbound>,
    /// The last stream entry read: a node that was away reads on from here.
    last_id: Option<String>,
    /// The sentinel to ask first.
    next_sentinel: usize,
    /// Told when this task's connection broke, so the writer (idle between
    /// heartbeats) checks its own at once.
    lost: Arc<tokio::sync::Notify>,
}

/// The run loop is gone: the daemon is stopping.
struct Stopping;

impl Reader {
    pub(super) fn new(
        cfg: ClusterConfig,
        stats: Arc<ClusterStats>,
        inbound: mpsc::Sender<Inbound>,
        lost: Arc<tokio::sync::Notify>,
    ) -> Reader {
        Reader {
            cfg,
            stats,
            inbound,
            last_id: None,
            next_sentinel: 0,
            lost,
        }
    }

    fn stream(&self) -> String {
        format!("{}:events", self.cfg.prefix)
    }

    /// The id of the stream's last entry ("0-0" when it is empty or
    /// missing).
    async fn stream_end(&self, conn: &mut MultiplexedConnection) -> Result<String, Failure> {
        let r = link::query(
            conn,
            redis::cmd("XREVRANGE")
                .arg(self.stream())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1),
        )
        .await?;
        Ok(link::items(&r)
            .first()
            .and_then(|e| link::items(e).first())
            .and_then(link::text)
            .unwrap_or("0-0")
            .to_string())
    }

    /// The bans other nodes hold now. Returns how many were handed on.
    async fn read_bans(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Result<usize, Stopping>, Failure> {
        let mut odd = 0;
        let keys = link::scan(
            conn,
            &format!("{}:ban:*", self.cfg.prefix),
            KEYS_MAX,
            &mut odd,
        )
        .await?;
        for _ in 0..odd {
            self.stats.odd("a ban key whose name is not UTF-8");
        }
        let mut synced = 0;
        for chunk in keys.chunks(5000) {
            let reads = link::read_keys(conn, chunk).await?;
            for (k, r) in chunk.iter().zip(reads) {
                let b = match r {
                    Read::Text(t) => match serde_json::from_str::<SharedBan>(&t) {
                        Ok(b) => b,
                        Err(_) => {
                            self.stats.odd(&format!("{k}: not a ban"));
                            continue;
                        }
                    },
                    Read::Gone => continue,
                    Read::Odd(what) => {
                        self.stats.odd(&what);
                        continue;
                    }
                };
                if b.origin != self.cfg.node {
                    synced += 1;
                    if self.inbound.send(Inbound::Ban(b)).await.is_err() {
                        return Ok(Err(Stopping));
                    }
                }
            }
        }
        Ok(Ok(synced))
    }

    /// Hands on the entries of one XREAD reply.
    async fn entries(&mut self, r: &Value) -> Result<(), Stopping> {
        for s in link::items(r) {
            for entry in link::items(s).get(1).map(link::items).unwrap_or_default() {
                let parts = link::items(entry);
                let Some(id) = parts.first().and_then(link::text) else {
                    self.stats.odd("a stream entry without an id");
                    continue;
                };
                self.last_id = Some(id.to_string());
                let fields = parts.get(1).map(link::items).unwrap_or_default();
                let field = |name: &str| {
                    fields
                        .chunks(2)
                        .find(|kv| link::text(&kv[0]) == Some(name))
                        .and_then(|kv| kv.get(1))
                        .and_then(link::text)
                };
                let msg = match (field("op"), field("ban")) {
                    (Some("ban"), Some(v)) => {
                        serde_json::from_str::<SharedBan>(v).ok().map(Inbound::Ban)
                    }
                    (Some("unban"), Some(v)) => serde_json::from_str::<serde_json::Value>(v)
                        .ok()
                        .and_then(|u| {
                            Some(Inbound::Unban {
                                jail: u["jail"].as_str()?.into(),
                                addr: u["addr"].as_str()?.into(),
                                origin: u["origin"].as_str()?.into(),
                            })
                        }),
                    _ => None,
                };
                let Some(msg) = msg else {
                    self.stats.odd(&format!(
                        "entry {id} of {}: not a ban or unban",
                        self.stream()
                    ));
                    continue;
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
                let lag = id
                    .split('-')
                    .next()
                    .and_then(|ms| ms.parse::<i64>().ok())
                    .map(|ms| now_ms() - ms);
                if let (Some(l), Ok(mut g)) = (lag, self.stats.lags.lock()) {
                    if g.len() < 10_000 || g.contains_key(&origin) {
                        g.insert(origin, l);
                    }
                }
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                if self.inbound.send(msg).await.is_err() {
                    return Err(Stopping);
                }
            }
        }
        Ok(())
    }

    /// The stream key cannot be read as a stream: said, and waited out
    /// with backoff on the same connection.
    async fn wrong_stream(&self, why: &str, attempt: &mut u32) {
        let stream = self.stream();
        let msg = format!(
            "{stream} cannot be followed ({why}); bans from other nodes arrive again once it is deleted (redis-cli DEL {stream})"
        );
        if *attempt == 0 || attempt.is_power_of_two() {
            tracing::error!("cluster: {msg}");
        }
        self.stats.reader.set_down(&msg);
        tokio::time::sleep(backoff(*attempt, random())).await;
        *attempt = attempt.saturating_add(1);
    }

    async fn serve(
        &mut self,
        conn: &mut MultiplexedConnection,
        server: &super::HostPort,
    ) -> Result<(), Failure> {
        let stream = self.stream();
        let sentinel = matches!(self.cfg.link.target, super::Target::Sentinel { .. });
        let mut checked = tokio::time::Instant::now();
        // Where to read on from: the last entry seen, or (first time) the
        // stream's end as it is before the keys are read, so nothing that
        // happens while they are read is missed.
        let mut refused = 0u32;
        match self.last_id.clone() {
            None => match self.stream_end(conn).await {
                Ok(id) => self.last_id = Some(id),
                Err(Failure::Refused(e)) => self.wrong_stream(&e, &mut refused).await,
                Err(e) => return Err(e),
            },
            Some(last) => match self.stream_end(conn).await {
                Ok(end) => {
                    if let Some(from) = resume_from(&last, &end) {
                        tracing::warn!(
                            "cluster: {stream} on this server ends at {end}, before the last entry read ({last}): it restarted without it, or another took over; following from {end}"
                        );
                        self.last_id = Some(from);
                    }
                }
                Err(Failure::Refused(e)) => self.wrong_stream(&e, &mut refused).await,
                Err(e) => return Err(e),
            },
        }
        // The current set of bans, on every (re)connection.
        let synced = match self.read_bans(conn).await? {
            Ok(n) => n,
            Err(Stopping) => return Ok(()),
        };
        tracing::info!(
            "cluster: {synced} active ban(s) of other nodes read; following {stream} from {}",
            self.last_id
                .as_deref()
                .unwrap_or("its end, once it is a stream")
        );
        if refused == 0 {
            self.stats.reader.set_up();
        }
        loop {
            if sentinel && checked.elapsed() >= link::MASTER_CHECK {
                checked = tokio::time::Instant::now();
                if let Some(now) = link::master_moved(&self.cfg.link, server).await {
                    return Err(Failure::Link(format!(
                        "the sentinels name {now} as the master now"
                    )));
                }
            }
            let Some(id) = self.last_id.clone() else {
                match self.stream_end(conn).await {
                    Ok(id) => self.last_id = Some(id),
                    Err(Failure::Refused(e)) => self.wrong_stream(&e, &mut refused).await,
                    Err(e) => return Err(e),
                }
                continue;
            };
            let asked = tokio::time::Instant::now();
            let r = link::query(
                conn,
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .arg("BLOCK")
                    .arg(READ_BLOCK_MS)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&id),
            )
            .await;
            match r {
                Ok(v) => {
                    if refused > 0 || !self.stats.reader.is_up() {
                        refused = 0;
                        self.stats.reader.set_up();
                        tracing::info!("cluster: following {stream} again from {id}");
                    }
                    if self.entries(&v).await.is_err() {
                        return Ok(());
                    }
                    // Nothing, at once: not a Redis that blocks as asked
                    // (a proxy in the way?). Never a busy loop.
                    if v == Value::Nil && asked.elapsed() < EMPTY_PAUSE {
                        tokio::time::sleep(EMPTY_PAUSE).await;
                    }
                }
                Err(Failure::Refused(e)) => self.wrong_stream(&e, &mut refused).await,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Task for Reader {
    const NAME: &'static str = "reader";

    async fn session(&mut self) -> Result<(), SessionError> {
        let mut l = link::open(&self.cfg.link, &mut self.next_sentinel).await?;
        self.serve(&mut l.conn, &l.server).await.map_err(|failure| {
            self.lost.notify_one();
            SessionError::Lost {
                server: l.server,
                failure,
            }
        })
    }
}

/// Where to follow the stream from after a reconnection, when not from the
/// last entry read: the server's stream now ends before that entry (it
/// restarted without it, or a replica that had not received it took
/// over). Then from the server's end, so every entry it adds is read
/// whatever its clock says: their ids come after its own end, not
/// necessarily after an id another server's clock made. `None`: go on from
/// `last` (also when either id is not a stream id).
fn resume_from(last: &str, end: &str) -> Option<String> {
    let id = |s: &str| -> Option<(u64, u64)> {
        let (ms, seq) = s.split_once('-')?;
        Some((ms.parse().ok()?, seq.parse().ok()?))
    };
    (id(end)? < id(last)?).then(|| end.to_string())
}

#[cfg(test)]
mod tests {
    use super::resume_from;

    #[test]
    fn a_stream_that_lost_what_was_read_is_followed_from_its_end() {
        // Redis restarted empty: no stream yet.
        assert_eq!(
            resume_from("1795621254659-3", "0-0").as_deref(),
            Some("0-0")
        );
        // A replica that had not received the last entries took over.
        assert_eq!(
            resume_from("1795621254659-3", "1795621254659-1").as_deref(),
            Some("1795621254659-1")
        );
        assert_eq!(
            resume_from("1795621254659-0", "1795621254000-7").as_deref(),
            Some("1795621254000-7")
        );
        // Nothing lost: on from the last entry read.
        assert_eq!(resume_from("1795621254659-3", "1795621254659-3"), None);
        assert_eq!(resume_from("1795621254659-3", "1795621254660-0"), None);
        assert_eq!(resume_from("5-0", "10-0"), None);
        // Not ids: left as they are.
        assert_eq!(resume_from("x", "0-0"), None);
        assert_eq!(resume_from("5-0", "nonsense"), None);
        assert_eq!(resume_from("5-0", "-1-0"), None);
    }
}
