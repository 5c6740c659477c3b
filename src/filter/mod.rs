//! Filters: one log line in, at most one failure out.
//!
//! Built-in filters are hand-written byte scanners, not regexes: they know
//! where each server writes the true source address and read it only from
//! there, never from text an attacker can shape (user names, domains, user
//! agents).

pub mod asterisk;
pub mod config;
mod count;
pub mod date;
pub mod f2b;
pub mod freeswitch;
mod hostile;
pub mod mod_fail2ban;
pub mod sip_proxy;
pub mod sshd;
pub mod test_filter;

use std::net::IpAddr;

use jiff::tz::TimeZone;

use crate::net::parse_addr;

use crate::event::{FailureKind, Time};

/// What a filter found on one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineMatch {
    /// The offending source address.
    pub addr: IpAddr,
    /// The line's own timestamp, when it has one.
    pub time: Option<Time>,
    /// What kind of failure the line reports.
    pub kind: FailureKind,
    /// The user name tried (attacker-controlled text).
    pub user: Option<Box<str>>,
    /// The client's user agent, when the line has one (attacker-controlled;
    /// matched against `[scanners] user_agents`).
    pub user_agent: Option<Box<str>>,
}

impl LineMatch {
    /// A match with no user name.
    pub fn at(addr: IpAddr, time: Option<Time>, kind: FailureKind) -> LineMatch {
        LineMatch {
            addr,
            time,
            kind,
            user: None,
            user_agent: None,
        }
    }
}

/// What a filter needs besides the line: how to read zone-less dates.
#[derive(Clone, Debug)]
pub struct FilterContext {
    /// Zone of timestamps that carry none (the jail's `logtimezone`).
    pub tz: TimeZone,
    /// The current time, for year-less dates.
    pub now: Time,
}

/// A line filter. Implementations are pure and cheap to call per line.
pub trait Filter: Send + Sync {
    /// The filter's name as written in configuration.
    fn name(&self) -> &str;
    /// Examines one line (without its newline) and reports a failure, if any.
    fn match_line(&self, line: &[u8], cx: &FilterContext) -> Option<LineMatch>;
    /// Literals one of which every line this filter matches holds, for a
    /// search across a whole buffer (`test-filter`); empty when there is
    /// no such set. Listing too few would lose matches: only a filter that
    /// rejects every line without one of them may name them.
    fn required_literals(&self) -> &'static [&'static [u8]] {
        &[]
    }
    /// Examines a line whose time is known (a journal entry's): the match
    /// takes that time.
    fn match_dated(&self, line: &[u8], cx: &FilterContext, time: Time) -> Option<LineMatch> {
        self.match_line(line, cx).map(|m| LineMatch {
            time: Some(time),
            ..m
        })
    }
}

/// Options a jail passes to its built-in filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterOptions {
    /// Count digest challenges as failures (`count_challenges`).
    pub count_challenges: bool,
    /// Count unanswered, challenged calls as failures (`count_abandoned`).
    pub count_abandoned: bool,
    /// Leave the user tried out of each match (`test-filter`, which never
    /// shows it: one allocation less per matched line). Filters that read
    /// no user ignore it.
    pub without_users: bool,
}

/// Names of the built-in filters, as accepted by a jail's `filter` key.
pub const BUILTIN_FILTERS: &[&str] = &[
    "freeswitch",
    "mod-fail2ban",
    "asterisk",
    "kamailio",
    "opensips",
    "sshd",
];

/// Builds the built-in filter `name`, or `None` when there is no such filter.
pub fn builtin(name: &str, opts: FilterOptions) -> Option<Box<dyn Filter>> {
    match name {
        "freeswitch" => Some(Box::new(freeswitch::FreeSwitchFilter::new(opts))),
        "mod-fail2ban" => Some(Box::new(mod_fail2ban::ModFail2banFilter::new(opts))),
        "asterisk" => Some(Box::new(asterisk::AsteriskFilter)),
        "kamailio" => Some(Box::new(sip_proxy::SipProxyFilter::kamailio())),
        "opensips" => Some(Box::new(sip_proxy::SipProxyFilter::opensips())),
        "sshd" => Some(Box::new(sshd::SshdFilter)),
        _ => None,
    }
}

/// Parses an address as servers print it with a port: `192.0.2.1`,
/// `192.0.2.1:5060`, `[2001:db8::1]:5060`, `2001:db8::1`, optionally after a
/// transport prefix (`UDP:`, `TCP:`, `TLS:`, `WS:`, `WSS:`).
pub fn parse_addr_port(b: &[u8]) -> Option<IpAddr> {
    let mut b = b;
    for t in [
        &b"UDP:"[..],
        b"TCP:",
        b"TLS:",
        b"WSS:",
        b"WS:",
        b"udp:",
        b"tcp:",
        b"tls:",
    ] {
        if let Some(rest) = b.strip_prefix(t) {
            b = rest;
            break;
        }
    }
    if let Some(rest) = b.strip_prefix(b"[") {
        let close = memchr::memchr(b']', rest)?;
        let tail = &rest[close + 1..];
        if !(tail.is_empty()
            || (tail[0] == b':' && tail.len() > 1 && tail[1..].iter().all(u8::is_ascii_digit)))
        {
            return None;
        }
        return parse_addr(&rest[..close]);
    }
    if let Some(a) = parse_addr(b) {
        return Some(a);
    }
    // IPv4 with a port: exactly one colon.
    let colon = memchr::memrchr(b':', b)?;
    let (host, port) = (&b[..colon], &b[colon + 1..]);
    if port.is_empty()
        || !port.iter().all(u8::is_ascii_digit)
        || memchr::memchr(b':', host).is_some()
    {
        return None;
    }
    parse_addr(host).filter(IpAddr::is_ipv4)
}

