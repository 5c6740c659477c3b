//! The enforcer thread: firewall calls are blocking, so they run on a
//! thread of their own; decisions that pile up while one call runs go out
//! together, and the kernel's answer to each job goes back to the run loop,
//! which only then calls a ban active.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::mpsc::UnboundedSender;

use super::{DaemonError, RunOptions};
use crate::config::Config;
use crate::enforce::Backend;
use crate::enforce::{Enforcer, FAST_LANE_MAX, FastLane, LogOnly, NftEnforcer, PortScope, Refusal};
use crate::event::{ClockWatch, JailId, Time};
use crate::http::metrics::Metrics;
use crate::jail::{BanDecision, BanReason, Decision, is_host};
use crate::jail::{JailConfig, JailSet};

/// How long the thread waits for work before it checks the firewall for
/// drift.
const IDLE_TICK: Duration = Duration::from_millis(500);

/// Most batches answered before their conntrack flush runs, while more
/// work keeps arriving (a flood cannot put the flush off for ever).
const FLUSH_EVERY: usize = 8;

/// Decisions sent together, answered together.
#[derive(Debug)]
pub(super) struct Job {
    /// Names the job in its verdict.
    pub(super) id: u64,
    /// What to apply, in order.
    pub(super) decisions: Vec<Decision>,
}

/// The firewall's answer to one job.
#[derive(Debug)]
pub(super) struct Verdict {
    /// The job's id.
    pub(super) id: u64,
    /// The job's decisions, given back.
    pub(super) decisions: Vec<Decision>,
    /// Those the firewall refused (indexes into `decisions`), with why.
    pub(super) refused: Vec<Refusal>,
}

/// What the run loop asks of the enforcer thread.
#[derive(Debug)]
pub(super) enum Work {
    /// Apply decisions and answer.
    Job(Job),
    /// Each jail's port scope, after a reload.
    Scopes(Vec<(JailId, Option<PortScope>)>),
}

/// Each enabled jail's port scope, by its id in `jails`.
pub(super) fn scopes(jails: &JailSet, enabled: &[JailConfig]) -> Vec<(JailId, Option<PortScope>)> {
    enabled
        .iter()
        .filter_map(|j| Some((jails.jail_id(&j.name)?, j.scope.clone())))
        .collect()
}

/// Hands the enforcer each jail's new port scope; a failure leaves the old
/// scopes in force (logged).
fn rescope(enforcer: &mut dyn Enforcer, scopes: &[(JailId, Option<PortScope>)]) {
    if let Err(e) = enforcer.set_scopes(scopes) {
        tracing::error!(
            "firewall ({}): port scopes not changed: {e}; restart to apply them",
            enforcer.name()
        );
    }
}

/// The enforcer's fast lane, driven from the run loop: a few new bans'
/// elements are posted the moment they are decided (never waiting for the
/// kernel's answer); the enforcer thread applies the same decisions next
/// and gives the answer that counts.
pub(super) struct FastPath(Box<dyn FastLane>);

impl FastPath {
    /// The fast lane of `enforcer`, if it has one.
    pub(super) fn of(enforcer: &dyn Enforcer) -> Option<FastPath> {
        enforcer.fast_lane().map(FastPath)
    }

    /// Each jail's port scope after a reload (before the enforcer thread
    /// takes them).
    pub(super) fn set_scopes(&mut self, scopes: &[(JailId, Option<PortScope>)]) {
        self.0.set_scopes(scopes);
    }

    /// Posts the single-address bans among `decisions` (a burst larger than
    /// [`FAST_LANE_MAX`] is the enforcer's alone).
    pub(super) fn post(&mut self, decisions: &[Decision]) {
        if decisions.len() > FAST_LANE_MAX {
            return;
        }
        let bans: Vec<BanDecision> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Ban(b) if is_host(&b.addr) => Some(b.clone()),
                _ => None,
            })
            .collect();
        if !bans.is_empty() {
            self.0.add(&bans);
        }
    }
}

/// Picks the enforcer for the configuration.
/// `owner` is the canonical state directory, written into the table as its
/// owner.
pub(super) fn build(
    config: &Config,
    opts: &RunOptions,
    owner: &str,
    scopes: &[(JailId, Option<PortScope>)],
) -> Result<Box<dyn Enforcer>, DaemonError> {
    if opts.dry_run || config.firewall.backend == Backend::None {
        tracing::info!("firewall backend none (dry run): decisions are logged, not enforced");
        return Ok(Box::new(LogOnly));
    }
    let feeds = config.feeds.iter().map(|f| f.name.clone()).collect();
    let nft = NftEnforcer::start_scoped(&config.firewall, feeds, owner, scopes)
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    Ok(Box::new(nft))
}

