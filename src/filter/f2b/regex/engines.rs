//! The fast capture engines behind [`Pattern`](super::Pattern).
//!
//! Most fail2ban patterns are read by the `regex` crate's parser; for them
//! captures come from lazy DFAs and a bounded backtracker over the part
//! holding the named groups, with per-thread scratch space. Apart from the
//! pattern type because this is an optimisation with its own invariant
//! (results never differ from the reference engine), tested against it here.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use regex_automata::nfa::thompson::{self, backtrack, backtrack::BoundedBacktracker};
use regex_automata::util::captures::Captures as RaCaptures;
use regex_automata::{Anchored, Input, PatternID, hybrid, meta};
use regex_syntax::hir::{Hir, HirKind, Look};

use super::Captures;

// Captures without running a capturing engine over the whole match.
//
// A pattern `A B` whose named groups all lie in `B` is split there. A
// backtracker (Python's engine, fail2ban's reference) tries `A`'s ways of
// matching in priority order and `B` after each, so when `B` matches right
// after `A`'s first way, that is the backtracker's answer. `A`'s first way
// is what a leftmost-first DFA reports for `A` alone, anchored; `B` is
// usually short (`<HOST>$`, `.+$`) and gets the backtracker. Anything else
// (`B` failing there, a text too long for the bounded backtracker) falls
// back to the full engine, so results never differ.
impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines")
            .field("anchored", &self.anchored)
            .field("split", &self.head.is_some())
            .finish()
    }
}

pub(super) struct Engines {
    /// Tells this engine set's scratch space apart in a thread's cache.
    id: u64,
    /// Every match starts at the text's start.
    anchored: bool,
    /// The whole pattern, to find where a match starts.
    pub(super) full: meta::Regex,
    /// The whole pattern as a DFA, for anchored patterns: where a match
    /// ends, without the general engine's overhead.
    full_dfa: Option<hybrid::dfa::DFA>,
    /// The part before the first named group, when that is not empty.
    head: Option<hybrid::dfa::DFA>,
    /// The rest (or the whole pattern), captured by a backtracker.
    tail: BoundedBacktracker,
    /// Group index and name of every named group in `tail`.
    names: Vec<(usize, String)>,
    /// Names of every named group of the whole pattern.
    all_names: Vec<String>,
    /// When `tail` is one named group (with no named group inside)
    /// followed by nothing but assertions (`(?P<content>.+)$`), the group
    /// spans from the split to the end of `tail`'s match, which a DFA finds
    /// without the backtracker.
    sole: Option<(hybrid::dfa::DFA, String)>,
    /// When `tail` is one named group (inner groups allowed) followed by
    /// nothing but assertions: a DFA for `tail`, and the group's name. The
    /// group's span is then known without captures (a date's `dt`).
    outer: Option<(hybrid::dfa::DFA, String)>,
    /// `sole` is `.*` or `.+` (any character but a newline) then `$`.
    rest_of_line: bool,
    /// Its least repetition (0 or 1).
    rest_min: u32,
}

/// One thread's scratch space for one [`Engines`].
struct Scratch {
    head: Option<hybrid::dfa::Cache>,
    sole: Option<hybrid::dfa::Cache>,
    outer: Option<hybrid::dfa::Cache>,
    full: Option<hybrid::dfa::Cache>,
    tail: backtrack::Cache,
    caps: RaCaptures,
}

static NEXT_ENGINES_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Scratch spaces of the engines this thread used, most recent last.
    /// A thread-local list beats a shared pool when several threads run
    /// the same patterns: no lock, no cache line shared between cores.
    static SCRATCH: RefCell<Vec<(u64, Box<Scratch>)>> = const { RefCell::new(Vec::new()) };
}

/// Scratch spaces kept per thread; past this the oldest half goes (they
/// belong to patterns of a reloaded configuration, or are cheap to redo).
const MAX_SCRATCH: usize = 256;

