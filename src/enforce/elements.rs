//! What the kernel sets must hold, and the element changes that get them
//! there.
//!
//! [`BanBook`] is the enforcer's ledger, pure (no clock, no I/O): every ban
//! in force per address or prefix and per jail, and what the kernel holds.
//! Several jails may ban one address with different ends, and prefixes may
//! overlap, so the kernel holds, for a single address, the latest end among
//! its bans, and for prefixes disjoint intervals ([`super::intervals`]). A
//! batch of decisions becomes [`Unit`]s of element changes, each applied
//! atomically or refused as a whole; a refused unit's decisions are undone
//! in the ledger and go back to whoever asked.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::intervals::{self, Family, Segment};
use super::netlink::MsgBuf;
use crate::decision::Decision;
use crate::event::{JailId, Time};
use crate::net::is_host;

pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(super) const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

/// The four kernel sets of bans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SetName {
    V4,
    V6,
    NetV4,
    NetV6,
}

impl SetName {
    /// The set's name in the table.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SetName::V4 => "banned_v4",
            SetName::V6 => "banned_v6",
            SetName::NetV4 => "banned_net_v4",
            SetName::NetV6 => "banned_net_v6",
        }
    }

    /// Where a ban of `net` goes: single addresses in the plain sets,
    /// prefixes in the interval sets.
    pub(super) fn for_net(net: &IpNet) -> SetName {
        match (net, is_host(net)) {
            (IpNet::V4(_), true) => SetName::V4,
            (IpNet::V6(_), true) => SetName::V6,
            (IpNet::V4(_), false) => SetName::NetV4,
            (IpNet::V6(_), false) => SetName::NetV6,
        }
    }

    fn for_family(f: Family) -> SetName {
        match f {
            Family::V4 => SetName::NetV4,
            Family::V6 => SetName::NetV6,
        }
    }
}

/// Adding or removing an element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum OpKind {
    /// Removals go first in a batch, so a changed element is removed and
    /// added back in one transaction.
    Delete,
    Add,
}

/// An element's key: one address, or an interval (its first address and
/// the first address after it; `None` runs to the top of the space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ElemKey {
    Host(IpAddr),
    Range(IpAddr, Option<IpAddr>),
}

impl std::fmt::Display for ElemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElemKey::Host(a) => write!(f, "{a}"),
            ElemKey::Range(a, Some(b)) => write!(f, "{a}-{b} (exclusive)"),
            ElemKey::Range(a, None) => write!(f, "{a}-end"),
        }
    }
}

/// One element change.
#[derive(Clone, Debug)]
pub(super) struct ElemOp {
    pub(super) kind: OpKind,
    pub(super) set: SetName,
    pub(super) key: ElemKey,
    /// Kernel timeout in milliseconds; `None` for permanent.
    pub(super) timeout_ms: Option<u64>,
}

/// Element changes applied together or not at all, and the decisions
/// (indexes into the batch) that asked for them.
#[derive(Clone, Debug, Default)]
pub(super) struct Unit {
    pub(super) ops: Vec<ElemOp>,
    pub(super) decisions: Vec<usize>,
}

/// An address's bytes in network order, on the stack (one per element
/// encoded: no allocation each).
pub(super) struct AddrBytes {
    bytes: [u8; 16],
    len: usize,
}

impl std::ops::Deref for AddrBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

pub(super) fn addr_bytes(a: IpAddr) -> AddrBytes {
    let mut bytes = [0u8; 16];
    let len = match a {
        IpAddr::V4(v) => {
            bytes[..4].copy_from_slice(&v.octets());
            4
        }
        IpAddr::V6(v) => {
            bytes = v.octets();
            16
        }
    };
    AddrBytes { bytes, len }
}

