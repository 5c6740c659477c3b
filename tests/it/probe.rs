//! `sipwarden doctor --probe`: the built binary proves in its own pair of
//! namespaces that bans drop before conntrack, deletes them (also on
//! Ctrl-C), and reports what in the namespace it runs in could bypass the
//! chain. Each run happens inside a namespace of the test (`ip netns exec`),
//! so the host part reads that namespace, not the shared machine.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{NetNs, TempDir, bin, daemon_section, need};

/// A configuration with its own table name (the probe lays out that one)
/// and `jails` appended.
fn config(dir: &TempDir, jails: &str) -> std::path::PathBuf {
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[firewall]\ntable = \"probetest\"\n{jails}",
            daemon_section(dir)
        ),
    )
    .unwrap();
    cfg
}

/// `doctor --probe` inside `ns`: its exit code and stdout.
fn probe_in(ns: &NetNs, cfg: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            bin(),
            "doctor",
            "--probe",
            "--config",
        ])
        .arg(cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// The probe's namespaces still present (`swprobe-<pid>-a/b`).
fn left_over(pid: u32) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("swprobe-{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}

fn pid_of(text: &str) -> u32 {
    text.split("swprobe-")
        .nth(1)
        .and_then(|r| r.split('-').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no namespace named in:\n{text}"))
}

#[test]
fn the_probe_passes_and_leaves_no_namespace() {
    if !need("netns") {
        return;
    }
    let dir = TempDir::new("probe");
    let cfg = config(&dir, "");
    let ns = NetNs::new("pr");
    let (code, text) = probe_in(&ns, &cfg);
    let lines: Vec<&str> = text.lines().collect();
    let has = |prefix: &str, part: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(prefix) && l.contains(part))
    };
    assert!(!lines.iter().any(|l| l.starts_with("FAIL")), "{text}");
    assert!(has("ok", "table inet probetest laid out"), "{text}");
    // IPv6 as jails ban it by default: the /64, an interval element.
    assert!(
        has(
            "ok",
            "banned 192.0.2.2 and 2001:db8::/64 through the enforcer"
        ),
        "{text}"
    );
    assert!(has("ok", "priority -300, before conntrack"), "{text}");
    assert!(has("ok", "before the ban: conntrack holds"), "{text}");
    assert!(
        has("ok", "after the ban: the established UDP flow"),
        "{text}"
    );
    assert!(has("ok", "0 of 3 arrived"), "{text}");
    assert!(
        has(
            "ok",
            "after the ban: the established TCP connection: 0 byte(s)"
        ),
        "{text}"
    );
    assert!(
        has(
            "ok",
            "after the ban: a new TCP connection from 192.0.2.2: not established"
        ),
        "{text}"
    );
    assert!(
        has("ok", "after the ban: conntrack holds 0 entries"),
        "{text}"
    );
    assert!(has("ok", "dropped before conntrack"), "{text}");
    assert!(
        has(
            "ok",
            "control: UDP from 192.0.2.3 (not banned) after the ban: 3 of 3"
        ),
        "{text}"
    );
    // Without a scoped jail, the probe's own scope (SIP's ports) is proved.
    let scoped = "scoped ban (the probe's own, tcp/udp port 5060-5061), after the ban: ";
    for want in [
        "UDP to port 5060 (in scope): 0 of 3",
        "TCP to port 5060 (in scope): not connected",
        "the established UDP flow to port 22 (outside the scope): 3 of 3",
        "TCP to port 22 (outside the scope, as SSH): connected",
        "conntrack holds 0 entries from 192.0.2.4 in scope and 1",
    ] {
        assert!(has("ok", &format!("{scoped}{want}")), "{want}: {text}");
    }
    assert!(has("probe: PASS", ""), "{text}");
    // The test's namespace has no table, no XDP, no filters.
    assert!(has("host: nothing found", ""), "{text}");
    assert_eq!(code, Some(0), "{text}");
    let pid = pid_of(&text);
    assert!(has("probe: namespaces", "deleted"), "{text}");
    assert_eq!(left_over(pid), Vec::<String>::new());
}

#[test]
fn the_probe_reports_what_can_bypass_the_chain() {
    if !need("netns") {
        return;
    }
    let dir = TempDir::new("probe-bypass");
    // A jail scoped to UDP 5080: its scope is the one proved.
    let cfg = config(
        &dir,
        &format!(
            "[jail.sip]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\nport = [5080]\nprotocol = [\"udp\"]\n",
            dir.path("fs.log").display()
        ),
    );
    let ns = NetNs::new("pb");
    ns.sh(&[
        "ip", "link", "add", "in0", "type", "veth", "peer", "name", "out0",
    ]);
    // A netdev ingress chain that forwards one source to another device,
    // and one at prerouting -400 that only accepts (not final: no finding).
    let rules = "table netdev edge {\n\
                 \tchain ingress {\n\
                 \t\ttype filter hook ingress device \"in0\" priority 0; policy accept;\n\
                 \t\tip saddr 198.51.100.7 fwd to \"out0\"\n\
                 \t}\n\
                 }\n\
                 table inet early {\n\
                 \tchain pre {\n\
                 \t\ttype filter hook prerouting priority -400; policy accept;\n\
                 \t\tip saddr 198.51.100.0/24 accept\n\
                 \t}\n\
                 }\n";
    let path = dir.path("bypass.nft");
    std::fs::write(&path, rules).unwrap();
    ns.sh(&["nft", "-f", path.to_str().unwrap()]);
    // A tc ingress filter redirecting to the other device.
    ns.sh(&["tc", "qdisc", "add", "dev", "in0", "clsact"]);
    ns.sh(&[
        "tc",
        "filter",
        "add",
        "dev",
        "in0",
        "ingress",
        "protocol",
        "ip",
        "u32",
        "match",
        "ip",
        "src",
        "198.51.100.8/32",
        "action",
        "mirred",
        "egress",
        "redirect",
        "dev",
        "out0",
    ]);
    let (code, text) = probe_in(&ns, &cfg);
    let warns: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("warn") && !l.contains("left by an earlier probe"))
        .collect();
    assert!(text.contains("probe: PASS"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("FAIL")), "{text}");
    // The configured scope is laid out and proved: UDP to 5080 stops, TCP
    // to 5080 (not in its protocols) and port 22 still pass.
    let scoped = "scoped ban (jail sip, udp port 5080), after the ban: ";
    for want in [
        "UDP to port 5080 (in scope): 0 of 3 arrived",
        "TCP to port 5080 (TCP is not in scope): connected",
        "TCP to port 22 (outside the scope, as SSH): connected",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(&format!("{scoped}{want}"))),
            "{want}: {text}"
        );
    }
    assert!(
        warns
            .iter()
            .any(|l| l.contains("chain netdev edge ingress (hook ingress")
                && l.contains("forwards packets to another device (fwd) before prerouting")),
        "{text}"
    );
    assert!(
        warns
            .iter()
            .any(|l| l.contains("interface in0: tc ingress mirred")
                && l.contains("redirect to out0")),
        "{text}"
    );
    assert_eq!(warns.len(), 2, "the accept at -400 is not final: {text}");
    assert!(text.contains("host: 2 finding(s)"), "{text}");
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(left_over(pid_of(&text)), Vec::<String>::new());
}

