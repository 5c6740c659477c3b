//! The `mod-fail2ban` filter: the log FreeSWITCH's mod_fail2ban writes.
//!
//! * `A registration failed user[U] ip[ADDR] at[TIME]`: a failure (wrong
//!   password, unknown user; also an INVITE whose credentials failed, with the
//!   dialled number as U). The line does not say which: `invite_weight`
//!   cannot apply to this log (the Event Socket or freeswitch.log tell).
//! * `A registration was attempted ...`: not a failure.
//! * `Abandoned call from  user[U] ip[ADDR] at[TIME]`: a challenged INVITE never
//!   answered; real phones cause these too, so it counts only with
//!   `count_abandoned = true`.
//!
//! U is attacker text and may itself contain `] ip[1.2.3.4] at[`: the line is
//! read from its end, where mod_fail2ban writes the true `ip[..] at[..]`.
//! TIME carries mod_fail2ban's offset, including its broken half-hour form
//! (`+051800` for +05:30).

use jiff::civil::{Date, DateTime, Time as CivilTime};
use jiff::tz::{Offset, TimeZone};
use memchr::memmem;

use super::date::{local_to_time, parse_offset, read_at, resolve};
use super::{Filter, FilterContext, FilterOptions, LineMatch, trim_end, user_text};
use crate::event::{FailureKind, Time};
use crate::net::parse_addr;

/// The built-in mod_fail2ban log filter.
#[derive(Debug, Clone)]
pub struct ModFail2banFilter {
    opts: FilterOptions,
}

impl ModFail2banFilter {
    /// A filter with the jail's options (`count_abandoned`).
    pub fn new(opts: FilterOptions) -> Self {
        ModFail2banFilter { opts }
    }
}

/// Reads `2026-11-25T15:40:54.659156+0000`; without a usable offset the
/// jail's zone applies.
fn read_stamp(b: &[u8], cx: &FilterContext) -> Option<Time> {
    let (d, end) = read_at(b, 0)?;
    match parse_offset(&b[end..]).and_then(|s| Offset::from_seconds(s).ok()) {
        Some(off) => {
            let (h, m, s) = d.hms;
            let dt = DateTime::from_parts(
                Date::new(d.year?, d.month, d.day).ok()?,
                CivilTime::new(h, m, s.min(59), d.nanos).ok()?,
            );
            local_to_time(dt, &TimeZone::fixed(off), cx.now)
        }
        None => resolve(d, &cx.tz, cx.now),
    }
}

impl Filter for ModFail2banFilter {
    fn name(&self) -> &str {
        "mod-fail2ban"
    }

    fn match_line(&self, line: &[u8], cx: &FilterContext) -> Option<LineMatch> {
        let line = trim_end(line);
        let start = line.iter().position(|c| !c.is_ascii_whitespace())?;
        let body = &line[start..];
        let (kind, rest) = if let Some(r) = body.strip_prefix(b"A registration failed ") {
            (FailureKind::RegisterAuth, r)
        } else if let Some(r) = body.strip_prefix(b"Abandoned call from") {
            if !self.opts.count_abandoned {
                return None;
            }
            (FailureKind::Abandoned, r.trim_ascii_start())
        } else {
            return None;
        };
        let rest = rest.strip_prefix(b"user[")?;
        // From the end: `... ip[ADDR] at[TIME]`.
        let inner = rest.strip_suffix(b"]")?;
        let at = memmem::rfind(inner, b" at[")?;
        let stamp = &inner[at + 4..];
        let before_at = inner[..at].strip_suffix(b"]")?;
        let ip = memmem::rfind(before_at, b" ip[")?;
        let addr = parse_addr(&before_at[ip + 4..])?;
        let user = before_at[..ip].strip_suffix(b"]").map(user_text);
        Some(LineMatch {
            addr,
            time: read_stamp(stamp, cx),
            kind,
            user,
            user_agent: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> FilterContext {
        FilterContext {
            tz: TimeZone::UTC,
            now: Time(1_795_621_254_000),
        }
    }

    fn m(opts: FilterOptions, line: &str) -> Option<LineMatch> {
        ModFail2banFilter::new(opts).match_line(line.as_bytes(), &cx())
    }

    #[test]
    fn registration_failed() {
        let r = m(
            FilterOptions::default(),
            "A registration failed user[1009] ip[10.77.0.2] at[2026-11-25T15:40:54.659156+0000]",
        )
        .unwrap();
        assert_eq!(r.addr.to_string(), "10.77.0.2");
        assert_eq!(r.user.as_deref(), Some("1009"));
        assert_eq!(r.time, Some(Time(1_795_621_254_659)));
        assert_eq!(r.kind, FailureKind::RegisterAuth);
    }

    #[test]
    fn attempted_is_not_a_failure() {
        assert_eq!(
            m(
                FilterOptions::default(),
                "A registration was attempted user[1009] ip[10.77.0.2] at[2026-11-25T15:40:54.659156+0000]"
            ),
            None
        );
        assert_eq!(m(FilterOptions::default(), "Fail2ban was started"), None);
    }

    #[test]
    fn abandoned_counts_only_when_asked() {
        let line =
            "Abandoned call from  user[sipp] ip[10.77.0.2] at[2026-11-25T15:41:44.179158+0000]";
        assert_eq!(m(FilterOptions::default(), line), None);
        let r = m(
            FilterOptions {
                count_abandoned: true,
                ..Default::default()
            },
            line,
        )
        .unwrap();
        assert_eq!(
            (r.kind, r.addr.to_string()),
            (FailureKind::Abandoned, "10.77.0.2".to_string())
        );
    }

    #[test]
    fn half_hour_offset_bug_and_normal_offsets() {
        let t = |s: &str| {
            m(
                FilterOptions::default(),
                &format!("A registration failed user[1] ip[192.0.2.1] at[{s}]"),
            )
            .unwrap()
            .time
            .unwrap()
            .as_secs()
        };
        let utc = t("2026-11-25T15:40:54.000000+0000");
        assert_eq!(t("2026-11-25T21:10:54.000000+051800"), utc);
        assert_eq!(t("2026-11-25T21:10:54.000000+0530"), utc);
        assert_eq!(t("2026-11-25T12:10:54.000000-031800"), utc);
        assert_eq!(t("2026-11-25T16:40:54.000000+0100"), utc);
    }

    #[test]
    fn injected_user_cannot_choose_the_address() {
        let r = m(
            FilterOptions::default(),
            "A registration failed user[x] ip[1.2.3.4] at[2026-11-25T15:40:54.659156+0000] ip[10.77.0.2] at[2026-11-25T15:40:54.659156+0000]",
        )
        .unwrap();
        assert_eq!(r.addr.to_string(), "10.77.0.2");
        assert_eq!(
            m(
                FilterOptions::default(),
                "A registration failed user[x] ip[1.2.3.4] at[junk] trailing"
            ),
            None
        );
    }

    #[test]
    fn corpus_fail2ban_log() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/freeswitch-1.10.12/fail2ban.log"
        );
        let Ok(text) = std::fs::read(path) else {
            assert!(
                !crate::test_support::need("corpus"),
                "{path} is missing from the corpus"
            );
            return;
        };
        let f = ModFail2banFilter::new(FilterOptions::default());
        let hits: Vec<LineMatch> = text
            .split(|&b| b == b'\n')
            .filter_map(|l| f.match_line(l, &cx()))
            .collect();
        assert_eq!(hits.len(), 13);
        assert!(
            hits.iter()
                .all(|h| h.addr.to_string() == "10.77.0.2" && h.time.is_some())
        );
    }
}
