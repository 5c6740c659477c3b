//! Notifications that leave the box: a jail's `notify = [...]` tells a
//! webhook (signed JSON) or AbuseIPDB of each ban this node decided.
//!
//! ```text
//! ban the kernel accepted, decided here (not restored, not from the fleet)
//!     ──► Notifier::deliveries (report.rs: the JSON, pure)
//!     ──► the action runner's lane of the jail (src/action/runner.rs)
//!     ──► webhook.rs (POST, signature, bounded retries) / abuseipdb.rs (form, limits)
//! ```
//!
//! Off the hot path: the run loop only queues a closure; the request, its
//! retries and their pauses run on an action worker, and a full lane sheds
//! the notification, never the ban. Failures are logged (without the URL's
//! path, a secret or a key) and counted in status and metrics.

pub mod abuseipdb;
pub mod config;
pub mod report;
pub mod webhook;

#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;

pub use config::{NotifyConfigError, NotifyTarget, parse_notify};
pub use report::Report;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::decision::{BanDecision, BanReason};
use crate::event::{JailId, Time};

/// Counters of one kind of target.
#[derive(Debug, Default)]
pub struct Counts {
    /// Notifications delivered.
    pub sent: AtomicU64,
    /// Notifications that failed (after their retries).
    pub failed: AtomicU64,
    /// Tries made again after a failed one.
    pub retries: AtomicU64,
    /// Reports refused by the service's rate limit (429).
    pub rate_limited: AtomicU64,
    /// Not sent: the target failed moments ago ([`DOWN_MIN_MS`]); for
    /// AbuseIPDB also the address reported less than 15 minutes ago, or
    /// the quota spent.
    pub skipped: AtomicU64,
}

/// Counters by kind.
#[derive(Debug, Default)]
pub struct NotifyStats {
    /// Webhooks.
    pub webhook: Counts,
    /// AbuseIPDB.
    pub abuseipdb: Counts,
}

/// One kind's counters as status shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountsView {
    /// `webhook` or `abuseipdb`.
    pub kind: String,
    /// Delivered.
    pub sent: u64,
    /// Failed.
    pub failed: u64,
    /// Tries made again.
    pub retries: u64,
    /// Refused by the rate limit.
    pub rate_limited: u64,
    /// Not sent (15 minutes per address, quota spent).
    pub skipped: u64,
}

impl Counts {
    fn view(&self, kind: &str) -> CountsView {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountsView {
            kind: kind.into(),
            sent: v(&self.sent),
            failed: v(&self.failed),
            retries: v(&self.retries),
            rate_limited: v(&self.rate_limited),
            skipped: v(&self.skipped),
        }
    }
}

impl NotifyStats {
    /// A snapshot, one row per kind.
    pub fn view(&self) -> Vec<CountsView> {
        vec![
            self.webhook.view("webhook"),
            self.abuseipdb.view("abuseipdb"),
        ]
    }
}

/// After a delivery to a target failed (its retries spent), the target is
/// not tried again for four times as long as that delivery took, within
/// these bounds (ms): notifications share the jail's action lane, and a
/// dead server must not hold it for every ban of an attack.
pub const DOWN_MIN_MS: i64 = 60_000;
/// See [`DOWN_MIN_MS`].
pub const DOWN_MAX_MS: i64 = 15 * 60_000;

/// One target, with its HTTP client built once.
struct Prepared {
    target: Arc<NotifyTarget>,
    agent: ureq::Agent,
    /// Not tried before this time (ms) after a failed delivery.
    down_until: Arc<AtomicI64>,
}

/// Whether a target that failed is still left alone at `now`.
fn is_down(down_until: &AtomicI64, now: i64) -> bool {
    now < down_until.load(Ordering::Relaxed)
}

