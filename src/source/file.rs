//! Following log files: inotify wake-ups with a polling fallback, rename
//! rotation, copytruncate, partial last lines, files that appear later.
//!
//! Each followed path runs on its own thread with plain blocking reads (local
//! files never block for long), and hands failure events to the daemon in one
//! batch per read.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use jiff::tz::TimeZone;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::Sender;

use crate::event::{FailureEvent, JailId, Time};
use crate::filter::{Filter, FilterContext};
use crate::source::scanner::ScannerList;

/// Lines longer than this are skipped (with a counted warning).
pub const MAX_LINE: usize = 64 * 1024;

/// How often a file is checked when no inotify event arrives.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Counters a follower keeps; shared with status output.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Lines read.
    pub lines: AtomicU64,
    /// Lines a filter matched.
    pub matched: AtomicU64,
    /// Lines skipped for being longer than [`MAX_LINE`].
    pub overlong: AtomicU64,
    /// Lines that were not valid UTF-8 (still filtered, bytes as they are).
    pub non_utf8: AtomicU64,
    /// Matched lines naming an address that is never a packet's source
    /// (`0.0.0.0`, broadcast, multicast): not counted.
    pub never_source: AtomicU64,
    /// Whether the file is open and followed right now.
    pub open: AtomicBool,
}

/// Splits a byte stream into lines, keeping a partial last line for later and
/// dropping lines over [`MAX_LINE`].
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    discarding: bool,
}

impl LineSplitter {
    /// Feeds `data`; calls `emit` for each whole line (without `\n`). Returns
    /// how many overlong lines were dropped.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8])) -> u64 {
        let mut dropped = 0;
        while let Some(nl) = memchr::memchr(b'\n', data) {
            let (head, rest) = (&data[..nl], &data[nl + 1..]);
            if self.discarding {
                self.discarding = false;
                dropped += 1;
            } else if self.buf.is_empty() {
                if head.len() <= MAX_LINE {
                    emit(head);
                } else {
                    dropped += 1;
                }
            } else if self.buf.len() + head.len() <= MAX_LINE {
                self.buf.extend_from_slice(head);
                emit(&self.buf);
            } else {
                dropped += 1;
            }
            if !self.buf.is_empty() {
                self.buf.clear();
            }
            data = rest;
        }
        if !data.is_empty() && !self.discarding {
            if self.buf.len() + data.len() > MAX_LINE {
                self.buf.clear();
                self.discarding = true;
            } else {
                self.buf.extend_from_slice(data);
            }
        }
        dropped
    }

    /// Emits a pending partial line (the file it came from is gone for good).
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.buf.is_empty() && !self.discarding {
            emit(&self.buf);
        }
        self.clear();
    }

    /// Forgets any pending partial line.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }
}

/// One followed file and what to do with its lines.
pub struct FileSource {
    /// The path to follow.
    pub path: PathBuf,
    /// The jail its failures count in.
    pub jail: JailId,
    /// The jail's filter.
    pub filter: Arc<dyn Filter>,
    /// Zone for zone-less timestamps.
    pub tz: TimeZone,
    /// Read the file from its start (else follow from its end).
    pub from_start: bool,
    /// Where batches of events go.
    pub tx: Sender<Vec<FailureEvent>>,
    /// Set to stop the follower.
    pub stop: Arc<AtomicBool>,
    /// Attack-tool user agents, for lines that carry one.
    pub scanners: Arc<ScannerList>,
    /// Counters.
    pub stats: Arc<FollowStats>,
}

/// The follower's view of the file.
struct Follow {
    file: Option<File>,
    /// (device, inode) of the open file.
    ident: Option<(u64, u64)>,
    pos: u64,
    lines: LineSplitter,
    /// The first open honours `from_start`; files that appear later, or
    /// replace a rotated one, are read from their start.
    first_attempt: bool,
    /// Last error reported, to report each condition once.
    reported: Option<String>,
}

