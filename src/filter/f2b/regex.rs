//! Python `re` patterns, as fail2ban filters write them, compiled for Rust.
//!
//! fail2ban's own tags (`<HOST>`, `<ADDR>`, `<IP4>`, `<IP6>`, `<CIDR>`,
//! `<SUBNET>`, `<DNS>`, `<F-USER>...</F-USER>`, `<F-*>`) become named groups
//! with regexes written here (`tags.rs`). Python-only syntax is normalised
//! (`python.rs`: `{,n}`, a bare `{`, `[` inside a class, `\Z`), then the
//! pattern is compiled with the `regex` crate, or with `fancy-regex` when it
//! needs look-around, back-references or conditionals; captures come from
//! the fast engines of `engines.rs` where the pattern allows, else from the
//! reference engine.

mod engines;
mod python;
mod tags;

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use regex_syntax::ParserBuilder;
use regex_syntax::hir::Hir;

use self::engines::Engines;
pub use self::python::normalise;
pub use self::tags::expand_tags;

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
    fn fancy_features_fall_back() {
        let p = Pattern::new(r"(?P<a>x)(?P=a)(?!y)").unwrap();
        assert!(p.is_fancy());
        assert!(p.is_match("xxz"));
        assert!(!p.is_match("xxy"));
        let p = Pattern::new(r"(?P<c>a)?(?(c)b|c)").unwrap();
        assert!(p.is_match("ab") && p.is_match("c"));
    }
}
