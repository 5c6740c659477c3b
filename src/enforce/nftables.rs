//! The nftables enforcer: kernel sets with per-element timeouts, a chain at
//! prerouting with raw priority (before connection tracking), bans and
//! unbans in netlink batches, conntrack entries of banned sources flushed.
//!
//! The table is laid out once at start with one `nft -f -` transaction
//! (atomic: the old table, if any, is replaced in the same step), after the
//! daemon made sure no other running sipwarden owns it (`owner.rs`). Every
//! ban and unban after that is a netlink batch from this process: no child
//! process per ban.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use super::netlink::{NLM_F_DUMP, attrs};

use ipnet::IpNet;

use super::conntrack;
use super::elements::{
    BanBook, ElemKey, ElemOp, NFT_SET_ELEM_INTERVAL_END, NFTA_DATA_VALUE, NFTA_LIST_ELEM,
    NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY, OpKind, SetName, Undo, Unit, addr_bytes, put_elem,
    put_op,
};
use super::intervals::Family;
use super::netlink::{
    NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NfSocket, Reply, explain,
};
use super::{EnforceError, Enforcer, FastLane, Refusal};
use crate::config::FirewallConfig;
use crate::event::Time;
use crate::jail::{Decision, is_host};

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
/// Deletes an element, succeeding when it is already gone (kernel 6.3+).
const NFT_MSG_DESTROYSETELEM: u16 = 30;
const NFPROTO_INET: u8 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

/// Element bytes per netlink message: a nested attribute's length is 16 bits.
const MAX_MSG_PAYLOAD: usize = 56 * 1024;
/// Elements per batch (one atomic transaction, one send).
const MAX_BATCH_OPS: usize = 20_000;

/// The first address after the prefix, or `None` when the prefix reaches the
/// top of the address space (the interval is then open-ended).
fn after_prefix(net: &IpNet) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => u32::from(n.broadcast())
            .checked_add(1)
            .map(|v| IpAddr::from(v.to_be_bytes())),
        IpNet::V6(n) => u128::from(n.broadcast())
            .checked_add(1)
            .map(|v| IpAddr::from(v.to_be_bytes())),
    }
}

/// The nftables ruleset sipwarden owns, as one `nft -f` transaction that
/// replaces any leftover table of the same name. `mark`, the owner, becomes
/// the table's comment.
pub fn layout(table: &str, set_size: u32, feeds: &[String], mark: Option<&str>) -> String {
    let comment = mark
        .map(|m| format!("\tcomment \"{m}\"\n"))
        .unwrap_or_default();
    let size = if set_size > 0 {
        format!(" size {set_size};")
    } else {
        String::new()
    };
    // Blocklist feeds: prefixes, replaced whole on each refresh.
    let mut feed_sets = String::new();
    let mut feed_rules = String::new();
    for f in feeds {
        feed_sets.push_str(&format!(
            "\tset feed_{f}_v4 {{ type ipv4_addr; flags interval;{size} }}\n\tset feed_{f}_v6 {{ type ipv6_addr; flags interval;{size} }}\n"
        ));
        feed_rules.push_str(&format!(
            "\t\tip saddr @feed_{f}_v4 drop\n\t\tip6 saddr @feed_{f}_v6 drop\n"
        ));
    }
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         {comment}\
         \tset banned_v4 {{ type ipv4_addr; flags timeout;{size} }}\n\
         \tset banned_v6 {{ type ipv6_addr; flags timeout;{size} }}\n\
         \tset banned_net_v4 {{ type ipv4_addr; flags interval, timeout;{size} }}\n\
         \tset banned_net_v6 {{ type ipv6_addr; flags interval, timeout;{size} }}\n\
         {feed_sets}\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tip saddr @banned_v4 drop\n\
         \t\tip6 saddr @banned_v6 drop\n\
         \t\tip saddr @banned_net_v4 drop\n\
         \t\tip6 saddr @banned_net_v6 drop\n\
         {feed_rules}\
         \t}}\n\
         }}\n"
    )
}

