//! Drift: the table or its sets gone (a flushed ruleset), elements deleted
//! by hand; laid out and re-added from the ledger.

use std::net::IpAddr;

use super::NftEnforcer;
use super::batch::{
    NFPROTO_INET, NFT_MSG_GETCHAIN, NFT_MSG_GETSETELEM, NFT_MSG_GETTABLE, NFTA_CHAIN_NAME,
    NFTA_CHAIN_TABLE, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_TABLE_NAME, explain_io,
};
use super::layout::apply_layout;
use crate::enforce::EnforceError;
use crate::enforce::elements::{
    NFT_SET_ELEM_INTERVAL_END, NFTA_DATA_VALUE, NFTA_LIST_ELEM, NFTA_SET_ELEM_FLAGS,
    NFTA_SET_ELEM_KEY,
};
use crate::enforce::netlink::{
    NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, attrs, explain,
};
use crate::enforce::scope::ScopeId;
use crate::enforce::sets::{SetKind, SetName};
use crate::event::Time;
use crate::net::AddrSet;

/// How often the table and chain are checked, and the set contents compared
/// (at most; see [`next_verify_wait`]).
pub(super) const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
pub(super) const VERIFY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The comparison of the sets' contents takes at most this share of a core
/// (1/50, 2 %), whatever the sets hold.
const VERIFY_SHARE: u32 = 50;

/// The longest wait between two comparisons: elements deleted by hand are
/// put back within this time even in the largest sets.
const VERIFY_EVERY_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// The CPU time this thread has used so far, in user space and in the
/// kernel on its behalf; `None` where the clock is not there.
fn thread_cpu() -> Option<std::time::Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (r == 0).then(|| {
        std::time::Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        )
    })
}

/// The wait before the next comparison of the sets' contents, after one that
/// took `took` of CPU. Listing a set makes the kernel walk its hash table again for
/// every reply of the dump, so the cost grows faster than the set: with
/// 100,000 elements a listing took about half a second of a core, every 5 s,
/// in every daemon. Waiting 50 times as long as the last one took keeps it
/// under 2 % of a core; small sets are still compared every 5 s.
pub(super) fn next_verify_wait(took: std::time::Duration) -> std::time::Duration {
    took.saturating_mul(VERIFY_SHARE)
        .clamp(VERIFY_EVERY, VERIFY_EVERY_MAX)
}

/// The chain the table drops in.
const CHAIN: &str = "prerouting";
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_CHAIN_POLICY: u16 = 5;
const NF_ACCEPT: u32 = 1;

/// The chain as the kernel holds it: rules (by handle, in order) and policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ChainState {
    rules: Vec<u64>,
    policy: Option<u32>,
}

impl ChainState {
    fn policy_name(&self) -> &'static str {
        match self.policy {
            Some(NF_ACCEPT) => "accept",
            Some(0) => "drop",
            _ => "other",
        }
    }
}

fn be_u32(b: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(b).ok().map(u32::from_be_bytes)
}

impl NftEnforcer {
    /// The table's chain as the kernel holds it (its rules' handles and its
    /// policy), or `None` when the table or the chain is gone (a flushed
    /// ruleset removes both).
    pub(super) fn chain_state(&mut self) -> Result<Option<ChainState>, EnforceError> {
        let mut state = ChainState::default();
        for (msg, flags, attrs_) in [
            (
                NFT_MSG_GETTABLE,
                NLM_F_REQUEST | NLM_F_ACK,
                vec![(NFTA_TABLE_NAME, self.table.clone())],
            ),
            (
                NFT_MSG_GETCHAIN,
                NLM_F_REQUEST | NLM_F_ACK,
                vec![
                    (NFTA_CHAIN_TABLE, self.table.clone()),
                    (NFTA_CHAIN_NAME, CHAIN.to_string()),
                ],
            ),
            (
                NFT_MSG_GETRULE,
                NLM_F_REQUEST | NLM_F_DUMP,
                vec![
                    (NFTA_RULE_TABLE, self.table.clone()),
                    (NFTA_RULE_CHAIN, CHAIN.to_string()),
                ],
            ),
        ] {
            let mut b = self.sock.buffer();
            let s = b.begin((NFNL_SUBSYS_NFTABLES << 8) | msg, flags, NFPROTO_INET, 0);
            for (t, v) in &attrs_ {
                b.attr_str(*t, v);
            }
            b.end(s);
            let r = self
                .sock
                .dump(&b, |m| {
                    let Some(body) = m.payload.get(4..) else {
                        return;
                    };
                    for a in attrs(body) {
                        match (msg, a.ty) {
                            (NFT_MSG_GETCHAIN, NFTA_CHAIN_POLICY) => {
                                state.policy = be_u32(a.data);
                            }
                            (NFT_MSG_GETRULE, NFTA_RULE_HANDLE) => {
                                if let Ok(h) = <[u8; 8]>::try_from(a.data) {
                                    state.rules.push(u64::from_be_bytes(h));
                                }
                            }
                            _ => {}
                        }
                    }
                })
                .map_err(|e| EnforceError::Failed(explain_io(&e, &self.table)))?;
            match r {
                Some(libc::ENOENT) => return Ok(None),
                Some(e) => {
                    return Err(EnforceError::Failed(explain(
                        e,
                        &format!("checking table inet {}", self.table),
                    )));
                }
                None => {}
            }
        }
        Ok(Some(state))
    }

