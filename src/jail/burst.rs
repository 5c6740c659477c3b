//! The machine-speed rule: `burst = { failures = 3, within = "2s" }` bans an
//! address at once when that many failures arrive within that window,
//! whatever `maxretry` says. A person with a stale password fails every
//! 30-60 s; a scanner fails several times a second, and one that hides its
//! user agent would otherwise get `maxretry` free guesses.
//!
//! The rule reads the failure times the jail already keeps (the newest
//! `maxretry` of them), so it costs no memory per tracked address. On by
//! default for SIP jails ([`is_sip_jail`]), off for the others.

use serde::Serialize;

use super::config::JailConfig;
use super::times::Times;
use crate::duration::Duration;
use crate::filter::config::is_sip_filter;

/// The default for SIP jails: 3 failures within 2 s.
pub const DEFAULT_BURST: Burst = Burst {
    failures: 3,
    within: Duration(2),
};

/// Most `burst.failures`: the rule is read from the times kept for
/// `maxretry`, and no jail sensibly has more.
pub const MAX_BURST_FAILURES: u32 = 1000;

/// A burst rule in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Burst {
    /// Failures that ban at once ...
    pub failures: u32,
    /// ... when they arrive this close together (a failure exactly
    /// `within` before the newest is outside, as at `findtime`'s edge).
    pub within: Duration,
}

/// `burst` as a jail writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BurstKey {
    /// `burst = false`.
    Off,
    /// `burst = true` (the default rule) or a table.
    On(Burst),
}

/// Why a `burst` value is refused.
#[derive(Debug, thiserror::Error)]
pub enum BurstError {
    /// Neither a boolean nor a table.
    #[error("burst must be false, true or a table such as {{ failures = 3, within = \"2s\" }}")]
    Shape,
    /// A key the table does not have.
    #[error("burst has no key `{0}`; its keys are `failures` and `within`")]
    Unknown(String),
    /// `failures` out of range.
    #[error(
        "burst.failures must be 2 to {MAX_BURST_FAILURES} (1 would ban at every first failure: that is maxretry = 1)"
    )]
    Failures,
    /// `within` not a duration.
    #[error("burst.within: {0}")]
    Within(String),
    /// `within` of 0.
    #[error("burst.within must be at least 1s")]
    ZeroWithin,
    /// `within` longer than `findtime`: failures older than `findtime` are
    /// not kept.
    #[error(
        "burst.within ({within}) is longer than findtime ({findtime}); a burst is meant to be much shorter than the counting window"
    )]
    LongerThanFindtime {
        /// `burst.within`.
        within: Duration,
        /// The jail's `findtime`.
        findtime: Duration,
    },
}

/// Reads a `burst` value: `false`, `true`, or `{ failures = N, within = D }`
/// (either key may be left out for its default).
pub fn parse_burst(v: &toml::Value) -> Result<BurstKey, BurstError> {
    let t = match v {
        toml::Value::Boolean(false) => return Ok(BurstKey::Off),
        toml::Value::Boolean(true) => return Ok(BurstKey::On(DEFAULT_BURST)),
        toml::Value::Table(t) => t,
        _ => return Err(BurstError::Shape),
    };
    let mut b = DEFAULT_BURST;
    for (k, v) in t {
        match k.as_str() {
            "failures" => {
                b.failures = v
                    .as_integer()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| (2..=MAX_BURST_FAILURES).contains(n))
                    .ok_or(BurstError::Failures)?;
            }
            "within" => {
                b.within = match v {
                    toml::Value::String(s) => crate::duration::parse_duration(s)
                        .map_err(|e| BurstError::Within(e.to_string()))?,
                    toml::Value::Integer(n) => u64::try_from(*n)
                        .map(Duration)
                        .map_err(|_| BurstError::Within(format!("{n} is negative")))?,
                    _ => {
                        return Err(BurstError::Within(
                            "expected a duration such as \"2s\"".into(),
                        ));
                    }
                };
                if b.within.0 == 0 {
                    return Err(BurstError::ZeroWithin);
                }
            }
            other => return Err(BurstError::Unknown(other.chars().take(64).collect())),
        }
    }
    Ok(BurstKey::On(b))
}