/// Bans in kernel sets of table `inet <table>`.
#[derive(Debug)]
pub struct NftEnforcer {
    sock: NfSocket,
    table: String,
    /// This daemon's hold on the table, and its owner mark.
    owner: super::owner::TableOwner,
    /// Whether the table carries the mark (an old kernel or `nft` may
    /// refuse table comments).
    marked: bool,
    keep_on_exit: bool,
    /// Whether the kernel knows DESTROYSETELEM (else DELSETELEM, which fails
    /// on elements already gone).
    destroy: bool,
    /// Conntrack flushing stays off after the kernel refused it once.
    conntrack_ok: bool,
    /// Every ban in force as this enforcer applied it, and what the kernel
    /// holds: restored after drift.
    book: BanBook,
    set_size: u32,
    /// When the table was last checked, and its elements.
    last_probe: std::time::Instant,
    last_verify: std::time::Instant,
    /// Names of the blocklist feeds (sets `feed_<name>_v4`/`_v6`).
    feeds: Vec<String>,
    /// Each feed's current contents, put back after drift.
    feed_nets: HashMap<String, Vec<IpNet>>,
}

impl NftEnforcer {
    /// Lays out the table (replacing a leftover one) and opens the netlink
    /// socket; the owner is this process (for tools and tests: the daemon
    /// names its state directory with `start_with_feeds`).
    pub fn start(cfg: &FirewallConfig) -> Result<NftEnforcer, EnforceError> {
        let owner = format!("process {}", std::process::id());
        NftEnforcer::start_with_feeds(cfg, Vec::new(), &owner)
    }

    /// Like `start`, with a pair of sets for each blocklist feed, owned by
    /// `owner` (the canonical state directory). Refuses a table another
    /// running sipwarden owns, naming it.
    pub fn start_with_feeds(
        cfg: &FirewallConfig,
        feeds: Vec<String>,
        owner: &str,
    ) -> Result<NftEnforcer, EnforceError> {
        let mut sock = NfSocket::open().map_err(|e| EnforceError::Failed(socket_error(&e)))?;
        let owner = super::owner::take(&mut sock, &cfg.table, owner)?;
        let marked = match apply_layout(&cfg.table, cfg.set_size, &feeds, Some(&owner.mark)) {
            Ok(()) => true,
            Err(e) => {
                // Table comments need Linux 5.10 and nftables 0.9.7.
                apply_layout(&cfg.table, cfg.set_size, &feeds, None)?;
                tracing::warn!(
                    "firewall: table inet {} laid out without its owner mark ({e}); only the running daemon's claim guards it",
                    cfg.table
                );
                false
            }
        };
        tracing::info!(
            "firewall: table inet {} ready (sets banned_v4, banned_v6, banned_net_v4, banned_net_v6; chain prerouting, priority raw; owner {})",
            cfg.table,
            owner.mark
        );
        Ok(NftEnforcer {
            sock,
            table: cfg.table.clone(),
            owner,
            marked,
            keep_on_exit: cfg.keep_on_exit,
            destroy: true,
            conntrack_ok: true,
            book: BanBook::default(),
            set_size: cfg.set_size,
            last_probe: std::time::Instant::now(),
            last_verify: std::time::Instant::now(),
            feeds,
            feed_nets: HashMap::new(),
        })
    }

    /// The owner mark the layout carries.
    fn mark(&self) -> Option<&str> {
        self.marked.then_some(self.owner.mark.as_str())
    }

    /// Sends `ops` as one transaction; `Some(errno)` when the kernel
    /// refused it (then nothing of it was applied).
    fn send_ops(&mut self, ops: &[ElemOp]) -> Result<Option<i32>, EnforceError> {
        let replies = send_ops(&mut self.sock, &self.table, self.destroy, ops)?;
        Ok(replies.iter().find_map(|r| match r {
            Reply::Error(e) => Some(*e),
            Reply::Ack => None,
        }))
    }

