//! The CLI's side of the control socket: one request, one answer (the
//! text renderings are `crate::cli::talk`'s).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration as StdDuration;

use super::{JailView, Request, Response};

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket.
    #[error(
        "sipwarden is not running (no daemon answers on {0}); start it with `sipwarden run`, or pass --socket"
    )]
    NotRunning(String),
    /// The daemon closed the connection without a word.
    #[error(
        "control socket {0}: the daemon closed the connection without answering (it may be stopping, or the socket full: try again)"
    )]
    Closed(String),
    /// Talking failed midway.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The answer was not JSON.
    #[error("control socket {0}: the daemon's answer could not be read")]
    BadAnswer(String),
}

/// How long the CLI waits for an answer (a reload can take a while).
const ANSWER_TIMEOUT: StdDuration = StdDuration::from_secs(60);

/// Most pages `status JAIL` fetches: 1,000 pages of 1,000 is more than a
/// kernel set holds by default; a daemon that kept answering "more" past
/// that would be broken.
const MAX_PAGES: usize = 1_000;

/// One connection to the daemon, for one request or several.
pub struct Connection {
    stream: BufReader<UnixStream>,
    path: String,
}

impl Connection {
    /// Connects to the daemon at `socket`.
    pub fn open(socket: &Path) -> Result<Connection, ClientError> {
        let path = socket.display().to_string();
        let s = UnixStream::connect(socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.clone())
            }
            _ => ClientError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|source| ClientError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Connection {
            stream: BufReader::new(s),
            path,
        })
    }

    /// Sends `req` and reads its answer.
    pub fn ask(&mut self, req: &Request) -> Result<Response, ClientError> {
        let mut line =
            serde_json::to_vec(req).map_err(|_| ClientError::BadAnswer(self.path.clone()))?;
        line.push(b'\n');
        // A full socket answers "busy" and closes at once, perhaps before
        // the request is written: read what it said even when writing fails.
        let sent = self.stream.get_mut().write_all(&line);
        let mut answer = String::new();
        let read = self.stream.read_line(&mut answer);
        match (sent, read) {
            (_, Ok(n)) if n > 0 => {
                serde_json::from_str(&answer).map_err(|_| ClientError::BadAnswer(self.path.clone()))
            }
            (Ok(()), Err(source)) => Err(ClientError::Io {
                path: self.path.clone(),
                source,
            }),
            _ => Err(ClientError::Closed(self.path.clone())),
        }
    }
}

/// Sends `req` to the daemon at `socket` and returns its answer.
pub fn request(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    Connection::open(socket)?.ask(req)
}

/// `status JAIL` with every page of its bans, fetched in turn over one
/// connection and joined into one answer. An error answer (no such jail)
/// comes back as it is.
pub fn jail_status(socket: &Path, jail: &str) -> Result<Response, ClientError> {
    let mut conn = Connection::open(socket)?;
    let mut all: Option<JailView> = None;
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let resp = conn.ask(&Request::Status {
            jail: Some(jail.to_string()),
            limit: None,
            cursor: cursor.clone(),
        })?;
        if !resp.ok {
            return Ok(resp);
        }
        let mut page: JailView = resp
            .parse()
            .ok_or_else(|| ClientError::BadAnswer(conn.path.clone()))?;
        let next = page.next_cursor.take();
        match &mut all {
            None => all = Some(page),
            Some(a) => a
                .banned
                .get_or_insert_with(Vec::new)
                .extend(page.banned.unwrap_or_default()),
        }
        // A cursor must move on; one that does not would loop for ever.
        if next.is_none() || next == cursor {
            break;
        }
        cursor = next;
    }
    Ok(match all {
        Some(v) => Response::ok(v),
        None => Response::error("no answer"),
    })
}