fn dfa(hir: &Hir, utf8: bool) -> Option<hybrid::dfa::DFA> {
    let nfa = thompson::Compiler::new()
        .configure(thompson::Config::new().utf8(utf8))
        .build_from_hir(hir)
        .ok()?;
    hybrid::dfa::Builder::new().build_from_nfa(nfa).ok()
}

impl Engines {
    pub(super) fn new(hir: &Hir, utf8: bool) -> Option<Engines> {
        let anchored = hir.properties().look_set_prefix().contains(Look::Start);
        let full = meta::Builder::new()
            .configure(meta::Config::new().utf8_empty(utf8))
            .build_from_hir(hir)
            .ok()?;
        let all_names = full
            .group_info()
            .pattern_names(PatternID::ZERO)
            .flatten()
            .map(String::from)
            .collect();
        let full_dfa = if anchored { dfa(hir, utf8) } else { None };
        let (head, tail_hir) = match split(hir) {
            Some((h, t)) => (Some(dfa(&h, utf8)?), t),
            None => (None, hir.clone()),
        };
        let nfa = thompson::Compiler::new()
            .configure(thompson::Config::new().utf8(utf8))
            .build_from_hir(&tail_hir)
            .ok()?;
        let tail = BoundedBacktracker::builder()
            .configure(backtrack::Config::new().visited_capacity(1 << 20))
            .build_from_nfa(nfa)
            .ok()?;
        let names = tail
            .get_nfa()
            .group_info()
            .pattern_names(PatternID::ZERO)
            .enumerate()
            .filter_map(|(i, n)| n.map(|n| (i, n.to_string())))
            .collect();
        let sole = match sole_group(&tail_hir) {
            Some(name) => Some((dfa(&tail_hir, utf8)?, name)),
            None => None,
        };
        let outer = match (&sole, outer_group(&tail_hir)) {
            (None, Some(name)) => Some((dfa(&tail_hir, utf8)?, name)),
            _ => None,
        };
        let (rest_of_line, rest_min) = rest_of_line(&tail_hir);
        Some(Engines {
            id: NEXT_ENGINES_ID.fetch_add(1, Ordering::Relaxed),
            anchored,
            full,
            full_dfa,
            head,
            tail,
            names,
            all_names,
            sole,
            outer,
            rest_of_line,
            rest_min,
        })
    }

    fn scratch(&self) -> Box<Scratch> {
        Box::new(Scratch {
            head: self.head.as_ref().map(hybrid::dfa::DFA::create_cache),
            sole: self.sole.as_ref().map(|(d, _)| d.create_cache()),
            outer: self.outer.as_ref().map(|(d, _)| d.create_cache()),
            full: self.full_dfa.as_ref().map(hybrid::dfa::DFA::create_cache),
            tail: self.tail.create_cache(),
            caps: self.tail.create_captures(),
        })
    }