/// Checks a rule against the jail's `findtime`.
pub fn check_burst(key: BurstKey, findtime: Duration) -> Result<BurstKey, BurstError> {
    match key {
        BurstKey::On(b) if b.within > findtime => Err(BurstError::LongerThanFindtime {
            within: b.within,
            findtime,
        }),
        k => Ok(k),
    }
}

/// Whether a jail counts SIP failures, decided by its filter family: a jail
/// whose filter is a SIP one (freeswitch, mod-fail2ban, asterisk, kamailio,
/// opensips, and fail2ban filter files of those names) is; a jail with
/// another filter (sshd, any other fail2ban filter) is not, unless it also
/// reads a SIP source; a jail with no filter reads SIP sources only (the
/// Event Socket, the manager interface, the wire sensor, and any later SIP
/// source) and is.
pub fn is_sip_jail(jc: &JailConfig) -> bool {
    let filter = jc
        .filter
        .as_deref()
        .or_else(|| jc.fail2ban_filter.as_ref().map(|(_, spec)| spec.as_str()));
    match filter {
        None => true,
        Some(f) => {
            is_sip_filter(f)
                || !jc.esl.is_empty()
                || !jc.ami.is_empty()
                || jc.wire.is_some()
                || jc.hep.is_some()
        }
    }
}

/// The rule a jail counts with: as written, or the default for its family.
pub fn resolve(jc: &JailConfig) -> Option<Burst> {
    match jc.burst {
        Some(BurstKey::Off) => None,
        Some(BurstKey::On(b)) => Some(b),
        None => is_sip_jail(jc).then_some(DEFAULT_BURST),
    }
}

impl super::Jail {
    /// Whether `addr`'s failure at `t` (already counted, `weight` times)
    /// completes a burst.
    pub(super) fn burst_reached(&self, addr: std::net::IpAddr, t: i64, weight: u32) -> bool {
        match (
            &self.policy.burst,
            self.failing.get(&super::Key::from(addr)),
        ) {
            (Some(b), Some(times)) => b.reached(times, t, weight),
            _ => false,
        }
    }
}

