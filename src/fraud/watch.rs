//! The call ledger and the rules over it: [`Watch::on_event`] for each
//! channel event, [`Watch::tick`] about once a second (live calls grow,
//! windows slide, hours change); both answer with [`Order`]s.
//!
//! A rule fires when an account's level rises (nothing → warning →
//! critical); it fires again only after the level fell. After a critical
//! level the account is held for the rule's `hold`: each new call it makes
//! to the prefix set is hung up at once (when the critical actions hang
//! up), and a new source address it calls from is banned.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use jiff::tz::TimeZone;

use super::rule::{FraudRule, Level, Metric};
pub use super::view::{AccountView, FiredView, FraudView};
use super::{CallEvent, CallKind, Firing, Order, Uuid};
use crate::event::{Time, escape_text};

/// Live calls followed per account; more are counted, not kept.
pub const MAX_LIVE: usize = 512;
/// Accounts followed at once; past it, the one idle longest is forgotten.
pub const MAX_ACCOUNTS: usize = 10_000;
/// Rules per connection (a bit each in a call's mask).
pub const MAX_RULES: usize = 64;
/// A live call without a hang-up for this long is forgotten (its hang-up
/// was missed, e.g. while the connection was down).
pub const MAX_CALL_MS: i64 = 24 * 3600 * 1000;
/// Firings kept for status and the dashboard.
pub const KEEP_FIRED: usize = 50;
/// Longest answered-minutes window: one bucket a minute, bounded.
pub const MAX_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// An account's number and name are kept this long at most.
const MAX_TEXT: usize = 64;
/// Source addresses banned per account and rule while held.
const MAX_BANNED: usize = 16;
const MINUTE: i64 = 60_000;

/// A live call a firing touches: (uuid, number, created, source, already
/// hung up).
type Touched = (Uuid, Box<str>, Time, Option<IpAddr>, bool);

#[derive(Debug)]
struct Live {
    dest: Box<str>,
    created: Time,
    answered: Option<Time>,
    source: Option<IpAddr>,
    /// Bit `r` set: rule `r`'s prefixes match.
    rules: u64,
    hung_up: bool,
}

#[derive(Debug, Default)]
struct RuleState {
    /// Starts of matching calls in the last minute (bounded).
    starts: VecDeque<Time>,
    /// Answered milliseconds of ended matching calls, per minute.
    answered: VecDeque<(i64, i64)>,
    sequential: u64,
    level: Option<Level>,
    held_until: Option<Time>,
    banned: Vec<IpAddr>,
}

#[derive(Debug)]
struct Account {
    last_seen: Time,
    live: HashMap<Uuid, Live>,
    /// Calls begun while `live` was full.
    overflow: u64,
    rules: Vec<RuleState>,
}

/// One rule with its zone, resolved once.
#[derive(Debug)]
struct Armed {
    rule: Arc<FraudRule>,
    zone: TimeZone,
}

/// The ledger of one connection's accounts, and its rules.
#[derive(Debug)]
pub struct Watch {
    rules: Vec<Armed>,
    accounts: HashMap<Box<str>, Account>,
    fired: VecDeque<FiredView>,
    /// Accounts forgotten because [`MAX_ACCOUNTS`] were followed.
    evicted: u64,
    /// Calls not kept because an account had [`MAX_LIVE`] live.
    overflow: u64,
    /// Firings so far: warning, critical.
    firings: [u64; 2],
}

fn cut(s: &str) -> Box<str> {
    let end = s.char_indices().nth(MAX_TEXT).map_or(s.len(), |(i, _)| i);
    Box::from(&s[..end])
}

impl Watch {
    /// A watch over `rules` (at most [`MAX_RULES`]; their zones were
    /// checked with the configuration; one that no longer resolves is read
    /// as UTC, said in the log).
    pub fn new(rules: &[Arc<FraudRule>]) -> Watch {
        let rules = rules
            .iter()
            .take(MAX_RULES)
            .map(|r| {
                let zone = crate::filter::date::parse_zone(&r.timezone).unwrap_or_else(|e| {
                    tracing::warn!("fraud rule {}: {e}; its hours are read in UTC", r.name);
                    TimeZone::UTC
                });
                Armed {
                    rule: r.clone(),
                    zone,
                }
            })
            .collect();
        Watch {
            rules,
            accounts: HashMap::new(),
            fired: VecDeque::new(),
            evicted: 0,
            overflow: 0,
            firings: [0; 2],
        }
    }