/// A delivery begun at `start` failed at `now`: the target is left alone.
fn mark_down(down_until: &AtomicI64, start: i64, now: i64) -> i64 {
    let pause = now
        .saturating_sub(start)
        .saturating_mul(4)
        .clamp(DOWN_MIN_MS, DOWN_MAX_MS);
    let until = now.saturating_add(pause);
    down_until.store(until, Ordering::Relaxed);
    until
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.target.fmt(f)
    }
}

/// One notification to run on a worker.
pub struct Delivery {
    /// `webhook` or `abuseipdb`, for logs.
    pub kind: &'static str,
    /// The address or prefix, for logs.
    pub addr: String,
    /// The work: the request and its retries.
    pub run: Box<dyn FnOnce() + Send>,
}

/// The jails' notification targets.
#[derive(Debug, Default)]
pub struct Notifier {
    jails: HashMap<JailId, Vec<Prepared>>,
    node: Arc<str>,
    stats: Arc<NotifyStats>,
    limits: Arc<Mutex<abuseipdb::Limits>>,
}

/// Logs the 1st, 2nd, 4th, 8th ... of a kind of trouble.
fn rare(n: u64) -> bool {
    n.is_power_of_two()
}

impl Notifier {
    /// Sets each jail's targets (at start and reload) and this node's name.
    pub fn configure<'a>(
        &mut self,
        jails: impl IntoIterator<Item = (JailId, &'a [NotifyTarget])>,
        node: &str,
    ) {
        let mut next = HashMap::new();
        for (id, targets) in jails {
            if targets.is_empty() {
                continue;
            }
            let old = self.jails.remove(&id).unwrap_or_default();
            let list = targets
                .iter()
                .map(|t| match old.iter().find(|p| *p.target == *t) {
                    Some(p) => Prepared {
                        target: p.target.clone(),
                        agent: p.agent.clone(),
                        down_until: p.down_until.clone(),
                    },
                    None => {
                        let (timeout, ca) = match t {
                            NotifyTarget::Webhook(w) => (w.timeout, w.ca.as_ref()),
                            NotifyTarget::AbuseIpdb(a) => (a.timeout, a.ca.as_ref()),
                        };
                        Prepared {
                            target: Arc::new(t.clone()),
                            agent: webhook::agent(timeout, ca),
                            down_until: Arc::default(),
                        }
                    }
                })
                .collect();
            next.insert(id, list);
        }
        self.jails = next;
        self.node = node.into();
    }

    /// Whether `jail` has targets.
    pub fn has(&self, jail: JailId) -> bool {
        self.jails.contains_key(&jail)
    }

