//! Criterion micro-benchmarks of the hot paths (`cargo bench --bench
//! hot_paths`): ESL framing, event parsing and mapping, the jail counter,
//! the whole in-process ESL pipeline, and the FreeSWITCH log filter.
//! Every group reports time per item (one event, one line).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sipwarden::duration::{BanTime, Duration};
use sipwarden::event::{FailureEvent, FailureKind, JailId, Time};
use sipwarden::filter::{FilterContext, FilterOptions, builtin};
use sipwarden::jail::{BanHistory, IgnoreList, Jail, JailPolicy};
use sipwarden::source::esl::frame::parse_frame;
use sipwarden::source::esl::{EventMapper, FrameBuffer};
use sipwarden::source::scanner::{DEFAULT_SCANNERS, ScannerList};

/// Events per batch in the batched groups.
const N: usize = 10_000;
const NOW: Time = Time(1_795_621_254_000);

/// `N` `sofia::register_failure` frames exactly as FreeSWITCH 1.10.12
/// writes them (the corpus's `esl-plain.raw`: 22 event headers, about 726
/// bytes with the frame's own headers), from `N` addresses, in one buffer.
fn esl_stream() -> Vec<u8> {
    let mut stream = Vec::new();
    for i in 0..N as u32 {
        let body = format!(
            "Event-Subclass: sofia%3A%3Aregister_failure\nEvent-Name: CUSTOM\nCore-UUID: 418244e5-62e0-4fcb-b610-3d7599f3bf29\nFreeSWITCH-Hostname: vm\nFreeSWITCH-Switchname: vm\nFreeSWITCH-IPv4: 127.0.0.1\nFreeSWITCH-IPv6: %3A%3A1\nEvent-Date-Local: 2026-11-25%2015%3A40%3A54\nEvent-Date-GMT: Wed,%2025%20Nov%202026%2015%3A40%3A54%20GMT\nEvent-Date-Timestamp: 1795621254659156\nEvent-Calling-File: sofia_reg.c\nEvent-Calling-Function: sofia_reg_handle_register_token\nEvent-Calling-Line-Number: 1792\nEvent-Sequence: {}\nprofile-name: internal\nto-user: 1009\nto-host: 10.77.0.1\nnetwork-ip: 10.{}.{}.{}\nuser-agent: friendly-scanner\nprofile-name: internal\nnetwork-port: 5060\nregistration-type: REGISTER\n\n",
            379 + i,
            100 + i / 65536,
            (i / 256) % 256,
            i % 256
        );
        stream.extend_from_slice(
            format!(
                "Content-Length: {}\nContent-Type: text/event-plain\n\n",
                body.len()
            )
            .as_bytes(),
        );
        stream.extend_from_slice(body.as_bytes());
    }
    stream
}

fn policy() -> JailPolicy {
    JailPolicy {
        maxretry: 1_000_000, // count, never ban: the counter is measured
        findtime: Duration(600),
        bantime: BanTime::For(Duration(3600)),
        ignore: IgnoreList::new(vec![]),
        max_tracked: 1_000_000,
        escalation: None,
        ban_scanners: false,
        trust_registered: None,
        trusted_maxretry: 0,
        wrong_call_state_maxretry: 0,
        invite_weight: 1,
        burst: None,
        ipv6_prefix: 64,
    }
}

