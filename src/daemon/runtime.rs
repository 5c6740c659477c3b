//! What the run loop owns, and what of it the control handler
//! ([`crate::control::handler`]) asks for.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::oneshot;

use super::enforcer::{FastPath, Job, Verdict, Work};
use super::sources::Sources;
use super::store::store_ops;
use super::{DaemonError, RunOptions};
use crate::config::Config;
use crate::control::handler::{self, Answer, Daemon};
use crate::control::recent::Recent;
use crate::control::views::jail_view;
use crate::control::{FeedView, RecentView, Request, Response, StatusView, page::Page};
use crate::event::{JailId, Time};
use crate::jail::{BanReason, Decision, DisplayNet, Jail, JailSet};
use crate::store::StoreOp;

/// Everything the main loop owns.
pub(super) struct Runtime {
    pub(super) jails: JailSet,
    pub(super) config: Config,
    pub(super) opts: RunOptions,
    pub(super) started: Time,
    pub(super) firewall: &'static str,
    pub(super) sources: Sources,
    /// The supervised background tasks, for status and metrics.
    pub(super) tasks: crate::supervise::Tasks,
    /// Work for the enforcer thread.
    pub(super) dec_tx: std::sync::mpsc::Sender<Work>,
    /// Jobs sent to the enforcer thread and not answered yet.
    pub(super) jobs: HashMap<u64, JobMeta>,
    /// The next job's id.
    pub(super) next_job: u64,
    pub(super) store_tx: Option<std::sync::mpsc::Sender<Vec<StoreOp>>>,
    /// The state store's health, kept by the store thread.
    pub(super) store_health: super::store::Health,
    /// The fleet, when `[cluster]` is set.
    pub(super) cluster: Option<crate::cluster::Cluster>,
    /// Which node decided each ban received from the cluster.
    pub(super) origins: HashMap<(JailId, IpNet), Arc<str>>,
    /// The last failures and attacks per minute (the dashboard's data).
    pub(super) recent: Recent,
    /// Each blocklist feed's state, kept by its task.
    pub(super) feeds: Vec<Arc<std::sync::Mutex<FeedView>>>,
    /// Adds a few new bans' elements at once, before the enforcer thread.
    pub(super) fast: Option<FastPath>,
    /// Looks up the peers' host names.
    pub(super) resolver: super::names::Resolver,
    /// The `ignoreip` files and what each looked like when last read.
    pub(super) ignore_files: super::ignore_files::IgnoreFiles,
    /// The jails' fail2ban actions (mail, reports, scripts), run after the
    /// kernel accepted.
    pub(super) actions: crate::action::ActionSet,
}

/// What to do once the firewall answered a job.
#[derive(Debug, Default)]
pub(super) struct JobMeta {
    /// Hand this node's accepted decisions to the fleet (not for decisions
    /// the fleet itself sent, nor for jails removed by a reload).
    pub(super) publish: bool,
    /// A control request waiting for the kernel's answer.
    pub(super) waiter: Option<Waiter>,
    /// Said after each accepted ban's log line (how it was decided).
    pub(super) note: Option<&'static str>,
}

/// A control request (`ban`, `unban`) answered once the firewall accepted
/// or refused its decisions.
#[derive(Debug)]
pub(super) struct Waiter {
    reply: oneshot::Sender<Response>,
    /// The answer when every decision was accepted.
    ok: serde_json::Value,
}

impl Runtime {
    /// Sends decisions to the enforcer thread. What the firewall accepts is
    /// then logged, stored, shown and (with `meta.publish`) shared; what it
    /// refuses is undone (see [`Runtime::on_verdict`]).
    pub(super) fn dispatch(
        &mut self,
        decisions: Vec<Decision>,
        meta: JobMeta,
    ) -> Result<(), DaemonError> {
        if decisions.is_empty() {
            if let Some(w) = meta.waiter {
                let _ = w.reply.send(Response::ok(w.ok));
            }
            return Ok(());
        }
        if !self.origins.is_empty() {
            for d in &decisions {
                if let Decision::Unban(u) = d {
                    self.origins.remove(&(u.jail, u.addr));
                }
            }
        }
        // A few new bans: into the kernel at once by the fast lane; the
        // enforcer thread follows with the same decisions and answers.
        if let Some(f) = &mut self.fast {
            f.post(&decisions);
        }
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(id, meta);
        self.dec_tx
            .send(Work::Job(Job { id, decisions }))
            .map_err(|_| {
                DaemonError::Setup("the enforcer thread stopped; see the error above".into())
            })
    }