    /// Applies `units`, each atomically. When the kernel refuses a batch
    /// because of some elements (a full set, a timeout out of range, an
    /// element someone else put there), it is split and retried, so one
    /// refused unit never loses the rest. Pushes the refused units' indexes
    /// (into `units`, plus `offset`) with their errno.
    fn apply_units(
        &mut self,
        units: &[Unit],
        offset: usize,
        refused: &mut Vec<(usize, i32)>,
    ) -> Result<(), EnforceError> {
        let mut ops: Vec<ElemOp> = units.iter().flat_map(|u| u.ops.iter().cloned()).collect();
        if ops.is_empty() {
            return Ok(());
        }
        // Removals first: an element whose end changed is removed and added
        // back in the same transaction.
        ops.sort_by_key(|o| (o.kind, o.set));
        let Some(errno) = self.send_ops(&ops)? else {
            return Ok(());
        };
        // DESTROYSETELEM unknown to this kernel: fall back to DELSETELEM.
        if self.destroy && errno == libc::EOPNOTSUPP && ops.iter().any(|o| o.kind == OpKind::Delete)
        {
            tracing::info!("firewall: this kernel has no DESTROYSETELEM; using DELSETELEM");
            self.destroy = false;
            return self.apply_units(units, offset, refused);
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
        if units.len() == 1 {
            refused.push((offset, errno));
            return Ok(());
        }
        let mid = units.len() / 2;
        self.apply_units(&units[..mid], offset, refused)?;
        self.apply_units(&units[mid..], offset + mid, refused)
    }

    /// Puts `ops` (additions) into the kernel, in batches; returns how many
    /// went in.
    fn readd(&mut self, ops: Vec<ElemOp>) -> Result<usize, EnforceError> {
        let units: Vec<Unit> = ops
            .into_iter()
            .map(|op| Unit {
                ops: vec![op],
                decisions: Vec::new(),
            })
            .collect();
        let mut refused = Vec::new();
        for (n, chunk) in units.chunks(MAX_BATCH_OPS).enumerate() {
            self.apply_units(chunk, n * MAX_BATCH_OPS, &mut refused)?;
        }
        Ok(units.len() - refused.len())
    }

    /// Removes the table (for `keep_on_exit = false`).
    fn delete_table(&mut self) -> Result<(), EnforceError> {
        let mut b = self.sock.buffer();
        b.batch_begin(NFNL_SUBSYS_NFTABLES);
        let s = b.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE,
            NLM_F_REQUEST | NLM_F_ACK,
            NFPROTO_INET,
            0,
        );
        b.attr_str(NFTA_TABLE_NAME, &self.table);
        b.end(s);
        b.batch_end(NFNL_SUBSYS_NFTABLES);
        match self
            .sock
            .transact(&b)
            .map_err(|e| EnforceError::Failed(explain_io(&e, &self.table)))?
            .first()
        {
            Some(Reply::Error(e)) if *e != libc::ENOENT => Err(EnforceError::Failed(explain(
                *e,
                &format!("deleting table inet {}", self.table),
            ))),
            _ => Ok(()),
        }
    }
}