/// Applies `decisions` now, on the caller's thread (the restore at start);
/// returns what the firewall refused.
pub(super) fn apply_now(enforcer: &mut dyn Enforcer, decisions: &[Decision]) -> Vec<Refusal> {
    match enforcer.apply(decisions) {
        Ok(r) => r,
        Err(e) => (0..decisions.len())
            .map(|index| Refusal {
                index,
                reason: e.to_string(),
            })
            .collect(),
    }
}

/// Starts the enforcer thread: it applies jobs from `work` and answers each
/// on `verdicts`, loads feeds from `feeds`, checks for drift when idle, and
/// closes the enforcer once `work` is closed (after answering every job).
pub(super) fn spawn(
    mut enforcer: Box<dyn Enforcer>,
    work: Receiver<Work>,
    feeds: Receiver<(String, Vec<IpNet>)>,
    verdicts: UnboundedSender<Verdict>,
    metrics: Arc<Metrics>,
) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name("enforce".into())
        .spawn(move || {
            // The ledger's ends follow the wall clock; the kernel's timeouts
            // do not. A step is seen here before the clock is read.
            let mono = std::time::Instant::now();
            let mono_ms = || mono.elapsed().as_millis() as i64;
            let mut clock = ClockWatch::new(Time::now(), mono_ms());
            // Batches applied since the last conntrack flush (1: the
            // restore's, applied before this thread started). The flush
            // runs once the queue is empty or after FLUSH_EVERY batches,
            // always after their answers: the ban path never waits for it.
            let mut unflushed = 1;
            loop {
                if let Some(step) = clock.observe(Time::now(), mono_ms()) {
                    enforcer.shift_clock(step);
                }
                while let Ok((name, nets)) = feeds.try_recv() {
                    match enforcer.load_feed(&name, &nets) {
                        Ok(n) => tracing::info!("feed {name}: {n} entries in force"),
                        Err(e) => {
                            tracing::error!("feed {name}: {e}; the previous contents stay in force")
                        }
                    }
                }
                let next = if unflushed > 0 {
                    // Flush pending: more work first, if some is queued
                    // (its sources join the same dump).
                    match work.try_recv() {
                        Ok(w) => Ok(w),
                        Err(TryRecvError::Empty) => {
                            enforcer.flush_pending();
                            unflushed = 0;
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                    }
                } else {
                    work.recv_timeout(IDLE_TICK)
                };
                let first = match next {
                    Ok(Work::Job(j)) => j,
                    Ok(Work::Scopes(s)) => {
                        rescope(enforcer.as_mut(), &s);
                        unflushed += 1;
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        // Idle: check for drift (a flushed ruleset, elements deleted by hand).
                        if let Err(e) = enforcer.tick() {
                            tracing::error!("firewall ({}): {e}", enforcer.name());
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                // Whatever else is queued goes out in the same batch; new
                // scopes apply between the jobs before and after them.
                let mut jobs = vec![first];
                let mut scopes = None;
                while let Ok(w) = work.try_recv() {
                    match w {
                        Work::Job(j) => jobs.push(j),
                        Work::Scopes(s) => {
                            scopes = Some(s);
                            break;
                        }
                    }
                }
                if let Some(step) = clock.observe(Time::now(), mono_ms()) {
                    enforcer.shift_clock(step);
                }
                run_jobs(enforcer.as_mut(), jobs, &verdicts, &metrics);
                unflushed += 1;
                if let Some(s) = scopes {
                    rescope(enforcer.as_mut(), &s);
                }
                if unflushed >= FLUSH_EVERY {
                    enforcer.flush_pending();
                    unflushed = 0;
                }
            }
            enforcer.flush_pending();
            if let Err(e) = enforcer.close() {
                tracing::error!("firewall ({}): {e}", enforcer.name());
            }
        })
        .map_err(|source| DaemonError::Io {
            what: "starting the enforcer thread".into(),
            source,
        })
}

/// Applies `jobs` as one batch and answers each.
fn run_jobs(
    enforcer: &mut dyn Enforcer,
    jobs: Vec<Job>,
    verdicts: &UnboundedSender<Verdict>,
    metrics: &Metrics,
) {
    if jobs.is_empty() {
        return;
    }
    crate::supervise::inject_fault("enforcer");
    let batch: Vec<Decision> = jobs
        .iter()
        .flat_map(|j| j.decisions.iter().cloned())
        .collect();
    let mut refused = apply_now(enforcer, &batch);
    refused.sort_by_key(|r| r.index);
    if !refused.is_empty() {
        metrics
            .firewall_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if refused.len() == batch.len() {
            if let Some(r) = refused.first() {
                tracing::error!("firewall ({}): {}", enforcer.name(), r.reason);
            }
        }
    }
    let now = Time::now();
    let mut offset = 0;
    let mut refused = refused.into_iter().peekable();
    for job in jobs {
        let n = job.decisions.len();
        let mut mine = Vec::new();
        while let Some(r) = refused.next_if(|r| r.index < offset + n) {
            mine.push(Refusal {
                index: r.index - offset,
                reason: r.reason,
            });
        }
        for (i, d) in job.decisions.iter().enumerate() {
            if let Decision::Ban(b) = d {
                if matches!(b.reason, BanReason::Failures | BanReason::Burst)
                    && !mine.iter().any(|r| r.index == i)
                {
                    metrics.observe_ban((now.0 - b.start.0).max(0) as f64 / 1000.0);
                }
            }
        }
        offset += n;
        // The run loop is gone only when the daemon stops.
        let _ = verdicts.send(Verdict {
            id: job.id,
            decisions: job.decisions,
            refused: mine,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::{Sender, channel};
    use std::time::Instant;

    use super::*;
    use crate::enforce::EnforceError;

    /// Records its calls; a flush after an apply blocks until released
    /// (bounded), as a slow conntrack dump would.
    struct SlowFlush {
        log: Arc<Mutex<Vec<&'static str>>>,
        applied: bool,
        release: Receiver<()>,
    }

    impl Enforcer for SlowFlush {
        fn name(&self) -> &'static str {
            "slow-flush"
        }
        fn apply(&mut self, _: &[Decision]) -> Result<Vec<Refusal>, EnforceError> {
            self.log.lock().unwrap().push("apply");
            self.applied = true;
            Ok(Vec::new())
        }
        fn flush_pending(&mut self) {
            if std::mem::take(&mut self.applied) {
                self.log.lock().unwrap().push("flush");
                let _ = self.release.recv_timeout(Duration::from_secs(10));
            }
        }
    }

    /// The running thread, as the test drives it.
    struct Running {
        work: Sender<Work>,
        verdicts: tokio::sync::mpsc::UnboundedReceiver<Verdict>,
        log: Arc<Mutex<Vec<&'static str>>>,
        thread: std::thread::JoinHandle<()>,
    }

    fn start(release: Receiver<()>, queued: Vec<Work>) -> Running {
        let log = Arc::new(Mutex::new(Vec::new()));
        let e = SlowFlush {
            log: log.clone(),
            applied: false,
            release,
        };
        let (work, work_rx) = channel();
        for w in queued {
            work.send(w).unwrap();
        }
        let (_feeds_tx, feeds_rx) = channel();
        let (v_tx, verdicts) = tokio::sync::mpsc::unbounded_channel();
        let thread = spawn(
            Box::new(e),
            work_rx,
            feeds_rx,
            v_tx,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        Running {
            work,
            verdicts,
            log,
            thread,
        }
    }

    fn job(id: u64) -> Work {
        Work::Job(Job {
            id,
            decisions: Vec::new(),
        })
    }

    /// Waits (bounded) for the next verdict.
    fn verdict(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Verdict>) -> Option<Verdict> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(v) = rx.try_recv() {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn the_answer_does_not_wait_for_the_conntrack_flush() {
        let (release_tx, release_rx) = channel();
        let Running {
            work,
            mut verdicts,
            log,
            thread: h,
        } = start(release_rx, Vec::new());
        work.send(job(1)).unwrap();
        let v = verdict(&mut verdicts);
        // Only now may the flush end.
        release_tx.send(()).unwrap();
        assert_eq!(
            v.map(|v| v.id),
            Some(1),
            "the batch's answer came while its conntrack flush was still running"
        );
        drop(work);
        h.join().unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["apply", "flush"],
            "the flush still runs, after the answer"
        );
    }

    #[test]
    fn queued_batches_share_a_flush_at_most_flush_every_at_a_time() {
        // Batches split by scope changes, all queued before the thread
        // starts: one long flood.
        let n = 2 * FLUSH_EVERY + 3;
        let mut queued = Vec::new();
        for i in 0..n {
            queued.push(job(i as u64));
            queued.push(Work::Scopes(Vec::new()));
        }
        let (release_tx, release_rx) = channel();
        for _ in 0..n {
            release_tx.send(()).unwrap();
        }
        let Running {
            work,
            mut verdicts,
            log,
            thread: h,
        } = start(release_rx, queued);
        for _ in 0..n {
            assert!(verdict(&mut verdicts).is_some(), "every batch is answered");
        }
        drop(work);
        h.join().unwrap();
        let log = log.lock().unwrap();
        let runs: Vec<usize> = log.split(|c| *c == "flush").map(|run| run.len()).collect();
        assert_eq!(log.iter().filter(|c| **c == "apply").count(), n);
        assert_eq!(
            log.last(),
            Some(&"flush"),
            "the last batches are flushed: {log:?}"
        );
        assert!(
            runs.iter().all(|r| *r <= FLUSH_EVERY),
            "a flush at least every {FLUSH_EVERY} batches: {log:?}"
        );
        assert!(
            runs.iter().any(|r| *r > 1),
            "queued batches share one flush: {log:?}"
        );
    }
}