    /// Lays the table out again (replacing what is there) with every ban in
    /// force and every feed, and remembers the chain as laid out.
    fn relayout(&mut self, now: Time, why: &str) -> Result<(), EnforceError> {
        let t0 = std::time::Instant::now();
        tracing::warn!(
            "firewall: {why}; laying table inet {} out again",
            self.table
        );
        let scopes = self.scope_list();
        apply_layout(
            &self.table,
            self.set_size,
            &self.feeds,
            &scopes,
            self.mark(),
        )?;
        let mut all = self.book.all_elements(now);
        for (_, book) in self.scoped.values() {
            all.extend(book.all_elements(now));
        }
        let n = self.readd(all)?;
        self.reload_feeds()?;
        self.chain = self.chain_state()?;
        tracing::warn!(
            "firewall: table inet {} restored with {n} ban(s) in {:?}",
            self.table,
            t0.elapsed()
        );
        self.last_verify = std::time::Instant::now();
        Ok(())
    }

    /// The keys (network start addresses) in one of the sets, or `None` when
    /// the set is missing.
    pub(super) fn set_keys(
        &mut self,
        set: SetName,
    ) -> Result<Option<AddrSet<IpAddr>>, EnforceError> {
        let mut b = self.sock.buffer();
        let s = b.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
            NLM_F_REQUEST | NLM_F_DUMP,
            NFPROTO_INET,
            0,
        );
        b.attr_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
        b.attr_str(NFTA_SET_ELEM_LIST_SET, &set.label());
        b.end(s);
        let mut keys = AddrSet::default();
        let r = self
            .sock
            .dump(&b, |m| {
                let Some(body) = m.payload.get(4..) else {
                    return;
                };
                for list in attrs(body).filter(|a| a.ty == NFTA_SET_ELEM_LIST_ELEMENTS) {
                    for elem in attrs(list.data).filter(|a| a.ty == NFTA_LIST_ELEM) {
                        let mut key = None;
                        let mut end = false;
                        for a in attrs(elem.data) {
                            match a.ty {
                                NFTA_SET_ELEM_KEY => {
                                    key = attrs(a.data)
                                        .find(|d| d.ty == NFTA_DATA_VALUE)
                                        .map(|d| d.data)
                                }
                                NFTA_SET_ELEM_FLAGS => {
                                    end = a.data.len() == 4
                                        && u32::from_be_bytes([
                                            a.data[0], a.data[1], a.data[2], a.data[3],
                                        ]) & NFT_SET_ELEM_INTERVAL_END
                                            != 0
                                }
                                _ => {}
                            }
                        }
                        if end {
                            continue;
                        }
                        match key.map(|k| k.len()) {
                            Some(4) => keys.extend(
                                key.and_then(|k| <[u8; 4]>::try_from(k).ok())
                                    .map(IpAddr::from),
                            ),
                            Some(16) => keys.extend(
                                key.and_then(|k| <[u8; 16]>::try_from(k).ok())
                                    .map(IpAddr::from),
                            ),
                            _ => {}
                        }
                    }
                }
            })
            .map_err(|e| EnforceError::Failed(explain_io(&e, &self.table)))?;
        match r {
            Some(libc::ENOENT) => Ok(None),
            Some(e) => Err(EnforceError::Failed(explain(
                e,
                &format!("listing set {}", set.label()),
            ))),
            None => Ok(Some(keys)),
        }
    }

    /// Checks for drift and repairs it: a missing table or chain, or a
    /// chain whose rules or policy someone changed (a flushed chain, an
    /// inserted `accept`), is laid out again with every ban in force;
    /// elements deleted by hand are re-added.
    pub fn check_drift(&mut self) -> Result<(), EnforceError> {
        let now = Time::now();
        self.book.expire(now);
        for (_, book) in self.scoped.values_mut() {
            book.expire(now);
        }
        match self.chain_state()? {
            None => {
                return self.relayout(
                    now,
                    &format!(
                        "table inet {} or its chain is gone (ruleset flushed?)",
                        self.table
                    ),
                );
            }
            Some(c) if self.chain.as_ref().is_some_and(|laid| *laid != c) => {
                return self.relayout(
                    now,
                    &format!(
                        "the rules or the policy of chain {CHAIN} were changed outside sipwarden ({} rule(s), policy {}; laid out: {})",
                        c.rules.len(),
                        c.policy_name(),
                        self.chain.as_ref().map_or(0, |l| l.rules.len())
                    ),
                );
            }
            Some(c) => {
                if self.chain.is_none() {
                    self.chain = Some(c);
                }
            }
        }
        if self.last_verify.elapsed() < self.verify_wait {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let cpu0 = thread_cpu();
        self.last_verify = t0;
        let mut missing = Vec::new();
        let scopes: Vec<ScopeId> = std::iter::once(ScopeId::ALL)
            .chain(self.scoped.keys().copied())
            .collect();
        for scope in scopes {
            let mut present = AddrSet::default();
            for kind in SetKind::ALL {
                let set = SetName { kind, scope };
                match self.set_keys(set)? {
                    Some(k) => present.extend(k),
                    None => {
                        return self.relayout(now, &format!("set {} is gone", set.label()));
                    }
                }
            }
            let book = match self.scoped.get(&scope) {
                Some((_, b)) => b,
                None => &self.book,
            };
            missing.extend(book.missing(now, &present));
        }
        // The thread's CPU time (the kernel's walk included), not the wall
        // clock: a machine kept busy, by an attack or anything else, must
        // not stretch the wait. The wall clock only when that is unknown.
        let took = match (cpu0, thread_cpu()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => t0.elapsed(),
        };
        self.verify_wait = next_verify_wait(took);
        tracing::debug!(
            "firewall: sets compared with the ledger in {took:?}; next in {:?}",
            self.verify_wait
        );
        if !missing.is_empty() {
            let n = self.readd(missing)?;
            if n > 0 {
                tracing::warn!(
                    "firewall: {n} ban(s) were missing from the kernel sets (deleted outside sipwarden); re-added"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_sets_are_compared_every_5_s_unless_a_comparison_costs_more_than_2_percent() {
        assert_eq!(next_verify_wait(Duration::ZERO), VERIFY_EVERY);
        assert_eq!(next_verify_wait(Duration::from_millis(20)), VERIFY_EVERY);
        assert_eq!(next_verify_wait(Duration::from_millis(100)), VERIFY_EVERY);
        // 100,000 elements: about half a second a listing.
        assert_eq!(
            next_verify_wait(Duration::from_millis(500)),
            Duration::from_secs(25)
        );
        // Never longer than five minutes, however slow (or a stalled clock's
        // huge value).
        assert_eq!(next_verify_wait(Duration::from_secs(60)), VERIFY_EVERY_MAX);
        assert_eq!(next_verify_wait(Duration::MAX), VERIFY_EVERY_MAX);
    }

    #[test]
    fn the_threads_cpu_time_is_read_and_grows_with_work() {
        let a = thread_cpu().expect("CLOCK_THREAD_CPUTIME_ID on Linux");
        // Work until the clock moves (bounded: a few seconds at most).
        let mut x = 0u64;
        let mut moved = false;
        for i in 0..2_000_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            if i % 1_000_000 == 0 && thread_cpu().unwrap() > a {
                moved = true;
                break;
            }
        }
        assert!(moved, "{x}");
    }
}
