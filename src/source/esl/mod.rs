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
//! the event's arrival (see [`Window::skew_bound_ms`]). A PBX whose clock is
//! off by more is counted at arrival, and said so in the log and in status,
//! instead of leaving the source blind (an hour behind, every event would
//! be older than `findtime`).

pub mod event;
pub mod frame;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

use self::event::{JsonEvent, Signal, classify, content_type};
use self::frame::{Frame, FrameError, Partial, PlainEvent, header, parse_frame, partial, text};
use super::file::rare;
use super::scanner::ScannerList;
use super::{DateStats, Window, span};
use crate::event::{FailureEvent, FailureKind, JailId, Time, escape_text};
use crate::filter::freeswitch::acl_reject;

/// The events sipwarden subscribes to. `CUSTOM` comes last: every word after
/// it is a subclass.
pub const SUBSCRIPTION: &str = "HEARTBEAT CUSTOM sofia::register_failure sofia::register_attempt sofia::pre_register sofia::register sofia::wrong_call_state";

/// A connection without a whole frame for this long is considered dead
/// (FreeSWITCH sends a heartbeat every 20 s).
pub const SILENCE_LIMIT: Duration = Duration::from_secs(65);
/// A frame (header block and `Content-Length` body) must be complete this
/// long after its first byte, or the connection is reopened. FreeSWITCH
/// writes an event of a few KiB at once; 10 s leaves room for a slow link
/// and still bounds a peer that trickles a frame byte by byte.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(10);
/// Time allowed for connect, auth and subscribe.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Counters and state of one ESL connection, shared with status output.
#[derive(Debug, Default)]
pub struct EslStats {
    /// Connected, authenticated and subscribed right now.
    pub connected: AtomicBool,
    /// Events read.
    pub events: AtomicU64,
    /// Failure events passed to the jail.
    pub failures: AtomicU64,
    /// Connections made.
    pub connects: AtomicU64,
    /// Events whose `network-ip` was missing or not an address (not counted).
    pub unreadable: AtomicU64,
    /// Events whose own time was off from their arrival by more than the
    /// bound (counted at arrival).
    pub dates: DateStats,
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

/// A frame's header block and body, copied out of the buffer.
pub type OwnedFrame = (Vec<u8>, Vec<u8>);

/// Accumulates bytes from the socket and yields whole frames.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
}

impl FrameBuffer {
    /// Appends bytes read from the socket.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Calls `f` for every complete frame; keeps a partial one for later.
    /// Returns how many frames were handed out.
    pub fn drain(&mut self, mut f: impl FnMut(Frame<'_>)) -> Result<usize, FrameError> {
        let mut n = 0;
        while let Some((frame, used)) = parse_frame(&self.buf[self.start..])? {
            f(frame);
            self.start += used;
            n += 1;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(n)
    }

    /// What is buffered of a frame begun but not complete, if anything.
    pub fn pending(&self) -> Option<Partial> {
        partial(&self.buf[self.start..])
    }

    /// The next complete frame, owned (for the handshake).
    pub fn next_owned(&mut self) -> Result<Option<OwnedFrame>, FrameError> {
        match parse_frame(&self.buf[self.start..])? {
            Some((f, used)) => {
                let out = (f.headers.to_vec(), f.body.to_vec());
                self.start += used;
                Ok(Some(out))
            }
            None => Ok(None),
        }
    }
}

/// Turns frames into failure events for one jail.
#[derive(Debug, Clone)]
pub struct EventMapper {
    /// The jail the events count in.
    pub jail: JailId,
    /// The jail's `findtime`, which bounds how far an event's own time may
    /// be from its arrival.
    pub window: Arc<Window>,
    /// Attack-tool user agents.
    pub scanners: Arc<ScannerList>,
}

/// What one frame means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// Nothing about an address.
    Nothing,
    /// FreeSWITCH's heartbeat.
    Heartbeat,
    /// A failure (or success) to count.
    Event {
        /// The event, dated at arrival when its own time was off.
        ev: FailureEvent,
        /// Its own time minus its arrival, when off by more than the bound.
        skew_ms: Option<i64>,
    },
    /// An event that should name an address but whose `network-ip` is
    /// missing or not an address; the source logs it (rate-limited).
    Unreadable {
        /// What the event reported.
        kind: FailureKind,
        /// The value, when there was one (attacker-reachable: escape it).
        raw: Option<Box<str>>,
    },
}

impl EventMapper {
    /// Maps one frame; `None` for frames that say nothing about an address.
    /// `heartbeat` is set when the frame was a heartbeat.
    pub fn map(&self, f: &Frame<'_>, now: Time, heartbeat: &mut bool) -> Option<FailureEvent> {
        match self.read(f, now) {
            Mapped::Event { ev, .. } => Some(ev),
            Mapped::Heartbeat => {
                *heartbeat = true;
                None
            }
            Mapped::Nothing | Mapped::Unreadable { .. } => None,
        }
    }

