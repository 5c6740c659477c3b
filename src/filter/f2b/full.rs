//! fail2ban's full semantics for one line: the `maxlines` buffer,
//! connection ids (`<F-MLFID>`), `alt_` groups, and (for `fail2ban-regex`
//! style checks) every failregex rather than the first.
//!
//! Apart from the single-line path in `mod.rs`, which is what the daemon
//! runs for most filters and is kept lean; stateful filters, the samples
//! check and `test-filter` come here. What is remembered between lines is
//! `multiline.rs`.

use std::net::IpAddr;

use jiff::tz::TimeZone;

use super::regex::Captures;
use super::{F2bFilter, Found, Processed, multiline};
use crate::event::Time;

/// Owned copies of a match's named groups.
fn owned(c: &Captures<'_>) -> multiline::Groups {
    c.named
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// The lines of a buffer as the patterns see them: joined, and ending in
/// a newline when there are several (fail2ban's form).
fn joined(lines: &[String]) -> String {
    if lines.len() == 1 {
        return lines[0].clone();
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

impl F2bFilter {
    /// Runs one line with fail2ban's full semantics: the multi-line buffer,
    /// connection ids, and (`check_all`) every failregex rather than the
    /// first that matches. Returns every hit, "no failure" ones included.
    pub fn process_all(&self, line: &str, tz: &TimeZone, now: Time, check_all: bool) -> Vec<Found> {
        self.process_all_at(line, tz, now, check_all, None)
    }

    /// [`process_all`](Self::process_all) for a line whose time is known
    /// (`date`, as a journal gives it): no date is looked for in the text.
    pub fn process_all_at(
        &self,
        line: &str,
        tz: &TimeZone,
        now: Time,
        check_all: bool,
        date: Option<Time>,
    ) -> Vec<Found> {
        self.process_line(line, tz, now, check_all, date).found
    }

    /// [`process_all_at`](Self::process_all_at) with what `fail2ban-regex`
    /// style counting needs besides the hits: whether an ignoreregex
    /// matched, and which earlier lines of a multi-line buffer a match took.
    pub fn process_line(
        &self,
        line: &str,
        tz: &TimeZone,
        now: Time,
        check_all: bool,
        date: Option<Time>,
    ) -> Processed {
        let mut done = Processed::default();
        let multi = self.maxlines > 1;
        // The earlier lines of a full buffer, but the one this line pushes out.
        let before = if multi {
            self.buffered(true)
        } else {
            Vec::new()
        };
        self.scan_line(line, tz, now, check_all, date, &mut done);
        // fail2ban-regex counts a line an ignoreregex matches as ignored,
        // whatever the failregexes did.
        if check_all && !done.ignored {
            done.ignored = self.ignoreregex.iter().any(|r| r.is_match(&done.text));
        }
        if multi {
            let after = self.buffered(false);
            done.released = before.into_iter().filter(|l| !after.contains(l)).collect();
        }
        done
    }

    /// The lines the multi-line buffer holds; `room`: leaving out the
    /// oldest when the buffer is full (the next line pushes it out).
    fn buffered(&self, room: bool) -> Vec<String> {
        let st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let skip = usize::from(room && st.buffer.len() >= self.maxlines);
        st.buffer.iter().skip(skip).cloned().collect()
    }

    fn scan_line(
        &self,
        line: &str,
        tz: &TimeZone,
        now: Time,
        check_all: bool,
        date: Option<Time>,
        done: &mut Processed,
    ) {
        let located = if date.is_some() {
            None
        } else {
            self.dates.locate(line)
        };
        let (text, time) = match located {
            Some(at) => (
                format!("{}{}", &line[..at.span.0], &line[at.span.1..]),
                self.dates.time_at(line, &at, tz, now),
            ),
            None => (line.to_string(), date),
        };
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // A line without a (readable) date takes the last one seen, when
        // that is recent or ahead of now, as fail2ban does.
        let time = match time {
            Some(t) => {
                st.last_date = Some(t);
                Some(t)
            }
            None => st.last_date.filter(|l| l.0 > now.0 - 60_000),
        };
        done.text.clone_from(&text);
        let multi = self.maxlines > 1;
        if multi {
            st.buffer.push(text);
            let excess = st.buffer.len().saturating_sub(self.maxlines);
            st.buffer.drain(..excess);
        } else {
            st.buffer = vec![text];
        }
        let mut buf = joined(&st.buffer);
        // Many ignoreregexes, few failregexes: fail2ban looks at them first.
        if !self.ignoreregex.is_empty()
            && self.ignoreregex.len() + 2 < self.failregex.len()
            && self.ignoreregex.iter().any(|r| r.is_match(&buf))
        {
            done.ignored = true;
            return;
        }
        let mut pre = multiline::Groups::new();
        if let Some(p) = &self.prefregex {
            let Some(c) = p.captures(&buf) else {
                return;
            };
            pre = owned(&c);
            if let Some(content) = pre.remove("content").filter(|c| !c.is_empty()) {
                st.buffer = vec![content];
                buf = joined(&st.buffer);
            }
        }
        for (i, r) in self.failregex.iter().enumerate() {
            let Some(c) = r.captures(&buf) else {
                continue;
            };
            let groups = owned(&c);
            let skipped: Vec<&str> = c
                .named
                .iter()
                .filter(|(n, _)| n.starts_with("skiplines"))
                .map(|(_, v)| *v)
                .collect();
            let (matched, unmatched) = multiline::split_lines(&st.buffer, &buf, c.span, &skipped);
            if !self.ignoreregex.is_empty() {
                let seen = if multi { joined(&matched) } else { buf.clone() };
                if self.ignoreregex.iter().any(|r| r.is_match(&seen)) {
                    done.ignored = true;
                    if multi || !check_all {
                        st.buffer = unmatched;
                        buf = joined(&st.buffer);
                    }
                    if !check_all {
                        break;
                    }
                    continue;
                }
            }
            if multi || !check_all {
                st.buffer = unmatched;
                buf = if st.buffer.is_empty() {
                    String::new()
                } else {
                    joined(&st.buffer)
                };
            }
            let mut fail = pre.clone();
            fail.extend(groups);
            // `alt_user` and the like stand in for a missing `user`.
            let alts: Vec<(String, String)> = fail
                .iter()
                .filter_map(|(k, v)| {
                    let base = k.strip_prefix("alt_")?;
                    let base = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_');
                    Some((base.to_string(), v.clone()))
                })
                .collect();
            for (k, v) in alts {
                if !v.is_empty() && !multiline::flag(&fail, &k) {
                    fail.insert(k, v);
                }
            }
            let mlfid = fail.get("mlfid").cloned();
            let (groups, users, attempts, nofail) = match &mlfid {
                Some(id) => {
                    let e = st.ids.merge(id, fail, matched.len(), now);
                    (e.groups, e.users.into_iter().collect(), e.matches, e.nofail)
                }
                None => {
                    let nofail = multiline::flag(&fail, "nofail");
                    let users = fail.get("user").cloned().into_iter().collect();
                    (fail, users, matched.len(), nofail)
                }
            };
            if nofail && !check_all {
                done.found.push(Found {
                    regex: i,
                    nofail,
                    ..Found::default()
                });
                return;
            }
            let (group, host) = ["ip4", "ip6", "dns", "fid"]
                .iter()
                .find_map(|g| Some((*g, groups.get(*g).filter(|v| !v.is_empty())?)))
                .map_or((None, None), |(g, h)| (Some(g), Some(h.clone())));
            if host.is_none() {
                if let Some(id) = &mlfid {
                    // The connection's host comes on a later line.
                    st.ids.set_pending(id);
                }
                if !check_all {
                    return;
                }
            }
            let addr = host
                .as_deref()
                .and_then(|h| h.parse::<IpAddr>().ok())
                .map(|a| a.to_canonical());
            done.found.push(Found {
                regex: i,
                name: group == Some("dns") && addr.is_none(),
                host,
                addr,
                time,
                user: groups.get("user").cloned(),
                users,
                attempts,
                nofail,
            });
            if !check_all {
                break;
            }
        }
    }
}
