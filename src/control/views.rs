//! What the daemon shows of itself: the shapes `status`, `unban` and the
//! dashboard's `recent` answer with (the CLI, the HTTP API and the
//! dashboard read the same), and how a jail becomes its view.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::page::Page;
use crate::duration::{BanTime, Duration};
use crate::event::{JailId, Time};
use crate::jail::{BanReason, DisplayNet, Jail, JailSet};

/// `status`: the daemon and its jails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// sipwarden's version.
    pub version: String,
    /// When the daemon started (RFC 3339).
    pub started: String,
    /// Seconds since start.
    pub uptime_s: i64,
    /// The firewall backend in use (`nftables` or `none`).
    pub firewall: String,
    /// Where the configuration came from.
    pub config: String,
    /// Every running jail.
    pub jails: Vec<JailView>,
    /// The cluster, when `[cluster]` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterView>,
    /// Blocklist feeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<FeedView>,
    /// The state store's health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreView>,
    /// Peer host names (Event Socket hosts, the Redis server) and the
    /// addresses protected for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<NameView>,
    /// The supervised background tasks (sources, the store writer): up or
    /// not, restarts after a panic, the last error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<crate::supervise::TaskView>,
    /// The jails' fail2ban actions' commands, when a jail has actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<crate::action::ActionsView>,
}

/// A peer given by host name: its addresses are protected in the jails
/// that use it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NameView {
    /// The host name as configured.
    pub name: String,
    /// The jails that protect its addresses.
    pub jails: Vec<String>,
    /// The addresses protected for it: the last good answer.
    pub addrs: Vec<String>,
    /// When they were resolved (RFC 3339); absent when never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// They come from the store (an earlier run): no lookup of this run
    /// answered yet.
    #[serde(default)]
    pub from_store: bool,
    /// Why the last lookup gave no address (a warning); absent once one
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Since when the lookups fail (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_since: Option<String>,
}

/// The state store's health: watched while the daemon runs, rebuilt from
/// the bans in force when it vanishes or is damaged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreView {
    /// The database file.
    pub path: String,
    /// Whether the last write and the last check succeeded.
    pub ok: bool,
    /// What is wrong right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Since when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Problems seen since start (write errors, a vanished, replaced or
    /// damaged database).
    pub errors: u64,
    /// Times the database was rebuilt since start.
    pub repairs: u64,
    /// The last problem, kept after it is repaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it began (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
}

/// One blocklist feed's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedView {
    /// Its name.
    pub name: String,
    /// Entries in force (after merging, and cutting out protected
    /// addresses).
    pub entries: u64,
    /// Entries of the feed that held addresses sipwarden never blocks
    /// (`ignoreip`, this host, peers) and were cut around them.
    #[serde(default)]
    pub cut: u64,
    /// When the last fetch succeeded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok: Option<String>,
    /// The last fetch's error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One jail's counters (the facts `fail2ban-client status JAIL` shows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JailView {
    /// The jail's name.
    pub name: String,
    /// Its filter.
    pub filter: Option<String>,
    /// Failures that trigger a ban.
    pub maxretry: u32,
    /// Counting window.
    pub findtime: Duration,
    /// Ban length.
    pub bantime: BanTime,
    /// Addresses with failures inside findtime, not banned.
    pub currently_failing: u64,
    /// Failures counted since start.
    pub total_failed: u64,
    /// Bans in force.
    pub currently_banned: u64,
    /// Bans since start (restored ones not included).
    pub total_banned: u64,
    /// Bans lifted since start (expired or by hand).
    #[serde(default)]
    pub total_unbanned: u64,
    /// Addresses forgotten to respect `max_tracked`.
    pub evictions: u64,
    /// IPv6 sources are counted and banned as their prefix of this many
    /// bits (128: each address alone).
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Where the failures come from.
    pub sources: Vec<SourceView>,
    /// The bans in force (only in `status JAIL`): one page of them, oldest
    /// first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banned: Option<Vec<BanView>>,
    /// Where the next page starts, when more bans follow this page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One source of a jail.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceView {
    /// `file`.
    pub kind: String,
    /// What it reads.
    pub path: String,
    /// Whether it is open and followed right now.
    pub healthy: bool,
    /// Why it is not, when it is not and the source knows (`a FIFO (named
    /// pipe), not a regular file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Lines read.
    pub lines: u64,
    /// Lines that matched.
    pub matched: u64,
    /// Matched lines dated older than the jail's `findtime` when read: not
    /// counted (a wrong `logtimezone`, a clock that is off, or old lines
    /// read with `from_start`).
    #[serde(default)]
    pub too_old: u64,
    /// Lines dated more than a minute ahead of this host's clock (counted
    /// as now), or Event Socket events whose own time was off by more than
    /// a minute either way (counted at arrival).
    #[serde(default)]
    pub skewed: u64,
    /// The last too-old or skewed one's own time minus this host's, in
    /// seconds (negative: behind); absent while there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skew_s: Option<i64>,
    /// An Event Socket's toll-fraud watch: accounts under watch and what
    /// fired (accounts escaped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraud: Option<crate::fraud::FraudView>,
    /// Packets dropped (HEP): from senders outside `allow`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_sender: u64,
    /// Packets dropped (HEP): no or a wrong authentication key.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_auth: u64,
    /// Packets dropped (HEP): not HEP, broken HEP, or TCP connections
    /// refused over the bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_malformed: u64,
    /// Packets the wire sensor took from the kernel (IP packets to or from
    /// its SIP ports, SIP or not); absent for other sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    /// Packets the kernel dropped before the wire sensor saw them (its ring
    /// was full: the sensor did not keep up, failures were missed); absent
    /// for other sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_kernel: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_ipv6_prefix() -> u8 {
    crate::jail::prefix::DEFAULT_IPV6_PREFIX
}

