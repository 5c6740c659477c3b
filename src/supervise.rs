//! Keeping background work alive: every thread and task the daemon starts
//! (followers, wire sensors, Event Socket clients, feeds, the store writer,
//! the fleet link) runs under a supervisor. A body that panics is caught,
//! logged with its message, shown in `status` and `/metrics`, and started
//! again after a backoff with jitter; a body that returns has finished (the
//! daemon is stopping) and is not restarted. No retry loop runs without a
//! pause.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

/// First pause after a failed run.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between runs.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A run that stayed up this long starts the backoff over.
pub const STABLE: Duration = Duration::from_secs(30);

/// The pause before attempt `n` (0-based) of a failing task: doubled each
/// time up to [`BACKOFF_MAX`], then a random part of its upper half cut
/// off, so tasks (or nodes) that failed together do not come back in step.
pub fn backoff(n: u32, random: u64) -> Duration {
    backoff_upto(n, random, BACKOFF_MAX)
}

/// [`backoff`] with another ceiling than [`BACKOFF_MAX`] (the fleet link
/// retries sooner: a reconnection costs the server little, and every
/// second away is a second the node's bans do not spread).
pub fn backoff_upto(n: u32, random: u64, max: Duration) -> Duration {
    let full = BACKOFF_FIRST.saturating_mul(1u32 << n.min(16)).min(max);
    let half = full / 2;
    let ms = half.as_millis() as u64;
    half + Duration::from_millis(if ms == 0 { 0 } else { random % (ms + 1) })
}

/// A random number from the standard library's per-process hash keys
/// (jitter needs no more).
pub fn random() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// `text` on one line: control characters escaped, cut at `max` chars.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What a panic said, when it said something.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// One task's health, shared with `status` and `/metrics`.
#[derive(Debug, Default)]
pub struct Health {
    up: AtomicBool,
    restarts: AtomicU64,
    error: Mutex<Option<String>>,
}

/// A task's health, for `status` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// What the task is (`store`, `follower /var/log/x.log`, `writer`, ...).
    pub name: String,
    /// Whether it is running its work right now.
    pub up: bool,
    /// Runs started again after one ended in error or panicked.
    pub restarts: u64,
    /// Why it is not up (or the last thing that went wrong).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Health {
    /// The task works.
    pub fn set_up(&self) {
        self.up.store(true, Ordering::Relaxed);
        self.set_error(None);
    }

    /// The task cannot do its work right now (it may go on trying).
    pub fn set_down(&self, why: &str) {
        self.up.store(false, Ordering::Relaxed);
        self.set_error(Some(why.to_string()));
    }

    /// The task finished for good (the daemon is stopping).
    pub fn set_stopped(&self) {
        self.up.store(false, Ordering::Relaxed);
    }

    /// The task failed with `why` and is started again.
    pub fn note_restart(&self, why: &str) {
        self.set_down(why);
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the task is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Runs started again so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// The last error.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|g| g.clone())
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.error.lock() {
            *g = e;
        }
    }

    /// For `status`.
    pub fn view(&self, name: &str) -> TaskView {
        TaskView {
            name: name.to_string(),
            up: self.is_up(),
            restarts: self.restarts(),
            error: self.error(),
        }
    }
}

/// Every supervised task of the daemon, by name, for `status` and
/// `/metrics`. Tasks that finished for good are dropped by `forget`.
#[derive(Clone, Debug, Default)]
pub struct Tasks(Arc<Mutex<Vec<Listed>>>);

/// A task's name and health, as [`Tasks`] lists them.
type Listed = (String, Arc<Health>);

impl Tasks {
    /// A new task's health, listed under `name`.
    pub fn register(&self, name: &str) -> Arc<Health> {
        let h = Arc::new(Health::default());
        if let Ok(mut v) = self.0.lock() {
            v.push((name.to_string(), h.clone()));
        }
        h
    }

    /// Stops listing `health` (its task was stopped on purpose).
    pub fn forget(&self, health: &Arc<Health>) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|(_, h)| !Arc::ptr_eq(h, health));
        }
    }

    /// Every task's view, in the order they were started.
    pub fn views(&self) -> Vec<TaskView> {
        self.0
            .lock()
            .map(|v| v.iter().map(|(n, h)| h.view(n)).collect())
            .unwrap_or_default()
    }
}