/// Encodes one element (its key, flags and timeout) into `b`.
pub(super) fn put_elem(b: &mut MsgBuf, key: &[u8], timeout_ms: Option<u64>, flags: u32) {
    let e = b.nest_begin(NFTA_LIST_ELEM);
    let k = b.nest_begin(NFTA_SET_ELEM_KEY);
    b.attr(NFTA_DATA_VALUE, key);
    b.nest_end(k);
    if flags != 0 {
        b.attr_be32(NFTA_SET_ELEM_FLAGS, flags);
    }
    if let Some(t) = timeout_ms {
        b.attr_be64(NFTA_SET_ELEM_TIMEOUT, t);
    }
    b.nest_end(e);
}

/// Encodes `op`'s element(s): an interval is its start and an end element.
pub(super) fn put_op(b: &mut MsgBuf, op: &ElemOp) {
    let timeout = if op.kind == OpKind::Add {
        op.timeout_ms
    } else {
        None
    };
    match op.key {
        ElemKey::Host(a) => put_elem(b, &addr_bytes(a), timeout, 0),
        ElemKey::Range(first, after) => {
            put_elem(b, &addr_bytes(first), timeout, 0);
            if let Some(end) = after {
                put_elem(b, &addr_bytes(end), None, NFT_SET_ELEM_INTERVAL_END);
            }
        }
    }
}

/// The kernel timeout for a ban ending at `end`, seen at `now`; `None`
/// inside means permanent, and an end already past gives no element.
fn timeout(end: Option<Time>, now: Time) -> Option<Option<u64>> {
    match end {
        None => Some(None),
        Some(e) if e.0 > now.0 => Some(Some((e.0 - now.0) as u64)),
        Some(_) => None,
    }
}

fn later(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (None, _) | (_, None) => None,
        (Some(x), Some(y)) => Some(x.max(y)),
    }
}

/// How to undo one decision's change to the ledger.
#[derive(Clone, Debug)]
pub(super) struct Undo {
    net: IpNet,
    jail: JailId,
    /// The jail's entry for `net` before the decision.
    before: Option<Option<Time>>,
}

/// The enforcer's ledger: bans in force and what the kernel holds.
#[derive(Debug, Default)]
pub(super) struct BanBook {
    /// Per address or prefix, each jail's ban and its end.
    bans: HashMap<IpNet, Vec<(JailId, Option<Time>)>>,
    /// Single addresses in the kernel, with the end their element carries.
    held: HashMap<IpNet, Option<Time>>,
    /// Intervals in the kernel, both families, sorted.
    segments: Vec<Segment>,
}

impl BanBook {
    /// Records decision `d` in the ledger; returns how to undo it.
    pub(super) fn note(&mut self, d: &Decision) -> Undo {
        let (net, jail, end) = match d {
            Decision::Ban(b) => (b.addr, b.jail, Some(b.end)),
            Decision::Unban(u) => (u.addr, u.jail, None),
        };
        let entries = self.bans.entry(net).or_default();
        let before = entries
            .iter()
            .position(|(j, _)| *j == jail)
            .map(|i| entries.swap_remove(i).1);
        if let Some(end) = end {
            entries.push((jail, end));
        }
        if entries.is_empty() {
            self.bans.remove(&net);
        }
        Undo { net, jail, before }
    }

    /// Puts back what `note` changed.
    pub(super) fn undo(&mut self, u: Undo) {
        let entries = self.bans.entry(u.net).or_default();
        entries.retain(|(j, _)| *j != u.jail);
        if let Some(end) = u.before {
            entries.push((u.jail, end));
        }
        if entries.is_empty() {
            self.bans.remove(&u.net);
        }
    }

    /// The latest end among the bans of `net` still in force at `now`:
    /// `None` when there is none, `Some(None)` for permanent.
    fn wanted_end(&self, net: &IpNet, now: Time) -> Option<Option<Time>> {
        self.bans
            .get(net)?
            .iter()
            .map(|(_, e)| *e)
            .filter(|e| e.is_none_or(|t| t.0 > now.0))
            .reduce(later)
    }

