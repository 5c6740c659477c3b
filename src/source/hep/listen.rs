//! The HEP listeners: one UDP socket and one TCP listener on the same
//! address, feeding [`HepIntake`]. TCP is bounded: at most
//! [`MAX_CONNECTIONS`] at once (from senders inside `allow` only), a frame
//! of at most [`MAX_FRAME`](super::decode::MAX_FRAME) bytes that must
//! arrive whole within [`FRAME_TIMEOUT`] of its first byte, and a
//! connection silent for [`IDLE_TIMEOUT`] is closed: a slow or stuck client
//! holds one slot for a bounded time, never memory beyond one frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc::Sender;
use tokio::sync::{Semaphore, watch};

use super::decode::MAX_FRAME;
use super::{HepIntake, frame_len};
use crate::event::{FailureEvent, Time};
use crate::supervise::Health;

/// Most TCP connections open at once.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a frame may take to arrive once its first byte did.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TCP connection may stay silent between frames.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Datagrams taken in one turn before their failures are handed on.
const UDP_BATCH: usize = 256;

/// The running listeners of one `hep` table; stopped when dropped.
pub struct HepListeners {
    task: tokio::task::JoinHandle<()>,
    /// Signalled (or dropped) to end every open TCP connection.
    stop: watch::Sender<()>,
}

impl HepListeners {
    /// Stops listening and closes every connection (the sockets close
    /// within a scheduler turn).
    pub fn stop(&self) {
        self.task.abort();
        let _ = self.stop.send(());
    }
}

impl Drop for HepListeners {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `f` for up to a second while the address is still in use (a
/// listener being replaced on reload leaves within a scheduler turn).
fn bind_retrying<T>(
    addr: SocketAddr,
    f: impl Fn(SocketAddr) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let mut tries = 0;
    loop {
        match f(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

impl HepListeners {
    /// Binds both sockets (so a taken port is reported at start) and
    /// serves them on a supervised task. Must run inside the runtime.
    pub fn start(
        intake: Arc<HepIntake>,
        tx: Sender<Vec<FailureEvent>>,
        name: String,
        health: Arc<Health>,
    ) -> std::io::Result<HepListeners> {
        let addr = intake.cfg.listen;
        let udp = bind_retrying(addr, std::net::UdpSocket::bind)?;
        udp.set_nonblocking(true)?;
        // (std sets SO_REUSEADDR: connections in TIME_WAIT do not block
        // a restart.)
        let tcp = bind_retrying(addr, std::net::TcpListener::bind)?;
        tcp.set_nonblocking(true)?;
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tcp = Arc::new(TcpListener::from_std(tcp)?);
        let (stop_tx, stop_rx) = watch::channel(());
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let task = crate::supervise::spawn_task(name, health, move || {
            let (udp, tcp, intake, tx) = (udp.clone(), tcp.clone(), intake.clone(), tx.clone());
            let (slots, stop_rx) = (slots.clone(), stop_rx.clone());
            async move {
                intake.stats.up.store(true, Ordering::Relaxed);
                tokio::select! {
                    () = serve_udp(&udp, &intake, &tx) => {}
                    () = serve_tcp(&tcp, &intake, &tx, &slots, &stop_rx) => {}
                }
                intake.stats.up.store(false, Ordering::Relaxed);
            }
        });
        Ok(HepListeners {
            task,
            stop: stop_tx,
        })
    }
}

/// Reads datagrams until the events channel closes.
async fn serve_udp(sock: &UdpSocket, intake: &HepIntake, tx: &Sender<Vec<FailureEvent>>) {
    let mut buf = vec![0u8; MAX_FRAME];
    let mut batch = Vec::new();
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let now = Time::now();
        let _ = intake.packet(from.ip(), &buf[..n], now, &mut batch);
        // Whatever else is queued, before the failures go out together.
        for _ in 1..UDP_BATCH {
            match sock.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = intake.packet(from.ip(), &buf[..n], now, &mut batch);
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).await.is_err() {
            return;
        }
    }
}

/// Accepts connections from senders inside `allow`, up to the bound.
async fn serve_tcp(
    listener: &TcpListener,
    intake: &Arc<HepIntake>,
    tx: &Sender<Vec<FailureEvent>>,
    slots: &Arc<Semaphore>,
    stop: &watch::Receiver<()>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors and the like: pause rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !intake.allowed(peer.ip()) {
            intake.stats.dropped_sender.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            intake.stats.busy.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (intake, tx, mut stop) = (intake.clone(), tx.clone(), stop.clone());
        intake.stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::select! {
                () = serve_conn(stream, peer, &intake, &tx) => {}
                _ = stop.changed() => {}
            }
            intake.stats.connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
}

/// Reads HEP frames from one connection until it closes, breaks the
/// framing, or times out.
async fn serve_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    intake: &HepIntake,
    tx: &Sender<Vec<FailureEvent>>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut frame_started: Option<tokio::time::Instant> = None;
    loop {
        let wait = match frame_started {
            Some(t) => FRAME_TIMEOUT.saturating_sub(t.elapsed()),
            None => IDLE_TIMEOUT,
        };
        let n = match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return, // closed, failed, or too slow
        };
        if buf.is_empty() {
            frame_started = Some(tokio::time::Instant::now());
        }
        buf.extend_from_slice(&chunk[..n]);
        let now = Time::now();
        let mut batch = Vec::new();
        let mut used = 0;
        loop {
            match frame_len(&buf[used..]) {
                Ok(Some(len)) if buf.len() - used >= len => {
                    let _ = intake.packet(peer.ip(), &buf[used..used + len], now, &mut batch);
                    used += len;
                }
                Ok(_) => break,
                Err(_) => {
                    // Not HEP: the stream cannot be resynchronised.
                    intake
                        .stats
                        .dropped_malformed
                        .fetch_add(1, Ordering::Relaxed);
                    if !batch.is_empty() {
                        let _ = tx.send(batch).await;
                    }
                    return;
                }
            }
        }
        buf.drain(..used);
        if used > 0 {
            // A frame ended: the next one's clock starts with its bytes.
            frame_started = (!buf.is_empty()).then(tokio::time::Instant::now);
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return;
        }
    }
}