impl FileSource {
    /// Starts following on a thread of its own.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        let name = format!("follow {}", self.path.display());
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || self.run())
    }

    fn run(self) {
        let (wake_tx, wake_rx) = sync_channel::<()>(1);
        let mut watcher = watch_parent(&self.path, &wake_tx);
        let mut st = Follow {
            file: None,
            ident: None,
            pos: 0,
            lines: LineSplitter::default(),
            first_attempt: true,
            reported: None,
        };
        while !self.stop.load(Ordering::Relaxed) {
            if !self.poll(&mut st) {
                return;
            }
            if watcher.is_none() {
                watcher = watch_parent(&self.path, &wake_tx);
            }
            if !wait(&wake_rx) {
                return;
            }
        }
    }

    /// Reads whatever is new; returns false when the daemon has gone.
    fn poll(&self, st: &mut Follow) -> bool {
        // A rotation may need a second pass: drain the old file, then read
        // the new one from its start.
        for _ in 0..3 {
            if st.file.is_none() && !self.open(st) {
                return true;
            }
            if !self.read_available(st) {
                return false;
            }
            match std::fs::metadata(&self.path) {
                Ok(m) if Some((m.dev(), m.ino())) != st.ident => {
                    tracing::info!(
                        "{}: file was replaced (rotation); following the new one",
                        self.path.display()
                    );
                    // Lines written to the old file between the read above
                    // and this check are still only in the old handle:
                    // drain it once more before letting go.
                    if !self.read_available(st) {
                        return false;
                    }
                    let mut batch = Vec::new();
                    let cx = self.context();
                    st.lines
                        .flush(&mut |l| self.filter_line(l, &cx, &mut batch));
                    if !self.send(batch) {
                        return false;
                    }
                    st.file = None;
                    st.ident = None;
                    continue;
                }
                Ok(m) if m.len() < st.pos => {
                    tracing::info!(
                        "{}: file was truncated (copytruncate); reading from its start",
                        self.path.display()
                    );
                    if let Some(f) = st.file.as_mut() {
                        if f.seek(SeekFrom::Start(0)).is_err() {
                            st.file = None;
                        }
                    }
                    st.pos = 0;
                    st.lines.clear();
                    continue;
                }
                // Same file, or moved away and not yet recreated: keep the old
                // handle, late writes to it still count.
                _ => return true,
            }
        }
        true
    }

    fn open(&self, st: &mut Follow) -> bool {
        let first = std::mem::replace(&mut st.first_attempt, false);
        let opened = File::open(&self.path).and_then(|mut f| {
            let m = f.metadata()?;
            if m.is_dir() {
                return Err(std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "it is a directory",
                ));
            }
            let pos = if first && !self.from_start {
                f.seek(SeekFrom::End(0))?
            } else {
                0
            };
            Ok((f, (m.dev(), m.ino()), pos))
        });
        match opened {
            Ok((f, ident, pos)) => {
                tracing::info!(
                    "{}: following{}",
                    self.path.display(),
                    if pos > 0 { " from its end" } else { "" }
                );
                st.file = Some(f);
                st.ident = Some(ident);
                st.pos = pos;
                st.lines.clear();
                st.reported = None;
                self.stats.open.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.stats.open.store(false, Ordering::Relaxed);
                let msg = if e.kind() == ErrorKind::NotFound {
                    format!(
                        "{}: does not exist yet; waiting for it to appear",
                        self.path.display()
                    )
                } else {
                    format!(
                        "{}: cannot read ({e}); check permissions, retrying",
                        self.path.display()
                    )
                };
                if st.reported.as_deref() != Some(msg.as_str()) {
                    if e.kind() == ErrorKind::NotFound {
                        tracing::info!("{msg}");
                    } else {
                        tracing::warn!("{msg}");
                    }
                    st.reported = Some(msg);
                }
                false
            }
        }
    }

    /// Reads to the end of the open file; returns false if the daemon is gone.
    fn read_available(&self, st: &mut Follow) -> bool {
        let Some(file) = st.file.as_mut() else {
            return true;
        };
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("{}: read failed ({e}); reopening", self.path.display());
                    st.file = None;
                    return true;
                }
            };
            st.pos += n as u64;
            let cx = self.context();
            let mut batch = Vec::new();
            let dropped = st
                .lines
                .push(&buf[..n], &mut |l| self.filter_line(l, &cx, &mut batch));
            if dropped > 0 {
                let total = self.stats.overlong.fetch_add(dropped, Ordering::Relaxed) + dropped;
                if rare(total, dropped) {
                    tracing::warn!(
                        "{}: skipped a line over {} KiB ({total} so far)",
                        self.path.display(),
                        MAX_LINE / 1024
                    );
                }
            }
            if !self.send(batch) {
                return false;
            }
        }
    }

    fn context(&self) -> FilterContext {
        FilterContext {
            tz: self.tz.clone(),
            now: Time::now(),
        }
    }

    fn filter_line(&self, line: &[u8], cx: &FilterContext, batch: &mut Vec<FailureEvent>) {
        self.stats.lines.fetch_add(1, Ordering::Relaxed);
        let Some(m) = self.filter.match_line(line, cx) else {
            return;
        };
        if let Some(why) = crate::net::never_a_source_why(m.addr) {
            let total = self.stats.never_source.fetch_add(1, Ordering::Relaxed) + 1;
            if rare(total, 1) {
                tracing::warn!(
                    "{}: a matching line names {}, {why}, never a packet's source ({total} so far); not counted",
                    self.path.display(),
                    m.addr
                );
            }
            return;
        }
        if std::str::from_utf8(line).is_err() {
            // Still counted: an attacker must not hide a failure behind one
            // bad byte in a user name.
            let total = self.stats.non_utf8.fetch_add(1, Ordering::Relaxed) + 1;
            if rare(total, 1) {
                tracing::warn!(
                    "{}: a matching line is not valid UTF-8 ({total} so far); counted as bytes",
                    self.path.display()
                );
            }
        }
        self.stats.matched.fetch_add(1, Ordering::Relaxed);
        batch.push(FailureEvent {
            time: m.time.unwrap_or(cx.now),
            jail: self.jail,
            addr: m.addr,
            kind: m.kind,
            weight: 1,
            scanner: m
                .user_agent
                .as_deref()
                .is_some_and(|ua| self.scanners.matches(ua)),
            user: m.user,
        });
    }

    fn send(&self, batch: Vec<FailureEvent>) -> bool {
        batch.is_empty() || self.tx.blocking_send(batch).is_ok()
    }
}

