//! IPv6 prefixes: counted, trusted, burst, escalated and banned as one;
//! protected prefixes address by address; the sample bounded. Time is a
//! value (`t(secs)`), never the clock.

use std::sync::{Arc, Mutex};

use super::*;
use crate::decision::{BanDecision, BanReason, Decision};
use crate::duration::{BanTime, Duration};
use crate::event::{FailureEvent, FailureKind, JailId, Time};
use crate::jail::tests::policy;
use crate::jail::{
    BanHistory, Escalation, IgnoreList, JailPolicy, JailSet, JailSetError, JailSpec, Outcome,
};

fn ev(addr: &str, secs: i64) -> FailureEvent {
    FailureEvent {
        time: Time(secs * 1000),
        jail: JailId(0),
        addr: addr.parse().unwrap(),
        kind: FailureKind::RegisterAuth,
        user: None,
        scanner: false,
    }
}

fn t(secs: i64) -> Time {
    Time(secs * 1000)
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// maxretry 5 in 10 minutes, 1 h bans, IPv6 counted per /`len`.
fn v6_policy(len: u8) -> JailPolicy {
    let mut p = policy(5, 600, BanTime::For(Duration(3600)));
    p.ipv6_prefix = len;
    p
}

/// The `i`-th address of 2001:db8:1:2::/64.
fn rotating(i: u32) -> String {
    format!("2001:db8:1:2::{:x}", 0x1000 + i)
}

/// Feeds one failure from each of 20 addresses of one /64 (one a second);
/// returns the outcomes.
fn rotate_20(j: &mut Jail, h: &BanHistory) -> Vec<Outcome> {
    (0..20u32)
        .map(|i| j.record(&ev(&rotating(i), i64::from(i)), t(i64::from(i)), h))
        .collect()
}

/// A scanner rotating through 20 addresses of one /64 is banned as the /64
/// at maxretry; the rest of the /64 is then banned with it (another /64
/// is not), and the ban's expiry lifts the /64.
#[test]
fn a_scanner_rotating_through_one_64_is_banned_as_the_64_at_maxretry() {
    let mut j = Jail::new(JailId(0), "sip", v6_policy(64));
    let h = BanHistory::default();
    let o = rotate_20(&mut j, &h);
    for (i, o) in o.iter().enumerate().take(4) {
        assert_eq!(
            *o,
            Outcome::Found {
                count: i as u32 + 1
            },
            "failure {i}"
        );
    }
    let Outcome::Ban(b) = &o[4] else {
        panic!("the 5th address bans the /64: {:?}", o[4])
    };
    assert_eq!(b.addr, net("2001:db8:1:2::/64"));
    assert_eq!(b.failures, 5);
    assert_eq!(
        b.to_string(),
        "[sip] Ban 2001:db8:1:2::/64 (5 failures, 1h)"
    );
    assert!(o[5..].iter().all(|o| *o == Outcome::AlreadyBanned), "{o:?}");
    assert_eq!(j.counters().total_banned, 1);
    assert_eq!(j.failing_count(), 0, "the prefix's track went with its ban");
    assert!(j.is_banned(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
    assert!(!j.is_banned(ip("2001:db8:1:3::1")));
    assert_eq!(
        j.record(&ev("2001:db8:1:3::1", 30), t(30), &h),
        Outcome::Found { count: 1 }
    );
    // In force once the firewall accepts it; runs out as any ban.
    assert!(j.confirm(b));
    assert_eq!(j.banned().len(), 1);
    assert_eq!(j.next_expiry(), Some(t(4 + 3600)));
    let gone = j.expire(t(4 + 3600));
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].addr, net("2001:db8:1:2::/64"));
    assert!(!j.is_banned(ip("2001:db8:1:2::1001")));
    assert!(j.seen(&b.addr).is_none(), "the sample went with the ban");
}

/// `ipv6_prefix = 128` keeps per-address counting: twenty addresses of one
/// /64 are twenty one-off sources, and a repeating one is banned alone.
#[test]
fn prefix_128_keeps_per_address() {
    let mut j = Jail::new(JailId(0), "sip", v6_policy(128));
    let h = BanHistory::default();
    let o = rotate_20(&mut j, &h);
    assert!(o.iter().all(|o| *o == Outcome::Found { count: 1 }), "{o:?}");
    assert_eq!(j.failing_count(), 20);
    let mut last = Outcome::TooOld;
    for s in 30..34 {
        last = j.record(&ev(&rotating(0), s), t(s), &h);
    }
    let Outcome::Ban(b) = last else {
        panic!("expected a ban: {last:?}")
    };
    assert_eq!(b.addr, net("2001:db8:1:2::1000/128"));
    assert!(!j.is_banned(ip(&rotating(1))));
    assert_eq!(j.sampled(), 0, "no sample per address");
}

/// A log written while `f` runs.
fn logged<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = Log::default();
    let to = log.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || to.clone())
        .finish();
    let r = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    (r, text)
}

