//! The systemd journal as a source (`backend = "systemd"`): a jail's
//! filter reads each matching entry as the line fail2ban builds from it
//! (`entry.rs`), dated with the entry's own time.
//!
//! One thread per journal jail, supervised like the file followers. It
//! opens the journal through libsystemd, loaded at run time (`sys.rs`; a
//! host without it fails only the journal jails, saying what to install),
//! applies the jail's `journalmatch` (`matches.rs`), and reads at most
//! [`ENTRIES_PER_WAKE`] entries per wake-up before it looks at its stop
//! flag again. Rotation and vacuuming (files added or removed) wake it with
//! `INVALIDATE`; it then seeks back to the last entry it read, so nothing
//! is skipped and nothing read twice.
//!
//! Where it stands is the cursor of the last entry sent, kept in the store
//! (`cursor.rs`): a restart resumes after it. The first start follows from
//! the end of the journal (like a log file), or its start with
//! `from_start`.

pub mod cursor;
pub mod entry;
pub mod matches;
pub mod sys;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::tz::TimeZone;
use tokio::sync::mpsc::Sender;

use crate::event::{FailureEvent, JailId, Time};
use crate::filter::{Filter, FilterContext};
use crate::source::file::{FollowStats, MAX_LINE};
use crate::source::scanner::ScannerList;
use crate::source::{Dated, Window, rare, span};

pub use cursor::{CursorKey, Cursors};
pub use matches::{JournalMatch, MatchError};
pub use sys::{JournalError, Location};

/// Entries read per wake-up before the stop flag is looked at again (more
/// are read at once after that, without waiting).
pub const ENTRIES_PER_WAKE: usize = 4096;

/// Entries per batch of events (and per cursor mark).
const BATCH: usize = 512;

/// Longest wait for a change before the stop flag is looked at.
const WAIT: Duration = Duration::from_millis(500);

/// The position kept for a journal with no entry of the jail's at its
/// first start, as `head@<µs since the epoch>`: entries written after that
/// time are new (a real cursor is `s=...;i=...`). A start that resumes
/// from it reads from that time or the jail's findtime ago, whichever is
/// later, never the whole history. A bare `head` (kept by earlier versions)
/// reads from findtime ago.
const HEAD: &str = "head";

/// The time of a head marker (`head@<µs>`; `Some(0)` for a bare `head`),
/// `None` for a real cursor.
fn head_time(cursor: &str) -> Option<u64> {
    let rest = cursor.strip_prefix(HEAD)?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix('@')?.parse().ok()
}

/// Pause before a full event queue is tried again (the stop flag is
/// looked at in between).
const SEND_RETRY: Duration = Duration::from_millis(5);

/// Pause before the journal is opened again after a failure.
const RETRY: Duration = Duration::from_secs(5);

/// A jail's journal, as configured.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JournalConfig {
    /// Which journal.
    pub location: Location,
    /// `sd_journal_open` flags (fail2ban's `journalflags`).
    pub flags: i32,
    /// The jail's `journalmatch`; `None`: its filter's.
    pub matches: Option<JournalMatch>,
}

impl JournalConfig {
    /// The host's journal, system services and the kernel (fail2ban's
    /// default when no path or file is given).
    pub fn system() -> JournalConfig {
        JournalConfig {
            location: Location::System,
            flags: sys::flags::SYSTEM,
            matches: None,
        }
    }

    /// What it reads, for status, logs and the stored cursor's key.
    pub fn label(&self) -> String {
        match &self.location {
            Location::System => "journal".to_string(),
            Location::Directory(d) => format!("journal {}", d.display()),
            Location::Files(f) => {
                let names: Vec<String> = f.iter().map(|p| p.display().to_string()).collect();
                format!("journal files {}", names.join(" "))
            }
        }
    }
}

