use serde_json::{Value, json};

use super::*;

/// Captured with `nft -j list ruleset` (nftables 1.0.6, kernel 6.18) in a
/// namespace holding: a netdev ingress chain that accepts one source,
/// forwards another (`fwd to d1`) and duplicates a third; an inet chain at
/// prerouting -400 with an accept and a notrack; one at -300 (sipwarden's
/// priority) with a tproxy and a verdict map jumping to a chain that drops;
/// a nat redirect at -100; sipwarden's own table.
const BYPASS: &str = include_str!("testdata/bypass.json");

/// In the same format: an earlier `accept` and `notrack`, a stateful input
/// chain, an NFQUEUE at prerouting priority 0 (after sipwarden's drop), a
/// nat redirect at -100 and sipwarden's table. (This kernel has no
/// nft_queue, so the queue rule is written by hand in `nft -j`'s shape.)
const HARMLESS: &str = include_str!("testdata/harmless.json");

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn bypasses(f: &[Finding]) -> Vec<&str> {
    f.iter()
        .filter(|x| x.severity == Severity::Bypass)
        .map(|x| x.what.as_str())
        .collect()
}

#[test]
fn an_accept_elsewhere_or_a_later_queue_is_no_bypass() {
    let r = parse(HARMLESS);
    assert_eq!(our_priority(&r, "sipwarden"), Some(RAW_PRIORITY));
    let f = ruleset_findings(&r, "sipwarden", RAW_PRIORITY);
    assert!(bypasses(&f).is_empty(), "{f:#?}");
    // The later queue is told, as harmless to bans.
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(
        f[0].what
            .starts_with("chain inet filter ids (hook prerouting, priority 0): queues"),
        "{}",
        f[0].what
    );
    assert!(
        f[0].what.contains("after sipwarden's drop"),
        "{}",
        f[0].what
    );
}

#[test]
fn netdev_forwarding_and_an_equal_priority_redirect_are_bypasses() {
    let r = parse(BYPASS);
    let f = ruleset_findings(&r, "sipwarden", RAW_PRIORITY);
    let b = bypasses(&f);
    assert_eq!(b.len(), 3, "{f:#?}");
    assert!(b[0].starts_with("chain netdev byp ing (hook ingress, priority -500): forwards packets to another device (fwd) before prerouting (rule handle 3)"), "{}", b[0]);
    assert!(
        b[1].contains("duplicates packets elsewhere (dup) before prerouting (rule handle 4)"),
        "{}",
        b[1]
    );
    assert!(b[2].starts_with("chain inet other early2 (hook prerouting, priority -300): redirects packets (tproxy/redirect/dnat) at the same priority as sipwarden's chain"), "{}", b[2]);
    // The accept at -400, the nat redirect at -100, sipwarden's own chain
    // and the verdict map's jump to a chain that only drops: nothing.
    assert!(
        !f.iter()
            .any(|x| x.what.contains(" pre ") || x.what.contains(" nat ")),
        "{f:#?}"
    );
    assert!(!f.iter().any(|x| x.what.contains("sipwarden (")), "{f:#?}");
}

