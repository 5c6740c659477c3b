//! The FreeSWITCH Event Socket source: an inbound ESL client, written by
//! hand over tokio.
//!
//! It connects (FreeSWITCH listens on 127.0.0.1:8021 with password `ClueCon`
//! out of the box), answers `auth/request`, subscribes to the Sofia events
//! that carry registration and call-authentication outcomes plus
//! `HEARTBEAT`, and turns them into failure events. A lost connection is
//! retried with exponential backoff and jitter. A connection is reopened
//! when no whole frame arrived for longer than three heartbeats (half-open),
//! or when a frame is not complete [`FRAME_DEADLINE`] after its first byte:
//! bytes alone are no sign of life, or a peer trickling one a second would
//! hold the source for ever.
//!
//! An event is a failure that happened now: FreeSWITCH sends only what
//! happens after the subscription (nothing is replayed on reconnection), so
//! its `Event-Date-Timestamp` is taken only when it is within a minute of
//! the event's arrival (see [`Window::skew_bound_ms`](crate::source::Window::skew_bound_ms)). A PBX whose clock is
//! off by more is counted at arrival, and said so in the log and in status,
//! instead of leaving the source blind (an hour behind, every event would
//! be older than `findtime`).
//!
//! This file is the connection: handshake, the read loop and its timers,
//! reconnection. Framing is `frame.rs` (with the buffer of a connection),
//! what an event's headers say `event.rs`, what a frame means for a jail
//! `mapper.rs`, the counters status shows `stats.rs`.

pub mod calls;
pub mod event;
pub mod frame;
mod lines;
mod mapper;
mod stats;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

use self::event::content_type;
pub use self::frame::{FrameBuffer, OwnedFrame};
use self::frame::{FrameError, Partial, header, text};
pub use self::mapper::{EventMapper, Mapped, fuzz_frames};
pub use self::stats::EslStats;
use crate::event::{FailureEvent, Time};

/// The events sipwarden subscribes to. `CUSTOM` comes last: every word after
/// it is a subclass.
pub const SUBSCRIPTION: &str = "HEARTBEAT CUSTOM sofia::register_failure sofia::register_attempt sofia::pre_register sofia::register sofia::wrong_call_state";

/// Added before `CUSTOM` when a connection has fraud rules: the calls, and
/// the answers to `bgapi uuid_kill`.
pub const CALL_EVENTS: &str =
    "CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE BACKGROUND_JOB";

/// How often a connection with fraud rules re-reads its ledger (live
/// calls' minutes grow without events).
pub const FRAUD_TICK: Duration = Duration::from_secs(1);

/// A connection without a whole frame for this long is considered dead
/// (FreeSWITCH sends a heartbeat every 20 s).
pub const SILENCE_LIMIT: Duration = Duration::from_secs(65);
/// A frame (header block and `Content-Length` body) must be complete this
/// long after its first byte, or the connection is reopened. FreeSWITCH
/// writes an event of a few KiB at once; 10 s leaves room for a slow link
/// and still bounds a peer that trickles a frame byte by byte.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(10);
/// Time allowed for connect, auth and subscribe, and for one write of
/// `uuid_kill` commands.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// What a write of `uuid_kill` commands that FreeSWITCH does not read in
/// time is waiting for (within [`HANDSHAKE_TIMEOUT`]).
const KILLS_UNREAD: &str = "its reading of the uuid_kill commands";
/// Backoff bounds between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Backoff after a refused password or ACL.
const BACKOFF_REFUSED: Duration = Duration::from_secs(2);

/// Event format asked of FreeSWITCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EslFormat {
    /// `event plain` (the default; parsed without allocation).
    Plain,
    /// `event json`.
    Json,
}

/// One FreeSWITCH to listen to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EslPeer {
    /// Host name or address.
    pub host: String,
    /// Event Socket port.
    pub port: u16,
    /// Event Socket password (never logged).
    pub password: String,
    /// Event format.
    pub format: EslFormat,
    /// Also follow FreeSWITCH's log over the socket for profile ACL
    /// rejections, which fire no event.
    pub log_acl: bool,
}

