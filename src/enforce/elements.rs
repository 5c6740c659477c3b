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

use crate::net::AddrMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::intervals::{self, Family, Segment};
use super::netlink::MsgBuf;
use super::scope::ScopeId;
pub(super) use super::sets::SetName;
use crate::decision::Decision;
use crate::event::{JailId, Time};
use crate::net::is_host;

pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(super) const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

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

/// Units of element changes, each applied together or not at all, laid
/// out flat (no allocation per unit): unit `k`'s changes are
/// `ops[bounds[k]..bounds[k + 1]]`.
#[derive(Clone, Debug)]
pub(super) struct Units {
    pub(super) ops: Vec<ElemOp>,
    bounds: Vec<usize>,
}

impl Units {
    /// Room for `units` units of about one change each.
    pub(super) fn with_capacity(units: usize) -> Units {
        let mut bounds = Vec::with_capacity(units + 1);
        bounds.push(0);
        Units {
            ops: Vec::with_capacity(units),
            bounds,
        }
    }

    /// One unit per change (re-adding elements: each stands alone).
    pub(super) fn singles(ops: Vec<ElemOp>) -> Units {
        Units {
            bounds: (0..=ops.len()).collect(),
            ops,
        }
    }

    /// Ends the unit being built: the changes pushed to `ops` since the
    /// last `close` are one unit.
    pub(super) fn close(&mut self) {
        self.bounds.push(self.ops.len());
    }

    /// How many units.
    pub(super) fn len(&self) -> usize {
        self.bounds.len() - 1
    }

    /// The changes of units `range`, in order.
    pub(super) fn ops_of(&self, range: std::ops::Range<usize>) -> &[ElemOp] {
        let (Some(&a), Some(&b)) = (self.bounds.get(range.start), self.bounds.get(range.end))
        else {
            return &[];
        };
        self.ops.get(a..b).unwrap_or_default()
    }
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

/// One jail's ban and its end (`None`: permanent).
type Entry = (JailId, Option<Time>);

fn live(end: &Option<Time>, now: Time) -> bool {
    end.is_none_or(|t| t.0 > now.0)
}

/// The bans of one address or prefix: nearly always a single jail's, held
/// inline (a restore of 100,000 bans makes no allocation per address).
#[derive(Clone, Debug)]
enum Entries {
    One(Entry),
    Many(Vec<Entry>),
}

impl Entries {
    const NONE: Entries = Entries::Many(Vec::new());

    fn as_slice(&self) -> &[Entry] {
        match self {
            Entries::One(e) => std::slice::from_ref(e),
            Entries::Many(v) => v,
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Entries::Many(v) if v.is_empty())
    }

    /// Removes `jail`'s entry, returning its end.
    fn take(&mut self, jail: JailId) -> Option<Option<Time>> {
        match self {
            Entries::One((j, e)) if *j == jail => {
                let end = *e;
                *self = Entries::NONE;
                Some(end)
            }
            Entries::One(_) => None,
            Entries::Many(v) => {
                let i = v.iter().position(|(j, _)| *j == jail)?;
                let end = v.swap_remove(i).1;
                self.compact();
                Some(end)
            }
        }
    }

    /// Adds `jail`'s entry (it has none).
    fn put(&mut self, jail: JailId, end: Option<Time>) {
        match self {
            Entries::Many(v) if v.is_empty() => *self = Entries::One((jail, end)),
            Entries::One(first) => *self = Entries::Many(vec![*first, (jail, end)]),
            Entries::Many(v) => v.push((jail, end)),
        }
    }

    /// Drops the entries ended at `now`.
    fn retain_live(&mut self, now: Time) {
        match self {
            Entries::One((_, e)) if !live(e, now) => *self = Entries::NONE,
            Entries::One(_) => {}
            Entries::Many(v) => {
                v.retain(|(_, e)| live(e, now));
                self.compact();
            }
        }
    }

    fn compact(&mut self) {
        if let Entries::Many(v) = self {
            if let [one] = v[..] {
                *self = Entries::One(one);
            } else if v.is_empty() {
                *self = Entries::NONE;
            }
        }
    }

    /// The latest end among the entries still in force at `now`.
    fn wanted_end(&self, now: Time) -> Option<Option<Time>> {
        self.as_slice()
            .iter()
            .map(|(_, e)| *e)
            .filter(|e| live(e, now))
            .reduce(later)
    }

