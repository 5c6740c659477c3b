//! Toll fraud on live calls: a ledger of each account's calls, built from
//! FreeSWITCH's channel events, and rules per account and destination that
//! fire at a warning and a critical threshold.
//!
//! ```text
//! channel events ──► CallEvent ──► Watch (ledger + rules, pure) ──► Orders
//! (source/esl/calls.rs)             time comes in as `now`         hang up (same socket),
//!                                                                   ban (control path),
//!                                                                   webhook (webhook.rs)
//! ```
//!
//! The core ([`Watch`]) is synchronous and pure: it is told the time and
//! answers with [`Order`]s; the Event Socket connection carries them out.
//! Memory is bounded per account ([`watch::MAX_LIVE`] live calls) and
//! overall ([`watch::MAX_ACCOUNTS`]).
//!
//! Who and where: the account is the authenticated user, else the gateway,
//! else the source address; the destination is the A-leg's dialled number.
//! Both are the caller's data: compared, counted and shown escaped, never
//! put in a command. The only value that reaches a command is a call's
//! `Unique-ID`, and only as a [`Uuid`] (parsed, then written back by us).

pub mod config;
pub mod rule;
pub mod view;
pub mod watch;
pub mod webhook;

use std::fmt;
use std::net::IpAddr;

use crate::event::Time;

pub use self::rule::{Actions, FraudRule, Hours, Level, Limit, Metric, Prefixes, Threshold};
pub use self::view::FraudView;
pub use self::watch::Watch;

/// A channel's `Unique-ID`, checked to be a UUID: the one value from an
/// event that goes into a command (`uuid_kill`), written back from its
/// 128 bits, never copied as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(u128);

impl Uuid {
    /// `8-4-4-4-12` hexadecimal digits, nothing else.
    pub fn parse(text: &str) -> Option<Uuid> {
        let b = text.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut v: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let d = (c as char).to_digit(16)?;
            v = (v << 4) | u128::from(d);
        }
        Some(Uuid(v))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// What happened to a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// `CHANNEL_CREATE`: a call begins.
    Create,
    /// `CHANNEL_ANSWER`.
    Answer,
    /// `CHANNEL_HANGUP_COMPLETE`: it ended.
    Hangup,
}

/// One channel event of an inbound A-leg, as the ledger needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallEvent {
    /// What happened.
    pub kind: CallKind,
    /// The channel.
    pub uuid: Uuid,
    /// Who pays: the authenticated user, the gateway or the source address
    /// (caller's data: shown escaped).
    pub account: Box<str>,
    /// The dialled number (caller's data).
    pub dest: Box<str>,
    /// The A-leg's source address as FreeSWITCH saw the packet.
    pub source: Option<IpAddr>,
    /// When it happened.
    pub time: Time,
}

/// One threshold crossed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Firing {
    /// The rule.
    pub rule: String,
    /// Warning or critical.
    pub level: Level,
    /// The account (raw; escape it to show it).
    pub account: String,
    /// Which measure crossed.
    pub metric: &'static str,
    /// Its value.
    pub value: u64,
    /// The threshold it reached.
    pub threshold: u32,
    /// What the level does.
    pub actions: Actions,
    /// The account's live calls matching the rule: `(Unique-ID, number)`.
    pub calls: Vec<(String, String)>,
    /// When.
    pub time: Time,
}

/// What the engine asks of the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// A threshold was crossed: log it (and POST it when its actions say).
    Fired(Firing),
    /// Hang up this call (`bgapi uuid_kill`).
    Hangup {
        /// The channel.
        uuid: Uuid,
        /// The rule that asked.
        rule: String,
        /// Whose call (raw).
        account: String,
        /// Its number (raw).
        dest: String,
    },
    /// Ban this source address in the connection's jail.
    Ban {
        /// The A-leg's source.
        addr: IpAddr,
        /// The rule that asked.
        rule: String,
        /// Whose calls came from it (raw).
        account: String,
        /// The rule's `bantime`, if it has one.
        bantime: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_parsed_and_written_back() {
        let u = Uuid::parse("F4DECBAB-b940-42da-b61b-9b7852622e57").unwrap();
        assert_eq!(u.to_string(), "f4decbab-b940-42da-b61b-9b7852622e57");
        for bad in [
            "",
            "f4decbab-b940-42da-b61b-9b7852622e5",
            "f4decbab-b940-42da-b61b-9b7852622e57\n",
            "f4decbab-b940-42da-b61b-9b7852622e5\n",
            "f4decbabxb940-42da-b61b-9b7852622e57",
            "f4decbab-b940-42da-b61b-9b7852622eg7",
            "f4decbab-b940-42da-b61b-9b785262;e57",
            "+4decbab-b940-42da-b61b-9b7852622e57",
        ] {
            assert_eq!(Uuid::parse(bad), None, "{bad:?}");
        }
    }
}
