//! Host names where an address is expected (issue 16, finding 5): an Event
//! Socket peer given by name is protected like one given by address, the
//! name's lookup never delays start, and the addresses it last resolved to
//! (kept in the store) protect it while DNS is down.
//!
//! Name resolution is steered without touching the machine's files: the
//! daemon runs in a private mount namespace (`unshare -m`) where the test's
//! own `hosts`, `nsswitch.conf` and `resolv.conf` are bind-mounted over
//! `/etc`'s. No lookup leaves the machine: the only name server named is a
//! socket of the test on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{Daemon, TempDir, bin, cli, daemon_section, need, wait_until};

/// A `register_failure` event in plain format, from `addr`.
pub(crate) fn register_failure(addr: &str) -> Vec<u8> {
    let body = format!(
        "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nnetwork-ip: {addr}\nregistration-type: REGISTER\n\n"
    );
    format!(
        "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
        body.len()
    )
    .into_bytes()
}

fn read_command(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\n\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&buf).trim().to_string())
}

/// A fake Event Socket on loopback: accepts the password `ClueCon`, says
/// on `subscribed` when a client subscribed, then sends each batch it is
/// given on the returned sender over that connection.
pub(crate) struct FakeEsl {
    pub(crate) port: u16,
    pub(crate) subscribed: mpsc::Receiver<()>,
    pub(crate) send: mpsc::Sender<Vec<u8>>,
}

impl FakeEsl {
    pub(crate) fn start() -> FakeEsl {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sub_tx, subscribed) = mpsc::channel();
        let (send, batches) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            // One client at a time; a few reconnects at most.
            for conn in listener.incoming().take(5) {
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.write_all(b"Content-Type: auth/request\n\n");
                if read_command(&mut s).as_deref() != Some("auth ClueCon") {
                    continue;
                }
                let _ = s.write_all(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n");
                if read_command(&mut s).is_none() {
                    continue;
                }
                let _ = s.write_all(
                    b"Content-Type: command/reply\nReply-Text: +OK event listener enabled\n\n",
                );
                let _ = sub_tx.send(());
                // Events as the test hands them, until it stops; a client
                // that went away leaves the rest for the next one.
                loop {
                    match batches.recv_timeout(Duration::from_secs(60)) {
                        Ok(b) if s.write_all(&b).is_ok() => {}
                        Ok(_) => break,
                        Err(_) => return,
                    }
                }
            }
        });
        FakeEsl {
            port,
            subscribed,
            send,
        }
    }
}

fn config(dir: &TempDir, host: &str, port: u16) -> std::path::PathBuf {
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 3\nignoreip = []\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.pbx]\nesl = {{ host = \"{host}\", port = {port}, password = \"ClueCon\" }}\n",
            daemon_section(dir)
        ),
    )
    .unwrap();
    cfg
}

