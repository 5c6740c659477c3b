//! Host names where addresses are expected (an Event Socket peer's `host`,
//! the Redis server of `[cluster]`): what the daemon last learnt about each,
//! so the jails that use a name protect all its addresses. Pure: the
//! lookups run in `daemon/names.rs` and hand their answers in with `now`.
//!
//! A lookup that answers replaces the name's addresses. One that fails,
//! times out or answers no address keeps the last good ones (a DNS outage
//! must not make a PBX bannable) and is a warning until a lookup answers
//! again. At start the addresses kept in the store stand in until then.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::event::Time;

/// Most addresses protected for one name; a larger answer keeps the first
/// ones in address order (and says so). A peer has a handful.
pub const MAX_ADDRS_PER_NAME: usize = 64;

/// What is known about one name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameState {
    /// The addresses protected for it: the last good answer, sorted.
    pub addrs: Vec<IpNet>,
    /// When they were resolved; `None` when never.
    pub resolved_at: Option<Time>,
    /// They come from the store (an earlier run): no lookup of this run
    /// has answered yet.
    pub from_store: bool,
    /// Why the last lookup gave no address; `None` once one answered.
    pub problem: Option<String>,
    /// When the lookups began to fail.
    pub problem_since: Option<Time>,
    /// Lookups that failed in a row.
    pub failures: u32,
}

/// What one lookup's answer changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The protected addresses are now different; these were protected
    /// before.
    Addrs {
        /// The addresses before.
        before: Vec<IpNet>,
    },
    /// It answered the addresses already protected.
    Same,
    /// No address: the last good ones stay protected. `first` is the
    /// first failure in a row (or a new reason).
    Kept {
        /// Worth a warning (not repeated for every retry).
        first: bool,
    },
}

/// Every name's state, by name.
#[derive(Clone, Debug, Default)]
pub struct ResolvedNames {
    names: BTreeMap<String, NameState>,
}

/// Canonical, sorted, deduplicated and bounded.
fn normalise(addrs: impl IntoIterator<Item = IpAddr>) -> (Vec<IpNet>, usize) {
    let mut v: Vec<IpNet> = addrs
        .into_iter()
        .map(|a| IpNet::from(a.to_canonical()))
        .collect();
    v.sort_unstable();
    v.dedup();
    let all = v.len();
    v.truncate(MAX_ADDRS_PER_NAME);
    (v, all)
}

impl ResolvedNames {
    /// Addresses `name` resolved to in an earlier run (`at`), from the
    /// store: protected until a lookup of this run answers. Ignored when
    /// one already has.
    pub fn remember(&mut self, name: &str, addrs: Vec<IpAddr>, at: Time) {
        let st = self.names.entry(name.to_string()).or_default();
        if st.resolved_at.is_some() && !st.from_store {
            return;
        }
        let (addrs, _) = normalise(addrs);
        if addrs.is_empty() {
            return;
        }
        st.addrs = addrs;
        st.resolved_at = Some(at);
        st.from_store = true;
    }

    /// A lookup of `name` answered `answer` at `now`: addresses replace the
    /// protected ones; an error or no address keeps them.
    pub fn apply(&mut self, name: &str, answer: Result<Vec<IpAddr>, String>, now: Time) -> Change {
        let st = self.names.entry(name.to_string()).or_default();
        let why = match answer {
            Ok(addrs) => {
                let (addrs, all) = normalise(addrs);
                if !addrs.is_empty() {
                    if all > addrs.len() {
                        tracing::warn!(
                            "peer name {} resolves to {all} addresses; only the first {MAX_ADDRS_PER_NAME} are protected",
                            crate::event::escape_text(name, 255)
                        );
                    }
                    st.problem = None;
                    st.problem_since = None;
                    st.failures = 0;
                    st.resolved_at = Some(now);
                    st.from_store = false;
                    if addrs == st.addrs {
                        return Change::Same;
                    }
                    let before = std::mem::replace(&mut st.addrs, addrs);
                    return Change::Addrs { before };
                }
                "resolves to no address".to_string()
            }
            Err(e) => e,
        };
        let first = st.failures == 0 || st.problem.as_deref() != Some(why.as_str());
        if st.failures == 0 {
            st.problem_since = Some(now);
        }
        st.failures = st.failures.saturating_add(1);
        st.problem = Some(why);
        Change::Kept { first }
    }

