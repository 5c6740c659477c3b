//! Port-scoped bans: decisions split by their jail's scope, each scope's
//! ledger applied to its own sets; a reload's new scopes laid out beside
//! the running ones, and the bans of a jail whose scope changed moved.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::NftEnforcer;
use super::batch::MAX_BATCH_OPS;
use super::layout::add_scopes;
use crate::decision::Decision;
use crate::enforce::elements::{BanBook, Units};
use crate::enforce::intervals::Family;
use crate::enforce::scope::{PortScope, ScopeId};
use crate::enforce::{EnforceError, Refusal};
use crate::event::{JailId, Time};
use crate::net::is_host;

/// Each jail's scope id (indexed by jail id) and the scopes they use, from
/// `scopes`; `known` are the scopes already laid out. Two different scopes
/// with one id (a hash collision) are refused, naming both.
pub(super) fn plan(
    scopes: &[(JailId, Option<PortScope>)],
    known: &BTreeMap<ScopeId, PortScope>,
) -> Result<(Vec<ScopeId>, BTreeMap<ScopeId, PortScope>), EnforceError> {
    let len = scopes
        .iter()
        .filter(|(_, s)| s.is_some())
        .map(|(j, _)| usize::from(j.0) + 1)
        .max()
        .unwrap_or(0);
    let mut by_jail = vec![ScopeId::ALL; len];
    let mut groups: BTreeMap<ScopeId, PortScope> = BTreeMap::new();
    for (jail, scope) in scopes {
        let Some(scope) = scope else { continue };
        let id = scope.id();
        for other in [groups.get(&id), known.get(&id)].into_iter().flatten() {
            if other != scope {
                return Err(EnforceError::Failed(format!(
                    "port scopes {scope} and {other} would share kernel sets (_s{:08x}); change one of them slightly (add a port) and restart",
                    id.0
                )));
            }
        }
        groups.insert(id, scope.clone());
        if let Some(slot) = by_jail.get_mut(usize::from(jail.0)) {
            *slot = id;
        }
    }
    Ok((by_jail, groups))
}

impl NftEnforcer {
    /// The scope whose sets `jail`'s bans go to.
    fn scope_of(&self, jail: JailId) -> ScopeId {
        self.jail_scope
            .get(usize::from(jail.0))
            .copied()
            .filter(|s| self.scoped.contains_key(s))
            .unwrap_or(ScopeId::ALL)
    }

    /// The scopes other than `home` whose ledgers hold `jail`'s ban of
    /// `net` (left there by a move the kernel refused).
    fn strays(&self, jail: JailId, net: &IpNet, home: ScopeId) -> Vec<ScopeId> {
        std::iter::once((ScopeId::ALL, &self.book))
            .chain(self.scoped.iter().map(|(id, (_, b))| (*id, b)))
            .filter(|(id, b)| *id != home && b.has_ban(jail, net))
            .map(|(id, _)| id)
            .collect()
    }

    /// Takes scope `scope`'s ledger out (to apply it while `self` is
    /// borrowed); `put_book` puts it back.
    fn take_book(&mut self, scope: ScopeId) -> BanBook {
        match self.scoped.get_mut(&scope) {
            Some((_, book)) => std::mem::replace(book, BanBook::for_scope(scope)),
            None => std::mem::take(&mut self.book),
        }
    }

    fn put_book(&mut self, book: BanBook) {
        match self.scoped.get_mut(&book.scope()) {
            Some((_, slot)) => *slot = book,
            None => self.book = book,
        }
    }

