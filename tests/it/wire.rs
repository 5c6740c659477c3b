//! The wire sensor's packet ring (issue 23): every packet sent over a
//! namespace's loopback is read, once, and the kernel's drop count is shown.

use std::net::UdpSocket;
use std::time::Duration;

use crate::common::{Daemon, NetNs, TempDir, bin, cli, daemon_section, need, wait_until};

/// The wire source's status entry.
fn wire_status(dir: &TempDir) -> serde_json::Value {
    let out = cli(dir, &["status", "wire", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .map(|v| v["result"]["sources"][0].clone())
        .unwrap_or_default()
}

/// 2,000 REGISTERs with credentials, each answered 401, from 500 client
/// addresses, then one 60 KB SIP message (a TCP segment or a large datagram
/// on the loopback is that big): all 4,001 packets are taken from the ring
/// once each (the loopback's leaving copies left out), every message is
/// read and every failure found.
#[test]
fn wire_ring_reads_every_packet_once() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("wring");
    ns.sh(&["ip", "addr", "add", "10.9.0.1/16", "dev", "lo"]);
    let dir = TempDir::new("wire-ring");
    let cfg = dir.path("sw.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 1000000\nignoreself = false\n[jail.wire]\nwire = {{ interface = \"lo\", ports = [5060] }}\nburst = false\n",
            daemon_section(&dir)
        ),
    )
    .unwrap();
    let d = Daemon::start_with(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        bin(),
        "run",
        "--dry-run",
        "--config",
        cfg.to_str().unwrap(),
    ]));
    assert!(
        wait_until(Duration::from_secs(30), || wire_status(&dir)["healthy"]
            == true),
        "the wire source came up"
    );
    const PAIRS: usize = 2000;
    ns.run(|| {
        let srv = UdpSocket::bind("10.9.0.1:5060").unwrap();
        let clients: Vec<UdpSocket> = (0..500)
            .map(|i| UdpSocket::bind(format!("10.9.{}.{}:0", 1 + i / 250, 1 + i % 250)).unwrap())
            .collect();
        for c in 0..PAIRS {
            let s = &clients[c % clients.len()];
            let reg = format!(
                "REGISTER sip:10.9.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK{c}\r\n\
                 From: <sip:1009@10.9.0.1>;tag={c}\r\nTo: <sip:1009@10.9.0.1>\r\nCall-ID: {c}@x\r\n\
                 CSeq: 2 REGISTER\r\nAuthorization: Digest username=\"1009\", realm=\"x\", nonce=\"n\", \
                 uri=\"sip:10.9.0.1\", response=\"r\"\r\nContent-Length: 0\r\n\r\n"
            );
            let ans = format!(
                "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK{c}\r\n\
                 From: <sip:1009@10.9.0.1>;tag={c}\r\nTo: <sip:1009@10.9.0.1>;tag=s\r\n\
                 Call-ID: {c}@x\r\nCSeq: 2 REGISTER\r\nWWW-Authenticate: Digest realm=\"x\", \
                 nonce=\"m\"\r\nContent-Length: 0\r\n\r\n"
            );
            s.send_to(reg.as_bytes(), "10.9.0.1:5060").unwrap();
            srv.send_to(ans.as_bytes(), s.local_addr().unwrap()).unwrap();
            // Paced a little every 100 pairs: the test is about reading every
            // packet, not about the UDP receive buffers of these sockets.
            if c % 100 == 99 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let body = "x".repeat(60_000);
        let big = format!(
            "MESSAGE sip:100@10.9.0.1 SIP/2.0\r\nCall-ID: big@x\r\nCSeq: 1 MESSAGE\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        clients[0]
            .send_to(big.as_bytes(), "10.9.0.1:5060")
            .unwrap();
    });
    let want = 2 * PAIRS as u64 + 1;
    let done = wait_until(Duration::from_secs(30), || {
        wire_status(&dir)["lines"].as_u64() == Some(want)
    });
    let s = wire_status(&dir);
    assert!(done, "every SIP message read: {s}");
    // Counted once more after a stats reading (each second): nothing more,
    // nothing dropped.
    std::thread::sleep(Duration::from_millis(1500));
    let s = wire_status(&dir);
    assert_eq!(s["lines"], want, "{s}");
    assert_eq!(s["packets"], want, "each packet taken once: {s}");
    assert_eq!(s["matched"], PAIRS as u64, "every failure found: {s}");
    assert_eq!(s["dropped_kernel"], 0, "{s}");
    assert!(d.stop().is_some_and(|st| st.success()));
}
