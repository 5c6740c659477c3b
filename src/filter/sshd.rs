//! The `sshd` filter: OpenSSH's common failure lines, often on the same box
//! as the PBX.
//!
//! * `Failed password|publickey|keyboard-interactive/pam for [invalid user] U from ADDR port N ssh2`
//! * `Invalid user U from ADDR [port N]`
//! * `User U from ADDR not allowed because ...`
//! * `error: maximum authentication attempts exceeded for [invalid user] U from ADDR port N ssh2 [preauth]`
//! * `Disconnecting invalid user U ADDR port N: ...`, `ROOT LOGIN REFUSED FROM ADDR`,
//!   `Connection closed by ADDR [preauth]`, `Received disconnect from ADDR ... [preauth]`,
//!   `PAM: Authentication failure for U from ADDR`, `refused connect from H (ADDR)`
//!
//! Not counted: `pam_unix(sshd:auth): authentication failure` and
//! `Connection closed by|Disconnected from authenticating|invalid user ...`,
//! which repeat a failure already logged on its own line (counting them
//! would count one attempt twice), and `Failed publickey` for a valid user
//! (clients try several keys).
//!
//! U is the attacker's and may contain spaces and `from 1.2.3.4`: the
//! address is read at the end (`ADDR port N ...`), where sshd writes it.

use std::net::IpAddr;

use memchr::memmem;

use super::{Filter, FilterContext, LineMatch, line_time, trim_end, user_text};
use crate::event::FailureKind;
use crate::net::parse_addr;

/// The built-in sshd filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct SshdFilter;

/// Where sshd's message starts: after `sshd[PID]: ` (or `sshd-session[PID]:`,
/// `sshd:`); the whole line when there is no such prefix (journal).
fn message_start(line: &[u8]) -> usize {
    let head = &line[..line.len().min(200)];
    let mut start = 0;
    if let Some(p) = memmem::find(head, b"sshd") {
        let rest = &head[p..];
        if let Some(c) = memmem::find(rest, b": ") {
            let prog = &rest[..c];
            if prog == b"sshd"
                || prog == b"sshd]"
                || prog.starts_with(b"sshd[")
                || prog.starts_with(b"sshd-session")
            {
                start = p + c + 2;
            }
        } else if rest.starts_with(b"sshd] ") {
            start = p + 6;
        }
    }
    // Solaris: `[ID 800047 auth.info] ` before the message.
    if line[start..].starts_with(b"[ID ") {
        if let Some(c) = memchr::memchr(b']', &line[start..]) {
            start += c + 1;
            while line.get(start) == Some(&b' ') {
                start += 1;
            }
        }
    }
    start
}

/// Reads `ADDR port N sshX` right at `at`; returns the address and the
/// remainder after it, or `None` when the text there is not that.
fn addr_port_proto(msg: &[u8], at: usize) -> Option<(IpAddr, &[u8])> {
    let rest = &msg[at..];
    let sp = memchr::memchr(b' ', rest)?;
    let addr = parse_addr(&rest[..sp])?;
    let r = rest[sp..].strip_prefix(b" port ")?;
    let digits = r.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let r = &r[digits..];
    // The protocol tag is missing in some old versions.
    match r.strip_prefix(b" ssh") {
        Some(p) if p.first().is_some_and(u8::is_ascii_digit) => Some((addr, &p[1..])),
        Some(_) => None,
        None => Some((addr, r)),
    }
}

/// The address of `... for USER from ADDR port N sshX[: EXTRA]`. USER may
/// hold copies of ` from ADDR port N sshX`; OpenSSH writes nothing after a
/// password failure, so the last complete one is sshd's.
fn failed_for(msg: &[u8], user_from: usize) -> Option<(IpAddr, usize)> {
    memmem::find_iter(&msg[user_from..], b" from ")
        .filter_map(|p| {
            let at = user_from + p + 6;
            let (addr, rest) = addr_port_proto(msg, at)?;
            (rest.is_empty() || rest.starts_with(b": ") || rest.starts_with(b" [preauth]"))
                .then_some((addr, user_from + p))
        })
        .last()
}

