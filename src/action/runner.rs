//! Running actions' commands: `sh -c TEXT` with the `f2bV_*` values in the
//! environment, on a small fixed pool of threads beside the run loop, a
//! timeout each (the whole process group killed), failures logged and
//! counted.
//!
//! A jail's commands run in order on one lane (start, bans, unbans, stop),
//! as fail2ban runs a jail's actions on one thread; jails spread over
//! [`WORKERS`] lanes. Submitting never blocks: a full lane drops the job,
//! counted and logged, and the kernel ban it follows is already in force.

use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
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

/// Counters for status and metrics.
#[derive(Debug, Default)]
pub struct ActionStats {
    /// Commands started.
    pub run: AtomicU64,
    /// Commands that exited non-zero, could not start, or timed out.
    pub failed: AtomicU64,
    /// Commands killed at their timeout (counted in `failed` too).
    pub timed_out: AtomicU64,
    /// Jobs dropped: their jail's lane was full.
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
}

impl ActionStats {
    /// A snapshot.
    pub fn view(&self) -> ActionsView {
        ActionsView {
            run: self.run.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
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
/// full lane drops. `None` when the action has no such command.
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

/// The pool.
#[derive(Debug)]
pub struct Runner {
    lanes: Vec<SyncSender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Arc<ActionStats>,
}

impl Runner {
    /// Starts [`WORKERS`] threads.
    pub fn new(stats: Arc<ActionStats>) -> Runner {
        let mut lanes = Vec::new();
        let mut threads = Vec::new();
        for i in 0..WORKERS {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
            let stats = stats.clone();
            match std::thread::Builder::new()
                .name(format!("action-{i}"))
                .spawn(move || work(&rx, &stats))
            {
                Ok(h) => {
                    lanes.push(tx);
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

    /// Queues a job on `lane` (a jail's), never waiting.
    pub fn submit(&self, lane: usize, job: Job) {
        let Some(tx) = self.lanes.get(lane % self.lanes.len().max(1)) else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => {
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
    }

    /// Stops: what is queued still runs, waited for until `deadline` at
    /// most (commands still running then are left to finish on their own).
    pub fn finish(self, deadline: Instant) {
        drop(self.lanes);
        for h in self.threads {
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

fn work(rx: &Receiver<Job>, stats: &ActionStats) {
    while let Ok(job) = rx.recv() {
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
/// is killed whole at `timeout`.
pub fn run(c: &Command, timeout: Duration) -> Outcome {
    use std::os::unix::process::CommandExt;
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return Outcome::NoStart(e.to_string()),
    };
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
    let out = Arc::new(Mutex::new(Vec::new()));
    let keep = out.clone();
    let reading = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut o) = keep.lock() {
                let room = KEEP_OUTPUT.saturating_sub(o.len());
                o.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() >= timeout => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Outcome::Failed("cannot wait for it".into(), e.to_string()),
        }
    };
    let Some(status) = status else {
        let pgid = child.id() as libc::pid_t;
        // SAFETY: kill has no memory preconditions; the group is the
        // child's own (process_group(0)), not yet reaped, so its id is ours.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = child.wait();
        return Outcome::TimedOut;
    };
    // Output of processes the command left behind is not waited for.
    let until = Instant::now() + Duration::from_millis(200);
    while !reading.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    if status.success() {
        return Outcome::Ok;
    }
    let text = out
        .lock()
        .map(|o| String::from_utf8_lossy(&o).into_owned())
        .unwrap_or_default();
    Outcome::Failed(status.to_string(), text)
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
}
