//! A literal prefilter for fail2ban filter files: from each `failregex` and
//! `ignoreregex`, the literal strings one of which every match must
//! contain. A line holding none of them cannot match any pattern, so it is
//! missed without reading its date or running a regex; most lines of a busy
//! log are such lines.

use aho_corasick::AhoCorasick;
use regex_syntax::hir::{Hir, HirKind};

use super::regex::Pattern;

/// Literals shorter than this say too little to be worth searching for.
const MIN_LITERAL: usize = 3;

/// The literals one of which every match of `hir` contains, or `None` when
/// no such set is known (a pattern made only of classes, say).
fn required(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    match hir.kind() {
        HirKind::Literal(l) => (l.0.len() >= MIN_LITERAL).then(|| vec![l.0.to_vec()]),
        HirKind::Capture(c) => required(&c.sub),
        HirKind::Repetition(r) if r.min >= 1 => required(&r.sub),
        // Of a sequence, the best required part: the one whose shortest
        // literal is longest (fewer, longer literals reject more lines).
        HirKind::Concat(subs) => subs
            .iter()
            .filter_map(required)
            .max_by_key(|set| set.iter().map(Vec::len).min().unwrap_or(0)),
        // Of alternatives, every branch must contribute.
        HirKind::Alternation(subs) => {
            let mut all = Vec::new();
            for s in subs {
                all.extend(required(s)?);
            }
            Some(all)
        }
        _ => None,
    }
}

/// What of literal `l` a line must hold when the patterns see the line with
/// its date cut out. The cut can split a literal in two (fail2ban's
/// `\[\]LOGIN` meets `[2014-01-06 10:59:38]LOGIN`): with at most `lead`
/// bytes before the date, the line holds `l` without its first `lead`
/// bytes; with the date anywhere, it holds `l`'s first or its second half.
fn cut_proof(l: &[u8], lead: Option<usize>) -> Option<Vec<Vec<u8>>> {
    match lead {
        Some(k) => (l.len() >= k + MIN_LITERAL).then(|| vec![l[k..].to_vec()]),
        None => {
            let half = l.len() / 2;
            (half >= MIN_LITERAL).then(|| vec![l[..l.len() - half].to_vec(), l[half..].to_vec()])
        }
    }
}

/// The prefilter of a filter's patterns, when every pattern has required
/// literals (a pattern without them, or one only the backtracking engine
/// takes, turns the prefilter off: it must never reject a line that could
/// match). `lead`: see [`cut_proof`].
pub fn build<'a>(
    patterns: impl IntoIterator<Item = &'a Pattern>,
    lead: Option<usize>,
) -> Option<Literals> {
    let mut literals: Vec<Vec<u8>> = Vec::new();
    for p in patterns {
        let hir = p.hir()?;
        for l in required(&hir)? {
            literals.extend(cut_proof(&l, lead)?);
        }
    }
    searcher(literals)
}

/// A searcher for `literals` (duplicates allowed), `None` for an empty set.
pub fn searcher(mut literals: Vec<Vec<u8>>) -> Option<Literals> {
    if literals.is_empty() {
        return None;
    }
    literals.sort();
    literals.dedup();
    // The SIMD (Teddy) searcher when it takes the set: Aho-Corasick's own
    // choice for two or three literals is a scan for rare bytes, which are
    // not rare in logs. Only whether a literal occurs matters here.
    let packed = aho_corasick::packed::Config::new()
        .builder()
        .extend(&literals)
        .build();
    match packed {
        Some(p) => Some(Literals::Packed(p)),
        None => AhoCorasick::new(&literals).ok().map(Literals::Automaton),
    }
}

/// A set of literals to search for.
#[derive(Debug, Clone)]
pub enum Literals {
    /// Teddy, for small sets.
    Packed(aho_corasick::packed::Searcher),
    /// An automaton, for the rest.
    Automaton(AhoCorasick),
}

impl Literals {
    /// The start and end of the first literal found in `hay`.
    pub fn find(&self, hay: &[u8]) -> Option<(usize, usize)> {
        match self {
            Literals::Packed(p) => p.find(hay).map(|m| (m.start(), m.end())),
            Literals::Automaton(a) => a.find(hay).map(|m| (m.start(), m.end())),
        }
    }

    /// Whether `hay` holds one of the literals.
    pub fn is_match(&self, hay: &[u8]) -> bool {
        self.find(hay).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(p: &str) -> Option<Vec<String>> {
        let hir = regex_syntax::ParserBuilder::new().build().parse(p).ok()?;
        required(&hir).map(|v| {
            v.into_iter()
                .map(|l| String::from_utf8(l).unwrap())
                .collect()
        })
    }

    #[test]
    fn required_literals() {
        assert_eq!(
            lits(r"^Can't find user \[[^@]+@[^\]]+\] from (?P<ip4>\d+\.\d+)$"),
            Some(vec!["Can't find user [".into()])
        );
        assert_eq!(
            lits(r"^SIP auth (?:failure|challenge) \(x\)"),
            Some(vec!["SIP auth ".into()])
        );
        assert_eq!(
            lits(r"(?:alpha|beta)\d"),
            Some(vec!["alpha".into(), "beta".into()])
        );
        assert_eq!(lits(r"(?:alpha|b)\d"), None, "a branch too short to search");
        assert_eq!(lits(r"(?i)failed password"), None, "classes, not literals");
        assert_eq!(lits(r"\d+ \S+"), None);
        assert_eq!(
            lits(r"(?:failed)?x+"),
            None,
            "optional parts are not required"
        );
    }

    #[test]
    fn prefilter_is_off_unless_every_pattern_has_literals() {
        let a = Pattern::new("Can't find user from <HOST>").unwrap();
        let b = Pattern::new(r"\d+").unwrap();
        assert!(build([&a], Some(0)).is_some());
        assert!(build([&a, &b], Some(0)).is_none());
    }

    #[test]
    fn literals_survive_the_date_cut() {
        // `[]LOGIN FAILED` in the pattern, `[2014-01-06 10:59:38]LOGIN
        // FAILED` in the line.
        let p = Pattern::new(r"^\[\]LOGIN FAILED for user").unwrap();
        let line = "[2014-01-06 10:59:38]LOGIN FAILED for user";
        for lead in [Some(3), None] {
            let ac = build([&p], lead).unwrap();
            assert!(ac.is_match(line.as_bytes()), "lead {lead:?}");
            assert!(
                !ac.is_match(b"[2014-01-06 10:59:38]LOGIN OK"),
                "lead {lead:?}"
            );
        }
        assert_eq!(
            cut_proof(b"abcdefgh", None),
            Some(vec![b"abcd".to_vec(), b"efgh".to_vec()])
        );
        assert_eq!(cut_proof(b"abcde", None), None);
    }
}