impl SshdFilter {
    fn find(&self, msg: &[u8]) -> Option<(IpAddr, FailureKind, Option<Box<str>>)> {
        let msg = msg.strip_prefix(b"error: ").unwrap_or(msg);
        // A client offering several keys fails publickey for a valid user as
        // a matter of course; that is not an attack.
        let routine = (msg.starts_with(b"Failed publickey for ")
            && !msg.starts_with(b"Failed publickey for invalid user "))
            || msg.starts_with(b"Failed none for ");
        if (msg.starts_with(b"Failed ") && !routine)
            || msg.starts_with(b"maximum authentication attempts exceeded for ")
        {
            let for_at = memmem::find(msg, b" for ")? + 5;
            let (addr, user_end) = failed_for(msg, for_at).or_else(|| {
                // Older sshd: `from ADDR` at the very end, no port.
                let f = memmem::rfind(msg, b" from ")?;
                Some((parse_addr(trim_end(&msg[f + 6..]))?, f))
            })?;
            let mut user = &msg[for_at.min(user_end)..user_end];
            let kind = match user.strip_prefix(b"invalid user ") {
                Some(u) => {
                    user = u;
                    FailureKind::UnknownUser
                }
                None => FailureKind::RegisterAuth,
            };
            return Some((addr, kind, Some(user_text(user))));
        }
        if let Some(u) = msg.strip_prefix(b"Invalid user ") {
            let t = trim_end(u);
            let (addr, user_end) = failed_for(t, 0).or_else(|| {
                let f = memmem::rfind(t, b" from ")?;
                let a = &t[f + 6..];
                let a = memmem::find(a, b" port ").map_or(a, |p| &a[..p]);
                Some((parse_addr(a)?, f))
            })?;
            return Some((
                addr,
                FailureKind::UnknownUser,
                Some(user_text(&t[..user_end])),
            ));
        }
        if let Some(r) = msg.strip_prefix(b"ROOT LOGIN REFUSED FROM ") {
            let end = memchr::memchr(b' ', r).unwrap_or(r.len());
            return Some((
                parse_addr(trim_end(&r[..end]))?,
                FailureKind::RegisterAuth,
                Some("root".into()),
            ));
        }
        if let Some(r) = msg.strip_prefix(b"Received disconnect from ") {
            // Only disconnects before authentication, or for an auth failure (3).
            let t = trim_end(msg);
            let end = r
                .iter()
                .position(|&c| c == b' ' || c == b':')
                .unwrap_or(r.len());
            let addr = parse_addr(&r[..end])?;
            let code3 = memmem::find(r, b": 3:")
                .or_else(|| memmem::find(r, b":3:"))
                .is_some();
            return (t.ends_with(b"[preauth]") || code3).then_some((
                addr,
                FailureKind::Other,
                None,
            ));
        }
        if let Some(r) = msg.strip_prefix(b"Connection closed by ") {
            if trim_end(r).ends_with(b"[preauth]") {
                let end = memchr::memchr(b' ', r).unwrap_or(r.len());
                if let Some(a) = parse_addr(&r[..end]) {
                    return Some((a, FailureKind::Other, None));
                }
            }
        }
        if msg.starts_with(b"PAM: ") && memmem::find(msg, b" for ").is_some() {
            // `PAM: Authentication failure for U from HOST[ via X]`
            let f = memmem::rfind(msg, b" from ")? + 6;
            let end = memchr::memchr(b' ', &msg[f..]).map_or(msg.len(), |e| f + e);
            return Some((
                parse_addr(trim_end(&msg[f..end]))?,
                FailureKind::RegisterAuth,
                None,
            ));
        }
        if let Some(u) = msg.strip_prefix(b"User ") {
            let na = memmem::rfind(u, b" not allowed because ")?;
            let head = &u[..na];
            let f = memmem::rfind(head, b" from ")?;
            return Some((
                parse_addr(&head[f + 6..])?,
                FailureKind::UnknownUser,
                Some(user_text(&head[..f])),
            ));
        }
        if let Some(r) = msg.strip_prefix(b"refused connect from ") {
            let body = trim_end(r).strip_suffix(b")")?;
            let open = memchr::memrchr(b'(', body)? + 1;
            return Some((parse_addr(&body[open..])?, FailureKind::Other, None));
        }
        if let Some(r) = msg.strip_prefix(b"Disconnecting invalid user ") {
            // `... ADDR port N: Change of username or service not allowed`; the
            // `Too many authentication failures` form echoes failures already counted.
            let colon = memmem::rfind(r, b": Change of username or service not allowed")?;
            let head = &r[..colon];
            let p = memmem::rfind(head, b" port ")?;
            let s0 = memchr::memrchr(b' ', &head[..p])? + 1;
            return Some((
                parse_addr(&head[s0..p])?,
                FailureKind::UnknownUser,
                Some(user_text(&head[..s0 - 1])),
            ));
        }
        None
    }
}

impl Filter for SshdFilter {
    fn name(&self) -> &str {
        "sshd"
    }

