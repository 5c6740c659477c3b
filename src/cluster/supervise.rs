//! Keeping the cluster's tasks alive: a session that ends, errs or panics
//! is started again after a backoff with jitter, and its health (up or
//! not, why, how many restarts) is what `status` and `/metrics` show.
//!
//! A task's state lives outside its sessions (the writer's queue, the
//! reader's place in the stream), so a restart resumes where the last
//! session stopped, even after a panic.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use super::HostPort;
use super::link::{Failure, OpenError};
use crate::supervise::{BACKOFF_MAX, STABLE, backoff_upto, one_line};
pub use crate::supervise::{Health, TaskView, backoff, random};

/// The longest pause after an attempt to reach Redis that did not connect.
/// Lower than the daemon's other tasks' (10 s): a node waiting out a long
/// backoff after Redis came back neither publishes nor re-asserts its
/// bans, and a refused connection costs the server almost nothing. A
/// session that connected and then failed waits up to the usual 10 s: each
/// new session reads every ban key, which would cost Redis dearly from a
/// whole fleet every second.
pub const LINK_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why a session of a cluster task ended before the daemon stopped: it is
/// started again after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No connection to the master (the configured server, or none the
    /// sentinels named).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The connection to the master broke, or it is no longer the master.
    #[error("redis {server}: {failure}")]
    Lost {
        /// The master the session was connected to.
        server: HostPort,
        /// What happened.
        failure: Failure,
    },
}

/// A task the supervisor keeps running.
pub trait Task: Send {
    /// Its name in logs and status.
    const NAME: &'static str;

    /// One session: connect and work until something breaks. `Ok(())`
    /// means the daemon is stopping (its channel closed): not restarted.
    fn session(&mut self) -> impl Future<Output = Result<(), SessionError>> + Send;

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
        let never_connected = matches!(outcome, Ok(Err(SessionError::Open(_))));
        let was_up = health.is_up();
        let why = match outcome {
            Ok(Ok(())) => {
                health.set_stopped();
                return;
            }
            Ok(Err(e)) => format!("redis unreachable or refusing: {e}"),
            Err(panic) => format!(
                "the {} task panicked ({}); restarted",
                T::NAME,
                crate::supervise::panic_message(panic.as_ref())
            ),
        };
        // Errors can hold what the server sent (and line breaks): one
        // escaped line.
        let why = one_line(&why, 600);
        health.note_restart(&why);
        if was_up && started.elapsed() >= STABLE {
            attempt = 0;
        }
        let max = if never_connected {
            LINK_BACKOFF_MAX
        } else {
            BACKOFF_MAX
        };
        let wait = backoff_upto(attempt, random(), max);
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
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A task that errs twice, panics once, then stops.
    struct Flaky {
        calls: Arc<AtomicU32>,
    }

    impl Task for Flaky {
        const NAME: &'static str = "flaky";
        async fn session(&mut self) -> Result<(), SessionError> {
            match self.calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(SessionError::Lost {
                    server: HostPort {
                        host: "127.0.0.1".into(),
                        port: 6379,
                    },
                    failure: Failure::Refused("refused".into()),
                }),
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
