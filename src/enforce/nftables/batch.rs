//! Element changes as netlink batches: encoding, sending, splitting a
//! refused batch, and the fast lane.

use super::NftEnforcer;
use crate::enforce::elements::{ElemKey, ElemOp, OpKind, SetName, Units, put_op};
use crate::enforce::netlink::{
    MsgBuf, NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NfSocket, Reply, explain,
};
use crate::enforce::scope::ScopeId;
use crate::enforce::{EnforceError, FastLane};
use crate::event::Time;
use crate::net::is_host;

pub(super) const NFT_MSG_GETTABLE: u16 = 1;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFT_MSG_GETCHAIN: u16 = 4;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(super) const NFT_MSG_DELSETELEM: u16 = 14;
/// Deletes an element, succeeding when it is already gone (kernel 6.3+).
pub(super) const NFT_MSG_DESTROYSETELEM: u16 = 30;
pub(super) const NFPROTO_INET: u8 = 1;
pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

/// Element bytes per netlink message: a nested attribute's length is 16 bits.
pub(super) const MAX_MSG_PAYLOAD: usize = 56 * 1024;
/// Elements per batch (one atomic transaction, one send).
pub(super) const MAX_BATCH_OPS: usize = 20_000;

impl NftEnforcer {
    /// Sends `ops` as one transaction; `Some(errno)` when the kernel
    /// refused it (then nothing of it was applied).
    pub(super) fn send_ops(&mut self, ops: &[ElemOp]) -> Result<Option<i32>, EnforceError> {
        let replies = send_ops(&mut self.sock, &self.table, self.destroy, ops)?;
        Ok(replies.iter().find_map(|r| match r {
            Reply::Error(e) => Some(*e),
            Reply::Ack => None,
        }))
    }

    /// Applies units `range` of `units`, each atomically. When the kernel
    /// refuses a batch because of some elements (a full set, a timeout out
    /// of range, an element someone else put there), it is split and
    /// retried, so one refused unit never loses the rest. Pushes the
    /// refused units' indexes (into `units`) with their errno.
    pub(super) fn apply_units(
        &mut self,
        units: &Units,
        range: std::ops::Range<usize>,
        refused: &mut Vec<(usize, i32)>,
    ) -> Result<(), EnforceError> {
        let ops = units.ops_of(range.clone());
        if ops.is_empty() {
            return Ok(());
        }
        // Removals first: an element whose end changed is removed and added
        // back in the same transaction. (Already in that order when every
        // unit only adds, as in a burst or a restore.)
        let key = |o: &ElemOp| (o.kind, o.set);
        let sorted;
        let ops = if ops.is_sorted_by_key(key) {
            ops
        } else {
            let mut v = ops.to_vec();
            v.sort_unstable_by_key(key);
            sorted = v;
            &sorted[..]
        };
        let Some(errno) = self.send_ops(ops)? else {
            return Ok(());
        };
        // DESTROYSETELEM unknown to this kernel: fall back to DELSETELEM.
        if self.destroy && errno == libc::EOPNOTSUPP && ops.iter().any(|o| o.kind == OpKind::Delete)
        {
            tracing::info!("firewall: this kernel has no DESTROYSETELEM; using DELSETELEM");
            self.destroy = false;
            return self.apply_units(units, range, refused);
        }
        // Errors about the table itself, or permissions, are not any one
        // element's: splitting would only repeat them.
        let whole = matches!(errno, libc::EPERM | libc::EACCES | libc::EOPNOTSUPP)
            || (errno == libc::ENOENT
                && (self.destroy || !ops.iter().any(|o| o.kind == OpKind::Delete)));
        if whole {
            return Err(EnforceError::Failed(explain(
                errno,
                &format!("updating the sets of table inet {}", self.table),
            )));
        }
        if range.len() == 1 {
            refused.push((range.start, errno));
            return Ok(());
        }
        let mid = range.start + range.len() / 2;
        self.apply_units(units, range.start..mid, refused)?;
        self.apply_units(units, mid..range.end, refused)
    }

    /// Puts `ops` (additions) into the kernel, in batches; returns how many
    /// went in.
    pub(super) fn readd(&mut self, ops: Vec<ElemOp>) -> Result<usize, EnforceError> {
        let units = Units::singles(ops);
        let mut refused = Vec::new();
        let n = units.len();
        let mut start = 0;
        while start < n {
            let end = (start + MAX_BATCH_OPS).min(n);
            self.apply_units(&units, start..end, &mut refused)?;
            start = end;
        }
        Ok(n - refused.len())
    }
}

/// Encodes `ops` as one batch on `sock` and sends it; returns one reply per
/// op.
pub(super) fn send_ops(
    sock: &mut NfSocket,
    table: &str,
    destroy: bool,
    ops: &[ElemOp],
) -> Result<Vec<Reply>, EnforceError> {
    let mut b = sock.buffer();
    let groups = encode_ops(&mut b, table, destroy, ops, NLM_F_ACK);
    let replies = sock
        .transact(&b)
        .map_err(|e| EnforceError::Failed(explain_io(&e, table)))?;
    let mut per_op = vec![Reply::Ack; ops.len()];
    for (g, r) in groups.iter().zip(replies) {
        for slot in &mut per_op[g.clone()] {
            *slot = r;
        }
    }
    Ok(per_op)
}