/// The daemon's view of the peer name `name` in `status --json`, if any.
fn name_view(dir: &TempDir, name: &str) -> Option<serde_json::Value> {
    let out = cli(dir, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["result"]["names"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
}

fn addrs_of(view: &serde_json::Value) -> Vec<String> {
    view["addrs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that a ban of 127.0.0.1 by hand is refused (no `--force`).
fn assert_manual_ban_refused(dir: &TempDir) {
    let out = cli(dir, &["ban", "pbx", "127.0.0.1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "127.0.0.1 (the Event Socket peer) was banned by hand without --force: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("covered by") && err.contains("--force"),
        "refusal names why and the way out: {err}"
    );
}

/// Finding 5: `esl = { host = "localhost" }` protects 127.0.0.1 as
/// `host = "127.0.0.1"` does: failures from it are never banned, and a ban
/// by hand is refused without `--force`.
#[test]
fn an_esl_peer_given_by_name_is_never_banned() {
    let esl = FakeEsl::start();
    let dir = TempDir::new("name-esl");
    let cfg = config(&dir, "localhost", esl.port);
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    esl.subscribed
        .recv_timeout(Duration::from_secs(30))
        .expect("the daemon subscribed to the fake Event Socket");
    // Events are counted once the name resolved (a sync aid, not the
    // assertion: a build that never resolves fails below).
    let resolved = wait_until(Duration::from_secs(15), || {
        name_view(&dir, "localhost").is_some_and(|v| addrs_of(&v).contains(&"127.0.0.1".into()))
    });
    // Past maxretry from the peer's own address, then a marker address that
    // is banned: once it is, every event before it was counted.
    let mut batch = Vec::new();
    for _ in 0..10 {
        batch.extend(register_failure("127.0.0.1"));
    }
    for _ in 0..3 {
        batch.extend(register_failure("203.0.113.7"));
    }
    esl.send.send(batch).unwrap();
    assert!(
        d.wait_for("[pbx] Ban 203.0.113.7", Duration::from_secs(15))
            .is_some(),
        "the marker address was banned"
    );
    assert_eq!(
        d.lines_with("Ban 127.0.0.1"),
        Vec::<String>::new(),
        "the Event Socket peer (localhost) was banned"
    );
    assert_manual_ban_refused(&dir);
    assert!(resolved, "status shows localhost resolved to 127.0.0.1");
    let view = name_view(&dir, "localhost").unwrap();
    assert_eq!(view["jails"], serde_json::json!(["pbx"]), "{view}");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// Name resolution steered for one daemon: the files bind-mounted over
/// `/etc` in its own mount namespace.
struct Resolution {
    hosts: String,
    /// `hosts:` line of nsswitch.conf.
    sources: &'static str,
    /// resolv.conf.
    resolv: String,
}

/// Starts the daemon in a private mount namespace resolving as `r` says.
fn start_resolving(dir: &TempDir, cfg: &std::path::Path, r: &Resolution) -> Daemon {
    let (hosts, nss, resolv) = (
        dir.path("hosts"),
        dir.path("nsswitch.conf"),
        dir.path("resolv.conf"),
    );
    std::fs::write(&hosts, &r.hosts).unwrap();
    std::fs::write(&nss, format!("hosts: {}\n", r.sources)).unwrap();
    std::fs::write(&resolv, &r.resolv).unwrap();
    let script = "mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/nsswitch.conf \
                  && mount --bind \"$3\" /etc/resolv.conf && shift 3 && exec \"$@\"";
    Daemon::start_with(Command::new("unshare").args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        hosts.to_str().unwrap(),
        nss.to_str().unwrap(),
        resolv.to_str().unwrap(),
        bin(),
        "run",
        "--config",
        cfg.to_str().unwrap(),
    ]))
}

/// A name server on loopback that reads queries and never answers: a
/// lookup through it hangs until the resolver gives up.
struct SilentDns {
    sock: UdpSocket,
    addr: String,
}

impl SilentDns {
    fn start() -> SilentDns {
        // An address of its own in 127/8, so no other server's port 53
        // is in the way.
        let addr = format!("127.53.{}.{}", std::process::id() % 250, 1 + rand_byte());
        let sock = UdpSocket::bind((addr.as_str(), 53))
            .unwrap_or_else(|e| panic!("binding a silent name server on {addr}:53: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        SilentDns { sock, addr }
    }

    /// Whether a query arrived (read and dropped) within `wait`.
    fn queried(&self, wait: Duration) -> bool {
        let mut buf = [0u8; 512];
        wait_until(wait, || self.sock.recv_from(&mut buf).is_ok())
    }
}

fn rand_byte() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 250)
        .unwrap_or(7)
}

/// A name whose lookup hangs (the name server never answers) does not delay
/// start: the daemon answers `ping` while the lookup is still in flight,
/// shows the name as not resolved in status, and connects its sources.
#[test]
fn a_name_that_does_not_resolve_never_delays_start() {
    if !need("netns") {
        return;
    }
    let dns = SilentDns::start();
    let esl = FakeEsl::start();
    let dir = TempDir::new("name-hang");
    let cfg = config(&dir, "does-not-exist.invalid", esl.port);
    let d = start_resolving(
        &dir,
        &cfg,
        &Resolution {
            hosts: "127.0.0.1 localhost\n".into(),
            sources: "files dns",
            // Each try waits 30 s for an answer that never comes.
            resolv: format!("nameserver {}\noptions timeout:30 attempts:2\n", dns.addr),
        },
    );
    assert!(
        dns.queried(Duration::from_secs(30)),
        "the daemon looked the name up"
    );
    // The lookup now hangs for a minute; the daemon answers meanwhile.
    let answered = wait_until(Duration::from_secs(20), || {
        cli(&dir, &["ping"]).status.success()
    });
    assert!(answered, "ping answered while the lookup hangs");
    let view = wait_until(Duration::from_secs(20), || {
        name_view(&dir, "does-not-exist.invalid").is_some()
    });
    assert!(view, "status shows the name");
    let v = name_view(&dir, "does-not-exist.invalid").unwrap();
    assert!(addrs_of(&v).is_empty(), "{v}");
    assert!(v["resolved_at"].is_null(), "{v}");
    // The lookup gives up (its own timeout) and the daemon says so.
    assert!(
        wait_until(Duration::from_secs(30), || name_view(
            &dir,
            "does-not-exist.invalid"
        )
        .is_some_and(|v| v["problem"].is_string())),
        "the failing lookup is a warning in status"
    );
    assert!(
        d.wait_for("does-not-exist.invalid", Duration::from_secs(5))
            .is_some(),
        "and in the log"
    );
    assert!(cli(&dir, &["ping"]).status.success());
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// DNS down at start: the addresses the name resolved to last time (kept
/// in the store) are protected, and status says they come from the store.
#[test]
fn stored_addresses_protect_a_name_while_dns_is_down() {
    if !need("netns") {
        return;
    }
    let esl = FakeEsl::start();
    let dir = TempDir::new("name-store");
    let name = "pbx.sipwarden-test.invalid";
    let cfg = config(&dir, name, esl.port);
    // First run: the name resolves (from the test's hosts file only).
    let d = start_resolving(
        &dir,
        &cfg,
        &Resolution {
            hosts: format!("127.0.0.1 localhost\n127.0.0.1 {name}\n::1 {name}\n"),
            sources: "files",
            resolv: String::new(),
        },
    );
    let resolved = wait_until(Duration::from_secs(20), || {
        name_view(&dir, name).is_some_and(|v| addrs_of(&v).len() == 2)
    });
    assert!(resolved, "{name} resolved to 127.0.0.1 and ::1");
    assert!(d.stop().is_some_and(|s| s.success()));

    // Second run: the name does not resolve at all.
    let esl = FakeEsl::start();
    let cfg = config(&dir, name, esl.port);
    let d = start_resolving(
        &dir,
        &cfg,
        &Resolution {
            hosts: "127.0.0.1 localhost\n".into(),
            sources: "files",
            resolv: String::new(),
        },
    );
    assert!(
        wait_until(Duration::from_secs(20), || cli(&dir, &["ping"])
            .status
            .success()),
        "the daemon started"
    );
    assert_manual_ban_refused(&dir);
    let out = cli(&dir, &["ban", "pbx", "::1"]);
    assert!(!out.status.success(), "::1 is protected too");
    assert!(
        wait_until(Duration::from_secs(20), || name_view(&dir, name)
            .is_some_and(|v| v["problem"].is_string())),
        "the failed lookup shows in status"
    );
    let v = name_view(&dir, name).unwrap();
    assert_eq!(addrs_of(&v), vec!["127.0.0.1", "::1"], "{v}");
    assert_eq!(v["from_store"], true, "{v}");
    assert!(v["resolved_at"].is_string(), "{v}");
    assert!(
        d.wait_for("last resolved", Duration::from_secs(5))
            .is_some(),
        "the log says which addresses stay protected"
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// The Redis server of `[cluster]` given by name is protected in every
/// jail (`cluster.redis` had the same flaw). No Redis needs to run: the
/// protection does not wait for the connection.
#[test]
fn the_redis_server_given_by_name_is_protected_in_every_jail() {
    let dir = TempDir::new("name-redis");
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound and dropped: nothing listens there now
    let cfg = dir.path("sipwarden.toml");
    let log = dir.path("fs.log");
    std::fs::write(&log, "").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nignoreip = []\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [cluster]\nredis = \"redis://localhost:{closed}\"\nnode = \"n1\"\n\
             [jail.a]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n\
             [jail.b]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            daemon_section(&dir),
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    let resolved = wait_until(Duration::from_secs(15), || {
        name_view(&dir, "localhost").is_some_and(|v| addrs_of(&v).contains(&"127.0.0.1".into()))
    });
    for jail in ["a", "b"] {
        let out = cli(&dir, &["ban", jail, "127.0.0.1"]);
        assert!(
            !out.status.success(),
            "the Redis server (localhost) was banned by hand in jail {jail} without --force"
        );
    }
    assert!(resolved, "status shows localhost resolved");
    let v = name_view(&dir, "localhost").unwrap();
    assert_eq!(v["jails"], serde_json::json!(["a", "b"]), "{v}");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// An Event Socket peer is protected in every jail, not only in the one
/// that listens to it: a ban of the PBX's address in a log jail would cut
/// the Event Socket too (black-box pass, N2).
#[test]
fn an_esl_peer_is_protected_in_every_jail() {
    let dir = TempDir::new("name-every");
    let log = dir.path("m.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 3\nignoreip = []\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.pbx]\nesl = {{ host = \"10.200.0.2\", port = 1, password = \"ClueCon\" }}\n\
             [jail.m]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            daemon_section(&dir),
            log.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(d.wait_for(" started: ", Duration::from_secs(20)).is_some());
    for jail in ["pbx", "m"] {
        let out = cli(&dir, &["ban", jail, "10.200.0.2"]);
        assert!(
            !out.status.success(),
            "the Event Socket peer was banned by hand in jail {jail}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// fail2ban 1.1's host names in `ignoreip`, in the list and in a
/// `file:/path`: looked up by the peers' resolver (here from the test's own
/// hosts file), their addresses never counted in that jail.
#[test]
fn ignoreip_host_names_are_resolved_and_left_alone() {
    if !need("netns") {
        return;
    }
    let dir = TempDir::new("ignname");
    let log = dir.path("freeswitch.log");
    let list = dir.path("ignore.txt");
    std::fs::write(&log, "").unwrap();
    std::fs::write(&list, "branch.example.test # the branch office\n").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 1\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}\"\n\
             ignoreip = [\"127.0.0.1\", \"office.example.test\", \"file:{}\"]\n",
            daemon_section(&dir),
            log.display(),
            list.display()
        ),
    )
    .unwrap();
    let d = start_resolving(
        &dir,
        &cfg,
        &Resolution {
            hosts: "127.0.0.1 localhost\n203.0.113.1 office.example.test\n203.0.113.2 branch.example.test\n".into(),
            sources: "files",
            resolv: "nameserver 127.0.0.1\n".into(),
        },
    );
    let wait = |what: &str| d.wait_for(what, Duration::from_secs(10));
    assert!(wait(&format!("{}: following", log.display())).is_some());
    assert!(wait("office.example.test resolves to 203.0.113.1").is_some());
    assert!(wait("branch.example.test resolves to 203.0.113.2").is_some());
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S%.6f");
    let text: String = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
        .iter()
        .map(|ip| format!("{now} 12.50% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1000@pbx] from ip {ip}\n"))
        .collect();
    crate::common::append(&log, &text);
    assert!(wait("[freeswitch] Ban 203.0.113.3").is_some());
    assert!(d.lines_with("Ban 203.0.113.1").is_empty());
    assert!(d.lines_with("Ban 203.0.113.2").is_empty());
    assert!(d.stop().is_some_and(|s| s.success()));
}