/// How often the table and chain are checked, and the set contents compared.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const VERIFY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl NftEnforcer {
    /// Whether the table and its chain exist (a flushed ruleset removes both).
    fn layout_present(&mut self) -> Result<bool, EnforceError> {
        for (msg, attrs_) in [
            (
                NFT_MSG_GETTABLE,
                vec![(NFTA_TABLE_NAME, self.table.clone())],
            ),
            (
                NFT_MSG_GETCHAIN,
                vec![
                    (NFTA_CHAIN_TABLE, self.table.clone()),
                    (NFTA_CHAIN_NAME, "prerouting".to_string()),
                ],
            ),
        ] {
            let mut b = self.sock.buffer();
            let s = b.begin(
                (NFNL_SUBSYS_NFTABLES << 8) | msg,
                NLM_F_REQUEST | NLM_F_ACK,
                NFPROTO_INET,
                0,
            );
            for (t, v) in &attrs_ {
                b.attr_str(*t, v);
            }
            b.end(s);
            match self
                .sock
                .dump(&b, |_| {})
                .map_err(|e| EnforceError::Failed(explain_io(&e, &self.table)))?
            {
                Some(libc::ENOENT) => return Ok(false),
                Some(e) => {
                    return Err(EnforceError::Failed(explain(
                        e,
                        &format!("checking table inet {}", self.table),
                    )));
                }
                None => {}
            }
        }
        Ok(true)
    }

    /// The keys (network start addresses) in one of the sets, or `None` when
    /// the set is missing.
    fn set_keys(&mut self, set: SetName) -> Result<Option<HashSet<IpAddr>>, EnforceError> {
        let mut b = self.sock.buffer();
        let s = b.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
            NLM_F_REQUEST | NLM_F_DUMP,
            NFPROTO_INET,
            0,
        );
        b.attr_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
        b.attr_str(NFTA_SET_ELEM_LIST_SET, set.as_str());
        b.end(s);
        let mut keys = HashSet::new();
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
                &format!("listing set {}", set.as_str()),
            ))),
            None => Ok(Some(keys)),
        }
    }

    /// Puts every feed's contents back (after the table was laid out again).
    fn reload_feeds(&mut self) -> Result<(), EnforceError> {
        let feeds: Vec<(String, Vec<IpNet>)> = self
            .feed_nets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, nets) in feeds {
            self.replace_feed(&name, &nets)?;
        }
        Ok(())
    }

    /// Replaces the contents of feed `name`'s two sets: flush and refill in
    /// one netlink transaction (several, in order, past `MAX_BATCH_OPS`
    /// elements), so the kernel never holds a half-read feed.
    fn replace_feed(&mut self, name: &str, nets: &[IpNet]) -> Result<usize, EnforceError> {
        if !self.feeds.iter().any(|f| f == name) {
            return Err(EnforceError::Failed(format!(
                "feed {name} has no sets in table inet {} (feeds are laid out at start; restart after adding one)",
                self.table
            )));
        }
        let sets = [format!("feed_{name}_v4"), format!("feed_{name}_v6")];
        let chunks: Vec<&[IpNet]> = if nets.is_empty() {
            vec![&[]]
        } else {
            nets.chunks(MAX_BATCH_OPS / 2).collect()
        };
        for (i, chunk) in chunks.iter().enumerate() {
            let mut b = self.sock.buffer();
            b.batch_begin(NFNL_SUBSYS_NFTABLES);
            if i == 0 {
                for set in &sets {
                    // DELSETELEM without elements flushes the set.
                    let m = b.begin(
                        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM,
                        NLM_F_REQUEST | NLM_F_ACK,
                        NFPROTO_INET,
                        0,
                    );
                    b.attr_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
                    b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
                    b.end(m);
                }
            }
            for (set, v4) in [(&sets[0], true), (&sets[1], false)] {
                let mut items = chunk
                    .iter()
                    .filter(|n| matches!(n, IpNet::V4(_)) == v4)
                    .peekable();
                while items.peek().is_some() {
                    let m = b.begin(
                        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
                        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                        NFPROTO_INET,
                        0,
                    );
                    b.attr_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
                    b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
                    let list = b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                    while let Some(n) = items.peek() {
                        if b.len() - list >= MAX_MSG_PAYLOAD {
                            break;
                        }
                        // Interval sets: every entry is a start and, unless
                        // it runs to the end of the space, an end.
                        put_elem(&mut b, &addr_bytes(n.network()), None, 0);
                        if let Some(end) = after_prefix(n) {
                            put_elem(&mut b, &addr_bytes(end), None, NFT_SET_ELEM_INTERVAL_END);
                        }
                        items.next();
                    }
                    b.nest_end(list);
                    b.end(m);
                }
            }
            b.batch_end(NFNL_SUBSYS_NFTABLES);
            let replies = self
                .sock
                .transact(&b)
                .map_err(|e| EnforceError::Failed(explain_io(&e, &self.table)))?;
            if let Some(errno) = replies.iter().find_map(|r| match r {
                Reply::Error(e) => Some(*e),
                Reply::Ack => None,
            }) {
                return Err(EnforceError::Failed(explain(
                    errno,
                    &format!("loading feed {name} into table inet {}", self.table),
                )));
            }
        }
        self.feed_nets.insert(name.to_string(), nets.to_vec());
        Ok(nets.len())
    }

    /// Checks for drift and repairs it: a missing table or chain is laid out
    /// again with every ban in force; elements deleted by hand are re-added.
    pub fn check_drift(&mut self) -> Result<(), EnforceError> {
        let now = Time::now();
        self.book.expire(now);
        let t0 = std::time::Instant::now();
        if !self.layout_present()? {
            tracing::warn!(
                "firewall: table inet {} or its chain is gone (ruleset flushed?); restoring it",
                self.table
            );
            apply_layout(&self.table, self.set_size, &self.feeds, self.mark())?;
            let n = self.readd(self.book.all_elements(now))?;
            self.reload_feeds()?;
            tracing::warn!(
                "firewall: table inet {} restored with {n} ban(s) in {:?}",
                self.table,
                t0.elapsed()
            );
            self.last_verify = std::time::Instant::now();
            return Ok(());
        }
        if self.last_verify.elapsed() < VERIFY_EVERY {
            return Ok(());
        }
        self.last_verify = std::time::Instant::now();
        let mut present: HashSet<IpAddr> = HashSet::new();
        for set in [SetName::V4, SetName::V6, SetName::NetV4, SetName::NetV6] {
            match self.set_keys(set)? {
                Some(k) => present.extend(k),
                None => {
                    tracing::warn!(
                        "firewall: set {} is gone; restoring the table",
                        set.as_str()
                    );
                    self.last_probe = std::time::Instant::now() - PROBE_EVERY;
                    apply_layout(&self.table, self.set_size, &self.feeds, self.mark())?;
                    self.readd(self.book.all_elements(now))?;
                    self.reload_feeds()?;
                    return Ok(());
                }
            }
        }
        let missing = self.book.missing(now, &present);
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

/// Encodes `ops` as one batch on `sock` and sends it; returns one reply per
/// op.
fn send_ops(
    sock: &mut NfSocket,
    table: &str,
    destroy: bool,
    ops: &[ElemOp],
) -> Result<Vec<Reply>, EnforceError> {
    let mut b = sock.buffer();
    b.batch_begin(NFNL_SUBSYS_NFTABLES);
    // Which reply belongs to which ops: messages group consecutive ops.
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let (kind, set) = (ops[i].kind, ops[i].set);
        let msg_type = match kind {
            OpKind::Add => NFT_MSG_NEWSETELEM,
            OpKind::Delete if destroy => NFT_MSG_DESTROYSETELEM,
            OpKind::Delete => NFT_MSG_DELSETELEM,
        };
        let flags = NLM_F_REQUEST | NLM_F_ACK | if kind == OpKind::Add { NLM_F_CREATE } else { 0 };
        let start = b.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | msg_type,
            flags,
            NFPROTO_INET,
            0,
        );
        b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        b.attr_str(NFTA_SET_ELEM_LIST_SET, set.as_str());
        let list = b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        let first = i;
        while i < ops.len()
            && ops[i].kind == kind
            && ops[i].set == set
            && b.len() - list < MAX_MSG_PAYLOAD
        {
            put_op(&mut b, &ops[i]);
            i += 1;
        }
        b.nest_end(list);
        b.end(start);
        groups.push(first..i);
    }
    b.batch_end(NFNL_SUBSYS_NFTABLES);
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

