//! The Asterisk Manager Interface source: an AMI client, written by hand
//! over tokio.
//!
//! It connects (Asterisk's manager listens on port 5038 once enabled in
//! manager.conf), reads the banner, logs in asking for security events
//! only (`Events: security`), and turns `InvalidAccountID`,
//! `InvalidPassword`, `ChallengeResponseFailed` and `FailedACL` into
//! failures for their `RemoteAddress`, `SuccessfulAuth` into a success
//! (for `trust_registered`). Asterisk sends no heartbeat, so the client
//! sends `Action: Ping` every [`PING_EVERY`]; a connection without a whole
//! message for [`SILENCE_LIMIT`] (half-open), or with a message begun and
//! not complete [`MESSAGE_DEADLINE`] after its first byte, is reopened. A
//! lost connection, a refused login or a `Shutdown` event is retried with
//! exponential backoff and jitter; why the source is down is shown in
//! status with what to do.
//!
//! Events are counted at their arrival: they are live (Asterisk replays
//! nothing on reconnection), and `EventTV`'s format changed across
//! versions.
//!
//! This file is the connection: the read loop and its timers,
//! reconnection. The handshake (banner, login, `doctor`'s probe) is
//! `login.rs`, framing `frame.rs`, what a message's fields say
//! `event.rs`, what a message means for a jail `mapper.rs`, the counters
//! status shows `stats.rs`.

pub mod event;
pub mod frame;
mod login;
mod mapper;
mod stats;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

use self::frame::{FrameError, MessageBuffer};
use self::login::Connection;
pub use self::login::probe;
pub use self::mapper::{AmiMapper, Mapped, OwnLogin, fuzz_ami};
pub use self::stats::AmiStats;
use crate::event::{FailureEvent, Time, escape_text};

/// How often the client pings Asterisk (it sends nothing on its own while
/// nobody attacks).
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// A connection without a whole message for this long is considered dead:
/// three pings unanswered.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(65);
/// A message must be complete this long after its first byte, or the
/// connection is reopened: bytes trickled one a second are no sign of life.
pub const MESSAGE_DEADLINE: Duration = Duration::from_secs(10);
/// Time allowed for connect, banner and login, and for one write.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff bounds between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Backoff after a refused login: each attempt is an `InvalidPassword`
/// in Asterisk's own security log.
const BACKOFF_REFUSED: Duration = Duration::from_secs(5);
/// Most messages read while waiting for the login's response.
const HANDSHAKE_MESSAGES: usize = 64;
/// The `ActionID` of sipwarden's login and pings.
const LOGIN_ID: &str = "sipwarden-login";
const PING_ID: &str = "sipwarden-ping";

/// One Asterisk to listen to.
#[derive(Clone, PartialEq, Eq)]
pub struct AmiPeer {
    /// Host name or address.
    pub host: String,
    /// Manager port.
    pub port: u16,
    /// The manager.conf user (`[sipwarden]`).
    pub username: String,
    /// Its `secret` (never logged, never shown).
    pub secret: String,
}

impl std::fmt::Debug for AmiPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmiPeer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl AmiPeer {
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
pub enum AmiError {
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
    /// The peer is not an Asterisk manager.
    #[error(
        "{peer}: not an Asterisk manager (its first line was \"{banner}\"); check the jail's ami port against manager.conf's [general] port"
    )]
    NotAmi {
        /// The peer.
        peer: String,
        /// Its first line, escaped.
        banner: String,
    },
    /// The login was refused.
    #[error(
        "{peer}: login as {user:?} refused (Asterisk said \"{message}\"); set the jail's ami username and secret to a manager.conf user with read = security, and let its permit= allow this host"
    )]
    Login {
        /// The peer.
        peer: String,
        /// The username (not the secret).
        user: String,
        /// What Asterisk answered, escaped.
        message: String,
    },
    /// A message was begun and not completed in time.
    #[error(
        "{peer}: a message not complete {secs} s after its first byte ({bytes} byte(s); {messages} message(s) before)"
    )]
    SlowMessage {
        /// The peer.
        peer: String,
        /// Bytes of it that had arrived.
        bytes: usize,
        /// The bound, in seconds.
        secs: u64,
        /// Messages read before.
        messages: u64,
    },
    /// The stream is not AMI framing, or breaks its bounds.
    #[error("{peer}: bad message after {messages} message(s): {source}")]
    Frame {
        /// The peer.
        peer: String,
        /// Messages read before.
        messages: u64,
        /// What was wrong.
        source: FrameError,
    },
    /// Asterisk closed the connection.
    #[error("{peer}: disconnected by Asterisk ({why})")]
    Closed {
        /// The peer.
        peer: String,
        /// What happened.
        why: String,
    },
    /// Asterisk announced it is shutting down.
    #[error("{peer}: Asterisk is shutting down ({detail}); reconnecting when it is back")]
    Shutdown {
        /// The peer.
        peer: String,
        /// `Shutdown` and `Restart`, escaped.
        detail: String,
    },
    /// The daemon is no longer listening.
    #[error("the daemon stopped")]
    Stopped,
}

