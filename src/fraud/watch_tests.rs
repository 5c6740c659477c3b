//! The engine's scenarios, with the time given as values.

use super::*;
use crate::fraud::rule::{Actions, Hours, Limit, Prefixes, Threshold};

const T0: Time = Time(1_796_066_163_000); // Monday 2026-11-30 19:16:03 UTC

fn rule(name: &str, prefixes: &[&str], limits: Vec<Limit>) -> Arc<FraudRule> {
    Arc::new(FraudRule {
        name: name.into(),
        jail: None,
        esl: None,
        prefixes: if prefixes == ["*"] {
            Prefixes::Any
        } else {
            Prefixes::List(prefixes.iter().map(|p| p.to_string()).collect())
        },
        hours: None,
        timezone: "UTC".into(),
        limits,
        warning: Actions::default(),
        critical: Actions {
            webhook: false,
            hangup: true,
            ban: true,
        },
        webhook: None,
        bantime: None,
        hold_ms: 15 * 60_000,
    })
}

fn limit(metric: Metric, warning: u32, critical: u32) -> Limit {
    Limit {
        metric,
        threshold: Threshold {
            warning: Some(warning),
            critical: Some(critical),
        },
    }
}

fn uuid(n: u32, account: &str) -> Uuid {
    let a: u32 = account.bytes().map(u32::from).sum();
    Uuid::parse(&format!("{a:08x}-0000-4000-8000-{n:012x}")).unwrap()
}

fn ev(kind: CallKind, n: u32, account: &str, dest: &str, src: &str, time: Time) -> CallEvent {
    CallEvent {
        kind,
        uuid: uuid(n, account),
        account: account.into(),
        dest: dest.into(),
        source: src.parse().ok(),
        time,
    }
}

fn create(w: &mut Watch, n: u32, account: &str, dest: &str, at: Time) -> Vec<Order> {
    w.on_event(
        &ev(CallKind::Create, n, account, dest, "203.0.113.9", at),
        at,
    )
}

fn hangups(orders: &[Order]) -> Vec<Uuid> {
    orders
        .iter()
        .filter_map(|o| match o {
            Order::Hangup { uuid, .. } => Some(*uuid),
            _ => None,
        })
        .collect()
}

fn fired(orders: &[Order]) -> Vec<(Level, &'static str, u64)> {
    orders
        .iter()
        .filter_map(|o| match o {
            Order::Fired(f) => Some((f.level, f.metric, f.value)),
            _ => None,
        })
        .collect()
}

fn bans(orders: &[Order]) -> Vec<IpAddr> {
    orders
        .iter()
        .filter_map(|o| match o {
            Order::Ban { addr, .. } => Some(*addr),
            _ => None,
        })
        .collect()
}

/// Issue 21's stolen account: 20 calls to a premium prefix in one minute.
/// At the critical threshold every live premium call of the account is
/// hung up and its source banned once; each later call goes at once; the
/// other account's local calls are never touched.
#[test]
fn stolen_account_is_cut_off_and_the_neighbour_is_not() {
    let r = rule(
        "premium",
        &["0900", "00"],
        vec![limit(Metric::CallsPerMinute, 5, 10)],
    );
    let mut w = Watch::new(&[r]);
    let mut all = Vec::new();
    for n in 0..20u32 {
        let at = T0.plus_millis(i64::from(n) * 2_500);
        let o = create(&mut w, n, "1002", &format!("0900{n:06}"), at);
        // An ordinary neighbour, at the same time.
        let local = create(&mut w, n, "1001", "2001", at);
        assert!(local.is_empty(), "1001 untouched: {local:?}");
        all.push(o);
    }
    assert!(all[..4].iter().all(Vec::is_empty));
    assert_eq!(fired(&all[4]), [(Level::Warning, "calls_per_minute", 5)]);
    assert!(hangups(&all[4]).is_empty(), "warning only logs");
    assert_eq!(fired(&all[9]), [(Level::Critical, "calls_per_minute", 10)]);
    assert_eq!(hangups(&all[9]).len(), 10, "every live premium call");
    assert_eq!(bans(&all[9]), ["203.0.113.9".parse::<IpAddr>().unwrap()]);
    for (n, o) in all.iter().enumerate().skip(10) {
        assert_eq!(
            hangups(o),
            [uuid(n as u32, "1002")],
            "call {n} goes at once"
        );
        assert!(bans(o).is_empty(), "banned once");
    }
    let v = w.view(T0.plus_millis(50_000));
    assert_eq!(v.watched.len(), 1);
    assert_eq!(v.watched[0].account, "1002");
    assert_eq!(v.fired.len(), 2);
    assert_eq!(v.fired[1].hung_up, 10);
}