    fn shift(&mut self, delta_ms: i64) {
        let ends: &mut [Entry] = match self {
            Entries::One(e) => std::slice::from_mut(e),
            Entries::Many(v) => v,
        };
        for (_, e) in ends {
            if let Some(t) = e {
                t.0 += delta_ms;
            }
        }
    }
}

/// What the ledger knows of one address or prefix.
#[derive(Clone, Debug)]
struct Slot {
    /// Each jail's ban of it.
    bans: Entries,
    /// For a single address in the kernel, the end its element carries
    /// (prefixes are in `BanBook::segments`).
    held: Option<Option<Time>>,
}

impl Slot {
    const EMPTY: Slot = Slot {
        bans: Entries::NONE,
        held: None,
    };

    fn is_empty(&self) -> bool {
        self.bans.is_empty() && self.held.is_none()
    }
}

/// The enforcer's ledger: bans in force and what the kernel holds, for the
/// sets of one scope (every packet, or one port scope's).
#[derive(Debug, Default)]
pub(super) struct BanBook {
    /// Whose sets: `ScopeId::ALL` for the unscoped ones.
    scope: ScopeId,
    /// Per address or prefix, each jail's ban and what the kernel holds
    /// (one map, one lookup per change).
    slots: AddrMap<IpNet, Slot>,
    /// Intervals in the kernel, both families, sorted.
    segments: Vec<Segment>,
}

impl BanBook {
    /// An empty ledger of the sets of `scope`.
    pub(super) fn for_scope(scope: ScopeId) -> BanBook {
        BanBook {
            scope,
            ..BanBook::default()
        }
    }

    /// Whose sets this ledger keeps.
    pub(super) fn scope(&self) -> ScopeId {
        self.scope
    }

    /// Records decision `d` in the ledger; returns how to undo it.
    pub(super) fn note(&mut self, d: &Decision) -> Undo {
        let (net, jail, end) = match d {
            Decision::Ban(b) => (b.addr, b.jail, Some(b.end)),
            Decision::Unban(u) => (u.addr, u.jail, None),
        };
        let slot = self.slots.entry(net).or_insert(Slot::EMPTY);
        let before = slot.bans.take(jail);
        if let Some(end) = end {
            slot.bans.put(jail, end);
        }
        if slot.is_empty() {
            self.slots.remove(&net);
        }
        Undo { net, jail, before }
    }

    /// Takes `jail`'s bans out of the ledger (its scope changed), each
    /// with its end; `host_ops` and `prefix_ops` then say what to lift.
    pub(super) fn take_jail(&mut self, jail: JailId) -> Vec<(IpNet, Option<Time>)> {
        let mut out = Vec::new();
        for (net, slot) in &mut self.slots {
            if let Some(end) = slot.bans.take(jail) {
                out.push((*net, end));
            }
        }
        self.slots.retain(|_, slot| !slot.is_empty());
        out
    }

    /// Whether `jail` has a ban of `net` here.
    pub(super) fn has_ban(&self, jail: JailId, net: &IpNet) -> bool {
        self.slots
            .get(net)
            .is_some_and(|s| s.bans.as_slice().iter().any(|(j, _)| *j == jail))
    }

    /// Takes `jail`'s ban of `net` out (a move undone).
    pub(super) fn take_jail_net(&mut self, jail: JailId, net: &IpNet) {
        if let Some(slot) = self.slots.get_mut(net) {
            slot.bans.take(jail);
            if slot.is_empty() {
                self.slots.remove(net);
            }
        }
    }

    /// Records `jail`'s ban of `net` until `end` (moved here from another
    /// scope's ledger).
    pub(super) fn put(&mut self, net: IpNet, jail: JailId, end: Option<Time>) {
        let slot = self.slots.entry(net).or_insert(Slot::EMPTY);
        slot.bans.take(jail);
        slot.bans.put(jail, end);
    }

    /// Puts back what `note` changed.
    pub(super) fn undo(&mut self, u: Undo) {
        let slot = self.slots.entry(u.net).or_insert(Slot::EMPTY);
        slot.bans.take(u.jail);
        if let Some(end) = u.before {
            slot.bans.put(u.jail, end);
        }
        if slot.is_empty() {
            self.slots.remove(&u.net);
        }
    }

    /// Appends to `out` what turns the kernel's element for single address
    /// `net` into what its bans want at `now`.
    pub(super) fn host_ops(&self, net: &IpNet, now: Time, out: &mut Vec<ElemOp>) {
        let set = SetName::for_net(net).in_scope(self.scope);
        let key = ElemKey::Host(net.addr());
        let slot = self.slots.get(net);
        let wanted = slot.and_then(|s| s.bans.wanted_end(now));
        // An element whose end has passed is gone from the kernel already.
        let held = slot.and_then(|s| s.held).filter(|e| live(e, now));
        if wanted == held {
            return;
        }
        if held.is_some() {
            out.push(ElemOp {
                kind: OpKind::Delete,
                set,
                key,
                timeout_ms: None,
            });
        }
        if let Some(timeout_ms) = wanted.and_then(|e| timeout(e, now)) {
            out.push(ElemOp {
                kind: OpKind::Add,
                set,
                key,
                timeout_ms,
            });
        }
    }

