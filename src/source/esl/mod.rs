//! The FreeSWITCH Event Socket source: an inbound ESL client, written by
//! hand over tokio.
//!
//! It connects (FreeSWITCH listens on 127.0.0.1:8021 with password `ClueCon`
//! out of the box), answers `auth/request`, subscribes to the Sofia events
//! that carry registration and call-authentication outcomes plus
//! `HEARTBEAT`, and turns them into failure events. A lost connection is
//! retried with exponential backoff and jitter; a connection silent for
//! longer than three heartbeats is treated as dead (half-open) and reopened.

pub mod event;
pub mod frame;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Sender;

use self::event::{JsonEvent, Signal, classify, content_type};
use self::frame::{Frame, FrameError, PlainEvent, header, parse_frame, text};
use super::scanner::ScannerList;
use crate::event::{FailureEvent, FailureKind, JailId, Time};
use crate::filter::freeswitch::acl_reject;

/// The events sipwarden subscribes to. `CUSTOM` comes last: every word after
/// it is a subclass.
pub const SUBSCRIPTION: &str = "HEARTBEAT CUSTOM sofia::register_failure sofia::register_attempt sofia::pre_register sofia::register sofia::wrong_call_state";

/// A connection silent this long is considered dead (FreeSWITCH sends a
/// heartbeat every 20 s).
const SILENCE_LIMIT: Duration = Duration::from_secs(65);
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
    /// Weight of an INVITE authentication failure (`invite_weight`).
    pub invite_weight: u32,
    /// Attack-tool user agents.
    pub scanners: Arc<ScannerList>,
}

impl EventMapper {
    /// Maps one frame; `None` for frames that say nothing about an address.
    /// `heartbeat` is set when the frame was a heartbeat.
    pub fn map(&self, f: &Frame<'_>, now: Time, heartbeat: &mut bool) -> Option<FailureEvent> {
        let ct = content_type(f.headers);
        let signal = match &*ct {
            "text/event-plain" => classify(&event::PlainPick::from_body(f.body), &self.scanners),
            "text/event-json" => classify(&JsonEvent::parse(f.body)?, &self.scanners),
            "log/data" => {
                // Profile ACL rejections fire no event: read them from the log.
                let msg = f.body.trim_ascii();
                let addr = acl_reject(msg)?;
                return Some(FailureEvent {
                    time: now,
                    jail: self.jail,
                    addr,
                    kind: FailureKind::AclReject,
                    weight: 1,
                    user: None,
                    scanner: false,
                });
            }
            _ => None,
        }?;
        match signal {
            Signal::Heartbeat => {
                *heartbeat = true;
                None
            }
            Signal::Address {
                kind,
                addr,
                time,
                user,
                scanner,
            } => Some(FailureEvent {
                time: time.unwrap_or(now),
                jail: self.jail,
                addr,
                kind,
                weight: if kind == FailureKind::InviteAuth {
                    self.invite_weight.max(1)
                } else {
                    1
                },
                user,
                scanner,
            }),
        }
    }
}

/// One FreeSWITCH, followed for a jail.
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
        loop {
            // Frames may already be buffered (events right after the
            // subscription reply): handle them before reading more.
            let now = Time::now();
            let mut batch = Vec::new();
            let mut closed = None;
            let mut hb = false;
            let r = fb.drain(|f| {
                frames += 1;
                if content_type(f.headers) == "text/disconnect-notice" {
                    closed = Some(text(f.body).trim().chars().take(200).collect::<String>());
                    return;
                }
                self.stats.events.fetch_add(1, Ordering::Relaxed);
                if let Some(ev) = self.mapper.map(&f, now, &mut hb) {
                    batch.push(ev);
                }
            });
            if let Err(source) = r {
                return Err(EslError::Frame {
                    peer,
                    frames,
                    source,
                });
            }
            if !batch.is_empty() {
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
            let n = match tokio::time::timeout(SILENCE_LIMIT, stream.read(&mut rbuf)).await {
                Err(_) => {
                    return Err(EslError::Timeout {
                        peer,
                        step: "a heartbeat (half-open connection)",
                        secs: SILENCE_LIMIT.as_secs(),
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

/// The fuzz target's body, also replayed by `cargo test` over the fuzz
/// corpus: feeds arbitrary bytes through the framing, both event formats and
/// the mapping, split at an arbitrary point. Must never panic.
pub fn fuzz_frames(data: &[u8]) {
    let mapper = EventMapper {
        jail: JailId(0),
        invite_weight: 2,
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
            invite_weight: 1,
            scanners: Arc::new(ScannerList::new(super::super::scanner::DEFAULT_SCANNERS)),
        }
    }

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
                    if let Some(e) = m.map(&f, Time(1), &mut hb) {
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
        assert!(evs.iter().all(|e| e.time.0 > 1_795_600_000_000));
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