    fn match_line(&self, line: &[u8], cx: &FilterContext) -> Option<LineMatch> {
        let line = trim_end(line);
        let start = message_start(line);
        let (addr, kind, user) = self.find(&line[start..])?;
        Some(LineMatch {
            addr,
            time: line_time(&line[..start], cx),
            kind,
            user,
            user_agent: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Time;
    use crate::filter::tests_support::sample_mismatches;

    fn m(line: &str) -> Option<(String, FailureKind, Option<String>)> {
        let cx = FilterContext {
            tz: jiff::tz::TimeZone::UTC,
            now: Time(1_124_013_600_000),
        };
        SshdFilter
            .match_line(line.as_bytes(), &cx)
            .map(|m| (m.addr.to_string(), m.kind, m.user.map(String::from)))
    }

    #[test]
    fn common_lines() {
        let r = m(
            "Nov 25 10:00:01 pbx sshd[123]: Failed password for root from 192.0.2.1 port 4242 ssh2",
        )
        .unwrap();
        assert_eq!(
            r,
            (
                "192.0.2.1".into(),
                FailureKind::RegisterAuth,
                Some("root".into())
            )
        );
        let r = m("Nov 25 10:00:01 pbx sshd[123]: Failed password for invalid user admin from 2001:db8::1 port 4242 ssh2").unwrap();
        assert_eq!(
            r,
            (
                "2001:db8::1".into(),
                FailureKind::UnknownUser,
                Some("admin".into())
            )
        );
        assert_eq!(
            m("Nov 25 10:00:01 pbx sshd[123]: Invalid user oracle from 192.0.2.2 port 5555")
                .unwrap()
                .0,
            "192.0.2.2"
        );
        assert_eq!(
            m("Nov 25 10:00:01 pbx sshd[123]: Invalid user oracle from 192.0.2.2")
                .unwrap()
                .0,
            "192.0.2.2"
        );
        assert_eq!(m("Nov 25 10:00:01 pbx sshd-session[9]: Connection closed by 192.0.2.3 port 51000 [preauth]").unwrap().0, "192.0.2.3");
        // Echoes of a failure already counted are not counted again.
        assert!(m("Nov 25 10:00:01 pbx sshd[9]: Disconnected from invalid user test 192.0.2.4 port 51000 [preauth]").is_none());
        assert_eq!(
            m("Nov 25 10:00:01 pbx sshd[9]: error: maximum authentication attempts exceeded for root from 192.0.2.5 port 22 ssh2 [preauth]").unwrap().0,
            "192.0.2.5"
        );
        assert_eq!(m("Nov 25 10:00:01 pbx sshd[9]: User root from 192.0.2.6 not allowed because not listed in AllowUsers").unwrap().0, "192.0.2.6");
        assert!(m("Nov 25 10:00:01 pbx sshd[9]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.7  user=root").is_none());
        assert!(m("Nov 25 10:00:01 pbx sshd[9]: Failed publickey for git from 192.0.2.8 port 22 ssh2: RSA SHA256:abcdef").is_none());
        assert_eq!(m("Nov 25 10:00:01 pbx sshd[9]: Failed publickey for invalid user git from 192.0.2.8 port 22 ssh2: RSA SHA256:ab").unwrap().0, "192.0.2.8");
        // Not failures.
        assert!(m("Nov 25 10:00:01 pbx sshd[9]: Accepted password for root from 192.0.2.9 port 22 ssh2").is_none());
        assert!(m("Nov 25 10:00:01 pbx sshd[9]: Connection closed by 192.0.2.9 port 22").is_none());
        assert!(
            m("Nov 25 10:00:01 pbx sshd[9]: Disconnected from user root 192.0.2.9 port 22")
                .is_none()
        );
    }

    #[test]
    fn user_names_cannot_choose_the_address() {
        let r = m("Nov 25 10:00:01 pbx sshd[123]: Failed password for invalid user x from 6.6.6.6 port 1 ssh2 from 192.0.2.1 port 4242 ssh2").unwrap();
        assert_eq!(r.0, "192.0.2.1");
        let r = m("Nov 25 10:00:01 pbx sshd[123]: Invalid user a from 6.6.6.6 port 1 from 192.0.2.2 port 2").unwrap();
        assert_eq!(r.0, "192.0.2.2");
        let r = m("sshd[9]: Disconnecting invalid user 6.6.6.6 port 1: x 192.0.2.3 port 5: Change of username or service not allowed: (a,b) -> (c,d) [preauth]").unwrap();
        assert_eq!(r.0, "192.0.2.3");
    }

    #[test]
    fn fail2ban_sshd_samples_default_mode() {
        // fail2ban's sshd sample (read at test time) under its default mode;
        // the lines this filter does not claim are listed, not hidden.
        let Some((checked, bad)) = sample_mismatches(&SshdFilter, "sshd") else {
            return;
        };
        eprintln!(
            "sshd samples: {checked} checked, {} differ:\n{}",
            bad.len(),
            bad.join("\n")
        );
        assert!(checked > 60);
        // Differences must be misses of rarer lines (host names, multi-line
        // forms, other modes), never a wrong address; one exception: fail2ban
        // expects the first address where a synthetic auth-info after a
        // password failure repeats ` from ADDR port N ssh2`. OpenSSH writes no
        // auth-info there, so the user name is the only place to inject, and
        // the last complete address is sshd's.
        let wrong: Vec<&String> = bad.iter().filter(|b| !b.contains("got None")).collect();
        assert!(
            wrong.len() <= 1 && wrong.iter().all(|b| b.contains("ssh2: from 10.10.1.2")),
            "{wrong:?}"
        );
        assert!(bad.len() * 4 < checked, "{} of {checked} differ", bad.len());
    }
}
