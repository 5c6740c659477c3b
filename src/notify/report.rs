//! What a notification says about one ban: built from the decision and what
//! was seen of the address, pure. Attacker-influenced values (none today
//! but the address itself, which is parsed) are data: serde writes the
//! JSON, so no value can break out of its string.

use ipnet::IpNet;
use serde::Serialize;

use crate::decision::{BanDecision, BanReason};
use crate::event::Time;
use crate::net::DisplayNet;

/// The JSON a webhook receives (`event` is always `"ban"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `"ban"`.
    pub event: &'static str,
    /// The deciding jail.
    pub jail: String,
    /// The banned address, for a single address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The banned network (`2001:db8:1:2::/64`), for a prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Failures counted when it was decided (0 for a manual ban).
    pub failures: u32,
    /// `failures`, `burst` or `manual`.
    pub reason: &'static str,
    /// The first failure seen of it (RFC 3339, UTC), when known.
    pub first_seen: Option<String>,
    /// The last failure seen of it, when known.
    pub last_seen: Option<String>,
    /// When the ban began.
    pub start: String,
    /// When it ends; `null` for permanent.
    pub end: Option<String>,
    /// The node that decided it.
    pub node: String,
}

/// The word for a reason, as the store and status write it.
pub fn reason_word(r: BanReason) -> &'static str {
    match r {
        BanReason::Failures => "failures",
        BanReason::Burst => "burst",
        BanReason::Manual => "manual",
        BanReason::Cluster => "cluster",
        BanReason::Fraud => "fraud",
    }
}

impl Report {
    /// The report of ban `b`; `seen` = (first, last) failure seen.
    pub fn new(b: &BanDecision, seen: Option<(Time, Time)>, node: &str) -> Report {
        let host = is_host(&b.addr);
        let shown = DisplayNet(&b.addr).to_string();
        Report {
            event: "ban",
            jail: b.jail_name.to_string(),
            address: host.then(|| shown.clone()),
            prefix: (!host).then_some(shown),
            failures: b.failures,
            reason: reason_word(b.reason),
            first_seen: seen.map(|(f, _)| f.to_string()),
            last_seen: seen.map(|(_, l)| l.to_string()),
            start: b.start.to_string(),
            end: b.end.map(|e| e.to_string()),
            node: node.to_string(),
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// AbuseIPDB's `comment`: counts and the jail only; no user name, user
    /// agent or log line (attacker text, and what a server's users typed).
    pub fn abuse_comment(&self) -> String {
        let how = match self.reason {
            "burst" => " at machine speed",
            _ => "",
        };
        format!(
            "sipwarden: {} SIP authentication failure(s){how}, banned by jail {}",
            self.failures, self.jail
        )
    }
}

fn is_host(n: &IpNet) -> bool {
    n.prefix_len() == n.max_prefix_len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::{BanTime, Duration};
    use crate::event::JailId;

    fn ban(addr: &str, reason: BanReason, jail: &str) -> BanDecision {
        BanDecision {
            jail: JailId(0),
            jail_name: jail.into(),
            addr: addr.parse().unwrap(),
            start: Time(1_795_621_254_000),
            end: Some(Time(1_795_624_854_000)),
            bantime: BanTime::For(Duration(3600)),
            failures: 3,
            reason,
        }
    }

    #[test]
    fn fields_of_an_address_and_a_prefix() {
        let seen = Some((Time(1_795_621_253_000), Time(1_795_621_254_000)));
        let r = Report::new(
            &ban("198.51.100.7/32", BanReason::Burst, "sip"),
            seen,
            "pbx-1",
        );
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "event": "ban", "jail": "sip", "address": "198.51.100.7",
                "failures": 3, "reason": "burst",
                "first_seen": "2026-11-25T15:40:53.000Z", "last_seen": "2026-11-25T15:40:54.000Z",
                "start": "2026-11-25T15:40:54.000Z", "end": "2026-11-25T16:40:54.000Z",
                "node": "pbx-1"
            })
        );
        let r = Report::new(
            &ban("2001:db8:1:2::/64", BanReason::Manual, "sip"),
            None,
            "n",
        );
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["prefix"], "2001:db8:1:2::/64");
        assert!(v.get("address").is_none());
        assert!(v["first_seen"].is_null());
        assert_eq!(
            r.abuse_comment(),
            "sipwarden: 3 SIP authentication failure(s), banned by jail sip"
        );
    }

    /// A value with quotes, backslashes or control characters stays inside
    /// its JSON string.
    #[test]
    fn hostile_text_stays_data() {
        let mut r = Report::new(&ban("198.51.100.7/32", BanReason::Failures, "j"), None, "n");
        r.node = "x\",\"reason\":\"forged\\\n\u{0}".into();
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["reason"], "failures");
        assert_eq!(v["node"], "x\",\"reason\":\"forged\\\n\u{0}");
    }
}
