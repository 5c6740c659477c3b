//! What a fail2ban filter remembers between lines: the `maxlines` buffer,
//! and failures tied together by a connection id (`<F-MLFID>`), which
//! later lines complete (`<HOST>`), cancel (`<F-NOFAIL>`, `<F-MLFGAINED>`)
//! or close (`<F-MLFFORGET>`).
//!
//! The rules follow fail2ban's documented behaviour, re-expressed here:
//! a line that fails for an id whose host is not known yet leaves the
//! failure pending until a line gives the host; a "no failure" line (a
//! successful login, say) keeps the failure back unless failures are
//! pending or several users were tried on the connection; "gained" drops
//! what was pending; "forget" ends the connection's record.

use std::collections::{BTreeMap, BTreeSet};

use crate::event::Time;

/// Connections remembered at most (fail2ban keeps 100).
const MAX_IDS: usize = 100;
/// A connection's record expires after this long unused (fail2ban: 5 min).
const MAX_AGE_MS: i64 = 5 * 60 * 1000;

/// Captured groups, by name (only groups that took part).
pub type Groups = BTreeMap<String, String>;

/// Whether a flag group took part with some text (an empty capture does
/// not count, as in fail2ban).
pub fn flag(g: &Groups, name: &str) -> bool {
    g.get(name).is_some_and(|v| !v.is_empty())
}

/// One connection's record.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// Groups seen so far; later lines overwrite.
    pub groups: Groups,
    /// Every user name tried on the connection.
    pub users: BTreeSet<String>,
    /// Lines that make up the failure so far.
    pub matches: usize,
    /// Lines held back by a "no failure" state.
    pub nofail_matches: usize,
    /// The last line said "no failure".
    pub nofail: bool,
    /// The last line said access was gained.
    pub gained: bool,
    /// A failure waits for the connection's host.
    pub pending: bool,
}

/// The records of open connections.
#[derive(Clone, Debug, Default)]
pub struct MlfidCache {
    entries: Vec<(String, Entry, Time)>,
}

impl MlfidCache {
    fn position(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|(k, _, _)| k == id)
    }

    fn insert(&mut self, id: &str, e: Entry, now: Time) {
        if self.entries.len() >= MAX_IDS {
            self.entries
                .retain(|(_, _, t)| now.0.saturating_sub(t.0) < MAX_AGE_MS);
        }
        if self.entries.len() >= MAX_IDS {
            self.entries.remove(0);
        }
        self.entries.push((id.to_string(), e, now));
    }

    /// Marks the connection's failure as waiting for its host.
    pub fn set_pending(&mut self, id: &str) {
        if let Some(i) = self.position(id) {
            self.entries[i].1.pending = true;
        }
    }

    /// Merges a line's match into the connection's record and returns the
    /// failure as it stands. `lines`: how many lines the match spans.
    pub fn merge(&mut self, id: &str, mut cur: Groups, lines: usize, now: Time) -> Entry {
        let gained = flag(&cur, "mlfgained");
        let mut nofail = flag(&cur, "nofail") || gained;
        let forget = cur.remove("mlfforget").is_some_and(|v| !v.is_empty());
        cur.remove("mlfgained");
        cur.remove("nofail");
        let user = cur.get("user").filter(|u| !u.is_empty()).cloned();
        let mut gain_signalled = gained;
        let (mut fail, cached) = match self.position(id) {
            Some(i) => {
                self.entries[i].2 = now;
                let e = &mut self.entries[i].1;
                if let Some(u) = &user {
                    e.users.insert(u.clone());
                }
                // Only the last line's state counts.
                let was_nofail = e.nofail || e.gained;
                e.nofail = false;
                e.gained = false;
                if gained {
                    e.pending = false;
                }
                // Matches already reported are not reported again.
                if !was_nofail && !e.pending {
                    e.matches = 0;
                }
                e.groups.extend(cur);
                e.nofail = nofail;
                e.gained = gained;
                if forget {
                    let (_, e, _) = self.entries.remove(i);
                    (e, None)
                } else {
                    (e.clone(), Some(i))
                }
            }
            None => {
                let mut e = Entry {
                    groups: cur,
                    nofail,
                    gained,
                    ..Entry::default()
                };
                if let Some(u) = &user {
                    e.users.insert(u.clone());
                }
                (e, None)
            }
        };
        // Pending failures, or several users tried: a success does not
        // excuse them.
        let pending = std::mem::take(&mut fail.pending);
        if pending || fail.users.len() > 1 {
            fail.nofail = false;
            fail.gained = false;
            nofail = false;
            gain_signalled = false;
        }
        if !nofail {
            fail.matches += std::mem::take(&mut fail.nofail_matches);
            if !gain_signalled {
                fail.matches += lines;
            }
        } else if !forget {
            fail.nofail_matches += lines;
        }
        match cached {
            Some(i) => self.entries[i].1 = fail.clone(),
            None if !forget && self.position(id).is_none() => {
                self.insert(id, fail.clone(), now);
            }
            None => {}
        }
        fail
    }
}

