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
pub mod handler;
pub mod page;
pub mod recent;
pub mod server;
pub mod views;

pub use views::{
    BanRef, BanView, Count, FeedView, JailView, NameView, RecentEvent, RecentView, SourceView,
    StatusView, StoreView, UnbanView,
};

use serde::{Deserialize, Serialize};

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
    /// A ban a toll-fraud rule asks for (from inside the daemon only:
    /// never read from the socket nor written to it).
    #[serde(skip)]
    FraudBan {
        /// The jail of the Event Socket that saw the calls.
        jail: String,
        /// The calls' source address.
        addr: std::net::IpAddr,
        /// The rule's `bantime` (the jail's when absent).
        duration: Option<String>,
    },
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