    /// What turns the kernel's element for single address `net` into what
    /// its bans want at `now`.
    pub(super) fn host_ops(&self, net: &IpNet, now: Time) -> Vec<ElemOp> {
        let set = SetName::for_net(net);
        let key = ElemKey::Host(net.addr());
        let wanted = self.wanted_end(net, now);
        // An element whose end has passed is gone from the kernel already.
        let held = self
            .held
            .get(net)
            .copied()
            .filter(|e| e.is_none_or(|t| t.0 > now.0));
        if wanted == held {
            return Vec::new();
        }
        let mut ops = Vec::new();
        if held.is_some() {
            ops.push(ElemOp {
                kind: OpKind::Delete,
                set,
                key,
                timeout_ms: None,
            });
        }
        if let Some(timeout_ms) = wanted.and_then(|e| timeout(e, now)) {
            ops.push(ElemOp {
                kind: OpKind::Add,
                set,
                key,
                timeout_ms,
            });
        }
        ops
    }

    /// Records that the kernel now holds what `host_ops` asked for.
    pub(super) fn commit_host(&mut self, net: &IpNet, now: Time) {
        match self.wanted_end(net, now) {
            Some(end) => self.held.insert(*net, end),
            None => self.held.remove(net),
        };
    }

    /// The intervals the prefix bans of `family` want at `now`.
    fn wanted_segments(&self, family: Family, now: Time) -> Vec<Segment> {
        intervals::segments(self.bans.iter().filter_map(|(net, entries)| {
            if is_host(net) || Family::of(net) != family {
                return None;
            }
            let end = entries
                .iter()
                .map(|(_, e)| *e)
                .filter(|e| e.is_none_or(|t| t.0 > now.0))
                .reduce(later)?;
            Some((*net, end))
        }))
    }

    /// What turns the kernel's intervals of `family` into what the prefix
    /// bans want at `now`, and those wanted intervals (for `commit_prefixes`).
    pub(super) fn prefix_ops(&self, family: Family, now: Time) -> (Vec<ElemOp>, Vec<Segment>) {
        let wanted = self.wanted_segments(family, now);
        let held: Vec<Segment> = self
            .segments
            .iter()
            .filter(|s| s.family == family && s.end.is_none_or(|t| t.0 > now.0))
            .copied()
            .collect();
        let (remove, add) = intervals::diff(&held, &wanted);
        let set = SetName::for_family(family);
        let key = |s: &Segment| ElemKey::Range(s.first_addr(), s.after_last());
        let mut ops: Vec<ElemOp> = remove
            .iter()
            .map(|s| ElemOp {
                kind: OpKind::Delete,
                set,
                key: key(s),
                timeout_ms: None,
            })
            .collect();
        ops.extend(add.iter().filter_map(|s| {
            Some(ElemOp {
                kind: OpKind::Add,
                set,
                key: key(s),
                timeout_ms: timeout(s.end, now)?,
            })
        }));
        (ops, wanted)
    }

    /// Records that the kernel now holds `wanted` for `family`.
    pub(super) fn commit_prefixes(&mut self, family: Family, wanted: Vec<Segment>) {
        self.segments.retain(|s| s.family != family);
        self.segments.extend(wanted);
        self.segments.sort_by_key(|s| (s.family, s.first));
    }

    /// Forgets bans and elements whose end has passed (the kernel's
    /// timeouts removed them).
    pub(super) fn expire(&mut self, now: Time) {
        let live = |e: &Option<Time>| e.is_none_or(|t| t.0 > now.0);
        self.bans.retain(|_, v| {
            v.retain(|(_, e)| live(e));
            !v.is_empty()
        });
        self.held.retain(|_, e| live(e));
        self.segments.retain(|s| live(&s.end));
    }