fn esl(c: &mut Criterion) {
    let stream = esl_stream();
    let mapper = EventMapper {
        jail: JailId(0),
        window: sipwarden::source::Window::new(sipwarden::duration::Duration(600)),
        scanners: Arc::new(ScannerList::new(DEFAULT_SCANNERS)),
    };
    // The frames, split once, for the mapping alone.
    let mut frames = Vec::with_capacity(N);
    let mut at = 0;
    while let Ok(Some((f, used))) = parse_frame(&stream[at..]) {
        frames.push(f);
        at += used;
    }
    assert_eq!(frames.len(), N);
    let filled = || {
        let mut fb = FrameBuffer::default();
        fb.extend(&stream);
        fb
    };

    let mut g = c.benchmark_group("esl");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("framing", |b| {
        b.iter_batched_ref(
            filled,
            |fb| {
                let mut n = 0usize;
                let _ = fb.drain(|f| n += f.body.len());
                black_box(n)
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("parse_and_map", |b| {
        b.iter(|| {
            let mut hb = false;
            for f in &frames {
                black_box(mapper.map(f, NOW, &mut hb));
            }
        })
    });
    // What the daemon does per event in process: frame, map, count.
    let history = BanHistory::default();
    g.bench_function("pipeline", |b| {
        b.iter_batched_ref(
            || (filled(), Jail::new(JailId(0), "b", policy())),
            |(fb, jail)| {
                let mut hb = false;
                let _ = fb.drain(|f| {
                    if let Some(e) = mapper.map(&f, NOW, &mut hb) {
                        black_box(jail.record(&e, NOW, &history));
                    }
                });
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn jail(c: &mut Criterion) {
    // 100,000 failures from 10,000 addresses into one jail.
    let events: Vec<FailureEvent> = (0..100_000u32)
        .map(|i| FailureEvent {
            time: NOW,
            jail: JailId(0),
            addr: std::net::IpAddr::from([10, 100, ((i % 10_000) / 256) as u8, (i % 256) as u8]),
            kind: FailureKind::RegisterAuth,
            user: None,
            scanner: false,
        })
        .collect();
    let history = BanHistory::default();
    let mut g = c.benchmark_group("jail");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("record", |b| {
        b.iter_batched_ref(
            || Jail::new(JailId(0), "b", policy()),
            |j| {
                for e in &events {
                    black_box(j.record(e, NOW, &history));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn log_filter(c: &mut Criterion) {
    // 20 % failures, 20 % challenges, the rest other FreeSWITCH lines.
    let lines: Vec<Vec<u8>> = (0..N as u32)
        .map(|i| match i % 5 {
            0 => format!("2026-11-25 15:40:54.659156 98.73% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1009@10.77.0.1] from ip 10.77.{}.{}", i / 256 % 256, i % 256).into_bytes(),
            1 => b"2026-11-25 15:40:54.639126 98.73% [WARNING] sofia_reg.c:1842 SIP auth challenge (REGISTER) on sofia profile 'internal' for [1009@10.77.0.1] from ip 10.77.0.2".to_vec(),
            _ => b"2026-11-25 15:40:54.659156 98.73% [DEBUG] switch_core_state_machine.c:584 (sofia/internal/1001@10.77.0.1) Running State Change CS_INIT".to_vec(),
        })
        .collect();
    let Some(f) = builtin("freeswitch", FilterOptions::default()) else {
        panic!("the freeswitch filter is built in");
    };
    let cx = FilterContext {
        tz: jiff::tz::TimeZone::UTC,
        now: NOW,
    };
    let mut g = c.benchmark_group("filter");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("freeswitch_line", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(f.match_line(l, &cx));
            }
        })
    });
    g.finish();
}

/// An IPv4/UDP packet from `src:sport` to `dst:dport` carrying `payload`.
fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// The wire and HEP benches' traffic: REGISTER with credentials and its
/// 401, alternating, from 5,000 clients; each message with its client
/// and direction (`true`: from the client).
fn sip_traffic() -> Vec<(String, [u8; 4], bool)> {
    (0..N as u32)
        .map(|i| {
            let client = [10, 9, (i / 2 / 250 % 250) as u8, (1 + i / 2 % 250) as u8];
            let call = i / 2;
            if i % 2 == 0 {
                (format!("REGISTER sip:10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.1:5062;branch=z9hG4bK{call}\r\nFrom: <sip:1009@10.0.0.1>;tag={call}\r\nTo: <sip:1009@10.0.0.1>\r\nCall-ID: {call}@x\r\nCSeq: 2 REGISTER\r\nAuthorization: Digest username=\"1009\", realm=\"x\", nonce=\"n\", uri=\"sip:10.0.0.1\", response=\"r\"\r\nUser-Agent: Yealink SIP-T46S\r\nContent-Length: 0\r\n\r\n"), client, true)
            } else {
                (format!("SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 10.9.0.1:5062;branch=z9hG4bK{call}\r\nFrom: <sip:1009@10.0.0.1>;tag={call}\r\nTo: <sip:1009@10.0.0.1>;tag=srv\r\nCall-ID: {call}@x\r\nCSeq: 2 REGISTER\r\nWWW-Authenticate: Digest realm=\"x\", nonce=\"n2\"\r\nContent-Length: 0\r\n\r\n"), client, false)
            }
        })
        .collect()
}

/// The HEP intake on the wire bench's traffic, each message wrapped in
/// HEPv3 as Kamailio sends it (with an auth key): allow check, decoding,
/// key check, SIP parsing and pairing, per message.
fn hep(c: &mut Criterion) {
    use sipwarden::source::hep::decode::encode_sip;
    use sipwarden::source::hep::{HepConfig, HepIntake};
    let server = std::net::IpAddr::from([10, 0, 0, 1]);
    let packets: Vec<Vec<u8>> = sip_traffic()
        .into_iter()
        .map(|(m, client, from_client)| {
            let client = (std::net::IpAddr::from(client), 5062);
            let (src, dst) = if from_client {
                (client, (server, 5060))
            } else {
                ((server, 5060), client)
            };
            encode_sip(src, dst, 17, Some(b"a-long-random-key"), m.as_bytes())
        })
        .collect();
    let sender = std::net::IpAddr::from([127, 0, 0, 1]);
    let cfg = HepConfig {
        listen: "127.0.0.1:9060".parse().unwrap(),
        password: Some("a-long-random-key".into()),
        allow: vec!["127.0.0.0/8".parse().unwrap()],
    };
    let scanners = Arc::new(ScannerList::new(DEFAULT_SCANNERS));
    let mut g = c.benchmark_group("hep");
    g.throughput(Throughput::Elements(packets.len() as u64));
    g.bench_function("sip_message", |b| {
        b.iter_batched_ref(
            || {
                HepIntake::new(
                    JailId(0),
                    cfg.clone(),
                    scanners.clone(),
                    Arc::default(),
                    Arc::default(),
                )
            },
            |intake| {
                let mut out = Vec::new();
                for p in &packets {
                    let _ = black_box(intake.packet(sender, p, NOW, &mut out));
                }
                black_box(out);
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn wire(c: &mut Criterion) {
    use sipwarden::source::sip::{Tracker, parse_sip};
    use sipwarden::source::wire::transport;
    // The traffic of `sip_traffic`, as IPv4/UDP packets.
    let packets: Vec<(Vec<u8>, bool)> = sip_traffic()
        .into_iter()
        .map(|(m, client, from_client)| {
            let p = if from_client {
                udp(client, 5062, [10, 0, 0, 1], 5060, m.as_bytes())
            } else {
                udp([10, 0, 0, 1], 5060, client, 5062, m.as_bytes())
            };
            (p, from_client)
        })
        .collect();
    let scanners = ScannerList::new(DEFAULT_SCANNERS);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(packets.len() as u64));
    g.bench_function("sip_packet", |b| {
        b.iter_batched_ref(
            Tracker::default,
            |t| {
                for (p, from_client) in &packets {
                    if let Some((src, dst, _, _, payload)) = transport(p, &[5060]) {
                        if let Some(m) = parse_sip(payload) {
                            let client = if *from_client { src } else { dst };
                            black_box(t.observe(client, *from_client, &m, &scanners));
                        }
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, esl, jail, log_filter, wire, hep);
criterion_main!(benches);
