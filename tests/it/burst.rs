//! The burst rule against the real kernel: a source failing at machine
//! speed is in the kernel set after its 3rd failure although `maxretry` is
//! 10, and its packets stop; a source failing every 30 s (a phone with a
//! stale password) is not banned by its 3rd, nor by its 9th failure.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    TempDir, TestNet, append, daemon_section, delivered, fs_auth_failure, need, start_in,
    wait_until,
};

fn banned_v4(net: &TestNet) -> Vec<String> {
    net.pbx
        .set_elements("banned_v4")
        .iter()
        .filter_map(|e| {
            e["elem"]["val"]
                .as_str()
                .or_else(|| e.as_str())
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn a_machine_speed_source_is_dropped_at_its_3rd_failure_and_a_slow_one_is_not() {
    if !need("netns") {
        return;
    }
    let net = TestNet::new();
    let av = format!("{}v", net.atk.name);
    // The phone: a second address of the attacker's namespace.
    net.atk
        .sh(&["ip", "addr", "add", "10.77.0.3/24", "dev", &av]);
    let dir = TempDir::new("burst");
    let log = dir.path("freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}\"\nmaxretry = 10\nfindtime = \"1h\"\n",
            daemon_section(&dir),
            log.display()
        ),
    )
    .unwrap();
    let d = start_in(&net.pbx, &cfg);
    let rx = Arc::new(net.pbx.run(|| UdpSocket::bind("10.77.0.1:5060").unwrap()));
    let scanner = Arc::new(net.atk.run(|| UdpSocket::bind("10.77.0.2:5062").unwrap()));
    let phone = Arc::new(net.atk.run(|| UdpSocket::bind("10.77.0.3:5062").unwrap()));
    for tx in [&scanner, &phone] {
        assert!(
            wait_until(Duration::from_secs(5), || delivered(
                tx,
                &rx,
                Duration::from_millis(300)
            )),
            "traffic from {:?} passes before any failure",
            tx.local_addr()
        );
    }

    // The phone: nine failures, 30 s apart (dated in the log), ending now.
    let phone_lines: String = (0..9)
        .rev()
        .map(|k| fs_auth_failure("10.77.0.3", 30 * k))
        .collect();
    append(&log, &phone_lines);
    // The scanner: three failures within the same second.
    append(
        &log,
        &(0..3)
            .map(|_| fs_auth_failure("10.77.0.2", 0))
            .collect::<String>(),
    );
    assert!(
        d.wait_for(
            "[freeswitch] Ban 10.77.0.2 (3 failures in a burst",
            Duration::from_secs(10)
        )
        .is_some(),
        "the scanner is banned at its 3rd failure"
    );
    assert!(
        wait_until(Duration::from_secs(5), || banned_v4(&net)
            .iter()
            .any(|a| a == "10.77.0.2")),
        "10.77.0.2 is in the kernel set: {:?}",
        banned_v4(&net)
    );
    assert!(
        !delivered(&scanner, &rx, Duration::from_millis(500)),
        "the scanner's packets are dropped"
    );
    // The phone's nine failures were all read before the scanner's (same
    // file, in order): it was counted and not banned.
    assert_eq!(d.lines_with("] Found 10.77.0.3").len(), 9);
    assert!(d.lines_with("] Ban 10.77.0.3").is_empty());
    assert!(!banned_v4(&net).iter().any(|a| a == "10.77.0.3"));
    assert!(
        delivered(&phone, &rx, Duration::from_secs(2)),
        "the phone still gets through"
    );
    // Its 10th failure reaches maxretry.
    append(&log, &fs_auth_failure("10.77.0.3", 0));
    assert!(
        d.wait_for(
            "[freeswitch] Ban 10.77.0.3 (10 failures",
            Duration::from_secs(10)
        )
        .is_some(),
        "the phone is banned at maxretry"
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}