    /// Every element the kernel should hold at `now`, to put back after the
    /// table was laid out again.
    pub(super) fn all_elements(&self, now: Time) -> Vec<ElemOp> {
        let hosts = self.held.iter().filter_map(|(net, end)| {
            Some(ElemOp {
                kind: OpKind::Add,
                set: SetName::for_net(net),
                key: ElemKey::Host(net.addr()),
                timeout_ms: timeout(*end, now)?,
            })
        });
        let ranges = self.segments.iter().filter_map(|s| {
            Some(ElemOp {
                kind: OpKind::Add,
                set: SetName::for_family(s.family),
                key: ElemKey::Range(s.first_addr(), s.after_last()),
                timeout_ms: timeout(s.end, now)?,
            })
        });
        hosts.chain(ranges).collect()
    }

    /// The elements of `wanted` (from `all_elements`) whose key is not among
    /// `present` (the keys the kernel lists: single addresses and interval
    /// starts).
    pub(super) fn missing(
        &self,
        now: Time,
        present: &std::collections::HashSet<IpAddr>,
    ) -> Vec<ElemOp> {
        self.all_elements(now)
            .into_iter()
            .filter(|op| match op.key {
                ElemKey::Host(a) | ElemKey::Range(a, _) => !present.contains(&a),
            })
            .collect()
    }

    /// Shifts every end by `delta_ms` (the wall clock stepped; the kernel's
    /// timeouts did not).
    pub(super) fn shift(&mut self, delta_ms: i64) {
        let shift = |e: &mut Option<Time>| {
            if let Some(t) = e {
                t.0 += delta_ms;
            }
        };
        for v in self.bans.values_mut() {
            for (_, e) in v.iter_mut() {
                shift(e);
            }
        }
        for e in self.held.values_mut() {
            shift(e);
        }
        for s in &mut self.segments {
            shift(&mut s.end);
        }
    }

