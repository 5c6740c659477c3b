//! Kernel truth: a ban is shown, stored and shared only once the kernel
//! accepted its element; a refusal goes back to whoever asked. Overlapping
//! prefixes, refused elements and wall-clock steps, against the real kernel
//! in a namespace this test creates.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Daemon, NetNs, TempDir, bin, cli, daemon_section, need, wait_until};

/// A daemon with the nftables backend in `ns`, one jail `m` following an
/// empty log; `extra` goes into `[firewall]`.
fn start(ns: &NetNs, dir: &TempDir, firewall: &str) -> Daemon {
    start_with(ns, dir, firewall, &[])
}

fn start_with(ns: &NetNs, dir: &TempDir, firewall: &str, env: &[(&str, String)]) -> Daemon {
    let log = dir.path("m.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[firewall]\n{firewall}\n\n[defaults]\nignoreip = []\nignoreself = false\n\n[jail.m]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            daemon_section(dir),
            log.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, bin(), "run", "--config"])
        .arg(&cfg);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let d = Daemon::start_with(&mut cmd);
    for needle in [": following", " started: "] {
        assert!(
            d.wait_for(needle, Duration::from_secs(30)).is_some(),
            "daemon did not start (no {needle:?} in its log)"
        );
    }
    d
}

fn banned(dir: &TempDir) -> Vec<Value> {
    let out = cli(dir, &["status", "m", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["result"]["banned"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn addrs(dir: &TempDir) -> Vec<String> {
    banned(dir)
        .iter()
        .filter_map(|b| b["addr"].as_str().map(String::from))
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_ban_the_kernel_refuses_fails_and_is_never_shown() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("kt");
    let dir = TempDir::new("kt");
    let d = start(&ns, &dir, "set_size = 2");
    for a in ["198.51.100.1", "198.51.100.2"] {
        let out = cli(&dir, &["ban", "m", a]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // The set is full: the kernel refuses the third element.
    let out = cli(&dir, &["ban", "m", "198.51.100.3"]);
    assert!(!out.status.success(), "a refused ban must not exit 0");
    assert!(stderr(&out).contains("set is full"), "{}", stderr(&out));
    let shown = addrs(&dir);
    assert!(!shown.contains(&"198.51.100.3".to_string()), "{shown:?}");
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!(ns.addresses("banned_v4").len(), 2);
    assert!(
        d.wait_for(
            "ban of 198.51.100.3 refused by the firewall",
            Duration::from_secs(5)
        )
        .is_some()
    );
    // A duration beyond what the kernel holds: refused, never shown.
    let out = cli(&dir, &["unban", "198.51.100.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&dir, &["ban", "m", "203.0.113.1", "--for", "214000d"]);
    assert!(
        !out.status.success(),
        "a ban beyond the kernel's range must not exit 0"
    );
    assert!(!addrs(&dir).contains(&"203.0.113.1".to_string()));
    assert!(!ns.addresses("banned_v4").contains("203.0.113.1"));
    // What the daemon says is what the kernel holds.
    let shown: std::collections::BTreeSet<String> = addrs(&dir).into_iter().collect();
    assert_eq!(shown, ns.addresses("banned_v4"));
    d.stop();
}

/// The intervals of a set, as `first-last` text from `nft -j`.
fn intervals(ns: &NetNs, set: &str) -> Vec<String> {
    ns.set_elements(set)
        .iter()
        .map(|e| {
            let v = &e["elem"]["val"];
            if let Some(p) = v.get("prefix") {
                format!("{}/{}", p["addr"].as_str().unwrap_or(""), p["len"])
            } else if let Some(r) = v.get("range") {
                format!(
                    "{}-{}",
                    r[0].as_str().unwrap_or(""),
                    r[1].as_str().unwrap_or("")
                )
            } else {
                v.as_str().unwrap_or("").to_string()
            }
        })
        .collect()
}

#[test]
fn overlapping_prefixes_hold_disjoint_intervals_and_an_unban_keeps_what_is_still_banned() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("kp");
    let dir = TempDir::new("kp");
    let d = start(&ns, &dir, "");
    let ok = |args: &[&str]| {
        let out = cli(&dir, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    ok(&["ban", "m", "203.0.113.2/31", "--for", "2h"]);
    ok(&["ban", "m", "203.0.113.0/24", "--for", "1h"]);
    // Both are in force; the kernel holds disjoint parts, the /31's with
    // its own, later end.
    let shown = addrs(&dir);
    assert!(
        shown.contains(&"203.0.113.0/24".to_string())
            && shown.contains(&"203.0.113.2/31".to_string()),
        "{shown:?}"
    );
    let held = intervals(&ns, "banned_net_v4");
    assert_eq!(held.len(), 3, "{held:?}");
    // Lifting the /31 leaves the whole /24 in the kernel.
    ok(&["unban", "203.0.113.2/31"]);
    assert_eq!(intervals(&ns, "banned_net_v4"), ["203.0.113.0/24"]);
    assert_eq!(addrs(&dir), ["203.0.113.0/24"]);
    // A prefix inside a longer ban changes nothing in the kernel; lifting
    // the outer one leaves the inner.
    ok(&["ban", "m", "203.0.113.128/25", "--for", "10m"]);
    assert_eq!(intervals(&ns, "banned_net_v4"), ["203.0.113.0/24"]);
    ok(&["unban", "203.0.113.0/24"]);
    assert_eq!(intervals(&ns, "banned_net_v4"), ["203.0.113.128/25"]);
    ok(&["unban", "203.0.113.128/25"]);
    assert!(intervals(&ns, "banned_net_v4").is_empty());
    // The same prefix in two jails is not this test's; the ledger's unit
    // tests cover it (enforce::elements).
    d.stop();
}

#[test]
fn an_unban_the_kernel_refuses_leaves_the_ban_shown_and_in_force() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("ku");
    let dir = TempDir::new("ku");
    let d = start(&ns, &dir, "set_size = 3");
    let ok = |args: &[&str]| {
        let out = cli(&dir, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    ok(&["ban", "m", "203.0.113.0/24", "--for", "2h"]);
    for p in [
        "203.0.113.0/30",
        "203.0.113.16/30",
        "203.0.113.32/30",
        "203.0.113.48/30",
    ] {
        ok(&["ban", "m", p, "--for", "1h"]);
    }
    // One interval holds them all; lifting the /24 would need four, and
    // the set holds three.
    assert_eq!(intervals(&ns, "banned_net_v4"), ["203.0.113.0/24"]);
    let out = cli(&dir, &["unban", "203.0.113.0/24"]);
    assert!(!out.status.success(), "a refused unban must not exit 0");
    assert!(stderr(&out).contains("set is full"), "{}", stderr(&out));
    // The kernel still drops the /24, so the daemon still shows it, and a
    // second try is refused the same way (not "not banned").
    assert_eq!(intervals(&ns, "banned_net_v4"), ["203.0.113.0/24"]);
    assert!(
        addrs(&dir).contains(&"203.0.113.0/24".to_string()),
        "{:?}",
        addrs(&dir)
    );
    let out = cli(&dir, &["unban", "203.0.113.0/24"]);
    assert!(stderr(&out).contains("set is full"), "{}", stderr(&out));
    // Once the inner bans are lifted, so can the /24 be.
    for p in [
        "203.0.113.0/30",
        "203.0.113.16/30",
        "203.0.113.32/30",
        "203.0.113.48/30",
    ] {
        ok(&["unban", p]);
    }
    ok(&["unban", "203.0.113.0/24"]);
    assert!(intervals(&ns, "banned_net_v4").is_empty());
    d.stop();
}

/// The rules of the table's chain (as `nft -j` lists them) and its policy.
fn chain(ns: &NetNs) -> (Vec<Value>, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "nft",
            "-j",
            "list",
            "chain",
            "inet",
            "sipwarden",
            "prerouting",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let policy = items
        .iter()
        .find_map(|o| o["chain"]["policy"].as_str().map(String::from))
        .unwrap_or_default();
    let rules = items
        .iter()
        .filter(|o| o.get("rule").is_some())
        .cloned()
        .collect();
    (rules, policy)
}

#[test]
fn a_chain_changed_by_hand_is_laid_out_again() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("kd");
    let dir = TempDir::new("kd");
    let d = start(&ns, &dir, "");
    let out = cli(&dir, &["ban", "m", "198.51.100.9"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (laid, policy) = chain(&ns);
    assert_eq!(policy, "accept");
    assert!(!laid.is_empty());
    let restored = |what: &str| {
        let laid_out = || {
            let (r, p) = chain(&ns);
            r.len() == laid.len()
                && p == "accept"
                && !r
                    .iter()
                    .any(|x| x["rule"]["expr"].to_string().contains("\"accept\""))
        };
        assert!(
            wait_until(Duration::from_secs(15), laid_out),
            "{what}: the chain was not laid out again: {:?}",
            chain(&ns)
        );
        assert!(
            ns.addresses("banned_v4").contains("198.51.100.9"),
            "{what}: the ban is back"
        );
    };
    // The chain's rules flushed: bans still listed, nothing dropped.
    ns.sh(&["nft", "flush", "chain", "inet", "sipwarden", "prerouting"]);
    restored("flush chain");
    // An accept inserted before the drops.
    ns.sh(&[
        "nft",
        "insert",
        "rule",
        "inet",
        "sipwarden",
        "prerouting",
        "ip",
        "saddr",
        "198.51.100.9",
        "accept",
    ]);
    restored("inserted accept");
    // The policy turned to drop (everything dropped, loopback too).
    ns.sh(&[
        "nft",
        "chain",
        "inet",
        "sipwarden",
        "prerouting",
        "{ policy drop ; }",
    ]);
    restored("policy drop");
    assert!(!d.lines_with("changed outside sipwarden").is_empty());
    d.stop();
}

/// libfaketime, for a wall clock the test can step while the monotonic
/// clock (and the kernel's timeouts) run on.
fn faketime_lib() -> PathBuf {
    let p = PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1");
    assert!(
        p.exists(),
        "needs libfaketime (Debian package faketime) at {}",
        p.display()
    );
    p
}

fn faked(dir: &TempDir) -> (PathBuf, Vec<(&'static str, String)>) {
    let file = dir.path("faketime");
    std::fs::write(&file, "+0\n").unwrap();
    let env = vec![
        ("LD_PRELOAD", faketime_lib().display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
        ("DONT_FAKE_MONOTONIC", "1".to_string()),
    ];
    (file, env)
}

fn remaining(dir: &TempDir, addr: &str) -> Option<u64> {
    banned(dir)
        .iter()
        .find(|b| b["addr"] == addr)
        .and_then(|b| b["remaining_s"].as_u64())
}

#[test]
fn a_wall_clock_stepped_back_neither_extends_a_ban_nor_re_adds_it() {
    if !need("netns") || !need("faketime") {
        return;
    }
    let ns = NetNs::new("kc");
    let dir = TempDir::new("kc");
    let (clock, env) = faked(&dir);
    let d = start_with(&ns, &dir, "", &env);
    let out = cli(&dir, &["ban", "m", "198.51.100.7", "--for", "6s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&clock, "-1h\n").unwrap();
    // Give the daemon time to see the step (it says so when it does).
    let _ = d.wait_for("wall clock stepped back", Duration::from_secs(5));
    let left = remaining(&dir, "198.51.100.7");
    assert!(
        left.is_some_and(|s| s <= 6),
        "remaining after the step: {left:?}"
    );
    // The kernel lifts it by its own timeout; the daemon follows, and
    // nothing puts it back.
    assert!(wait_until(Duration::from_secs(20), || ns
        .addresses("banned_v4")
        .is_empty()));
    assert!(wait_until(Duration::from_secs(10), || remaining(
        &dir,
        "198.51.100.7"
    )
    .is_none()));
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        ns.addresses("banned_v4").is_empty(),
        "re-added after its end"
    );
    assert!(d.lines_with("missing from the kernel sets").is_empty());
    d.stop();
}

#[test]
fn a_wall_clock_stepped_forward_keeps_the_ban_shown_and_liftable() {
    if !need("netns") || !need("faketime") {
        return;
    }
    let ns = NetNs::new("kf");
    let dir = TempDir::new("kf");
    let (clock, env) = faked(&dir);
    let d = start_with(&ns, &dir, "", &env);
    let out = cli(&dir, &["ban", "m", "198.51.100.8", "--for", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&clock, "+2h\n").unwrap();
    // Give the daemon time to see the step (it says so when it does).
    let _ = d.wait_for("wall clock stepped forward", Duration::from_secs(5));
    let left = remaining(&dir, "198.51.100.8");
    assert!(
        left.is_some_and(|s| s > 3000),
        "remaining after the step: {left:?}"
    );
    assert!(ns.addresses("banned_v4").contains("198.51.100.8"));
    let out = cli(&dir, &["unban", "198.51.100.8"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        ns.addresses("banned_v4").is_empty(),
        "unban lifts what the kernel holds"
    );
    d.stop();
}
