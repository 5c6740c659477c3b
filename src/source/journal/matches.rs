//! fail2ban's `journalmatch`: which journal entries a jail reads.
//!
//! `_SYSTEMD_UNIT=ssh.service + _COMM=sshd` is two groups ORed (`+`); the
//! terms of one group are given to sd-journal together (terms on different
//! fields ANDed, on the same field ORed); each line of a multi-line value
//! is ORed with the others. Words split as a shell would (quotes keep
//! spaces in a value), as fail2ban splits them.

/// A parsed `journalmatch`: groups of `FIELD=value` terms, ORed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct JournalMatch {
    /// Each group's terms.
    pub groups: Vec<Vec<String>>,
}

/// A `journalmatch` that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// A term that is not `FIELD=value`.
    #[error(
        "journalmatch term {0:?} is not FIELD=value (FIELD: capital letters, digits and '_', not starting with a digit)"
    )]
    Term(String),
    /// An unclosed quote.
    #[error("journalmatch {0:?} has an unclosed quote")]
    Quote(String),
    /// `+` with nothing on one side.
    #[error("journalmatch {0:?} has a '+' with no term on one side")]
    EmptyGroup(String),
}

/// Splits one line into words as a POSIX shell would (single and double
/// quotes, backslash escapes), without expansions.
fn words(line: &str) -> Result<Vec<String>, MatchError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(MatchError::Quote(line.into())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(MatchError::Quote(line.into())),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(MatchError::Quote(line.into())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Whether `t` is a term sd-journal takes: `FIELD=value` with a field
/// name of capital letters, digits and underscores, not starting with a
/// digit, at most 64 bytes.
fn valid_term(t: &str) -> bool {
    let Some((field, _)) = t.split_once('=') else {
        return false;
    };
    !field.is_empty()
        && field.len() <= 64
        && !field.starts_with(|c: char| c.is_ascii_digit())
        && field
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

impl JournalMatch {
    /// Reads a `journalmatch` value (one or more lines).
    pub fn parse(text: &str) -> Result<JournalMatch, MatchError> {
        let mut groups = Vec::new();
        for line in text.lines() {
            let ws = words(line)?;
            if ws.is_empty() {
                continue;
            }
            let mut group = Vec::new();
            for w in ws {
                if w == "+" {
                    if group.is_empty() {
                        return Err(MatchError::EmptyGroup(line.into()));
                    }
                    groups.push(std::mem::take(&mut group));
                    continue;
                }
                if !valid_term(&w) {
                    return Err(MatchError::Term(w));
                }
                group.push(w);
            }
            if group.is_empty() {
                return Err(MatchError::EmptyGroup(line.into()));
            }
            groups.push(group);
        }
        Ok(JournalMatch { groups })
    }

    /// No term: every entry is read.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// The services each built-in filter reads, by the unit journald records
/// for them (`_SYSTEMD_UNIT`, set by journald from the writer's cgroup;
/// `SYSLOG_IDENTIFIER` and `_COMM` are the writer's own to choose, so a
/// match on them lets any local process write failures). `None`: no unit
/// known for `filter`.
pub fn builtin_units(filter: &str) -> Option<&'static [&'static str]> {
    Some(match filter {
        "sshd" => &["ssh.service", "sshd.service"],
        // mod_fail2ban is a FreeSWITCH module: its lines come from FreeSWITCH.
        "freeswitch" | "mod-fail2ban" => &["freeswitch.service"],
        "asterisk" => &["asterisk.service"],
        "kamailio" => &["kamailio.service"],
        "opensips" => &["opensips.service"],
        _ => return None,
    })
}

impl JournalMatch {
    /// The default `journalmatch` of built-in filter `filter`: its units,
    /// ORed (see [`builtin_units`]).
    pub fn for_builtin(filter: &str) -> Option<JournalMatch> {
        let units = builtin_units(filter)?;
        Some(JournalMatch {
            groups: units
                .iter()
                .map(|u| vec![format!("_SYSTEMD_UNIT={u}")])
                .collect(),
        })
    }
}

impl std::fmt::Display for JournalMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Quoted where a term holds a space or a quote, so that the text
        // reads back as the same match.
        let term = |t: &String| {
            if t.chars().any(|c| c.is_whitespace() || "'\"\\".contains(c)) {
                format!("'{}'", t.replace('\'', "'\\''"))
            } else {
                t.clone()
            }
        };
        let gs: Vec<String> = self
            .groups
            .iter()
            .map(|g| g.iter().map(term).collect::<Vec<_>>().join(" "))
            .collect();
        f.write_str(&gs.join(" + "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(groups: &[&[&str]]) -> JournalMatch {
        JournalMatch {
            groups: groups
                .iter()
                .map(|g| g.iter().map(|s| s.to_string()).collect())
                .collect(),
        }
    }

    #[test]
    fn plus_is_or() {
        assert_eq!(
            JournalMatch::parse("_SYSTEMD_UNIT=ssh.service + _COMM=sshd").unwrap(),
            g(&[&["_SYSTEMD_UNIT=ssh.service"], &["_COMM=sshd"]])
        );
        assert_eq!(
            JournalMatch::parse("_SYSTEMD_UNIT=sshd.service + _COMM=sshd + _COMM=sshd-session")
                .unwrap()
                .groups
                .len(),
            3
        );
    }

    #[test]
    fn terms_of_a_group_stay_together() {
        assert_eq!(
            JournalMatch::parse("_SYSTEMD_UNIT=postfix.service PRIORITY=3").unwrap(),
            g(&[&["_SYSTEMD_UNIT=postfix.service", "PRIORITY=3"]])
        );
    }

    #[test]
    fn lines_are_ored() {
        let m = JournalMatch::parse("_COMM=a\n  _COMM=b\n\n").unwrap();
        assert_eq!(m, g(&[&["_COMM=a"], &["_COMM=b"]]));
        assert_eq!(m.to_string(), "_COMM=a + _COMM=b");
    }

    #[test]
    fn quotes_keep_spaces() {
        let m = JournalMatch::parse(r#"MESSAGE="a b" 'SYSLOG_IDENTIFIER=x y' _COMM=c\ d"#).unwrap();
        assert_eq!(
            m,
            g(&[&["MESSAGE=a b", "SYSLOG_IDENTIFIER=x y", "_COMM=c d"]])
        );
        // Shown as it reads back.
        assert_eq!(JournalMatch::parse(&m.to_string()).unwrap(), m);
        let q = JournalMatch::parse(r#"MESSAGE="it's""#).unwrap();
        assert_eq!(JournalMatch::parse(&q.to_string()).unwrap(), q);
    }

    #[test]
    fn every_builtin_journal_filter_reads_its_units_only() {
        for f in crate::filter::BUILTIN_FILTERS {
            let m = JournalMatch::for_builtin(f).expect(f);
            assert!(!m.is_empty(), "{f}");
            assert!(
                m.groups
                    .iter()
                    .all(|g| g.len() == 1 && g[0].starts_with("_SYSTEMD_UNIT=")),
                "{f}: {m}"
            );
        }
        assert_eq!(
            JournalMatch::for_builtin("sshd").unwrap().to_string(),
            "_SYSTEMD_UNIT=ssh.service + _SYSTEMD_UNIT=sshd.service"
        );
    }

    #[test]
    fn bad_matches_are_refused() {
        assert!(matches!(
            JournalMatch::parse("sshd"),
            Err(MatchError::Term(_))
        ));
        assert!(matches!(
            JournalMatch::parse("_comm=sshd"),
            Err(MatchError::Term(_))
        ));
        assert!(matches!(
            JournalMatch::parse("1X=y"),
            Err(MatchError::Term(_))
        ));
        assert!(matches!(
            JournalMatch::parse("+ _COMM=sshd"),
            Err(MatchError::EmptyGroup(_))
        ));
        assert!(matches!(
            JournalMatch::parse("_COMM=sshd +"),
            Err(MatchError::EmptyGroup(_))
        ));
        assert!(matches!(
            JournalMatch::parse("_COMM='sshd"),
            Err(MatchError::Quote(_))
        ));
        assert!(JournalMatch::parse("").unwrap().is_empty());
    }
}
