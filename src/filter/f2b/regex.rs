//! Python `re` patterns, as fail2ban filters write them, compiled for Rust.
//!
//! fail2ban's own tags (`<HOST>`, `<ADDR>`, `<IP4>`, `<IP6>`, `<CIDR>`,
//! `<SUBNET>`, `<DNS>`, `<F-USER>...</F-USER>`, `<F-*>`) become named groups
//! with regexes written here. Python-only syntax is normalised (`{,n}`, a bare
//! `{`, `[` inside a class, `\Z`), then the pattern is compiled with the
//! `regex` crate, or with `fancy-regex` when it needs look-around,
//! back-references or conditionals.

use std::borrow::Cow;

/// IPv4, dotted quad (leading zeros allowed: logs write them).
const IP4: &str = r"(?:\d{1,3}\.){3}\d{1,3}";
/// IPv6, including `::`, embedded IPv4 and a zone index.
const IP6: &str =
    r"(?:[0-9a-fA-F]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9a-fA-F]{1,4})?(?:%[\w.]+)?";
/// A host name.
const DNS: &str = r"[\w\-.^_]*\w";

/// Replaces fail2ban's special tags with groups.
pub fn expand_tags(p: &str) -> String {
    let addr = format!(r"(?:(?P<ip4>{IP4})|\[?(?P<ip6>{IP6})\]?)");
    let mut s = p.to_string();
    s = s.replace("<HOST>", &format!(r"(?:{addr}|(?P<dns>{DNS}))"));
    s = s.replace("<SUBNET>", &format!(r"{addr}(?:/(?P<cidr>\d{{1,3}}))?"));
    s = s.replace("<ADDR>", &addr);
    s = s.replace("<IP4>", &format!("(?P<ip4>{IP4})"));
    s = s.replace("<IP6>", &format!("(?P<ip6>{IP6})"));
    s = s.replace("<DNS>", &format!("(?P<dns>{DNS})"));
    s = s.replace("<CIDR>", r"(?P<cidr>\d{1,3})");
    s = s.replace("<SKIPLINES>", r"(?:[^\n]*\n)*?");
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
                        out.push_str(&name.to_ascii_lowercase().replace('-', "_"));
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
#[derive(Debug, Clone)]
pub enum Pattern {
    /// The linear-time engine.
    Fast(regex::Regex),
    /// The backtracking engine (look-around, back-references, conditionals).
    Fancy(fancy_regex::Regex),
}

/// Named captures of one match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captures {
    /// (group name, text) for every named group that took part.
    pub named: Vec<(String, String)>,
    /// Start and end of the whole match.
    pub span: (usize, usize),
    /// Start and end of the group named `dt`, when the pattern has one (the
    /// date inside a date pattern).
    pub dt_span: Option<(usize, usize)>,
}

impl Captures {
    /// The text of group `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
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
        match regex::Regex::new(&p) {
            Ok(r) => Ok(Pattern::Fast(r)),
            Err(fast_err) => fancy_regex::Regex::new(&p)
                .map(Pattern::Fancy)
                .map_err(|e| PatternError {
                    pattern: p.clone(),
                    message: format!("{e} (regex crate: {})", first_line(&fast_err.to_string())),
                }),
        }
    }

    /// Searches `text`; returns the named captures of the first match.
    pub fn captures(&self, text: &str) -> Option<Captures> {
        // The two engines' capture types share their shape, not a trait.
        macro_rules! collect {
            ($r:expr, $c:expr) => {{
                let c = $c;
                let m = c.get(0)?;
                Some(Captures {
                    named: $r
                        .capture_names()
                        .flatten()
                        .filter_map(|n| c.name(n).map(|v| (n.to_string(), v.as_str().to_string())))
                        .collect(),
                    span: (m.start(), m.end()),
                    dt_span: c.name("dt").map(|d| (d.start(), d.end())),
                })
            }};
        }
        match self {
            Pattern::Fast(r) => collect!(r, r.captures(text)?),
            // A backtracking limit hit is treated as no match.
            Pattern::Fancy(r) => collect!(r, r.captures(text).ok()??),
        }
    }

    /// Whether `text` matches anywhere.
    pub fn is_match(&self, text: &str) -> bool {
        match self {
            Pattern::Fast(r) => r.is_match(text),
            Pattern::Fancy(r) => r.is_match(text).unwrap_or(false),
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

    #[test]
    fn fancy_features_fall_back() {
        let p = Pattern::new(r"(?P<a>x)(?P=a)(?!y)").unwrap();
        assert!(matches!(p, Pattern::Fancy(_)));
        assert!(p.is_match("xxz"));
        assert!(!p.is_match("xxy"));
        let p = Pattern::new(r"(?P<c>a)?(?(c)b|c)").unwrap();
        assert!(p.is_match("ab") && p.is_match("c"));
    }
}