/// After a reconnection the live calls of a held account are hung up
/// again (the first kills' answers may have been lost).
#[test]
fn a_reconnection_hangs_up_a_held_accounts_live_calls_again() {
    let r = rule("conc", &["00"], vec![limit(Metric::ConcurrentCalls, 1, 2)]);
    let mut w = Watch::new(&[r]);
    create(&mut w, 1, "1002", "0044", T0);
    create(&mut w, 2, "1001", "2001", T0);
    assert_eq!(hangups(&create(&mut w, 3, "1002", "0045", T0)).len(), 2);
    let mut again = hangups(&w.resume(T0.plus_millis(1_000)));
    again.sort();
    let mut want = vec![uuid(1, "1002"), uuid(3, "1002")];
    want.sort();
    assert_eq!(again, want, "1001's call is not touched");
    // Once the hold is over, nothing.
    assert!(w.resume(T0.plus_millis(16 * 60_000)).is_empty());
}

/// A night-only rule: the same burst by day fires nothing; at night it does.
#[test]
fn night_only_rule_does_not_fire_by_day() {
    let mut r = (*rule("night", &["00"], vec![limit(Metric::CallsPerMinute, 2, 3)])).clone();
    r.hours = Some(Hours::parse(["22-6"]).unwrap());
    r.timezone = "Europe/Berlin".into();
    let r = Arc::new(r);
    // 12:00 in Berlin (11:00 UTC), then 23:00 in Berlin (22:00 UTC).
    let noon = Time(jiff_ms("2026-12-01T11:00:00Z"));
    let night = Time(jiff_ms("2026-12-01T22:00:00Z"));
    let mut w = Watch::new(std::slice::from_ref(&r));
    for n in 0..5 {
        let o = create(
            &mut w,
            n,
            "1002",
            "00441234",
            noon.plus_millis(i64::from(n)),
        );
        assert!(o.is_empty(), "by day: {o:?}");
    }
    assert!(w.tick(noon.plus_millis(10)).is_empty());
    let mut w = Watch::new(&[r]);
    let o: Vec<Order> = (0..3)
        .flat_map(|n| {
            create(
                &mut w,
                n,
                "1002",
                "00441234",
                night.plus_millis(i64::from(n)),
            )
        })
        .collect();
    assert_eq!(
        fired(&o),
        [
            (Level::Warning, "calls_per_minute", 2),
            (Level::Critical, "calls_per_minute", 3)
        ]
    );
}