    /// Runs `f` with this thread's scratch space for these engines.
    fn with_scratch<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        SCRATCH.with(|cell| {
            let Ok(mut list) = cell.try_borrow_mut() else {
                // Re-entered (cannot happen today): use a fresh space.
                return f(&mut self.scratch());
            };
            let found = list.iter().rposition(|(id, _)| *id == self.id);
            let mut s = match found {
                Some(i) => list.swap_remove(i).1,
                None => self.scratch(),
            };
            let r = f(&mut s);
            if list.len() >= MAX_SCRATCH {
                list.drain(..MAX_SCRATCH / 2);
            }
            list.push((self.id, s));
            r
        })
    }

    /// `None`: no match. `Some(None)`: ask the full engine.
    #[allow(clippy::option_option)]
    pub(super) fn captures<'a>(&'a self, text: &'a str) -> Option<Option<Captures<'a>>> {
        let start = self.start(text)?;
        self.with_scratch(|s| self.captures_from(text, start, s))
    }

    /// The span of group `name` in the first match, when that is known
    /// without captures. `None`: no match; `Some(None)`: not known cheaply.
    #[allow(clippy::option_option)]
    pub(super) fn group_span(&self, text: &str, name: &str) -> Option<Option<(usize, usize)>> {
        if !self.all_names.iter().any(|n| n == name) {
            // No such group: the whole match.
            if let Some(d) = &self.full_dfa {
                return self.with_scratch(|s| {
                    let cache = s.full.as_mut()?;
                    let input = Input::new(text).anchored(Anchored::Yes);
                    match d.try_search_fwd(cache, &input) {
                        Ok(Some(m)) => Some(Some((0, m.offset()))),
                        Ok(None) => None,
                        Err(_) => Some(None),
                    }
                });
            }
            let m = self.full.find(text)?;
            return Some(Some((m.start(), m.end())));
        }
        let Some((dfa, outer)) = &self.outer else {
            return Some(None);
        };
        if outer != name {
            return Some(None);
        }
        let start = self.start(text)?;
        self.with_scratch(|s| {
            let Some(from) = self.after_head(text, start, s.head.as_mut())? else {
                return Some(None);
            };
            let cache = s.outer.as_mut()?;
            let end = self.tail_end(dfa, cache, text, from)?;
            Some(end.map(|end| (from, end)))
        })
    }

    /// Where the first match starts: the text's start for anchored
    /// patterns, else what the full engine finds. `None`: no match.
    fn start(&self, text: &str) -> Option<usize> {
        if self.anchored {
            Some(0)
        } else {
            Some(self.full.find(text)?.start())
        }
    }

    /// Where the head's first way of matching from `start` ends (`start`
    /// itself without a head). `None`: no match at all; `Some(None)`: ask
    /// the full engine.
    #[allow(clippy::option_option)]
    fn after_head(
        &self,
        text: &str,
        start: usize,
        cache: Option<&mut hybrid::dfa::Cache>,
    ) -> Option<Option<usize>> {
        let (Some(h), Some(cache)) = (&self.head, cache) else {
            return Some(Some(start));
        };
        let input = Input::new(text).range(start..).anchored(Anchored::Yes);
        match h.try_search_fwd(cache, &input) {
            Ok(Some(m)) => Some(Some(m.offset())),
            // Anchored and `A` does not match: neither does `A B`.
            Ok(None) if self.anchored => None,
            Ok(None) | Err(_) => Some(None),
        }
    }

    /// Where a tail DFA's match from `from` ends. `None`: no match at all;
    /// `Some(None)`: ask the full engine.
    #[allow(clippy::option_option)]
    fn tail_end(
        &self,
        dfa: &hybrid::dfa::DFA,
        cache: &mut hybrid::dfa::Cache,
        text: &str,
        from: usize,
    ) -> Option<Option<usize>> {
        let input = Input::new(text).range(from..).anchored(Anchored::Yes);
        match dfa.try_search_fwd(cache, &input) {
            Ok(Some(m)) => Some(Some(m.offset())),
            // Without a head the tail is the whole pattern: a true miss.
            // After a head, another way of matching it may still work.
            Ok(None) if self.anchored && self.head.is_none() => None,
            Ok(None) | Err(_) => Some(None),
        }
    }

    #[allow(clippy::option_option)]
    fn captures_from<'a>(
        &'a self,
        text: &'a str,
        start: usize,
        s: &mut Scratch,
    ) -> Option<Option<Captures<'a>>> {
        let Some(from) = self.after_head(text, start, s.head.as_mut())? else {
            return Some(None);
        };
        if let (Some((dfa, name)), Some(cache)) = (&self.sole, s.sole.as_mut()) {
            // `(?P<g>.+)$` on a single line: the rest of the line, no search.
            if self.rest_of_line && !text[from..].contains('\n') {
                let empty = from == text.len();
                if self.rest_min == 0 || !empty {
                    return Some(Some(Captures {
                        named: vec![(name.as_str(), &text[from..])],
                        span: (start, text.len()),
                        dt_span: None,
                    }));
                }
            }
            let Some(end) = self.tail_end(dfa, cache, text, from)? else {
                return Some(None);
            };
            let v = text.get(from..end)?;
            return Some(Some(Captures {
                named: vec![(name.as_str(), v)],
                span: (start, end),
                dt_span: (name == "dt").then_some((from, end)),
            }));
        }
        let input = Input::new(text).range(from..).anchored(Anchored::Yes);
        if self
            .tail
            .try_search(&mut s.tail, &input, &mut s.caps)
            .is_err()
        {
            return Some(None);
        }
        let caps = &s.caps;
        let Some(m) = caps.get_match() else {
            // Without a head the tail is the whole pattern: a true miss.
            return if self.head.is_none() && self.anchored {
                None
            } else {
                Some(None)
            };
        };
        let mut named = Vec::with_capacity(self.names.len());
        let mut dt_span = None;
        for (i, name) in &self.names {
            if let Some(sp) = caps.get_group(*i) {
                if let Some(v) = text.get(sp.start..sp.end) {
                    named.push((name.as_str(), v));
                    if name == "dt" {
                        dt_span = Some((sp.start, sp.end));
                    }
                }
            }
        }
        Some(Some(Captures {
            named,
            span: (start, m.end()),
            dt_span,
        }))
    }
}

