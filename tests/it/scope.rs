//! Bans scoped to ports and protocols, against the real kernel in a
//! namespace pair this test creates: a SIP jail's ban drops SIP and leaves
//! the operator's SSH alone, an unscoped jail's ban still drops everything,
//! only the scoped flows' conntrack entries go, and a reload that changes a
//! jail's scope moves its bans.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use sipwarden::enforce::{PortScope, Proto};

use crate::common::{
    NetNs, TempDir, TestNet, cli, daemon_section, delivered, need, start_in, wait_until,
};

/// Two jails reading empty logs: `sip` with `scope` (TOML lines), `all`
/// unscoped.
fn config(dir: &TempDir, scope: &str) -> std::path::PathBuf {
    let mut jails = String::new();
    for (name, extra) in [("sip", scope), ("all", "")] {
        let log = dir.path(&format!("{name}.log"));
        if !log.exists() {
            std::fs::write(&log, "").unwrap();
        }
        jails.push_str(&format!(
            "[jail.{name}]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n{extra}\n",
            log.display()
        ));
    }
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nignoreip = []\nignoreself = false\nbantime = \"1h\"\n\n{jails}",
            daemon_section(dir)
        ),
    )
    .unwrap();
    cfg
}

fn set_name(base: &str, scope: &PortScope) -> String {
    format!("{base}_s{:08x}", scope.id().0)
}