/// Encodes `ops` as one batch into `b` (messages group consecutive ops of
/// one kind and set; `ack` is `NLM_F_ACK` or 0); returns which ops each
/// message holds.
fn encode_ops(
    b: &mut MsgBuf,
    table: &str,
    destroy: bool,
    ops: &[ElemOp],
    ack: u16,
) -> Vec<std::ops::Range<usize>> {
    b.batch_begin(NFNL_SUBSYS_NFTABLES);
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let (kind, set) = (ops[i].kind, ops[i].set);
        let msg_type = match kind {
            OpKind::Add => NFT_MSG_NEWSETELEM,
            OpKind::Delete if destroy => NFT_MSG_DESTROYSETELEM,
            OpKind::Delete => NFT_MSG_DELSETELEM,
        };
        let flags = NLM_F_REQUEST | ack | if kind == OpKind::Add { NLM_F_CREATE } else { 0 };
        let start = b.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | msg_type,
            flags,
            NFPROTO_INET,
            0,
        );
        b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        b.attr_str(NFTA_SET_ELEM_LIST_SET, &set.label());
        let list = b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        let first = i;
        while i < ops.len()
            && ops[i].kind == kind
            && ops[i].set == set
            && b.len() - list < MAX_MSG_PAYLOAD
        {
            put_op(b, &ops[i]);
            i += 1;
        }
        b.nest_end(list);
        b.end(start);
        groups.push(first..i);
    }
    b.batch_end(NFNL_SUBSYS_NFTABLES);
    groups
}

/// The nftables [`FastLane`]: a netlink socket of its own on which the run
/// loop posts the elements of a few new bans (adding an element that is
/// there changes nothing, so the enforcer applying the same bans next is
/// harmless).
#[derive(Debug)]
pub(super) struct FastAdd {
    pub(super) sock: NfSocket,
    pub(super) table: String,
    /// Each jail's port scope, by jail id (the enforcer's, shared).
    pub(super) scopes: std::sync::Arc<std::sync::RwLock<Vec<ScopeId>>>,
}

impl FastLane for FastAdd {
    fn set_scopes(&mut self, scopes: &[(crate::event::JailId, Option<crate::enforce::PortScope>)]) {
        let len = scopes.iter().map(|(j, _)| usize::from(j.0) + 1).max();
        let mut by_jail = vec![ScopeId::ALL; len.unwrap_or(0)];
        for (j, s) in scopes {
            if let (Some(slot), Some(s)) = (by_jail.get_mut(usize::from(j.0)), s) {
                *slot = s.id();
            }
        }
        if let Ok(mut lane) = self.scopes.write() {
            *lane = by_jail;
        }
    }

    fn add(&mut self, bans: &[crate::decision::BanDecision]) {
        // Never wait: while the enforcer changes the scopes (a reload),
        // these bans take the enforcer's way only.
        let Ok(scopes) = self.scopes.try_read() else {
            return;
        };
        let scope_of = |j: crate::event::JailId| {
            scopes
                .get(usize::from(j.0))
                .copied()
                .unwrap_or(ScopeId::ALL)
        };
        let now = Time::now();
        let ops: Vec<ElemOp> = bans
            .iter()
            // Prefixes go through the enforcer's interval ledger only.
            .filter(|b| is_host(&b.addr))
            .filter_map(|b| {
                let timeout_ms = match b.end {
                    None => None,
                    Some(end) if end.0 > now.0 => Some((end.0 - now.0) as u64),
                    Some(_) => return None,
                };
                Some(ElemOp {
                    kind: OpKind::Add,
                    set: SetName::for_net(&b.addr).in_scope(scope_of(b.jail)),
                    key: ElemKey::Host(b.addr.addr()),
                    timeout_ms,
                })
            })
            .collect();
        drop(scopes);
        if ops.is_empty() {
            return;
        }
        // Posted, not awaited: nf_tables applies the batch inside the send,
        // so the elements are in place when it returns, and the run loop
        // never waits for an answer. Errors are the enforcer's to report.
        let mut b = self.sock.buffer();
        encode_ops(&mut b, &self.table, true, &ops, 0);
        if let Err(e) = self.sock.post(&b) {
            tracing::debug!("fast lane: {e}; the enforcer applies these bans");
        }
    }
}

pub(super) fn socket_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => explain(errno, "opening the netfilter netlink socket"),
        None => format!("opening the netfilter netlink socket: {e}"),
    }
}

pub(super) fn explain_io(e: &std::io::Error, table: &str) -> String {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => format!("table inet {table}: the kernel did not answer within 5 s"),
        Some(errno) => explain(errno, &format!("table inet {table}")),
        None => format!("table inet {table}: {e}"),
    }
}