    /// Takes one channel event at `now`; the orders it calls for.
    pub fn on_event(&mut self, ev: &CallEvent, now: Time) -> Vec<Order> {
        let mut orders = Vec::new();
        if self.rules.is_empty() {
            return orders;
        }
        let n_rules = self.rules.len();
        // Kept and looked up by the same (cut) name: a longer one is still
        // one account.
        let key = cut(&ev.account);
        if !self.accounts.contains_key(&key) {
            if ev.kind != CallKind::Create {
                return orders; // a call begun before we listened
            }
            self.make_room();
            self.accounts.insert(
                key.clone(),
                Account {
                    last_seen: now,
                    live: HashMap::new(),
                    overflow: 0,
                    rules: (0..n_rules).map(|_| RuleState::default()).collect(),
                },
            );
        }
        let Some(acct) = self.accounts.get_mut(&key) else {
            return orders;
        };
        acct.last_seen = now;
        match ev.kind {
            CallKind::Create => {
                let mut mask = 0u64;
                for (i, armed) in self.rules.iter().enumerate() {
                    let st = &mut acct.rules[i];
                    if armed.rule.prefixes.matches(&ev.dest) {
                        mask |= 1 << i;
                        st.sequential = st.sequential.saturating_add(1);
                        st.starts.push_back(ev.time);
                        trim_starts(st, &armed.rule, ev.time);
                    } else {
                        st.sequential = 0;
                    }
                }
                if acct.live.len() >= MAX_LIVE {
                    acct.overflow += 1;
                    self.overflow += 1;
                } else {
                    acct.live.insert(
                        ev.uuid,
                        Live {
                            dest: cut(&ev.dest),
                            created: ev.time,
                            answered: None,
                            source: ev.source,
                            rules: mask,
                            hung_up: false,
                        },
                    );
                }
                // Held accounts: the new call goes at once.
                for (i, armed) in self.rules.iter().enumerate() {
                    let st = &mut acct.rules[i];
                    let held = st.held_until.is_some_and(|t| now < t);
                    if !held || mask & (1 << i) == 0 {
                        continue;
                    }
                    let acts = armed.rule.critical;
                    if acts.hangup {
                        if let Some(l) = acct.live.get_mut(&ev.uuid) {
                            l.hung_up = true;
                        }
                        orders.push(Order::Hangup {
                            uuid: ev.uuid,
                            rule: armed.rule.name.clone(),
                            account: ev.account.to_string(),
                            dest: ev.dest.to_string(),
                        });
                    }
                    if acts.ban {
                        ban_new(st, ev.source, &armed.rule, &ev.account, &mut orders);
                    }
                }
            }
            CallKind::Answer => {
                if let Some(l) = acct.live.get_mut(&ev.uuid) {
                    l.answered.get_or_insert(ev.time);
                }
            }
            CallKind::Hangup => {
                if let Some(l) = acct.live.remove(&ev.uuid) {
                    if let Some(a) = l.answered {
                        let ms = (ev.time.0 - a.0).max(0);
                        for (i, st) in acct.rules.iter_mut().enumerate() {
                            if l.rules & (1 << i) != 0 {
                                add_answered(st, ev.time, ms);
                            }
                        }
                    }
                }
            }
        }
        self.evaluate(&key, now, &mut orders);
        orders
    }

    /// Re-reads every account at `now` (live calls' minutes grow, windows
    /// slide, hours change) and forgets what is stale.
    pub fn tick(&mut self, now: Time) -> Vec<Order> {
        let mut orders = Vec::new();
        let names: Vec<Box<str>> = self.accounts.keys().cloned().collect();
        for name in &names {
            self.evaluate(name, now, &mut orders);
        }
        let rules = &self.rules;
        self.accounts.retain(|_, a| {
            a.live.retain(|_, l| now.0 - l.created.0 < MAX_CALL_MS);
            for (st, armed) in a.rules.iter_mut().zip(rules) {
                trim_starts(st, &armed.rule, now);
                trim_answered(st, &armed.rule, now);
                if st.held_until.is_some_and(|t| now >= t) {
                    st.held_until = None;
                    st.banned.clear();
                }
            }
            let busy = !a.live.is_empty()
                || a.rules.iter().any(|s| {
                    !s.starts.is_empty()
                        || !s.answered.is_empty()
                        || s.level.is_some()
                        || s.held_until.is_some()
                        || s.sequential > 0
                });
            busy || now.0 - a.last_seen.0 < 3600 * 1000
        });
        orders
    }

    /// The connection was made again: hang-ups sent on the old one may
    /// have gone unanswered, so the live calls of held accounts are hung
    /// up again (a call that already ended is refused by FreeSWITCH,
    /// harmlessly).
    pub fn resume(&mut self, now: Time) -> Vec<Order> {
        let mut orders = Vec::new();
        for (name, acct) in &mut self.accounts {
            for (i, armed) in self.rules.iter().enumerate() {
                let held = acct.rules[i].held_until.is_some_and(|t| now < t);
                if !held || !armed.rule.critical.hangup {
                    continue;
                }
                for (uuid, l) in acct
                    .live
                    .iter_mut()
                    .filter(|(_, l)| l.rules & (1 << i) != 0)
                {
                    l.hung_up = true;
                    orders.push(Order::Hangup {
                        uuid: *uuid,
                        rule: armed.rule.name.clone(),
                        account: name.to_string(),
                        dest: l.dest.to_string(),
                    });
                }
            }
        }
        orders
    }

