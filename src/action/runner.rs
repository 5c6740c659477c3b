//! Running actions' commands: `sh -c TEXT` with the `f2bV_*` values in the
//! environment, on a small fixed pool of threads beside the run loop, a
//! timeout each (the whole process group killed), failures logged and
//! counted.
//!
//! A jail's commands run in order on one lane (start, bans, unbans, stop),
//! as fail2ban runs a jail's actions on one thread; jails spread over
//! [`WORKERS`] lanes. Submitting never blocks: a full lane sheds bans,
//! counted and logged (the kernel ban each follows is already in force),
//! but never an unban, flush, start or stop: a remote block whose unban
//! were dropped would stay forever.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::load::{Command, Phase};
use crate::event::escape_text;

/// Threads that run commands: at most this many commands at once.
pub const WORKERS: usize = 4;
/// Jobs waiting per lane before new ones are dropped.
pub const QUEUE: usize = 256;
/// Output kept from a command, for the log line when it fails.
const KEEP_OUTPUT: usize = 4096;
/// How long processes a command left behind may keep its output open
/// after `sh` exited, before its process group is killed.
const LINGER: Duration = Duration::from_millis(200);

/// Counters for status and metrics.
#[derive(Debug, Default)]
pub struct ActionStats {
    /// Commands started.
    pub run: AtomicU64,
    /// Commands that exited non-zero, could not start, or timed out.
    pub failed: AtomicU64,
    /// Commands killed at their timeout (counted in `failed` too).
    pub timed_out: AtomicU64,
    /// Ban jobs dropped: their jail's lane was full.
    pub dropped: AtomicU64,
}

/// The counters as `status` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionsView {
    /// Commands started.
    pub run: u64,
    /// Commands that failed (non-zero exit, no start, timeout).
    pub failed: u64,
    /// Commands killed at their timeout.
    pub timed_out: u64,
    /// Jobs dropped.
    pub dropped: u64,
    /// Notifications (`notify`), by kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<crate::notify::CountsView>,
}

impl ActionStats {
    /// A snapshot.
    pub fn view(&self) -> ActionsView {
        ActionsView {
            run: self.run.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            notify: Vec::new(),
        }
    }
}

/// One step of a job.
#[derive(Clone, Debug)]
pub struct Step {
    /// Which command.
    pub phase: Phase,
    /// What runs.
    pub command: Command,
}

/// The commands of one job: `actioncheck` before the main command, and
/// `actionrepair` when the check fails (fail2ban's order).
#[derive(Clone, Debug)]
pub struct Steps {
    /// `actioncheck`.
    pub check: Option<Step>,
    /// `actionrepair`.
    pub repair: Option<Step>,
    /// The command itself.
    pub main: Step,
}

/// Builds a job's commands, on the worker's thread: the substitution's
/// string work stays off the run loop, and is never done for a job that a
/// full lane drops. `None` when the action has no such command; a job that
/// is no command (a notification) does its work here and returns `None`.
pub type Build = Box<dyn FnOnce() -> Option<Steps> + Send>;

/// What one action does for one ban, unban, start or stop.
pub struct Job {
    /// The jail, for logs.
    pub jail: Arc<str>,
    /// The action's name, for logs.
    pub action: Arc<str>,
    /// The address, for logs (empty for start and stop).
    pub addr: String,
    /// Which command, for logs.
    pub phase: Phase,
    /// How long each command may run.
    pub timeout: Duration,
    /// Its commands.
    pub build: Build,
}

/// How one command ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Ok,
    /// A non-zero exit or a signal, with what it wrote.
    Failed(String, String),
    /// Killed at the timeout.
    TimedOut,
    /// `sh` could not be started.
    NoStart(String),
}

/// One lane's queue: jobs in order, and whether it takes no more.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// One lane: its queue and the worker's wake-up.
#[derive(Default)]
struct Lane {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lane")
    }
}

impl Lane {
    fn close(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.closed = true;
        }
        self.ready.notify_all();
    }

    /// The next job, waiting for one; `None` once closed and empty.
    fn next(&self) -> Option<Job> {
        let mut q = self.queue.lock().ok()?;
        loop {
            if let Some(j) = q.jobs.pop_front() {
                return Some(j);
            }
            if q.closed {
                return None;
            }
            q = self.ready.wait(q).ok()?;
        }
    }
}