/// One jail's journal and what to do with its entries.
pub struct JournalSource {
    /// The journal.
    pub cfg: JournalConfig,
    /// The matches applied (the jail's, else the filter's; empty: every
    /// entry).
    pub matches: JournalMatch,
    /// The jail its failures count in.
    pub jail: JailId,
    /// The jail's name (the stored cursor's key, logs).
    pub jail_name: String,
    /// The jail's filter.
    pub filter: Arc<dyn Filter>,
    /// Zone for zone-less dates inside messages.
    pub tz: TimeZone,
    /// The jail's `findtime`, to tell entries it will not count.
    pub window: Arc<Window>,
    /// Read from the start of the journal the first time (else its end).
    pub from_start: bool,
    /// Where batches of events go.
    pub tx: Sender<Vec<FailureEvent>>,
    /// Set to stop the follower.
    pub stop: Arc<AtomicBool>,
    /// Attack-tool user agents.
    pub scanners: Arc<ScannerList>,
    /// Counters (status shows them like a file's).
    pub stats: Arc<FollowStats>,
    /// Where each journal follower stands.
    pub cursors: Arc<Cursors>,
}

/// How a session with an open journal ended.
enum Ended {
    /// Stop asked, or the daemon has gone.
    Gone,
    /// A call failed: open again after a pause.
    Failed(JournalError),
}

impl From<JournalError> for Ended {
    fn from(e: JournalError) -> Ended {
        Ended::Failed(e)
    }
}