    /// Forgets the account idle longest when [`MAX_ACCOUNTS`] are followed
    /// (one with nothing live and no level, while there is one).
    fn make_room(&mut self) {
        if self.accounts.len() < MAX_ACCOUNTS {
            return;
        }
        let oldest = self
            .accounts
            .iter()
            // Held accounts last, then those with live calls or a level:
            // a flood of short calls from new accounts must not wipe the
            // live calls of one being robbed.
            .min_by_key(|(_, a)| {
                let held = a.rules.iter().any(|s| s.held_until.is_some());
                let busy = !a.live.is_empty() || a.rules.iter().any(|s| s.level.is_some());
                (held, busy, a.last_seen)
            })
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.accounts.remove(&k);
            self.evicted += 1;
        }
    }

    fn evaluate(&mut self, name: &str, now: Time, orders: &mut Vec<Order>) {
        let Some(acct) = self.accounts.get_mut(name) else {
            return;
        };
        for (i, armed) in self.rules.iter().enumerate() {
            let rule = &armed.rule;
            let bit = 1u64 << i;
            if let Some(h) = &rule.hours {
                let z = jiff::Timestamp::from_millisecond(now.0)
                    .map(|t| t.to_zoned(armed.zone.clone()))
                    .ok();
                let inside = z.is_some_and(|z| {
                    let day = z.weekday().to_monday_zero_offset() as usize;
                    h.contains(day, z.hour().max(0) as u32)
                });
                if !inside {
                    continue;
                }
            }
            let st = &mut acct.rules[i];
            trim_starts(st, rule, now);
            trim_answered(st, rule, now);
            let mut best: Option<(Level, Metric, u64, u32)> = None;
            for limit in &rule.limits {
                let value = match limit.metric {
                    Metric::CallsPerMinute => {
                        st.starts.iter().filter(|t| now.0 - t.0 < MINUTE).count() as u64
                    }
                    Metric::ConcurrentCalls => {
                        // Past the bound, calls not kept may be live too.
                        let full = acct.live.len() >= MAX_LIVE;
                        acct.live.values().filter(|l| l.rules & bit != 0).count() as u64
                            + if full { acct.overflow } else { 0 }
                    }
                    Metric::AnsweredMinutes { .. } => {
                        let ended: i64 = st.answered.iter().map(|(_, ms)| ms).sum();
                        let live: i64 = acct
                            .live
                            .values()
                            .filter(|l| l.rules & bit != 0)
                            .filter_map(|l| l.answered)
                            .map(|a| (now.0 - a.0).max(0))
                            .sum();
                        ((ended + live) / MINUTE) as u64
                    }
                    Metric::SequentialCalls => st.sequential,
                };
                if let Some(level) = limit.threshold.level(value) {
                    if best.is_none_or(|b| level > b.0) {
                        let t = limit.threshold.of(level).unwrap_or(0);
                        best = Some((level, limit.metric, value, t));
                    }
                }
            }
            let Some((level, metric, value, threshold)) = best else {
                st.level = None;
                continue;
            };
            if st.level.is_some_and(|l| l >= level) {
                st.level = Some(level);
                continue;
            }
            st.level = Some(level);
            let acts = rule.actions(level);
            let mut calls: Vec<Touched> = acct
                .live
                .iter()
                .filter(|(_, l)| l.rules & bit != 0)
                .map(|(u, l)| (*u, l.dest.clone(), l.created, l.source, l.hung_up))
                .collect();
            calls.sort_by_key(|c| (c.2, c.0));
            let firing = Firing {
                rule: rule.name.clone(),
                level,
                account: name.to_string(),
                metric: metric.key(),
                value,
                threshold,
                actions: acts,
                calls: calls
                    .iter()
                    .map(|c| (c.0.to_string(), c.1.to_string()))
                    .collect(),
                time: now,
            };
            let mut view = FiredView {
                time: now.to_string(),
                rule: rule.name.clone(),
                level,
                account: escape_text(name, MAX_TEXT),
                metric: metric.key().into(),
                value,
                threshold,
                hung_up: 0,
                banned: Vec::new(),
            };
            orders.push(Order::Fired(firing));
            self.firings[usize::from(level == Level::Critical)] += 1;
            if acts.hangup {
                for (u, dest, _, _, done) in &calls {
                    if *done {
                        continue;
                    }
                    view.hung_up += 1;
                    orders.push(Order::Hangup {
                        uuid: *u,
                        rule: rule.name.clone(),
                        account: name.to_string(),
                        dest: dest.to_string(),
                    });
                    if let Some(l) = acct.live.get_mut(u) {
                        l.hung_up = true;
                    }
                }
            }
            let sources: Vec<Option<IpAddr>> = calls.iter().map(|c| c.3).collect();
            if level == Level::Critical {
                st.held_until = Some(now.plus_millis(rule.hold_ms));
            }
            if acts.ban {
                let before = st.banned.len();
                for s in sources {
                    ban_new(st, s, rule, name, orders);
                }
                view.banned = st.banned[before..].iter().map(|a| a.to_string()).collect();
            }
            if self.fired.len() >= KEEP_FIRED {
                self.fired.pop_front();
            }
            self.fired.push_back(view);
        }
    }

    /// What status shows at `now`.
    pub fn view(&self, now: Time) -> FraudView {
        let mut watched: Vec<AccountView> = self
            .accounts
            .iter()
            .filter_map(|(name, a)| {
                let levels: Vec<String> = a
                    .rules
                    .iter()
                    .zip(&self.rules)
                    .filter_map(|(s, r)| Some(format!("{}: {}", r.rule.name, s.level?.as_str())))
                    .collect();
                let held: Vec<String> = a
                    .rules
                    .iter()
                    .zip(&self.rules)
                    .filter_map(|(s, r)| {
                        let t = s.held_until.filter(|t| now < *t)?;
                        Some(format!("{} until {t}", r.rule.name))
                    })
                    .collect();
                (!levels.is_empty() || !held.is_empty()).then(|| AccountView {
                    account: escape_text(name, MAX_TEXT),
                    live: a.live.len(),
                    levels,
                    held,
                })
            })
            .collect();
        watched.sort_by(|a, b| a.account.cmp(&b.account));
        watched.truncate(50);
        FraudView {
            rules: self.rules.iter().map(|r| r.rule.name.clone()).collect(),
            accounts: self.accounts.len(),
            watched,
            fired: self.fired.iter().cloned().collect(),
            evicted: self.evicted,
            overflow: self.overflow,
            warnings: self.firings[0],
            criticals: self.firings[1],
            ..FraudView::default()
        }
    }

    /// The account's live calls (for tests and status).
    pub fn live_calls(&self, account: &str) -> usize {
        self.accounts.get(&cut(account)).map_or(0, |a| a.live.len())
    }
}