/// A /64 that holds an ignoreip address is never banned as a prefix: its
/// addresses are counted one by one, only the offending one is banned, and
/// the log says why once for the prefix, not once per failure.
#[test]
fn a_64_containing_an_ignoreip_address_bans_only_the_address() {
    let mut p = v6_policy(64);
    p.ignore = IgnoreList::new(vec![net("2001:db8:1:2::5/128")]);
    let mut j = Jail::new(JailId(0), "sip", p);
    let h = BanHistory::default();
    let (o, log) = logged(|| {
        let mut o = rotate_20(&mut j, &h);
        for s in 30..34 {
            o.push(j.record(&ev(&rotating(0), s), t(s), &h));
        }
        o
    });
    assert!(
        o[..20].iter().all(|o| *o == Outcome::Found { count: 1 }),
        "{o:?}"
    );
    let Outcome::Ban(b) = &o[23] else {
        panic!("the repeating address is banned: {:?}", o[23])
    };
    assert_eq!(
        b.addr,
        net("2001:db8:1:2::1000/128"),
        "the address, not the /64"
    );
    assert!(!j.is_banned(ip(&rotating(1))));
    assert_eq!(
        j.record(&ev("2001:db8:1:2::5", 40), t(40), &h),
        Outcome::Ignored
    );
    assert_eq!(
        log.matches("2001:db8:1:2::/64 holds 2001:db8:1:2::5")
            .count(),
        1,
        "told once: {log}"
    );
    // Another /64 is still counted as one.
    for s in 50..54 {
        j.record(&ev(&format!("2001:db8:9::{s}"), s), t(s), &h);
    }
    let o = j.record(&ev("2001:db8:9::99", 55), t(55), &h);
    assert!(
        matches!(&o, Outcome::Ban(b) if b.addr == net("2001:db8:9::/64")),
        "{o:?}"
    );
}

/// The addresses seen in a prefix are kept for status, at most
/// [`SAMPLE_ADDRS`] per prefix and at most `max_tracked` prefixes; IPv4
/// keeps none.
#[test]
fn the_status_sample_is_bounded() {
    let mut p = v6_policy(64);
    p.maxretry = 1_000_000;
    p.max_tracked = 10;
    let mut j = Jail::new(JailId(0), "sip", p);
    let h = BanHistory::default();
    for i in 0..1000u32 {
        j.record(&ev(&rotating(i), 1), t(1), &h);
    }
    let s = j.seen(&net("2001:db8:1:2::/64")).expect("a sample");
    assert_eq!(s.addrs().len(), SAMPLE_ADDRS);
    assert_eq!(s.addrs()[0], rotating(0).parse::<Ipv6Addr>().unwrap());
    assert!(s.more());
    // A flood of prefixes: never more samples than tracks.
    for i in 0..10_000u32 {
        let a = format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff);
        j.record(&ev(&a, 2), t(2), &h);
        assert!(j.sampled() <= 10);
    }
    assert!(j.failing_count() <= 10);
    // IPv4 sources keep no sample.
    let mut j = Jail::new(JailId(0), "sip", v6_policy(64));
    for i in 0..100u32 {
        let a = std::net::Ipv4Addr::from(0xC633_6400 + i).to_string();
        j.record(&ev(&a, 1), t(1), &h);
    }
    assert_eq!(j.sampled(), 0);
    // Swept with the tracks.
    let mut j = Jail::new(JailId(0), "sip", v6_policy(64));
    j.record(&ev(&rotating(0), 1), t(1), &h);
    assert_eq!(j.sampled(), 1);
    j.sweep(t(1000));
    assert_eq!(j.sampled(), 0);
}

