//! AbuseIPDB reports (API v2, `POST /api/v2/report`, a form with `ip`,
//! `categories`, `comment` and `timestamp`, the key in the `Key` header).
//!
//! Its limits are kept here, with the time passed in: at most one report
//! per address per 15 minutes (AbuseIPDB refuses a second one with 429),
//! and its daily quota: when an answer says none is left
//! (`X-RateLimit-Remaining: 0`) or a 429 says when to come back
//! (`Retry-After` in seconds, or `X-RateLimit-Reset`, a Unix time), no
//! report is sent until then. A report is never retried: the ban it tells
//! of is in force anyway, and the next ban of the address reports again.

use std::collections::HashMap;
use std::net::IpAddr;

use super::config::AbuseIpdb;
use super::report::Report;
use super::webhook::error_text;

/// One report per address per this long.
pub const PER_ADDRESS_MS: i64 = 15 * 60 * 1000;
/// The longest pause an answer may ask for (a day: the quota's period).
pub const MAX_PAUSE_MS: i64 = 24 * 3600 * 1000;
/// Addresses whose last report is remembered. At about 50 bytes each,
/// 5 MB at most; when full and none is older than 15 minutes, a new
/// address is not reported (more than 100,000 reports in 15 minutes is
/// past any plan's quota).
pub const MAX_REMEMBERED: usize = 100_000;

/// Why a report was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The address was reported less than 15 minutes ago.
    Recent,
    /// The quota is spent; reports resume at this time (ms).
    Paused(i64),
    /// [`MAX_REMEMBERED`] addresses were reported in the last 15 minutes.
    Full,
}

/// The limits, shared by every jail's AbuseIPDB target (one account).
#[derive(Debug, Default)]
pub struct Limits {
    last: HashMap<IpAddr, i64>,
    paused_until: i64,
}

impl Limits {
    /// Whether `addr` may be reported at `now` (ms); if so, it counts as
    /// reported from now.
    pub fn admit(&mut self, addr: IpAddr, now: i64) -> Result<(), Skip> {
        if now < self.paused_until {
            return Err(Skip::Paused(self.paused_until));
        }
        if self
            .last
            .get(&addr)
            .is_some_and(|&t| now - t < PER_ADDRESS_MS && now >= t)
        {
            return Err(Skip::Recent);
        }
        if !self.last.contains_key(&addr) && self.last.len() >= MAX_REMEMBERED {
            self.last.retain(|_, t| now - *t < PER_ADDRESS_MS);
            if self.last.len() >= MAX_REMEMBERED {
                return Err(Skip::Full);
            }
        }
        self.last.insert(addr, now);
        Ok(())
    }

    /// A report that was not delivered does not count.
    pub fn forget(&mut self, addr: IpAddr, at: i64) {
        if self.last.get(&addr) == Some(&at) {
            self.last.remove(&addr);
        }
    }