fn jiff_ms(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// Concurrent calls fire at their thresholds, not before; a hung-up call
/// lowers the count and re-arms the rule.
#[test]
fn concurrent_calls_fire_at_their_thresholds() {
    let r = rule("conc", &["*"], vec![limit(Metric::ConcurrentCalls, 3, 5)]);
    let mut w = Watch::new(&[r]);
    // Spread over ten minutes: calls per minute stay low.
    let at = |n: u32| T0.plus_millis(i64::from(n) * 120_000);
    let got: Vec<Vec<Order>> = (0..5)
        .map(|n| create(&mut w, n, "1002", "2001", at(n)))
        .collect();
    assert!(got[0].is_empty() && got[1].is_empty() && got[3].is_empty());
    assert_eq!(fired(&got[2]), [(Level::Warning, "concurrent_calls", 3)]);
    assert_eq!(fired(&got[4]), [(Level::Critical, "concurrent_calls", 5)]);
    assert_eq!(hangups(&got[4]).len(), 5);
    assert_eq!(w.live_calls("1002"), 5);
    for n in 0..5 {
        w.on_event(&ev(CallKind::Hangup, n, "1002", "2001", "", at(5)), at(5));
    }
    assert_eq!(w.live_calls("1002"), 0);
}

/// Answered minutes count live calls with their current duration (the
/// tick sees them grow) and ended calls within the window.
#[test]
fn answered_minutes_fire_at_their_thresholds() {
    let r = rule(
        "minutes",
        &["00"],
        vec![limit(
            Metric::AnsweredMinutes {
                window_ms: 3_600_000,
            },
            10,
            20,
        )],
    );
    let mut w = Watch::new(&[r]);
    let min = |m: i64| T0.plus_millis(m * 60_000);
    assert!(create(&mut w, 1, "1002", "0046812345678", min(0)).is_empty());
    w.on_event(
        &ev(CallKind::Answer, 1, "1002", "0046812345678", "", min(0)),
        min(0),
    );
    assert!(w.tick(min(9).plus_millis(59_000)).is_empty(), "9 min 59 s");
    assert_eq!(
        fired(&w.tick(min(10))),
        [(Level::Warning, "answered_minutes", 10)]
    );
    // Ends at 15 minutes; a second call runs 5 more: 20 in the window.
    w.on_event(
        &ev(CallKind::Hangup, 1, "1002", "0046812345678", "", min(15)),
        min(15),
    );
    create(&mut w, 2, "1002", "0046812345679", min(16));
    w.on_event(
        &ev(CallKind::Answer, 2, "1002", "0046812345679", "", min(16)),
        min(16),
    );
    assert!(w.tick(min(20)).is_empty());
    let o = w.tick(min(21));
    assert_eq!(fired(&o), [(Level::Critical, "answered_minutes", 20)]);
    assert_eq!(hangups(&o), [uuid(2, "1002")]);
    // An hour after the first call ended, it has left the window.
    w.on_event(
        &ev(CallKind::Hangup, 2, "1002", "0046812345679", "", min(22)),
        min(22),
    );
    w.tick(min(80));
    assert!(w.view(min(80)).watched.is_empty());
}

/// Sequential calls: a call elsewhere starts the count again.
#[test]
fn sequential_calls_count_in_a_row() {
    let r = rule("seq", &["00"], vec![limit(Metric::SequentialCalls, 3, 4)]);
    let mut w = Watch::new(&[r]);
    let at = |n: u32| T0.plus_millis(i64::from(n) * 600_000);
    let mut fires = Vec::new();
    for (n, dest) in ["001", "002", "2001", "003", "004", "005", "006"]
        .iter()
        .enumerate()
    {
        let n = n as u32;
        let o = create(&mut w, n, "1002", dest, at(n));
        w.on_event(&ev(CallKind::Hangup, n, "1002", dest, "", at(n)), at(n));
        fires.extend(fired(&o).into_iter().map(|f| (n, f.0)));
    }
    assert_eq!(fires, [(5, Level::Warning), (6, Level::Critical)]);
}

/// A flood of calls and accounts stays within the bounds.
#[test]
fn memory_is_bounded_per_account_and_overall() {
    let r = rule(
        "any",
        &["*"],
        vec![limit(Metric::CallsPerMinute, 1000, 2000)],
    );
    let mut w = Watch::new(&[r]);
    for n in 0..(MAX_LIVE as u32 + 100) {
        create(&mut w, n, "1002", "2001", T0);
    }
    assert_eq!(w.live_calls("1002"), MAX_LIVE);
    assert_eq!(w.view(T0).overflow, 100);
    for n in 0..(MAX_ACCOUNTS as u32 + 50) {
        create(
            &mut w,
            1,
            &format!("acct{n}"),
            "2001",
            T0.plus_millis(i64::from(n)),
        );
    }
    assert_eq!(w.view(T0).accounts, MAX_ACCOUNTS);
    assert_eq!(w.view(T0).evicted, 51);
    // Hang-ups of calls never seen change nothing.
    let o = w.on_event(&ev(CallKind::Hangup, 9, "nobody", "1", "", T0), T0);
    assert!(o.is_empty());
}

/// The account is text from the wire: shown escaped.
#[test]
fn accounts_are_shown_escaped() {
    let r = rule("any", &["*"], vec![limit(Metric::ConcurrentCalls, 1, 2)]);
    let mut w = Watch::new(&[r]);
    create(&mut w, 1, "<b>\"x\"\n", "2001", T0);
    let v = w.view(T0);
    assert_eq!(v.watched[0].account, "<b>\\\"x\\\"\\n");
    assert_eq!(v.fired[0].account, "<b>\\\"x\\\"\\n");
}

/// An account name longer than the ledger keeps (64 characters) is still
/// one account: its calls add up and the rule fires. (Before, the ledger
/// stored the name cut short but looked it up whole: such an account was
/// never followed, and each new call reset what was kept.)
#[test]
fn an_account_with_a_long_name_is_followed() {
    let r = rule(
        "premium",
        &["0900"],
        vec![limit(Metric::CallsPerMinute, 3, 5)],
    );
    let mut w = Watch::new(&[r]);
    let long = format!("{}@tenant.example", "a".repeat(70));
    let mut all = Vec::new();
    for n in 0..5u32 {
        let at = T0.plus_millis(i64::from(n) * 1_000);
        all.extend(create(&mut w, n, &long, "0900123", at));
    }
    assert_eq!(
        fired(&all),
        [
            (Level::Warning, "calls_per_minute", 3),
            (Level::Critical, "calls_per_minute", 5)
        ]
    );
    assert_eq!(hangups(&all).len(), 5);
    assert_eq!(w.live_calls(&long), 5);
    let v = w.view(T0.plus_millis(5_000));
    assert_eq!(v.accounts, 1);
    assert_eq!(v.fired[0].account.chars().count(), MAX_TEXT);
}

/// Past [`MAX_ACCOUNTS`], the account forgotten is an idle one (nothing
/// live, no level), not the one calling: a flood of short calls from new
/// accounts (addresses calling in without authentication, spoofed) does
/// not wipe a stolen account's live calls from the ledger. (Before, the
/// account seen longest ago went first, live calls and all.)
#[test]
fn a_flood_of_idle_accounts_does_not_evict_one_calling() {
    let r = rule(
        "conc",
        &["00"],
        vec![limit(Metric::ConcurrentCalls, 40, 50)],
    );
    let mut w = Watch::new(&[r]);
    for n in 0..20u32 {
        create(&mut w, n, "1002", "0044123", T0);
    }
    for n in 0..(MAX_ACCOUNTS as u32 + 10) {
        let at = T0.plus_millis(1 + i64::from(n));
        let name = format!("addr:198.51.{}.{}", n / 256, n % 256);
        create(&mut w, 1, &name, "0044123", at);
        w.on_event(&ev(CallKind::Hangup, 1, &name, "0044123", "", at), at);
    }
    assert_eq!(w.view(T0).accounts, MAX_ACCOUNTS);
    assert_eq!(w.live_calls("1002"), 20, "the calling account is kept");
}