/// Bans `source` once per hold.
fn ban_new(
    st: &mut RuleState,
    source: Option<IpAddr>,
    rule: &FraudRule,
    account: &str,
    orders: &mut Vec<Order>,
) {
    let Some(addr) = source else {
        tracing::warn!(
            "fraud rule {}: a call of account \"{}\" has no source address to ban",
            rule.name,
            escape_text(account, MAX_TEXT)
        );
        return;
    };
    if st.banned.contains(&addr) || st.banned.len() >= MAX_BANNED {
        return;
    }
    st.banned.push(addr);
    orders.push(Order::Ban {
        addr,
        rule: rule.name.clone(),
        account: account.to_string(),
        bantime: rule.bantime.clone(),
    });
}

/// Keeps the starts of the last minute, and no more than the highest
/// calls-per-minute threshold needs.
fn trim_starts(st: &mut RuleState, rule: &FraudRule, now: Time) {
    while st.starts.front().is_some_and(|t| now.0 - t.0 >= MINUTE) {
        st.starts.pop_front();
    }
    let cap = rule
        .limits
        .iter()
        .filter(|l| l.metric == Metric::CallsPerMinute)
        .filter_map(|l| l.threshold.critical.max(l.threshold.warning))
        .max()
        .map_or(0, |t| t as usize + 1);
    while st.starts.len() > cap {
        st.starts.pop_front();
    }
}

fn window(rule: &FraudRule) -> Option<i64> {
    rule.limits.iter().find_map(|l| match l.metric {
        Metric::AnsweredMinutes { window_ms } => Some(window_ms.min(MAX_WINDOW_MS)),
        _ => None,
    })
}

fn trim_answered(st: &mut RuleState, rule: &FraudRule, now: Time) {
    let Some(w) = window(rule) else {
        st.answered.clear();
        return;
    };
    while st
        .answered
        .front()
        .is_some_and(|(m, _)| now.0 - m * MINUTE >= w)
    {
        st.answered.pop_front();
    }
}

fn add_answered(st: &mut RuleState, at: Time, ms: i64) {
    let minute = at.0.div_euclid(MINUTE);
    match st.answered.back_mut() {
        Some((m, total)) if *m == minute => *total += ms,
        _ => {
            st.answered.push_back((minute, ms));
            // One bucket a minute of the longest window, at most.
            while st.answered.len() as i64 > MAX_WINDOW_MS / MINUTE + 1 {
                st.answered.pop_front();
            }
        }
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
