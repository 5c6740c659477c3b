//! What status, the dashboard and metrics show of a connection's fraud
//! watch: plain data, accounts already escaped.

use serde::{Deserialize, Serialize};

use super::rule::Level;

/// A firing as status shows it (account and numbers escaped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredView {
    /// When (RFC 3339).
    pub time: String,
    /// The rule.
    pub rule: String,
    /// Warning or critical.
    pub level: Level,
    /// The account, escaped.
    pub account: String,
    /// What crossed.
    pub metric: String,
    /// Its value.
    pub value: u64,
    /// The threshold.
    pub threshold: u32,
    /// Hang-ups sent because of it (FreeSWITCH's answers are counted in
    /// [`FraudView`]'s `hangups_*`).
    pub hung_up: u64,
    /// Source addresses whose ban it asked of the jail (which may refuse
    /// one: the jail's bans say which are in force).
    pub banned: Vec<String>,
}

/// An account under watch, as status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The account, escaped.
    pub account: String,
    /// Its live calls.
    pub live: usize,
    /// Rules at a level for it: `rule: level`.
    pub levels: Vec<String>,
    /// Rules holding it (new calls hung up) and until when.
    pub held: Vec<String>,
}

/// What status and the dashboard show of a connection's fraud watch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FraudView {
    /// The rules watching this connection.
    pub rules: Vec<String>,
    /// Accounts followed.
    pub accounts: usize,
    /// Accounts at a level or held (the first 50).
    pub watched: Vec<AccountView>,
    /// The last firings, newest last.
    pub fired: Vec<FiredView>,
    /// Accounts forgotten at the bound.
    pub evicted: u64,
    /// Calls not kept at the per-account bound.
    pub overflow: u64,
    /// Warning firings so far.
    #[serde(default)]
    pub warnings: u64,
    /// Critical firings so far.
    #[serde(default)]
    pub criticals: u64,
    /// `uuid_kill` sent so far.
    #[serde(default)]
    pub hangups_sent: u64,
    /// ... that FreeSWITCH confirmed.
    #[serde(default)]
    pub hangups_confirmed: u64,
    /// ... refused, failed or not sent.
    #[serde(default)]
    pub hangups_failed: u64,
}
