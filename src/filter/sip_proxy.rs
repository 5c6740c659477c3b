//! The `kamailio` and `opensips` filters: SIP proxies log nothing about
//! failed authentication unless told to, so these read the line docs/sources.md
//! recommends adding to the routing script, plus the stock pike flood line.
//!
//! * `AUTH FAILED: user=$fU ip=$si port=$sp method=$rm reason=R [ua=$ua]` (or
//!   with `ip=` first): a failed `auth_check`/`pv_auth_check`. `$fU` (the
//!   attacker's From user) cannot contain a space, so the first ` ip=` is the
//!   proxy's `$si`; the user agent, free text, must come last. With
//!   `method=INVITE` it is an INVITE failure (counted `invite_weight` times).
//! * `ALERT: pike blocking $rm from $fu (IP:$si:$sp)`: the stock pike line;
//!   the address is the last `(IP:...)` at the end of the line.

use memchr::memmem;

use super::{Filter, FilterContext, LineMatch, line_time, parse_addr_port, trim_end};
use crate::event::FailureKind;
use crate::net::parse_addr;

/// The built-in Kamailio / OpenSIPS filter.
#[derive(Debug, Clone)]
pub struct SipProxyFilter {
    name: &'static str,
}

impl SipProxyFilter {
    /// The `kamailio` filter.
    pub fn kamailio() -> Self {
        SipProxyFilter { name: "kamailio" }
    }

    /// The `opensips` filter (same recommended lines, its own name).
    pub fn opensips() -> Self {
        SipProxyFilter { name: "opensips" }
    }
}

impl Filter for SipProxyFilter {
    fn name(&self) -> &str {
        self.name
    }