    /// Records that the kernel now holds what `host_ops` asked for.
    pub(super) fn commit_host(&mut self, net: &IpNet, now: Time) {
        let Some(slot) = self.slots.get_mut(net) else {
            return;
        };
        slot.held = slot.bans.wanted_end(now);
        if slot.is_empty() {
            self.slots.remove(net);
        }
    }

    /// The intervals the prefix bans of `family` want at `now`.
    fn wanted_segments(&self, family: Family, now: Time) -> Vec<Segment> {
        intervals::segments(self.slots.iter().filter_map(|(net, slot)| {
            if is_host(net) || Family::of(net) != family {
                return None;
            }
            Some((*net, slot.bans.wanted_end(now)?))
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
        let set = SetName::for_family(family).in_scope(self.scope);
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
        self.slots.retain(|_, slot| {
            slot.bans.retain_live(now);
            slot.held = slot.held.filter(|e| live(e, now));
            !slot.is_empty()
        });
        self.segments.retain(|s| live(&s.end, now));
    }

    /// Every element the kernel should hold at `now`, to put back after the
    /// table was laid out again.
    pub(super) fn all_elements(&self, now: Time) -> Vec<ElemOp> {
        let hosts = self.slots.iter().filter_map(|(net, slot)| {
            Some(ElemOp {
                kind: OpKind::Add,
                set: SetName::for_net(net).in_scope(self.scope),
                key: ElemKey::Host(net.addr()),
                timeout_ms: timeout(slot.held?, now)?,
            })
        });
        let ranges = self.segments.iter().filter_map(|s| {
            Some(ElemOp {
                kind: OpKind::Add,
                set: SetName::for_family(s.family).in_scope(self.scope),
                key: ElemKey::Range(s.first_addr(), s.after_last()),
                timeout_ms: timeout(s.end, now)?,
            })
        });
        hosts.chain(ranges).collect()
    }

    /// The elements of `wanted` (from `all_elements`) whose key is not among
    /// `present` (the keys the kernel lists: single addresses and interval
    /// starts).
    pub(super) fn missing(&self, now: Time, present: &crate::net::AddrSet<IpAddr>) -> Vec<ElemOp> {
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
        for slot in self.slots.values_mut() {
            slot.bans.shift(delta_ms);
            if let Some(e) = &mut slot.held {
                shift(e);
            }
        }
        for s in &mut self.segments {
            shift(&mut s.end);
        }
    }

    /// Whether the kernel holds an element for `net` (a single address, or
    /// an interval starting at the prefix).
    #[cfg(test)]
    fn holds(&self, net: &IpNet) -> bool {
        self.slots.get(net).is_some_and(|s| s.held.is_some())
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

    fn host_ops(b: &BanBook, net: &IpNet, now: Time) -> Vec<ElemOp> {
        let mut ops = Vec::new();
        b.host_ops(net, now, &mut ops);
        ops
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
            kinds(&host_ops(&b, &net, now)),
            [(OpKind::Add, "203.0.113.1".into(), Some(1000))]
        );
        b.commit_host(&net, now);
        b.note(&ban(1, "203.0.113.1/32", Some(5000)));
        // A longer ban replaces the element: removed and added back at once.
        assert_eq!(
            kinds(&host_ops(&b, &net, now)),
            [
                (OpKind::Delete, "203.0.113.1".into(), None),
                (OpKind::Add, "203.0.113.1".into(), Some(5000))
            ]
        );
        b.commit_host(&net, now);
        // Lifting the shorter one changes nothing in the kernel.
        b.note(&unban(0, "203.0.113.1/32"));
        assert!(host_ops(&b, &net, now).is_empty());
        b.note(&unban(1, "203.0.113.1/32"));
        assert_eq!(
            kinds(&host_ops(&b, &net, now)),
            [(OpKind::Delete, "203.0.113.1".into(), None)]
        );
        b.commit_host(&net, now);
        assert!(!b.holds(&net));
    }

    #[test]
    fn a_jail_moving_scope_takes_its_bans_to_the_new_sets_and_leaves_the_others() {
        let mut old = BanBook::default();
        let mut new = BanBook::for_scope(ScopeId(7));
        let host: IpNet = "203.0.113.1/32".parse().unwrap();
        let now = Time(0);
        old.note(&ban(0, "203.0.113.1/32", Some(1000)));
        old.note(&ban(1, "203.0.113.1/32", Some(500)));
        old.note(&ban(0, "2001:db8::/64", Some(2000)));
        old.commit_host(&host, now);
        let (_, w) = old.prefix_ops(Family::V6, now);
        old.commit_prefixes(Family::V6, w);
        let moved = old.take_jail(JailId(0));
        assert_eq!(moved.len(), 2);
        for (net, end) in &moved {
            new.put(*net, JailId(0), *end);
        }
        // The new scope's sets get both, with their own ends ...
        let ops = host_ops(&new, &host, now);
        assert_eq!(
            kinds(&ops),
            [(OpKind::Add, "203.0.113.1".into(), Some(1000))]
        );
        assert_eq!(&*ops[0].set.label(), "banned_v4_s00000007");
        let (ops, _) = new.prefix_ops(Family::V6, now);
        assert_eq!(&*ops[0].set.label(), "banned_net_v6_s00000007");
        assert_eq!(ops[0].timeout_ms, Some(2000));
        // ... and the old sets keep jail 1's shorter ban of the address
        // (its element shortened) and lose the prefix.
        assert_eq!(
            kinds(&host_ops(&old, &host, now)),
            [
                (OpKind::Delete, "203.0.113.1".into(), None),
                (OpKind::Add, "203.0.113.1".into(), Some(500))
            ]
        );
        let (ops, _) = old.prefix_ops(Family::V6, now);
        assert_eq!(kinds(&ops).len(), 1);
        assert_eq!(ops[0].kind, OpKind::Delete);
        assert_eq!(&*ops[0].set.label(), "banned_net_v6");
        // A move undone leaves nothing behind in the new ledger.
        new.take_jail_net(JailId(0), &host);
        assert!(host_ops(&new, &host, now).is_empty());
    }

    #[test]
    fn undo_restores_the_ledger() {
        let mut b = BanBook::default();
        let net: IpNet = "203.0.113.1/32".parse().unwrap();
        b.note(&ban(0, "203.0.113.1/32", Some(1000)));
        b.commit_host(&net, Time(0));
        let u = b.note(&ban(0, "203.0.113.1/32", Some(9000)));
        b.undo(u);
        assert!(host_ops(&b, &net, Time(0)).is_empty());
        let u = b.note(&unban(0, "203.0.113.1/32"));
        b.undo(u);
        assert!(host_ops(&b, &net, Time(0)).is_empty());
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
        assert!(host_ops(&b, &net, Time(20)).is_empty());
        b.commit_host(&net, Time(0));
        b.shift(1000);
        assert_eq!(
            kinds(&b.all_elements(Time(0))),
            [(OpKind::Add, "198.51.100.7".into(), Some(1010))]
        );
    }

    #[test]
    fn three_jails_on_one_address_shift_expire_and_fall_back_to_one() {
        let mut b = BanBook::default();
        let net: IpNet = "198.51.100.9/32".parse().unwrap();
        b.note(&ban(0, "198.51.100.9/32", Some(100)));
        b.note(&ban(1, "198.51.100.9/32", Some(300)));
        b.note(&ban(2, "198.51.100.9/32", Some(200)));
        b.commit_host(&net, Time(0));
        assert_eq!(
            kinds(&b.all_elements(Time(0))),
            [(OpKind::Add, "198.51.100.9".into(), Some(300))]
        );
        b.shift(10);
        b.expire(Time(250));
        // Only jail 1's ban (now ending at 310) is left.
        assert!(host_ops(&b, &net, Time(250)).is_empty());
        b.note(&unban(1, "198.51.100.9/32"));
        assert_eq!(
            kinds(&host_ops(&b, &net, Time(250))),
            [(OpKind::Delete, "198.51.100.9".into(), None)]
        );
        b.commit_host(&net, Time(250));
        assert!(!b.holds(&net));
        assert!(b.slots.is_empty(), "nothing left behind: {:?}", b.slots);
    }

    #[test]
    fn units_are_ranges_of_one_flat_list() {
        let op = |k| ElemOp {
            kind: k,
            set: SetName::for_net(&"192.0.2.1/32".parse().unwrap()),
            key: ElemKey::Host("192.0.2.1".parse().unwrap()),
            timeout_ms: None,
        };
        let mut u = Units::with_capacity(3);
        u.ops.push(op(OpKind::Delete));
        u.ops.push(op(OpKind::Add));
        u.close();
        u.close(); // a unit with nothing to change
        u.ops.push(op(OpKind::Add));
        u.close();
        assert_eq!(u.len(), 3);
        assert_eq!(u.ops_of(0..1).len(), 2);
        assert!(u.ops_of(1..2).is_empty());
        assert_eq!(u.ops_of(1..3).len(), 1);
        assert_eq!(u.ops_of(0..3).len(), 3);
        assert!(
            u.ops_of(2..9).is_empty(),
            "out of range is nothing, never a panic"
        );
        assert_eq!(Units::singles(vec![op(OpKind::Add); 4]).len(), 4);
    }
}