    /// No report until `until` (ms), at most [`MAX_PAUSE_MS`] from `now`.
    pub fn pause(&mut self, now: i64, until: i64) {
        self.paused_until = self.paused_until.max(until.min(now + MAX_PAUSE_MS));
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// How one report ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Accepted.
    Ok,
    /// Refused for the rate limit (429); reports pause until the time
    /// given, if any.
    RateLimited(Option<i64>),
    /// Not accepted: the status or error.
    Failed(String),
}

/// When the quota comes back, from an answer's headers, in ms: `Retry-After`
/// (seconds from now), else `X-RateLimit-Reset` (a Unix time in seconds).
fn resume_at(resp: &ureq::http::Response<ureq::Body>, now: i64) -> Option<i64> {
    let header = |name: &str| -> Option<i64> {
        resp.headers()
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<i64>()
            .ok()
    };
    if let Some(s) = header("retry-after") {
        return Some(now.saturating_add(s.max(0).saturating_mul(1000)));
    }
    header("x-ratelimit-reset").map(|t| t.saturating_mul(1000))
}

/// Sends one report; `limits` learns from the answer's rate-limit headers.
pub fn send(
    agent: &ureq::Agent,
    cfg: &AbuseIpdb,
    report: &Report,
    ip: IpAddr,
    now: i64,
    limits: &std::sync::Mutex<Limits>,
) -> Sent {
    let categories: Vec<String> = cfg.categories.iter().map(|c| c.to_string()).collect();
    let categories = categories.join(",");
    let ip_text = ip.to_string();
    let comment = report.abuse_comment();
    let mut form: Vec<(&str, &str)> = vec![
        ("ip", &ip_text),
        ("categories", &categories),
        ("comment", &comment),
    ];
    let when = report.first_seen.as_deref().unwrap_or(&report.start);
    form.push(("timestamp", when));
    let resp = agent
        .post(&cfg.url)
        .header("Key", cfg.key.expose())
        .header("Accept", "application/json")
        .send_form(form);
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            // It never reached AbuseIPDB: it does not count as reported.
            match limits.lock() {
                Ok(mut l) => l.forget(ip, now),
                Err(p) => p.into_inner().forget(ip, now),
            }
            return Sent::Failed(error_text(&e));
        }
    };
    let status = resp.status().as_u16();
    let remaining = resp
        .headers()
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let resume = resume_at(&resp, now);
    let mut l = match limits.lock() {
        Ok(l) => l,
        Err(p) => p.into_inner(),
    };
    match status {
        200..=299 => {
            if let (Some(0), Some(at)) = (remaining, resume) {
                l.pause(now, at);
            }
            Sent::Ok
        }
        429 => {
            // The daily quota (nothing left, or a time to come back) pauses
            // every report; otherwise it was this address's 15 minutes,
            // which `admit` already counts.
            let quota = remaining == Some(0) || (remaining.is_none() && resume.is_some());
            let until = resume.unwrap_or(now + PER_ADDRESS_MS);
            if quota {
                l.pause(now, until);
                Sent::RateLimited(Some(until.min(now + MAX_PAUSE_MS)))
            } else {
                Sent::RateLimited(None)
            }
        }
        _ => {
            l.forget(ip, now);
            Sent::Failed(format!("HTTP {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One report per address per 15 minutes, with the time passed in; a
    /// pause holds every address; memory stays bounded.
    #[test]
    fn fifteen_minutes_per_address_and_pauses() {
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let b: IpAddr = "198.51.100.8".parse().unwrap();
        let mut l = Limits::default();
        let t0 = 1_795_621_254_000;
        assert_eq!(l.admit(a, t0), Ok(()));
        assert_eq!(l.admit(a, t0 + PER_ADDRESS_MS - 1), Err(Skip::Recent));
        assert_eq!(l.admit(b, t0 + 1), Ok(()));
        assert_eq!(l.admit(a, t0 + PER_ADDRESS_MS), Ok(()));
        // Not delivered: it may be reported again at once.
        l.forget(b, t0 + 1);
        assert_eq!(l.admit(b, t0 + 2), Ok(()));
        l.pause(t0, t0 + 3_600_000);
        let c: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(l.admit(c, t0 + 10), Err(Skip::Paused(t0 + 3_600_000)));
        assert_eq!(l.admit(c, t0 + 3_600_000), Ok(()));
        // A pause asked for past a day is cut at a day.
        l.pause(t0, i64::MAX);
        assert_eq!(l.admit(c, t0 + MAX_PAUSE_MS), Ok(()));
        // Bounded: old entries make room, recent ones do not.
        let mut l = Limits::default();
        for i in 0..MAX_REMEMBERED as u32 {
            assert_eq!(
                l.admit(IpAddr::from(std::net::Ipv4Addr::from(i)), 0),
                Ok(())
            );
        }
        let new: IpAddr = "203.0.113.1".parse().unwrap();
        assert_eq!(l.admit(new, 1), Err(Skip::Full));
        assert_eq!(l.admit(new, PER_ADDRESS_MS), Ok(()));
        assert_eq!(l.len(), 1);
    }
}