    /// Whether the kernel holds an element for `net` (a single address, or
    /// an interval starting at the prefix).
    #[cfg(test)]
    fn holds(&self, net: &IpNet) -> bool {
        self.held.contains_key(net)
            || self
                .segments
                .iter()
                .any(|s| s.first == intervals::number(net.network()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{BanDecision, BanReason, UnbanDecision, UnbanReason};
    use crate::duration::{BanTime, Duration};
    use std::sync::Arc;

    fn ban(jail: u16, net: &str, end: Option<i64>) -> Decision {
        Decision::Ban(BanDecision {
            jail: JailId(jail),
            jail_name: Arc::from("j"),
            addr: net.parse().unwrap(),
            start: Time(0),
            end: end.map(Time),
            bantime: BanTime::For(Duration(1)),
            failures: 0,
            reason: BanReason::Manual,
        })
    }

    fn unban(jail: u16, net: &str) -> Decision {
        Decision::Unban(UnbanDecision {
            jail: JailId(jail),
            jail_name: Arc::from("j"),
            addr: net.parse().unwrap(),
            reason: UnbanReason::Manual,
            lifted: None,
        })
    }

    fn kinds(ops: &[ElemOp]) -> Vec<(OpKind, String, Option<u64>)> {
        ops.iter()
            .map(|o| (o.kind, o.key.to_string(), o.timeout_ms))
            .collect()
    }

    #[test]
    fn a_host_banned_by_two_jails_holds_the_later_end_until_both_lift_it() {
        let mut b = BanBook::default();
        let net: IpNet = "203.0.113.1/32".parse().unwrap();
        let now = Time(0);
        b.note(&ban(0, "203.0.113.1/32", Some(1000)));
        assert_eq!(
            kinds(&b.host_ops(&net, now)),
            [(OpKind::Add, "203.0.113.1".into(), Some(1000))]
        );
        b.commit_host(&net, now);
        b.note(&ban(1, "203.0.113.1/32", Some(5000)));
        // A longer ban replaces the element: removed and added back at once.
        assert_eq!(
            kinds(&b.host_ops(&net, now)),
            [
                (OpKind::Delete, "203.0.113.1".into(), None),
                (OpKind::Add, "203.0.113.1".into(), Some(5000))
            ]
        );
        b.commit_host(&net, now);
        // Lifting the shorter one changes nothing in the kernel.
        b.note(&unban(0, "203.0.113.1/32"));
        assert!(b.host_ops(&net, now).is_empty());
        b.note(&unban(1, "203.0.113.1/32"));
        assert_eq!(
            kinds(&b.host_ops(&net, now)),
            [(OpKind::Delete, "203.0.113.1".into(), None)]
        );
        b.commit_host(&net, now);
        assert!(!b.holds(&net));
    }

    #[test]
    fn undo_restores_the_ledger() {
        let mut b = BanBook::default();
        let net: IpNet = "203.0.113.1/32".parse().unwrap();
        b.note(&ban(0, "203.0.113.1/32", Some(1000)));
        b.commit_host(&net, Time(0));
        let u = b.note(&ban(0, "203.0.113.1/32", Some(9000)));
        b.undo(u);
        assert!(b.host_ops(&net, Time(0)).is_empty());
        let u = b.note(&unban(0, "203.0.113.1/32"));
        b.undo(u);
        assert!(b.host_ops(&net, Time(0)).is_empty());
    }

    #[test]
    fn overlapping_prefixes_become_disjoint_intervals_and_unban_keeps_the_rest() {
        let mut b = BanBook::default();
        let now = Time(0);
        // The finding: a /31 first, then the /24 around it.
        b.note(&ban(0, "203.0.113.2/31", Some(3_600_000)));
        let (ops, w) = b.prefix_ops(Family::V4, now);
        assert_eq!(
            kinds(&ops),
            [(
                OpKind::Add,
                "203.0.113.2-203.0.113.4 (exclusive)".into(),
                Some(3_600_000)
            )]
        );
        b.commit_prefixes(Family::V4, w);
        b.note(&ban(0, "203.0.113.0/24", Some(3_600_000)));
        let (ops, w) = b.prefix_ops(Family::V4, now);
        assert_eq!(
            kinds(&ops),
            [
                (
                    OpKind::Delete,
                    "203.0.113.2-203.0.113.4 (exclusive)".into(),
                    None
                ),
                (
                    OpKind::Add,
                    "203.0.113.0-203.0.114.0 (exclusive)".into(),
                    Some(3_600_000)
                )
            ]
        );
        b.commit_prefixes(Family::V4, w);
        // Unbanning the /31 leaves the /24 in force: nothing to change.
        b.note(&unban(0, "203.0.113.2/31"));
        let (ops, _) = b.prefix_ops(Family::V4, now);
        assert!(ops.is_empty(), "{:?}", kinds(&ops));
    }

    #[test]
    fn expiry_of_a_covering_prefix_leaves_the_longer_inner_one() {
        let mut b = BanBook::default();
        b.note(&ban(0, "203.0.113.0/24", Some(1000)));
        b.note(&ban(0, "203.0.113.2/31", Some(5000)));
        let (ops, w) = b.prefix_ops(Family::V4, Time(0));
        assert_eq!(ops.len(), 3);
        b.commit_prefixes(Family::V4, w);
        // At 1000 the kernel timed out the outer parts by itself.
        b.expire(Time(1000));
        let (ops, _) = b.prefix_ops(Family::V4, Time(1000));
        assert!(ops.is_empty(), "{:?}", kinds(&ops));
        assert_eq!(b.all_elements(Time(1000)).len(), 1);
    }

    #[test]
    fn elements_past_their_end_are_not_added_and_shift_moves_every_end() {
        let mut b = BanBook::default();
        let net: IpNet = "198.51.100.7/32".parse().unwrap();
        b.note(&ban(0, "198.51.100.7/32", Some(10)));
        assert!(b.host_ops(&net, Time(20)).is_empty());
        b.commit_host(&net, Time(0));
        b.shift(1000);
        assert_eq!(
            kinds(&b.all_elements(Time(0))),
            [(OpKind::Add, "198.51.100.7".into(), Some(1010))]
        );
    }
}
