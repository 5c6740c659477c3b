//! In-process hot paths, measured without a framework (`cargo bench --bench
//! hot_paths`): ESL frame parsing plus event mapping, the FreeSWITCH log
//! filter, and the jail counter. Prints the median ns per item over 7 runs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use sipwarden::config::duration::{BanTime, Duration};
use sipwarden::event::{FailureEvent, FailureKind, JailId, Time};
use sipwarden::filter::{FilterContext, FilterOptions, builtin};
use sipwarden::jail::{BanHistory, IgnoreList, Jail, JailPolicy};
use sipwarden::source::esl::{EventMapper, FrameBuffer};
use sipwarden::source::scanner::{DEFAULT_SCANNERS, ScannerList};

fn median_ns(items: usize, mut run: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_nanos() as f64 / items as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[3]
}

fn main() {
    // ESL: 10,000 register_failure frames in one buffer.
    let body = |i: u32| {
        format!(
            "Event-Subclass: sofia%3A%3Aregister_failure\nEvent-Name: CUSTOM\nCore-UUID: 418244e5-62e0-4fcb-b610-3d7599f3bf29\nFreeSWITCH-Hostname: vm\nEvent-Date-Timestamp: 1795621254659156\nEvent-Calling-File: sofia_reg.c\nprofile-name: internal\nto-user: 1009\nto-host: 10.77.0.1\nnetwork-ip: 10.{}.{}.{}\nuser-agent: friendly-scanner\nprofile-name: internal\nnetwork-port: 5060\nregistration-type: REGISTER\n\n",
            100 + i / 65536,
            (i / 256) % 256,
            i % 256
        )
    };
    let stream: Vec<u8> = (0..10_000u32)
        .flat_map(|i| {
            let b = body(i);
            format!(
                "Content-Length: {}\nContent-Type: text/event-plain\n\n{b}",
                b.len()
            )
            .into_bytes()
        })
        .collect();
    let mapper = EventMapper {
        jail: JailId(0),
        invite_weight: 1,
        scanners: Arc::new(ScannerList::new(DEFAULT_SCANNERS)),
    };
    let mut events = Vec::new();
    let esl = median_ns(10_000, || {
        let mut fb = FrameBuffer::default();
        fb.extend(&stream);
        let mut hb = false;
        events.clear();
        fb.drain(|f| events.extend(mapper.map(&f, Time(0), &mut hb)))
            .unwrap_or(0);
        black_box(&events);
    });

    let framing = median_ns(10_000, || {
        let mut fb = FrameBuffer::default();
        fb.extend(&stream);
        let mut n = 0usize;
        fb.drain(|f| n += f.body.len()).unwrap_or(0);
        black_box(n);
    });
    println!("esl framing only:      {framing:.0} ns/event");

    // Jail: count those events (10,000 addresses, maxretry 5, no bans).
    let policy = JailPolicy {
        maxretry: 1_000_000,
        findtime: Duration(600),
        bantime: BanTime::For(Duration(3600)),
        ignore: IgnoreList::new(vec![]),
        max_tracked: 1_000_000,
        escalation: None,
        ban_scanners: false,
        trust_registered: None,
        trusted_maxretry: 0,
        wrong_call_state_maxretry: 0,
    };
    let evs: Vec<FailureEvent> = (0..100_000u32)
        .map(|i| FailureEvent {
            time: Time(1_795_621_254_000),
            jail: JailId(0),
            addr: std::net::IpAddr::from([10, 100, ((i % 10_000) / 256) as u8, (i % 256) as u8]),
            kind: FailureKind::RegisterAuth,
            weight: 1,
            user: None,
            scanner: false,
        })
        .collect();
    let h = BanHistory::default();
    let jail = median_ns(evs.len(), || {
        let mut j = Jail::new(JailId(0), "b", policy.clone());
        for e in &evs {
            black_box(j.record(e, Time(1_795_621_254_000), &h));
        }
    });

    // FreeSWITCH log filter over a mix of lines.
    let lines: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| match i % 5 {
            0 => format!("2026-11-25 15:40:54.659156 98.73% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1009@10.77.0.1] from ip 10.77.{}.{}", i / 256 % 256, i % 256).into_bytes(),
            1 => b"2026-11-25 15:40:54.639126 98.73% [WARNING] sofia_reg.c:1842 SIP auth challenge (REGISTER) on sofia profile 'internal' for [1009@10.77.0.1] from ip 10.77.0.2".to_vec(),
            _ => b"2026-11-25 15:40:54.659156 98.73% [DEBUG] switch_core_state_machine.c:584 (sofia/internal/1001@10.77.0.1) Running State Change CS_INIT".to_vec(),
        })
        .collect();
    let f = builtin("freeswitch", FilterOptions::default()).unwrap_or_else(|| unreachable!());
    let cx = FilterContext {
        tz: jiff::tz::TimeZone::UTC,
        now: Time(1_795_621_254_000),
    };
    let filter = median_ns(lines.len(), || {
        for l in &lines {
            black_box(f.match_line(l, &cx));
        }
    });

    println!("esl frame parse + map: {esl:.0} ns/event");
    println!("jail counting:          {jail:.0} ns/event");
    println!("esl + jail in process:  {:.0} ns/event", esl + jail);
    println!("freeswitch log filter:  {filter:.0} ns/line (20% failures, 20% challenges)");
}