    /// The addresses protected for `name` (none when never resolved).
    pub fn addrs(&self, name: &str) -> &[IpNet] {
        self.names.get(name).map_or(&[], |s| &s.addrs)
    }

    /// What is known about `name`.
    pub fn get(&self, name: &str) -> Option<&NameState> {
        self.names.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Issue 16, finding 5: a refresh replaces the addresses; a failure, a
    /// timeout or an empty answer keeps the last good ones and warns once.
    #[test]
    fn refresh_replaces_and_failures_keep_the_last_good_addresses() {
        let mut n = ResolvedNames::default();
        assert!(n.addrs("pbx").is_empty());
        let c = n.apply(
            "pbx",
            Ok(ips(&["192.0.2.2", "2001:db8::1", "192.0.2.2"])),
            Time(1000),
        );
        assert_eq!(c, Change::Addrs { before: vec![] });
        assert_eq!(n.addrs("pbx"), nets(&["192.0.2.2/32", "2001:db8::1/128"]));
        assert_eq!(
            n.apply("pbx", Ok(ips(&["2001:db8::1", "192.0.2.2"])), Time(2000)),
            Change::Same
        );
        // A refresh that drops and adds.
        let c = n.apply("pbx", Ok(ips(&["::ffff:192.0.2.3"])), Time(3000));
        assert_eq!(
            c,
            Change::Addrs {
                before: nets(&["192.0.2.2/32", "2001:db8::1/128"])
            }
        );
        assert_eq!(n.addrs("pbx"), nets(&["192.0.2.3/32"]), "mapped: canonical");
        // Failures keep them; only the first of a kind is worth a warning.
        assert_eq!(
            n.apply("pbx", Err("timed out".into()), Time(4000)),
            Change::Kept { first: true }
        );
        assert_eq!(
            n.apply("pbx", Err("timed out".into()), Time(5000)),
            Change::Kept { first: false }
        );
        assert_eq!(
            n.apply("pbx", Ok(vec![]), Time(6000)),
            Change::Kept { first: true },
            "a new reason is worth a warning"
        );
        let st = n.get("pbx").unwrap();
        assert_eq!(st.addrs, nets(&["192.0.2.3/32"]));
        assert_eq!(st.resolved_at, Some(Time(3000)));
        assert_eq!(st.problem.as_deref(), Some("resolves to no address"));
        assert_eq!((st.problem_since, st.failures), (Some(Time(4000)), 3));
        // It answers again: the problem is gone.
        assert_eq!(
            n.apply("pbx", Ok(ips(&["192.0.2.3"])), Time(7000)),
            Change::Same
        );
        let st = n.get("pbx").unwrap();
        assert_eq!((st.problem.clone(), st.failures), (None, 0));
    }

    /// DNS down at start: the stored addresses stand in until a lookup of
    /// this run answers, and a failure keeps them.
    #[test]
    fn stored_addresses_stand_in_until_a_lookup_answers() {
        let mut n = ResolvedNames::default();
        n.remember("pbx", ips(&["192.0.2.9", "2001:db8::9"]), Time(10));
        assert_eq!(n.addrs("pbx"), nets(&["192.0.2.9/32", "2001:db8::9/128"]));
        assert!(n.get("pbx").unwrap().from_store);
        assert_eq!(
            n.apply("pbx", Err("no answer".into()), Time(20)),
            Change::Kept { first: true }
        );
        assert_eq!(n.addrs("pbx").len(), 2);
        let st = n.get("pbx").unwrap();
        assert!(st.from_store && st.resolved_at == Some(Time(10)));
        n.apply("pbx", Ok(ips(&["192.0.2.10"])), Time(30));
        assert!(!n.get("pbx").unwrap().from_store);
        // The store never overrides what this run resolved.
        n.remember("pbx", ips(&["192.0.2.9"]), Time(10));
        assert_eq!(n.addrs("pbx"), nets(&["192.0.2.10/32"]));
    }

    #[test]
    fn answers_are_bounded() {
        let mut n = ResolvedNames::default();
        let many: Vec<IpAddr> = (0..200u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i)))
            .collect();
        n.apply("big", Ok(many), Time(0));
        assert_eq!(n.addrs("big").len(), MAX_ADDRS_PER_NAME);
    }
}