    /// Whether no jail has.
    pub fn is_empty(&self) -> bool {
        self.jails.is_empty()
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<NotifyStats> {
        &self.stats
    }

    /// The notifications of ban `b`, which the kernel accepted and this
    /// node decided (the caller leaves out restored bans; bans from the
    /// fleet are left out here too). `seen`: the first and last failure
    /// seen of the address. AbuseIPDB is told of single addresses banned
    /// for their failures only (not of prefixes, nor of manual bans).
    pub fn deliveries(&self, b: &BanDecision, seen: Option<(Time, Time)>) -> Vec<Delivery> {
        let Some(targets) = self.jails.get(&b.jail) else {
            return Vec::new();
        };
        if b.reason == BanReason::Cluster {
            return Vec::new();
        }
        let report = Arc::new(Report::new(b, seen, &self.node));
        let addr = crate::net::DisplayNet(&b.addr).to_string();
        let mut out = Vec::new();
        for p in targets {
            let (target, agent, down) = (p.target.clone(), p.agent.clone(), p.down_until.clone());
            let (stats, report, shown) = (self.stats.clone(), report.clone(), addr.clone());
            let jail = b.jail_name.clone();
            let run: Box<dyn FnOnce() + Send> = match &*p.target {
                NotifyTarget::Webhook(_) => Box::new(move || {
                    if let NotifyTarget::Webhook(w) = &*target {
                        run_webhook(&agent, w, &report, &stats.webhook, &down, &jail, &shown);
                    }
                }),
                NotifyTarget::AbuseIpdb(_) => {
                    let host = b.addr.prefix_len() == b.addr.max_prefix_len();
                    if !host || !matches!(b.reason, BanReason::Failures | BanReason::Burst) {
                        continue;
                    }
                    let (ip, limits) = (b.addr.addr(), self.limits.clone());
                    Box::new(move || {
                        if let NotifyTarget::AbuseIpdb(a) = &*target {
                            let now = Time::now().0;
                            run_abuseipdb(
                                &agent,
                                a,
                                &report,
                                ip,
                                now,
                                &limits,
                                &stats.abuseipdb,
                                &down,
                                &jail,
                            );
                        }
                    })
                }
            };
            out.push(Delivery {
                kind: p.target.kind(),
                addr: addr.clone(),
                run,
            });
        }
        out
    }
}

fn run_webhook(
    agent: &ureq::Agent,
    w: &config::Webhook,
    report: &Report,
    c: &Counts,
    down: &AtomicI64,
    jail: &str,
    addr: &str,
) {
    let start = Time::now().0;
    if is_down(down, start) {
        c.skipped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            "[{jail}] webhook {} not told of {addr}: it failed moments ago",
            config::shown(&w.url)
        );
        return;
    }
    let body = report.to_json();
    let mut pause = |d: std::time::Duration| {
        c.retries.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(d);
    };
    match webhook::deliver(agent, w, &body, &mut pause) {
        webhook::Delivered::Ok { tries } => {
            c.sent.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "[{jail}] webhook {} told of {addr} ({tries} tries)",
                config::shown(&w.url)
            );
        }
        webhook::Delivered::Failed { tries, why } => {
            let n = c.failed.fetch_add(1, Ordering::Relaxed) + 1;
            let now = Time::now().0;
            let until = mark_down(down, start, now);
            if rare(n) {
                tracing::warn!(
                    "[{jail}] webhook {} not told of the ban of {addr} after {tries} tries: {why} ({n} failed so far); not tried again for {} s",
                    config::shown(&w.url),
                    (until - now) / 1000
                );
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_abuseipdb(
    agent: &ureq::Agent,
    a: &config::AbuseIpdb,
    report: &Report,
    ip: std::net::IpAddr,
    now: i64,
    limits: &Mutex<abuseipdb::Limits>,
    c: &Counts,
    down: &AtomicI64,
    jail: &str,
) {
    if is_down(down, now) {
        c.skipped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("[{jail}] AbuseIPDB report of {ip} not sent: it failed moments ago");
        return;
    }
    let admitted = match limits.lock() {
        Ok(mut l) => l.admit(ip, now),
        Err(p) => p.into_inner().admit(ip, now),
    };
    if let Err(why) = admitted {
        c.skipped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("[{jail}] AbuseIPDB report of {ip} not sent: {why:?}");
        return;
    }
    match abuseipdb::send(agent, a, report, ip, now, limits) {
        abuseipdb::Sent::Ok => {
            c.sent.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("[{jail}] reported {ip} to AbuseIPDB");
        }
        abuseipdb::Sent::RateLimited(until) => {
            let n = c.rate_limited.fetch_add(1, Ordering::Relaxed) + 1;
            if rare(n) {
                let when = until.map_or_else(
                    || "this address was reported in the last 15 minutes".to_string(),
                    |t| format!("reports paused until {}", Time(t)),
                );
                tracing::warn!(
                    "[{jail}] AbuseIPDB refused the report of {ip} for its rate limit: {when} ({n} so far)"
                );
            }
        }
        abuseipdb::Sent::Failed(why) => {
            let n = c.failed.fetch_add(1, Ordering::Relaxed) + 1;
            let end = Time::now().0;
            let until = mark_down(down, now, end);
            if rare(n) {
                tracing::warn!(
                    "[{jail}] AbuseIPDB report of {ip} failed: {why} ({n} failed so far); check key_file and the network; not tried again for {} s",
                    (until - end) / 1000
                );
            }
        }
    }
}