    fn match_line(&self, line: &[u8], cx: &FilterContext) -> Option<LineMatch> {
        let line = trim_end(line);
        if let Some(p) = memmem::find(line, b"AUTH FAILED: ") {
            let a = if line[p + 13..].starts_with(b"ip=") {
                p + 16
            } else {
                memmem::find(&line[p..], b" ip=")? + p + 4
            };
            let end = memchr::memchr(b' ', &line[a..]).map_or(line.len(), |e| a + e);
            let addr = parse_addr(&line[a..end])?;
            let reason = memmem::find(&line[p..], b"reason=").map(|r| &line[p + r + 7..]);
            // `$rm` comes before the free-text user agent, and `$fU` has no
            // space: the first ` method=` is the script's.
            let invite = memmem::find(&line[p..], b" method=").is_some_and(|m| {
                let rm = &line[p + m + 8..];
                rm == b"INVITE" || rm.starts_with(b"INVITE ")
            });
            let kind = match reason {
                Some(r) if r.starts_with(b"unknown_user") => FailureKind::UnknownUser,
                _ if invite => FailureKind::InviteAuth,
                _ => FailureKind::RegisterAuth,
            };
            let user = memmem::find(&line[p..], b"user=").map(|u| {
                let u = p + u + 5;
                let e = memchr::memchr(b' ', &line[u..]).map_or(line.len(), |e| u + e);
                super::user_text(&line[u..e])
            });
            let user_agent =
                memmem::find(&line[p..], b" ua=").map(|u| super::user_text(&line[p + u + 4..]));
            return Some(LineMatch {
                addr,
                time: line_time(&line[..p], cx),
                kind,
                user,
                user_agent,
            });
        }
        if let Some(p) = memmem::find(line, b"pike blocking ") {
            let body = line.strip_suffix(b")")?;
            let a = memmem::rfind(body, b"(IP:")? + 4;
            let addr = parse_addr_port(&body[a..])?;
            return Some(LineMatch::at(
                addr,
                line_time(&line[..p], cx),
                FailureKind::Other,
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Time;

    fn m(line: &str) -> Option<LineMatch> {
        let cx = FilterContext {
            tz: jiff::tz::TimeZone::UTC,
            now: Time(1_795_621_254_000),
        };
        SipProxyFilter::kamailio().match_line(line.as_bytes(), &cx)
    }

    #[test]
    fn fixture_lines() {
        // Verbatim lines of the Kamailio fixture (../shared/notes/kamailio-fixture.md).
        let r = m(" 2(6039) NOTICE: 2026-11-25T16:25:55 <script>: AUTH FAILED: user=1009 ip=10.201.80.2 port=5060 method=REGISTER reason=wrong_password").unwrap();
        assert_eq!(
            (r.addr.to_string(), r.kind),
            ("10.201.80.2".into(), FailureKind::RegisterAuth)
        );
        assert_eq!(r.user.as_deref(), Some("1009"));
        assert!(r.time.is_some());
        let r = m(" 2(7928) NOTICE: 2026-11-25T16:29:31 <script>: AUTH FAILED: user=1000 ip=10.201.80.2 port=5060 method=REGISTER reason=unknown_user").unwrap();
        assert_eq!(r.kind, FailureKind::UnknownUser);
        let r = m(" 2(7928) ALERT: 2026-11-25T16:29:21 <script>: ALERT: pike blocking REGISTER from sip:1009@10.201.80.1 (IP:10.201.80.2:5060)").unwrap();
        assert_eq!(r.addr.to_string(), "10.201.80.2");
        assert!(m(" 1(7927) INFO: 2026-11-25T16:29:31 <script>: AUTH OK: user=1001 ip=10.201.80.3 port=5070 method=REGISTER").is_none());
        assert!(m(" 2(7928) WARNING: 2026-11-25T16:29:21 pike [pike_funcs.c:135]: pike_check_ipaddr(): PIKE - BLOCKing ip 10.201.80.2, node=0x7f92").is_none());
        // ip= first, and IPv6 in the pike line.
        assert_eq!(m("Nov 25 16:25:55 pbx opensips[12]: AUTH FAILED: ip=2001:db8::5 port=5060 method=INVITE user=x reason=wrong_password").unwrap().addr.to_string(), "2001:db8::5");
        assert_eq!(
            m("ALERT: pike blocking INVITE from sip:x@h (IP:[2001:db8::6]:5060)")
                .unwrap()
                .addr
                .to_string(),
            "2001:db8::6"
        );
    }

    /// Issue N4: an INVITE whose credentials failed is told apart, so
    /// `invite_weight` applies to it.
    #[test]
    fn invite_authentication_failures_are_invite_failures() {
        let kind = |l: &str| m(l).map(|r| r.kind);
        assert_eq!(
            kind(
                "AUTH FAILED: user=1005 ip=10.201.80.2 port=5060 method=INVITE reason=wrong_password ua=sipp"
            ),
            Some(FailureKind::InviteAuth)
        );
        assert_eq!(
            kind(
                "AUTH FAILED: ip=2001:db8::5 port=5060 method=INVITE user=x reason=wrong_password"
            ),
            Some(FailureKind::InviteAuth)
        );
        assert_eq!(
            kind(
                "AUTH FAILED: user=1005 ip=10.201.80.2 port=5060 method=INVITE reason=unknown_user"
            ),
            Some(FailureKind::UnknownUser)
        );
        // The user agent is attacker text, and comes after the method.
        assert_eq!(
            kind(
                "AUTH FAILED: user=1005 ip=10.201.80.2 port=5060 method=REGISTER reason=wrong_password ua=x method=INVITE y"
            ),
            Some(FailureKind::RegisterAuth)
        );
        assert_eq!(
            kind(
                "AUTH FAILED: user=1005method=INVITE ip=10.201.80.2 port=5060 method=REGISTER reason=wrong_password"
            ),
            Some(FailureKind::RegisterAuth)
        );
    }

    #[test]
    fn from_uri_text_cannot_choose_the_address() {
        // $fu is the attacker's; the last (IP:...) at the end is Kamailio's.
        let r = m("ALERT: pike blocking REGISTER from sip:(IP:6.6.6.6:1)@h (IP:10.201.80.2:5060)")
            .unwrap();
        assert_eq!(r.addr.to_string(), "10.201.80.2");
        let r = m("NOTICE: <script>: AUTH FAILED: user=a%20ip=6.6.6.6 ip=10.201.80.2 port=5060 method=REGISTER reason=wrong_password").unwrap();
        assert_eq!(r.addr.to_string(), "10.201.80.2");
        // The user agent comes last and may say anything.
        let r = m("NOTICE: <script>: AUTH FAILED: user=1009 ip=10.201.80.2 port=5060 method=REGISTER reason=wrong_password ua=friendly-scanner ip=6.6.6.6").unwrap();
        assert_eq!(r.addr.to_string(), "10.201.80.2");
        assert_eq!(r.user_agent.as_deref(), Some("friendly-scanner ip=6.6.6.6"));
    }
}