    /// Applies `decisions` when some jails are scoped: each scope's share
    /// to its own sets; the conntrack entries of each new ban that its
    /// scope matches are noted for one flush after the answer.
    pub(super) fn apply_scoped(
        &mut self,
        decisions: &[Decision],
        now: Time,
    ) -> Result<Vec<Refusal>, EnforceError> {
        let mut groups: BTreeMap<ScopeId, Vec<usize>> = BTreeMap::new();
        for (i, d) in decisions.iter().enumerate() {
            let home = self.scope_of(d.jail());
            groups.entry(home).or_default().push(i);
            // An unban also lifts the jail's ban where a refused move to
            // its new scope left it (see `move_jail`).
            if let Decision::Unban(u) = d {
                for other in self.strays(u.jail, &u.addr, home) {
                    groups.entry(other).or_default().push(i);
                }
            }
        }
        let single = groups.len() == 1;
        let mut refusals = Vec::new();
        let mut every: Vec<IpNet> = Vec::new();
        let mut scoped: Vec<(IpNet, ScopeId)> = Vec::new();
        for (scope, idxs) in groups {
            let owned: Vec<Decision>;
            let share: &[Decision] = if single {
                decisions
            } else {
                owned = idxs.iter().map(|&i| decisions[i].clone()).collect();
                &owned
            };
            let mut book = self.take_book(scope);
            let r = self.apply_book(&mut book, share, now);
            self.put_book(book);
            let (refused, banned) = r?;
            refusals.extend(refused.into_iter().map(|r| Refusal {
                index: idxs.get(r.index).copied().unwrap_or(r.index),
                reason: r.reason,
            }));
            if scope == ScopeId::ALL {
                every.extend(banned);
            } else {
                scoped.extend(banned.into_iter().map(|n| (n, scope)));
            }
        }
        refusals.sort_by_key(|r| r.index);
        // An unban applied in two scopes is refused once.
        refusals.dedup_by_key(|r| r.index);
        self.flush_scoped(&every, &scoped);
        Ok(refusals)
    }

    /// Notes the conntrack entries of `every` (all flows) and of each of
    /// `scoped` (the flows its scope matches) for the next flush.
    fn flush_scoped(&mut self, every: &[IpNet], scoped: &[(IpNet, ScopeId)]) {
        let scopes: Vec<(IpNet, PortScope)> = scoped
            .iter()
            .filter_map(|(n, id)| Some((*n, self.scoped.get(id)?.0.clone())))
            .collect();
        let refs: Vec<(IpNet, &PortScope)> = scopes.iter().map(|(n, s)| (*n, s)).collect();
        self.note_conntrack(every, &refs);
    }

    /// Takes each jail's scope (`scopes`, by jail id; jails left out are
    /// unscoped): new scopes' sets and rules are added to the table, and
    /// the bans of a jail whose scope changed move to its new scope's sets
    /// (added there before they are lifted from the old ones). Scopes no
    /// jail uses any more stay laid out, empty, until the next restart.
    pub(super) fn rescope(
        &mut self,
        scopes: &[(JailId, Option<PortScope>)],
    ) -> Result<(), EnforceError> {
        let known: BTreeMap<ScopeId, PortScope> = self
            .scoped
            .iter()
            .map(|(id, (s, _))| (*id, s.clone()))
            .collect();
        let (by_jail, groups) = plan(scopes, &known)?;
        let new: Vec<PortScope> = groups
            .iter()
            .filter(|(id, _)| !self.scoped.contains_key(id))
            .map(|(_, s)| s.clone())
            .collect();
        if !new.is_empty() {
            add_scopes(&self.table, self.set_size, &new)?;
            for s in new {
                tracing::info!(
                    "firewall: port scope {s} added: sets banned_*_s{:08x}",
                    s.id().0
                );
                self.scoped
                    .insert(s.id(), (s.clone(), BanBook::for_scope(s.id())));
            }
            // The chain now has the new rules: that is not drift.
            self.chain = self.chain_state()?;
        }
        let before: Vec<ScopeId> = (0..self.jail_scope.len().max(by_jail.len()))
            .map(|i| self.scope_of(JailId(i as u16)))
            .collect();
        self.jail_scope = by_jail;
        if let Ok(mut lane) = self.lane_scopes.write() {
            lane.clone_from(&self.jail_scope);
        }
        let now = Time::now();
        for (i, from) in before.into_iter().enumerate() {
            let jail = JailId(i as u16);
            let to = self.scope_of(jail);
            if from != to {
                self.move_jail(jail, from, to, now)?;
            }
        }
        Ok(())
    }

