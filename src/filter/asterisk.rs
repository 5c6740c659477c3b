//! The `asterisk` filter: Asterisk's messages log (and the same lines through
//! syslog or the journal).
//!
//! * chan_sip: `Registration from '...' failed for 'ADDR[:PORT]' - REASON`
//!   (Wrong password, No matching peer found, Username/auth name mismatch,
//!   Device does not match ACL, Not a local domain, ...), `Call from '...'
//!   (ADDR:PORT) to extension '...' rejected because extension not found`,
//!   `hacking attempt detected 'ADDR'`;
//! * PJSIP: `Request ['METHOD'] from '...' failed for 'ADDR:PORT' (callid: ...)
//!   - Failed to authenticate | No matching endpoint found | ...`;
//! * the security log: `SecurityEvent="InvalidPassword" | "ChallengeResponseFailed"
//!   | "InvalidAccountID" | "FailedACL"` with `RemoteAddress="IPV4/UDP/ADDR/PORT"`;
//! * IAX2 (`Host ADDR failed to authenticate as`, `... (from ADDR)`), AMI
//!   (`ADDR failed to authenticate as`, `ADDR tried to authenticate with
//!   nonexistent user`), and FreePBX's `Rejecting unknown SIP connection from ADDR`.
//!
//! Asterisk quotes attacker text (From, Caller ID, Call-ID, extension) around
//! the address without escaping it. Where only text before the address is
//! the attacker's, the last candidate is taken; where attacker text lies on
//! both sides and a line holds more than one candidate, the line is refused
//! (never a guess that could ban an address the attacker chose).

use std::net::IpAddr;

use memchr::memmem;

use super::{Filter, FilterContext, LineMatch, find_all, line_time, parse_addr_port, trim_end};
use crate::event::FailureKind;
use crate::net::parse_addr;

/// The built-in Asterisk filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsteriskFilter;

/// The address in `'ADDR[:PORT]'` right after `at`, up to the closing quote.
fn quoted_addr(line: &[u8], at: usize) -> Option<(IpAddr, usize)> {
    let rest = &line[at..];
    let close = memchr::memchr(b'\'', rest)?;
    Some((parse_addr_port(&rest[..close])?, at + close + 1))
}

/// Exactly one candidate, or none (ambiguous lines are refused).
fn single<T>(mut it: impl Iterator<Item = T>) -> Option<T> {
    let first = it.next()?;
    it.next().is_none().then_some(first)
}

const SECURITY_FAILURES: &[&[u8]] = &[
    b"InvalidPassword",
    b"ChallengeResponseFailed",
    b"InvalidAccountID",
    b"FailedACL",
];