/// Trust, weak signals, the burst rule and escalation use the prefix as
/// their key too: a phone's registration trusts its /64, the burst rule
/// sees a rotating scanner's pace, and a /64 banned before is a repeat
/// offender whichever of its addresses comes back.
#[test]
fn trust_weak_burst_and_escalation_use_the_prefix() {
    let h = BanHistory::default();
    // Trust: registered from one address, failures from another.
    let mut p = v6_policy(64);
    p.trust_registered = Some(Duration(86_400));
    p.trusted_maxretry = 8;
    p.wrong_call_state_maxretry = 3;
    let mut j = Jail::new(JailId(0), "sip", p);
    let mut ok = ev("2001:db8:1:2::1", 0);
    ok.kind = FailureKind::Registered;
    assert_eq!(j.record(&ok, t(0), &h), Outcome::Trusted);
    for i in 0..7u32 {
        assert_eq!(
            j.record(&ev(&rotating(i), 1), t(1), &h),
            Outcome::Found { count: i + 1 }
        );
    }
    assert!(matches!(
        j.record(&ev(&rotating(7), 1), t(1), &h),
        Outcome::Ban(_)
    ));
    // Weak signals: three addresses, one count.
    let mut w = ev("2001:db8:7::1", 2);
    w.kind = FailureKind::WrongCallState;
    assert_eq!(j.record(&w, t(2), &h), Outcome::Found { count: 1 });
    w.addr = ip("2001:db8:7::2");
    assert_eq!(j.record(&w, t(2), &h), Outcome::Found { count: 2 });
    w.addr = ip("2001:db8:7::3");
    assert!(matches!(
        j.record(&w, t(2), &h),
        Outcome::Ban(BanDecision { addr, .. }) if addr == net("2001:db8:7::/64")
    ));
    // Burst: three addresses within 2 s.
    let mut p = v6_policy(64);
    p.burst = Some(crate::jail::burst::DEFAULT_BURST);
    let mut j = Jail::new(JailId(0), "sip", p);
    let o: Vec<Outcome> = (0..3u32)
        .map(|i| j.record(&ev(&rotating(i), 10), Time(10_000 + i64::from(i) * 300), &h))
        .collect();
    assert!(
        matches!(&o[2], Outcome::Ban(b) if b.reason == BanReason::Burst && b.addr == net("2001:db8:1:2::/64")),
        "{o:?}"
    );
    // Escalation: the second ban of the /64 is longer, from other addresses.
    let mut p = v6_policy(64);
    p.maxretry = 2;
    p.bantime = BanTime::For(Duration(60));
    p.escalation = Some(Escalation {
        factor: 1.0,
        multipliers: vec![],
        maxtime: None,
        overall_jails: false,
        rndtime: None,
    });
    let mut set = JailSet::new(
        Vec::new(),
        &[JailSpec {
            name: "sip".into(),
            filter: None,
            ignoreself: false,
            policy: p,
            peers: Vec::new(),
            names: Vec::new(),
            ignore_files: Vec::new(),
            ignore_names: Vec::new(),
        }],
    );
    let mut lengths = Vec::new();
    for round in 0..2u32 {
        let now = t(i64::from(round) * 1000);
        let mut out = Vec::new();
        set.expire(now, &mut out);
        let batch: Vec<FailureEvent> = (0..2u32)
            .map(|i| ev(&rotating(round * 100 + i), i64::from(round) * 1000))
            .collect();
        out.clear();
        set.handle(&batch, now, &mut out);
        let [Decision::Ban(b)] = &out[..] else {
            panic!("one ban: {out:?}")
        };
        assert_eq!(b.addr, net("2001:db8:1:2::/64"));
        assert!(set.confirm(b));
        lengths.push(b.bantime.to_string());
    }
    assert_eq!(lengths, ["1m", "2m"]);
}

fn set_with(p: JailPolicy, own: Vec<IpNet>) -> JailSet {
    JailSet::new(
        own,
        &[JailSpec {
            name: "sip".into(),
            filter: None,
            ignoreself: true,
            policy: p,
            peers: Vec::new(),
            names: Vec::new(),
            ignore_files: Vec::new(),
            ignore_names: Vec::new(),
        }],
    )
}

