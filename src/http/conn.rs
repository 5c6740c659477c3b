//! The listener's door: how many connections it holds, for how long, and
//! how many file descriptors HTTP may take. Nothing here needs a token, so
//! everything here is bounded: a client that sends half a request, stops
//! reading its answer, or opens connections by the hundred costs a bounded
//! amount of memory and descriptors, and never the control socket's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Most HTTP connections served at once. The dashboard in a browser uses up
/// to six, a Prometheus server one; past this a new connection is answered
/// 503 and closed, and costs nothing more.
pub const MAX_CONNECTIONS: usize = 128;

/// A request's head (request line and headers) must arrive within this,
/// counted from when the server starts waiting for it: the connection's
/// opening, or the end of the previous answer (so it is also how long an
/// idle kept-alive connection stays open). Ten seconds is plenty on any
/// network a dashboard is used from.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection on which no byte moved either way for this long is closed:
/// a client that stopped reading its answer, a request body that stalled,
/// an answer the daemon could not produce.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection older than this is closed once the answer in flight is
/// sent (or after [`IDLE_TIMEOUT`] more): a client trickling a byte now
/// and then cannot keep a slot for ever. Clients simply reconnect.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// File descriptors HTTP leaves free under `RLIMIT_NOFILE`: while fewer
/// remain, new HTTP connections are refused, so the control socket (up to
/// its 64 connections), reopened log files, the store and netlink always
/// find one.
pub const FD_RESERVE: u64 = 128;

/// Bytes hyper buffers per connection, each way: bounds a request head and
/// the part of an answer waiting for a slow reader. (A head is a few
/// hundred bytes; bodies are limited separately.)
pub const MAX_BUFFER: usize = 64 * 1024;

/// How long accepting pauses after the kernel refused to give a descriptor
/// (the pending connection waits in the queue instead of spinning a core).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a refused connection is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 89\r\nRetry-After: 5\r\n\r\n{\"ok\":false,\"error\":\"too many HTTP connections to sipwarden; try again in a few seconds\"}";

/// Serves `app` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, app: Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let fd_limit = nofile_limit();
    // Room for the cap, the reserve and the daemon's own files and sockets.
    let enough = MAX_CONNECTIONS as u64 + FD_RESERVE + 128;
    match fd_limit {
        Some(n) if n < enough => tracing::warn!(
            "http: RLIMIT_NOFILE is {n}: HTTP will refuse connections before {MAX_CONNECTIONS} are open, to keep {FD_RESERVE} descriptors free; raise LimitNOFILE to {enough} or more"
        ),
        _ => {}
    }
    let mut refused = Throttle::default();
    let mut failed = Throttle::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                if let Some(n) = failed.tick() {
                    tracing::warn!("http: cannot accept a connection ({e}); {n} time(s)");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) if fds_to_spare(fd_limit) => p,
            held => {
                let why = if held.is_ok() {
                    format!("fewer than {FD_RESERVE} file descriptors left")
                } else {
                    format!("{MAX_CONNECTIONS} connections open")
                };
                if let Some(n) = refused.tick() {
                    tracing::warn!("http: refusing connections ({why}); {n} refused");
                }
                // Best effort: a fresh socket's buffer takes the whole answer.
                let _ = stream.try_write(BUSY);
                continue;
            }
        };
        tokio::spawn(serve_conn(stream, permit, app.clone()));
    }
}

/// One connection, under the header, idle and age limits.
async fn serve_conn(stream: TcpStream, _slot: OwnedSemaphorePermit, app: Router) {
    let _ = stream.set_nodelay(true);
    let born = Instant::now();
    let moved = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: stream,
        born,
        moved: moved.clone(),
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUFFER)
        .serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut old = false;
    loop {
        let last = born + Duration::from_millis(moved.load(Ordering::Relaxed));
        let idle_end = last + IDLE_TIMEOUT;
        let age_end = born + MAX_AGE;
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("http: connection closed: {e}");
                }
                return;
            }
            () = tokio::time::sleep_until(idle_end) => {
                let now_last = born + Duration::from_millis(moved.load(Ordering::Relaxed));
                if now_last + IDLE_TIMEOUT <= Instant::now() {
                    // Dropping the connection closes the socket.
                    return;
                }
            }
            () = tokio::time::sleep_until(age_end), if !old => {
                old = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(age_end + IDLE_TIMEOUT), if old => return,
        }
    }
}

/// A socket that notes when bytes last moved (milliseconds since `born`).
struct Watched {
    inner: TcpStream,
    born: Instant,
    moved: Arc<AtomicU64>,
}

impl Watched {
    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The soft `RLIMIT_NOFILE`, when there is one.
fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives on our
    // stack for the whole call.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (r == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Whether more than [`FD_RESERVE`] descriptors stay free with the one just
/// accepted. Counted in /proc (a few hundred entries; only connections
/// under the cap get here); without /proc, assumed so.
fn fds_to_spare(limit: Option<u64>) -> bool {
    let Some(limit) = limit else {
        return true;
    };
    match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => (dir.count() as u64).saturating_add(FD_RESERVE) <= limit,
        Err(_) => true,
    }
}

/// Logs the first of a burst of events and then at most once a minute.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    /// Counts one event; `Some(total)` when it should be logged.
    fn tick(&mut self) -> Option<u64> {
        self.count += 1;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if due {
            self.last = Some(Instant::now());
        }
        due.then_some(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["ok"], false);
    }

    #[test]
    fn throttled_logs_count_everything() {
        let mut t = Throttle::default();
        assert_eq!(t.tick(), Some(1));
        assert_eq!(t.tick(), None);
        assert_eq!(t.count, 2);
    }
}