    /// The firewall answered a job: accepted bans become active (status,
    /// store, fleet), refused ones are undone and the asker told why.
    pub(super) fn on_verdict(&mut self, v: Verdict) {
        let burst = v.decisions.len() >= super::TRIM_AFTER;
        let meta = self.jobs.remove(&v.id).unwrap_or_default();
        let refused: HashMap<usize, &str> = v
            .refused
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        let mut accepted = Vec::with_capacity(v.decisions.len());
        for (i, d) in v.decisions.into_iter().enumerate() {
            match (refused.get(&i), &d) {
                (None, Decision::Ban(b)) => {
                    self.jails.confirm(b);
                    // Logged once the kernel holds it (scripts grep this).
                    match (b.reason, self.origins.get(&(b.jail, b.addr))) {
                        (BanReason::Cluster, Some(origin)) => {
                            tracing::warn!("{b} (from node {origin})")
                        }
                        _ => tracing::warn!("{b}{}", meta.note.unwrap_or("")),
                    }
                    accepted.push(d);
                }
                (None, Decision::Unban(_)) => accepted.push(d),
                (Some(why), Decision::Ban(b)) => {
                    self.jails.refuse(b);
                    self.origins.remove(&(b.jail, b.addr));
                    tracing::error!(
                        "[{}] ban of {} refused by the firewall, not in force: {why}",
                        b.jail_name,
                        DisplayNet(&b.addr)
                    );
                }
                (Some(why), Decision::Unban(u)) => {
                    // The kernel still holds it: the ban stays in force, as
                    // it was, shown and liftable.
                    tracing::error!(
                        "[{}] unban of {} refused by the firewall, the ban stays in force: {why}",
                        u.jail_name,
                        DisplayNet(&u.addr)
                    );
                    if let Some(b) = &u.lifted {
                        if let Some(d) = self.jails.restored(
                            &u.jail_name,
                            u.addr,
                            b.start,
                            b.end,
                            b.failures,
                            b.reason,
                            Time::now(),
                        ) {
                            self.jails.reinstate(&d);
                        }
                    }
                }
            }
        }
        for d in &accepted {
            self.actions.accepted(d);
        }
        if meta.publish {
            self.publish(&accepted);
        }
        if let Some(tx) = &self.store_tx {
            let _ = tx.send(store_ops(&accepted, Time::now()));
        }
        if let Some(w) = meta.waiter {
            let resp = if v.refused.is_empty() {
                Response::ok(w.ok)
            } else {
                let mut why: Vec<&str> = v.refused.iter().map(|r| r.reason.as_str()).collect();
                why.dedup();
                Response::error(format!("refused by the firewall: {}", why.join("; ")))
            };
            let _ = w.reply.send(resp);
        }
        if burst {
            super::give_back_memory();
        }
    }

    /// Gives each enabled jail its actions (at start and reload).
    /// Protects, in every jail, the HEP senders seen since the last call
    /// (issue 20: a server that mirrors its SIP is never banned).
    pub(super) fn protect_hep_senders(&mut self) {
        let new = self.sources.new_hep_senders();
        if !new.is_empty() {
            for n in &new {
                tracing::info!("hep: sender {} seen; never banned", n.addr());
            }
            self.jails.add_peers(new);
        }
    }