/// The pool.
#[derive(Debug)]
pub struct Runner {
    lanes: Vec<Arc<Lane>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Arc<ActionStats>,
}

impl Runner {
    /// Starts [`WORKERS`] threads.
    pub fn new(stats: Arc<ActionStats>) -> Runner {
        let mut lanes = Vec::new();
        let mut threads = Vec::new();
        for i in 0..WORKERS {
            let lane = Arc::new(Lane::default());
            let (mine, stats) = (lane.clone(), stats.clone());
            match std::thread::Builder::new()
                .name(format!("action-{i}"))
                .spawn(move || work(&mine, &stats))
            {
                Ok(h) => {
                    lanes.push(lane);
                    threads.push(h);
                }
                Err(e) => tracing::error!("cannot start an action thread: {e}"),
            }
        }
        Runner {
            lanes,
            threads,
            stats,
        }
    }

    /// Queues a job on `lane` (a jail's), never waiting. On a full lane a
    /// ban is dropped: the new one, or for any other job the oldest queued
    /// (only a lane full of unbans and stops grows past [`QUEUE`], by at
    /// most one per ban that ran).
    pub fn submit(&self, lane: usize, job: Job) {
        let Some(l) = self.lanes.get(lane % self.lanes.len().max(1)) else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let dropped = {
            let Ok(mut q) = l.queue.lock() else {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if q.jobs.len() < QUEUE {
                q.jobs.push_back(job);
                None
            } else if job.phase == Phase::Ban {
                Some(job)
            } else {
                let oldest_ban = q.jobs.iter().position(|j| j.phase == Phase::Ban);
                q.jobs.push_back(job);
                oldest_ban.and_then(|i| q.jobs.remove(i))
            }
        };
        l.ready.notify_one();
        if let Some(j) = dropped {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if crate::source::rare(n, 1) {
                tracing::warn!(
                    "[{}] action {} {} for {} dropped: {QUEUE} commands already wait ({n} dropped so far)",
                    j.jail,
                    j.action,
                    j.phase.key(),
                    j.addr
                );
            }
        }
    }

    /// Stops: what is queued still runs, waited for until `deadline` at
    /// most (commands still running then are left to finish on their own).
    pub fn finish(mut self, deadline: Instant) {
        for l in &self.lanes {
            l.close();
        }
        for h in std::mem::take(&mut self.threads) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                tracing::warn!("actions still running at stop were left behind");
                return;
            }
        }
    }
}

impl Drop for Runner {
    /// The threads end once their queues are empty.
    fn drop(&mut self) {
        for l in &self.lanes {
            l.close();
        }
    }
}

fn work(lane: &Lane, stats: &ActionStats) {
    while let Some(job) = lane.next() {
        let Job {
            jail,
            action,
            addr,
            phase,
            timeout,
            build,
        } = job;
        let label = Label {
            jail: &jail,
            action: &action,
            addr: &addr,
            timeout,
        };
        // A panic in one job must not end the lane.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Some(steps) = build() {
                run_job(&label, &steps, stats);
            }
        }));
        if let Err(p) = r {
            tracing::error!(
                "[{jail}] action {action} {} panicked: {}",
                phase.key(),
                crate::supervise::panic_message(p.as_ref())
            );
        }
    }
}

/// What a job's log lines name.
struct Label<'a> {
    jail: &'a str,
    action: &'a str,
    addr: &'a str,
    timeout: Duration,
}

/// Runs one step and logs how it ended; true when it succeeded.
fn step(job: &Label<'_>, s: &Step, stats: &ActionStats) -> bool {
    stats.run.fetch_add(1, Ordering::Relaxed);
    let what = if job.addr.is_empty() {
        String::new()
    } else {
        format!(" for {}", job.addr)
    };
    let fail = |why: String| {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "[{}] action {} {}{what} failed: {why}",
            job.jail,
            job.action,
            s.phase.key()
        );
        false
    };
    match run(&s.command, job.timeout) {
        Outcome::Ok => {
            tracing::debug!(
                "[{}] action {} {}{what} done",
                job.jail,
                job.action,
                s.phase.key()
            );
            true
        }
        Outcome::Failed(status, out) => fail(format!("{status}: {}", escape_text(out.trim(), 500))),
        Outcome::TimedOut => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            fail(format!(
                "still running after {} s, killed (its timeout)",
                job.timeout.as_secs()
            ))
        }
        Outcome::NoStart(e) => fail(format!("cannot start sh: {e}")),
    }
}

