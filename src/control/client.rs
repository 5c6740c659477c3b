//! The CLI's side of the control socket: one request, one answer, rendered
//! for people or passed through as JSON for scripts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration as StdDuration;

use super::{JailView, Request, Response, StatusView, UnbanView};
use crate::duration::Duration;
use crate::event::escape_text;

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

fn secs(s: i64) -> String {
    Duration(s.max(0) as u64).to_string()
}

fn jail_table(jails: &[JailView]) -> String {
    let mut out = format!(
        "{:<20} {:>8} {:>8} {:>8} {:>13}\n",
        "JAIL", "FAILING", "FAILED", "BANNED", "TOTAL BANNED"
    );
    for j in jails {
        out.push_str(&format!(
            "{:<20} {:>8} {:>8} {:>8} {:>13}\n",
            j.name, j.currently_failing, j.total_failed, j.currently_banned, j.total_banned
        ));
    }
    out
}

/// A line about the state store when something happened to it.
fn store_text(s: Option<&super::StoreView>) -> String {
    match s {
        Some(s) if !s.ok => format!(
            "\nstate store {}: FAILING since {}: {}\n",
            s.path,
            s.since.as_deref().unwrap_or("?"),
            s.error.as_deref().unwrap_or("?")
        ),
        Some(s) if s.repairs > 0 => format!(
            "\nstate store {}: ok, rebuilt {} time(s); last problem at {}: {}\n",
            s.path,
            s.repairs,
            s.last_error_at.as_deref().unwrap_or("?"),
            s.last_error.as_deref().unwrap_or("?")
        ),
        _ => String::new(),
    }
}

/// Peer host names: what each protects, and a warning when its lookups
/// fail.
fn names_text(names: &[super::NameView]) -> String {
    let mut out = String::new();
    for n in names {
        let addrs = if n.addrs.is_empty() {
            "no address protected".to_string()
        } else {
            n.addrs.join(" ")
        };
        let when = match (&n.resolved_at, n.from_store) {
            (Some(t), true) => format!(" (from the store, resolved {t})"),
            (Some(t), false) => format!(" (resolved {t})"),
            (None, _) => String::new(),
        };
        out.push_str(&format!(
            "peer name {} -> {addrs}{when}, jail(s) {}\n",
            escape_text(&n.name, 255),
            n.jails.join(", ")
        ));
        if let Some(p) = &n.problem {
            out.push_str(&format!(
                "  WARNING: {} (since {})\n",
                escape_text(p, 512),
                n.problem_since.as_deref().unwrap_or("?")
            ));
        }
    }
    if !out.is_empty() {
        out.insert(0, '\n');
    }
    out
}

fn feeds_text(feeds: &[super::FeedView]) -> String {
    let mut out = String::new();
    for f in feeds {
        out.push_str(&format!(
            "feed {}: {} entries{}{}\n",
            f.name,
            f.entries,
            if f.cut > 0 {
                format!(" ({} cut around protected addresses)", f.cut)
            } else {
                String::new()
            },
            match &f.error {
                Some(e) => format!(", last fetch FAILED ({e})"),
                None => f
                    .last_ok
                    .as_ref()
                    .map(|t| format!(", fetched {t}"))
                    .unwrap_or_default(),
            }
        ));
    }
    if !out.is_empty() {
        out.insert(0, '\n');
    }
    out
}