impl JournalSource {
    /// Follows on a thread of its own, supervised: a panic starts it again
    /// after the last entry it sent.
    pub fn spawn(
        self,
        health: Arc<crate::supervise::Health>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let name = format!("[{}] {}", self.jail_name, self.cfg.label());
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                let stop = self.stop.clone();
                crate::supervise::run_thread(
                    &name,
                    &health,
                    &|| stop.load(Ordering::Relaxed),
                    || self.run(),
                );
            })
    }

    fn key(&self) -> CursorKey {
        CursorKey {
            jail: self.jail_name.clone(),
            source: self.cfg.label(),
        }
    }

    fn set_reason(&self, why: Option<String>) {
        *self
            .stats
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    /// The journal time (µs since the epoch) before which an entry is
    /// older than the jail's findtime at `now`: never read.
    fn oldest_usec(&self, now: Time) -> u64 {
        let ms = now.0.saturating_sub(self.window.findtime_ms());
        u64::try_from(ms).unwrap_or(0).saturating_mul(1000)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn run(&self) {
        let mut reported: Option<String> = None;
        while !self.stopped() {
            let why = match self.open() {
                Ok(j) => {
                    reported = None;
                    self.stats.open.store(true, Ordering::Relaxed);
                    self.set_reason(None);
                    match self.follow(j) {
                        Ended::Gone => return,
                        Ended::Failed(e) => e,
                    }
                }
                Err(e) => e,
            };
            self.stats.open.store(false, Ordering::Relaxed);
            let msg = why.to_string();
            self.set_reason(Some(msg.clone()));
            // The library is loaded once per process: only a restart can
            // find it once installed.
            let missing = matches!(why, JournalError::NoLibrary(_));
            if reported.as_deref() != Some(msg.as_str()) {
                let then = if missing {
                    "restart sipwarden once it is installed; the other jails run".to_string()
                } else {
                    format!("trying again every {} s", RETRY.as_secs())
                };
                tracing::error!("[{}] {}: {msg}; {then}", self.jail_name, self.cfg.label());
                reported = Some(msg);
            }
            if missing {
                while !self.stopped() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                return;
            }
            // The stop flag is looked at while waiting.
            for _ in 0..(RETRY.as_millis() / 100) {
                if self.stopped() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn open(&self) -> Result<sys::Journal, JournalError> {
        open(&self.cfg, &self.matches)
    }

    /// Puts `j` after the entry of `cursor` (or, with none, at the start or
    /// the end of the journal); returns the cursor it stands after.
    fn position(
        &self,
        j: &mut sys::Journal,
        cursor: Option<&str>,
        start: bool,
    ) -> Result<Option<String>, JournalError> {
        if let Some(c) = cursor
            && let Some(since) = head_time(c)
        {
            j.seek_realtime_usec(since.max(self.oldest_usec(Time::now())))?;
            return Ok(Some(c.to_string()));
        }
        match cursor {
            Some(c) => {
                j.seek_cursor(c)?;
                // The entry of the cursor itself was read already: step
                // over it. When it is gone (vacuumed) or no longer matches,
                // the nearest later one was not read: seek again, so that
                // the next step lands on that one.
                let on_it = j.next_entry()? && j.test_cursor(c)?;
                if !on_it {
                    j.seek_cursor(c)?;
                }
                Ok(Some(c.to_string()))
            }
            None if start => {
                j.seek_head()?;
                Ok(None)
            }
            None => {
                j.seek_tail()?;
                // On the last entry: the next one is new.
                if j.previous_entry()? {
                    Ok(Some(j.cursor()?))
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn follow(&self, mut j: sys::Journal) -> Ended {
        let key = self.key();
        let (generation, resumed) = self.cursors.begin(&key);
        let first = resumed.is_none();
        let mut at = match self.position(&mut j, resumed.as_deref(), self.from_start) {
            Ok(at) => at,
            Err(e) => return e.into(),
        };
        tracing::info!(
            "[{}] {}: following{}{}",
            self.jail_name,
            self.cfg.label(),
            match (first, self.from_start) {
                (false, _) => " after the last entry read",
                (true, true) => " from its start",
                (true, false) => " from its end",
            },
            if self.matches.is_empty() {
                " (no journalmatch: every entry)".to_string()
            } else {
                format!(" ({})", self.matches)
            }
        );
        if first {
            // Where the first start stood is where the next one resumes:
            // entries written while the daemon is down are read then.
            let c = at.clone().unwrap_or_else(|| {
                let us = u64::try_from(Time::now().0).unwrap_or(0) * 1000;
                format!("{HEAD}@{us}")
            });
            self.cursors.mark(&key, generation, c.clone());
            // Files coming or going seek back to it, not to the head.
            at = Some(c);
            if !self.send(Vec::new()) {
                return Ended::Gone;
            }
        }
        loop {
            if self.stopped() {
                return Ended::Gone;
            }
            match self.read(&mut j, (&key, generation), &mut at) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return e,
            }
            match j.wait(WAIT) {
                Ok(sys::Change::Invalidate) => {
                    // Files came or went: back after the last entry read,
                    // which the journal's own position may no longer be.
                    if let Err(e) = self.position(&mut j, at.as_deref(), true) {
                        return e.into();
                    }
                }
                Ok(_) => {}
                Err(e) => return e.into(),
            }
        }
    }

    /// Reads up to [`ENTRIES_PER_WAKE`] entries; true when there may be
    /// more. Each batch is sent, then its last cursor marked.
    fn read(
        &self,
        j: &mut sys::Journal,
        key: (&CursorKey, cursor::Generation),
        at: &mut Option<String>,
    ) -> Result<bool, Ended> {
        let cx = FilterContext {
            tz: self.tz.clone(),
            now: Time::now(),
        };
        let mut batch = Vec::new();
        let (mut in_batch, mut read, mut at_end) = (0, 0, false);
        for _ in 0..ENTRIES_PER_WAKE {
            if !j.next_entry()? {
                at_end = true;
                break;
            }
            read += 1;
            self.read_entry(j, &cx, &mut batch);
            in_batch += 1;
            if in_batch == BATCH {
                self.flush(j, key, at, std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            self.flush(j, key, at, batch)?;
        }
        // Going idle: an empty batch after the last mark wakes the run
        // loop, which then commits it.
        if at_end && read > 0 && !self.send(Vec::new()) {
            return Err(Ended::Gone);
        }
        Ok(!at_end)
    }

    /// The current entry through the filter; one that cannot be read (a
    /// damaged file) or is too long is skipped, counted: reading it again
    /// would fail again.
    fn read_entry(&self, j: &mut sys::Journal, cx: &FilterContext, batch: &mut Vec<FailureEvent>) {
        // Older than findtime by the journal's own time (after a long
        // downtime): skipped before its fields are read, never sent.
        if j.realtime_usec()
            .is_ok_and(|us| us < self.oldest_usec(cx.now))
        {
            self.stats.lines.fetch_add(1, Ordering::Relaxed);
            self.stats.dates.too_old.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut fields = entry::Fields::default();
        let time = match j
            .for_each_field(|d| fields.take(d))
            .and_then(|()| j.realtime_usec())
        {
            Ok(us) => fields.time(us),
            Err(e) => return self.skipped(&format!("an entry cannot be read ({e})")),
        };
        if fields.overlong() {
            return self.skipped(&format!(
                "an entry's message is over {} KiB",
                MAX_LINE / 1024
            ));
        }
        let line = fields.line(|| j.monotonic_usec().unwrap_or(0));
        self.entry(&line, time, cx, batch);
    }

    /// Counts a skipped entry (`overlong` in status), warned about rarely.
    fn skipped(&self, why: &str) {
        let total = self.stats.overlong.fetch_add(1, Ordering::Relaxed) + 1;
        if rare(total, 1) {
            tracing::warn!(
                "[{}] {}: {why}; skipped ({total} entr(y/ies) skipped so far)",
                self.jail_name,
                self.cfg.label()
            );
        }
    }

    /// Sends `batch`, then marks the cursor it ends at. A stopped follower
    /// sends nothing more: its successor resumes after its last mark and
    /// reads the rest itself (a batch both sent would count twice). Once
    /// sent, a batch is always marked, so that it is not read again.
    fn flush(
        &self,
        j: &mut sys::Journal,
        (key, generation): (&CursorKey, cursor::Generation),
        at: &mut Option<String>,
        batch: Vec<FailureEvent>,
    ) -> Result<(), Ended> {
        let c = j.cursor()?;
        if self.stopped() || !self.send(batch) {
            return Err(Ended::Gone);
        }
        self.cursors.mark(key, generation, c.clone());
        *at = Some(c);
        Ok(())
    }

    /// Queues `batch`; false when the daemon has gone, or the follower was
    /// stopped while the queue was full (the batch is then not sent).
    /// Never blocks past a stop: whoever stopped it may be the one that
    /// drains the queue, waiting for this thread to leave.
    fn send(&self, mut batch: Vec<FailureEvent>) -> bool {
        use tokio::sync::mpsc::error::TrySendError;
        loop {
            match self.tx.try_send(batch) {
                Ok(()) => return true,
                Err(TrySendError::Closed(_)) => return false,
                Err(TrySendError::Full(b)) => {
                    if self.stopped() {
                        return false;
                    }
                    batch = b;
                    std::thread::sleep(SEND_RETRY);
                }
            }
        }
    }

    /// One entry's line through the filter, with the checks a file's lines
    /// get (addresses never a source, invalid UTF-8, dates out of the
    /// window).
    fn entry(&self, line: &[u8], time: Time, cx: &FilterContext, batch: &mut Vec<FailureEvent>) {
        self.stats.lines.fetch_add(1, Ordering::Relaxed);
        let Some(m) = self.filter.match_dated(line, cx, time) else {
            return;
        };
        if let Some(why) = crate::net::never_a_source_why(m.addr) {
            let total = self.stats.never_source.fetch_add(1, Ordering::Relaxed) + 1;
            if rare(total, 1) {
                tracing::warn!(
                    "[{}] {}: a matching entry names {}, {why}, never a packet's source ({total} so far); not counted",
                    self.jail_name,
                    self.cfg.label(),
                    m.addr
                );
            }
            return;
        }
        if std::str::from_utf8(line).is_err() {
            self.stats.non_utf8.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.matched.fetch_add(1, Ordering::Relaxed);
        let t = m.time.unwrap_or(time);
        match self.stats.dates.note_line(t, cx.now, &self.window) {
            Dated::TooOld { streak, age_ms } if rare(streak, 1) => tracing::info!(
                "[{}] {}: {streak} matching entr(y/ies) in a row older than findtime ({} ago, findtime {}); not counted",
                self.jail_name,
                self.cfg.label(),
                span(age_ms),
                span(self.window.findtime_ms())
            ),
            Dated::Ahead { total, ahead_ms } if rare(total, 1) => tracing::warn!(
                "[{}] {}: a matching entry is dated {} ahead of this host's clock; counted as now ({total} so far)",
                self.jail_name,
                self.cfg.label(),
                span(ahead_ms)
            ),
            _ => {}
        }
        batch.push(FailureEvent {
            time: t,
            jail: self.jail,
            addr: m.addr,
            kind: m.kind,
            scanner: m
                .user_agent
                .as_deref()
                .is_some_and(|ua| self.scanners.matches(ua)),
            user: m.user,
        });
    }
}

/// The group whose members read the whole system journal.
pub const JOURNAL_GROUP: &str = "systemd-journal";

/// Whether this process reads every journal entry as far as users and
/// groups go: root, or a member of [`JOURNAL_GROUP`] (others see only their
/// own entries). `None` when the group does not exist.
pub fn reads_whole_journal() -> Option<bool> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(true);
    }
    let name = std::ffi::CString::new(JOURNAL_GROUP).ok()?;
    // SAFETY: a NUL-terminated name; the entry returned (static storage,
    // or NULL) is read at once, before any other getgr* call.
    let gr = unsafe { libc::getgrnam(name.as_ptr()) };
    if gr.is_null() {
        return None;
    }
    // SAFETY: non-NULL, a valid group entry (see above).
    let gid = unsafe { (*gr).gr_gid };
    // SAFETY: getegid has no preconditions.
    if unsafe { libc::getegid() } == gid {
        return Some(true);
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: the buffer holds `groups.len()` entries.
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    let n = usize::try_from(n).ok()?;
    Some(groups[..n.min(groups.len())].contains(&gid))
}

/// Opens the journal of `cfg` with `matches` (`doctor`): whether any entry
/// is visible.
pub fn probe(cfg: &JournalConfig, matches: &JournalMatch) -> Result<bool, JournalError> {
    let mut j = open(cfg, matches)?;
    j.seek_tail()?;
    j.previous_entry()
}

/// The journal of `cfg`, its groups of matches ORed.
fn open(cfg: &JournalConfig, matches: &JournalMatch) -> Result<sys::Journal, JournalError> {
    let mut j = sys::Journal::open(&cfg.location, cfg.flags)?;
    for (n, group) in matches.groups.iter().enumerate() {
        if n > 0 {
            j.add_disjunction()?;
        }
        for term in group {
            j.add_match(term)?;
        }
    }
    Ok(j)
}

/// The paths of fail2ban's `journalfiles` (space-separated, as fail2ban
/// splits them).
pub fn split_files(text: &str) -> Vec<PathBuf> {
    text.split_whitespace().map(PathBuf::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{export_entry, need, write_journal};
    use std::path::Path;
    use std::time::Instant;
    use tokio::sync::mpsc::Receiver;

    fn now_us() -> u64 {
        Time::now().0 as u64 * 1000
    }

    /// An sshd entry from `addr`, dated now.
    fn sshd(addr: &str) -> String {
        export_entry(
            now_us(),
            &[
                "_HOSTNAME=belka",
                "_SYSTEMD_UNIT=ssh.service",
                "_COMM=sshd",
                "SYSLOG_IDENTIFIER=sshd",
                "_PID=31602",
                &format!(
                    "MESSAGE=Failed password for invalid user ROOT from {addr} port 50273 ssh2"
                ),
            ],
        )
    }

    fn source(dir: &Path, cursors: &Arc<Cursors>) -> (JournalSource, Receiver<Vec<FailureEvent>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let src = JournalSource {
            cfg: JournalConfig {
                location: Location::Directory(dir.to_path_buf()),
                flags: 0,
                matches: None,
            },
            matches: JournalMatch::parse("_SYSTEMD_UNIT=ssh.service + _COMM=sshd").unwrap(),
            jail: JailId(0),
            jail_name: "sshd".into(),
            filter: Arc::from(crate::filter::builtin("sshd", Default::default()).unwrap()),
            tz: TimeZone::UTC,
            window: Window::new(crate::duration::Duration(600)),
            from_start: false,
            tx,
            stop: Arc::new(AtomicBool::new(false)),
            scanners: Arc::new(ScannerList::new::<&str>(&[])),
            stats: Arc::new(FollowStats::default()),
            cursors: cursors.clone(),
        };
        (src, rx)
    }

    /// What the run loop does: events received, then the marks committed.
    fn addrs(rx: &mut Receiver<Vec<FailureEvent>>, cursors: &Cursors, want: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while Instant::now() < deadline {
            let marks = cursors.take();
            while let Ok(b) = rx.try_recv() {
                got.extend(b.iter().map(|e| e.addr.to_string()));
            }
            cursors.commit(&marks);
            if got.len() >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        got
    }

    /// fail2ban's own sshd filter (read with logtype=journal, as for a
    /// journal jail) matches a formatted entry with the entry's time.
    #[test]
    fn a_fail2ban_filter_reads_entries_with_their_time() {
        if !need("corpus") {
            return;
        }
        let base = crate::test_support::corpus_dir().join("fail2ban-1.1.2.dev1/config");
        let extra = [("logtype".to_string(), "journal".to_string())].into();
        let f = crate::filter::f2b::F2bFilter::load(&base, "sshd", &extra).unwrap();
        let cx = FilterContext {
            tz: TimeZone::UTC,
            now: Time::now(),
        };
        let t = Time(cx.now.0 - 5_000);
        let mut fields = entry::Fields::default();
        for d in [
            "_HOSTNAME=belka",
            "SYSLOG_IDENTIFIER=sshd",
            "_PID=31602",
            "MESSAGE=Failed password for invalid user ROOT from 194.117.26.69 port 50273 ssh2",
        ] {
            fields.take(d.as_bytes());
        }
        let m = f.match_dated(&fields.line(|| 0), &cx, t).unwrap();
        assert_eq!(m.addr.to_string(), "194.117.26.69");
        assert_eq!(m.time, Some(t));
        assert!(
            f.match_dated(
                b"belka sshd[1]: Server listening on 0.0.0.0 port 22.",
                &cx,
                t
            )
            .is_none()
        );
    }

    /// A journal with no entry at the first start: entries written while
    /// the daemon is down are read at the next start, none is lost.
    #[test]
    fn an_empty_journal_at_the_first_start_loses_nothing_later() {
        if !need("journal") {
            return;
        }
        let dir =
            std::env::temp_dir().join(format!("sw-journal-empty-first-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cursors = Arc::new(Cursors::default());
        let key = CursorKey {
            jail: "sshd".into(),
            source: format!("journal {}", dir.display()),
        };
        let (src, mut rx) = source(&dir, &cursors);
        let stop = src.stop.clone();
        let t = src.spawn(Arc::default()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while cursors.resume(&key).is_none() {
            assert!(
                Instant::now() < deadline,
                "the follower never opened the journal"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(addrs(&mut rx, &cursors, 0).is_empty());
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        write_journal(&dir.join("a.journal"), &sshd("192.0.2.9"));
        let (src, mut rx) = source(&dir, &cursors);
        let stop = src.stop.clone();
        let t = src.spawn(Arc::default()).unwrap();
        assert_eq!(addrs(&mut rx, &cursors, 1), ["192.0.2.9"]);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Follows from the end, reads appended entries, survives a rotation
    /// (a new file added, the old one removed), and a follower started
    /// again resumes after the last entry read: nothing lost, nothing read
    /// twice.
    #[test]
    fn follows_rotates_and_resumes() {
        if !need("journal") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("sw-journal-follow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.journal");
        // Before the first start: history, not read.
        write_journal(&a, &sshd("192.0.2.1"));
        write_journal(
            &a,
            &export_entry(now_us(), &["_COMM=cron", "MESSAGE=from 192.0.2.99"]),
        );
        let cursors = Arc::new(Cursors::default());
        let (src, mut rx) = source(&dir, &cursors);
        let (stop, stats) = (src.stop.clone(), src.stats.clone());
        let health = Arc::new(crate::supervise::Health::default());
        let t = src.spawn(health).unwrap();
        // The tail position is marked once the journal is open.
        let deadline = Instant::now() + Duration::from_secs(20);
        while cursors
            .resume(&CursorKey {
                jail: "sshd".into(),
                source: format!("journal {}", dir.display()),
            })
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "the follower never opened the journal"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        write_journal(&a, &(sshd("192.0.2.2") + &sshd("192.0.2.3")));
        assert_eq!(addrs(&mut rx, &cursors, 2), ["192.0.2.2", "192.0.2.3"]);
        // Rotation: a new file, the old one gone.
        write_journal(&dir.join("b.journal"), &sshd("192.0.2.4"));
        std::fs::remove_file(&a).unwrap();
        write_journal(&dir.join("b.journal"), &sshd("192.0.2.5"));
        assert_eq!(addrs(&mut rx, &cursors, 2), ["192.0.2.4", "192.0.2.5"]);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert_eq!(
            stats.lines.load(Ordering::Relaxed),
            4,
            "the cron entry is not matched"
        );
        // While stopped: one more entry; a new follower reads only it.
        write_journal(&dir.join("b.journal"), &sshd("192.0.2.6"));
        let (src, mut rx) = source(&dir, &cursors);
        let stop = src.stop.clone();
        let t = src.spawn(Arc::default()).unwrap();
        assert_eq!(addrs(&mut rx, &cursors, 1), ["192.0.2.6"]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(addrs(&mut rx, &cursors, 0).is_empty());
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Finding 3 (review of issue 19): the position kept for a journal
    /// with no entry of the jail's at its first start never makes a later
    /// start read the journal's whole history: it resumes within the
    /// jail's findtime, and an older entry is not sent.
    #[test]
    fn a_first_start_head_marker_never_reads_the_whole_history() {
        if !need("journal") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("sw-journal-head-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = CursorKey {
            jail: "sshd".into(),
            source: format!("journal {}", dir.display()),
        };
        let entry = |usec: u64, addr: &str| {
            export_entry(
                usec,
                &[
                    "_SYSTEMD_UNIT=ssh.service",
                    "SYSLOG_IDENTIFIER=sshd",
                    "_PID=1",
                    &format!("MESSAGE=Failed password for root from {addr} port 22 ssh2"),
                ],
            )
        };
        // Two hours ago (findtime is 10 minutes), then now.
        let old = now_us() - 7_200_000_000;
        write_journal(
            &dir.join("a.journal"),
            &(entry(old, "192.0.2.10") + &entry(now_us(), "192.0.2.11")),
        );
        // The marker as stored before (no time), then with its time (3 h ago).
        let three_h = now_us() - 10_800_000_000;
        for stored in ["head".to_string(), format!("head@{three_h}")] {
            let cursors = Arc::new(Cursors::new([(key.clone(), stored.clone())]));
            let (src, mut rx) = source(&dir, &cursors);
            let stop = src.stop.clone();
            let t = src.spawn(Arc::default()).unwrap();
            let got = addrs(&mut rx, &cursors, 1);
            std::thread::sleep(Duration::from_millis(300));
            let late = addrs(&mut rx, &cursors, 0);
            stop.store(true, Ordering::Relaxed);
            t.join().unwrap();
            assert_eq!(
                [got, late].concat(),
                ["192.0.2.11"],
                "stored {stored:?}: only the entry within findtime"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
