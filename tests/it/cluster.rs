//! Three nodes and Redis, each in a network namespace of its own, joined by
//! a bridge with an attacker: a ban on one node is enforced on all three;
//! failures spread over two nodes add up to one ban; Redis going away and
//! coming back empty, and a node killed and restarted, converge.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    Daemon, NetNs, TempDir, append, cli, daemon_section, delivered, need, sh, start_in, wait_until,
};

const REDIS: &str = "10.88.0.1";

struct Fleet {
    hub: NetNs,
    nodes: Vec<NetNs>,
    atk: NetNs,
}

impl Fleet {
    fn new() -> Fleet {
        let hub = NetNs::new("hub");
        hub.sh(&["ip", "link", "add", "br0", "type", "bridge"]);
        hub.sh(&["ip", "addr", "add", &format!("{REDIS}/24"), "dev", "br0"]);
        hub.sh(&["ip", "link", "set", "br0", "up"]);
        let join = |ns: &NetNs, addr: &str| {
            let port = format!("{}p", ns.name);
            sh(&[
                "ip", "link", "add", "eth0", "netns", &ns.name, "type", "veth", "peer", "name",
                &port, "netns", &hub.name,
            ]);
            hub.sh(&["ip", "link", "set", &port, "master", "br0"]);
            hub.sh(&["ip", "link", "set", &port, "up"]);
            ns.sh(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.sh(&["ip", "link", "set", "eth0", "up"]);
        };
        let nodes: Vec<NetNs> = (1..=3).map(|i| NetNs::new(&format!("n{i}"))).collect();
        for (i, n) in nodes.iter().enumerate() {
            join(n, &format!("10.88.0.1{}", i + 1));
        }
        let atk = NetNs::new("atk");
        join(&atk, "10.88.0.2");
        Fleet { hub, nodes, atk }
    }

    fn redis(&self) -> Child {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.hub.name, "redis-server"])
            .args([
                "--bind",
                REDIS,
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = wait_until(Duration::from_secs(10), || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.hub.name,
                    "redis-cli",
                    "-h",
                    REDIS,
                    "ping",
                ])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
        });
        assert!(up, "redis-server answers");
        c
    }
}

fn node_config(dir: &TempDir, i: usize) -> std::path::PathBuf {
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 3\nbantime = \"1h\"\nignoreself = false\n[cluster]\nredis = \"redis://{REDIS}:6379\"\nnode = \"n{i}\"\n[jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nshared_count = true\nlogpath = \"{}\"\n",
            daemon_section(dir),
            dir.path("freeswitch.log").display()
        ),
    )
    .unwrap();
    if !dir.path("freeswitch.log").exists() {
        std::fs::write(dir.path("freeswitch.log"), "").unwrap();
    }
    cfg
}

fn failures(ip: &str, n: usize) -> String {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S%.6f");
    (0..n)
        .map(|_| format!("{now} [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1001@pbx] from ip {ip}\n"))
        .collect()
}

fn set(ns: &NetNs) -> BTreeSet<String> {
    ns.addresses("banned_v4")
}

fn start_node(f: &Fleet, dirs: &[TempDir], i: usize) -> Daemon {
    let d = start_in(&f.nodes[i], &node_config(&dirs[i], i + 1));
    assert!(
        d.wait_for("cluster: connected", Duration::from_secs(20))
            .is_some(),
        "node n{} reaches redis",
        i + 1
    );
    d
}

fn status(dir: &TempDir, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["status", "--json"];
    a.extend_from_slice(args);
    serde_json::from_slice(&cli(dir, &a).stdout).unwrap_or_default()
}

