use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::decode::encode_sip;
use super::*;
use crate::event::FailureKind;

const SERVER: &str = "10.0.0.1";
const ATTACKER: &str = "203.0.113.7";
const KAMAILIO: &str = "127.0.0.1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn intake(password: Option<&str>) -> HepIntake {
    HepIntake::new(
        JailId(3),
        HepConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            password: password.map(str::to_string),
            allow: vec!["127.0.0.0/8".parse().unwrap()],
        },
        Arc::new(ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS)),
        Arc::default(),
        Arc::default(),
    )
}

/// The attacker's REGISTER with credentials; its text names other
/// addresses (Via, Contact, a forged X-Real-IP) that must never count.
fn register(cseq: u32) -> String {
    format!(
        "REGISTER sip:{SERVER} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK{cseq}\r\nFrom: <sip:1009@{SERVER}>;tag=1\r\nTo: <sip:1009@{SERVER}>\r\nCall-ID: c1\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:1009@198.51.100.2>\r\nX-Real-IP: 198.51.100.3\r\nAuthorization: Digest username=\"1009\", nonce=\"n\", response=\"r\"\r\nUser-Agent: pbx-phone\r\nContent-Length: 0\r\n\r\n"
    )
}

fn answer(cseq: u32, status: &str, extra: &str) -> String {
    format!(
        "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK{cseq}\r\nTo: <sip:1009@{SERVER}>;tag=s\r\nCall-ID: c1\r\nCSeq: {cseq} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

/// A request from the attacker to the server, as the server mirrors it.
fn inbound(sip: &str, proto: u8, key: Option<&[u8]>) -> Vec<u8> {
    encode_sip(
        (ip(ATTACKER), 5062),
        (ip(SERVER), 5061),
        proto,
        key,
        sip.as_bytes(),
    )
}

/// The server's answer to the attacker.
fn outbound(sip: &str, proto: u8, key: Option<&[u8]>) -> Vec<u8> {
    encode_sip(
        (ip(SERVER), 5061),
        (ip(ATTACKER), 5062),
        proto,
        key,
        sip.as_bytes(),
    )
}

/// Issue 20: a rejected REGISTER mirrored over HEP is a failure of the
/// HEP source-address chunk, never of an address in the SIP text; the
/// transport (TLS here) does not matter.
#[test]
fn rejected_register_counts_for_the_hep_source_address() {
    let i = intake(None);
    let mut out = Vec::new();
    let k = ip(KAMAILIO);
    i.packet(k, &inbound(&register(2), 22, None), Time(5), &mut out)
        .unwrap();
    assert!(out.is_empty());
    i.packet(
        k,
        &outbound(&answer(2, "403 Forbidden", ""), 3, None),
        Time(6),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].addr, ip(ATTACKER));
    assert_eq!(out[0].kind, FailureKind::RegisterAuth);
    assert_eq!(out[0].jail, JailId(3));
    assert_eq!(out[0].time, Time(6));
    assert_eq!(out[0].user.as_deref(), Some("1009"));
    assert_eq!(i.stats.messages.load(Ordering::Relaxed), 2);
    assert_eq!(i.stats.failures.load(Ordering::Relaxed), 1);
}

/// Issue 20: a `stale=true` re-challenge is never a failure, through HEP
/// as through the wire (one implementation).
#[test]
fn stale_challenge_through_hep_is_not_a_failure() {
    let i = intake(None);
    let mut out = Vec::new();
    let k = ip(KAMAILIO);
    i.packet(k, &inbound(&register(4), 17, None), Time(1), &mut out)
        .unwrap();
    let stale = answer(
        4,
        "401 Unauthorized",
        "WWW-Authenticate: Digest realm=\"x\", nonce=\"m\", stale=true\r\n",
    );
    i.packet(k, &outbound(&stale, 17, None), Time(1), &mut out)
        .unwrap();
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn scanner_user_agent_through_hep() {
    let i = intake(None);
    let mut out = Vec::new();
    let opt = format!(
        "OPTIONS sip:100@{SERVER} SIP/2.0\r\nCall-ID: s\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\n\r\n"
    );
    i.packet(ip(KAMAILIO), &inbound(&opt, 17, None), Time(1), &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].scanner);
    assert_eq!(out[0].addr, ip(ATTACKER));
}

/// Issue 20: packets from senders outside `allow`, or without the right
/// authentication key, are dropped and counted; the senders accepted are
/// recorded (to be protected), those dropped never.
#[test]
fn outsiders_and_wrong_keys_are_dropped_and_counted() {
    let i = intake(Some("s3cret"));
    let mut out = Vec::new();
    let reg = register(2);
    let rej = answer(2, "403 Forbidden", "");
    // Right key, but from outside allow.
    assert_eq!(
        i.packet(
            ip("192.0.2.9"),
            &inbound(&reg, 17, Some(b"s3cret")),
            Time(1),
            &mut out
        ),
        Err(Dropped::Sender)
    );
    // From inside allow: no key, a wrong key, a longer key.
    for key in [None, Some(&b"s3creT"[..]), Some(&b"s3cret2"[..])] {
        assert_eq!(
            i.packet(ip(KAMAILIO), &inbound(&reg, 17, key), Time(1), &mut out),
            Err(Dropped::Auth)
        );
        assert_eq!(
            i.packet(ip(KAMAILIO), &outbound(&rej, 17, key), Time(1), &mut out),
            Err(Dropped::Auth)
        );
    }
    assert!(out.is_empty());
    assert!(i.senders.take_new().is_empty(), "nobody was accepted");
    // Broken HEP.
    assert!(matches!(
        i.packet(ip(KAMAILIO), b"HEP3\x00\x09abc", Time(1), &mut out),
        Err(Dropped::Malformed(_))
    ));
    assert_eq!(i.stats.dropped_sender.load(Ordering::Relaxed), 1);
    assert_eq!(i.stats.dropped_auth.load(Ordering::Relaxed), 6);
    assert_eq!(i.stats.dropped_malformed.load(Ordering::Relaxed), 1);
    // The right key from inside allow: counted, and the sender recorded once.
    i.packet(
        ip(KAMAILIO),
        &inbound(&reg, 17, Some(b"s3cret")),
        Time(1),
        &mut out,
    )
    .unwrap();
    i.packet(
        ip(KAMAILIO),
        &outbound(&rej, 17, Some(b"s3cret")),
        Time(1),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(i.senders.take_new(), vec![IpNet::from(ip(KAMAILIO))]);
    assert!(i.senders.take_new().is_empty());
}

/// HEPv2 has no authentication key: with a password it is refused.
#[test]
fn hep2_is_read_without_a_password_only() {
    let mut pkt = vec![2, 16, 2, 17];
    pkt.extend_from_slice(&5062u16.to_be_bytes());
    pkt.extend_from_slice(&5060u16.to_be_bytes());
    pkt.extend_from_slice(&[203, 0, 113, 7, 10, 0, 0, 1]);
    pkt.extend_from_slice(&[0; 12]);
    let opt =
        "OPTIONS sip:x SIP/2.0\r\nCall-ID: s\r\nCSeq: 1 OPTIONS\r\nUser-Agent: sipvicious\r\n\r\n";
    pkt.extend_from_slice(opt.as_bytes());
    let mut out = Vec::new();
    intake(None)
        .packet(ip(KAMAILIO), &pkt, Time(1), &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        intake(Some("k")).packet(ip(KAMAILIO), &pkt, Time(1), &mut out),
        Err(Dropped::Auth)
    );
}

#[test]
fn senders_are_bounded_and_canonical() {
    let s = HepSenders::default();
    assert!(s.note("::ffff:127.0.0.1".parse().unwrap()));
    assert_eq!(s.take_new(), vec![IpNet::from(ip("127.0.0.1"))]);
    for n in 0..MAX_SENDERS as u32 + 5 {
        s.note(IpAddr::from((0x0a00_0000u32 + n).to_be_bytes()));
    }
    assert_eq!(s.take_new().len(), MAX_SENDERS - 1);
    assert!(!s.note(ip("192.0.2.200")));
}

#[test]
fn a_listener_beyond_loopback_without_password_is_warned_about() {
    let mut c = intake(None).cfg;
    assert!(c.warning().is_none(), "loopback");
    c.listen = "0.0.0.0:9060".parse().unwrap();
    assert!(c.warning().unwrap().contains("password"));
    c.password = Some("k".into());
    assert!(c.warning().is_none());
}

#[test]
fn fuzz_corpus_replays_clean() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/hep");
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(d) = std::fs::read(e.path()) {
            fuzz_hep(&d);
            n += 1;
        }
    }
    assert!(n > 0, "no corpus under {dir}");
}