/// Cuts trailing whitespace and carriage returns off a line.
pub fn trim_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && line[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    &line[..end]
}

/// Text for a user name field: invalid UTF-8 is replaced, length is capped.
pub fn user_text(b: &[u8]) -> Box<str> {
    const MAX_USER: usize = 256;
    let b = &b[..b.len().min(MAX_USER)];
    String::from_utf8_lossy(b).into()
}

/// Every start offset of `needle` in `hay`.
pub fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    memchr::memmem::find_iter(hay, needle)
}

/// The line's timestamp, read with the context's zone.
pub fn line_time(line: &[u8], cx: &FilterContext) -> Option<Time> {
    let (d, _) = date::find_line_date(line)?;
    date::resolve(d, &cx.tz, cx.now)
}

/// Test helpers: fail2ban's annotated samples, read at test time from
/// `../shared` (never copied into this repository).
#[cfg(test)]
pub mod tests_support {
    use super::{Filter, FilterContext};
    use crate::event::Time;

    /// Runs `filter` over fail2ban's sample log `name`, for lines under the
    /// default options (`{}`), and returns the lines where the outcome or the
    /// host differs from the annotation (skipped, with a note, when the
    /// corpus is absent).
    pub fn sample_mismatches(filter: &dyn Filter, name: &str) -> Option<(usize, Vec<String>)> {
        let path = format!(
            "{}/../shared/corpus/fail2ban-1.1.2.dev1/tests/files/logs/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let Ok(text) = std::fs::read_to_string(&path) else {
            assert!(
                !crate::test_support::need("corpus"),
                "{path} is missing from the corpus"
            );
            return None;
        };
        let cx = FilterContext {
            tz: jiff::tz::TimeZone::UTC,
            now: Time(1_124_013_600_000),
        };
        let mut default_opts = true;
        let mut expect: Option<serde_json::Value> = None;
        let (mut checked, mut bad) = (0, Vec::new());
        for line in text.lines() {
            if let Some(opts) = line.strip_prefix("# filterOptions: ") {
                let v: serde_json::Value = serde_json::from_str(opts).unwrap_or_default();
                let sets: Vec<serde_json::Value> = v.as_array().cloned().unwrap_or_else(|| vec![v]);
                default_opts = sets.iter().any(|s| {
                    s.as_object()
                        .is_some_and(|o| o.keys().all(|k| k.starts_with("test.") || k == "logtype"))
                });
                continue;
            }
            if let Some(json) = line.strip_prefix("# failJSON: ") {
                expect = serde_json::from_str(json).ok();
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some(want) = expect.take() else { continue };
            if !default_opts || want.get("constraint").is_some() {
                continue;
            }
            checked += 1;
            let got = filter
                .match_line(line.as_bytes(), &cx)
                .map(|m| m.addr.to_string());
            let want_host = if want["match"].as_bool() == Some(true) {
                want["host"].as_str().map(String::from)
            } else {
                None
            };
            if got != want_host {
                bad.push(format!("want {want_host:?} got {got:?}: {line}"));
            }
        }
        Some((checked, bad))
    }

    /// Asserts that every sample line under the default options matches its
    /// annotation, and that at least `min` lines were checked.
    pub fn check_samples(filter: &dyn Filter, name: &str, min: usize) {
        let Some((checked, bad)) = sample_mismatches(filter, name) else {
            return;
        };
        assert!(
            bad.is_empty(),
            "{} mismatches:\n{}",
            bad.len(),
            bad.join("\n")
        );
        assert!(checked >= min, "only {checked} sample lines checked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_zone() {
        let a = |s: &str| parse_addr(s.as_bytes()).map(|a| a.to_string());
        assert_eq!(a("fe80::1%eth0").as_deref(), Some("fe80::1"));
        assert_eq!(a("fe80::1%2").as_deref(), Some("fe80::1"));
        assert_eq!(a("2001:db8::7%eth0.100").as_deref(), Some("2001:db8::7"));
        assert_eq!(a("::ffff:192.0.2.1%eth0").as_deref(), Some("192.0.2.1"));
        for bad in [
            "192.0.2.1%eth0",
            "fe80::1%",
            "fe80::1%a/b",
            "fe80::1%a b",
            "fe80::1%eth0%eth1",
            "fe80::1%sixteen-chars-xx",
            "%eth0",
        ] {
            assert_eq!(a(bad), None, "{bad}");
        }
        let p = |s: &str| parse_addr_port(s.as_bytes()).map(|a| a.to_string());
        assert_eq!(p("[fe80::1%eth0]:5060").as_deref(), Some("fe80::1"));
        assert_eq!(p("UDP:[fe80::1%eth0]:5060").as_deref(), Some("fe80::1"));
    }
}