/// Whether a running count just crossed 1, 10, 100, ...: warnings about
/// repeated bad input stay few.
pub(crate) fn rare(total: u64, added: u64) -> bool {
    let before = total - added;
    let mut p = 1;
    while p <= total {
        if p > before {
            return true;
        }
        p = p.saturating_mul(10);
    }
    false
}

/// Waits for an inotify wake-up or the poll interval; false when the watcher
/// side has hung up for good (never, in practice).
fn wait(rx: &Receiver<()>) -> bool {
    match rx.recv_timeout(POLL_INTERVAL) {
        Ok(()) | Err(RecvTimeoutError::Timeout) => true,
        Err(RecvTimeoutError::Disconnected) => {
            std::thread::sleep(POLL_INTERVAL);
            true
        }
    }
}

/// Watches the file's directory (creation and renames are directory events).
/// `None` means polling only, e.g. while the directory does not exist.
fn watch_parent(path: &Path, wake: &SyncSender<()>) -> Option<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return None;
    }
    let wake = wake.clone();
    let mut w = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        // Coalesce: one pending wake-up is enough.
        let _ = wake.try_send(());
    })
    .ok()?;
    match w.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => Some(w),
        Err(e) => {
            tracing::debug!("{}: inotify unavailable ({e}); polling", dir.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> (Vec<String>, u64) {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let mut dropped = 0;
        for c in chunks {
            dropped += s.push(c, &mut |l| {
                out.push(String::from_utf8_lossy(l).into_owned())
            });
        }
        (out, dropped)
    }

    #[test]
    fn splits_and_keeps_partial_lines() {
        let (l, d) = split(&[b"a\nb", b"c\n", b"d"]);
        assert_eq!(l, vec!["a", "bc"]);
        assert_eq!(d, 0);
    }

    #[test]
    fn drops_overlong_lines() {
        let long = vec![b'x'; MAX_LINE + 1];
        let (l, d) = split(&[b"ok\n", &long, b"\nafter\n"]);
        assert_eq!(l, vec!["ok", "after"]);
        assert_eq!(d, 1);
        // Over the limit only once the pieces are joined.
        let half = vec![b'y'; MAX_LINE / 2 + 1];
        let (l, d) = split(&[&half, &half, b"\nnext\n"]);
        assert_eq!(l, vec!["next"]);
        assert_eq!(d, 1);
    }

    #[test]
    fn rare_is_rare() {
        let hits: Vec<u64> = (1..=2000).filter(|&n| rare(n, 1)).collect();
        assert_eq!(hits, vec![1, 10, 100, 1000]);
        assert!(rare(15, 10));
    }
}