/// Splits a concatenation before its first item holding a named group.
fn split(hir: &Hir) -> Option<(Hir, Hir)> {
    let HirKind::Concat(items) = hir.kind() else {
        return None;
    };
    let k = items.iter().position(has_named_group)?;
    if k == 0 {
        return None;
    }
    Some((
        Hir::concat(items[..k].to_vec()),
        Hir::concat(items[k..].to_vec()),
    ))
}

/// Whether `hir` is `(?P<g>.*)$` or `(?P<g>.+)$` (greedy, `.` not matching
/// a newline, `$` at the text's end), and the least repetition.
fn rest_of_line(hir: &Hir) -> (bool, u32) {
    let HirKind::Concat(items) = hir.kind() else {
        return (false, 0);
    };
    let [group, end] = items.as_slice() else {
        return (false, 0);
    };
    if !matches!(end.kind(), HirKind::Look(Look::End)) {
        return (false, 0);
    }
    let HirKind::Capture(c) = group.kind() else {
        return (false, 0);
    };
    let HirKind::Repetition(r) = c.sub.kind() else {
        return (false, 0);
    };
    let any_but_newline = match r.sub.kind() {
        HirKind::Class(regex_syntax::hir::Class::Unicode(u)) => {
            u.ranges().len() == 2
                && u.ranges()[0].start() == '\0'
                && u.ranges()[0].end() == '\x09'
                && u.ranges()[1].start() == '\x0B'
                && u.ranges()[1].end() == char::MAX
        }
        HirKind::Class(regex_syntax::hir::Class::Bytes(b)) => {
            b.ranges().len() == 2
                && b.ranges()[0].start() == 0
                && b.ranges()[0].end() == 9
                && b.ranges()[1].start() == 11
                && b.ranges()[1].end() == 255
        }
        _ => false,
    };
    let ok = any_but_newline && r.greedy && r.max.is_none() && r.min <= 1;
    (ok, r.min)
}

/// The name of the group `hir` starts with, when only assertions follow it
/// (named groups inside it allowed).
fn outer_group(hir: &Hir) -> Option<String> {
    let group = |h: &Hir| match h.kind() {
        HirKind::Capture(c) => c.name.as_deref().map(String::from),
        _ => None,
    };
    match hir.kind() {
        HirKind::Concat(items) => {
            let (first, rest) = items.split_first()?;
            rest.iter()
                .all(|h| matches!(h.kind(), HirKind::Look(_)))
                .then(|| group(first))?
        }
        _ => group(hir),
    }
}

