//! Python `re` syntax the Rust engines do not read, rewritten.
//!
//! A pure text-to-text step (`{,n}`, a bare `{`, `[` inside a class, `\Z`,
//! conditionals on a named group, Python-only inline flags), apart from the
//! engines so that what a pattern was turned into can be read and tested
//! without compiling anything.

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
}
