//! Python `re` patterns, as fail2ban filters write them, compiled for Rust.
//!
//! fail2ban's own tags (`<HOST>`, `<ADDR>`, `<IP4>`, `<IP6>`, `<CIDR>`,
//! `<SUBNET>`, `<DNS>`, `<F-USER>...</F-USER>`, `<F-*>`) become named groups
//! with regexes written here. Python-only syntax is normalised (`{,n}`, a bare
//! `{`, `[` inside a class, `\Z`), then the pattern is compiled with the
//! `regex` crate, or with `fancy-regex` when it needs look-around,
//! back-references or conditionals.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use regex_automata::nfa::thompson::{self, backtrack, backtrack::BoundedBacktracker};
use regex_automata::util::captures::Captures as RaCaptures;
use regex_automata::{Anchored, Input, PatternID, hybrid, meta};
use regex_syntax::ParserBuilder;
use regex_syntax::hir::{Hir, HirKind, Look};

/// IPv4, dotted quad (leading zeros allowed: logs write them).
const IP4: &str = r"(?:\d{1,3}\.){3}\d{1,3}";
/// IPv6, including `::`, embedded IPv4 and a zone index.
const IP6: &str =
    r"(?:[0-9a-fA-F]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9a-fA-F]{1,4})?(?:%[\w.]+)?";
/// A host name.
const DNS: &str = r"[\w\-.^_]*\w";

/// Replaces fail2ban's special tags with groups.
pub fn expand_tags(p: &str) -> String {
    // Either address may stand in brackets (`[192.0.2.1]`, `[2001:db8::1]`).
    let addr = format!(r"\[?(?:(?P<ip4>{IP4})|(?P<ip6>{IP6}))\]?");
    let mut s = p.to_string();
    s = s.replace("<HOST>", &format!(r"(?:{addr}|(?P<dns>{DNS}))"));
    s = s.replace("<SUBNET>", &format!(r"{addr}(?:/(?P<cidr>\d{{1,3}}))?"));
    s = s.replace("<ADDR>", &addr);
    s = s.replace("<IP4>", &format!("(?P<ip4>{IP4})"));
    s = s.replace("<IP6>", &format!("(?P<ip6>{IP6})"));
    s = s.replace("<DNS>", &format!("(?P<dns>{DNS})"));
    s = s.replace("<CIDR>", r"(?P<cidr>\d{1,3})");
    // Lines a multi-line pattern steps over, numbered so each is a group
    // of its own (they are taken out of the matched lines).
    let mut n = 0;
    while let Some(i) = s.find("<SKIPLINES>") {
        s.replace_range(
            i..i + "<SKIPLINES>".len(),
            &format!(r"\n(?P<skiplines{n}>(?:.*\n)*?)"),
        );
        n += 1;
    }
    // <F-NAME> ... </F-NAME> → (?P<name> ... )
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(p) = rest.find('<') {
        out.push_str(&rest[..p]);
        let after = &rest[p..];
        let (is_close, name_start) = if after.starts_with("</F-") {
            (true, 4)
        } else if after.starts_with("<F-") {
            (false, 3)
        } else {
            (false, 0)
        };
        if name_start > 0 {
            if let Some(end) = after.find('>') {
                let name = &after[name_start..end];
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    if is_close {
                        out.push(')');
                    } else {
                        out.push_str("(?P<");
                        out.push_str(&group_name(name));
                        out.push('>');
                    }
                    rest = &after[end + 1..];
                    continue;
                }
            }
        }
        out.push('<');
        rest = &after[1..];
    }
    out.push_str(rest);
    out
}

/// The group an `<F-NAME>` tag captures into: lower case, and fail2ban's
/// two renamings (`ID` is the failure id `fid`, `PORT` is `fport`).
fn group_name(tag: &str) -> String {
    match tag.to_ascii_lowercase().replace('-', "_").as_str() {
        "id" => "fid".to_string(),
        "port" => "fport".to_string(),
        other => other.to_string(),
    }
}

