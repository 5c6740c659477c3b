//! The nftables enforcer: kernel sets with per-element timeouts, a chain at
//! prerouting with raw priority (before connection tracking), bans and
//! unbans in netlink batches, conntrack entries of banned sources flushed.
//!
//! The table is laid out once at start with one `nft -f -` transaction
//! (atomic: the old table, if any, is replaced in the same step), after the
//! daemon made sure no other running sipwarden owns it (`owner.rs`). Every
//! ban and unban after that is a netlink batch from this process: no child
//! process per ban. `layout.rs` lays the table out and removes it,
//! `batch.rs` sends element changes, `drift.rs` repairs what others
//! changed, `feeds.rs` replaces the blocklist sets; this file applies
//! decisions.

mod batch;
mod drift;
mod feeds;
mod layout;
mod scoped;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

pub use self::layout::{layout, layout_with, scope_additions};

use self::batch::{FastAdd, MAX_BATCH_OPS, socket_error};
use self::drift::PROBE_EVERY;
use self::layout::apply_layout;
use super::conntrack;
use super::elements::{BanBook, OpKind, SetName, Undo, Units};
use super::intervals::Family;
use super::netlink::{NfSocket, explain};
use super::scope::{PortScope, ScopeId};
use super::{EnforceError, Enforcer, FastLane, Refusal};
use crate::decision::Decision;
use crate::enforce::FirewallConfig;
use crate::event::{JailId, Time};
use crate::net::is_host;

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
    /// Sources banned since the last conntrack flush: every flow of these,
    /// and of those the flows their scope matches (see
    /// [`Enforcer::flush_pending`]).
    ct_every: Vec<IpNet>,
    ct_scoped: Vec<(IpNet, PortScope)>,
    /// Every ban in force as this enforcer applied it, and what the kernel
    /// holds: restored after drift. The unscoped sets'.
    book: BanBook,
    /// The same for each port scope's sets, with the scope. A scope stays
    /// laid out until the next restart once a reload left it unused.
    scoped: BTreeMap<ScopeId, (PortScope, BanBook)>,
    /// Each jail's scope, by jail id (`ScopeId::ALL` past the end).
    jail_scope: Vec<ScopeId>,
    /// The same, for the fast lane (which never waits for it).
    lane_scopes: Arc<RwLock<Vec<ScopeId>>>,
    /// When the ledger last forgot what ended (a full pass: not on every
    /// batch).
    book_expired: Time,
    set_size: u32,
    /// When the table was last checked, and its elements.
    last_probe: std::time::Instant,
    /// The chain as laid out (rules and policy): any change is drift.
    chain: Option<drift::ChainState>,
    last_verify: std::time::Instant,
    /// The wait before the next comparison of the sets' contents
    /// ([`drift::next_verify_wait`]).
    verify_wait: std::time::Duration,
    /// Names of the blocklist feeds (sets `feed_<name>_v4`/`_v6`).
    feeds: Vec<String>,
    /// Each feed's current contents, put back after drift.
    feed_nets: HashMap<String, Vec<IpNet>>,
}

/// A decision that is not a single address's (a prefix's): no unit of its own.
const NO_UNIT: usize = usize::MAX;

/// How often the ledger is swept of ended bans. Ended entries are ignored
/// anyway; the sweep only gives their memory back, so a burst of bans into
/// a full ledger does not pay for a pass over every ban.
const BOOK_SWEEP_MS: i64 = 60_000;

impl NftEnforcer {
    /// Forgets what ended, at most every [`BOOK_SWEEP_MS`] (or when the
    /// clock went back).
    fn expire_book(&mut self, now: Time) {
        if now.0 - self.book_expired.0 >= BOOK_SWEEP_MS || now.0 < self.book_expired.0 {
            self.book.expire(now);
            for (_, book) in self.scoped.values_mut() {
                book.expire(now);
            }
            self.book_expired = now;
        }
    }

