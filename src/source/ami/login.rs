//! The handshake with an Asterisk manager: connect, banner and login asking
//! for security events only, the bounded reads and writes they use, and the
//! log-in-and-out probe `doctor` runs. Apart from `mod.rs`, which is the
//! session after the login (the read loop, its timers, reconnection).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::frame::{Message, MessageBuffer};
use super::{
    AmiError, AmiMapper, AmiPeer, HANDSHAKE_MESSAGES, HANDSHAKE_TIMEOUT, LOGIN_ID, Mapped, OwnLogin,
};
use crate::event::{Time, escape_text};

/// A field's value as shown in a log line: escaped, cut short.
fn shown(v: Option<&[u8]>) -> String {
    escape_text(&String::from_utf8_lossy(v.unwrap_or_default()), 120)
}

/// A connection logged in, and what was read past the login.
pub(super) struct Connection {
    pub(super) stream: TcpStream,
    pub(super) mb: MessageBuffer,
    pub(super) rbuf: Vec<u8>,
    /// This end's address, as Asterisk sees it in its own login's event.
    pub(super) local: std::net::IpAddr,
}

impl AmiPeer {
    /// Connects, reads the banner and logs in asking for security events
    /// only.
    pub(super) async fn login(&self) -> Result<Connection, AmiError> {
        let peer = self.label();
        let io = |source| AmiError::Io {
            peer: peer.clone(),
            source,
        };
        let timeout = |step| AmiError::Timeout {
            peer: peer.clone(),
            step,
            secs: HANDSHAKE_TIMEOUT.as_secs(),
        };
        let mut stream = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| timeout("connect"))?
        .map_err(io)?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().map_err(io)?.ip().to_canonical();
        let mut mb = MessageBuffer::default();
        let mut rbuf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;

        // The banner: `Asterisk Call Manager/5.0.1`.
        let banner = loop {
            if let Some(b) = mb.banner().map_err(|source| AmiError::Frame {
                peer: peer.clone(),
                messages: 0,
                source,
            })? {
                break b;
            }
            self.fill(&mut stream, &mut mb, &mut rbuf, deadline, "the banner")
                .await?;
        };
        if !banner.starts_with("Asterisk Call Manager/") {
            return Err(AmiError::NotAmi {
                peer,
                banner: escape_text(&banner, 80),
            });
        }
        let login = format!(
            "Action: Login\r\nActionID: {LOGIN_ID}\r\nUsername: {}\r\nSecret: {}\r\nEvents: security\r\n\r\n",
            self.username, self.secret
        );
        self.write(&mut stream, login.as_bytes(), "the login")
            .await?;
        let mut seen = 0;
        let reply = loop {
            match mb.next_owned() {
                Ok(Some(m)) => {
                    let msg = Message { block: &m };
                    if msg.get("Response").is_some() {
                        break m;
                    }
                    seen += 1;
                    if seen > HANDSHAKE_MESSAGES {
                        return Err(timeout("the login (no response among the messages)"));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(AmiError::Frame {
                        peer,
                        messages: 0,
                        source,
                    });
                }
            }
            self.fill(&mut stream, &mut mb, &mut rbuf, deadline, "the login")
                .await?;
        };
        let reply = Message { block: &reply };
        if !reply
            .get("Response")
            .is_some_and(|r| r.eq_ignore_ascii_case(b"Success"))
        {
            return Err(AmiError::Login {
                peer,
                user: self.username.clone(),
                message: shown(reply.get("Message")),
            });
        }
        Ok(Connection {
            stream,
            mb,
            rbuf,
            local,
        })
    }

    /// Reads once more during the login, by `deadline`.
    async fn fill(
        &self,
        stream: &mut TcpStream,
        mb: &mut MessageBuffer,
        rbuf: &mut [u8],
        deadline: Instant,
        step: &'static str,
    ) -> Result<(), AmiError> {
        let peer = self.label();
        let n = tokio::time::timeout_at(deadline, stream.read(rbuf))
            .await
            .map_err(|_| AmiError::Timeout {
                peer: peer.clone(),
                step,
                secs: HANDSHAKE_TIMEOUT.as_secs(),
            })?
            .map_err(|source| AmiError::Io {
                peer: peer.clone(),
                source,
            })?;
        if n == 0 {
            return Err(AmiError::Closed {
                peer,
                why: format!("end of stream while waiting for {step}"),
            });
        }
        mb.extend(&rbuf[..n]);
        Ok(())
    }

    /// Writes `bytes`, within [`HANDSHAKE_TIMEOUT`] (a server that reads
    /// nothing cannot hold the client).
    pub(super) async fn write(
        &self,
        stream: &mut TcpStream,
        bytes: &[u8],
        step: &'static str,
    ) -> Result<(), AmiError> {
        let peer = self.label();
        tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(bytes))
            .await
            .map_err(|_| AmiError::Timeout {
                peer: peer.clone(),
                step,
                secs: HANDSHAKE_TIMEOUT.as_secs(),
            })?
            .map_err(|source| AmiError::Io { peer, source })
    }
}

/// How long `doctor` waits for Asterisk to report its login.
const PROBE_WAIT: Duration = Duration::from_secs(3);

/// Logs in to `peer` and out again: what `doctor` checks. `Ok(true)` when
/// Asterisk reported the login as a security event within [`PROBE_WAIT`]
/// (the user reads the security class).
pub async fn probe(peer: &AmiPeer) -> Result<bool, AmiError> {
    let mut c = peer.login().await?;
    let mut mapper = AmiMapper::new(crate::event::JailId(0));
    mapper.own = Some(OwnLogin {
        username: peer.username.clone(),
        local: c.local,
    });
    let deadline = Instant::now() + PROBE_WAIT;
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        let r = c.mb.drain(|m| {
            seen |= mapper.read(&m, Time(0)) == Mapped::OwnLogin;
        });
        if r.is_err() || seen {
            break;
        }
        if peer
            .fill(
                &mut c.stream,
                &mut c.mb,
                &mut c.rbuf,
                deadline,
                "its login's event",
            )
            .await
            .is_err()
        {
            break;
        }
    }
    let bye = "Action: Logoff\r\nActionID: sipwarden-logoff\r\n\r\n";
    peer.write(&mut c.stream, bye.as_bytes(), "the logoff")
        .await?;
    Ok(seen)
}