    pub(super) fn sync_actions(&mut self, enabled: &[crate::jail::JailConfig]) {
        if self.opts.dry_run {
            // A dry run changes nothing outside: no scripts, no mail, no
            // reports to AbuseIPDB or webhooks about bans that never were.
            let skipped = enabled
                .iter()
                .map(|j| j.actions.len() + j.notify.len())
                .sum::<usize>();
            if skipped > 0 {
                tracing::warn!(
                    "--dry-run: {skipped} action(s) and notification(s) of the jails are not run"
                );
            }
            self.actions.configure_notify(std::iter::empty(), None);
            self.actions.configure(std::iter::empty());
            return;
        }
        let jails = &self.jails;
        let node = self.config.cluster.as_ref().map(|c| c.node.as_str());
        self.actions.configure_notify(
            enabled
                .iter()
                .filter_map(|j| Some((jails.jail_id(&j.name)?, j.notify.as_slice()))),
            node,
        );
        self.actions.configure(enabled.iter().filter_map(|j| {
            Some((
                jails.jail_id(&j.name)?,
                j.name.as_str(),
                j.actions.as_slice(),
            ))
        }));
    }

    /// The wall clock stepped by `step_ms`: bans keep the time they have
    /// left, as the kernel's timeouts (monotonic) do, in the jails, the
    /// enforcer's ledger and the store.
    pub(super) fn on_clock_step(&mut self, step_ms: i64) {
        tracing::warn!(
            "the wall clock stepped {} by {:.1} s; every ban keeps the time it has left (the kernel's timeouts do not follow the wall clock)",
            if step_ms < 0 { "back" } else { "forward" },
            step_ms.unsigned_abs() as f64 / 1000.0
        );
        self.started = self.started.plus_millis(step_ms);
        // The enforcer thread watches the clock itself, before it reads it.
        self.jails.shift_clock(step_ms);
        if let Some(tx) = &self.store_tx {
            let _ = tx.send(vec![StoreOp::ClockStep(step_ms)]);
        }
    }

    /// Answers one control request (CLI or HTTP API): at once, or for `ban`
    /// and `unban` once the firewall answered.
    pub(super) fn control(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let answer = match handler::answer(self, req, Time::now()) {
            Answer::Now(r) => r,
            Answer::After(ds, ok) => {
                let waiter = Waiter { reply, ok };
                let meta = JobMeta {
                    publish: true,
                    waiter: Some(waiter),
                    note: None,
                };
                if let Err(e) = self.dispatch(ds, meta) {
                    tracing::error!("{e}");
                }
                return;
            }
        };
        let _ = reply.send(answer);
    }
}

/// What only the running daemon knows, for the control handler.
impl Daemon for Runtime {
    fn jails(&mut self) -> &mut JailSet {
        &mut self.jails
    }

    /// The answer to `status` (every jail, or one with a page of its bans).
    fn status(&self, jail: Option<&str>, page: &Page, now: Time) -> Response {
        let views = |j: &Jail| self.sources.views(j.name());
        match jail {
            Some(name) => match self.jails.jail_id(name).and_then(|id| self.jails.jail(id)) {
                Some(j) => Response::ok(jail_view(
                    &self.jails,
                    j,
                    views(j),
                    Some(page),
                    now,
                    &self.origins,
                )),
                None => Response::error(self.jails.no_such_jail(name).to_string()),
            },
            None => Response::ok(StatusView {
                version: env!("CARGO_PKG_VERSION").into(),
                started: self.started.to_string(),
                uptime_s: (now.0 - self.started.0) / 1000,
                firewall: self.firewall.into(),
                config: self.config.origin.clone(),
                jails: self
                    .jails
                    .jails()
                    .map(|j| jail_view(&self.jails, j, views(j), None, now, &self.origins))
                    .collect(),
                cluster: self.cluster.as_ref().map(crate::cluster::Cluster::view),
                feeds: self
                    .feeds
                    .iter()
                    .filter_map(|f| f.lock().ok().map(|v| v.clone()))
                    .collect(),
                store: self.store_health.lock().ok().map(|h| h.clone()),
                names: self.name_views(),
                tasks: self.tasks.views(),
                actions: (!self.actions.is_empty()).then(|| self.actions.view()),
            }),
        }
    }

    fn reload(&mut self, force: bool) -> Response {
        Runtime::reload(self, force)
    }

    fn recent(&self, now: Time) -> RecentView {
        self.recent.view(now, |id| {
            self.jails
                .jail(id)
                .map(|j| j.name().to_string())
                .unwrap_or_default()
        })
    }
}