    /// The port scopes laid out, in order.
    fn scope_list(&self) -> Vec<PortScope> {
        self.scoped.values().map(|(s, _)| s.clone()).collect()
    }

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
        NftEnforcer::start_scoped(cfg, feeds, owner, &[])
    }

    /// Like `start_with_feeds`, with the sets and rules of each jail's port
    /// scope laid out from the start (`scopes`: jail id and scope, for the
    /// scoped jails).
    pub fn start_scoped(
        cfg: &FirewallConfig,
        feeds: Vec<String>,
        owner: &str,
        scopes: &[(JailId, Option<PortScope>)],
    ) -> Result<NftEnforcer, EnforceError> {
        let (jail_scope, groups) = scoped::plan(scopes, &BTreeMap::new())?;
        let list: Vec<PortScope> = groups.values().cloned().collect();
        let mut sock = NfSocket::open().map_err(|e| EnforceError::Failed(socket_error(&e)))?;
        let owner = super::owner::take(&mut sock, &cfg.table, owner)?;
        let marked = match apply_layout(&cfg.table, cfg.set_size, &feeds, &list, Some(&owner.mark))
        {
            Ok(()) => true,
            Err(e) => {
                // Table comments need Linux 5.10 and nftables 0.9.7.
                apply_layout(&cfg.table, cfg.set_size, &feeds, &list, None)?;
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
        for s in &list {
            tracing::info!("firewall: port scope {s}: sets banned_*_s{:08x}", s.id().0);
        }
        let mut e = NftEnforcer {
            sock,
            table: cfg.table.clone(),
            owner,
            marked,
            keep_on_exit: cfg.keep_on_exit,
            destroy: true,
            conntrack_ok: true,
            ct_every: Vec::new(),
            ct_scoped: Vec::new(),
            book: BanBook::default(),
            scoped: groups
                .into_iter()
                .map(|(id, s)| (id, (s, BanBook::for_scope(id))))
                .collect(),
            lane_scopes: Arc::new(RwLock::new(jail_scope.clone())),
            jail_scope,
            book_expired: Time(0),
            set_size: cfg.set_size,
            last_probe: std::time::Instant::now(),
            chain: None,
            last_verify: std::time::Instant::now(),
            verify_wait: drift::VERIFY_EVERY,
            feeds,
            feed_nets: HashMap::new(),
        };
        // The chain as laid out: any later change to it is drift.
        e.chain = e.chain_state()?;
        Ok(e)
    }

    /// The owner mark the layout carries.
    fn mark(&self) -> Option<&str> {
        self.marked.then_some(self.owner.mark.as_str())
    }

    /// Applies `decisions` to the sets `book` keeps (one scope's), each
    /// refused one undone in the ledger; returns the refusals (indexes into
    /// `decisions`) and the sources newly banned.
    fn apply_book(
        &mut self,
        book: &mut BanBook,
        decisions: &[Decision],
        now: Time,
    ) -> Result<(Vec<Refusal>, Vec<IpNet>), EnforceError> {
        // The ledger first, remembering how to undo each decision.
        let mut undo: Vec<Option<Undo>> = decisions.iter().map(|d| Some(book.note(d))).collect();
        // One unit per single address touched (`unit_of` says which, per
        // decision); prefixes one family at a time, below.
        let mut unit_of: Vec<usize> = Vec::with_capacity(decisions.len());
        let mut nets: Vec<IpNet> = Vec::with_capacity(decisions.len());
        let mut prefix_decisions: HashMap<Family, Vec<usize>> = HashMap::new();
        {
            let mut index: HashMap<IpNet, usize> = HashMap::with_capacity(decisions.len());
            for (i, d) in decisions.iter().enumerate() {
                let net = d.addr();
                if is_host(&net) {
                    unit_of.push(*index.entry(net).or_insert_with(|| {
                        nets.push(net);
                        nets.len() - 1
                    }));
                } else {
                    unit_of.push(NO_UNIT);
                    prefix_decisions
                        .entry(Family::of(&net))
                        .or_default()
                        .push(i);
                }
            }
        }
        let mut units = Units::with_capacity(nets.len());
        for net in &nets {
            book.host_ops(net, now, &mut units.ops);
            units.close();
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
        let mut refused = Vec::new();
        // When the firewall cannot be reached at all, what was not applied
        // yet is refused with that error.
        let mut unreachable: Option<(usize, EnforceError)> = None;
        let mut start = 0;
        while start < units.len() {
            // Chunks of whole units, about MAX_BATCH_OPS elements each.
            let mut end = start;
            let mut n = 0;
            while end < units.len() {
                let len = units.ops_of(end..end + 1).len();
                if end > start && n + len > MAX_BATCH_OPS {
                    break;
                }
                n += len;
                end += 1;
            }
            if let Err(e) = self.apply_units(&units, start..end, &mut refused) {
                unreachable = Some((start, e));
                break;
            }
            start = end;
        }
        // Why each refused unit was refused (none, nearly always).
        let mut why: HashMap<usize, String> = HashMap::new();
        for (k, errno) in refused {
            let ops = units.ops_of(k..k + 1);
            let what = ops
                .iter()
                .find(|o| o.kind == OpKind::Add)
                .or(ops.first())
                .map(|o| format!("{} in set {}", o.key, o.set.label()))
                .unwrap_or_else(|| nets.get(k).map(|n| n.to_string()).unwrap_or_default());
            why.insert(k, explain(errno, &format!("updating {what}")));
        }
        let from = unreachable.as_ref().map_or(usize::MAX, |(from, _)| *from);
        let unreachable_why = unreachable.as_ref().map(|(_, e)| e.to_string());
        let reason_of = |k: usize| -> Option<&str> {
            if k >= from {
                unreachable_why.as_deref()
            } else {
                why.get(&k).map(String::as_str)
            }
        };
        for (k, net) in nets.iter().enumerate() {
            if reason_of(k).is_none() {
                book.commit_host(net, now);
            }
        }
        if !why.is_empty() || unreachable.is_some() {
            // Each refused unit's decisions: undone latest first, then
            // answered in order.
            let mut per_unit: HashMap<usize, Vec<usize>> = HashMap::new();
            for (i, &k) in unit_of.iter().enumerate() {
                if k != NO_UNIT && reason_of(k).is_some() {
                    per_unit.entry(k).or_default().push(i);
                }
            }
            let mut ks: Vec<usize> = per_unit.keys().copied().collect();
            ks.sort_unstable();
            for k in ks {
                let reason = reason_of(k).unwrap_or_default();
                refuse(&mut undo, book, &per_unit[&k], reason);
            }
        }
        if let Some(e) = &unreachable_why {
            let rest: Vec<usize> = prefix_decisions.values().flatten().copied().collect();
            refuse(&mut undo, book, &rest, e);
            prefix_decisions.clear();
        }
        // Prefixes: all of a family's changes in one transaction; when the
        // kernel refuses it, one decision at a time, so only the refused
        // ones are undone.
        let mut families: Vec<(Family, Vec<usize>)> = prefix_decisions.into_iter().collect();
        families.sort();
        for (family, idxs) in families {
            let (ops, wanted) = book.prefix_ops(family, now);
            let mut r = Vec::new();
            let mut unit = Units::with_capacity(1);
            unit.ops = ops;
            unit.close();
            self.apply_units(&unit, 0..1, &mut r)?;
            if r.is_empty() {
                book.commit_prefixes(family, wanted);
                continue;
            }
            for &i in idxs.iter().rev() {
                if let Some(u) = undo[i].take() {
                    book.undo(u);
                }
            }
            for &i in &idxs {
                undo[i] = Some(book.note(&decisions[i]));
                let (ops, wanted) = book.prefix_ops(family, now);
                let mut r = Vec::new();
                let mut unit = Units::with_capacity(1);
                unit.ops = ops;
                unit.close();
                self.apply_units(&unit, 0..1, &mut r)?;
                match r.first() {
                    None => book.commit_prefixes(family, wanted),
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
                                crate::net::DisplayNet(&net),
                                SetName::for_net(&net).in_scope(book.scope()).label()
                            ),
                        );
                        refuse(&mut undo, book, &[i], &reason);
                    }
                }
            }
        }
        for r in &refusals {
            tracing::warn!("firewall: {}", r.reason);
        }
        // The sources newly banned, for their conntrack entries.
        let banned: Vec<IpNet> = decisions
            .iter()
            .enumerate()
            .filter(|(i, d)| matches!(d, Decision::Ban(_)) && undo[*i].is_some())
            .map(|(_, d)| d.addr())
            .collect();
        Ok((refusals, banned))
    }

    /// Notes `banned` (every flow) and `scoped` (the flows their scope
    /// matches) for the next conntrack flush, which runs after the batch's
    /// answer ([`Enforcer::flush_pending`]). Nothing noted once the kernel
    /// refused a flush. A caller that never flushes still gets one here
    /// once [`CT_PENDING_MAX`] sources wait.
    fn note_conntrack(&mut self, banned: &[IpNet], scoped: &[(IpNet, &PortScope)]) {
        if !self.conntrack_ok {
            return;
        }
        self.ct_every.extend_from_slice(banned);
        self.ct_scoped
            .extend(scoped.iter().map(|(n, s)| (*n, (*s).clone())));
        if self.ct_every.len() + self.ct_scoped.len() > CT_PENDING_MAX {
            self.flush_noted();
        }
    }

    /// Deletes the conntrack entries of the sources noted since the last
    /// flush, in one dump; turned off after the kernel refused once.
    fn flush_noted(&mut self) {
        let every = std::mem::take(&mut self.ct_every);
        let scoped = std::mem::take(&mut self.ct_scoped);
        if (every.is_empty() && scoped.is_empty()) || !self.conntrack_ok {
            return;
        }
        // No entry in this namespace: nothing to delete, and none can
        // appear for these sources now that their sets drop them before
        // conntrack. The dump (8-14 ms for a large host table) is skipped.
        if conntrack::count_here() == Some(0) {
            return;
        }
        let refs: Vec<(IpNet, &PortScope)> = scoped.iter().map(|(n, s)| (*n, s)).collect();
        match conntrack::flush(&mut self.sock, &every, &refs) {
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
}

/// Most sources noted for a conntrack flush before `apply` flushes them
/// itself (a caller that never calls [`Enforcer::flush_pending`]).
const CT_PENDING_MAX: usize = 100_000;

impl Enforcer for NftEnforcer {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn load_feed(&mut self, name: &str, nets: &[IpNet]) -> Result<usize, EnforceError> {
        self.replace_feed(name, nets)
    }

    fn apply(&mut self, decisions: &[Decision]) -> Result<Vec<Refusal>, EnforceError> {
        let now = Time::now();
        self.expire_book(now);
        if !self.scoped.is_empty() {
            return self.apply_scoped(decisions, now);
        }
        // No port scopes: every decision is the unscoped sets'.
        let mut book = std::mem::take(&mut self.book);
        let r = self.apply_book(&mut book, decisions, now);
        self.book = book;
        let (refusals, banned) = r?;
        self.note_conntrack(&banned, &[]);
        Ok(refusals)
    }

    fn flush_pending(&mut self) {
        self.flush_noted();
    }

    fn fast_lane(&self) -> Option<Box<dyn FastLane>> {
        let sock = NfSocket::open().ok()?;
        Some(Box::new(FastAdd {
            sock,
            table: self.table.clone(),
            scopes: self.lane_scopes.clone(),
        }))
    }

    fn set_scopes(&mut self, scopes: &[(JailId, Option<PortScope>)]) -> Result<(), EnforceError> {
        let r = self.rescope(scopes);
        if r.is_err() {
            // The fast lane took the new scopes already: back to the ones
            // in force.
            if let Ok(mut lane) = self.lane_scopes.write() {
                lane.clone_from(&self.jail_scope);
            }
        }
        r
    }

    fn shift_clock(&mut self, delta_ms: i64) {
        self.book.shift(delta_ms);
        for (_, book) in self.scoped.values_mut() {
            book.shift(delta_ms);
        }
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
    use super::layout::after_prefix;
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
}
