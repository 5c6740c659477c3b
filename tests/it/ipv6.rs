//! IPv6 prefixes against the real kernel (`ipv6_prefix`, default 64): a
//! scanner rotating through its /64 ends as one element of
//! `banned_net_v6`, which drops the rest of that /64 and nothing else; a
//! /64 holding this host's own address is banned address by address; the
//! /64 comes back from the store after a restart.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    TempDir, TestNet, append, cli, daemon_section, delivered, fs_auth_failure, need, start_in,
    wait_until,
};

fn failure_line(ip: &str) -> String {
    fs_auth_failure(ip, 0)
}

/// The prefixes `banned_net_v6` holds, as (first address, length), read
/// with `nft -j list set` in the namespace.
fn v6_prefixes(net: &TestNet) -> Vec<(String, u64)> {
    net.pbx
        .set_elements("banned_net_v6")
        .iter()
        .filter_map(|e| {
            let p = &e["elem"]["val"]["prefix"];
            Some((p["addr"].as_str()?.to_string(), p["len"].as_u64()?))
        })
        .collect()
}

#[test]
fn a_rotating_64_is_one_element_of_banned_net_v6_and_drops_only_that_64() {
    if !need("netns") {
        return;
    }
    let net = TestNet::new();
    // The PBX in 2001:db8:1:1::/64; the attacker holds five addresses of
    // 2001:db8:1:2::/64 and one of 2001:db8:1:3::/64, all on the link.
    let (pv, av) = (format!("{}v", net.pbx.name), format!("{}v", net.atk.name));
    net.pbx.sh(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:1:1::1/64",
        "dev",
        &pv,
        "nodad",
    ]);
    net.pbx
        .sh(&["ip", "-6", "route", "add", "2001:db8:1::/48", "dev", &pv]);
    for a in [
        "2001:db8:1:2::10/64",
        "2001:db8:1:2::11/64",
        "2001:db8:1:2::12/64",
        "2001:db8:1:2::13/64",
        "2001:db8:1:2::14/64",
        "2001:db8:1:3::10/64",
    ] {
        net.atk
            .sh(&["ip", "-6", "addr", "add", a, "dev", &av, "nodad"]);
    }
    net.atk
        .sh(&["ip", "-6", "route", "add", "2001:db8:1:1::/64", "dev", &av]);

    let dir = TempDir::new("ipv6");
    let log = dir.path("freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}\"\nmaxretry = 3\nburst = false\n",
            daemon_section(&dir),
            log.display()
        ),
    )
    .unwrap();
    let d = start_in(&net.pbx, &cfg);

    let rx = Arc::new(
        net.pbx
            .run(|| UdpSocket::bind("[2001:db8:1:1::1]:5060").unwrap()),
    );
    let other_in_64 = Arc::new(
        net.atk
            .run(|| UdpSocket::bind("[2001:db8:1:2::14]:5062").unwrap()),
    );
    let other_64 = Arc::new(
        net.atk
            .run(|| UdpSocket::bind("[2001:db8:1:3::10]:5062").unwrap()),
    );
    for tx in [&other_in_64, &other_64] {
        assert!(
            wait_until(Duration::from_secs(5), || delivered(
                tx,
                &rx,
                Duration::from_millis(300)
            )),
            "traffic from {:?} passes before the ban",
            tx.local_addr()
        );
    }

    // Three addresses of the /64, one failure each.
    for a in ["2001:db8:1:2::10", "2001:db8:1:2::11", "2001:db8:1:2::12"] {
        append(&log, &failure_line(a));
    }
    assert!(
        d.wait_for(
            "[freeswitch] Ban 2001:db8:1:2::/64 (3 failures, 1h)",
            Duration::from_secs(10)
        )
        .is_some(),
        "the /64 is banned at maxretry"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !v6_prefixes(&net).is_empty()),
        "the prefix reaches the kernel"
    );
    assert_eq!(
        v6_prefixes(&net),
        [("2001:db8:1:2::".to_string(), 64)],
        "one element, the /64: {:?}",
        net.pbx.set_elements("banned_net_v6")
    );
    assert!(
        net.pbx.set_elements("banned_v6").is_empty(),
        "no single address banned"
    );
    assert!(
        !delivered(&other_in_64, &rx, Duration::from_millis(500)),
        "an address of the banned /64 that never failed is dropped"
    );
    assert!(
        delivered(&other_64, &rx, Duration::from_secs(2)),
        "an address of another /64 passes"
    );

    // status shows the prefix with the addresses seen in it.
    let out = cli(&dir, &["status", "freeswitch", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = &v["result"];
    assert_eq!(v["ipv6_prefix"], 64, "{v}");
    let ban = &v["banned"][0];
    assert_eq!(ban["addr"], "2001:db8:1:2::/64", "{v}");
    assert_eq!(
        ban["seen"],
        serde_json::json!(["2001:db8:1:2::10", "2001:db8:1:2::11", "2001:db8:1:2::12"])
    );

    // A restart with the kernel's copy wiped: the store brings the /64 back
    // as the /64, and it still covers the addresses that never failed.
    assert!(
        d.stop().is_some_and(|s| s.success()),
        "SIGTERM stops cleanly"
    );
    net.pbx.sh(&["nft", "delete", "table", "inet", "sipwarden"]);
    let d = start_in(&net.pbx, &cfg);
    assert!(
        wait_until(Duration::from_secs(10), || !v6_prefixes(&net).is_empty()),
        "the stored /64 is restored"
    );
    assert_eq!(v6_prefixes(&net), [("2001:db8:1:2::".to_string(), 64)]);
    let out = cli(&dir, &["status", "freeswitch", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["banned"][0]["addr"], "2001:db8:1:2::/64", "{v}");
    assert!(
        !delivered(&other_in_64, &rx, Duration::from_millis(500)),
        "the restored /64 drops its addresses"
    );

    // One address of it cannot be unbanned alone: the answer names the /64.
    let out = cli(&dir, &["unban", "2001:db8:1:2::14"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jail freeswitch bans 2001:db8:1:2::/64, which holds it"),
        "{err}"
    );
    // Lifted by its name: gone from the kernel, traffic passes again.
    let out = cli(&dir, &["unban", "2001:db8:1:2::/64"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(5), || v6_prefixes(&net).is_empty()),
        "the unban removes the element"
    );
    assert!(wait_until(Duration::from_secs(5), || delivered(
        &other_in_64,
        &rx,
        Duration::from_millis(300)
    )));

    // fd77::/64 holds this host's own fd77::1: fd77::2 is banned alone,
    // and the log says why.
    append(&log, &failure_line("fd77::2").repeat(3));
    assert!(
        d.wait_for(
            "[freeswitch] Ban fd77::2 (3 failures",
            Duration::from_secs(10)
        )
        .is_some()
    );
    assert!(
        d.wait_for("fd77::/64 holds fd77::1", Duration::from_secs(5))
            .is_some(),
        "the log says why the /64 is not banned"
    );
    assert_eq!(d.lines_with("fd77::/64 holds").len(), 1, "said once");
    assert!(wait_until(Duration::from_secs(5), || net
        .pbx
        .addresses("banned_v6")
        .contains("fd77::2")));
    assert!(v6_prefixes(&net).is_empty());
    assert!(d.stop().is_some_and(|s| s.success()));
}