/// One ban in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BanView {
    /// Address, or prefix in CIDR form.
    pub addr: String,
    /// The jail.
    pub jail: String,
    /// Start (RFC 3339).
    pub start: String,
    /// End (RFC 3339), absent when permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Seconds left, absent when permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_s: Option<i64>,
    /// Failures that caused it (0 for manual bans).
    pub failures: u32,
    /// `failures`, `manual` or `cluster`.
    pub reason: String,
    /// The node that decided a ban received from the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// For an IPv6 prefix banned for its failures: some of the addresses
    /// seen failing in it (at most
    /// [`SAMPLE_ADDRS`](crate::jail::prefix::SAMPLE_ADDRS), first seen first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
    /// Other addresses of the prefix failed too, beyond `seen`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seen_more: bool,
}

/// The result of `unban`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnbanView {
    /// What was lifted.
    pub unbanned: Vec<BanRef>,
}

/// A (jail, address) pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BanRef {
    /// The jail.
    pub jail: String,
    /// The address or prefix.
    pub addr: String,
}

/// Recent activity, for the dashboard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentView {
    /// The last failures, newest first.
    pub events: Vec<RecentEvent>,
    /// Failures per minute over the last hour, oldest first (the last one is
    /// the current minute).
    pub per_minute: Vec<u64>,
    /// Most frequent sources among the recent failures.
    pub top_addrs: Vec<Count>,
    /// Most frequent user names tried among the recent failures.
    pub top_users: Vec<Count>,
}

/// One failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentEvent {
    /// When (RFC 3339).
    pub time: String,
    /// The jail.
    pub jail: String,
    /// The source.
    pub addr: String,
    /// What kind (`register_auth`, `invite_auth`, ...).
    pub kind: String,
    /// The user tried, when known (attacker text: escape it when shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A value and how often it was seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Count {
    /// The value.
    pub value: String,
    /// How often.
    pub count: u64,
}

/// The view of one jail for `status`, with one page of its bans when
/// `bans` asks for them.
pub fn jail_view(
    jails: &JailSet,
    j: &Jail,
    sources: Vec<SourceView>,
    bans: Option<&Page>,
    now: Time,
    origins: &HashMap<(JailId, IpNet), Arc<str>>,
) -> JailView {
    let c = j.counters();
    let (page, next_cursor) = match bans {
        Some(p) => {
            let (items, next) = p.select(j.banned().iter().map(|(a, b)| (b.start, *a, b)));
            (Some(items), next.map(|c| c.to_string()))
        }
        None => (None, None),
    };
    JailView {
        name: j.name().to_string(),
        filter: jails.filter(j.id()).map(String::from),
        maxretry: j.policy().maxretry,
        findtime: j.policy().findtime,
        bantime: j.policy().bantime,
        currently_failing: j.failing_count() as u64,
        total_failed: c.total_failed,
        currently_banned: j.banned().len() as u64,
        total_banned: c.total_banned,
        total_unbanned: c.total_unbanned,
        evictions: c.evictions,
        ipv6_prefix: j.policy().ipv6_prefix,
        sources,
        banned: page.map(|items| {
            items
                .into_iter()
                .map(|(_, addr, b)| {
                    let seen = j.seen(&addr);
                    BanView {
                        addr: DisplayNet(&addr).to_string(),
                        jail: j.name().to_string(),
                        start: b.start.to_string(),
                        end: b.end.map(|e| e.to_string()),
                        remaining_s: b.end.map(|e| (e.0 - now.0).max(0) / 1000),
                        failures: b.failures,
                        reason: match b.reason {
                            BanReason::Failures => "failures".into(),
                            BanReason::Burst => "burst".into(),
                            BanReason::Manual => "manual".into(),
                            BanReason::Cluster => "cluster".into(),
                            BanReason::Fraud => "fraud".into(),
                        },
                        origin: origins.get(&(j.id(), addr)).map(|o| o.to_string()),
                        seen: seen
                            .map(|s| s.addrs().iter().map(ToString::to_string).collect())
                            .unwrap_or_default(),
                        seen_more: seen.is_some_and(crate::jail::Sample::more),
                    }
                })
                .collect()
        }),
        next_cursor,
    }
}