fn cluster_text(c: &crate::cluster::ClusterView) -> String {
    let mut out = format!(
        "\ncluster: node {}, redis {} {}, {} published, {} received, {} queued\n",
        c.node,
        c.redis,
        if c.connected {
            "connected".to_string()
        } else {
            format!("DOWN ({})", c.error.as_deref().unwrap_or("connecting"))
        },
        c.published,
        c.received,
        c.queued
    );
    if c.skipped > 0 {
        out.push_str(&format!(
            "  {} key(s) or entries under the prefix skipped (wrong type or shape; see the log)\n",
            c.skipped
        ));
    }
    for t in &c.tasks {
        if !t.up || t.restarts > 0 {
            out.push_str(&format!(
                "  {} {}, {} restart(s){}\n",
                t.name,
                if t.up { "up" } else { "DOWN" },
                t.restarts,
                t.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    for p in &c.peers {
        out.push_str(&format!(
            "  peer {:<20} seen {} ms ago{}  {}\n",
            p.node,
            p.seen_ms_ago,
            p.lag_ms
                .map(|l| format!(", lag {l} ms"))
                .unwrap_or_default(),
            p.addrs.join(" ")
        ));
    }
    out
}

/// What status says of a source's dates, when they disagree with the
/// clock: `; 3 too old, not counted; 1 off the clock, last -1h`.
fn dates_note(s: &crate::control::SourceView) -> String {
    let mut out = String::new();
    if s.too_old > 0 {
        out.push_str(&format!("; {} too old, not counted", s.too_old));
    }
    if s.skewed > 0 {
        out.push_str(&format!("; {} off the clock", s.skewed));
    }
    if let Some(off) = s.last_skew_s {
        out.push_str(&format!(
            ", last {}{}",
            if off < 0 { "-" } else { "+" },
            Duration(off.unsigned_abs())
        ));
    }
    out
}

fn jail_detail(j: &JailView) -> String {
    let files: Vec<String> = j
        .sources
        .iter()
        .map(|s| {
            let state = match (&s.reason, s.healthy) {
                (_, true) => "followed".to_string(),
                (Some(why), false) => format!("waiting: {why}"),
                (None, false) => "waiting".to_string(),
            };
            format!("{} ({state}{})", s.path, dates_note(s))
        })
        .collect();
    let banned = j.banned.as_deref().unwrap_or_default();
    let list: Vec<&str> = banned.iter().map(|b| b.addr.as_str()).collect();
    let mut out = format!(
        "Status for the jail: {}\n|- Filter\n|  |- Currently failed: {}\n|  |- Total failed:     {}\n|  `- File list:        {}\n`- Actions\n   |- Currently banned: {}\n   |- Total banned:     {}\n   `- Banned IP list:   {}\n",
        j.name,
        j.currently_failing,
        j.total_failed,
        files.join(" "),
        j.currently_banned,
        j.total_banned,
        list.join(" ")
    );
    if !banned.is_empty() {
        out.push_str(&format!(
            "\n{:<40} {:>10} {:>9}  {:<9} {}\n",
            "ADDRESS", "REMAINING", "FAILURES", "REASON", "SINCE"
        ));
        for b in banned {
            out.push_str(&format!(
                "{:<40} {:>10} {:>9}  {:<9} {}\n",
                b.addr,
                b.remaining_s.map_or_else(|| "permanent".to_string(), secs),
                b.failures,
                match &b.origin {
                    Some(o) => format!("{} ({o})", b.reason),
                    None => b.reason.clone(),
                },
                b.start
            ));
        }
    }
    if let Some(c) = &j.next_cursor {
        out.push_str(&format!(
            "\n(more bans follow: add --cursor {c} for the next page)\n"
        ));
    }
    out
}

/// Renders a successful answer for people.
pub fn render(req: &Request, resp: &Response) -> String {
    let Some(v) = resp.parse::<serde_json::Value>() else {
        return String::new();
    };
    match req {
        Request::Ping {} => "pong\n".to_string(),
        Request::Status { jail: None, .. } => match serde_json::from_value::<StatusView>(v) {
            Ok(s) => format!(
                "sipwarden {}, up {}, firewall {}, configuration {}\n{}{}",
                s.version,
                secs(s.uptime_s),
                s.firewall,
                s.config,
                jail_table(&s.jails),
                s.cluster.as_ref().map(cluster_text).unwrap_or_default()
                    + &names_text(&s.names)
                    + &feeds_text(&s.feeds)
                    + &store_text(s.store.as_ref())
            ),
            Err(_) => "(unreadable status)\n".into(),
        },
        Request::Status { jail: Some(_), .. } => match serde_json::from_value::<JailView>(v) {
            Ok(j) => jail_detail(&j),
            Err(_) => "(unreadable status)\n".into(),
        },
        Request::Ban { .. } => {
            let addr = v["addr"].as_str().unwrap_or("?");
            let jail = v["jail"].as_str().unwrap_or("?");
            let len = v["bantime"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| "permanent".into());
            format!(
                "[{}] Ban {} (manual, {})\n",
                escape_text(jail, 64),
                addr,
                len
            )
        }
        Request::Unban { .. } => match serde_json::from_value::<UnbanView>(v) {
            Ok(u) if u.unbanned.is_empty() => "nothing to unban\n".into(),
            Ok(u) => u
                .unbanned
                .iter()
                .map(|b| format!("[{}] Unban {} (manual)\n", b.jail, b.addr))
                .collect(),
            Err(_) => "(unreadable answer)\n".into(),
        },
        Request::Reload { .. } => format!("reloaded: {}\n", v["config"].as_str().unwrap_or("?")),
        Request::Recent {} => format!("{v}\n"),
    }
}