/// A ban by hand stays what the operator typed: one IPv6 address is banned
/// alone in a jail counting /64s; an unban of one address inside a banned
/// /64 says which ban covers it instead of "not banned"; the /64 is lifted
/// by its name, with a clean slate for it.
#[test]
fn manual_bans_and_unbans_in_a_prefix_jail() {
    let mut set = set_with(v6_policy(64), Vec::new());
    let id = set.jail_id("sip").unwrap();
    let d = set
        .manual_ban("sip", net("2001:db8:1:2::7/128"), None, false, t(0))
        .unwrap();
    assert_eq!(d.addr, net("2001:db8:1:2::7/128"));
    assert!(set.confirm(&d));
    let j = set.jail(id).unwrap();
    assert!(j.is_banned(ip("2001:db8:1:2::7")));
    assert!(!j.is_banned(ip("2001:db8:1:2::8")));
    // The rest of the /64 is counted, and banned as the /64.
    let batch: Vec<FailureEvent> = (0..5u32).map(|i| ev(&rotating(i), 1)).collect();
    let mut out = Vec::new();
    set.handle(&batch, t(1), &mut out);
    let [Decision::Ban(p)] = &out[..] else {
        panic!("{out:?}")
    };
    assert!(set.confirm(p));
    let e = set.unban(Some(net("2001:db8:1:2::1001/128")), None, false);
    assert_eq!(
        e,
        Err(JailSetError::CoveredBy {
            net: net("2001:db8:1:2::1001/128"),
            by: net("2001:db8:1:2::/64"),
            jail: "sip".into(),
        })
    );
    assert_eq!(
        e.unwrap_err().to_string(),
        "2001:db8:1:2::1001 is not banned on its own: jail sip bans 2001:db8:1:2::/64, which holds it; unban 2001:db8:1:2::/64 to lift that"
    );
    let u = set
        .unban(Some(net("2001:db8:1:2::/64")), Some("sip"), false)
        .unwrap();
    assert_eq!(u.len(), 1);
    let j = set.jail(id).unwrap();
    assert!(!j.is_banned(ip("2001:db8:1:2::1001")));
    assert!(j.is_banned(ip("2001:db8:1:2::7")), "the manual ban stays");
    assert_eq!(j.failing_count(), 0);
}