/// Lines of the buffer a match covers, and the others (the lines before
/// and after it, and those a `<SKIPLINES>` stepped over).
pub fn split_lines(
    lines: &[String],
    buf: &str,
    span: (usize, usize),
    skipped: &[&str],
) -> (Vec<String>, Vec<String>) {
    if lines.len() <= 1 {
        return (lines.to_vec(), Vec::new());
    }
    let first = buf[..span.0.min(buf.len())].matches('\n').count();
    let end_at = span.1.saturating_sub(1).max(span.0).min(buf.len());
    let last = buf[..end_at].matches('\n').count();
    let first = first.min(lines.len());
    let last = (last + 1).clamp(first, lines.len());
    let mut matched: Vec<String> = lines[first..last].to_vec();
    let mut unmatched: Vec<String> = lines[..first].to_vec();
    let mut from = 0;
    for s in skipped.iter().flat_map(|s| s.lines()) {
        if let Some(k) = matched[from..].iter().position(|m| m == s) {
            unmatched.push(matched.remove(from + k));
            from += k;
        }
    }
    unmatched.extend_from_slice(&lines[last..]);
    (matched, unmatched)
}

/// A filter's memory between lines.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// The last `maxlines` lines (dates cut out), or what is left of them.
    pub buffer: Vec<String>,
    /// Open connections.
    pub ids: MlfidCache,
    /// The last date read from a line.
    pub last_date: Option<Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(pairs: &[(&str, &str)]) -> Groups {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_success_holds_back_and_a_second_user_releases() {
        let mut c = MlfidCache::default();
        let t = Time(0);
        let e = c.merge("1", g(&[("user", "a"), ("nofail", "x")]), 1, t);
        assert!(e.nofail);
        // The same connection tries another user: no longer excused.
        let e = c.merge("1", g(&[("user", "b"), ("ip4", "192.0.2.1")]), 1, t);
        assert!(!e.nofail);
        assert_eq!(e.users.len(), 2);
        assert_eq!(e.matches, 2, "the held-back line counts now");
        assert_eq!(e.groups.get("ip4").map(String::as_str), Some("192.0.2.1"));
    }

    #[test]
    fn forget_ends_the_record_and_gained_drops_pending() {
        let mut c = MlfidCache::default();
        let t = Time(0);
        c.merge("7", g(&[("user", "a")]), 1, t);
        c.set_pending("7");
        let e = c.merge("7", g(&[("mlfgained", "y")]), 1, t);
        assert!(e.nofail && e.gained);
        let e = c.merge("7", g(&[("mlfforget", "z")]), 1, t);
        assert!(!e.pending);
        assert!(c.position("7").is_none());
    }

    #[test]
    fn lines_split_around_a_match() {
        let lines: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let buf = "a\nb\nc\nd\n";
        // The match covers "b\nc".
        let (m, u) = split_lines(&lines, buf, (2, 5), &[]);
        assert_eq!(m, ["b", "c"]);
        assert_eq!(u, ["a", "d"]);
        let (m, u) = split_lines(&lines, buf, (0, 7), &["b\nc"]);
        assert_eq!(m, ["a", "d"]);
        assert_eq!(u, ["b", "c"]);
    }
}
