//! SIP as the sensors see it, shared by every feeder of raw SIP messages
//! (the wire sensor, HEP): reading a message's start line and the few
//! headers that matter, and pairing requests with their answers by client
//! address, Call-ID and CSeq:
//!
//! * REGISTER or INVITE sent with credentials and answered 401/407 again,
//!   or answered 403: a failed authentication (`register_auth`,
//!   `invite_auth`);
//! * REGISTER answered 404: an unknown user;
//! * a first 401/407 to a request without credentials is a challenge, not a
//!   failure (every phone gets one), and so is a 401/407 saying
//!   `stale=true` (the nonce expired, the password was right);
//! * any request whose User-Agent is a known attack tool (svmap's OPTIONS
//!   scan, svwar, svcrack): a scanner, banned at once with `ban_scanners`.
//!
//! The client address always comes from the feeder (a packet's or a HEP
//! header's), never from text of the message.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::event::{FailureEvent, FailureKind, JailId, Time};
use crate::source::scanner::ScannerList;

/// The parts of a SIP message the sensors read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SipMessage<'a> {
    /// Request method, or `None` for a response.
    pub method: Option<&'a str>,
    /// Response status.
    pub status: Option<u16>,
    /// Call-ID.
    pub call_id: &'a str,
    /// CSeq number and method.
    pub cseq: (u32, &'a str),
    /// Whether the request carries credentials.
    pub authorized: bool,
    /// Whether a challenge says `stale=true`: the credentials were right
    /// but the nonce had expired.
    pub stale: bool,
    /// User-Agent.
    pub user_agent: &'a str,
    /// The user of the To header (attacker text).
    pub to_user: &'a str,
}

/// Whether a `WWW-Authenticate`/`Proxy-Authenticate` value has the
/// parameter `stale=true` (any case, optionally quoted).
fn says_stale(value: &str) -> bool {
    value.split(',').any(|p| {
        p.trim().split_once('=').is_some_and(|(k, v)| {
            // The first parameter follows the scheme: "Digest stale=..."
            let k = k.rsplit(' ').next().unwrap_or(k);
            k.trim().eq_ignore_ascii_case("stale")
                && v.trim().trim_matches('"').eq_ignore_ascii_case("true")
        })
    })
}

/// The lines of `text` split at each CRLF, as `text.split("\r\n")` gives
/// them, but found with `memchr` (a substring searcher per message cost
/// more than the rest of the parse).
fn crlf_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        let b = r.as_bytes();
        let mut from = 0;
        while let Some(i) = memchr::memchr(b'\r', &b[from..]).map(|i| from + i) {
            if b.get(i + 1) == Some(&b'\n') {
                // Both are ASCII: slicing there keeps UTF-8 boundaries.
                rest = r.get(i + 2..);
                return r.get(..i);
            }
            from = i + 1;
        }
        rest = None;
        Some(r)
    })
}

/// Reads a SIP message's start line and the headers the sensors need.
/// `None` when it is not SIP.
pub fn parse_sip(data: &[u8]) -> Option<SipMessage<'_>> {
    let head_end = memchr::memmem::find(data, b"\r\n\r\n").unwrap_or(data.len());
    let text = std::str::from_utf8(&data[..head_end]).ok()?;
    let mut lines = crlf_lines(text);
    let first = lines.next()?;
    let mut m = SipMessage::default();
    if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
        m.status = rest.get(..3)?.parse().ok();
        m.status?;
    } else {
        let mut parts = first.split(' ');
        let method = parts.next()?;
        let _uri = parts.next()?;
        if parts.next()? != "SIP/2.0"
            || method.is_empty()
            || !method.bytes().all(|b| b.is_ascii_uppercase())
        {
            return None;
        }
        m.method = Some(method);
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        // Compared without case and without a lowered copy: this runs for
        // every header line of every packet.
        let name = name.trim();
        let is = |h: &str| name.eq_ignore_ascii_case(h);
        if is("call-id") || is("i") {
            m.call_id = value.trim();
        } else if is("cseq") {
            let mut p = value.split_whitespace();
            m.cseq = (
                p.next().and_then(|n| n.parse().ok()).unwrap_or(0),
                p.next().unwrap_or(""),
            );
        } else if is("authorization") || is("proxy-authorization") {
            m.authorized = true;
        } else if is("www-authenticate") || is("proxy-authenticate") {
            m.stale |= says_stale(value.trim());
        } else if is("user-agent") {
            m.user_agent = value.trim();
        } else if is("to") || is("t") {
            m.to_user = value
                .trim()
                .split("sip:")
                .nth(1)
                .and_then(|r| r.split(['@', '>', ';']).next())
                .unwrap_or("");
        }
    }
    (!m.call_id.is_empty()).then_some(m)
}

