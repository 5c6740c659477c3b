//! The Asterisk Manager Interface source against a simulator (Asterisk is
//! not in Debian 12): an AMI server on loopback that speaks as Asterisk's
//! manager does (banner, `Action: Login` answered `Success` or `Error`,
//! `Action: Ping` answered `Pong`) and sends security events with the
//! fields Asterisk documents for them, filled with the real values of the
//! corpus's Asterisk security log lines.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Daemon, TempDir, cli, daemon_section};

/// One security event as Asterisk's manager writes it, fields in its order.
fn event(name: &str, service: &str, account: &str, remote: &str) -> String {
    let mut s = format!(
        "Event: {name}\r\nPrivilege: security,all\r\nEventTV: 2026-12-01T02:15:00.000+0000\r\nSeverity: Error\r\nService: {service}\r\nEventVersion: 1\r\nAccountID: {account}\r\nSessionID: 0x7f8ecc0421f8\r\nLocalAddress: IPV4/UDP/192.0.2.1/5060\r\nRemoteAddress: {remote}\r\n"
    );
    match name {
        "ChallengeResponseFailed" => s.push_str(
            "Challenge: 1432446136/6d16ccf29ff59d423c6d548af00bf9b4\r\nResponse: 849dfcf133d8156f77ef11a9194119df\r\nExpectedResponse: \r\n",
        ),
        "SuccessfulAuth" => s.push_str("UsingPassword: 1\r\n"),
        "ChallengeSent" => s.push_str("Challenge: 41d26de5\r\n"),
        _ => {}
    }
    s + "\r\n"
}

/// What one simulated connection does after the banner.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Conn {
    /// Answer with another protocol's banner and close.
    NotAmi,
    /// Log in, send half of the first event, close.
    CutMidMessage,
    /// Log in, send a `Shutdown` event, close (Asterisk restarting).
    Shutdown,
    /// Log in, send every event, then answer pings until the client leaves.
    Replay,
    /// Log in as a user without `read = security`: no event at all, not
    /// even for the login itself.
    NoSecurity,
}

/// Reads one AMI action (up to its empty line), bounded.
fn read_action(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && buf.len() < 4096 {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// An Asterisk manager simulator: one script entry per connection, the
/// last one repeating; records the actions it received.
struct Simulator {
    port: u16,
    actions: Arc<Mutex<Vec<String>>>,
}

impl Simulator {
    fn start(secret: &'static str, script: Vec<Conn>, events: Vec<String>) -> Simulator {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let actions = Arc::new(Mutex::new(Vec::new()));
        let log = actions.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate().take(50) {
                let Ok(mut s) = conn else { continue };
                let step = *script.get(n).or(script.last()).unwrap();
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                if step == Conn::NotAmi {
                    let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n");
                    continue;
                }
                let _ = s.write_all(b"Asterisk Call Manager/5.0.1\r\n");
                let Some(login) = read_action(&mut s) else {
                    continue;
                };
                log.lock().unwrap().push(login.clone());
                if !login.contains(&format!("\r\nSecret: {secret}\r\n")) {
                    // As Asterisk: an error, then the connection is closed.
                    let _ = s.write_all(b"Response: Error\r\nActionID: sipwarden-login\r\nMessage: Authentication failed\r\n\r\n");
                    continue;
                }
                let _ = s.write_all(b"Response: Success\r\nActionID: sipwarden-login\r\nMessage: Authentication accepted\r\n\r\n");
                if step == Conn::NoSecurity {
                    while let Some(a) = read_action(&mut s) {
                        log.lock().unwrap().push(a);
                    }
                    continue;
                }
                // Asterisk reports the manager login itself.
                let me = s.peer_addr().unwrap();
                let own = event(
                    "SuccessfulAuth",
                    "AMI",
                    "sipwarden",
                    &format!("IPV4/TCP/{}/{}", me.ip(), me.port()),
                );
                let _ = s.write_all(own.as_bytes());
                match step {
                    Conn::CutMidMessage => {
                        let first = events[0].as_bytes();
                        let _ = s.write_all(&first[..first.len() / 2]);
                    }
                    Conn::Shutdown => {
                        let _ = s.write_all(b"Event: Shutdown\r\nPrivilege: system,all\r\nShutdown: Cleanly\r\nRestart: True\r\n\r\n");
                    }
                    Conn::Replay => {
                        for e in &events {
                            let _ = s.write_all(e.as_bytes());
                        }
                        while let Some(a) = read_action(&mut s) {
                            if a.contains("Action: Ping") {
                                let _ = s.write_all(b"Response: Success\r\nActionID: sipwarden-ping\r\nPing: Pong\r\nTimestamp: 1764555300.123456\r\n\r\n");
                            }
                            log.lock().unwrap().push(a);
                        }
                    }
                    Conn::NotAmi | Conn::NoSecurity => {}
                }
            }
        });
        Simulator { port, actions }
    }
}

