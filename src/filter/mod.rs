//! Filters: one log line in, at most one failure out.
//!
//! Built-in filters are hand-written byte scanners, not regexes: they know
//! where each server writes the true source address and read it only from
//! there, never from text an attacker can shape (user names, domains, user
//! agents).

pub mod date;
pub mod freeswitch;
pub mod mod_fail2ban;

use std::net::IpAddr;

use jiff::tz::TimeZone;

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
}

/// Options a jail passes to its built-in filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterOptions {
    /// Count digest challenges as failures (`count_challenges`).
    pub count_challenges: bool,
    /// Count unanswered, challenged calls as failures (`count_abandoned`).
    pub count_abandoned: bool,
}

/// Names of the built-in filters, as accepted by a jail's `filter` key.
pub const BUILTIN_FILTERS: &[&str] = &["freeswitch", "mod-fail2ban"];

/// Builds the built-in filter `name`, or `None` when there is no such filter.
pub fn builtin(name: &str, opts: FilterOptions) -> Option<Box<dyn Filter>> {
    match name {
        "freeswitch" => Some(Box::new(freeswitch::FreeSwitchFilter::new(opts))),
        "mod-fail2ban" => Some(Box::new(mod_fail2ban::ModFail2banFilter::new(opts))),
        _ => None,
    }
}

/// Parses an address written by a server: plain IPv4 or IPv6 text, nothing
/// around it. IPv4-mapped IPv6 becomes IPv4.
pub fn parse_addr(b: &[u8]) -> Option<IpAddr> {
    if b.is_empty() || b.len() > 45 {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    s.parse::<IpAddr>().ok().map(|a| a.to_canonical())
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

/// The line's timestamp, read with the context's zone.
pub fn line_time(line: &[u8], cx: &FilterContext) -> Option<Time> {
    let (d, _) = date::find_line_date(line)?;
    date::resolve(d, &cx.tz, cx.now)
}
