//! The `freeswitch` filter: FreeSWITCH's own log (`freeswitch.log`, or its
//! lines in syslog/journald).
//!
//! Failures (the message must start right after FreeSWITCH's `[LEVEL] file.c:N`
//! header, so text quoted from a packet can never pose as one):
//!
//! * `SIP auth failure (REGISTER|INVITE) on sofia profile 'P' for [U@H] from ip ADDR`
//!   (needs `log-auth-failures=true` on the profile);
//! * `Can't find user [U@H] from ADDR`;
//! * `IP ADDR Rejected by acl "NAME"` and `IP ADDR Rejected by register acl "NAME"`.
//!
//! Not failures: `SIP auth challenge` (every phone is challenged; counted only
//! with `count_challenges = true`) and the DEBUG line `IP ADDR Rejected by acl
//! "NAME". Falling back to Digest auth.`, a normal step before a challenge.
//!
//! The address comes from the end of the line (`from ip ADDR`, `from ADDR`),
//! where FreeSWITCH writes the packet's source, or right after `IP `; never
//! from inside `[U@H]`, which the attacker writes.

use memchr::{memchr, memmem, memrchr};

use super::{Filter, FilterContext, FilterOptions, LineMatch, line_time, trim_end, user_text};
use crate::event::FailureKind;
use crate::net::parse_addr;

/// How far into a line FreeSWITCH's `[LEVEL]` tag may sit (after a syslog
/// prefix, a call UUID, a date and the CPU column).
const HEADER_LIMIT: usize = 240;

const LEVELS: &[&[u8]] = &[
    b"DEBUG", b"INFO", b"NOTICE", b"WARNING", b"WARN", b"ERR", b"CRIT", b"ALERT", b"CONSOLE",
];

/// The built-in FreeSWITCH log filter.
#[derive(Debug, Clone)]
pub struct FreeSwitchFilter {
    opts: FilterOptions,
}

impl FreeSwitchFilter {
    /// A filter with the jail's options (`count_challenges`).
    pub fn new(opts: FilterOptions) -> Self {
        FreeSwitchFilter { opts }
    }
}

/// Locates the `[LEVEL]` tag; returns (tag start, offset just after it).
fn level_tag(line: &[u8]) -> Option<(usize, usize)> {
    let head = &line[..line.len().min(HEADER_LIMIT)];
    let mut from = 0;
    while let Some(p) = memchr(b'[', &head[from..]) {
        let open = from + p;
        let word_end = head[open + 1..]
            .iter()
            .position(|c| !c.is_ascii_uppercase())
            .map(|n| open + 1 + n)?;
        if head.get(word_end) == Some(&b']') && LEVELS.contains(&&head[open + 1..word_end]) {
            return Some((open, word_end + 1));
        }
        from = open + 1;
    }
    None
}

/// Skips FreeSWITCH's source location after the level tag: ` file.c:123 ` or
/// ` [SOFIA] [file.c:123] `. Returns where the message starts.
fn message_start(line: &[u8], after_tag: usize) -> Option<usize> {
    let mut i = after_tag;
    let skip_spaces = |mut i: usize| {
        while line.get(i) == Some(&b' ') {
            i += 1;
        }
        i
    };
    i = skip_spaces(i);
    // Optional `[SUBSYSTEM]` (seen as `[SOFIA]`).
    if line.get(i) == Some(&b'[') {
        let close = memchr(b']', &line[i..])? + i;
        let word = &line[i + 1..close];
        if !word.is_empty() && word.iter().all(u8::is_ascii_uppercase) {
            i = skip_spaces(close + 1);
        }
    }
    let bracketed = line.get(i) == Some(&b'[');
    let tok_start = if bracketed { i + 1 } else { i };
    let sp = memchr(b' ', &line[tok_start..])? + tok_start;
    let mut tok = &line[tok_start..sp];
    if bracketed {
        tok = tok.strip_suffix(b"]")?;
    }
    // `name.c:1234`: a colon followed by digits only.
    let colon = memrchr(b':', tok)?;
    let (file, line_no) = (&tok[..colon], &tok[colon + 1..]);
    if file.is_empty() || line_no.is_empty() || !line_no.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(sp + 1)
}