#[test]
fn ctrl_c_deletes_the_namespaces() {
    if !need("netns") {
        return;
    }
    let dir = TempDir::new("probe-int");
    let cfg = config(&dir, "");
    let ns = NetNs::new("pi");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            bin(),
            "doctor",
            "--probe",
            "--config",
        ])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut text = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    // Interrupted once the ban is in place (the probe then waits for
    // packets that do not come).
    for line in lines.by_ref() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        if line.contains("through the enforcer") {
            // SAFETY: kill(2) with a pid this test spawned and a valid signal.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{text}");
    }
    for line in lines {
        text.push_str(&line.unwrap());
        text.push('\n');
    }
    let status = child.wait().unwrap();
    println!("{text}");
    assert!(text.contains("probe: interrupted"), "{text}");
    assert!(text.contains("deleted"), "{text}");
    assert_eq!(status.code(), Some(130), "{text}");
    assert_eq!(left_over(pid_of(&text)), Vec::<String>::new());
}

/// A configuration whose firewall backend is "none" (a dry run left in
/// place) has the daemon decide bans and drop nothing: the kernel proof
/// may pass, but the probe must not end with "nothing can bypass".
#[test]
fn a_configuration_that_enforces_nothing_is_a_finding() {
    if !need("netns") {
        return;
    }
    let dir = TempDir::new("probe-none");
    let cfg = config(&dir, "backend = \"none\"\n");
    let ns = NetNs::new("pn");
    let (code, text) = probe_in(&ns, &cfg);
    assert!(text.contains("probe: PASS"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("warn") && l.contains("backend = \"none\"")),
        "{text}"
    );
    assert!(!text.contains("host: nothing found"), "{text}");
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(left_over(pid_of(&text)), Vec::<String>::new());
}