fn start_daemon(dir: &TempDir, port: u16, secret: &str, extra: &str) -> Daemon {
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 5\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.asterisk]\nami = {{ host = \"127.0.0.1\", port = {port}, username = \"sipwarden\", secret = \"{secret}\" }}\n{extra}",
            daemon_section(dir)
        ),
    )
    .unwrap();
    Daemon::start(&["run", "--config", cfg.to_str().unwrap()])
}

fn status(dir: &TempDir) -> serde_json::Value {
    serde_json::from_slice(&cli(dir, &["status", "asterisk", "--json"]).stdout).unwrap()
}

/// A PBX under attack: the four failures of the SIP services, and a brute
/// force against the manager, each banned for its RemoteAddress at
/// maxretry; challenges, sipwarden's own login, a RemoteAddress that is
/// not an address, and an event forged through a line break are not.
#[test]
fn security_events_ban_by_remote_address_only() {
    let attacker = "203.0.113.7";
    let forged = "Event: InvalidPassword\r\nPrivilege: security,all\r\nService: PJSIP\r\nAccountID: 1\r\nLocalAddress: IPV4/UDP/192.0.2.1/5060\r\nRemoteAddress: IPV4/UDP/198.51.100.77/5060";
    let mut events = vec![
        event(
            "ChallengeSent",
            "PJSIP",
            "1001",
            "IPV4/UDP/203.0.113.7/5060",
        ),
        event(
            "ChallengeSent",
            "PJSIP",
            "1001",
            "IPV4/UDP/203.0.113.7/5060",
        ),
        event(
            "InvalidAccountID",
            "PJSIP",
            "70000180",
            "IPV4/UDP/203.0.113.7/5061",
        ),
        event(
            "InvalidPassword",
            "SIP",
            "972592891005",
            "IPV4/UDP/203.0.113.7/5084",
        ),
        // An AccountID naming another address, a RemoteAddress that is not one.
        event(
            "InvalidPassword",
            "PJSIP",
            "198.51.100.9",
            "IPV4/UDP/attacker\u{1b}[31m/5060",
        ),
        event(
            "ChallengeResponseFailed",
            "PJSIP",
            "<unknown>",
            "IPV4/TLS/203.0.113.7/30245",
        ),
        event(
            "InvalidPassword",
            "PJSIP",
            &"x".repeat(6000),
            "IPV4/UDP/203.0.113.7/5060",
        ),
        event("FailedACL", "IAX2", "", "IPV4/UDP/203.0.113.7/4569"),
    ];
    // Five events forged through a line break in AccountID: never counted.
    for _ in 0..5 {
        events.push(event(
            "InvalidPassword",
            "PJSIP",
            &format!("x\r\n\r\n{forged}\r\n\r\nTail: "),
            "IPV4/UDP/203.0.113.5/5060",
        ));
    }
    // Brute force against the manager, in IPv6.
    for _ in 0..5 {
        events.push(event(
            "InvalidPassword",
            "AMI",
            "admin",
            "IPV6/TCP/2001:db8::66/40000",
        ));
    }
    let sim = Simulator::start("s3cret", vec![Conn::Replay], events);
    let dir = TempDir::new("ami");
    let d = start_daemon(&dir, sim.port, "s3cret", "burst = false\n");
    let ban = d
        .wait_for(
            &format!("[asterisk] Ban {attacker}"),
            Duration::from_secs(20),
        )
        .expect("the attacker is banned");
    assert!(ban.contains("(5 failures"), "{ban}");
    assert!(
        d.wait_for("[asterisk] Found 2001:db8::66", Duration::from_secs(20))
            .is_some(),
        "the manager brute force is read from RemoteAddress"
    );
    // Banned as its /64 (`ipv6_prefix`'s default).
    let ban = d
        .wait_for("[asterisk] Ban 2001:db8::/64", Duration::from_secs(20))
        .expect("the manager brute force is banned");
    assert!(ban.contains("(5 failures"), "{ban}");
    assert!(
        d.wait_for("cut short", Duration::from_secs(10)).is_some(),
        "the forged events are reported"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.lines_with("] Ban ").len(), 2, "no other address banned");
    let l = d
        .wait_for("is not an address", Duration::from_secs(5))
        .expect("the unreadable RemoteAddress is reported");
    assert!(l.contains("attacker\\u{1b}[31m"), "escaped: {l}");
    let login = sim.actions.lock().unwrap()[0].clone();
    assert!(
        login.starts_with("Action: Login\r\n")
            && login.contains("\r\nUsername: sipwarden\r\n")
            && login.contains("\r\nEvents: security\r\n"),
        "{login:?}"
    );
    let s = status(&dir);
    let src = &s["result"]["sources"][0];
    assert_eq!(
        (src["kind"].as_str(), src["healthy"].as_bool()),
        (Some("ami"), Some(true)),
        "{s}"
    );
    assert_eq!(src["path"], format!("127.0.0.1:{}", sim.port));
    assert!(src["reason"].is_null(), "healthy, nothing to say: {s}");
    // 5 + 5 failures; the own login, challenges, the unreadable and the
    // forged events are not among them.
    assert_eq!(src["matched"], 10, "{s}");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// A wrong secret: the source says so in the log and in status, with what
/// to do, and never shows the secret.
#[test]
fn login_failure_is_shown_in_status_with_what_to_do() {
    let sim = Simulator::start("right", vec![Conn::Replay], Vec::new());
    let dir = TempDir::new("amipw");
    let d = start_daemon(&dir, sim.port, "wrong-secret", "");
    let l = d
        .wait_for("refused", Duration::from_secs(10))
        .expect("the refusal is logged");
    assert!(
        l.contains("Authentication failed") && l.contains("read = security"),
        "{l}"
    );
    assert!(
        d.lines_with("wrong-secret").is_empty(),
        "the secret is never logged"
    );
    let s = status(&dir);
    let src = &s["result"]["sources"][0];
    assert_eq!(src["healthy"], false, "{s}");
    let reason = src["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("refused") && reason.contains("manager.conf"),
        "{s}"
    );
    assert!(!s.to_string().contains("wrong-secret"));
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// Another service on the port, a cut in the middle of a message, and an
/// Asterisk restart (`Shutdown`): each is said and retried, and the
/// connection that follows still bans; the half message is not counted.
#[test]
fn not_ami_cut_and_shutdown_are_survived() {
    let events: Vec<String> = (0..5)
        .map(|_| {
            event(
                "InvalidPassword",
                "PJSIP",
                "1001",
                "IPV4/UDP/203.0.113.8/5060",
            )
        })
        .collect();
    let sim = Simulator::start(
        "s3cret",
        vec![
            Conn::NotAmi,
            Conn::CutMidMessage,
            Conn::Shutdown,
            Conn::Replay,
        ],
        events,
    );
    let dir = TempDir::new("amire");
    let d = start_daemon(&dir, sim.port, "s3cret", "burst = false\n");
    assert!(
        d.wait_for("not an Asterisk manager", Duration::from_secs(10))
            .is_some()
    );
    assert!(
        d.wait_for("end of stream", Duration::from_secs(30))
            .is_some(),
        "the cut is reported"
    );
    assert!(
        d.wait_for(
            "shutting down (Shutdown: Cleanly, Restart: True)",
            Duration::from_secs(30)
        )
        .is_some(),
        "the shutdown is reported"
    );
    let ban = d.wait_for("[asterisk] Ban 203.0.113.8", Duration::from_secs(30));
    assert!(ban.is_some_and(|b| b.contains("(5 failures")));
    assert_eq!(d.lines_with("] Ban ").len(), 1);
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// `trust_registered`: an address that authenticated with a password
/// (`SuccessfulAuth`, `UsingPassword: 1`) gets `trusted_maxretry`; one
/// that did not is banned at `maxretry`.
#[test]
fn successful_auth_trusts_the_address() {
    let mut events = vec![event(
        "SuccessfulAuth",
        "PJSIP",
        "1001",
        "IPV4/UDP/203.0.113.20/5060",
    )];
    for a in ["203.0.113.20", "203.0.113.21"] {
        for _ in 0..5 {
            events.push(event(
                "InvalidPassword",
                "PJSIP",
                "1001",
                &format!("IPV4/UDP/{a}/5060"),
            ));
        }
    }
    let sim = Simulator::start("s3cret", vec![Conn::Replay], events);
    let dir = TempDir::new("amitr");
    let d = start_daemon(
        &dir,
        sim.port,
        "s3cret",
        "burst = false\ntrust_registered = \"1h\"\ntrusted_maxretry = 20\n",
    );
    assert!(
        d.wait_for("[asterisk] Ban 203.0.113.21", Duration::from_secs(20))
            .is_some()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        d.lines_with("Ban 203.0.113.20").is_empty(),
        "the registered phone is trusted"
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// `doctor` logs in as the daemon would: it says a right secret works and
/// a wrong one is refused, with what to do, never showing the secret.
#[test]
fn doctor_logs_in_and_says_what_to_fix() {
    let sim = Simulator::start("s3cret", vec![Conn::Replay], Vec::new());
    for (secret, want) in [
        (
            "s3cret",
            "reachable, logged in as \"sipwarden\", security events seen",
        ),
        (
            "wrong-secret",
            "refused (Asterisk said \"Authentication failed\")",
        ),
    ] {
        let dir = TempDir::new("amidoc");
        let cfg = dir.path("sipwarden.toml");
        std::fs::write(
            &cfg,
            format!(
                "{}[firewall]\nbackend = \"none\"\n[jail.asterisk]\nami = {{ port = {}, secret = \"{secret}\" }}\n",
                daemon_section(&dir),
                sim.port
            ),
        )
        .unwrap();
        let out = std::process::Command::new(crate::common::bin())
            .args(["doctor", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("[asterisk] manager interface 127.0.0.1:"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains(want), "{line}");
        assert!(!text.contains("wrong-secret"), "{text}");
    }
    let actions = sim.actions.lock().unwrap().clone();
    assert!(
        actions.iter().any(|a| a.starts_with("Action: Logoff")),
        "doctor logs off: {actions:?}"
    );
    // A user without read = security: logged in, but not even its own
    // login is reported; doctor warns with what to do.
    let sim = Simulator::start("s3cret", vec![Conn::NoSecurity], Vec::new());
    let dir = TempDir::new("amidoc");
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[firewall]\nbackend = \"none\"\n[jail.asterisk]\nami = {{ port = {}, secret = \"s3cret\" }}\n",
            daemon_section(&dir),
            sim.port
        ),
    )
    .unwrap();
    let out = std::process::Command::new(crate::common::bin())
        .args(["doctor", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("[asterisk] manager interface 127.0.0.1:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("warn") && line.contains("give that manager.conf user read = security"),
        "{line}"
    );
}

/// A manager client that panics (a message no test foresaw) is started
/// again by its supervisor, shows it in status, and still bans.
#[test]
fn a_panicking_client_is_started_again() {
    let events: Vec<String> = (0..5)
        .map(|_| {
            event(
                "InvalidPassword",
                "PJSIP",
                "1001",
                "IPV4/UDP/203.0.113.9/5060",
            )
        })
        .collect();
    let sim = Simulator::start("s3cret", vec![Conn::Replay], events);
    let dir = TempDir::new("amisup");
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 5\n[firewall]\nbackend = \"none\"\n[jail.asterisk]\nburst = false\nami = {{ port = {}, secret = \"s3cret\" }}\n",
            daemon_section(&dir),
            sim.port
        ),
    )
    .unwrap();
    let d = Daemon::start_with(
        std::process::Command::new(crate::common::bin())
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("SIPWARDEN_FAULT", "ami"),
    );
    assert!(
        d.wait_for("panicked: fault injected at ami", Duration::from_secs(20))
            .is_some()
    );
    // The client comes back, the simulator replays on the new connection.
    let ban = d.wait_for("[asterisk] Ban 203.0.113.9", Duration::from_secs(30));
    assert!(ban.is_some_and(|b| b.contains("(5 failures")));
    let s: serde_json::Value =
        serde_json::from_slice(&cli(&dir, &["status", "--json"]).stdout).unwrap();
    let task = s["result"]["tasks"]
        .as_array()
        .and_then(|t| {
            t.iter().find(|t| {
                t["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("[asterisk] manager interface"))
            })
        })
        .cloned()
        .unwrap_or_else(|| panic!("{s}"));
    assert!(task["restarts"].as_u64().is_some_and(|r| r >= 1), "{task}");
    assert!(d.stop().is_some_and(|s| s.success()));
}