impl EslPeer {
    /// `host:port`, for logs and status.
    pub fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum EslError {
    /// Network trouble.
    #[error("{peer}: {source}")]
    Io {
        /// The peer.
        peer: String,
        /// The error.
        source: std::io::Error,
    },
    /// A step took too long.
    #[error("{peer}: no answer to {step} within {secs} s")]
    Timeout {
        /// The peer.
        peer: String,
        /// What was awaited.
        step: &'static str,
        /// How long.
        secs: u64,
    },
    /// The password was refused.
    #[error(
        "{peer}: password refused ({reply}); set the jail's esl password to the one in event_socket.conf.xml"
    )]
    Auth {
        /// The peer.
        peer: String,
        /// What FreeSWITCH said.
        reply: String,
    },
    /// FreeSWITCH's ACL refused this client.
    #[error(
        "{peer}: connection refused by FreeSWITCH's event socket ACL (text/rude-rejection); allow this host in event_socket.conf.xml (apply-inbound-acl)"
    )]
    Rude {
        /// The peer.
        peer: String,
    },
    /// A frame was begun and not completed in time.
    #[error(
        "{peer}: a frame not complete {secs} s after its first byte ({pending}; {frames} frame(s) before)"
    )]
    SlowFrame {
        /// The peer.
        peer: String,
        /// What had arrived of the frame.
        pending: Partial,
        /// The bound, in seconds.
        secs: u64,
        /// Frames read before.
        frames: u64,
    },
    /// The stream is not Event Socket framing.
    #[error("{peer}: bad frame after {frames} frame(s): {source}")]
    Frame {
        /// The peer.
        peer: String,
        /// Frames read before.
        frames: u64,
        /// What was wrong.
        source: FrameError,
    },
    /// A command was answered with an error.
    #[error("{peer}: {command} refused: {reply}")]
    Refused {
        /// The peer.
        peer: String,
        /// The command.
        command: &'static str,
        /// The reply.
        reply: String,
    },
    /// FreeSWITCH closed the connection (restart, shutdown).
    #[error("{peer}: disconnected by FreeSWITCH ({why})")]
    Closed {
        /// The peer.
        peer: String,
        /// Disconnect notice or end of stream.
        why: String,
    },
    /// The daemon is no longer listening.
    #[error("the daemon stopped")]
    Stopped,
}

/// One FreeSWITCH, followed for a jail.
#[derive(Clone)]
pub struct EslSource {
    /// Whom to connect to.
    pub peer: EslPeer,
    /// How frames become events.
    pub mapper: EventMapper,
    /// Where batches of events go.
    pub tx: Sender<Vec<FailureEvent>>,
    /// State and counters.
    pub stats: Arc<EslStats>,
    /// The fraud watch, when rules watch this connection.
    pub calls: Option<Arc<calls::CallWatch>>,
}

fn jitter(d: Duration) -> Duration {
    // Cheap jitter without a RNG dependency: the clock's nanoseconds.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let frac = f64::from(n % 1000) / 1000.0; // 0..1
    d.mul_f64(0.75 + frac / 2.0)
}