/// What a request looked like, kept until its answer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    authorized: bool,
}

/// Pairs requests with responses; bounded.
#[derive(Debug, Default)]
pub struct Tracker {
    pending: HashMap<(IpAddr, String, u32, String), Pending>,
    order: VecDeque<(IpAddr, String, u32, String)>,
}

/// Requests remembered while waiting for their answers.
pub const MAX_PENDING: usize = 100_000;

impl Tracker {
    /// Reads one message between `client` and the server (`from_client`:
    /// the client sent it). Returns a failure or scanner signal: the kind,
    /// whether it is a scanner, and the To user (attacker text).
    pub fn observe(
        &mut self,
        client: IpAddr,
        from_client: bool,
        m: &SipMessage<'_>,
        scanners: &ScannerList,
    ) -> Option<(FailureKind, bool, String)> {
        let key = (
            client,
            m.call_id.to_string(),
            m.cseq.0,
            m.cseq.1.to_string(),
        );
        if from_client {
            let method = m.method?;
            if !m.user_agent.is_empty() && scanners.matches(m.user_agent) {
                return Some((FailureKind::Other, true, m.to_user.to_string()));
            }
            if method == "REGISTER" || method == "INVITE" {
                if self.pending.len() >= MAX_PENDING {
                    if let Some(old) = self.order.pop_front() {
                        self.pending.remove(&old);
                    }
                }
                if self
                    .pending
                    .insert(
                        key.clone(),
                        Pending {
                            authorized: m.authorized,
                        },
                    )
                    .is_none()
                {
                    self.order.push_back(key);
                    // Answered requests leave `pending` but not `order`:
                    // without this, `order` grew by every request ever
                    // paired (a leak at thousands of REGISTERs a second).
                    // Amortized: after the sweep `order` holds at most
                    // MAX_PENDING keys, so sweeps are MAX_PENDING inserts
                    // apart at least.
                    if self.order.len() > 2 * MAX_PENDING {
                        let pending = &self.pending;
                        self.order.retain(|k| pending.contains_key(k));
                    }
                }
            }
            return None;
        }
        let status = m.status?;
        if status < 200 {
            return None; // provisional: the final answer follows
        }
        let p = self.pending.remove(&key)?;
        let invite = m.cseq.1 == "INVITE";
        let auth_kind = if invite {
            FailureKind::InviteAuth
        } else {
            FailureKind::RegisterAuth
        };
        let kind = match status {
            401 | 407 if p.authorized && !m.stale => auth_kind,
            403 => auth_kind,
            404 if !invite => FailureKind::UnknownUser,
            _ => return None,
        };
        Some((kind, false, m.to_user.to_string()))
    }

