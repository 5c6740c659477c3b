//! The control plane: line-delimited JSON over a Unix socket, spoken by the
//! `sipwarden` CLI (and by scripts). The status shapes here are the ones any
//! later HTTP API serves too.
//!
//! One request per line, one response per line:
//!
//! ```text
//! {"cmd":"ping"}
//! {"cmd":"status"}                      {"cmd":"status","jail":"freeswitch"}
//! {"cmd":"status","jail":"freeswitch","limit":500,"cursor":"1764085254659_cb007107_32"}
//! {"cmd":"ban","jail":"freeswitch","addr":"203.0.113.7","for":"2h","force":false}
//! {"cmd":"unban","addr":"203.0.113.7"}  {"cmd":"unban","addr":"198.51.100.0/24","jail":"freeswitch"}
//! {"cmd":"unban","all":true}
//! {"cmd":"reload"}                     {"cmd":"reload","force":true}
//! ```
//!
//! Responses are `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`.
//! A jail's ban list comes in pages (see [`page`]): at most `limit` bans
//! (default 1,000), and `next_cursor` when more follow.

pub mod client;
pub mod page;
pub mod recent;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::duration::{BanTime, Duration};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is the daemon alive?
    Ping {},
    /// Jails with counts, or one jail in detail.
    Status {
        /// One jail, with its banned addresses.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jail: Option<String>,
        /// With `jail`: bans in the page ([`page::DEFAULT_PAGE`] when absent,
        /// at most [`page::MAX_PAGE`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        /// With `jail`: the page after this one (a page's `next_cursor`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Ban an address or prefix by hand.
    Ban {
        /// The jail the ban belongs to.
        jail: String,
        /// Address or CIDR prefix.
        addr: String,
        /// Ban length (default: the jail's bantime); `-1` for permanent.
        #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
        duration: Option<String>,
        /// Ban even an `ignoreip` address.
        #[serde(default)]
        force: bool,
    },
    /// Lift bans.
    Unban {
        /// Address or prefix (absent with `all`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<String>,
        /// Only in this jail.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jail: Option<String>,
        /// Every ban (of `jail`, or of all jails).
        #[serde(default)]
        all: bool,
    },
    /// Re-read the configuration; one that does not parse, is empty or
    /// would remove every running jail is refused and the old one kept.
    Reload {
        /// Apply an empty configuration, or one removing every running
        /// jail (their bans are lifted), anyway.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// Recent failures, attacks per minute, top addresses and user names
    /// (the dashboard's data).
    Recent {},
}

/// The answer to a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, on success, as JSON text (serialised straight from the
    /// view, without an intermediate tree: a status of 100,000 bans stays
    /// cheap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
    /// What went wrong, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::value::to_raw_value(&result) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::error(format!("internal error encoding the answer: {e}")),
        }
    }

    /// A failure with a message.
    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }

    /// The result parsed into `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.result.as_ref()?.get()).ok()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_reject_junk() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"ban","jail":"fs","addr":"192.0.2.1","for":"2h"}"#)
                .unwrap();
        assert_eq!(
            r,
            Request::Ban {
                jail: "fs".into(),
                addr: "192.0.2.1".into(),
                duration: Some("2h".into()),
                force: false
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"unban","all":true}"#).unwrap(),
            Request::Unban {
                addr: None,
                jail: None,
                all: true
            }
        );
        for bad in [
            r#"{"cmd":"explode"}"#,
            r#"{"cmd":"ping","x":1}"#,
            "not json",
            r#"{"cmd":"ban","jail":"x"}"#,
            "[]",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn response_shapes() {
        let s = serde_json::to_string(&Response::error("nope")).unwrap();
        assert_eq!(s, r#"{"ok":false,"error":"nope"}"#);
        let s = serde_json::to_string(&Response::ok(serde_json::json!({"pong": true}))).unwrap();
        assert_eq!(s, r#"{"ok":true,"result":{"pong":true}}"#);
    }
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
