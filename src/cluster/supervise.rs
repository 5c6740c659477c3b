//! Keeping the cluster's tasks alive: a session that ends, errs or panics
//! is started again after a backoff with jitter, and its health (up or
//! not, why, how many restarts) is what `status` and `/metrics` show.
//!
//! A task's state lives outside its sessions (the writer's queue, the
//! reader's place in the stream), so a restart resumes where the last
//! session stopped, even after a panic.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

/// First pause after a failed session.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between sessions.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A session that stayed up this long starts the backoff over.
const STABLE: Duration = Duration::from_secs(30);

/// The pause before attempt `n` (0-based) of a failing task: doubled each
/// time up to [`BACKOFF_MAX`], then a random part of its upper half cut
/// off, so a fleet that lost Redis at once does not come back in step.
pub fn backoff(n: u32, random: u64) -> Duration {
    let full = BACKOFF_FIRST
        .saturating_mul(1u32 << n.min(16))
        .min(BACKOFF_MAX);
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
fn one_line(text: &str, max: usize) -> String {
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

/// One task's health, shared with `status`.
#[derive(Debug, Default)]
pub struct Health {
    up: AtomicBool,
    restarts: AtomicU64,
    error: Mutex<Option<String>>,
}

/// A task's health, for `status` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// `writer` or `reader`.
    pub name: String,
    /// Whether it is doing its work right now.
    pub up: bool,
    /// Sessions started again after one ended, erred or panicked.
    pub restarts: u64,
    /// Why it is not up (or the last thing that went wrong).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Health {
    /// The session works: connected, and doing its job.
    pub fn set_up(&self) {
        self.up.store(true, Ordering::Relaxed);
        self.set_error(None);
    }

    /// The session cannot do its job right now (it may go on trying).
    pub fn set_down(&self, why: &str) {
        self.up.store(false, Ordering::Relaxed);
        self.set_error(Some(why.to_string()));
    }

    /// Whether the task is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
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
            restarts: self.restarts.load(Ordering::Relaxed),
            error: self.error(),
        }
    }
}

/// A task the supervisor keeps running.
pub trait Task: Send {
    /// Its name in logs and status.
    const NAME: &'static str;

    /// One session: connect and work until something breaks. `Ok(())`
    /// means the daemon is stopping (its channel closed): not restarted.
    fn session(&mut self) -> impl Future<Output = Result<(), String>> + Send;

    /// The pause between sessions (the writer keeps taking work meanwhile).
    fn pause(&mut self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }

    /// What goes on meanwhile, for the log (the writer's queue).
    fn meanwhile(&self) -> String {
        String::new()
    }
}

/// Runs `task` for as long as the daemon runs: every session that errs or
/// panics is logged, shown in `health`, and followed by another after a
/// backoff with jitter.
pub async fn supervise<T: Task>(mut task: T, health: std::sync::Arc<Health>, target: String) {
    let mut attempt = 0u32;
    let mut last_logged: Option<String> = None;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = AssertUnwindSafe(task.session()).catch_unwind().await;
        let was_up = health.is_up();
        let why = match outcome {
            Ok(Ok(())) => {
                health.up.store(false, Ordering::Relaxed);
                return;
            }
            Ok(Err(e)) => format!("redis unreachable or refusing: {e}"),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                format!("the {} task panicked ({msg}); restarted", T::NAME)
            }
        };
        // Errors can hold what the server sent (and line breaks): one
        // escaped line.
        let why = one_line(&why, 600);
        health.set_down(&why);
        health.restarts.fetch_add(1, Ordering::Relaxed);
        if was_up && started.elapsed() >= STABLE {
            attempt = 0;
        }
        let wait = backoff(attempt, random());
        // Logged when the reason changes, when the link was up, and then
        // at growing intervals (each doubling of the attempt count).
        if was_up || last_logged.as_deref() != Some(why.as_str()) || attempt.is_power_of_two() {
            tracing::warn!(
                "cluster: {} ({target}): {why}{}; again in {} ms (attempt {})",
                T::NAME,
                task.meanwhile(),
                wait.as_millis(),
                attempt + 1
            );
            last_logged = Some(why);
        }
        task.pause(wait).await;
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
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
        // Two nodes are not in step.
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(5, random())).collect();
        assert!(spread.len() > 1);
    }

    /// A task that errs twice, panics once, then stops.
    struct Flaky {
        calls: Arc<AtomicU32>,
    }

    impl Task for Flaky {
        const NAME: &'static str = "flaky";
        async fn session(&mut self) -> Result<(), String> {
            match self.calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("refused".into()),
                2 => panic!("boom"),
                _ => Ok(()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn errors_and_panics_are_restarted_with_backoff() {
        let calls = Arc::new(AtomicU32::new(0));
        let health = Arc::new(Health::default());
        let t0 = tokio::time::Instant::now();
        supervise(
            Flaky {
                calls: calls.clone(),
            },
            health.clone(),
            "test".into(),
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let v = health.view("flaky");
        assert_eq!(v.restarts, 3);
        assert!(!v.up);
        assert!(v.error.unwrap().contains("panicked (boom)"));
        // Three pauses: at least 125 + 250 + 500 ms of virtual time.
        assert!(
            t0.elapsed() >= Duration::from_millis(875),
            "{:?}",
            t0.elapsed()
        );
    }
}