impl Burst {
    /// Whether the failure at `t` completes a burst among `times` (the
    /// address's kept failure times, this one included `weight` times).
    /// The failure itself counts once: one failure is no burst, however
    /// much it weighs (earlier ones keep their weight).
    pub(super) fn reached(&self, times: &Times, t: i64, weight: u32) -> bool {
        let n = usize::try_from(self.failures).unwrap_or(usize::MAX);
        let copies = usize::try_from(weight.max(1)).unwrap_or(usize::MAX);
        let near = times.near(t, self.within.as_millis());
        near.saturating_sub(copies - 1) >= n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::BanReason;
    use crate::duration::BanTime;
    use crate::event::{FailureEvent, FailureKind, JailId, Time};
    use crate::jail::tests::policy;
    use crate::jail::{BanHistory, Jail, Outcome};

    /// maxretry 5 in 10 minutes, and the default burst.
    fn sip_jail() -> Jail {
        let mut p = policy(5, 600, BanTime::For(Duration(3600)));
        p.burst = Some(DEFAULT_BURST);
        Jail::new(JailId(0), "sip", p)
    }

    fn at(addr: &str, ms: i64) -> FailureEvent {
        FailureEvent {
            time: Time(ms),
            jail: JailId(0),
            addr: addr.parse().unwrap(),
            kind: FailureKind::RegisterAuth,
            user: None,
            scanner: false,
        }
    }

    /// Feeds failures at `times` (ms); returns the outcome of each.
    fn feed(j: &mut Jail, addr: &str, times: &[i64]) -> Vec<Outcome> {
        let h = BanHistory::default();
        times
            .iter()
            .map(|&ms| j.record(&at(addr, ms), Time(ms), &h))
            .collect()
    }

    fn ban_reason(o: &Outcome) -> Option<(BanReason, u32)> {
        match o {
            Outcome::Ban(b) => Some((b.reason, b.failures)),
            _ => None,
        }
    }

    /// Three failures inside 2 s ban at the third, whatever maxretry (5)
    /// says; the ban says why.
    #[test]
    fn a_burst_bans_at_once_whatever_maxretry_says() {
        let mut j = sip_jail();
        let o = feed(&mut j, "198.51.100.30", &[10_000, 10_400, 10_900]);
        assert_eq!(o[0], Outcome::Found { count: 1 });
        assert_eq!(o[1], Outcome::Found { count: 2 });
        assert_eq!(ban_reason(&o[2]), Some((BanReason::Burst, 3)));
        let Outcome::Ban(b) = &o[2] else { panic!() };
        assert_eq!(
            b.to_string(),
            "[sip] Ban 198.51.100.30 (3 failures in a burst, 1h)"
        );
        assert_eq!(j.failing_count(), 0);
    }

    /// One failure is no burst, however much it weighs: a phone with a
    /// stale password placing one call (an INVITE failure, weighing
    /// `invite_weight` = 3) is not banned at once for "3 failures in a
    /// burst"; a second INVITE failure within the window is a burst.
    /// (Before, the weight's copies alone made the burst.)
    #[test]
    fn one_weighted_failure_is_no_burst() {
        let mut j = sip_jail();
        j.policy.invite_weight = 3;
        let h = BanHistory::default();
        let mut e = at("198.51.100.35", 10_000);
        e.kind = FailureKind::InviteAuth;
        assert_eq!(j.record(&e, Time(10_000), &h), Outcome::Found { count: 3 });
        // Weight 2: the second INVITE failure within 2 s bans for its burst.
        let mut j = sip_jail();
        j.policy.invite_weight = 2;
        j.policy.maxretry = 10;
        let mut e = at("198.51.100.36", 10_000);
        e.kind = FailureKind::InviteAuth;
        assert_eq!(j.record(&e, Time(10_000), &h), Outcome::Found { count: 2 });
        e.time = Time(10_500);
        assert_eq!(
            ban_reason(&j.record(&e, Time(10_500), &h)),
            Some((BanReason::Burst, 4))
        );
    }

    /// A phone with a stale password, failing once a minute, is banned only
    /// at maxretry, for its failures.
    #[test]
    fn a_phone_failing_once_a_minute_is_banned_only_at_maxretry() {
        let mut j = sip_jail();
        let o = feed(
            &mut j,
            "198.51.100.31",
            &[0, 60_000, 120_000, 180_000, 240_000],
        );
        for (i, x) in o[..4].iter().enumerate() {
            assert_eq!(
                *x,
                Outcome::Found {
                    count: i as u32 + 1
                }
            );
        }
        assert_eq!(ban_reason(&o[4]), Some((BanReason::Failures, 5)));
    }

    /// The window is open at its far end, as findtime's is: a failure
    /// exactly `within` before the newest does not count with it; a
    /// millisecond later it does.
    #[test]
    fn exactly_at_the_window_boundary() {
        let mut j = sip_jail();
        let o = feed(&mut j, "198.51.100.32", &[0, 1_000, 2_000]);
        assert_eq!(
            o[2],
            Outcome::Found { count: 3 },
            "0 and 2000 are 2 s apart"
        );
        // 1000, 2000 and 2999 are within 2 s of each other.
        let o = feed(&mut j, "198.51.100.32", &[2_999]);
        assert_eq!(ban_reason(&o[0]), Some((BanReason::Burst, 4)));
        let mut j = sip_jail();
        let o = feed(&mut j, "198.51.100.33", &[0, 1_000, 1_999]);
        assert_eq!(ban_reason(&o[2]), Some((BanReason::Burst, 3)));
    }

    /// A burst from an `ignoreip` address is never counted nor banned.
    #[test]
    fn burst_from_an_ignored_address_bans_nothing() {
        let mut j = sip_jail();
        let o = feed(&mut j, "192.0.2.40", &[0, 1, 2, 3, 4, 5, 6]);
        assert!(o.iter().all(|x| *x == Outcome::Ignored), "{o:?}");
        assert_eq!(j.counters().total_banned, 0);
    }

    /// `burst = false` (None): fast failures wait for maxretry. A burst
    /// longer than maxretry never comes first.
    #[test]
    fn off_or_longer_than_maxretry_leaves_maxretry_alone() {
        let mut j = Jail::new(JailId(0), "ssh", policy(5, 600, BanTime::For(Duration(60))));
        let o = feed(&mut j, "198.51.100.34", &[0, 1, 2, 3, 4]);
        assert_eq!(o[3], Outcome::Found { count: 4 });
        assert_eq!(ban_reason(&o[4]), Some((BanReason::Failures, 5)));
        let mut p = policy(3, 600, BanTime::For(Duration(60)));
        p.burst = Some(Burst {
            failures: 4,
            within: Duration(2),
        });
        let mut j = Jail::new(JailId(0), "sip", p);
        let o = feed(&mut j, "198.51.100.35", &[0, 1, 2]);
        assert_eq!(ban_reason(&o[2]), Some((BanReason::Failures, 3)));
    }

    /// A phone that registered (trusted) keeps its allowance; weak signals
    /// (`wrong_call_state`) never make a burst; failures that arrive late,
    /// dated before their neighbours, still count with them.
    #[test]
    fn trusted_weak_and_late_failures() {
        let mut p = policy(5, 600, BanTime::For(Duration(60)));
        p.burst = Some(DEFAULT_BURST);
        p.trust_registered = Some(Duration(86_400));
        p.trusted_maxretry = 6;
        p.wrong_call_state_maxretry = 10;
        let mut j = Jail::new(JailId(0), "sip", p);
        let h = BanHistory::default();
        let mut ok = at("198.51.100.36", 0);
        ok.kind = FailureKind::Registered;
        assert_eq!(j.record(&ok, Time(0), &h), Outcome::Trusted);
        let o = feed(&mut j, "198.51.100.36", &[10, 20, 30, 40]);
        assert_eq!(o[3], Outcome::Found { count: 4 }, "trusted: no burst");
        let mut w = at("198.51.100.37", 0);
        w.kind = FailureKind::WrongCallState;
        for i in 1..=4 {
            assert_eq!(
                j.record(&w, Time(i), &h),
                Outcome::Found { count: i as u32 }
            );
        }
        // Arrival order 5000, 3500, 4000: all within 2 s of each other.
        let o = feed(&mut j, "198.51.100.38", &[5_000, 3_500]);
        assert_eq!(o[1], Outcome::Found { count: 2 });
        let o = feed(&mut j, "198.51.100.38", &[4_000]);
        assert_eq!(ban_reason(&o[0]), Some((BanReason::Burst, 3)));
    }

    /// The rule keeps nothing per address: it reads the failure times the
    /// jail keeps for maxretry, so a tracked address's table slot stays 32
    /// bytes (W4: bytes per tracked address).
    #[test]
    fn no_state_per_address() {
        assert_eq!(std::mem::size_of::<(crate::jail::Key, Times)>(), 32);
        assert_eq!(std::mem::size_of::<Times>(), 16);
    }

    /// The corpus at FreeSWITCH's pace (each event's own time from the
    /// capture): svcrack's wrong passwords, its user agent hidden (the
    /// scanner flag cleared, `ban_scanners` off), are banned at the 3rd
    /// failure, not at maxretry (5); without the burst rule at the 5th.
    #[test]
    fn corpus_replay_at_freeswitchs_pace_bans_at_the_third_failure() {
        use crate::source::esl::{EventMapper, FrameBuffer};
        let Some(raw) = crate::test_support::corpus_file("freeswitch-1.10.12/esl-plain.raw") else {
            return;
        };
        let mapper = EventMapper {
            jail: JailId(0),
            window: crate::source::Window::new(Duration(600)),
            scanners: std::sync::Arc::new(crate::source::scanner::ScannerList::new(
                crate::source::scanner::DEFAULT_SCANNERS,
            )),
        };
        // Half-way through the capture: every event keeps its own time.
        let now = Time(1_795_621_291_000);
        let mut events = Vec::new();
        let mut fb = FrameBuffer::default();
        fb.extend(&raw);
        let mut hb = false;
        fb.drain(|f| {
            if let Some(mut e) = mapper.map(&f, now, &mut hb) {
                e.scanner = false;
                events.push(e);
            }
        })
        .unwrap();
        let failures: Vec<&FailureEvent> = events
            .iter()
            .filter(|e| e.kind == FailureKind::RegisterAuth)
            .collect();
        assert!(failures.len() >= 5, "{} failures", failures.len());
        // svcrack's pace: its first three failures lie within 2 s.
        assert!(failures[2].time.0 - failures[0].time.0 < 2_000);
        for (burst, banned_at, reason) in [
            (Some(DEFAULT_BURST), 3, BanReason::Burst),
            (None, 5, BanReason::Failures),
        ] {
            let mut p = policy(5, 600, BanTime::For(Duration(3600)));
            p.burst = burst;
            let mut j = Jail::new(JailId(0), "freeswitch-esl", p);
            let h = BanHistory::default();
            let mut counted = 0;
            let mut ban = None;
            for e in &events {
                let o = j.record(e, e.time, &h);
                if matches!(o, Outcome::Found { .. } | Outcome::Ban(_)) {
                    counted += 1;
                }
                if let Outcome::Ban(b) = o {
                    ban = Some((counted, b.reason));
                    break;
                }
            }
            assert_eq!(ban, Some((banned_at, reason)), "burst {burst:?}");
        }
    }

    fn parse(text: &str) -> Result<BurstKey, BurstError> {
        let v: toml::Table = toml::from_str(&format!("burst = {text}")).unwrap();
        parse_burst(&v["burst"])
    }

    /// On by default for jails that read SIP (a SIP filter, the Event
    /// Socket, the wire, a fail2ban filter named for a SIP server), off for
    /// the others; `burst = false` turns it off, a table sets it anywhere;
    /// errors name their line and key.
    #[test]
    fn default_by_filter_family() {
        let text = "[defaults]\nignoreself = false\n\
            [jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/a\"\n\
            [jail.ast]\nfail2ban_filter = \"/etc/fail2ban/filter.d/asterisk.conf[mode=extra]\"\nlogpath = \"/b\"\n\
            [jail.esl]\nesl = { port = 8021 }\n\
            [jail.ssh]\nfilter = \"sshd\"\nlogpath = \"/c\"\n\
            [jail.web]\nfail2ban_filter = \"/etc/fail2ban/filter.d/nginx-http-auth.conf\"\nlogpath = \"/d\"\n\
            [jail.quiet]\nfilter = \"kamailio\"\nlogpath = \"/e\"\nburst = false\n\
            [jail.sshfast]\nfilter = \"sshd\"\nlogpath = \"/f\"\nburst = { failures = 4, within = \"1s\" }\n";
        let c = crate::config::Config::parse(text, "test.toml").unwrap();
        let mut got: Vec<(&str, Option<Burst>)> = c
            .jails
            .iter()
            .map(|j| (j.name.as_str(), resolve(j)))
            .collect();
        got.sort_by_key(|(n, _)| *n);
        let fast = Burst {
            failures: 4,
            within: Duration(1),
        };
        assert_eq!(
            got,
            [
                ("ast", Some(DEFAULT_BURST)),
                ("esl", Some(DEFAULT_BURST)),
                ("fs", Some(DEFAULT_BURST)),
                ("quiet", None),
                ("ssh", None),
                ("sshfast", Some(fast)),
                ("web", None),
            ]
        );
        let e = crate::config::Config::parse(
            "[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/a\"\nfindtime = 1\nburst = { within = \"2s\" }\n",
            "test.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "test.toml:5:9: key `burst`: burst.within (2s) is longer than findtime (1s)"
            ),
            "{e}"
        );
    }