/// The name of the group `hir` consists of, with only assertions after it.
fn sole_group(hir: &Hir) -> Option<String> {
    let group = |h: &Hir| match h.kind() {
        HirKind::Capture(c) if !has_named_group(&c.sub) => c.name.as_deref().map(String::from),
        _ => None,
    };
    match hir.kind() {
        HirKind::Concat(items) => {
            let (first, rest) = items.split_first()?;
            rest.iter()
                .all(|h| matches!(h.kind(), HirKind::Look(_)))
                .then(|| group(first))?
        }
        _ => group(hir),
    }
}

fn has_named_group(h: &Hir) -> bool {
    match h.kind() {
        HirKind::Capture(c) => c.name.is_some() || has_named_group(&c.sub),
        HirKind::Repetition(r) => has_named_group(&r.sub),
        HirKind::Concat(v) | HirKind::Alternation(v) => v.iter().any(has_named_group),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Pattern, expand_tags};

    /// The fast capture paths give what the reference engine gives.
    #[test]
    fn fast_captures_equal_the_reference() {
        let cases: &[(&str, &[&str])] = &[
            // Split: named groups only at the end.
            (
                r"^SIP auth (?:failure|challenge) \((REGISTER|INVITE)\) from ip <HOST>$",
                &[
                    "SIP auth failure (REGISTER) from ip 192.0.2.1",
                    "SIP auth challenge (INVITE) from ip 2001:db8::1",
                    "SIP auth failure (REGISTER) from ip host.example",
                    "SIP auth failure (REGISTER) from ip ",
                    "SIP auth failure (BYE) from ip 192.0.2.1",
                ],
            ),
            // A rest-of-line group, and `.+` that must not be empty.
            (
                r"^\[?sofia_reg\.c:\d+\]? <F-CONTENT>.+</F-CONTENT>$",
                &[
                    "sofia_reg.c:12 text here",
                    "sofia_reg.c:12 ",
                    "[sofia_reg.c:1] x\ny",
                ],
            ),
            // Unanchored, a group with groups inside, non-ASCII text.
            (
                r"user (?P<dt>(?P<a>\w+)-(?P<b>\d+)) end",
                &["x user ab-12 end", "ü user ßü-٣ end", "user - end", "none"],
            ),
            // Greedy choices the backtracker must undo.
            (
                r"^(\S+\s+)?(?:x )?(?P<user>\S+) from <HOST>",
                &[
                    "a x b from 10.0.0.1",
                    "x b from 10.0.0.1",
                    "b from h",
                    "from 1.2.3.4",
                ],
            ),
            // No named group at all.
            (r"^\d+ lines?$", &["12 lines", "1 line", "x"]),
            // The head's first way (`\W` taking the `@`) leaves the tail
            // nothing: the backtracker gives the `@` back.
            (r"^\W{0,3}(?P<dt>@(?P<n>\d+))", &["@123", "[@1", "@@x"]),
            (r"^\W{0,3}(?P<content>.+)$", &["@", "@@", "x"]),
        ];
        for (p, texts) in cases {
            let pat = Pattern::new(&expand_tags(p)).unwrap();
            for t in *texts {
                assert_eq!(pat.captures(t), pat.slow_captures(t), "{p} on {t:?}");
                assert_eq!(
                    pat.is_match(t),
                    pat.slow_captures(t).is_some(),
                    "{p} on {t:?}"
                );
                if let Some(c) = pat.slow_captures(t) {
                    let want = c.dt_span.unwrap_or(c.span);
                    assert_eq!(pat.group_span(t, "dt"), Some(want), "{p} on {t:?}");
                } else {
                    assert_eq!(pat.group_span(t, "dt"), None, "{p} on {t:?}");
                }
            }
        }
    }
}