impl AsteriskFilter {
    fn find(&self, line: &[u8]) -> Option<(IpAddr, FailureKind, usize)> {
        // chan_sip registration: only the From text precedes the address.
        if let Some(start) = memmem::find(line, b"Registration from '") {
            let at = memmem::rfind(&line[start..], b"' failed for '")? + start + 14;
            let (addr, end) = quoted_addr(line, at)?;
            line[end..].starts_with(b" - ").then_some(())?;
            let kind = if line[end..].starts_with(b" - Wrong password") {
                FailureKind::RegisterAuth
            } else {
                FailureKind::UnknownUser
            };
            return Some((addr, kind, start));
        }
        // PJSIP distributor: From before, Call-ID after the address.
        if let Some(start) = memmem::find(line, b"Request ")
            .filter(|&p| memmem::find(&line[p..], b"' failed for '").is_some())
        {
            let at = single(find_all(&line[start..], b"' failed for '"))? + start + 14;
            let (addr, end) = quoted_addr(line, at)?;
            line[end..].starts_with(b" (callid: ").then_some(())?;
            let kind = if memmem::find(&line[end..], b" - Failed to authenticate").is_some()
                || memmem::find(&line[end..], b" - Error to authenticate").is_some()
            {
                // The method is Asterisk's text, before the attacker's From.
                if line[start..].starts_with(b"Request 'INVITE' from ") {
                    FailureKind::InviteAuth
                } else {
                    FailureKind::RegisterAuth
                }
            } else {
                FailureKind::UnknownUser
            };
            return Some((addr, kind, start));
        }
        // The security log: the event name is the first field.
        if let Some(p) = memmem::find(line, b"SecurityEvent=\"") {
            let name_start = p + 15;
            let name_end = memchr::memchr(b'"', &line[name_start..])? + name_start;
            let name = &line[name_start..name_end];
            if !SECURITY_FAILURES.contains(&name) {
                return None;
            }
            // Attacker text (AccountID, SessionID) may fake a RemoteAddress
            // before the real one, which Asterisk writes last of the pair.
            let r = memmem::rfind(line, b"RemoteAddress=\"")? + 15;
            let val_end = memchr::memchr(b'"', &line[r..])? + r;
            let mut parts = line[r..val_end].split(|&b| b == b'/');
            let (_family, _proto, addr) = (parts.next()?, parts.next()?, parts.next()?);
            let kind = match name {
                b"InvalidPassword" | b"ChallengeResponseFailed" => FailureKind::RegisterAuth,
                b"InvalidAccountID" => FailureKind::UnknownUser,
                _ => FailureKind::AclReject,
            };
            return Some((parse_addr(addr)?, kind, p));
        }
        // Calls to unknown extensions: Caller ID before, extension after.
        if let Some(start) = memmem::find(line, b"Call ").filter(|&p| {
            memmem::find(&line[p..], b"rejected because extension not found").is_some()
        }) {
            let addr = single(
                find_all(&line[start..], b") to extension '").filter_map(|close| {
                    let close = close + start;
                    let open = memchr::memrchr(b'(', &line[start..close])? + start;
                    parse_addr_port(&line[open + 1..close])
                }),
            )?;
            return Some((addr, FailureKind::UnknownUser, start));
        }
        // IAX2 and AMI: the address comes first in the message.
        for (marker, tails) in [
            (
                &b": Host "[..],
                &[
                    &b" failed to authenticate as '"[..],
                    b" failed MD5 authentication for '",
                ][..],
            ),
            (
                b"manager.c: ",
                &[
                    b" failed to authenticate as '",
                    b" tried to authenticate with nonexistent user '",
                ],
            ),
        ] {
            if let Some(p) = memmem::find(line, marker) {
                let a = p + marker.len();
                let sp = memchr::memchr(b' ', &line[a..])? + a;
                if tails.iter().any(|t| line[sp..].starts_with(t)) {
                    return Some((parse_addr(&line[a..sp])?, FailureKind::RegisterAuth, p));
                }
            }
        }
        // End-anchored forms: nothing after the address is the attacker's.
        let t = trim_end(line);
        for (marker, close) in [
            (&b"No registration for peer '"[..], &b")"[..]),
            (b"Rejecting unknown SIP connection from ", b"\""),
            (b"hacking attempt detected '", b"'"),
        ] {
            if let Some(start) = memmem::find(t, marker) {
                let body = t.strip_suffix(close)?;
                let from = if marker.starts_with(b"No registration") {
                    memmem::rfind(body, b"(from ")? + 6
                } else {
                    memmem::rfind(body, marker)? + marker.len()
                };
                return Some((
                    parse_addr_port(&body[from..])?,
                    FailureKind::UnknownUser,
                    start,
                ));
            }
        }
        None
    }
}

impl Filter for AsteriskFilter {
    fn name(&self) -> &str {
        "asterisk"
    }