/// Rewrites Python-only syntax into what Rust's engines read.
pub fn normalise(p: &str) -> String {
    let b: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    let mut class_start = 0;
    while i < b.len() {
        let c = b[i];
        if c == '\\' && i + 1 < b.len() {
            let n = b[i + 1];
            match n {
                'Z' => out.push_str(r"\z"),
                // Literal angle brackets in Python; word boundaries in Rust.
                '<' | '>' => out.push(n),
                // Python's \d, \w, \s are fine; octal/escapes pass through.
                _ => {
                    out.push('\\');
                    out.push(n);
                }
            }
            i += 2;
            continue;
        }
        if in_class {
            match c {
                ']' if i > class_start => {
                    in_class = false;
                    out.push(']');
                }
                '[' => out.push_str(r"\["),
                '&' | '~' | '-' if b.get(i + 1) == Some(&c) => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
            i += 1;
            continue;
        }
        // Python's conditional on a named group, `(?(name)yes|no)`, is
        // `(?(<name>)yes|no)` for fancy-regex (a bare word would be read as a
        // pattern to look for).
        if c == '(' && b.get(i + 1) == Some(&'?') && b.get(i + 2) == Some(&'(') {
            let close = b[i + 3..].iter().position(|&x| x == ')').map(|p| p + i + 3);
            if let Some(close) = close {
                let name: String = b[i + 3..close].iter().collect();
                if !name.is_empty()
                    && name.chars().all(|x| x.is_ascii_alphanumeric() || x == '_')
                    && !name.chars().all(|x| x.is_ascii_digit())
                {
                    out.push_str("(?(<");
                    out.push_str(&name);
                    out.push_str(">)");
                    i = close + 1;
                    continue;
                }
            }
        }
        match c {
            '[' => {
                in_class = true;
                out.push('[');
                i += 1;
                if b.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` right at the start is a literal.
                if b.get(i) == Some(&']') {
                    out.push_str(r"\]");
                    i += 1;
                }
                class_start = i;
                continue;
            }
            '{' => {
                // A quantifier is {n}, {n,}, {n,m} or Python's {,m}.
                let close = b[i..].iter().position(|&x| x == '}').map(|p| p + i);
                let body: String = close
                    .map(|e| b[i + 1..e].iter().collect())
                    .unwrap_or_default();
                let valid = close.is_some()
                    && !body.is_empty()
                    && body.chars().all(|x| x.is_ascii_digit() || x == ',')
                    && body.matches(',').count() <= 1
                    && body != ",";
                if valid {
                    let body = if body.starts_with(',') {
                        format!("0{body}")
                    } else {
                        body
                    };
                    out.push('{');
                    out.push_str(&body);
                    out.push('}');
                    i = close.unwrap_or(i) + 1;
                } else {
                    out.push_str(r"\{");
                    i += 1;
                }
                continue;
            }
            '}' => out.push_str(r"\}"),
            _ => out.push(c),
        }
        i += 1;
    }
    // Python inline flags the Rust engines do not know.
    out.replace("(?u)", "")
        .replace("(?L)", "")
        .replace("(?a)", "")
}

/// A compiled pattern, in whichever engine it needs.
///
/// Engines are built on first use: a filter's `{DATE}` list holds dozens
/// of date patterns of which a log uses one, and compiling all of them up
/// front cost more than reading a large log.
#[derive(Debug, Clone)]
pub struct Pattern(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// The pattern after translation.
    source: String,
    /// Set when only the backtracking engine reads the pattern.
    fancy: Option<fancy_regex::Regex>,
    /// The `regex` crate's engine, the reference for every search.
    regex: OnceLock<Option<regex::Regex>>,
    /// Faster capture engines for Unicode text.
    unicode: OnceLock<Option<Engines>>,
    /// The same for ASCII text, compiled without Unicode: a much smaller
    /// automaton that means the same on ASCII input.
    ascii: OnceLock<Option<Engines>>,
}

/// Named captures of one match, borrowed from the pattern and the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captures<'a> {
    /// (group name, text) for every named group that took part.
    pub named: Vec<(&'a str, &'a str)>,
    /// Start and end of the whole match.
    pub span: (usize, usize),
    /// Start and end of the group named `dt`, when the pattern has one (the
    /// date inside a date pattern).
    pub dt_span: Option<(usize, usize)>,
}

impl<'a> Captures<'a> {
    /// The text of group `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.named.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// Why a pattern did not compile.
#[derive(Debug, thiserror::Error)]
#[error("cannot compile regex {pattern:?}: {message}")]
pub struct PatternError {
    /// The pattern after translation.
    pub pattern: String,
    /// What the engines said.
    pub message: String,
}

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

struct Engines {
    /// Tells this engine set's scratch space apart in a thread's cache.
    id: u64,
    /// Every match starts at the text's start.
    anchored: bool,
    /// The whole pattern, to find where a match starts.
    full: meta::Regex,
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
    fn new(hir: &Hir, utf8: bool) -> Option<Engines> {
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
    fn captures<'a>(&'a self, text: &'a str) -> Option<Option<Captures<'a>>> {
        let start = self.start(text)?;
        self.with_scratch(|s| self.captures_from(text, start, s))
    }

    /// The span of group `name` in the first match, when that is known
    /// without captures. `None`: no match; `Some(None)`: not known cheaply.
    #[allow(clippy::option_option)]
    fn group_span(&self, text: &str, name: &str) -> Option<Option<(usize, usize)>> {
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

impl Pattern {
    /// Translates and compiles a Python pattern (tags already expanded).
    pub fn new(python: &str) -> Result<Pattern, PatternError> {
        let p = normalise(python);
        let fancy = match ParserBuilder::new().build().parse(&p) {
            Ok(_) => None,
            Err(fast_err) => Some(fancy_regex::Regex::new(&p).map_err(|e| PatternError {
                pattern: p.clone(),
                message: format!("{e} (regex crate: {})", first_line(&fast_err.to_string())),
            })?),
        };
        Ok(Pattern(Arc::new(Inner {
            source: p,
            fancy,
            regex: OnceLock::new(),
            unicode: OnceLock::new(),
            ascii: OnceLock::new(),
        })))
    }

    /// The pattern as compiled.
    pub fn as_str(&self) -> &str {
        &self.0.source
    }

    /// Whether the pattern needed the backtracking engine.
    pub fn is_fancy(&self) -> bool {
        self.0.fancy.is_some()
    }

    /// The parsed pattern, when the `regex` crate reads it.
    pub fn hir(&self) -> Option<Hir> {
        if self.is_fancy() {
            return None;
        }
        ParserBuilder::new().build().parse(&self.0.source).ok()
    }

    fn regex(&self) -> Option<&regex::Regex> {
        self.0
            .regex
            .get_or_init(|| {
                let r = regex::Regex::new(&self.0.source);
                if let Err(e) = &r {
                    tracing::warn!("{}: {e}; it will never match", self.0.source);
                }
                r.ok()
            })
            .as_ref()
    }

    fn engines(&self, text: &str) -> Option<&Engines> {
        let i = &self.0;
        if i.fancy.is_some() {
            return None;
        }
        if text.is_ascii() {
            let ascii = i.ascii.get_or_init(|| {
                ParserBuilder::new()
                    .unicode(false)
                    .utf8(false)
                    .build()
                    .parse(&i.source)
                    .ok()
                    .and_then(|h| Engines::new(&h, false))
            });
            if let Some(e) = ascii {
                return Some(e);
            }
        }
        i.unicode
            .get_or_init(|| {
                ParserBuilder::new()
                    .build()
                    .parse(&i.source)
                    .ok()
                    .and_then(|h| Engines::new(&h, true))
            })
            .as_ref()
    }

    /// Searches `text`; returns the named captures of the first match.
    pub fn captures<'a>(&'a self, text: &'a str) -> Option<Captures<'a>> {
        if let Some(e) = self.engines(text) {
            match e.captures(text) {
                None => return None,
                Some(Some(c)) => return Some(c),
                Some(None) => {}
            }
        }
        self.slow_captures(text)
    }

    /// The span of group `name` in the first match (the whole match when
    /// the pattern has no such group), preferring DFAs to captures.
    pub fn group_span(&self, text: &str, name: &str) -> Option<(usize, usize)> {
        if let Some(e) = self.engines(text) {
            match e.group_span(text, name) {
                None => return None,
                Some(Some(sp)) => return Some(sp),
                Some(None) => {}
            }
        }
        let c = self.captures(text)?;
        Some(if name == "dt" {
            c.dt_span.unwrap_or(c.span)
        } else {
            c.span
        })
    }

    /// Captures with the reference engine only.
    pub fn slow_captures<'a>(&'a self, text: &'a str) -> Option<Captures<'a>> {
        // The two engines' capture types share their shape, not a trait.
        macro_rules! collect {
            ($r:expr, $c:expr) => {{
                let c = $c;
                let m = c.get(0)?;
                Some(Captures {
                    named: $r
                        .capture_names()
                        .flatten()
                        .filter_map(|n| c.name(n).map(|v| (n, v.as_str())))
                        .collect(),
                    span: (m.start(), m.end()),
                    dt_span: c.name("dt").map(|d| (d.start(), d.end())),
                })
            }};
        }
        match &self.0.fancy {
            // A backtracking limit hit is treated as no match.
            Some(r) => collect!(r, r.captures(text).ok()??),
            None => {
                let r = self.regex()?;
                collect!(r, r.captures(text)?)
            }
        }
    }

    /// Whether `text` matches anywhere.
    pub fn is_match(&self, text: &str) -> bool {
        if let Some(r) = &self.0.fancy {
            return r.is_match(text).unwrap_or(false);
        }
        match self.engines(text) {
            Some(e) => e.full.is_match(text),
            None => self.regex().is_some_and(|r| r.is_match(text)),
        }
    }
}

fn first_line(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s.lines().last().unwrap_or(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_syntax_is_normalised() {
        assert_eq!(normalise(r"a{,3}"), r"a{0,3}");
        assert_eq!(normalise(r"a{2}b{1,}"), r"a{2}b{1,}");
        assert_eq!(normalise(r"x{y}"), r"x\{y\}");
        assert_eq!(normalise(r"[^[]+"), r"[^\[]+");
        assert_eq!(normalise(r"[]a]"), r"[\]a]");
        assert_eq!(normalise(r"end\Z"), r"end\z");
        assert_eq!(normalise(r"\<a@b\>"), r"<a@b>");
        assert_eq!(normalise(r"[a\]b]"), r"[a\]b]");
    }

    #[test]
    fn tags_become_groups_and_match() {
        let p = Pattern::new(&expand_tags(
            r"^Failed for <F-USER>\S+</F-USER> from <HOST> port \d+$",
        ))
        .unwrap();
        let c = p
            .captures("Failed for root from 192.0.2.1 port 22")
            .unwrap();
        assert_eq!(c.get("user"), Some("root"));
        assert_eq!(c.get("ip4"), Some("192.0.2.1"));
        let c = p
            .captures("Failed for root from 2001:db8::1 port 22")
            .unwrap();
        assert_eq!(c.get("ip6"), Some("2001:db8::1"));
        let c = p
            .captures("Failed for root from [2001:db8::2] port 22")
            .unwrap();
        assert_eq!(c.get("ip6"), Some("2001:db8::2"));
        let c = p
            .captures("Failed for root from example.com port 22")
            .unwrap();
        assert_eq!(c.get("dns"), Some("example.com"));
    }

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

    #[test]
    fn fancy_features_fall_back() {
        let p = Pattern::new(r"(?P<a>x)(?P=a)(?!y)").unwrap();
        assert!(p.is_fancy());
        assert!(p.is_match("xxz"));
        assert!(!p.is_match("xxy"));
        let p = Pattern::new(r"(?P<c>a)?(?(c)b|c)").unwrap();
        assert!(p.is_match("ab") && p.is_match("c"));
    }
}