/// This host's own address, a fleet peer: their /64 is counted address by
/// address (the set adds them to every jail's protected list).
#[test]
fn own_addresses_and_peers_keep_their_64_from_prefix_bans() {
    let mut set = set_with(v6_policy(64), vec![net("2001:db8:a::1/128")]);
    set.add_peers(vec![net("2001:db8:b::1/128")]);
    for (n, prefix) in [(0, "2001:db8:a"), (1, "2001:db8:b")] {
        let batch: Vec<FailureEvent> = (0..5u32)
            .map(|i| ev(&format!("{prefix}::{:x}", 0x100 + i), n))
            .collect();
        let mut out = Vec::new();
        set.handle(&batch, t(n), &mut out);
        assert!(out.is_empty(), "{prefix}::/64 is not banned: {out:?}");
        let batch: Vec<FailureEvent> = (0..5).map(|_| ev(&format!("{prefix}::100"), n)).collect();
        set.handle(&batch, t(n), &mut out);
        let [Decision::Ban(b)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(b.addr, net(&format!("{prefix}::100/128")));
    }
}

/// Bans of the jail's prefixes come back from the store and the fleet as
/// prefixes: found for every address inside, lifted at their end; and a
/// reload that changes `ipv6_prefix` still finds the bans made before.
#[test]
fn restored_remote_and_reloaded_prefix_bans_still_cover_their_addresses() {
    let mut set = set_with(v6_policy(64), Vec::new());
    let id = set.jail_id("sip").unwrap();
    let d = set
        .restored(
            "sip",
            net("2001:db8:1:2::/64"),
            t(0),
            Some(t(100)),
            5,
            BanReason::Failures,
            t(10),
        )
        .unwrap();
    assert!(set.reinstate(&d));
    let r = set
        .remote_ban(
            &crate::jail::RemoteBan {
                jail: "sip",
                addr: net("2001:db8:3:4::/64"),
                start: t(0),
                end: Some(t(200)),
                failures: 5,
                origin: "b",
            },
            t(10),
        )
        .unwrap();
    assert!(set.confirm(&r));
    let covers = |set: &JailSet, a: &str| set.jail(id).unwrap().is_banned(ip(a));
    assert!(covers(&set, "2001:db8:1:2::99") && covers(&set, "2001:db8:3:4::99"));
    // Reload with /56: the /64 bans are found by scanning, as any prefix.
    let specs = [JailSpec {
        name: "sip".into(),
        filter: None,
        ignoreself: true,
        policy: v6_policy(56),
        peers: Vec::new(),
        names: Vec::new(),
        ignore_files: Vec::new(),
        ignore_names: Vec::new(),
    }];
    set.configure(&specs);
    assert!(covers(&set, "2001:db8:1:2::99") && covers(&set, "2001:db8:3:4::99"));
    assert!(!covers(&set, "2001:db8:1:3::99"));
    let mut out = Vec::new();
    set.expire(t(100), &mut out);
    assert_eq!(out.len(), 1);
    assert!(!covers(&set, "2001:db8:1:2::99") && covers(&set, "2001:db8:3:4::99"));
    out.clear();
    set.expire(t(200), &mut out);
    assert!(!covers(&set, "2001:db8:3:4::99"));
}

/// `shared_count`: the fleet counts a /64's addresses as one (its first
/// address), and the ban decided from that count is the /64; a protected
/// /64 is counted and banned address by address there too.
#[test]
fn the_fleets_shared_count_uses_the_prefix() {
    let mut set = set_with(v6_policy(64), vec![net("2001:db8:a::1/128")]);
    let id = set.jail_id("sip").unwrap();
    let mut e = ev(&rotating(1), 1);
    e.jail = id;
    let key = |set: &JailSet, e: &FailureEvent| set.shared_failure(e).map(|s| s.3);
    assert_eq!(key(&set, &e), Some(ip("2001:db8:1:2::")));
    e.addr = ip(&rotating(2));
    assert_eq!(key(&set, &e), Some(ip("2001:db8:1:2::")));
    e.addr = ip("2001:db8:a::9");
    assert_eq!(key(&set, &e), Some(ip("2001:db8:a::9")), "protected /64");
    let d = set
        .shared_ban("sip", ip("2001:db8:1:2::"), 5, t(2))
        .unwrap();
    assert_eq!(d.addr, net("2001:db8:1:2::/64"));
    e.addr = ip(&rotating(3));
    assert_eq!(key(&set, &e), None, "banned: no longer counted");
    let d = set.shared_ban("sip", ip("2001:db8:a::9"), 5, t(2)).unwrap();
    assert_eq!(d.addr, net("2001:db8:a::9/128"));
}

/// IPv4 clients seen through NAT64/SIIT's well-known prefix 64:ff9b::/96
/// (RFC 6052) all share one /64, as do the clients of one Teredo relay
/// (2001::/32): counted as a /64, one attacker's failures there would ban
/// every IPv4 client at once. Such sources are counted one by one.
#[test]
fn translated_ipv4_sources_are_counted_one_by_one_not_as_their_64() {
    let mut j = Jail::new(JailId(0), "sip", v6_policy(64));
    let h = BanHistory::default();
    // Five IPv4 clients through NAT64, one failure each: no ban.
    for (i, a) in [
        "64:ff9b::c000:201",
        "64:ff9b::c633:6402",
        "64:ff9b::cb00:7101",
        "64:ff9b::c000:202",
        "64:ff9b::c633:6403",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            j.record(&ev(a, i as i64), t(i as i64), &h),
            Outcome::Found { count: 1 },
            "{a} is its own source"
        );
    }
    // One of them failing on: banned alone, the others still pass.
    let mut last = Outcome::Ignored;
    for s in 10..14 {
        last = j.record(&ev("64:ff9b::c000:201", s), t(s), &h);
    }
    let Outcome::Ban(b) = last else {
        panic!("the repeating client is banned: {last:?}")
    };
    assert_eq!(b.addr, net("64:ff9b::c000:201/128"));
    assert!(!j.is_banned(ip("64:ff9b::c633:6402")));
    // Teredo: 2001:0:<relay>::/64 holds every client of that relay.
    for (i, a) in [
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:0:4136:e378:8000:63bf:3fff:fdd3",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            j.record(&ev(a, 20 + i as i64), t(20 + i as i64), &h),
            Outcome::Found { count: 1 },
            "{a} is its own source"
        );
    }
}

/// Link-local sources all share fe80::/64 on every link (the router's
/// advertisements and neighbour discovery come from there too): counted
/// as a /64, a neighbour's failures would cut the host off IPv6 whenever
/// its own link-local address is not protected (`ignoreself = false`).
#[test]
fn link_local_sources_are_counted_one_by_one() {
    let mut j = Jail::new(JailId(0), "sip", v6_policy(64));
    let h = BanHistory::default();
    for i in 0..5i64 {
        let a = format!("fe80::{:x}", 0x10 + i);
        assert_eq!(
            j.record(&ev(&a, i), t(i), &h),
            Outcome::Found { count: 1 },
            "{a} is its own source"
        );
    }
}