impl EslSource {
    /// Connects and reconnects for ever (the daemon aborts the task to stop).
    pub async fn run(self) {
        let label = self.peer.label();
        let mut backoff = BACKOFF_MIN;
        let mut last_error = String::new();
        loop {
            let connects = self.stats.connects.load(Ordering::Relaxed);
            let r = self.session().await;
            self.stats.connected.store(false, Ordering::Relaxed);
            // A session that got through the handshake resets the backoff:
            // after a FreeSWITCH restart, reconnect at once.
            if self.stats.connects.load(Ordering::Relaxed) != connects {
                backoff = BACKOFF_MIN;
                last_error.clear();
            }
            match r {
                Err(EslError::Stopped) => return,
                Err(e) => {
                    let msg = e.to_string();
                    // Repeated identical errors (FreeSWITCH down for a while)
                    // are logged once.
                    if msg != last_error {
                        tracing::warn!("event socket {msg}; retrying");
                        last_error = msg;
                    }
                    // A refusal needs an operator; do not hammer meanwhile.
                    if matches!(e, EslError::Auth { .. } | EslError::Rude { .. }) {
                        backoff = backoff.max(BACKOFF_REFUSED);
                    }
                }
                Ok(()) => {}
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tracing::debug!("event socket {label}: reconnecting");
        }
    }

    async fn session(&self) -> Result<(), EslError> {
        let peer = self.peer.label();
        let io = |source| EslError::Io {
            peer: peer.clone(),
            source,
        };
        let timeout = |step| EslError::Timeout {
            peer: peer.clone(),
            step,
            secs: HANDSHAKE_TIMEOUT.as_secs(),
        };
        let mut stream = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TcpStream::connect((self.peer.host.as_str(), self.peer.port)),
        )
        .await
        .map_err(|_| timeout("connect"))?
        .map_err(io)?;
        let _ = stream.set_nodelay(true);
        let mut fb = FrameBuffer::default();
        let mut rbuf = vec![0u8; 256 * 1024];

        let (h, _) = self
            .read_frame(&mut stream, &mut fb, &mut rbuf, "auth/request")
            .await?;
        match &*content_type(&h) {
            "auth/request" => {}
            "text/rude-rejection" => return Err(EslError::Rude { peer }),
            other => {
                return Err(EslError::Refused {
                    peer,
                    command: "connect",
                    reply: format!("unexpected {other:?} instead of auth/request"),
                });
            }
        }
        stream
            .write_all(format!("auth {}\n\n", self.peer.password).as_bytes())
            .await
            .map_err(io)?;
        let reply = self.reply(&mut stream, &mut fb, &mut rbuf, "auth").await?;
        if !reply.starts_with("+OK") {
            return Err(EslError::Auth { peer, reply });
        }
        let format = match self.peer.format {
            EslFormat::Plain => "plain",
            EslFormat::Json => "json",
        };
        // Every word after CUSTOM is a subclass: call events go before it.
        let calls = if self.calls.is_some() {
            format!("{CALL_EVENTS} ")
        } else {
            String::new()
        };
        stream
            .write_all(format!("event {format} {calls}{SUBSCRIPTION}\n\n").as_bytes())
            .await
            .map_err(io)?;
        let reply = self.reply(&mut stream, &mut fb, &mut rbuf, "event").await?;
        if !reply.starts_with("+OK") {
            return Err(EslError::Refused {
                peer,
                command: "event",
                reply,
            });
        }
        if self.peer.log_acl {
            stream.write_all(b"log 4\n\n").await.map_err(io)?;
            let reply = self.reply(&mut stream, &mut fb, &mut rbuf, "log").await?;
            if !reply.starts_with("+OK") {
                tracing::warn!(
                    "event socket {peer}: `log 4` refused ({reply}); ACL rejections will not be seen"
                );
            }
        }
        self.stats.connected.store(true, Ordering::Relaxed);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!("event socket {peer}: connected and subscribed ({format})");

        let mut frames = 0u64;
        // The silence clock restarts with each whole frame; a begun frame's
        // clock starts with the read that brought its first byte.
        let mut last_frame = Instant::now();
        let mut begun: Option<Instant> = None;
        let mut kills = calls::Kills::default();
        let mut next_tick = Instant::now() + FRAUD_TICK;
        if let Some(c) = &self.calls {
            let commands = c.carry_out(c.resume(Time::now()), &peer, &mut kills);
            tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(&commands))
                .await
                .map_err(|_| timeout(KILLS_UNREAD))?
                .map_err(io)?;
        }
        loop {
            // Frames may already be buffered (events right after the
            // subscription reply): handle them before reading more.
            let now = Time::now();
            let mut batch = Vec::new();
            let mut closed = None;
            let mut unreadable = Vec::new();
            let mut skews = Vec::new();
            let before = frames;
            let mut orders = Vec::new();
            let r = fb.drain(|f| {
                frames += 1;
                if let Some(c) = &self.calls {
                    c.frame(&f, now, &mut kills, &mut orders);
                }
                if content_type(f.headers) == "text/disconnect-notice" {
                    closed = Some(text(f.body).trim().chars().take(200).collect::<String>());
                    return;
                }
                self.stats.events.fetch_add(1, Ordering::Relaxed);
                match self.mapper.read(&f, now) {
                    Mapped::Event { ev, skew_ms } => {
                        skews.extend(skew_ms);
                        batch.push(ev);
                    }
                    Mapped::Unreadable { kind, raw } => unreadable.push((kind, raw)),
                    Mapped::Heartbeat | Mapped::Nothing => {}
                }
            });
            if let Err(source) = r {
                return Err(EslError::Frame {
                    peer,
                    frames,
                    source,
                });
            }
            if let Some(c) = &self.calls {
                if Instant::now() >= next_tick {
                    next_tick = Instant::now() + FRAUD_TICK;
                    orders.extend(c.tick(now));
                }
                let commands = c.carry_out(orders, &peer, &mut kills);
                if !commands.is_empty() {
                    // A FreeSWITCH that reads nothing must not hold this
                    // task in a write: no event would be read meanwhile.
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(&commands))
                        .await
                        .map_err(|_| timeout(KILLS_UNREAD))?
                        .map_err(io)?;
                }
            }
            self.stats.note_unreadable(&peer, &unreadable);
            self.stats.note_skewed(&peer, &skews);
            if !batch.is_empty() {
                crate::supervise::inject_fault("esl");
                self.stats
                    .failures
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if self.tx.send(batch).await.is_err() {
                    return Err(EslError::Stopped);
                }
            }
            if let Some(why) = closed {
                return Err(EslError::Closed {
                    peer,
                    why: if why.is_empty() {
                        "disconnect notice".into()
                    } else {
                        why
                    },
                });
            }
            // Taken after the hand-off above, so back-pressure from the
            // jails never counts against FreeSWITCH.
            let t = Instant::now();
            let whole = frames > before;
            if whole {
                last_frame = t;
            }
            begun = match fb.pending() {
                None => None,
                // A frame completed in the last read: the one begun after
                // it began in that read too.
                Some(_) if whole => Some(t),
                Some(_) => begun.or(Some(t)),
            };
            let silence_end = last_frame + SILENCE_LIMIT;
            let frame_end = begun.map(|b| b + FRAME_DEADLINE);
            let deadline = frame_end.map_or(silence_end, |f| f.min(silence_end));
            // With fraud rules the loop also wakes for the ledger's tick.
            let wake = match &self.calls {
                Some(_) => deadline.min(next_tick),
                None => deadline,
            };
            let n = match tokio::time::timeout_at(wake, stream.read(&mut rbuf)).await {
                Err(_) if wake < deadline => continue,
                Err(_) => {
                    return Err(match (frame_end, fb.pending()) {
                        (Some(end), Some(pending)) if end <= silence_end => EslError::SlowFrame {
                            peer,
                            pending,
                            secs: FRAME_DEADLINE.as_secs(),
                            frames,
                        },
                        _ => EslError::Timeout {
                            peer,
                            step: "a heartbeat or any whole frame (half-open connection)",
                            secs: SILENCE_LIMIT.as_secs(),
                        },
                    });
                }
                Ok(Err(e)) => return Err(io(e)),
                Ok(Ok(0)) => {
                    return Err(EslError::Closed {
                        peer,
                        why: "end of stream".into(),
                    });
                }
                Ok(Ok(n)) => n,
            };
            fb.extend(&rbuf[..n]);
        }
    }

    /// Reads the next frame during the handshake.
    async fn read_frame(
        &self,
        stream: &mut TcpStream,
        fb: &mut FrameBuffer,
        rbuf: &mut [u8],
        step: &'static str,
    ) -> Result<OwnedFrame, EslError> {
        let peer = self.peer.label();
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            match fb.next_owned() {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(source) => {
                    return Err(EslError::Frame {
                        peer,
                        frames: 0,
                        source,
                    });
                }
            }
            let n = tokio::time::timeout_at(deadline, stream.read(rbuf))
                .await
                .map_err(|_| EslError::Timeout {
                    peer: peer.clone(),
                    step,
                    secs: HANDSHAKE_TIMEOUT.as_secs(),
                })?
                .map_err(|source| EslError::Io {
                    peer: peer.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(EslError::Closed {
                    peer,
                    why: format!("end of stream while waiting for {step}"),
                });
            }
            fb.extend(&rbuf[..n]);
        }
    }

    /// Reads the `command/reply` to a command and returns its `Reply-Text`.
    async fn reply(
        &self,
        stream: &mut TcpStream,
        fb: &mut FrameBuffer,
        rbuf: &mut [u8],
        step: &'static str,
    ) -> Result<String, EslError> {
        loop {
            let (h, body) = self.read_frame(stream, fb, rbuf, step).await?;
            match &*content_type(&h) {
                "command/reply" => {
                    return Ok(header(&h, "Reply-Text")
                        .map(|v| text(v).trim().to_string())
                        .unwrap_or_default());
                }
                "text/rude-rejection" => {
                    return Err(EslError::Rude {
                        peer: self.peer.label(),
                    });
                }
                "text/disconnect-notice" => {
                    return Err(EslError::Closed {
                        peer: self.peer.label(),
                        why: text(&body).trim().chars().take(200).collect(),
                    });
                }
                // Events may already flow; anything else before the reply is skipped.
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::JailId;
    use crate::source::Window;
    use crate::source::scanner::{DEFAULT_SCANNERS, ScannerList};

    fn mapper() -> EventMapper {
        EventMapper {
            jail: JailId(0),
            window: Window::new(crate::duration::Duration(600)),
            scanners: Arc::new(ScannerList::new(DEFAULT_SCANNERS)),
        }
    }

    /// Virtual-time helpers for the timer tests: a fake FreeSWITCH on
    /// loopback that answers the handshake, then sends `feed` (pauses and
    /// bytes, cycled, at most `max` pieces) on each connection, and reports
    /// when (in the test's paused clock) each connection was accepted.
    async fn fake_freeswitch(
        feed: Vec<(Duration, Vec<u8>)>,
        max: usize,
    ) -> (
        u16,
        tokio::sync::mpsc::UnboundedReceiver<tokio::time::Instant>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // With paused time the clock jumps to the next timer whenever the
        // runtime idles, even while loopback bytes are in flight; a short
        // ticker keeps each jump small, so the handshake's own timeout is
        // never reached by accident.
        tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        tokio::spawn(async move {
            for _ in 0..10 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let _ = tx.send(tokio::time::Instant::now());
                // Each byte on the wire at once: Nagle would hold it for an
                // ACK that real time delays while virtual time runs ahead.
                let _ = s.set_nodelay(true);
                let feed = feed.clone();
                tokio::spawn(async move {
                    async fn command(s: &mut TcpStream) -> Option<()> {
                        let mut got = Vec::new();
                        let mut b = [0u8; 1];
                        while !got.ends_with(b"\n\n") {
                            if s.read(&mut b).await.ok()? == 0 {
                                return None;
                            }
                            got.push(b[0]);
                        }
                        Some(())
                    }
                    s.write_all(b"Content-Type: auth/request\n\n").await.ok()?;
                    command(&mut s).await?;
                    s.write_all(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
                        .await
                        .ok()?;
                    command(&mut s).await?;
                    s.write_all(b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n")
                        .await
                        .ok()?;
                    for (pause, bytes) in feed.iter().cycle().take(max) {
                        tokio::time::sleep(*pause).await;
                        s.write_all(bytes).await.ok()?;
                    }
                    // Hold the connection open, silent, like a half-open peer.
                    std::future::pending::<()>().await;
                    Some(())
                });
            }
        });
        (port, rx)
    }

    fn source(port: u16) -> (EslSource, tokio::sync::mpsc::Receiver<Vec<FailureEvent>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let src = EslSource {
            peer: EslPeer {
                host: "127.0.0.1".into(),
                port,
                password: "ClueCon".into(),
                format: EslFormat::Plain,
                log_acl: false,
            },
            mapper: mapper(),
            tx,
            stats: Arc::default(),
            calls: None,
        };
        (src, rx)
    }

    /// One byte per second, for `n` bytes of `s`.
    fn one_byte_a_second(s: &[u8]) -> Vec<(Duration, Vec<u8>)> {
        s.iter()
            .map(|&b| (Duration::from_secs(1), vec![b]))
            .collect()
    }

    /// The time between the first two connections, if the client reopened
    /// within `within` of (virtual) time.
    async fn reopened_after(
        feed: Vec<(Duration, Vec<u8>)>,
        max: usize,
        within: Duration,
    ) -> Option<Duration> {
        let (port, mut accepted) = fake_freeswitch(feed, max).await;
        let (src, _events) = source(port);
        let client = tokio::spawn(src.run());
        let first = tokio::time::timeout(Duration::from_secs(30), accepted.recv())
            .await
            .expect("the client connects")
            .expect("the server runs");
        let second = tokio::time::timeout(within, accepted.recv()).await;
        client.abort();
        second.ok().flatten().map(|t| t - first)
    }

    /// Issue 16, finding 11: a frame trickled one byte a second, never
    /// complete, used to restart the 65 s silence timer with every byte, so
    /// the connection was never reopened.
    #[tokio::test(start_paused = true)]
    async fn trickled_frame_is_reopened_within_the_frame_bound() {
        let feed = one_byte_a_second(
            b"Content-Length: 900\nContent-Type: text/event-plain\n\nEvent-Name: HEARTBEAT\n",
        );
        let after = reopened_after(feed, 300, Duration::from_secs(200))
            .await
            .expect("a never-completing frame makes the client reopen");
        assert!(
            after < SILENCE_LIMIT,
            "reopened by the frame bound, not the silence timer: {after:?}"
        );
    }

    /// Bytes that start no frame (empty lines between frames) are not a
    /// sign of life: the silence timer counts whole frames.
    #[tokio::test(start_paused = true)]
    async fn stray_bytes_do_not_keep_a_silent_connection() {
        let after = reopened_after(one_byte_a_second(b"\n"), 300, Duration::from_secs(200))
            .await
            .expect("no whole frame for 65 s makes the client reopen");
        assert!(after >= SILENCE_LIMIT, "{after:?}");
    }

    /// Heartbeats every 20 s, each written slowly but whole within seconds,
    /// keep the connection: the bound is per frame, not per connection.
    #[tokio::test(start_paused = true)]
    async fn slow_whole_heartbeats_keep_the_connection() {
        let body = "Event-Name: HEARTBEAT\nUp-Time: 0%20years\n\n";
        let frame = format!(
            "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
            body.len()
        );
        let mut feed = vec![(Duration::from_secs(20), Vec::new())];
        feed.extend(frame.bytes().map(|b| (Duration::from_millis(50), vec![b])));
        assert_eq!(
            reopened_after(feed, 100_000, Duration::from_secs(300)).await,
            None
        );
    }
}

#[cfg(test)]
mod write_tests {
    use std::sync::Mutex;

    use super::*;
    use crate::event::JailId;
    use crate::fraud::{Actions, FraudRule, Limit, Metric, Prefixes, Threshold, Watch};
    use crate::source::Window;
    use crate::source::scanner::{DEFAULT_SCANNERS, ScannerList};

    /// A FreeSWITCH that stops reading (hung, or its socket wedged) while
    /// a held account keeps calling: every call is a `uuid_kill` to write.
    /// Once its buffers are full the write must give up, so the connection
    /// is reopened as a silent one is. (Before, the client waited in the
    /// write for ever: no event read, no reconnection.)
    #[tokio::test(start_paused = true)]
    async fn a_freeswitch_that_reads_nothing_cannot_hold_the_client() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small window: the client's writes fill it soon.
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(8).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let _ = accepted_tx.send(tokio::time::Instant::now());
                tokio::spawn(async move {
                    async fn command(s: &mut TcpStream) -> Option<()> {
                        let mut got = Vec::new();
                        let mut b = [0u8; 1];
                        while !got.ends_with(b"\n\n") {
                            if s.read(&mut b).await.ok()? == 0 {
                                return None;
                            }
                            got.push(b[0]);
                        }
                        Some(())
                    }
                    s.write_all(b"Content-Type: auth/request\n\n").await.ok()?;
                    command(&mut s).await?;
                    s.write_all(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
                        .await
                        .ok()?;
                    command(&mut s).await?;
                    s.write_all(b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n")
                        .await
                        .ok()?;
                    let body = "Event-Name: CHANNEL_CREATE\nUnique-ID: f4decbab-b940-42da-b61b-9b7852622e57\nCall-Direction: inbound\nvariable_sip_auth_username: 1002\nCaller-Destination-Number: 0044123\nCaller-Network-Addr: 203.0.113.5\n\n";
                    let create = format!(
                        "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
                        body.len()
                    );
                    // Each create is a kill; each blind reply frees its slot.
                    let piece = format!(
                        "{create}Content-Type: command/reply\nReply-Text: +OK Job-UUID: 1\n\n"
                    );
                    for _ in 0..150_000 {
                        s.write_all(piece.as_bytes()).await.ok()?;
                    }
                    std::future::pending::<()>().await;
                    Some(())
                });
            }
        });
        let rule = Arc::new(FraudRule {
            name: "conc".into(),
            jail: None,
            esl: None,
            prefixes: Prefixes::Any,
            hours: None,
            timezone: "UTC".into(),
            limits: vec![Limit {
                metric: Metric::ConcurrentCalls,
                threshold: Threshold {
                    warning: None,
                    critical: Some(1),
                },
            }],
            warning: Actions::default(),
            critical: Actions {
                webhook: false,
                hangup: true,
                ban: false,
            },
            webhook: None,
            bantime: None,
            hold_ms: 3_600_000,
        });
        let (tx, _events) = tokio::sync::mpsc::channel(16);
        let src = EslSource {
            peer: EslPeer {
                host: "127.0.0.1".into(),
                port,
                password: "ClueCon".into(),
                format: EslFormat::Plain,
                log_acl: false,
            },
            mapper: EventMapper {
                jail: JailId(0),
                window: Window::new(crate::duration::Duration(600)),
                scanners: Arc::new(ScannerList::new(DEFAULT_SCANNERS)),
            },
            tx,
            stats: Arc::default(),
            calls: Some(Arc::new(calls::CallWatch {
                watch: Mutex::new(Watch::new(std::slice::from_ref(&rule))),
                rules: vec![rule],
                jail: "fs".into(),
                ban: Arc::new(|_| {}),
                kills: Default::default(),
            })),
        };
        let stats = src.calls.clone();
        let client = tokio::spawn(src.run());
        let first = tokio::time::timeout(Duration::from_secs(30), accepted.recv())
            .await
            .expect("the client connects")
            .expect("the server runs");
        let second = tokio::time::timeout(Duration::from_secs(300), accepted.recv()).await;
        let sent = stats.map_or(0, |c| c.kills.sent.load(Ordering::Relaxed));
        client.abort();
        let after =
            second.ok().flatten().map(|t| t - first).unwrap_or_else(|| {
                panic!("the client never gave up its write ({sent} kills sent)")
            });
        assert!(sent > 100, "{sent} kills sent: the writes were not many");
        assert!(after < Duration::from_secs(300), "{after:?}");
    }
}