    fn match_line(&self, line: &[u8], cx: &FilterContext) -> Option<LineMatch> {
        let (addr, kind, msg_start) = self.find(line)?;
        // The timestamp sits before the message, never in attacker text.
        Some(LineMatch::at(addr, line_time(&line[..msg_start], cx), kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Time;
    use crate::filter::tests_support::check_samples;

    fn m(line: &str) -> Option<String> {
        let cx = FilterContext {
            tz: jiff::tz::TimeZone::UTC,
            now: Time(1_124_013_600_000),
        };
        AsteriskFilter
            .match_line(line.as_bytes(), &cx)
            .map(|m| m.addr.to_string())
    }

    #[test]
    fn fail2ban_asterisk_samples() {
        // Every annotated sample line gives its host (read at test time).
        check_samples(&AsteriskFilter, "asterisk", 48);
    }

    /// Issue N4: an INVITE whose credentials failed is told apart, so
    /// `invite_weight` applies to it.
    #[test]
    fn pjsip_invite_authentication_failures_are_invite_failures() {
        let cx = FilterContext {
            tz: jiff::tz::TimeZone::UTC,
            now: Time(1_124_013_600_000),
        };
        let kind = |l: &str| AsteriskFilter.match_line(l.as_bytes(), &cx).map(|m| m.kind);
        assert_eq!(
            kind(
                "[2016-05-23 10:18:16] NOTICE[19388] res_pjsip/pjsip_distributor.c: Request 'INVITE' from '\"1000\" <sip:1000@10.0.0.1>' failed for '1.2.3.4:48336' (callid: 276666022) - Failed to authenticate"
            ),
            Some(FailureKind::InviteAuth)
        );
        // Another method, none, or an INVITE that is no authentication
        // failure: as before.
        for (l, want) in [
            (
                "[2016-05-23 10:18:16] NOTICE[19388] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:'INVITE' from@h>' failed for '1.2.3.4:48336' (callid: 1) - Failed to authenticate",
                FailureKind::RegisterAuth,
            ),
            (
                "[2016-05-23 10:18:16] NOTICE[19388] res_pjsip/pjsip_distributor.c: Request from '\"1000\" <sip:1000@10.0.0.1>' failed for '1.2.3.4:48336' (callid: 276666022) - Failed to authenticate",
                FailureKind::RegisterAuth,
            ),
            (
                "[2017-12-14 22:18:00] NOTICE[1943] res_pjsip/pjsip_distributor.c: Request 'INVITE' from '<sip:x@4.5.6.7>' failed for '1.2.3.4:43678' (callid: U) - No matching endpoint found",
                FailureKind::UnknownUser,
            ),
        ] {
            assert_eq!(kind(l), Some(want), "{l}");
        }
    }

    #[test]
    fn injected_addresses_never_win() {
        // From text before the address: the real one (last) is taken.
        assert_eq!(
            m("[2012-02-13 17:21:54] NOTICE[1638] chan_sip.c: Registration from '<sip:x' failed for '6.6.6.6' - Wrong password@h>' failed for '1.2.3.4' - Wrong password").as_deref(),
            Some("1.2.3.4")
        );
        // PJSIP with a second candidate in the Call-ID: refused, not guessed.
        assert_eq!(
            m(
                "[2016-05-23 10:18:16] NOTICE[19388] res_pjsip/pjsip_distributor.c: Request from '\"1000\" <sip:1000@10.0.0.1>' failed for '1.2.3.4:48336' (callid: x) - No matching endpoint found' failed for '6.6.6.6:1' (callid: y) - No matching endpoint found"
            ),
            None
        );
        // Extension text after the address cannot add a candidate.
        assert_eq!(
            m(
                "[2013-02-05 23:44:42] NOTICE[436] chan_sip.c: Call from '' (1.2.3.4:10836) to extension '(6.6.6.6:1) to extension 'x' rejected because extension not found in context 'default'."
            ),
            None
        );
        assert_eq!(
            m(
                "[2013-02-05 23:44:42] NOTICE[436] chan_sip.c: Registration from '<sip:1@h>' failed for 'not-an-ip' - Wrong password"
            ),
            None
        );
    }
}