    #[test]
    fn burst_values() {
        assert_eq!(parse("false").unwrap(), BurstKey::Off);
        assert_eq!(parse("true").unwrap(), BurstKey::On(DEFAULT_BURST));
        assert_eq!(
            parse("{ failures = 4, within = \"1s\" }").unwrap(),
            BurstKey::On(Burst {
                failures: 4,
                within: Duration(1)
            })
        );
        assert_eq!(
            parse("{ within = 5 }").unwrap(),
            BurstKey::On(Burst {
                failures: 3,
                within: Duration(5)
            })
        );
        for (bad, says) in [
            ("3", "burst must be false, true or a table"),
            ("{ failures = 1 }", "burst.failures must be 2 to 1000"),
            ("{ failures = -3 }", "burst.failures must be 2 to 1000"),
            ("{ failures = 1001 }", "burst.failures must be 2 to 1000"),
            ("{ within = \"0s\" }", "burst.within must be at least 1s"),
            ("{ within = -1 }", "burst.within: -1 is negative"),
            ("{ within = \"soon\" }", "burst.within: "),
            ("{ within = true }", "burst.within: expected a duration"),
            ("{ failure = 3 }", "burst has no key `failure`"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(says), "{bad}: {e}");
        }
        let on = parse("{ within = \"10m\" }").unwrap();
        assert!(check_burst(on, Duration(600)).is_ok());
        let e = check_burst(parse("{ within = \"11m\" }").unwrap(), Duration(600)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "burst.within (11m) is longer than findtime (10m); a burst is meant to be much shorter than the counting window"
        );
    }
}
