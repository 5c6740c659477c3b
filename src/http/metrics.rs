//! Prometheus metrics, written in the text exposition format from the same
//! status view `sipwarden status --json` prints, plus the enforcer's own
//! counters. The format is a few lines per metric; a registry crate would
//! keep a second copy of counters the jails already keep.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::control::StatusView;

/// Upper bounds (seconds) of the ban-latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counters the enforcer thread keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Firewall operations that failed.
    pub firewall_errors: AtomicU64,
    /// Bans by failures, by latency bucket (the last is +Inf).
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// Records one ban's latency: from its failures reaching the core to
    /// the firewall accepting it.
    pub fn observe_ban(&self, secs: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add((secs.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Escapes a label value (attacker text never reaches labels, but paths
/// and names may hold quotes or backslashes).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition.
pub fn render(s: &StatusView, m: &Metrics) -> String {
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let per_jail = |f: &dyn Fn(&crate::control::JailView) -> u64| {
        s.jails
            .iter()
            .map(|j| (format!("{{jail=\"{}\"}}", label(&j.name)), f(j).to_string()))
            .collect::<Vec<_>>()
    };
    family(
        "sipwarden_failures_total",
        "counter",
        "Failures counted, per jail.",
        per_jail(&|j| j.total_failed),
    );
    family(
        "sipwarden_bans_total",
        "counter",
        "Bans decided, per jail.",
        per_jail(&|j| j.total_banned),
    );
    family(
        "sipwarden_unbans_total",
        "counter",
        "Bans lifted (expired or by hand), per jail.",
        per_jail(&|j| j.total_unbanned),
    );
    family(
        "sipwarden_active_bans",
        "gauge",
        "Bans in force, per jail.",
        per_jail(&|j| j.currently_banned),
    );
    family(
        "sipwarden_tracked_addresses",
        "gauge",
        "Addresses with failures inside findtime, per jail.",
        per_jail(&|j| j.currently_failing),
    );
    family(
        "sipwarden_evictions_total",
        "counter",
        "Addresses forgotten to respect max_tracked, per jail.",
        per_jail(&|j| j.evictions),
    );
    let sources = |f: &dyn Fn(&crate::control::SourceView) -> u64| {
        s.jails
            .iter()
            .flat_map(|j| {
                j.sources.iter().map(move |src| {
                    (
                        format!(
                            "{{jail=\"{}\",kind=\"{}\",source=\"{}\"}}",
                            label(&j.name),
                            label(&src.kind),
                            label(&src.path)
                        ),
                        f(src).to_string(),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    family(
        "sipwarden_source_up",
        "gauge",
        "1 when the source is healthy (Event Socket connected, file followed).",
        sources(&|x| u64::from(x.healthy)),
    );
    family(
        "sipwarden_source_lines_total",
        "counter",
        "Lines or events read, per source.",
        sources(&|x| x.lines),
    );
    family(
        "sipwarden_source_failures_total",
        "counter",
        "Failures found, per source.",
        sources(&|x| x.matched),
    );
    family(
        "sipwarden_source_too_old_total",
        "counter",
        "Matched lines dated older than findtime when read (not counted), per source.",
        sources(&|x| x.too_old),
    );
    family(
        "sipwarden_source_skewed_total",
        "counter",
        "Lines dated ahead of the clock, or events whose own time was off by over a minute, per source.",
        sources(&|x| x.skewed),
    );
    let dropped: Vec<(String, String)> = s
        .jails
        .iter()
        .flat_map(|j| {
            j.sources.iter().flat_map(move |src| {
                [
                    ("sender", src.dropped_sender, "hep"),
                    ("auth", src.dropped_auth, "hep"),
                    ("malformed", src.dropped_malformed, "hep"),
                    ("kernel", src.dropped_kernel.unwrap_or(0), "wire"),
                ]
                .into_iter()
                .filter(|(_, _, kind)| src.kind == *kind)
                .map(move |(why, n, _)| {
                    (
                        format!(
                            "{{jail=\"{}\",kind=\"{}\",source=\"{}\",reason=\"{why}\"}}",
                            label(&j.name),
                            label(&src.kind),
                            label(&src.path)
                        ),
                        n.to_string(),
                    )
                })
            })
        })
        .collect();
    family(
        "sipwarden_source_dropped_total",
        "counter",
        "Packets a HEP source dropped, per source and reason (sender outside allow, wrong auth key, malformed), or the kernel dropped before a wire sensor saw them (kernel).",
        dropped,
    );
    // Toll fraud, per Event Socket with rules.
    let fraud = |f: &dyn Fn(&crate::fraud::FraudView) -> Vec<(&'static str, u64)>, key: &str| {
        s.jails
            .iter()
            .flat_map(|j| {
                j.sources
                    .iter()
                    .filter_map(move |src| Some((j, src, src.fraud.as_ref()?)))
            })
            .flat_map(|(j, src, fv)| {
                f(fv).into_iter().map(move |(v, n)| {
                    let extra = if key.is_empty() {
                        String::new()
                    } else {
                        format!(",{key}=\"{v}\"")
                    };
                    (
                        format!(
                            "{{jail=\"{}\",source=\"{}\"{extra}}}",
                            label(&j.name),
                            label(&src.path)
                        ),
                        n.to_string(),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    family(
        "sipwarden_fraud_firings_total",
        "counter",
        "Toll-fraud rules fired, per Event Socket and level.",
        fraud(
            &|f| vec![("warning", f.warnings), ("critical", f.criticals)],
            "level",
        ),
    );
    family(
        "sipwarden_fraud_hangups_total",
        "counter",
        "uuid_kill sent for toll fraud, and what FreeSWITCH answered, per Event Socket.",
        fraud(
            &|f| {
                vec![
                    ("sent", f.hangups_sent),
                    ("confirmed", f.hangups_confirmed),
                    ("failed", f.hangups_failed),
                ]
            },
            "result",
        ),
    );
    family(
        "sipwarden_fraud_accounts",
        "gauge",
        "Accounts whose calls a toll-fraud watch follows, per Event Socket.",
        fraud(&|f| vec![("", f.accounts as u64)], ""),
    );
    family(
        "sipwarden_firewall_errors_total",
        "counter",
        "Firewall operations that failed.",
        vec![(
            String::new(),
            m.firewall_errors.load(Ordering::Relaxed).to_string(),
        )],
    );
    let _ = writeln!(
        o,
        "# HELP sipwarden_ban_latency_seconds From a ban's failures reaching the core to the firewall accepting it.\n# TYPE sipwarden_ban_latency_seconds histogram"
    );
    let mut cum = 0u64;
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        cum += m.latency[i].load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "sipwarden_ban_latency_seconds_bucket{{le=\"{b}\"}} {cum}"
        );
    }
    cum += m.latency[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        o,
        "sipwarden_ban_latency_seconds_bucket{{le=\"+Inf\"}} {cum}"
    );
    let _ = writeln!(
        o,
        "sipwarden_ban_latency_seconds_sum {}\nsipwarden_ban_latency_seconds_count {cum}",
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    if let Some(c) = &s.cluster {
        let _ = writeln!(
            o,
            "# HELP sipwarden_cluster_connected 1 when the writer and the reader are both connected and doing their work.\n# TYPE sipwarden_cluster_connected gauge\nsipwarden_cluster_connected {}\n# HELP sipwarden_cluster_published_total Bans and unbans published.\n# TYPE sipwarden_cluster_published_total counter\nsipwarden_cluster_published_total {}\n# HELP sipwarden_cluster_received_total Bans and unbans received from peers.\n# TYPE sipwarden_cluster_received_total counter\nsipwarden_cluster_received_total {}\n# HELP sipwarden_cluster_queued Publications waiting for Redis.\n# TYPE sipwarden_cluster_queued gauge\nsipwarden_cluster_queued {}\n# HELP sipwarden_cluster_peers Peers seen.\n# TYPE sipwarden_cluster_peers gauge\nsipwarden_cluster_peers {}",
            u8::from(c.connected),
            c.published,
            c.received,
            c.queued,
            c.peers.len()
        );
        let _ = writeln!(
            o,
            "# HELP sipwarden_cluster_skipped_total Keys and stream entries under the prefix of the wrong type or shape, skipped.\n# TYPE sipwarden_cluster_skipped_total counter\nsipwarden_cluster_skipped_total {}\n# HELP sipwarden_cluster_task_up 1 when the cluster task is connected and doing its work.\n# TYPE sipwarden_cluster_task_up gauge",
            c.skipped
        );
        for t in &c.tasks {
            let _ = writeln!(
                o,
                "sipwarden_cluster_task_up{{task=\"{}\"}} {}",
                label(&t.name),
                u8::from(t.up)
            );
        }
        let _ = writeln!(
            o,
            "# HELP sipwarden_cluster_task_restarts_total Sessions of the cluster task started again after one ended, erred or panicked.\n# TYPE sipwarden_cluster_task_restarts_total counter"
        );
        for t in &c.tasks {
            let _ = writeln!(
                o,
                "sipwarden_cluster_task_restarts_total{{task=\"{}\"}} {}",
                label(&t.name),
                t.restarts
            );
        }
    }
    if !s.tasks.is_empty() {
        let _ = writeln!(
            o,
            "# HELP sipwarden_task_up 1 while a supervised task (a source, the store writer) runs its work.\n# TYPE sipwarden_task_up gauge"
        );
        for t in &s.tasks {
            let _ = writeln!(
                o,
                "sipwarden_task_up{{task=\"{}\"}} {}",
                label(&t.name),
                u8::from(t.up)
            );
        }
        let _ = writeln!(
            o,
            "# HELP sipwarden_task_restarts_total Runs of a supervised task started again after a panic.\n# TYPE sipwarden_task_restarts_total counter"
        );
        for t in &s.tasks {
            let _ = writeln!(
                o,
                "sipwarden_task_restarts_total{{task=\"{}\"}} {}",
                label(&t.name),
                t.restarts
            );
        }
    }
    if !s.feeds.is_empty() {
        let _ = writeln!(
            o,
            "# HELP sipwarden_feed_entries Entries of a blocklist feed in force.\n# TYPE sipwarden_feed_entries gauge"
        );
        for f in &s.feeds {
            let _ = writeln!(
                o,
                "sipwarden_feed_entries{{feed=\"{}\"}} {}",
                label(&f.name),
                f.entries
            );
        }
        let _ = writeln!(
            o,
            "# HELP sipwarden_feed_up 1 when the feed's last fetch succeeded.\n# TYPE sipwarden_feed_up gauge"
        );
        for f in &s.feeds {
            let _ = writeln!(
                o,
                "sipwarden_feed_up{{feed=\"{}\"}} {}",
                label(&f.name),
                u8::from(f.error.is_none() && f.last_ok.is_some())
            );
        }
    }
    if let Some(st) = &s.store {
        let _ = writeln!(
            o,
            "# HELP sipwarden_store_up 1 when the state store's last write and check succeeded.\n# TYPE sipwarden_store_up gauge\nsipwarden_store_up {}\n# HELP sipwarden_store_errors_total State store problems seen (write errors; a vanished, replaced or damaged database).\n# TYPE sipwarden_store_errors_total counter\nsipwarden_store_errors_total {}\n# HELP sipwarden_store_repairs_total Times the state store was rebuilt from the bans in force.\n# TYPE sipwarden_store_repairs_total counter\nsipwarden_store_repairs_total {}",
            u8::from(st.ok),
            st.errors,
            st.repairs
        );
    }
    if let Some(a) = &s.actions {
        for (name, help, v) in [
            (
                "run",
                "Action commands started (fail2ban actions beside the kernel ban).",
                a.run,
            ),
            (
                "failed",
                "Action commands that exited non-zero, could not start or timed out.",
                a.failed,
            ),
            (
                "timed_out",
                "Action commands killed at their timeout.",
                a.timed_out,
            ),
            (
                "dropped",
                "Action commands dropped: their jail's queue was full.",
                a.dropped,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP sipwarden_action_commands_{name}_total {help}\n# TYPE sipwarden_action_commands_{name}_total counter\nsipwarden_action_commands_{name}_total {v}"
            );
        }
        if !a.notify.is_empty() {
            for (name, help, f) in [
                (
                    "sent",
                    "Notifications delivered, by kind (webhook, abuseipdb).",
                    &(|c: &crate::notify::CountsView| c.sent)
                        as &dyn Fn(&crate::notify::CountsView) -> u64,
                ),
                (
                    "failed",
                    "Notifications that failed after their retries, by kind.",
                    &|c| c.failed,
                ),
                (
                    "retries",
                    "Notification tries made again after a failed one, by kind.",
                    &|c| c.retries,
                ),
                (
                    "rate_limited",
                    "Reports refused by the service's rate limit (429), by kind.",
                    &|c| c.rate_limited,
                ),
                (
                    "skipped",
                    "Reports not sent: the address was reported in the last 15 minutes, or the quota is spent.",
                    &|c| c.skipped,
                ),
            ] {
                let _ = writeln!(
                    o,
                    "# HELP sipwarden_notifications_{name}_total {help}\n# TYPE sipwarden_notifications_{name}_total counter"
                );
                for c in &a.notify {
                    let _ = writeln!(
                        o,
                        "sipwarden_notifications_{name}_total{{kind=\"{}\"}} {}",
                        label(&c.kind),
                        f(c)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        o,
        "# HELP sipwarden_uptime_seconds Seconds since the daemon started.\n# TYPE sipwarden_uptime_seconds gauge\nsipwarden_uptime_seconds {}",
        s.uptime_s
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.observe_ban(0.0005);
        m.observe_ban(0.02);
        m.observe_ban(9.0);
        let s = StatusView {
            version: "x".into(),
            started: "t".into(),
            uptime_s: 5,
            firewall: "none".into(),
            config: "c".into(),
            jails: vec![],
            actions: None,
            cluster: None,
            feeds: vec![],
            names: vec![],
            store: Some(crate::control::StoreView {
                ok: false,
                errors: 2,
                ..Default::default()
            }),
            tasks: vec![crate::supervise::TaskView {
                name: "[j] event socket 127.0.0.1:8021".into(),
                up: true,
                restarts: 2,
                error: None,
            }],
        };
        let out = render(&s, &m);
        assert!(out.contains("\nsipwarden_store_up 0\n"), "{out}");
        assert!(
            out.contains(
                "\nsipwarden_task_restarts_total{task=\"[j] event socket 127.0.0.1:8021\"} 2\n"
            ),
            "{out}"
        );
        assert!(out.contains("\nsipwarden_store_errors_total 2\n"), "{out}");
        assert!(
            out.contains("sipwarden_ban_latency_seconds_bucket{le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("sipwarden_ban_latency_seconds_bucket{le=\"0.025\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("sipwarden_ban_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("sipwarden_ban_latency_seconds_count 3\n"));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// A cluster task that is down shows as down, with its restarts, and
    /// `connected` follows the tasks.
    #[test]
    fn cluster_tasks_and_skipped_keys() {
        let task = |name: &str, up: bool, restarts: u64| crate::cluster::TaskView {
            name: name.into(),
            up,
            restarts,
            error: (!up).then(|| "redis unreachable".into()),
        };
        let s = StatusView {
            version: "x".into(),
            started: "t".into(),
            uptime_s: 5,
            firewall: "none".into(),
            config: "c".into(),
            jails: vec![],
            actions: Some(crate::action::ActionsView {
                run: 3,
                failed: 1,
                timed_out: 1,
                dropped: 0,
                notify: vec![crate::notify::CountsView {
                    kind: "webhook".into(),
                    sent: 4,
                    failed: 1,
                    retries: 2,
                    rate_limited: 0,
                    skipped: 0,
                }],
            }),
            cluster: Some(crate::cluster::ClusterView {
                node: "n1".into(),
                redis: "10.0.0.5:6379".into(),
                connected: false,
                published: 1,
                received: 2,
                queued: 3,
                uncounted: 0,
                skipped: 4,
                peers: vec![],
                tasks: vec![task("writer", true, 0), task("reader", false, 7)],
                error: Some("reader: redis unreachable".into()),
            }),
            feeds: vec![],
            names: vec![],
            store: None,
            tasks: vec![],
        };
        let out = render(&s, &Metrics::default());
        for line in [
            "\nsipwarden_cluster_connected 0\n",
            "\nsipwarden_cluster_skipped_total 4\n",
            "\nsipwarden_cluster_task_up{task=\"writer\"} 1\n",
            "\nsipwarden_cluster_task_up{task=\"reader\"} 0\n",
            "\nsipwarden_cluster_task_restarts_total{task=\"reader\"} 7\n",
            "\nsipwarden_action_commands_run_total 3\n",
            "\nsipwarden_action_commands_failed_total 1\n",
            "\nsipwarden_action_commands_timed_out_total 1\n",
            "\nsipwarden_action_commands_dropped_total 0\n",
            "\nsipwarden_notifications_sent_total{kind=\"webhook\"} 4\n",
            "\nsipwarden_notifications_retries_total{kind=\"webhook\"} 2\n",
        ] {
            assert!(out.contains(line), "{line:?} in {out}");
        }
    }
}