#[test]
fn a_queue_reached_through_a_jump_before_the_drop_is_a_bypass() {
    let mut r = parse(BYPASS);
    let items = r["nftables"].as_array_mut().unwrap();
    // `pre` (-400) jumps to `reg`, which jumps to `sub`; `sub` queues.
    items.push(
        json!({"rule": {"family": "inet", "table": "other", "chain": "pre", "handle": 40,
        "expr": [{"jump": {"target": "reg"}}]}}),
    );
    items.push(
        json!({"rule": {"family": "inet", "table": "other", "chain": "sub", "handle": 41,
        "expr": [{"queue": {"num": 3, "flags": "bypass"}}]}}),
    );
    // An iptables-nft NFQUEUE target in a chain that nothing reaches.
    items.push(
        json!({"chain": {"family": "ip", "table": "mangle", "name": "PREROUTING", "handle": 1,
        "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}}),
    );
    items.push(
        json!({"rule": {"family": "ip", "table": "mangle", "chain": "PREROUTING", "handle": 2,
        "expr": [{"xt": {"type": "target", "name": "NFQUEUE"}}]}}),
    );
    let f = ruleset_findings(&r, "sipwarden", RAW_PRIORITY);
    let b = bypasses(&f);
    assert!(
        b.iter().any(|x| x.starts_with("chain inet other pre (hook prerouting, priority -400): queues packets to userspace (NFQUEUE) before sipwarden's chain (rule handle 41 of chain sub, reached from it)")),
        "{f:#?}"
    );
    // `early2` (-300) reaches `sub` through its verdict map, too.
    assert!(
        b.iter()
            .any(|x| x.starts_with("chain inet other early2") && x.contains("queues")),
        "{f:#?}"
    );
    // The mangle chain's NFQUEUE runs after the drop: a note.
    assert!(
        f.iter().any(|x| x.severity == Severity::Note
            && x.what.starts_with(
                "chain ip mangle PREROUTING (hook prerouting, priority -150): queues"
            )),
        "{f:#?}"
    );
    // A sipwarden chain laid out at another priority moves the line.
    let later = ruleset_findings(&r, "sipwarden", -450);
    assert!(
        bypasses(&later).iter().all(|x| !x.contains("inet other")),
        "{later:#?}"
    );
}

#[test]
fn jump_loops_end() {
    let r = json!({"nftables": [
        {"chain": {"family": "inet", "table": "t", "name": "c", "hook": "prerouting", "prio": -400}},
        {"chain": {"family": "inet", "table": "t", "name": "x"}},
        {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 1, "expr": [{"jump": {"target": "x"}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "x", "handle": 2, "expr": [{"jump": {"target": "c"}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "x", "handle": 3, "expr": [{"queue": {"num": 1}}]}}
    ]});
    let f = ruleset_findings(&r, "sipwarden", RAW_PRIORITY);
    assert_eq!(bypasses(&f).len(), 1, "{f:#?}");
    assert!(ruleset_findings(&json!({}), "sipwarden", RAW_PRIORITY).is_empty());
}

#[test]
fn xdp_and_tc_redirects_are_found() {
    // `ip -j -d link show` (trimmed): lo without XDP, eth0 with a program.
    let links = json!([
        {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK"], "mtu": 65536},
        {"ifindex": 2, "ifname": "eth0", "mtu": 1500,
         "xdp": {"mode": 1, "prog": {"id": 42, "name": "xdp_fw", "tag": "3b185187f1855c4c", "jited": 1}}}
    ]);
    assert_eq!(interfaces(&links), ["lo", "eth0"]);
    let f = link_findings(&links);
    assert_eq!(f.len(), 1);
    assert!(
        f[0].what
            .starts_with("interface eth0: an XDP program is attached (program id 42)"),
        "{}",
        f[0].what
    );
    // Captured with `tc -j filter show dev d0 ingress` (iproute2 6.1): a
    // u32 filter mirroring one source to d1.
    let tc: Value = parse(
        r#"[{"protocol":"ip","pref":49152,"kind":"u32","chain":0},{"protocol":"ip","pref":49152,"kind":"u32","chain":0,"options":{"fh":"800:","ht_divisor":1}},{"protocol":"ip","pref":49152,"kind":"u32","chain":0,"options":{"fh":"800::800","order":2048,"key_ht":"800","bkt":"0","not_in_hw":true,"match":{"value":"c0000202","mask":"ffffffff","offmask":"","off":12},"actions":[{"order":1,"kind":"mirred","mirred_action":"mirror","direction":"ingress","to_dev":"d1","control_action":{"type":"pipe"},"index":1,"ref":1,"bind":1}]}}]"#,
    );
    let f = tc_findings("d0", &tc);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(
        f[0].what
            .starts_with("interface d0: tc ingress mirred mirror to d1;"),
        "{}",
        f[0].what
    );
    // A filter that only matches and passes: nothing; a BPF one: told.
    assert!(tc_findings("d0", &json!([{"kind": "u32", "options": {"actions": [{"kind": "gact", "control_action": {"type": "pass"}}]}}])).is_empty());
    assert_eq!(
        bypasses(&tc_findings(
            "d0",
            &json!([{"kind": "bpf", "options": {"bpf_name": "x.o"}}])
        ))
        .len(),
        1
    );
    assert!(tc_findings("d0", &json!([])).is_empty());
}

#[test]
fn counters_by_comment() {
    let r = json!({"nftables": [
        {"rule": {"family": "inet", "table": "p", "chain": "watch", "handle": 2, "comment": "v4",
          "expr": [{"match": {}}, {"counter": {"packets": 7, "bytes": 300}}]}},
        {"rule": {"family": "inet", "table": "p", "chain": "other", "handle": 3, "comment": "v6",
          "expr": [{"counter": {"packets": 1, "bytes": 3}}]}}
    ]});
    let c = counters(&r, "watch");
    assert_eq!(c.get("v4"), Some(&7));
    assert_eq!(c.len(), 1);
}

/// A missing or failing tool is a finding that says what could not be
/// checked, never a crash; what the others show is still read.
#[test]
fn a_missing_tool_is_a_finding() {
    let links = br#"[{"ifindex":1,"ifname":"lo"},{"ifindex":2,"ifname":"eth0"}]"#;
    let mut asked = Vec::new();
    let f = survey(
        "sipwarden",
        &mut |tool, args| {
            asked.push(format!("{tool} {}", args.join(" ")));
            match tool {
                "nft" => Ok(HARMLESS.as_bytes().to_vec()),
                "ip" => Ok(links.to_vec()),
                _ => Err(format!(
                    "cannot run `{tool}`: No such file or directory (os error 2)"
                )),
            }
        },
        Some("raw\nfilter\n"),
    );
    let b = bypasses(&f);
    assert_eq!(b.len(), 1, "{f:#?}");
    assert!(
        b[0].starts_with(
            "cannot check tc ingress filters (`tc -j filter show dev X ingress`): cannot run `tc`"
        ),
        "{}",
        b[0]
    );
    // One failed tc is enough to say so: not one line per interface.
    assert_eq!(
        asked,
        [
            "nft -j list ruleset",
            "ip -j -d link show",
            "tc -j filter show dev lo ingress"
        ]
    );
    assert!(
        f.iter().any(|x| x
            .what
            .starts_with("iptables-legacy tables are loaded (raw, filter)")),
        "{f:#?}"
    );
    // The ruleset's own note (the later queue) is still there.
    assert!(
        f.iter().any(|x| x.what.contains("chain inet filter ids")),
        "{f:#?}"
    );

    let f = survey("sipwarden", &mut |_, _| Ok(b"not json".to_vec()), None);
    let b = bypasses(&f);
    assert_eq!(b.len(), 2, "{f:#?}");
    assert!(
        b[0].starts_with(
            "cannot check the nftables ruleset (`nft -j list ruleset`): its output is not JSON"
        ),
        "{}",
        b[0]
    );
    assert!(
        b[1].starts_with("cannot check interfaces for XDP programs"),
        "{}",
        b[1]
    );
    // An empty answer (no filters) is no finding.
    let f = survey("sipwarden", &mut |_, _| Ok(Vec::new()), None);
    assert!(bypasses(&f).is_empty(), "{f:#?}");
    assert!(
        f[0].what
            .starts_with("table inet sipwarden is not laid out on this host"),
        "{f:#?}"
    );
}