/// Reads `<marker> ADDR` at the very end of the line. Returns the address and
/// where the marker starts.
fn tail_addr(line: &[u8], marker: &[u8]) -> Option<(std::net::IpAddr, usize)> {
    let line = trim_end(line);
    let sp = memrchr(b' ', line)?;
    let addr = parse_addr(&line[sp + 1..])?;
    let head = &line[..sp];
    head.ends_with(marker).then(|| (addr, sp - marker.len()))
}

/// The `U` of `[U@H]` between `open` and the end of the attacker's text.
fn bracket_user(line: &[u8], open: usize, tail_start: usize) -> Option<Box<str>> {
    let inner = line.get(open..tail_start)?.strip_suffix(b"]")?;
    let user = match memrchr(b'@', inner) {
        Some(at) => &inner[..at],
        None => inner,
    };
    Some(user_text(user))
}

/// Reads a profile ACL rejection message, `IP ADDR Rejected by acl "NAME"` or
/// `IP ADDR Rejected by register acl "NAME"`, as FreeSWITCH logs it (also
/// through the Event Socket's `log` output). The DEBUG variant ending in
/// `. Falling back to Digest auth.` is not a rejection.
pub fn acl_reject(msg: &[u8]) -> Option<std::net::IpAddr> {
    let rest = msg.strip_prefix(b"IP ")?;
    // The DEBUG variant ends otherwise: no address to read for it.
    if !trim_end(rest).ends_with(b"\"") {
        return None;
    }
    let sp = memchr(b' ', rest)?;
    let addr = parse_addr(&rest[..sp])?;
    let after = &rest[sp..];
    let quoted = after
        .strip_prefix(b" Rejected by acl \"")
        .or_else(|| after.strip_prefix(b" Rejected by register acl \""))?;
    // The rejection is the whole message: the name's closing quote ends it.
    let quoted = trim_end(quoted);
    let close = memchr(b'"', quoted)?;
    (close + 1 == quoted.len()).then_some(addr)
}

impl Filter for FreeSwitchFilter {
    fn name(&self) -> &str {
        "freeswitch"
    }