/// One Asterisk, followed for a jail.
#[derive(Clone)]
pub struct AmiSource {
    /// Whom to connect to.
    pub peer: AmiPeer,
    /// How messages become events (its own login is filled in per
    /// connection).
    pub mapper: AmiMapper,
    /// Where batches of events go.
    pub tx: Sender<Vec<FailureEvent>>,
    /// State and counters.
    pub stats: Arc<AmiStats>,
}

fn jitter(d: Duration) -> Duration {
    // Cheap jitter without a RNG dependency: the clock's nanoseconds.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.75 + f64::from(n % 1000) / 2000.0)
}

impl AmiSource {
    /// Connects and reconnects for ever (the daemon aborts the task to stop).
    pub async fn run(self) {
        let label = self.peer.label();
        let mut backoff = BACKOFF_MIN;
        let mut last_error = String::new();
        loop {
            let connects = self.stats.connects.load(Ordering::Relaxed);
            let r = self.session().await;
            self.stats.connected.store(false, Ordering::Relaxed);
            // A session that got through the login resets the backoff:
            // after an Asterisk restart, reconnect at once.
            if self.stats.connects.load(Ordering::Relaxed) != connects {
                backoff = BACKOFF_MIN;
                last_error.clear();
            }
            match r {
                Err(AmiError::Stopped) => return,
                Err(e) => {
                    let msg = e.to_string();
                    self.stats.set_error(Some(msg.clone()));
                    if msg != last_error {
                        tracing::warn!("manager interface {msg}; retrying");
                        last_error = msg;
                    }
                    if matches!(e, AmiError::Login { .. }) {
                        backoff = backoff.max(BACKOFF_REFUSED);
                    }
                }
                Ok(()) => {}
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tracing::debug!("manager interface {label}: reconnecting");
        }
    }

    async fn session(&self) -> Result<(), AmiError> {
        let Connection {
            stream,
            mb,
            rbuf,
            local,
        } = self.peer.login().await?;
        self.stats.logged_in();
        tracing::info!(
            "manager interface {}: logged in as {:?}, reading security events",
            self.peer.label(),
            self.peer.username
        );
        let mut mapper = self.mapper.clone();
        mapper.own = Some(OwnLogin {
            username: self.peer.username.clone(),
            local,
        });
        self.follow(stream, mb, rbuf, mapper).await
    }

    /// Reads events until the connection ends.
    async fn follow(
        &self,
        mut stream: TcpStream,
        mut mb: MessageBuffer,
        mut rbuf: Vec<u8>,
        mut mapper: AmiMapper,
    ) -> Result<(), AmiError> {
        let peer = self.peer.label();
        let mut messages = 0u64;
        let mut last_message = Instant::now();
        let mut begun: Option<Instant> = None;
        let mut next_ping = Instant::now() + PING_EVERY;
        // Asterisk reports this very login as a security event: not seen
        // by the first ping, the user most likely lacks `read = security`.
        let (mut own_seen, mut own_checked) = (false, false);
        loop {
            let now = Time::now();
            let before = messages;
            let mut batch = Vec::new();
            let mut unreadable = Vec::new();
            let mut after_cut = 0;
            let mut shutdown = None;
            let r = mb.drain(|m| {
                messages += 1;
                match mapper.read(&m, now) {
                    Mapped::Event(ev) => batch.push(ev),
                    Mapped::Unreadable { event, why, raw } => unreadable.push((event, why, raw)),
                    Mapped::AfterCut => after_cut += 1,
                    Mapped::Shutdown(detail) => shutdown = Some(detail),
                    Mapped::OwnLogin => own_seen = true,
                    Mapped::Nothing => {}
                }
            });
            self.stats
                .messages
                .fetch_add(messages - before, Ordering::Relaxed);
            if let Err(source) = r {
                return Err(AmiError::Frame {
                    peer,
                    messages,
                    source,
                });
            }
            self.stats.note_unreadable(&peer, &unreadable);
            self.stats.note_after_cut(&peer, after_cut);
            if !batch.is_empty() {
                crate::supervise::inject_fault("ami");
                self.stats
                    .failures
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if self.tx.send(batch).await.is_err() {
                    return Err(AmiError::Stopped);
                }
            }
            if let Some(detail) = shutdown {
                return Err(AmiError::Shutdown {
                    peer,
                    detail: escape_text(&detail, 80),
                });
            }
            // Taken after the hand-off above, so back-pressure from the
            // jails never counts against Asterisk.
            let t = Instant::now();
            let whole = messages > before;
            if whole {
                last_message = t;
            }
            begun = match mb.pending() {
                None => None,
                // A message completed in the last read: the one begun
                // after it began in that read too.
                Some(_) if whole => Some(t),
                Some(_) => begun.or(Some(t)),
            };
            if t >= next_ping && !std::mem::replace(&mut own_checked, true) && !own_seen {
                self.stats.note_no_security(&peer, &self.peer.username);
            }
            if t >= next_ping {
                let ping = format!("Action: Ping\r\nActionID: {PING_ID}\r\n\r\n");
                self.peer
                    .write(&mut stream, ping.as_bytes(), "a ping")
                    .await?;
                next_ping = t + PING_EVERY;
            }
            let silence_end = last_message + SILENCE_LIMIT;
            let message_end = begun.map(|b| b + MESSAGE_DEADLINE);
            let deadline = [Some(silence_end), message_end, Some(next_ping)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(silence_end);
            match tokio::time::timeout_at(deadline, stream.read(&mut rbuf)).await {
                Err(_) => {
                    let t = Instant::now();
                    if let (Some(end), Some(bytes)) = (message_end, mb.pending())
                        && t >= end
                    {
                        return Err(AmiError::SlowMessage {
                            peer,
                            bytes,
                            secs: MESSAGE_DEADLINE.as_secs(),
                            messages,
                        });
                    }
                    if t >= silence_end {
                        return Err(AmiError::Timeout {
                            peer,
                            step: "a ping (half-open connection)",
                            secs: SILENCE_LIMIT.as_secs(),
                        });
                    }
                    // Time to ping: the top of the loop does.
                }
                Ok(Err(e)) => {
                    return Err(AmiError::Io { peer, source: e });
                }
                Ok(Ok(0)) => {
                    return Err(AmiError::Closed {
                        peer,
                        why: "end of stream".into(),
                    });
                }
                Ok(Ok(n)) => mb.extend(&rbuf[..n]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::event::JailId;

    /// What the fake Asterisk does after the login.
    #[derive(Clone)]
    enum After {
        /// Answer every ping with a pong.
        Pong,
        /// Read and answer nothing (a half-open peer).
        Silent,
        /// Send these pieces, each after its pause, then stay silent.
        Feed(Vec<(Duration, Vec<u8>)>),
    }

    /// A fake Asterisk on loopback (virtual time): banner, login accepted,
    /// then `after`. Reports when each connection was accepted and each
    /// ping received.
    async fn fake_asterisk(
        after: After,
    ) -> (
        u16,
        tokio::sync::mpsc::UnboundedReceiver<Instant>,
        tokio::sync::mpsc::UnboundedReceiver<Instant>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted_tx, accepted) = tokio::sync::mpsc::unbounded_channel();
        let (ping_tx, pings) = tokio::sync::mpsc::unbounded_channel();
        // With paused time the clock jumps to the next timer whenever the
        // runtime idles, even while loopback bytes are in flight; a short
        // ticker keeps each jump small.
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
                let _ = accepted_tx.send(Instant::now());
                let _ = s.set_nodelay(true);
                let after = after.clone();
                let ping_tx = ping_tx.clone();
                tokio::spawn(async move {
                    /// Reads one action; `None` at the end of the stream.
                    async fn action(s: &mut TcpStream) -> Option<String> {
                        let mut got = Vec::new();
                        let mut b = [0u8; 1];
                        while !got.ends_with(b"\r\n\r\n") && got.len() < 4096 {
                            if s.read(&mut b).await.ok()? == 0 {
                                return None;
                            }
                            got.push(b[0]);
                        }
                        Some(String::from_utf8_lossy(&got).into_owned())
                    }
                    s.write_all(b"Asterisk Call Manager/5.0.1\r\n").await.ok()?;
                    action(&mut s).await?;
                    s.write_all(b"Response: Success\r\nActionID: sipwarden-login\r\nMessage: Authentication accepted\r\n\r\n")
                        .await
                        .ok()?;
                    match after {
                        After::Pong => {
                            while let Some(a) = action(&mut s).await {
                                if a.starts_with("Action: Ping") {
                                    let _ = ping_tx.send(Instant::now());
                                    s.write_all(b"Response: Success\r\nActionID: sipwarden-ping\r\nPing: Pong\r\nTimestamp: 1.5\r\n\r\n")
                                        .await
                                        .ok()?;
                                }
                            }
                        }
                        After::Silent => while action(&mut s).await.is_some() {},
                        After::Feed(feed) => {
                            for (pause, bytes) in feed {
                                tokio::time::sleep(pause).await;
                                s.write_all(&bytes).await.ok()?;
                            }
                            std::future::pending::<()>().await;
                        }
                    }
                    Some(())
                });
            }
        });
        (port, accepted, pings)
    }

    fn source(port: u16) -> (AmiSource, tokio::sync::mpsc::Receiver<Vec<FailureEvent>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let src = AmiSource {
            peer: AmiPeer {
                host: "127.0.0.1".into(),
                port,
                username: "sipwarden".into(),
                secret: "s".into(),
            },
            mapper: AmiMapper::new(JailId(0)),
            tx,
            stats: Arc::default(),
        };
        (src, rx)
    }

    /// The time between the first two connections, if the client reopened
    /// within `within` of (virtual) time; and the pings the server saw.
    async fn reopened_after(after: After, within: Duration) -> (Option<Duration>, usize) {
        let (port, mut accepted, mut pings) = fake_asterisk(after).await;
        let (src, _events) = source(port);
        let client = tokio::spawn(src.run());
        let first = tokio::time::timeout(Duration::from_secs(30), accepted.recv())
            .await
            .expect("the client connects")
            .expect("the server runs");
        let second = tokio::time::timeout(within, accepted.recv()).await;
        client.abort();
        let mut n = 0;
        while pings.try_recv().is_ok() {
            n += 1;
        }
        (second.ok().flatten().map(|t| t - first), n)
    }

    /// Asterisk sends nothing while nobody attacks: the client's pings,
    /// answered, keep the connection for as long as it lasts.
    #[tokio::test(start_paused = true)]
    async fn answered_pings_keep_a_quiet_connection() {
        let (reopened, pings) = reopened_after(After::Pong, Duration::from_secs(300)).await;
        assert_eq!(reopened, None);
        assert!(pings >= 10, "a ping every {PING_EVERY:?}: {pings} in 300 s");
    }

    /// A user without `read = security` logs in and sees nothing, not even
    /// its own login's event: by the first ping, status says so (the fake
    /// sends no event at all); an Asterisk that reports the login does not
    /// get the warning.
    #[tokio::test(start_paused = true)]
    async fn a_login_never_reported_is_told_in_status() {
        let own = b"Event: SuccessfulAuth\r\nPrivilege: security,all\r\nService: AMI\r\nAccountID: sipwarden\r\nLocalAddress: IPV4/TCP/127.0.0.1/5038\r\nRemoteAddress: IPV4/TCP/127.0.0.1/40000\r\nUsingPassword: 1\r\n\r\n";
        for (after, warned) in [
            (After::Pong, true),
            (After::Feed(vec![(Duration::ZERO, own.to_vec())]), false),
        ] {
            let (port, mut accepted, _pings) = fake_asterisk(after).await;
            let (src, _events) = source(port);
            let stats = src.stats.clone();
            let client = tokio::spawn(src.run());
            tokio::time::timeout(Duration::from_secs(30), accepted.recv())
                .await
                .expect("the client connects");
            tokio::time::sleep(PING_EVERY + Duration::from_secs(5)).await;
            assert!(stats.connected.load(Ordering::Relaxed));
            let reason = stats.reason();
            assert_eq!(reason.is_some(), warned, "{reason:?}");
            if let Some(r) = reason {
                assert!(r.contains("read = security"), "{r}");
            }
            client.abort();
        }
    }

    /// Pings unanswered (a half-open connection): reopened after the
    /// silence bound, not before.
    #[tokio::test(start_paused = true)]
    async fn unanswered_pings_reopen_the_connection() {
        let (reopened, _) = reopened_after(After::Silent, Duration::from_secs(200)).await;
        let after = reopened.expect("the client reopens");
        assert!(after >= SILENCE_LIMIT, "{after:?}");
    }

    /// A message trickled one byte a second, never complete: reopened by
    /// the message bound, well before the silence bound.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_message_is_reopened_within_the_message_bound() {
        let feed = b"Event: InvalidPassword\r\nPrivilege: security,all\r\nService: PJSIP\r\n"
            .iter()
            .map(|&b| (Duration::from_secs(1), vec![b]))
            .collect();
        let (reopened, _) = reopened_after(After::Feed(feed), Duration::from_secs(200)).await;
        let after = reopened.expect("the client reopens");
        assert!(after < SILENCE_LIMIT, "{after:?}");
    }
}