/// Runs `body` on this thread until it returns, starting it again after a
/// panic (logged, shown in `health`) with a backoff and jitter. `stopped`
/// ends the waiting early when the daemon stops.
pub fn run_thread(name: &str, health: &Health, stopped: &dyn Fn() -> bool, mut body: impl FnMut()) {
    let mut attempt = 0u32;
    loop {
        health.set_up();
        let started = std::time::Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(&mut body)) {
            Ok(()) => {
                health.set_stopped();
                return;
            }
            Err(p) => {
                let why = one_line(&format!("panicked: {}", panic_message(p.as_ref())), 600);
                health.note_restart(&why);
                if started.elapsed() >= STABLE {
                    attempt = 0;
                }
                let wait = backoff(attempt, random());
                tracing::error!("{name}: {why}; started again in {} ms", wait.as_millis());
                // Sleep in short steps so a stop is not held up.
                let until = std::time::Instant::now() + wait;
                while std::time::Instant::now() < until {
                    if stopped() {
                        health.set_stopped();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50).min(wait));
                }
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Spawns a tokio task that runs the future `make` builds until one
/// returns, building and running another after a panic (logged, shown in
/// `health`) with a backoff and jitter. Aborting the returned handle stops
/// it.
pub fn spawn_task<F, Fut>(
    name: String,
    health: Arc<Health>,
    mut make: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            health.set_up();
            let started = tokio::time::Instant::now();
            match AssertUnwindSafe(make()).catch_unwind().await {
                Ok(()) => {
                    health.set_stopped();
                    return;
                }
                Err(p) => {
                    let why = one_line(&format!("panicked: {}", panic_message(p.as_ref())), 600);
                    health.note_restart(&why);
                    if started.elapsed() >= STABLE {
                        attempt = 0;
                    }
                    let wait = backoff(attempt, random());
                    tracing::error!("{name}: {why}; started again in {} ms", wait.as_millis());
                    tokio::time::sleep(wait).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    })
}

/// A fault injected on purpose, once per process, where `point` is named in
/// `SIPWARDEN_FAULT` (comma-separated: `esl`, `ami`, `follower`, `feed`, `store`,
/// `enforcer`). Only in
/// debug builds, for the tests that show a task is supervised; a release
/// build never reads the variable.
pub fn inject_fault(point: &'static str) {
    #[cfg(debug_assertions)]
    {
        static FIRED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
        let asked =
            std::env::var("SIPWARDEN_FAULT").is_ok_and(|v| v.split(',').any(|p| p.trim() == point));
        if !asked {
            return;
        }
        let first = FIRED.lock().is_ok_and(|mut f| {
            let first = !f.contains(&point);
            f.push(point);
            first
        });
        if first {
            panic!("fault injected at {point} (SIPWARDEN_FAULT)");
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn reasons_are_one_line() {
        assert_eq!(
            one_line("Parse error at 1\nUnexpected `169`\r\n", 100),
            "Parse error at 1\\nUnexpected `169`\\r\\n"
        );
        assert_eq!(one_line("\"é\" abc", 3), "\"é\"…");
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter_in_the_upper_half() {
        assert_eq!(backoff(0, 0), BACKOFF_FIRST / 2);
        assert_eq!(backoff(0, 125), BACKOFF_FIRST);
        assert!(backoff(0, u64::MAX) <= BACKOFF_FIRST);
        assert_eq!(backoff(2, 0), BACKOFF_FIRST * 2);
        for n in [6, 7, 40, u32::MAX] {
            for r in [0, 1, 12345, u64::MAX] {
                let d = backoff(n, r);
                assert!(d >= BACKOFF_MAX / 2 && d <= BACKOFF_MAX, "{n} {r}: {d:?}");
            }
        }
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(5, random())).collect();
        assert!(spread.len() > 1);
        // Another ceiling: reached sooner, never passed, same jitter.
        let max = Duration::from_secs(1);
        assert_eq!(backoff_upto(1, 0, max), backoff(1, 0));
        for n in [3, 4, 40, u32::MAX] {
            for r in [0, 1, 12345, u64::MAX] {
                let d = backoff_upto(n, r, max);
                assert!(d >= max / 2 && d <= max, "{n} {r}: {d:?}");
            }
        }
    }

    #[test]
    fn a_thread_body_that_panics_is_started_again_and_shown() {
        let calls = AtomicU32::new(0);
        let tasks = Tasks::default();
        let h = tasks.register("follower x");
        run_thread("follower x", &h, &|| false, || {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("boom {}", 7);
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let v = &tasks.views()[0];
        assert_eq!(v.name, "follower x");
        assert_eq!(v.restarts, 2);
        assert!(!v.up, "finished");
        assert_eq!(v.error, None, "the last run went well");
        tasks.forget(&h);
        assert!(tasks.views().is_empty());
    }

    #[test]
    fn a_stop_ends_the_wait_between_runs() {
        let h = Health::default();
        let calls = AtomicU32::new(0);
        run_thread("t", &h, &|| true, || {
            calls.fetch_add(1, Ordering::SeqCst);
            panic!("always");
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(h.restarts(), 1);
        assert_eq!(h.error().as_deref(), Some("panicked: always"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_built_again_after_a_pause() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = Arc::new(Health::default());
        let c = calls.clone();
        let t0 = tokio::time::Instant::now();
        spawn_task("esl x".into(), h.clone(), move || {
            let c = c.clone();
            async move {
                if c.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("bad frame");
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(h.restarts(), 2);
        // Two pauses: at least the two shortest backoffs.
        assert!(t0.elapsed() >= BACKOFF_FIRST / 2 + BACKOFF_FIRST);
    }
}