#[test]
fn three_nodes_share_bans_and_counts_through_redis() {
    if !need("netns") {
        return;
    }
    if !need("redis") {
        return;
    }
    let f = Fleet::new();
    let mut redis = f.redis();
    let dirs: Vec<TempDir> = (1..=3).map(|i| TempDir::new(&format!("n{i}"))).collect();
    let mut nodes: Vec<Option<Daemon>> = (0..3).map(|i| Some(start_node(&f, &dirs, i))).collect();
    let all_have = |addr: &str| f.nodes.iter().all(|n| set(n).contains(addr));

    // Each node sees its two peers (their addresses are never banned).
    assert!(
        wait_until(Duration::from_secs(15), || {
            status(&dirs[0], &[])["result"]["cluster"]["peers"]
                .as_array()
                .is_some_and(|p| p.len() == 2)
        }),
        "n1 sees n2 and n3"
    );

    // 1. An attack on n1 only: the address is dropped by all three.
    let rx = Arc::new(f.nodes[1].run(|| UdpSocket::bind("10.88.0.12:5060").unwrap()));
    let tx = Arc::new(f.atk.run(|| UdpSocket::bind("10.88.0.2:5062").unwrap()));
    assert!(
        delivered(&tx, &rx, Duration::from_secs(2)),
        "n2 reachable before"
    );
    let t0 = Instant::now();
    append(&dirs[0].path("freeswitch.log"), &failures("10.88.0.2", 3));
    assert!(
        wait_until(Duration::from_secs(20), || all_have("10.88.0.2")),
        "a ban on n1 reaches every node"
    );
    println!(
        "cluster: ban on n1 in all three kernel sets {:?} after the failures were written",
        t0.elapsed()
    );
    assert!(
        !delivered(&tx, &rx, Duration::from_millis(500)),
        "n2 drops the attacker"
    );
    let n2 = status(&dirs[1], &["freeswitch"]);
    let b = &n2["result"]["banned"][0];
    assert_eq!(b["reason"], "cluster", "{n2}");
    assert_eq!(b["origin"], "n1", "{n2}");
    let remaining = b["remaining_s"].as_i64().unwrap_or(0);
    assert!(
        remaining > 3500 && remaining <= 3600,
        "n1's end time kept: {remaining}"
    );

    // 2. Shared counting: maxretry - 1 failures on each of two nodes.
    append(&dirs[0].path("freeswitch.log"), &failures("10.88.0.3", 2));
    append(&dirs[1].path("freeswitch.log"), &failures("10.88.0.3", 2));
    assert!(
        wait_until(Duration::from_secs(20), || all_have("10.88.0.3")),
        "2 + 2 failures on two nodes ban at maxretry 3"
    );
    let decided: usize = nodes
        .iter()
        .flatten()
        .map(|d| {
            d.lines_with("Ban 10.88.0.3 (")
                .iter()
                .filter(|l| !l.contains("(cluster,"))
                .count()
        })
        .sum();
    assert_eq!(decided, 1, "the shared ban is decided once");

    // 3. Redis away: n1 bans alone; Redis back (empty) and the others converge.
    redis.kill().unwrap();
    redis.wait().unwrap();
    assert!(
        nodes[0]
            .as_ref()
            .unwrap()
            .wait_for("unreachable", Duration::from_secs(20))
            .is_some()
    );
    append(&dirs[0].path("freeswitch.log"), &failures("10.88.0.4", 3));
    assert!(wait_until(Duration::from_secs(20), || set(&f.nodes[0])
        .contains("10.88.0.4")));
    assert!(!set(&f.nodes[1]).contains("10.88.0.4"));
    let mut redis = f.redis();
    assert!(
        wait_until(Duration::from_secs(30), || all_have("10.88.0.4")),
        "after Redis returns every node holds the ban made while it was away"
    );
    // Re-asserted keys, not re-decided bans: still one decision on n1.
    let decided: usize = nodes
        .iter()
        .flatten()
        .map(|d| {
            d.lines_with("Ban 10.88.0.4 (")
                .iter()
                .filter(|l| !l.contains("(cluster,"))
                .count()
        })
        .sum();
    assert_eq!(decided, 1, "decided once, on n1");

    // 4. kill -9 n3 and start it again: its set matches n1's.
    if let Some(mut d) = nodes[2].take() {
        d.child.kill().unwrap();
        d.child.wait().unwrap();
    }
    nodes[2] = Some(start_node(&f, &dirs, 2));
    assert!(
        wait_until(Duration::from_secs(20), || set(&f.nodes[2])
            == set(&f.nodes[0])),
        "n3 after a restart: {:?} vs n1 {:?}",
        set(&f.nodes[2]),
        set(&f.nodes[0])
    );

    // 5. An unban on n2 lifts it everywhere; peers are never banned.
    assert!(cli(&dirs[1], &["unban", "10.88.0.2"]).status.success());
    assert!(
        wait_until(Duration::from_secs(20), || f
            .nodes
            .iter()
            .all(|n| !set(n).contains("10.88.0.2"))),
        "an unban on n2 reaches every node"
    );
    let refused = cli(&dirs[0], &["ban", "freeswitch", "10.88.0.13"]);
    assert!(
        !refused.status.success(),
        "a peer is not banned without --force"
    );
    let refused = cli(&dirs[0], &["ban", "freeswitch", REDIS]);
    assert!(
        !refused.status.success(),
        "the Redis server is not banned without --force"
    );

    let _ = redis.kill();
    let _ = redis.wait();
}