fn run_job(job: &Label<'_>, steps: &Steps, stats: &ActionStats) {
    if let Some(check) = &steps.check {
        if !step(job, check, stats) {
            let repaired = steps
                .repair
                .as_ref()
                .is_some_and(|r| step(job, r, stats) && step(job, check, stats));
            if !repaired {
                return;
            }
        }
    }
    step(job, &steps.main, stats);
}

/// Runs `sh -c TEXT` with the command's variables added to the daemon's
/// environment, stdin from /dev/null, in a process group of its own that
/// is killed whole at `timeout`, or [`LINGER`] after `sh` exited when
/// processes it left behind still hold its output. Its output is read on
/// this thread, under the same deadline.
pub fn run(c: &Command, timeout: Duration) -> Outcome {
    use std::os::unix::process::CommandExt;
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return Outcome::NoStart(e.to_string()),
    };
    // SAFETY: fcntl on a descriptor this function owns; no memory is passed.
    let nonblocking = unsafe {
        let fd = reader.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !nonblocking {
        return Outcome::NoStart(std::io::Error::last_os_error().to_string());
    }
    let stdout = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return Outcome::NoStart(e.to_string()),
    };
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&c.text)
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        // The service manager's channels are the daemon's, not its commands'.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_PID")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(writer)
        .process_group(0);
    let spawned = cmd.spawn();
    // Our copies of the pipe's write end go with the builder, so the
    // reader sees its end when the command's processes close theirs.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Outcome::NoStart(e.to_string()),
    };
    let pid = child.id() as libc::pid_t;
    // `sh` is not reaped until the end, so the group's id stays its own.
    let kill_group = || {
        // SAFETY: kill has no memory preconditions; the group is the
        // child's own (process_group(0)) and the child is not yet reaped.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    };
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut open = true;
    let mut exited: Option<Instant> = None;
    loop {
        if open {
            open = drain(&mut reader, &mut out);
        }
        if exited.is_none() {
            match sh_exited(pid) {
                Ok(true) => exited = Some(Instant::now()),
                Ok(false) => {}
                Err(e) => {
                    kill_group();
                    let _ = child.wait();
                    return Outcome::Failed("cannot wait for it".into(), e.to_string());
                }
            }
        }
        let now = Instant::now();
        match exited {
            Some(_) if !open => break,
            Some(at) if now >= at + LINGER => {
                // Left behind holding the output: not ours to keep.
                kill_group();
                break;
            }
            Some(_) => {}
            None if now >= deadline => {
                kill_group();
                let _ = child.wait();
                return Outcome::TimedOut;
            }
            None => {}
        }
        if open {
            let mut p = libc::pollfd {
                fd: reader.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the call's length.
            unsafe {
                libc::poll(&mut p, 1, 10);
            }
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return Outcome::Failed("cannot wait for it".into(), e.to_string()),
    };
    if status.success() {
        return Outcome::Ok;
    }
    Outcome::Failed(
        status.to_string(),
        String::from_utf8_lossy(&out).into_owned(),
    )
}

/// Reads what is there (keeping up to [`KEEP_OUTPUT`]); false at the end
/// of the output.
fn drain(reader: &mut std::io::PipeReader, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let room = KEEP_OUTPUT.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Whether `sh` exited, without reaping it (its id stays reserved).
fn sh_exited(pid: libc::pid_t) -> std::io::Result<bool> {
    // SAFETY: all zeroes is a valid siginfo_t (plain integers).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`, which outlives the call;
    // WNOWAIT leaves the child to be reaped by `Child::wait`.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` (or left it zeroed: not exited).
    Ok(unsafe { info.si_pid() } != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(text: &str, env: &[(&str, &str)]) -> Command {
        Command {
            text: text.into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn values_in_the_environment_arrive_intact_and_inert() {
        let dir = std::env::temp_dir().join(format!("sipwarden-runner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pwned = dir.join("pwned");
        let hostile = format!(
            "$(touch {p})`touch {p}`;touch {p}|touch {p}&&touch {p}'\"\n${{IFS}}*",
            p = pwned.display()
        );
        let out = dir.join("out");
        let c = cmd(
            &format!("printf '%s' \"${{f2bV_F_USER}}\" > {}", out.display()),
            &[("f2bV_F_USER", &hostile)],
        );
        assert_eq!(run(&c, Duration::from_secs(10)), Outcome::Ok);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), hostile);
        assert!(!pwned.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failures_say_why_and_timeouts_kill_the_group() {
        match run(
            &cmd("echo no such >&2; exit 3", &[]),
            Duration::from_secs(10),
        ) {
            Outcome::Failed(status, out) => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(out.trim(), "no such");
            }
            o => panic!("{o:?}"),
        }
        let dir = std::env::temp_dir().join(format!("sipwarden-runner-t-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        // A grandchild in the group: killed with it.
        let c = cmd(
            &format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
            &[],
        );
        assert_eq!(run(&c, Duration::from_millis(500)), Outcome::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut gone = false;
        for _ in 0..200 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for init.
            if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone, "the grandchild {pid} survived the timeout");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_lane_drops_and_counts() {
        let stats = Arc::new(ActionStats::default());
        let r = Runner::new(stats.clone());
        let job = |text: &str| {
            let command = cmd(text, &[]);
            Job {
                jail: "j".into(),
                action: "a".into(),
                addr: "192.0.2.1".into(),
                phase: Phase::Ban,
                timeout: Duration::from_secs(5),
                build: Box::new(move || {
                    Some(Steps {
                        check: None,
                        repair: None,
                        main: Step {
                            phase: Phase::Ban,
                            command,
                        },
                    })
                }),
            }
        };
        // One slow job holds the lane; QUEUE wait; the rest are dropped.
        r.submit(0, job("sleep 1"));
        for _ in 0..QUEUE + 10 {
            r.submit(0, job("true"));
        }
        assert!(stats.dropped.load(Ordering::Relaxed) >= 10);
        r.finish(Instant::now() + Duration::from_secs(10));
        let v = stats.view();
        assert_eq!(v.run + v.dropped, QUEUE as u64 + 11, "{v:?}");
        assert_eq!(v.failed, 0);
    }
    /// A process the command leaves behind holding its output is killed
    /// with the group, soon after `sh` exits, and the run returns.
    #[test]
    fn a_process_left_holding_the_output_is_killed() {
        let dir = std::env::temp_dir().join(format!("sipwarden-runner-bg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let c = cmd(&format!("sleep 30 & echo $! > {}", pidfile.display()), &[]);
        let o = run(&c, Duration::from_secs(20));
        assert_eq!(o, Outcome::Ok);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut gone = false;
        for _ in 0..300 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !gone {
            // SAFETY: kill has no memory preconditions; only the test's
            // own leftover sleep is signalled.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        assert!(
            gone,
            "the background process {pid} holding the output survived"
        );
    }

    /// A full lane sheds bans, never an unban, flush or stop.
    #[test]
    fn a_full_lane_keeps_unbans() {
        let dir =
            std::env::temp_dir().join(format!("sipwarden-runner-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let stats = Arc::new(ActionStats::default());
        let r = Runner::new(stats.clone());
        let job = |phase: Phase, text: &str| {
            let command = cmd(text, &[]);
            Job {
                jail: "j".into(),
                action: "a".into(),
                addr: "192.0.2.1".into(),
                phase,
                timeout: Duration::from_secs(5),
                build: Box::new(move || {
                    Some(Steps {
                        check: None,
                        repair: None,
                        main: Step { phase, command },
                    })
                }),
            }
        };
        r.submit(0, job(Phase::Ban, "sleep 1"));
        for _ in 0..QUEUE + 10 {
            r.submit(0, job(Phase::Ban, "true"));
        }
        for (p, name) in [
            (Phase::Unban, "unban"),
            (Phase::Flush, "flush"),
            (Phase::Stop, "stop"),
        ] {
            r.submit(0, job(p, &format!("touch {}/{name}", dir.display())));
        }
        r.finish(Instant::now() + Duration::from_secs(20));
        let kept: Vec<bool> = ["unban", "flush", "stop"]
            .iter()
            .map(|n| dir.join(n).exists())
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(kept, [true, true, true]);
        assert!(stats.view().dropped >= 10);
    }
}
