//! The Event Socket source against a simulator that replays the real
//! FreeSWITCH streams in ../shared/corpus frame by frame.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sipwarden::source::esl::FrameBuffer;
use sipwarden::source::esl::frame::header;

use crate::common::{Daemon, TempDir, cli, daemon_section};

/// What one simulated connection does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Conn {
    /// Refuse the client at once (`text/rude-rejection`).
    Rude,
    /// Send half of the first event, then drop the connection.
    CutMidFrame,
    /// Send a `text/disconnect-notice` (FreeSWITCH shutting down).
    DisconnectNotice,
    /// Replay every event and keep the connection open.
    Replay,
}

/// The corpus events, re-framed with `Event-Date-Timestamp` shifted so the
/// last event is now.
fn corpus_events(file: &str) -> Option<Vec<Vec<u8>>> {
    let path = crate::common::corpus(&format!("freeswitch-1.10.12/{file}"))?;
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut bodies: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut fb = FrameBuffer::default();
    fb.extend(&raw);
    fb.drain(|f| {
        if header(f.headers, "Content-Type").is_some_and(|ct| ct.starts_with(b"text/event")) {
            bodies.push((f.headers.to_vec(), f.body.to_vec()));
        }
    })
    .unwrap();
    let ts = |b: &str| -> Option<i64> {
        let i = b.find("Event-Date-Timestamp")? + "Event-Date-Timestamp".len();
        let digits: String = b[i..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    let last = bodies
        .iter()
        .filter_map(|(_, b)| ts(&String::from_utf8_lossy(b)))
        .max()?;
    let now_us = jiff::Timestamp::now().as_microsecond();
    Some(
        bodies
            .into_iter()
            .map(|(h, b)| {
                let text = String::from_utf8_lossy(&b).into_owned();
                let body = match ts(&text) {
                    Some(t) => text.replacen(&t.to_string(), &(t - last + now_us).to_string(), 1),
                    None => text,
                };
                let ct = String::from_utf8_lossy(header(&h, "Content-Type").unwrap()).into_owned();
                format!(
                    "Content-Length: {}\nContent-Type: {ct}\n\n{body}",
                    body.len()
                )
                .into_bytes()
            })
            .collect(),
    )
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

/// A FreeSWITCH Event Socket simulator: one script entry per connection; the
/// last entry repeats. Records the commands it received.
pub(crate) struct Simulator {
    pub(crate) port: u16,
    commands: Arc<Mutex<Vec<String>>>,
}

impl Simulator {
    pub(crate) fn start(
        password: &'static str,
        script: Vec<Conn>,
        events: Vec<Vec<u8>>,
    ) -> Simulator {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let log = commands.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate().take(50) {
                let Ok(mut s) = conn else { continue };
                let step = *script.get(n).or(script.last()).unwrap();
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                if step == Conn::Rude {
                    let _ = s.write_all(b"Content-Type: text/rude-rejection\nContent-Length: 15\n\nAccess Denied.\n");
                    continue;
                }
                let _ = s.write_all(b"Content-Type: auth/request\n\n");
                let Some(auth) = read_command(&mut s) else {
                    continue;
                };
                log.lock().unwrap().push(auth.clone());
                if auth != format!("auth {password}") {
                    let _ =
                        s.write_all(b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n");
                    continue;
                }
                let _ = s.write_all(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n");
                let Some(sub) = read_command(&mut s) else {
                    continue;
                };
                log.lock().unwrap().push(sub.clone());
                let _ = s.write_all(
                    b"Content-Type: command/reply\nReply-Text: +OK event listener enabled\n\n",
                );
                match step {
                    Conn::CutMidFrame => {
                        let first = &events[0];
                        let _ = s.write_all(&first[..first.len() / 2]);
                    }
                    Conn::DisconnectNotice => {
                        let _ = s.write_all(b"Content-Type: text/disconnect-notice\nContent-Length: 22\n\nDisconnected, goodbye.");
                    }
                    Conn::Replay => {
                        for e in &events {
                            let _ = s.write_all(e);
                        }
                        // Hold the connection like FreeSWITCH does.
                        let mut sink = [0u8; 64];
                        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                    }
                    Conn::Rude => {}
                }
            }
        });
        Simulator { port, commands }
    }
}

fn start_daemon(dir: &TempDir, port: u16, extra: &str) -> Daemon {
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 5\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.freeswitch-esl]\nesl = {{ host = \"127.0.0.1\", port = {port}, password = \"ClueCon\" {extra} }}\n",
            daemon_section(dir)
        ),
    )
    .unwrap();
    Daemon::start(&["run", "--config", cfg.to_str().unwrap()])
}

/// svcrack's wrong passwords arrive at machine speed: the jail's default
/// burst rule (3 within 2 s) bans at the 3rd, before maxretry (5); with
/// `burst = false` the same replay bans at maxretry.
#[test]
fn corpus_replay_bans_the_attacker_at_the_third_failure_of_its_burst() {
    let Some(events) = corpus_events("esl-plain.raw") else {
        return;
    };
    let sim = Simulator::start("ClueCon", vec![Conn::Replay], events);
    let dir = TempDir::new("esl");
    let d = start_daemon(&dir, sim.port, "");
    let ban = d
        .wait_for("[freeswitch-esl] Ban 10.77.0.2", Duration::from_secs(10))
        .expect("ban");
    assert!(ban.contains("(3 failures in a burst, 1h)"), "{ban}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.lines_with("] Ban ").len(), 1);
    assert_eq!(d.lines_with("] Found 10.77.0.2").len(), 3);
    let cmds = sim.commands.lock().unwrap().clone();
    assert_eq!(cmds[0], "auth ClueCon");
    assert!(
        cmds[1].starts_with("event plain ")
            && cmds[1].contains("CUSTOM sofia::register_failure")
            && cmds[1].contains("sofia::wrong_call_state"),
        "{cmds:?}"
    );
    // Without fraud rules the subscription has no call events (issue 21).
    assert!(!cmds[1].contains("CHANNEL_"), "{cmds:?}");
    let after_custom = cmds[1].split("CUSTOM").nth(1).unwrap();
    assert!(
        after_custom
            .split_whitespace()
            .all(|w| w.starts_with("sofia::")),
        "CUSTOM comes last: {cmds:?}"
    );
    // The connection shows in status.
    let s: serde_json::Value =
        serde_json::from_slice(&cli(&dir, &["status", "freeswitch-esl", "--json"]).stdout).unwrap();
    let src = &s["result"]["sources"][0];
    assert_eq!(
        (src["kind"].as_str(), src["healthy"].as_bool()),
        (Some("esl"), Some(true)),
        "{s}"
    );
    assert_eq!(src["path"], format!("127.0.0.1:{}", sim.port));
    assert!(d.stop().is_some_and(|s| s.success()));

    let Some(events) = corpus_events("esl-plain.raw") else {
        return;
    };
    let sim = Simulator::start("ClueCon", vec![Conn::Replay], events);
    let dir = TempDir::new("eslnb");
    let d = start_daemon(
        &dir,
        sim.port,
        "}\nburst = false\n[jail.x]\nenabled = false\nesl = { port = 1",
    );
    let ban = d
        .wait_for("[freeswitch-esl] Ban 10.77.0.2", Duration::from_secs(10))
        .expect("ban");
    assert!(ban.contains("(5 failures, 1h)"), "burst = false: {ban}");
    assert!(d.stop().is_some_and(|s| s.success()));
}

#[test]
fn json_format_and_scanner_bans_at_the_first_failure() {
    let Some(events) = corpus_events("esl-json.raw") else {
        return;
    };
    let sim = Simulator::start("ClueCon", vec![Conn::Replay], events);
    let dir = TempDir::new("eslj");
    let cfg_extra =
        ", format = \"json\" }\nban_scanners = true\n[jail.x]\nenabled = false\nesl = { port = 1";
    let d = start_daemon(&dir, sim.port, cfg_extra);
    let ban = d
        .wait_for("[freeswitch-esl] Ban 10.77.0.2", Duration::from_secs(10))
        .expect("ban");
    assert!(
        ban.contains("(1 failures, 1h)"),
        "friendly-scanner is banned at once: {ban}"
    );
    assert!(sim.commands.lock().unwrap()[1].starts_with("event json "));
    assert!(d.stop().is_some_and(|s| s.success()));
}

#[test]
fn refusals_disconnects_and_restarts_are_survived() {
    let Some(events) = corpus_events("esl-plain.raw") else {
        return;
    };
    // Wrong password first (the daemon's is ClueCon, this server wants another).
    let sim = Simulator::start("secret", vec![Conn::Replay], events.clone());
    let dir = TempDir::new("eslpw");
    let d = start_daemon(&dir, sim.port, "");
    let l = d
        .wait_for("password refused", Duration::from_secs(10))
        .expect("auth error reported");
    assert!(
        l.contains("-ERR invalid") && !l.contains("ClueCon"),
        "the password itself is never logged: {l}"
    );
    drop(d);

    // Rude rejection, a cut mid-frame, a disconnect notice (FreeSWITCH
    // restarting), then a healthy connection: the daemon retries through all
    // of them and still bans.
    let sim = Simulator::start(
        "ClueCon",
        vec![
            Conn::Rude,
            Conn::CutMidFrame,
            Conn::DisconnectNotice,
            Conn::Replay,
        ],
        events,
    );
    let dir = TempDir::new("eslre");
    let d = start_daemon(&dir, sim.port, "");
    assert!(
        d.wait_for("rude-rejection", Duration::from_secs(10))
            .is_some()
    );
    assert!(
        d.wait_for("end of stream", Duration::from_secs(60))
            .is_some(),
        "cut mid-frame reported"
    );
    assert!(
        d.wait_for("Disconnected, goodbye.", Duration::from_secs(60))
            .is_some(),
        "disconnect notice reported"
    );
    let ban = d.wait_for("[freeswitch-esl] Ban 10.77.0.2", Duration::from_secs(60));
    assert!(ban.is_some_and(|b| b.contains("(3 failures in a burst")));
    assert_eq!(
        d.lines_with("] Ban ").len(),
        1,
        "the half frame before the cut was not counted"
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}