fn ok(dir: &TempDir, args: &[&str]) {
    let out = cli(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a TCP connection from the attacker's namespace to `to` is
/// accepted within a second (a dropped SYN times out).
fn connects(atk: &NetNs, to: SocketAddr) -> bool {
    atk.run(move || TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok())
}

/// A listener in `ns` that answers each connection's first line with
/// "ok" (the operator's SSH, the PBX's SIP over TCP).
fn listen(ns: &NetNs, at: &'static str) -> SocketAddr {
    let l = ns.run(move || TcpListener::bind(at).unwrap());
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(b"ok").is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The conntrack entries from the attacker, one line each.
fn conntrack(net: &TestNet) -> String {
    net.pbx.sh(&["conntrack", "-L", "-s", "10.77.0.2"])
}

#[test]
fn a_port_scoped_ban_drops_sip_and_leaves_ssh_and_an_unscoped_one_drops_everything() {
    if !need("netns") || !need("conntrack") {
        return;
    }
    let net = TestNet::new();
    // A typical host firewall, which also turns connection tracking on in
    // the namespace (the kernel tracks only where some rule asks for it).
    net.pbx.sh(&["nft", "add table inet hostfw"]);
    net.pbx.sh(&["nft", "add chain inet hostfw input { type filter hook input priority 0; ct state established accept; }"]);
    let dir = TempDir::new("scope");
    let cfg = config(&dir, "port = [5060]\nprotocol = [\"udp\", \"tcp\"]");
    let d = start_in(&net.pbx, &cfg);
    let sip = PortScope::new(&[Proto::Udp, Proto::Tcp], &[(5060, 5060)]).unwrap();

    let rx = Arc::new(net.pbx.run(|| UdpSocket::bind("10.77.0.1:5060").unwrap()));
    let tx = Arc::new(net.atk.run(|| UdpSocket::bind("10.77.0.2:5062").unwrap()));
    let ssh = listen(&net.pbx, "10.77.0.1:22");
    let sip_tcp = listen(&net.pbx, "10.77.0.1:5060");
    assert!(
        delivered(&tx, &rx, Duration::from_secs(2)),
        "UDP SIP passes before the ban"
    );
    assert!(connects(&net.atk, sip_tcp), "TCP SIP passes before the ban");
    // An SSH session open across the ban: its conntrack entry must stay.
    let session = net.atk.run(move || {
        let s = TcpStream::connect_timeout(&ssh, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    });
    let ct = conntrack(&net);
    assert!(
        ct.contains("dport=5060") && ct.contains("dport=22"),
        "flows tracked before the ban: {ct}"
    );

    ok(&dir, &["ban", "sip", "10.77.0.2"]);
    // Before any more traffic (a packet of the session would track it anew).
    // The flush runs just after the ban's answer: bounded wait.
    assert!(
        wait_until(Duration::from_secs(5), || !conntrack(&net)
            .contains("dport=5060")),
        "the scoped flows' entries are flushed: {}",
        conntrack(&net)
    );
    let ct = conntrack(&net);
    let sport = session.local_addr().unwrap().port();
    assert!(
        ct.contains(&format!("sport={sport} dport=22")),
        "the open SSH session's entry is kept: {ct}"
    );
    // In the scope's set, not in the set that drops everything.
    assert!(
        net.pbx
            .addresses(&set_name("banned_v4", &sip))
            .contains("10.77.0.2")
    );
    assert!(net.pbx.addresses("banned_v4").is_empty());
    let ruleset = net
        .pbx
        .sh(&["nft", "list", "chain", "inet", "sipwarden", "prerouting"]);
    assert!(
        ruleset.contains(&format!(
            "@{} meta l4proto {{ tcp, udp }} th dport 5060 drop",
            set_name("banned_v4", &sip)
        )),
        "{ruleset}"
    );
    assert!(
        !delivered(&tx, &rx, Duration::from_millis(500)),
        "UDP to 5060 from the banned source is dropped (before conntrack: the flow was established)"
    );
    assert!(!connects(&net.atk, sip_tcp), "TCP to 5060 is dropped");
    assert!(connects(&net.atk, ssh), "the operator's SSH still connects");
    let mut s = session;
    s.write_all(b"still there\n").unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok", "the open SSH session goes on");

    // The same source banned by the unscoped jail: everything drops.
    ok(&dir, &["ban", "all", "10.77.0.2"]);
    assert!(net.pbx.addresses("banned_v4").contains("10.77.0.2"));
    assert!(!connects(&net.atk, ssh), "an unscoped ban drops SSH too");
    assert!(
        wait_until(Duration::from_secs(5), || !conntrack(&net)
            .contains("src=10.77.0.2")),
        "an unscoped ban flushes every entry: {}",
        conntrack(&net)
    );
    // Lifted there only: the scoped ban stays, SSH is back.
    ok(&dir, &["unban", "10.77.0.2", "--jail", "all"]);
    assert!(net.pbx.addresses("banned_v4").is_empty());
    assert!(
        wait_until(Duration::from_secs(5), || connects(&net.atk, ssh)),
        "SSH is back once the unscoped ban is lifted"
    );
    assert!(
        !connects(&net.atk, sip_tcp),
        "the scoped ban still drops SIP"
    );
    d.stop();
}

#[test]
fn a_reload_that_changes_a_jails_port_scope_moves_its_bans() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("scr");
    let dir = TempDir::new("scr");
    let cfg = config(&dir, "port = [5060]");
    let d = start_in(&ns, &cfg);
    let first = PortScope::new(&[Proto::Udp, Proto::Tcp], &[(5060, 5060)]).unwrap();
    let second = PortScope::new(&[Proto::Udp], &[(5080, 5081)]).unwrap();
    ok(&dir, &["ban", "sip", "198.51.100.7"]);
    ok(&dir, &["ban", "sip", "2001:db8::/64"]);
    ok(&dir, &["ban", "all", "198.51.100.9"]);
    assert!(
        ns.addresses(&set_name("banned_v4", &first))
            .contains("198.51.100.7")
    );
    assert_eq!(ns.set_elements(&set_name("banned_net_v6", &first)).len(), 1);

    // Another scope: the jail's bans move to its sets.
    config(&dir, "port = [5080, 5081]\nprotocol = [\"udp\"]");
    ok(&dir, &["reload"]);
    // The reload answers before the enforcer thread moved the bans (they
    // stay in force in the old sets until then).
    assert!(
        wait_until(Duration::from_secs(5), || ns
            .addresses(&set_name("banned_v4", &second))
            .contains("198.51.100.7")
            && ns.addresses(&set_name("banned_v4", &first)).is_empty()),
        "moved to the new scope's set"
    );
    assert_eq!(
        ns.set_elements(&set_name("banned_net_v6", &second)).len(),
        1
    );
    assert!(
        ns.addresses(&set_name("banned_v4", &first)).is_empty(),
        "gone from the old one"
    );
    assert!(
        ns.set_elements(&set_name("banned_net_v6", &first))
            .is_empty()
    );
    assert_eq!(
        ns.addresses("banned_v4").len(),
        1,
        "the unscoped jail's ban stays where it was"
    );

    // No scope: its bans drop everything again.
    config(&dir, "");
    ok(&dir, &["reload"]);
    assert!(wait_until(Duration::from_secs(5), || ns
        .addresses("banned_v4")
        .len()
        == 2));
    let every = ns.addresses("banned_v4");
    assert!(
        every.contains("198.51.100.7") && every.contains("198.51.100.9"),
        "{every:?}"
    );
    assert_eq!(ns.set_elements("banned_net_v6").len(), 1);
    assert!(ns.addresses(&set_name("banned_v4", &second)).is_empty());
    // What status shows is what the kernel holds.
    let out = cli(&dir, &["status", "sip", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["result"]["banned"].as_array().map_or(0, Vec::len),
        2,
        "{v}"
    );
    d.stop();
}

/// A ban whose move to its jail's new scope the kernel refused stays in
/// the old scope's sets (logged); an unban must still lift it there, or
/// the kernel drops a source `status` no longer shows as banned (for a
/// permanent ban, for ever).
#[test]
fn an_unban_lifts_a_ban_left_in_its_old_scope_by_a_refused_move() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("srm");
    let dir = TempDir::new("srm");
    // Sets of one element: the move into the full unscoped set is refused.
    let write = |scope: &str| {
        let cfg = config(&dir, scope);
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("[firewall]\nset_size = 1\n{text}")).unwrap();
        cfg
    };
    let cfg = write("port = [5060]");
    let d = start_in(&ns, &cfg);
    let first = PortScope::new(&[Proto::Udp, Proto::Tcp], &[(5060, 5060)]).unwrap();
    ok(&dir, &["ban", "all", "198.51.100.9"]);
    ok(&dir, &["ban", "sip", "198.51.100.7", "--for", "-1"]);
    assert!(
        ns.addresses(&set_name("banned_v4", &first))
            .contains("198.51.100.7")
    );
    // Unscoped now: banned_v4 (full) refuses the move.
    write("");
    ok(&dir, &["reload"]);
    assert!(
        d.wait_for(
            "could not move to its jail's new port scope",
            Duration::from_secs(5)
        )
        .is_some(),
        "the refused move is logged"
    );
    assert!(
        ns.addresses(&set_name("banned_v4", &first))
            .contains("198.51.100.7"),
        "it stays in force in the old scope's set"
    );
    ok(&dir, &["unban", "198.51.100.7", "--jail", "sip"]);
    assert!(
        wait_until(Duration::from_secs(5), || !ns
            .addresses(&set_name("banned_v4", &first))
            .contains("198.51.100.7")),
        "the unban lifts it from the old scope's set: {:?}",
        ns.addresses(&set_name("banned_v4", &first))
    );
    assert_eq!(
        ns.addresses("banned_v4").into_iter().collect::<Vec<_>>(),
        ["198.51.100.9"],
        "the other jail's ban stays"
    );
    d.stop();
}