    /// Requests waiting for their answers.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The event for a signal [`Tracker::observe`] returned about `client`.
pub fn failure_event(
    jail: JailId,
    client: IpAddr,
    (kind, scanner, user): (FailureKind, bool, String),
    time: Time,
) -> FailureEvent {
    FailureEvent {
        time,
        jail,
        addr: client.to_canonical(),
        kind,
        user: (!user.is_empty()).then(|| crate::filter::user_text(user.as_bytes())),
        scanner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests answered leave no key behind: the order of pending
    /// requests stays bounded however many pairs go by.
    #[test]
    fn answered_requests_are_forgotten() {
        let scanners = ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS);
        let mut t = Tracker::default();
        let client: IpAddr = "10.0.0.2".parse().unwrap();
        for i in 0..(2 * MAX_PENDING + 10) {
            let id = i.to_string();
            let req = SipMessage {
                method: Some("REGISTER"),
                call_id: &id,
                cseq: (1, "REGISTER"),
                ..SipMessage::default()
            };
            let ans = SipMessage {
                status: Some(200),
                call_id: &id,
                cseq: (1, "REGISTER"),
                ..SipMessage::default()
            };
            assert!(t.observe(client, true, &req, &scanners).is_none());
            assert!(t.observe(client, false, &ans, &scanners).is_none());
        }
        assert_eq!(t.pending(), 0);
        assert!(t.order.len() <= 2 * MAX_PENDING, "{}", t.order.len());
    }

    #[test]
    fn crlf_lines_split_as_str_split_does() {
        for t in [
            "",
            "a",
            "a\r\nb",
            "a\r\n",
            "\r\n\r\n",
            "a\rb\nc\r\nd",
            "\r",
            "a\r\r\nb\n",
            "é\r\nü\r\n\r",
        ] {
            assert_eq!(
                crlf_lines(t).collect::<Vec<_>>(),
                t.split("\r\n").collect::<Vec<_>>(),
                "{t:?}"
            );
        }
    }

    const REG: &str = "REGISTER sip:10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5062\r\nFrom: <sip:1009@10.0.0.1>;tag=1\r\nTo: <sip:1009@10.0.0.1>\r\nCall-ID: abc\r\nCSeq: 1 REGISTER\r\nUser-Agent: Yealink\r\nContent-Length: 0\r\n\r\n";

    fn resp(code: &str, cseq: u32) -> String {
        format!(
            "SIP/2.0 {code}\r\nTo: <sip:1009@10.0.0.1>;tag=9\r\nCall-ID: abc\r\nCSeq: {cseq} REGISTER\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn with_auth(cseq: u32) -> String {
        REG.replace("CSeq: 1", &format!("CSeq: {cseq}")).replace(
            "User-Agent",
            "Authorization: Digest username=\"1009\"\r\nUser-Agent",
        )
    }

    #[test]
    fn challenge_is_not_a_failure_but_a_rejected_answer_is() {
        let sc = ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS);
        let mut t = Tracker::default();
        let c: IpAddr = "10.0.0.2".parse().unwrap();
        let m = parse_sip(REG.as_bytes()).unwrap();
        assert_eq!(m.method, Some("REGISTER"));
        assert_eq!(m.to_user, "1009");
        assert_eq!(t.observe(c, true, &m, &sc), None);
        let r = resp("401 Unauthorized", 1);
        assert_eq!(
            t.observe(c, false, &parse_sip(r.as_bytes()).unwrap(), &sc),
            None
        );
        // The retry with credentials, answered 401 again: a failure.
        let auth = with_auth(2);
        assert_eq!(
            t.observe(c, true, &parse_sip(auth.as_bytes()).unwrap(), &sc),
            None
        );
        let r = resp("401 Unauthorized", 2);
        assert_eq!(
            t.observe(c, false, &parse_sip(r.as_bytes()).unwrap(), &sc),
            Some((FailureKind::RegisterAuth, false, "1009".into()))
        );
        // 404 to a REGISTER: an unknown user.
        let reg3 = REG.replace("CSeq: 1", "CSeq: 3");
        t.observe(c, true, &parse_sip(reg3.as_bytes()).unwrap(), &sc);
        assert_eq!(
            t.observe(
                c,
                false,
                &parse_sip(resp("404 Not Found", 3).as_bytes()).unwrap(),
                &sc
            ),
            Some((FailureKind::UnknownUser, false, "1009".into()))
        );
        // An answer nobody asked for is ignored.
        assert_eq!(
            t.observe(
                c,
                false,
                &parse_sip(resp("403 Forbidden", 9).as_bytes()).unwrap(),
                &sc
            ),
            None
        );
    }

    /// Issue 20: a 401 to credentials that says `stale=true` is a new
    /// nonce for a right password (Kamailio re-challenges so), never a
    /// failure; the same 401 without it is.
    #[test]
    fn stale_challenge_to_credentials_is_never_a_failure() {
        let sc = ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS);
        let mut t = Tracker::default();
        let c: IpAddr = "10.0.0.2".parse().unwrap();
        for (n, header) in [
            "WWW-Authenticate: Digest realm=\"x\", nonce=\"n2\", stale=true, qop=\"auth\"",
            "WWW-Authenticate: Digest stale=TRUE, realm=\"x\", nonce=\"n2\"",
            "Proxy-Authenticate: Digest realm=\"x\", nonce=\"n2\", stale=\"true\"",
        ]
        .iter()
        .enumerate()
        {
            let cseq = 10 + n as u32;
            t.observe(
                c,
                true,
                &parse_sip(with_auth(cseq).as_bytes()).unwrap(),
                &sc,
            );
            let code = if header.starts_with("Proxy") {
                "407 Proxy Authentication Required"
            } else {
                "401 Unauthorized"
            };
            let r =
                resp(code, cseq).replace("Content-Length", &format!("{header}\r\nContent-Length"));
            let m = parse_sip(r.as_bytes()).unwrap();
            assert!(m.stale, "{header}");
            assert_eq!(t.observe(c, false, &m, &sc), None, "{header}");
        }
        // stale=false, or "stale" in a realm's text, is a failure as ever.
        for (n, header) in [
            "WWW-Authenticate: Digest realm=\"x\", nonce=\"n2\", stale=false",
            "WWW-Authenticate: Digest realm=\"stale=true\", nonce=\"n2\"",
        ]
        .iter()
        .enumerate()
        {
            let cseq = 20 + n as u32;
            t.observe(
                c,
                true,
                &parse_sip(with_auth(cseq).as_bytes()).unwrap(),
                &sc,
            );
            let r = resp("401 Unauthorized", cseq)
                .replace("Content-Length", &format!("{header}\r\nContent-Length"));
            assert_eq!(
                t.observe(c, false, &parse_sip(r.as_bytes()).unwrap(), &sc),
                Some((FailureKind::RegisterAuth, false, "1009".into())),
                "{header}"
            );
        }
    }

    #[test]
    fn pending_requests_are_bounded() {
        let sc = ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS);
        let mut t = Tracker::default();
        let c: IpAddr = "10.0.0.2".parse().unwrap();
        for i in 0..MAX_PENDING as u32 + 10 {
            let m = SipMessage {
                method: Some("REGISTER"),
                call_id: "x",
                cseq: (i, "REGISTER"),
                ..SipMessage::default()
            };
            t.observe(c, true, &m, &sc);
        }
        assert_eq!(t.pending(), MAX_PENDING);
    }

    #[test]
    fn scanner_user_agent_and_garbage() {
        let sc = ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS);
        let mut t = Tracker::default();
        let opt = "OPTIONS sip:100@10.0.0.1 SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\nTo: \"from ip 1.2.3.4\" <sip:100@10.0.0.1>\r\n\r\n";
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let got = t.observe(c, true, &parse_sip(opt.as_bytes()).unwrap(), &sc);
        assert_eq!(got.map(|g| g.1), Some(true));
        assert!(parse_sip(b"GET / HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_sip(b"\xff\xfe").is_none());
        assert!(parse_sip(b"SIP/2.0 40").is_none());
    }
}
