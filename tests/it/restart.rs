//! Bans survive a restart: the store restores them into the kernel with
//! their remaining time, in a few netlink batches.

use std::time::{Duration, Instant};

use crate::common::{NetNs, TempDir, append, cli, daemon_section, need, start_in};

#[test]
fn twenty_thousand_bans_survive_a_restart_with_their_remaining_time() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("r");
    let dir = TempDir::new("restart");
    let log = dir.path("freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 1\nbantime = \"1h\"\nignoreself = false\n[jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}\"\n",
            daemon_section(&dir),
            log.display()
        ),
    )
    .unwrap();
    let d = start_in(&ns, &cfg);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let mut text = String::new();
    for i in 0..20_000u32 {
        let a = std::net::Ipv4Addr::from(0x0a50_0000u32 + i);
        text.push_str(&format!("{now} [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1@h] from ip {a}\n"));
    }
    append(&log, &text);
    let count = || ns.set_elements("banned_v4").len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count() < 20_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(), 20_000);
    // Manual bans are kept too: a prefix and a permanent v6 address.
    assert!(
        cli(
            &dir,
            &["ban", "freeswitch", "198.51.100.0/24", "--for", "2h"]
        )
        .status
        .success()
    );
    assert!(
        cli(&dir, &["ban", "freeswitch", "2001:db8::5", "--for", "-1"])
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        d.stop().is_some_and(|s| s.success()),
        "SIGTERM stops cleanly"
    );
    // Wipe the kernel's copy, so only the store can bring the bans back.
    ns.sh(&["nft", "delete", "table", "inet", "sipwarden"]);

    let d = start_in(&ns, &cfg);
    let restored = d
        .wait_for("restored ", Duration::from_secs(30))
        .expect("restore line");
    println!("restart: {restored}");
    assert!(
        restored.contains("restored 20002 active ban(s)"),
        "{restored}"
    );
    let elems = ns.set_elements("banned_v4");
    assert_eq!(elems.len(), 20_000);
    // Each element carries its remaining time (under the 1h it started with).
    let t = elems[0]["elem"]["timeout"].as_u64().unwrap();
    assert!(t > 3000 && t <= 3600, "remaining timeout {t}");
    let nets = ns.sh(&["nft", "list", "set", "inet", "sipwarden", "banned_net_v4"]);
    assert!(nets.contains("198.51.100.0/24"), "{nets}");
    let v6 = ns.sh(&["nft", "list", "set", "inet", "sipwarden", "banned_v6"]);
    assert!(
        v6.contains("2001:db8::5") && !v6.contains("2001:db8::5 timeout"),
        "permanent: {v6}"
    );
    let status = cli(&dir, &["status", "freeswitch", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["result"]["currently_banned"], 20_002);
    assert!(d.stop().is_some_and(|s| s.success()));
}