    /// Moves `jail`'s bans from the sets of scope `from` to those of `to`.
    /// A ban the new sets refuse stays where it was (logged).
    fn move_jail(
        &mut self,
        jail: JailId,
        from: ScopeId,
        to: ScopeId,
        now: Time,
    ) -> Result<(), EnforceError> {
        let mut old = self.take_book(from);
        let mut new = self.take_book(to);
        let moved = old.take_jail(jail);
        for (net, end) in &moved {
            new.put(*net, jail, *end);
        }
        let nets: Vec<IpNet> = moved.iter().map(|(n, _)| *n).collect();
        let r = self.sync_book(&mut new, &nets, now);
        let refused = match r {
            Ok(refused) => refused,
            Err(e) => {
                self.put_book(old);
                self.put_book(new);
                return Err(e);
            }
        };
        // What the new sets refused stays banned in the old ones.
        for (net, end) in moved.iter().filter(|(n, _)| refused.contains(n)) {
            tracing::warn!(
                "firewall: the ban of {} could not move to its jail's new port scope; it stays in the old sets until it ends or is lifted",
                crate::net::DisplayNet(net)
            );
            old.put(*net, jail, *end);
            new.take_jail_net(jail, net);
        }
        let r = self.sync_book(&mut old, &nets, now);
        self.put_book(old);
        self.put_book(new);
        r?;
        if !moved.is_empty() {
            tracing::info!(
                "firewall: {} ban(s) of jail {} moved to its new port scope",
                moved.len() - refused.len(),
                jail.0
            );
            let landed: Vec<IpNet> = nets.into_iter().filter(|n| !refused.contains(n)).collect();
            if to == ScopeId::ALL {
                self.flush_scoped(&landed, &[]);
            } else {
                let scoped: Vec<(IpNet, ScopeId)> = landed.into_iter().map(|n| (n, to)).collect();
                self.flush_scoped(&[], &scoped);
            }
        }
        Ok(())
    }

    /// Brings the kernel's elements for `nets` in `book`'s sets to what its
    /// bans want; returns the single addresses the kernel refused (their
    /// elements unchanged; prefixes of a refused family likewise).
    fn sync_book(
        &mut self,
        book: &mut BanBook,
        nets: &[IpNet],
        now: Time,
    ) -> Result<BTreeSet<IpNet>, EnforceError> {
        let hosts: Vec<IpNet> = nets.iter().filter(|n| is_host(n)).copied().collect();
        let mut units = Units::with_capacity(hosts.len());
        for net in &hosts {
            book.host_ops(net, now, &mut units.ops);
            units.close();
        }
        let mut refused = Vec::new();
        let mut start = 0;
        while start < units.len() {
            let end = (start + MAX_BATCH_OPS / 2).min(units.len());
            self.apply_units(&units, start..end, &mut refused)?;
            start = end;
        }
        let mut out = BTreeSet::new();
        for (k, _) in &refused {
            if let Some(n) = hosts.get(*k) {
                out.insert(*n);
            }
        }
        for net in hosts.iter().filter(|n| !out.contains(n)) {
            book.commit_host(net, now);
        }
        let families: BTreeSet<Family> = nets
            .iter()
            .filter(|n| !is_host(n))
            .map(Family::of)
            .collect();
        for family in families {
            let (ops, wanted) = book.prefix_ops(family, now);
            let mut unit = Units::with_capacity(1);
            unit.ops = ops;
            unit.close();
            let mut r = Vec::new();
            self.apply_units(&unit, 0..1, &mut r)?;
            if r.is_empty() {
                book.commit_prefixes(family, wanted);
            } else {
                out.extend(
                    nets.iter()
                        .filter(|n| !is_host(n) && Family::of(n) == family),
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::scope::Proto;

    #[test]
    fn jails_with_one_scope_share_its_sets_and_the_rest_drop_everything() {
        let sip = PortScope::new(&[Proto::Udp, Proto::Tcp], &[(5060, 5061)]).unwrap();
        let web = PortScope::new(&[Proto::Tcp], &[(443, 443)]).unwrap();
        let (by_jail, groups) = plan(
            &[
                (JailId(0), None),
                (JailId(1), Some(sip.clone())),
                (JailId(3), Some(web.clone())),
                (JailId(4), Some(sip.clone())),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            by_jail,
            [ScopeId::ALL, sip.id(), ScopeId::ALL, web.id(), sip.id()]
        );
        assert_eq!(groups.len(), 2);
        // No scoped jail: nothing to index, today's table.
        let (by_jail, groups) = plan(&[(JailId(7), None)], &BTreeMap::new()).unwrap();
        assert!(by_jail.is_empty() && groups.is_empty());
    }

    #[test]
    fn two_scopes_with_one_id_are_refused() {
        let sip = PortScope::new(&[Proto::Udp], &[(5060, 5060)]).unwrap();
        let other = PortScope::new(&[Proto::Tcp], &[(22, 22)]).unwrap();
        // A made-up collision: a laid-out scope under the new one's id.
        let known = BTreeMap::from([(sip.id(), other)]);
        let e = plan(&[(JailId(0), Some(sip))], &known).unwrap_err();
        assert!(e.to_string().contains("would share kernel sets"), "{e}");
    }
}