    fn required_literals(&self) -> &'static [&'static [u8]] {
        // The three words `match_line` rejects every other message by.
        &[b"SIP auth ", b"Can't find user [", b"IP "]
    }

    fn match_line(&self, line: &[u8], cx: &FilterContext) -> Option<LineMatch> {
        let (tag, after_tag) = level_tag(line)?;
        let msg_at = message_start(line, after_tag)?;
        let msg = &line[msg_at..];
        // Cheap rejection: a failure message starts with one of three words
        // (`required_literals` names them: keep the two in step).
        if !(msg.starts_with(b"SIP auth ")
            || msg.starts_with(b"Can't find user [")
            || msg.starts_with(b"IP "))
        {
            return None;
        }
        let stamp = || line_time(&line[..tag], cx);

        if let Some(rest) = msg.strip_prefix(b"SIP auth ") {
            let (kind_word, rest) = if let Some(r) = rest.strip_prefix(b"failure (") {
                ("failure", r)
            } else if let Some(r) = rest.strip_prefix(b"challenge (") {
                ("challenge", r)
            } else {
                return None;
            };
            let close = memchr(b')', rest)?;
            let method = &rest[..close];
            let kind = match (kind_word, method) {
                ("challenge", _) if !self.opts.count_challenges => return None,
                ("challenge", _) => FailureKind::Challenge,
                (_, b"REGISTER") => FailureKind::RegisterAuth,
                (_, b"INVITE") => FailureKind::InviteAuth,
                _ => FailureKind::Other,
            };
            let (addr, tail_start) = tail_addr(line, b" from ip")?;
            // One searcher for every line (`memmem::find` builds one per call).
            static FOR: std::sync::LazyLock<memmem::Finder<'static>> =
                std::sync::LazyLock::new(|| memmem::Finder::new(b" for ["));
            let user = FOR
                .find(msg)
                .filter(|_| !self.opts.without_users)
                .and_then(|p| bracket_user(line, msg_at + p + 6, tail_start));
            return Some(LineMatch {
                addr,
                time: stamp(),
                kind,
                user,
                user_agent: None,
            });
        }

        if msg.starts_with(b"Can't find user [") {
            let (addr, tail_start) = tail_addr(line, b" from")?;
            let user = if self.opts.without_users {
                None
            } else {
                bracket_user(line, msg_at + 17, tail_start)
            };
            return Some(LineMatch {
                addr,
                time: stamp(),
                kind: FailureKind::UnknownUser,
                user,
                user_agent: None,
            });
        }

        if let Some(addr) = acl_reject(msg) {
            return Some(LineMatch {
                addr,
                time: stamp(),
                kind: FailureKind::AclReject,
                user: None,
                user_agent: None,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Time;
    use jiff::tz::TimeZone;

    fn cx() -> FilterContext {
        FilterContext {
            tz: TimeZone::UTC,
            now: Time(1_795_621_254_000),
        }
    }

    fn run(opts: FilterOptions, line: &str) -> Option<LineMatch> {
        FreeSwitchFilter::new(opts).match_line(line.as_bytes(), &cx())
    }

    fn m(line: &str) -> Option<LineMatch> {
        run(FilterOptions::default(), line)
    }

    #[test]
    fn auth_failure_register_with_cpu_column() {
        let r = m("2026-11-25 15:40:54.659156 98.73% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1009@10.77.0.1] from ip 10.77.0.2").unwrap();
        assert_eq!(r.addr.to_string(), "10.77.0.2");
        assert_eq!(r.kind, FailureKind::RegisterAuth);
        assert_eq!(r.user.as_deref(), Some("1009"));
        assert_eq!(r.time, Some(Time(1_795_621_254_659)));
    }

    #[test]
    fn auth_failure_invite_without_cpu_column() {
        let r = m("2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:1478 SIP auth failure (INVITE) on sofia profile 'internal' for [000972543480510@192.168.2.51] from ip 5.11.47.236").unwrap();
        assert_eq!(r.addr.to_string(), "5.11.47.236");
        assert_eq!(r.kind, FailureKind::InviteAuth);
    }

    #[test]
    fn challenge_counts_only_when_asked() {
        let line = "2026-11-25 15:40:54.639126 98.73% [WARNING] sofia_reg.c:1842 SIP auth challenge (REGISTER) on sofia profile 'internal' for [1009@10.77.0.1] from ip 10.77.0.2";
        assert_eq!(m(line), None);
        let r = run(
            FilterOptions {
                count_challenges: true,
                ..Default::default()
            },
            line,
        )
        .unwrap();
        assert_eq!(r.kind, FailureKind::Challenge);
    }

    #[test]
    fn cant_find_user_and_yearless_format() {
        let r = m("2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:2531 Can't find user [1001@192.168.2.51] from 5.11.47.236").unwrap();
        assert_eq!(
            (r.addr.to_string(), r.kind),
            ("5.11.47.236".into(), FailureKind::UnknownUser)
        );
        assert_eq!(r.user.as_deref(), Some("1001"));
        let r = m("08-03 07:56:53.026292 [WARN] [SOFIA] [sofia_reg.c:4130] Can't find user [101@148.251.134.154] from 192.0.2.3").unwrap();
        assert_eq!(r.addr.to_string(), "192.0.2.3");
        let r = m("2016-09-25T18:57:58.150982 www.srv.tld freeswitch[122921]: 2016-09-25 18:57:58.150982 [WARNING] sofia_reg.c:2889 Can't find user [201@::1] from 192.0.2.1").unwrap();
        assert_eq!(r.addr.to_string(), "192.0.2.1");
        assert_eq!(r.time.unwrap().as_secs(), 1_474_829_878);
    }

    #[test]
    fn acl_rejections() {
        let r = m("2026-11-25 15:40:54.639126 [WARNING] sofia.c:2200 IP 203.0.113.9 Rejected by acl \"domains\"").unwrap();
        assert_eq!(
            (r.addr.to_string(), r.kind),
            ("203.0.113.9".into(), FailureKind::AclReject)
        );
        let r = m("2026-11-25 15:40:54.639126 12.00% [WARNING] sofia_reg.c:1999 IP 2001:db8::7 Rejected by register acl \"reg\"").unwrap();
        assert_eq!(r.addr.to_string(), "2001:db8::7");
        assert_eq!(
            m(
                "2013-12-31 17:39:54.767815 [DEBUG] sofia.c:7954 IP 185.24.234.141 Rejected by acl \"domains\". Falling back to Digest auth."
            ),
            None
        );
    }

    #[test]
    fn address_never_from_attacker_text() {
        // The user part claims another address; only the tail counts.
        let r = m("2026-11-25 15:40:54.659156 [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [x] from ip 1.2.3.4@10.77.0.1] from ip 10.77.0.2").unwrap();
        assert_eq!(r.addr.to_string(), "10.77.0.2");
        // A line whose message does not start at the header is not a failure,
        // whatever it quotes.
        assert_eq!(
            m(
                "2026-11-25 15:40:54.659156 [NOTICE] sofia.c:100 Received from sip:SIP auth failure (REGISTER) on sofia profile 'internal' for [x] from ip 1.2.3.4"
            ),
            None
        );
        // A date in the user name does not move the event in time.
        let r = m("[WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [2000-01-01 00:00:00@h] from ip 10.77.0.2").unwrap();
        assert_eq!(r.time, None);
        // Garbage where the address should be.
        assert_eq!(
            m(
                "2026-11-25 15:40:54 [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1@h] from ip 999.1.1.1"
            ),
            None
        );
    }

    #[test]
    fn invalid_utf8_in_user_does_not_hide_the_failure() {
        let mut line = b"2026-11-25 15:40:54 [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [".to_vec();
        line.extend_from_slice(b"\xff\xfe@h] from ip 10.77.0.2");
        let r = FreeSwitchFilter::new(FilterOptions::default())
            .match_line(&line, &cx())
            .unwrap();
        assert_eq!(r.addr.to_string(), "10.77.0.2");
    }

    #[test]
    fn corpus_freeswitch_log() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/freeswitch-1.10.12/freeswitch.log"
        );
        let Ok(text) = std::fs::read(path) else {
            assert!(
                !crate::test_support::need("corpus"),
                "{path} is missing from the corpus"
            );
            return;
        };
        let f = FreeSwitchFilter::new(FilterOptions::default());
        let hits: Vec<LineMatch> = text
            .split(|&b| b == b'\n')
            .filter_map(|l| f.match_line(l, &cx()))
            .collect();
        // 11 REGISTER failures (10 svcrack + 1 SIPp) and 2 INVITE failures.
        assert_eq!(hits.len(), 13);
        assert_eq!(
            hits.iter()
                .filter(|h| h.kind == FailureKind::InviteAuth)
                .count(),
            2
        );
        assert!(
            hits.iter()
                .all(|h| h.addr.to_string() == "10.77.0.2" && h.time.is_some())
        );
        let f = FreeSwitchFilter::new(FilterOptions {
            count_challenges: true,
            ..Default::default()
        });
        let all = text
            .split(|&b| b == b'\n')
            .filter_map(|l| f.match_line(l, &cx()))
            .count();
        assert!(all > 13);
        // Without users (test-filter): the same matches, no user read.
        assert!(hits.iter().all(|h| h.user.is_some()));
        let f = FreeSwitchFilter::new(FilterOptions {
            without_users: true,
            ..Default::default()
        });
        let bare: Vec<LineMatch> = text
            .split(|&b| b == b'\n')
            .filter_map(|l| f.match_line(l, &cx()))
            .collect();
        let no_user = |h: &LineMatch| LineMatch {
            user: None,
            ..h.clone()
        };
        assert_eq!(bare, hits.iter().map(no_user).collect::<Vec<_>>());
    }

    #[test]
    fn fail2ban_sample_lines() {
        // fail2ban's annotated sample (read at test time, never copied): every
        // line annotated as a match must give its host, except the challenge,
        // which fail2ban's default mode counts and this filter does not.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/fail2ban-1.1.2.dev1/tests/files/logs/freeswitch"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            assert!(
                !crate::test_support::need("corpus"),
                "{path} is missing from the corpus"
            );
            return;
        };
        let f = FreeSwitchFilter::new(FilterOptions::default());
        let mut expect: Option<(bool, Option<String>)> = None;
        let mut checked = 0;
        for line in text.lines() {
            if let Some(json) = line.strip_prefix("# failJSON: ") {
                let v: serde_json::Value = serde_json::from_str(json).unwrap();
                expect = Some((
                    v["match"].as_bool().unwrap(),
                    v["host"].as_str().map(String::from),
                ));
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some((want, host)) = expect.take() else {
                continue;
            };
            let got = f.match_line(line.as_bytes(), &cx());
            if line.contains("SIP auth challenge") {
                assert_eq!(got, None, "challenge is not a failure by default: {line}");
            } else if want {
                assert_eq!(got.map(|g| g.addr.to_string()), host, "{line}");
            } else {
                assert_eq!(got, None, "{line}");
            }
            checked += 1;
        }
        assert_eq!(checked, 11);
    }

    /// Issue 16, finding 14: three failures stamped 02:14 in the repeated
    /// hour, read at 02:15 CET (the second pass), used to be read as CEST,
    /// an hour old, and counted as none.
    #[test]
    fn repeated_dst_hour_failures_count() {
        use crate::duration::{BanTime, Duration};
        use crate::event::{FailureEvent, JailId};
        use crate::jail::{BanHistory, IgnoreList, Jail, JailPolicy, Outcome};

        let utc = |s: &str| Time(s.parse::<jiff::Timestamp>().unwrap().as_millisecond());
        let cx = |now| FilterContext {
            tz: TimeZone::get("Europe/Berlin").unwrap(),
            now,
        };
        let lines = [
            "2026-10-25 02:14:01.100000 98.73% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1009@10.77.0.1] from ip 203.0.113.9",
            "2026-10-25 02:14:02.200000 98.73% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1009@10.77.0.1] from ip 203.0.113.9",
            "2026-10-25 02:14:03.300000 98.73% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1009@10.77.0.1] from ip 203.0.113.9",
        ];
        let now = utc("2026-10-25T01:15:00Z");
        let mut jail = Jail::new(
            JailId(0),
            "freeswitch",
            JailPolicy {
                maxretry: 3,
                findtime: Duration(600),
                bantime: BanTime::For(Duration(3600)),
                ignore: IgnoreList::new(Vec::new()),
                max_tracked: 100,
                escalation: None,
                ban_scanners: false,
                trust_registered: None,
                trusted_maxretry: 0,
                wrong_call_state_maxretry: 0,
                invite_weight: 1,
                burst: None,
                ipv6_prefix: 64,
            },
        );
        let filter = FreeSwitchFilter::new(FilterOptions::default());
        let outcomes: Vec<Outcome> = lines
            .iter()
            .map(|l| {
                let m = filter.match_line(l.as_bytes(), &cx(now)).unwrap();
                let ev = FailureEvent {
                    time: m.time.unwrap(),
                    jail: JailId(0),
                    addr: m.addr,
                    kind: m.kind,
                    user: None,
                    scanner: false,
                };
                jail.record(&ev, now, &BanHistory::default())
            })
            .collect();
        assert!(
            matches!(outcomes.last(), Some(Outcome::Ban(b)) if b.failures == 3),
            "{outcomes:?}"
        );
        // At 02:20 CEST (the first pass) a line stamped 02:14 is the summer one.
        let m = filter
            .match_line(lines[0].as_bytes(), &cx(utc("2026-10-25T00:20:00Z")))
            .unwrap();
        assert_eq!(m.time, Some(utc("2026-10-25T00:14:01.100Z")));
    }

    #[test]
    fn every_match_holds_a_required_literal() {
        // `test-filter` skips lines without one of them: a match without
        // one would be lost there. The real capture and fail2ban's sample,
        // with challenges counted (the widest setting).
        let root = env!("CARGO_MANIFEST_DIR");
        let files = [
            "../shared/corpus/freeswitch-1.10.12/freeswitch.log",
            "../shared/corpus/fail2ban-1.1.2.dev1/tests/files/logs/freeswitch",
        ];
        let f = FreeSwitchFilter::new(FilterOptions {
            count_challenges: true,
            ..FilterOptions::default()
        });
        let lits = f.required_literals();
        let now = cx();
        let mut matched = 0;
        for name in files {
            let path = format!("{root}/{name}");
            let data = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{path}: {e} (the shared corpus is needed)"));
            for line in data.split(|&b| b == b'\n') {
                if f.match_line(line, &now).is_some() {
                    matched += 1;
                    let held = lits.iter().any(|l| memmem::find(line, l).is_some());
                    assert!(held, "{}", String::from_utf8_lossy(line));
                }
            }
        }
        assert!(matched > 20, "only {matched} matches: the files changed?");
    }
}
