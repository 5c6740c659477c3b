//! The CLI's side of the control socket: one request, one answer, rendered
//! for people or passed through as JSON for scripts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration as StdDuration;

use super::{JailView, Request, Response, StatusView, UnbanView};
use crate::config::duration::Duration;
use crate::event::escape_text;

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket.
    #[error(
        "sipwarden is not running (no daemon answers on {0}); start it with `sipwarden run`, or pass --socket"
    )]
    NotRunning(String),
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

/// Sends `req` to the daemon at `socket` and returns its answer.
pub fn request(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let p = socket.display().to_string();
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(p.clone())
        }
        _ => ClientError::Io {
            path: p.clone(),
            source: e,
        },
    })?;
    let io = |source| ClientError::Io {
        path: p.clone(),
        source,
    };
    s.set_read_timeout(Some(StdDuration::from_secs(60)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|_| ClientError::BadAnswer(p.clone()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|_| ClientError::BadAnswer(p))
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

fn feeds_text(feeds: &[super::FeedView]) -> String {
    let mut out = String::new();
    for f in feeds {
        out.push_str(&format!(
            "feed {}: {} entries{}\n",
            f.name,
            f.entries,
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

fn jail_detail(j: &JailView) -> String {
    let files: Vec<String> = j
        .sources
        .iter()
        .map(|s| {
            format!(
                "{} ({})",
                s.path,
                if s.healthy { "followed" } else { "waiting" }
            )
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
    out
}

/// Renders a successful answer for people.
pub fn render(req: &Request, resp: &Response) -> String {
    let Some(v) = resp.parse::<serde_json::Value>() else {
        return String::new();
    };
    match req {
        Request::Ping {} => "pong\n".to_string(),
        Request::Status { jail: None } => match serde_json::from_value::<StatusView>(v) {
            Ok(s) => format!(
                "sipwarden {}, up {}, firewall {}, configuration {}\n{}{}",
                s.version,
                secs(s.uptime_s),
                s.firewall,
                s.config,
                jail_table(&s.jails),
                s.cluster.as_ref().map(cluster_text).unwrap_or_default()
                    + &feeds_text(&s.feeds)
                    + &store_text(s.store.as_ref())
            ),
            Err(_) => "(unreadable status)\n".into(),
        },
        Request::Status { jail: Some(_) } => match serde_json::from_value::<JailView>(v) {
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