    /// What one frame means, including events that could not be counted.
    pub fn read(&self, f: &Frame<'_>, now: Time) -> Mapped {
        let ct = content_type(f.headers);
        let signal = match &*ct {
            "text/event-plain" => classify(&event::PlainPick::from_body(f.body), &self.scanners),
            "text/event-json" => {
                JsonEvent::parse(f.body).and_then(|e| classify(&e, &self.scanners))
            }
            "log/data" => {
                // Profile ACL rejections fire no event: read them from the log.
                let msg = f.body.trim_ascii();
                let Some(addr) = acl_reject(msg).filter(|a| !crate::net::never_a_source(*a)) else {
                    return Mapped::Nothing;
                };
                return Mapped::Event {
                    ev: FailureEvent {
                        time: now,
                        jail: self.jail,
                        addr,
                        kind: FailureKind::AclReject,
                        user: None,
                        scanner: false,
                    },
                    skew_ms: None,
                };
            }
            _ => None,
        };
        let Some(signal) = signal else {
            return Mapped::Nothing;
        };
        match signal {
            Signal::Heartbeat => Mapped::Heartbeat,
            Signal::Unreadable { kind, raw } => Mapped::Unreadable { kind, raw },
            // A forged or misread address: counting it could only ban
            // nobody (or, for `0.0.0.0`, look like everybody).
            Signal::Address { addr, .. } if crate::net::never_a_source(addr) => Mapped::Nothing,
            Signal::Address {
                kind,
                addr,
                time,
                user,
                scanner,
            } => {
                // A live event happened now: its own time is kept only
                // while it agrees with that.
                let (time, skew_ms) = match time {
                    Some(t) if t.0.abs_diff(now.0) > self.window.skew_bound_ms().unsigned_abs() => {
                        (now, Some(t.0.saturating_sub(now.0)))
                    }
                    Some(t) => (t, None),
                    None => (now, None),
                };
                Mapped::Event {
                    ev: FailureEvent {
                        time,
                        jail: self.jail,
                        addr,
                        kind,
                        user,
                        scanner,
                    },
                    skew_ms,
                }
            }
        }
    }
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
        stream
            .write_all(format!("event {format} {SUBSCRIPTION}\n\n").as_bytes())
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
        loop {
            // Frames may already be buffered (events right after the
            // subscription reply): handle them before reading more.
            let now = Time::now();
            let mut batch = Vec::new();
            let mut closed = None;
            let mut unreadable = Vec::new();
            let mut skews = Vec::new();
            let before = frames;
            let r = fb.drain(|f| {
                frames += 1;
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
            self.note_unreadable(&peer, &unreadable);
            self.note_skewed(&peer, &skews);
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
            let n = match tokio::time::timeout_at(deadline, stream.read(&mut rbuf)).await {
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

    /// Logs events that could not be counted, rarely (the 1st, 10th,
    /// 100th...): their text is FreeSWITCH's copy of what a packet said.
    fn note_unreadable(&self, peer: &str, seen: &[(FailureKind, Option<Box<str>>)]) {
        let Some((kind, raw)) = seen.first() else {
            return;
        };
        let added = seen.len() as u64;
        let total = self.stats.unreadable.fetch_add(added, Ordering::Relaxed) + added;
        if rare(total, added) {
            tracing::warn!(
                "event socket {peer}: {}; not counted ({total} such event(s) so far)",
                unreadable_text(*kind, raw.as_deref())
            );
        }
    }

    /// Notes events counted at arrival because their own time was off,
    /// and says so rarely (the 1st, 10th, 100th...), naming the peer and
    /// the offset.
    fn note_skewed(&self, peer: &str, skews: &[i64]) {
        for &off in skews {
            let total = self.stats.dates.note_skewed(off);
            if rare(total, 1) {
                tracing::warn!(
                    "event socket {peer}: an event is dated {} {} this host's clock (Event-Date-Timestamp); counted at its arrival instead ({total} such event(s) so far); check the clocks (NTP) of both hosts",
                    span(off),
                    if off < 0 { "behind" } else { "ahead of" }
                );
            }
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

/// Says what was wrong with an event's address, its text escaped.
fn unreadable_text(kind: FailureKind, raw: Option<&str>) -> String {
    match raw {
        Some(r) => format!(
            "a {} event whose network-ip \"{}\" is not an address",
            kind.as_str(),
            escape_text(r, 64)
        ),
        None => format!("a {} event without network-ip", kind.as_str()),
    }
}

/// The fuzz target's body, also replayed by `cargo test` over the fuzz
/// corpus: feeds arbitrary bytes through the framing, both event formats and
/// the mapping, split at an arbitrary point. Must never panic.
pub fn fuzz_frames(data: &[u8]) {
    let mapper = EventMapper {
        jail: JailId(0),
        window: Window::new(crate::duration::Duration(600)),
        scanners: Arc::new(ScannerList::new(super::scanner::DEFAULT_SCANNERS)),
    };
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut fb = FrameBuffer::default();
    let mut hb = false;
    for part in [&data[..split], &data[split..]] {
        fb.extend(part);
        let r = fb.drain(|f| {
            if let Some(ev) = mapper.map(&f, Time(0), &mut hb) {
                // The address must have come from a network-ip header, not
                // from anywhere else: it always parses back.
                assert!(ev.addr.to_string().parse::<std::net::IpAddr>().is_ok());
            }
            let _ = PlainEvent::parse(f.body).get("user-agent");
        });
        if r.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(name: &str) -> Option<Vec<u8>> {
        std::fs::read(format!(
            "{}/../shared/corpus/freeswitch-1.10.12/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .ok()
    }

    fn mapper() -> EventMapper {
        EventMapper {
            jail: JailId(0),
            window: Window::new(crate::duration::Duration(600)),
            scanners: Arc::new(ScannerList::new(super::super::scanner::DEFAULT_SCANNERS)),
        }
    }

    /// Half-way through the corpus's events (they span 74 s): every one is
    /// within a minute of it and keeps its own time.
    const CORPUS_NOW: Time = Time(1_795_621_291_000);

    /// Feeds `stream` in pieces of `step` bytes; returns the events.
    fn replay(stream: &[u8], step: usize) -> (Vec<FailureEvent>, usize) {
        let m = mapper();
        let mut fb = FrameBuffer::default();
        let mut out = Vec::new();
        let mut frames = 0;
        let mut hb = false;
        for chunk in stream.chunks(step.max(1)) {
            fb.extend(chunk);
            frames += fb
                .drain(|f| {
                    if let Some(e) = m.map(&f, CORPUS_NOW, &mut hb) {
                        out.push(e);
                    }
                })
                .unwrap();
        }
        (out, frames)
    }

    fn check_corpus_counts(evs: &[FailureEvent]) {
        let n = |k: FailureKind| evs.iter().filter(|e| e.kind == k).count();
        assert_eq!(n(FailureKind::RegisterAuth), 11);
        assert_eq!(n(FailureKind::InviteAuth), 2);
        assert_eq!(n(FailureKind::Registered), 2);
        assert_eq!(n(FailureKind::WrongCallState), 3);
        assert_eq!(
            evs.len(),
            18,
            "pre_register and register_attempt are not signals"
        );
        assert!(evs.iter().all(|e| e.addr.to_string() == "10.77.0.2"));
        // Their own times, all within a minute of CORPUS_NOW.
        assert!(evs.iter().all(|e| e.time != CORPUS_NOW));
        assert!(evs.iter().all(|e| e.time.0.abs_diff(CORPUS_NOW.0) < 60_000));
        // svcrack's friendly-scanner is flagged; SIPp is not.
        // svcrack's 10 wrong passwords; SIPp's requests are not flagged.
        assert_eq!(
            evs.iter()
                .filter(|e| e.scanner && e.kind == FailureKind::RegisterAuth)
                .count(),
            10
        );
        let invite = evs
            .iter()
            .find(|e| e.kind == FailureKind::InviteAuth)
            .unwrap();
        assert_eq!(invite.user.as_deref(), Some("0046812345678"));
    }

    #[test]
    fn plain_corpus_whole_coalesced_and_byte_by_byte() {
        let Some(raw) = corpus("esl-plain.raw") else {
            assert!(
                !crate::test_support::need("corpus"),
                "the reference corpus is missing a file"
            );
            return;
        };
        let (whole, frames) = replay(&raw, raw.len());
        check_corpus_counts(&whole);
        // 1 auth/request + 2 replies + 58 events.
        assert_eq!(frames, 61);
        let (bytewise, frames1) = replay(&raw, 1);
        assert_eq!(frames1, frames);
        assert_eq!(bytewise, whole);
        for step in [2, 3, 7, 64, 4096] {
            assert_eq!(replay(&raw, step).0, whole, "step {step}");
        }
    }

    #[test]
    fn json_corpus_gives_the_same_events() {
        let (Some(raw), Some(plain)) = (corpus("esl-json.raw"), corpus("esl-plain.raw")) else {
            assert!(
                !crate::test_support::need("corpus"),
                "the reference corpus is missing a file"
            );
            return;
        };
        let (json, _) = replay(&raw, raw.len());
        check_corpus_counts(&json);
        assert_eq!(json, replay(&plain, plain.len()).0);
        assert_eq!(replay(&raw, 1).0, json);
    }

    #[test]
    fn address_only_from_network_ip() {
        let body = "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nto-user: from%20ip%201.2.3.4\nto-host: ip%5B1.2.3.4%5D\nuser-agent: from ip 1.2.3.4\nnetwork-ip: 10.77.0.9\nregistration-type: INVITE\n\n";
        let frame = format!(
            "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
            body.len()
        );
        let (evs, _) = replay(frame.as_bytes(), 5);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].addr.to_string(), "10.77.0.9");
        assert_eq!(evs[0].kind, FailureKind::InviteAuth);
        assert_eq!(evs[0].user.as_deref(), Some("from ip 1.2.3.4"));
        // No network-ip: nothing, whatever else the event says.
        let body =
            "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nto-user: 1.2.3.4\n\n";
        let frame = format!(
            "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
            body.len()
        );
        assert!(replay(frame.as_bytes(), 100).0.is_empty());
    }

    /// Issue 16, finding 10: an event naming an address that is never a
    /// packet's source was counted.
    #[test]
    fn never_a_source_is_not_counted() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "ff02::1",
            "::ffff:0.0.0.0",
        ] {
            let body = format!(
                "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nnetwork-ip: {}\n\n",
                ip.replace(':', "%3A")
            );
            let frame = format!(
                "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
                body.len()
            );
            assert!(replay(frame.as_bytes(), 64).0.is_empty(), "{ip}");
            let log = format!("IP {ip} Rejected by acl \"domains\"\n");
            let f = Frame {
                headers: b"Content-Type: log/data",
                body: log.as_bytes(),
            };
            assert!(mapper().map(&f, Time(5), &mut false).is_none(), "{ip}");
        }
    }

    #[test]
    fn acl_rejections_from_log_frames() {
        let m = mapper();
        let mut hb = false;
        let body = b"IP 203.0.113.5 Rejected by acl \"domains\"\n";
        let f = Frame {
            headers: b"Content-Type: log/data\nContent-Length: 41",
            body,
        };
        assert_eq!(
            m.map(&f, Time(5), &mut hb).unwrap().kind,
            FailureKind::AclReject
        );
        let f = Frame {
            headers: b"Content-Type: log/data",
            body: b"IP 203.0.113.5 Rejected by acl \"domains\". Falling back to Digest auth.\n",
        };
        assert!(m.map(&f, Time(5), &mut hb).is_none());
    }

    #[test]
    fn heartbeat_is_noted() {
        let m = mapper();
        let mut hb = false;
        let f = Frame {
            headers: b"Content-Type: text/event-plain",
            body: b"Event-Name: HEARTBEAT\nUp-Time: 0%20years\n\n",
        };
        assert!(m.map(&f, Time(5), &mut hb).is_none());
        assert!(hb);
    }

    /// A plain `register_failure` frame with `network-ip` as given.
    fn register_failure(network_ip: &str) -> String {
        let body = format!(
            "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nnetwork-ip: {network_ip}\nregistration-type: REGISTER\n\n"
        );
        format!(
            "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
            body.len()
        )
    }

    /// Issue 16, finding 11: FreeSWITCH percent-encodes plain values, so a
    /// link-local source arrives as `fe80%3A%3A1%25eth0`; the zone is the
    /// interface, the kernel sees `fe80::1` as the source.
    #[test]
    fn zone_id_is_removed_before_counting() {
        let want: std::net::IpAddr = "fe80::1".parse().unwrap();
        for raw in [
            "fe80%3A%3A1%25eth0",
            "fe80::1%25eth0",
            "fe80%3A%3A1%252",
            "fe80::1%25vlan.100",
        ] {
            let (evs, _) = replay(register_failure(raw).as_bytes(), 7);
            assert_eq!(
                evs.iter().map(|e| e.addr).collect::<Vec<_>>(),
                vec![want],
                "{raw}"
            );
        }
        let body = r#"{"Event-Name":"CUSTOM","Event-Subclass":"sofia::register_failure","network-ip":"fe80::1%eth0"}"#;
        let frame = format!(
            "Content-Length: {}\nContent-Type: text/event-json\n\n{body}",
            body.len()
        );
        let (evs, _) = replay(frame.as_bytes(), 3);
        assert_eq!(evs.iter().map(|e| e.addr).collect::<Vec<_>>(), vec![want]);
        // A zone on an IPv4 address, or a zone that is not an interface
        // name, is not an address.
        for raw in [
            "10.0.0.1%25eth0",
            "fe80::1%25",
            "fe80::1%25a/b",
            "fe80::1%25%25",
        ] {
            assert!(
                replay(register_failure(raw).as_bytes(), 100).0.is_empty(),
                "{raw}"
            );
        }
    }

    /// Issue N8: an event whose `Event-Date-Timestamp` was an hour old was
    /// dropped as older than findtime, without a word; one two hours ahead
    /// was counted. A live event happened now: off by more than the bound,
    /// either way, it is counted at arrival and the offset reported.
    #[test]
    fn a_live_event_is_dated_at_arrival_when_the_pbx_clock_is_off() {
        let now = Time(1_800_000_000_000);
        let frame = |t: Time| {
            let body = format!(
                "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nnetwork-ip: 203.0.113.30\nregistration-type: REGISTER\nEvent-Date-Timestamp: {}\n\n",
                t.0 * 1000 + 123
            );
            format!(
                "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
                body.len()
            )
        };
        let read = |m: &EventMapper, t: Time| {
            let text = frame(t);
            let mut fb = FrameBuffer::default();
            fb.extend(text.as_bytes());
            let mut got = Vec::new();
            fb.drain(|f| got.push(m.read(&f, now))).unwrap();
            match got.pop() {
                Some(Mapped::Event { ev, skew_ms }) => (ev.time, skew_ms),
                other => panic!("{other:?}"),
            }
        };
        let m = mapper();
        let hour = 3_600_000;
        assert_eq!(read(&m, Time(now.0 - hour)), (now, Some(-hour)));
        assert_eq!(read(&m, Time(now.0 + 2 * hour)), (now, Some(2 * hour)));
        // Within a minute: its own time (a burst read late stays in order).
        assert_eq!(read(&m, Time(now.0 - 59_000)), (Time(now.0 - 59_000), None));
        assert_eq!(read(&m, Time(now.0 + 2_000)), (Time(now.0 + 2_000), None));
        // A findtime under two minutes narrows the bound to half of it, so
        // a time taken is always inside the window.
        m.window.set(crate::duration::Duration(30));
        assert_eq!(read(&m, Time(now.0 - 20_000)), (now, Some(-20_000)));
        assert_eq!(read(&m, Time(now.0 - 14_000)), (Time(now.0 - 14_000), None));
    }

    /// An address that does not parse is reported (and logged, escaped),
    /// not dropped in silence.
    #[test]
    fn unreadable_network_ip_is_reported() {
        let m = mapper();
        let frame = register_failure("fe80%3A%3Azz%0A%1B%5B31m");
        let mut fb = FrameBuffer::default();
        fb.extend(frame.as_bytes());
        let mut got = Vec::new();
        fb.drain(|f| got.push(m.read(&f, Time(1)))).unwrap();
        let [Mapped::Unreadable { kind, raw }] = &got[..] else {
            panic!("{got:?}");
        };
        assert_eq!(raw.as_deref(), Some("fe80::zz\n\u{1b}[31m"));
        assert_eq!(
            unreadable_text(*kind, raw.as_deref()),
            "a register_auth event whose network-ip \"fe80::zz\\n\\u{1b}[31m\" is not an address"
        );
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

    #[test]
    fn fuzz_corpus_and_past_crashes_replay_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/esl_frames");
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if let Ok(data) = std::fs::read(e.path()) {
                    fuzz_frames(&data);
                    n += 1;
                }
            }
        }
        for data in [
            &b""[..],
            b"\n\n\n",
            b"Content-Length: 5\n\n",
            b"Content-Length: 3\nContent-Type: text/event-json\n\n[1]",
        ] {
            fuzz_frames(data);
        }
        eprintln!("replayed {n} fuzz inputs");
    }
}