/// The nftables [`FastLane`]: a netlink socket of its own that adds the
/// elements of a few new bans (adding an element that is there changes
/// nothing, so the enforcer applying the same bans next is harmless).
#[derive(Debug)]
struct FastAdd {
    sock: NfSocket,
    table: String,
}

impl FastLane for FastAdd {
    fn add(&mut self, bans: &[crate::jail::BanDecision]) {
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
                    set: SetName::for_net(&b.addr),
                    key: ElemKey::Host(b.addr.addr()),
                    timeout_ms,
                })
            })
            .collect();
        if !ops.is_empty() {
            if let Err(e) = send_ops(&mut self.sock, &self.table, true, &ops) {
                tracing::debug!("fast path: {e}; the enforcer applies these bans");
            }
        }
    }
}

fn socket_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => explain(errno, "opening the netfilter netlink socket"),
        None => format!("opening the netfilter netlink socket: {e}"),
    }
}

fn explain_io(e: &std::io::Error, table: &str) -> String {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => format!("table inet {table}: the kernel did not answer within 5 s"),
        Some(errno) => explain(errno, &format!("table inet {table}")),
        None => format!("table inet {table}: {e}"),
    }
}

/// Runs `nft -f -` with the layout: one atomic transaction.
fn apply_layout(
    table: &str,
    set_size: u32,
    feeds: &[String],
    mark: Option<&str>,
) -> Result<(), EnforceError> {
    let text = layout(table, set_size, feeds, mark);
    let child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EnforceError::Failed(
                "cannot lay out table inet sipwarden: the `nft` command is missing; install the nftables package (or run with --dry-run)".into(),
            ));
        }
        Err(e) => return Err(EnforceError::Failed(format!("cannot run `nft`: {e}"))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| EnforceError::Failed(format!("`nft -f -`: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let hint = if err.contains("Operation not permitted") {
        "; run sipwarden as root or give it CAP_NET_ADMIN (or use --dry-run)"
    } else if err.contains("No such file or directory") || err.contains("Protocol not supported") {
        "; is the nf_tables kernel module available?"
    } else {
        ""
    };
    Err(EnforceError::Failed(format!(
        "laying out table inet {table} failed: {}{hint}",
        err.trim()
    )))
}

impl Enforcer for NftEnforcer {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn load_feed(&mut self, name: &str, nets: &[IpNet]) -> Result<usize, EnforceError> {
        self.replace_feed(name, nets)
    }

    fn apply(&mut self, decisions: &[Decision]) -> Result<Vec<Refusal>, EnforceError> {
        let now = Time::now();
        self.book.expire(now);
        // The ledger first, remembering how to undo each decision.
        let mut undo: Vec<Option<Undo>> =
            decisions.iter().map(|d| Some(self.book.note(d))).collect();
        // One unit per single address touched; one per family for prefixes.
        let mut host_units: Vec<(IpNet, Unit)> = Vec::new();
        let mut host_index: HashMap<IpNet, usize> = HashMap::new();
        let mut prefix_decisions: HashMap<Family, Vec<usize>> = HashMap::new();
        for (i, d) in decisions.iter().enumerate() {
            let net = d.addr();
            if is_host(&net) {
                let k = *host_index.entry(net).or_insert_with(|| {
                    host_units.push((net, Unit::default()));
                    host_units.len() - 1
                });
                host_units[k].1.decisions.push(i);
            } else {
                prefix_decisions
                    .entry(Family::of(&net))
                    .or_default()
                    .push(i);
            }
        }
        for (net, unit) in &mut host_units {
            unit.ops = self.book.host_ops(net, now);
        }
        let mut refusals: Vec<Refusal> = Vec::new();
        let mut refuse =
            |undo: &mut Vec<Option<Undo>>, book: &mut BanBook, idxs: &[usize], reason: &str| {
                for &i in idxs.iter().rev() {
                    if let Some(u) = undo[i].take() {
                        book.undo(u);
                    }
                }
                for &i in idxs {
                    refusals.push(Refusal {
                        index: i,
                        reason: reason.to_string(),
                    });
                }
            };
        let units: Vec<Unit> = host_units.iter().map(|(_, u)| u.clone()).collect();
        let mut refused = Vec::new();
        // When the firewall cannot be reached at all, what was not applied
        // yet is refused with that error.
        let mut unreachable: Option<(usize, EnforceError)> = None;
        let mut start = 0;
        while start < units.len() {
            // Chunks of whole units, about MAX_BATCH_OPS elements each.
            let mut end = start;
            let mut n = 0;
            while end < units.len() && (end == start || n + units[end].ops.len() <= MAX_BATCH_OPS) {
                n += units[end].ops.len();
                end += 1;
            }
            if let Err(e) = self.apply_units(&units[start..end], start, &mut refused) {
                unreachable = Some((start, e));
                break;
            }
            start = end;
        }
        let refused_units: HashMap<usize, i32> = refused.into_iter().collect();
        for (k, (net, unit)) in host_units.iter().enumerate() {
            if let Some((from, e)) = &unreachable {
                if k >= *from {
                    refuse(&mut undo, &mut self.book, &unit.decisions, &e.to_string());
                    continue;
                }
            }
            match refused_units.get(&k) {
                None => self.book.commit_host(net, now),
                Some(&errno) => {
                    let what = unit
                        .ops
                        .iter()
                        .find(|o| o.kind == OpKind::Add)
                        .or(unit.ops.first())
                        .map(|o| format!("{} in set {}", o.key, o.set.as_str()))
                        .unwrap_or_else(|| net.to_string());
                    let reason = explain(errno, &format!("updating {what}"));
                    refuse(&mut undo, &mut self.book, &unit.decisions, &reason);
                }
            }
        }
        if let Some((_, e)) = &unreachable {
            let rest: Vec<usize> = prefix_decisions.values().flatten().copied().collect();
            refuse(&mut undo, &mut self.book, &rest, &e.to_string());
            prefix_decisions.clear();
        }
        // Prefixes: all of a family's changes in one transaction; when the
        // kernel refuses it, one decision at a time, so only the refused
        // ones are undone.
        let mut families: Vec<(Family, Vec<usize>)> = prefix_decisions.into_iter().collect();
        families.sort();
        for (family, idxs) in families {
            let (ops, wanted) = self.book.prefix_ops(family, now);
            let mut r = Vec::new();
            self.apply_units(
                &[Unit {
                    ops,
                    decisions: idxs.clone(),
                }],
                0,
                &mut r,
            )?;
            if r.is_empty() {
                self.book.commit_prefixes(family, wanted);
                continue;
            }
            for &i in idxs.iter().rev() {
                if let Some(u) = undo[i].take() {
                    self.book.undo(u);
                }
            }
            for &i in &idxs {
                undo[i] = Some(self.book.note(&decisions[i]));
                let (ops, wanted) = self.book.prefix_ops(family, now);
                let mut r = Vec::new();
                self.apply_units(
                    &[Unit {
                        ops,
                        decisions: vec![i],
                    }],
                    0,
                    &mut r,
                )?;
                match r.first() {
                    None => self.book.commit_prefixes(family, wanted),
                    Some(&(_, errno)) => {
                        let net = decisions[i].addr();
                        let reason = explain(
                            errno,
                            &format!(
                                "{} {} in set {}",
                                if matches!(decisions[i], Decision::Ban(_)) {
                                    "banning"
                                } else {
                                    "lifting"
                                },
                                crate::jail::DisplayNet(&net),
                                SetName::for_net(&net).as_str()
                            ),
                        );
                        refuse(&mut undo, &mut self.book, &[i], &reason);
                    }
                }
            }
        }
        for r in &refusals {
            tracing::warn!("firewall: {}", r.reason);
        }
        // Conntrack entries of the sources newly banned.
        let banned: Vec<IpNet> = decisions
            .iter()
            .enumerate()
            .filter(|(i, d)| matches!(d, Decision::Ban(_)) && undo[*i].is_some())
            .map(|(_, d)| d.addr())
            .collect();
        if !banned.is_empty() && self.conntrack_ok {
            match conntrack::flush_sources(&mut self.sock, &banned) {
                Ok(n) if n > 0 => {
                    tracing::debug!("firewall: deleted {n} conntrack entries of banned sources")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        "conntrack: {e}; established flows of banned sources are still dropped before conntrack, entries age out by themselves"
                    );
                    self.conntrack_ok = false;
                }
            }
        }
        Ok(refusals)
    }

    fn fast_lane(&self) -> Option<Box<dyn FastLane>> {
        let sock = NfSocket::open().ok()?;
        Some(Box::new(FastAdd {
            sock,
            table: self.table.clone(),
        }))
    }

    fn shift_clock(&mut self, delta_ms: i64) {
        self.book.shift(delta_ms);
    }

    fn tick(&mut self) -> Result<(), EnforceError> {
        if self.last_probe.elapsed() < PROBE_EVERY {
            return Ok(());
        }
        self.last_probe = std::time::Instant::now();
        self.check_drift()
    }

    fn close(&mut self) -> Result<(), EnforceError> {
        if self.keep_on_exit {
            tracing::info!(
                "firewall: table inet {} and its bans stay in place (keep_on_exit); kernel timeouts expire them",
                self.table
            );
            return Ok(());
        }
        // Only a table this daemon still owns: its comment names us.
        match super::owner::found(&mut self.sock, &self.table)? {
            super::owner::Found::None => return Ok(()),
            super::owner::Found::Marked(m) if m != self.owner.mark => {
                tracing::warn!(
                    "firewall: table inet {} now belongs to {m}, not to this daemon; left in place (keep_on_exit = false deletes only its own table)",
                    self.table
                );
                return Ok(());
            }
            super::owner::Found::Unmarked if self.marked => {
                tracing::warn!(
                    "firewall: table inet {} lost this daemon's owner mark (laid out again by someone else?); left in place",
                    self.table
                );
                return Ok(());
            }
            _ => {}
        }
        self.delete_table()?;
        tracing::info!(
            "firewall: table inet {} removed (keep_on_exit = false)",
            self.table
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_next_address() {
        let n: IpNet = "198.51.100.0/24".parse().unwrap();
        assert_eq!(after_prefix(&n), Some("198.51.101.0".parse().unwrap()));
        let top: IpNet = "255.255.255.0/24".parse().unwrap();
        assert_eq!(after_prefix(&top), None);
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert_eq!(after_prefix(&v6), Some("2001:db9::".parse().unwrap()));
    }

    #[test]
    fn layout_has_sets_and_raw_prerouting_chain() {
        let l = layout("sipwarden", 0, &[], Some("sipwarden:/var/lib/sipwarden"));
        assert!(l.starts_with("table inet sipwarden\ndelete table inet sipwarden\n"));
        assert!(l.contains("table inet sipwarden {\n\tcomment \"sipwarden:/var/lib/sipwarden\"\n\tset banned_v4"), "{l}");
        assert!(!layout("t", 0, &[], None).contains("comment"));
        assert!(l.contains("set banned_net_v6 { type ipv6_addr; flags interval, timeout; }"));
        assert!(l.contains("type filter hook prerouting priority raw; policy accept;"));
        assert!(layout("t", 1000, &[], None).contains("flags timeout; size 1000;"));
        let f = layout("t", 0, &["apiban".into()], None);
        assert!(
            f.contains("set feed_apiban_v4 { type ipv4_addr; flags interval; }"),
            "{f}"
        );
        assert!(f.contains("ip6 saddr @feed_apiban_v6 drop"), "{f}");
    }

    #[test]
    fn sets_by_address_kind() {
        let f = |s: &str| SetName::for_net(&s.parse().unwrap()).as_str();
        assert_eq!(f("192.0.2.1/32"), "banned_v4");
        assert_eq!(f("2001:db8::1/128"), "banned_v6");
        assert_eq!(f("192.0.2.0/24"), "banned_net_v4");
        assert_eq!(f("2001:db8::/48"), "banned_net_v6");
    }
}