mod sockets {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// A port free for both UDP and TCP on loopback right now.
    fn free_port() -> u16 {
        for _ in 0..50 {
            let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = u.local_addr().unwrap().port();
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        panic!("no free port");
    }

    fn start(
        allow: &str,
    ) -> (
        HepListeners,
        Arc<HepIntake>,
        tokio::sync::mpsc::Receiver<Vec<FailureEvent>>,
        SocketAddr,
    ) {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut i = intake(None);
        i.cfg.listen = addr;
        i.cfg.allow = vec![allow.parse().unwrap()];
        let i = Arc::new(i);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let l = HepListeners::start(i.clone(), tx, "hep test".into(), Arc::default()).unwrap();
        (l, i, rx, addr)
    }

    async fn next(rx: &mut tokio::sync::mpsc::Receiver<Vec<FailureEvent>>) -> Vec<FailureEvent> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a batch within 10 s")
            .expect("channel open")
    }

    /// UDP and TCP (a frame split across writes, two frames in one write)
    /// reach the same pairing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn udp_and_tcp_feed_the_same_pairing() {
        let (_l, i, mut rx, addr) = start("127.0.0.0/8");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.send_to(&inbound(&register(2), 17, None), addr).unwrap();
        udp.send_to(&outbound(&answer(2, "403 Forbidden", ""), 17, None), addr)
            .unwrap();
        let got = next(&mut rx).await;
        assert_eq!(got[0].addr, ip(ATTACKER));

        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        let a = inbound(&register(3), 6, None);
        let b = outbound(&answer(3, "403 Forbidden", ""), 6, None);
        tcp.write_all(&a[..10]).unwrap();
        tcp.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut rest = a[10..].to_vec();
        rest.extend_from_slice(&b);
        tcp.write_all(&rest).unwrap();
        let got = next(&mut rx).await;
        assert_eq!(
            (got[0].addr, got[0].kind),
            (ip(ATTACKER), FailureKind::RegisterAuth)
        );
        assert_eq!(i.stats.dropped_malformed.load(Ordering::Relaxed), 0);
    }

    /// Waits (bounded: 10 s) for `f`.
    async fn until(f: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Whether the server closed `s` (reads end, or fail), within 20 s.
    async fn closed(s: tokio::net::TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut s = s;
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(20), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// TCP stays bounded: a connection from outside `allow` is closed at
    /// once, a stream that is not HEP is closed, and no more than
    /// MAX_CONNECTIONS are served at once (the rest refused, counted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_is_bounded() {
        use tokio::io::AsyncWriteExt;
        use tokio::net::{TcpSocket, TcpStream};
        let (_l, i, _rx, addr) = start("127.0.0.1/32");
        // 127.0.0.2 is loopback but outside allow.
        let s = TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(ip("127.0.0.2"), 0)).unwrap();
        let outsider = s.connect(addr).await.unwrap();
        assert!(closed(outsider).await, "an outsider's connection is closed");
        assert_eq!(i.stats.dropped_sender.load(Ordering::Relaxed), 1);

        let mut junk = TcpStream::connect(addr).await.unwrap();
        junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(closed(junk).await, "a stream that is not HEP is closed");
        assert_eq!(i.stats.dropped_malformed.load(Ordering::Relaxed), 1);
        assert!(until(|| i.stats.connections.load(Ordering::Relaxed) == 0).await);

        // MAX_CONNECTIONS idle connections held open, then one more.
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        assert!(
            until(|| i.stats.connections.load(Ordering::Relaxed) == MAX_CONNECTIONS as u64).await,
            "the held connections were accepted"
        );
        let extra = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed(extra).await,
            "the connection over the bound is closed"
        );
        assert_eq!(i.stats.busy.load(Ordering::Relaxed), 1);
        // A slot freed is served again.
        drop(held.pop());
        assert!(
            until(|| i.stats.connections.load(Ordering::Relaxed) < MAX_CONNECTIONS as u64).await
        );
        let mut again = TcpStream::connect(addr).await.unwrap();
        again
            .write_all(&inbound(&register(7), 6, None))
            .await
            .unwrap();
        assert!(until(|| i.stats.messages.load(Ordering::Relaxed) == 1).await);
    }

    /// A client that sends a frame, then part of one and stops, is closed
    /// (after FRAME_TIMEOUT, 10 s): a slow client holds its slot for a
    /// bounded time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_frame_is_closed() {
        use tokio::io::AsyncWriteExt;
        let (_l, i, _rx, addr) = start("127.0.0.0/8");
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let a = inbound(&register(3), 6, None);
        let mut bytes = a.clone();
        bytes.extend_from_slice(&a[..20]);
        c.write_all(&bytes).await.unwrap();
        assert!(closed(c).await, "closed once FRAME_TIMEOUT passed");
        assert_eq!(i.stats.messages.load(Ordering::Relaxed), 1);
        assert!(until(|| i.stats.connections.load(Ordering::Relaxed) == 0).await);
    }
}
