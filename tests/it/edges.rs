//! Edges of what an operator or a PBX can hand the daemon: an `invite_weight`
//! far too large, a PBX clock that is off, log lines dated out of the window,
//! a ban of no length (issue 16's classes, findings N4, N8, N9).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Daemon, TempDir, append, bin, cli, daemon_section, wait_until};

/// Microseconds since the epoch, as `Event-Date-Timestamp` has them.
fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// A plain `sofia::register_failure` frame.
fn register_failure(ip: &str, method: &str, stamp_us: i64) -> String {
    let body = format!(
        "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nEvent-Date-Timestamp: {stamp_us}\nprofile-name: internal\nto-user: 1005\nnetwork-ip: {ip}\nregistration-type: {method}\n\n"
    );
    format!(
        "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
        body.len()
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
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A fake FreeSWITCH Event Socket on loopback: answers the handshake, sends
/// `frames` on each connection (at most 10) and holds it open, like
/// FreeSWITCH, until the client leaves.
fn fake_esl(frames: Vec<String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(10) {
            let Ok(mut s) = conn else { continue };
            let frames = frames.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
                let _ = s.write_all(b"Content-Type: auth/request\n\n");
                read_command(&mut s)?;
                s.write_all(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
                    .ok()?;
                read_command(&mut s)?;
                s.write_all(
                    b"Content-Type: command/reply\nReply-Text: +OK event listener enabled\n\n",
                )
                .ok()?;
                for f in &frames {
                    s.write_all(f.as_bytes()).ok()?;
                }
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                Some(())
            });
        }
    });
    port
}

/// Writes `cfg` (after a `[daemon]` table and `[firewall] backend =
/// "none"`) and starts the daemon on it, waiting until it runs.
fn start(dir: &TempDir, cfg: &str) -> Daemon {
    let path = dir.path("sipwarden.toml");
    std::fs::write(
        &path,
        format!(
            "{}[defaults]\nignoreself = false\n[firewall]\nbackend = \"none\"\n\n{cfg}",
            daemon_section(dir)
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--config", path.to_str().unwrap()]);
    assert!(
        d.wait_for(" started: ", Duration::from_secs(30)).is_some(),
        "the daemon did not start"
    );
    d
}

/// A freeswitch.log line dated `offset_s` seconds from now, in UTC.
fn fs_line(offset_s: i64, method: &str, ip: &str) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(offset_s);
    format!(
        "{}.123456 98.37% [WARNING] sofia_reg.c:1842 SIP auth failure ({method}) on sofia profile 'internal' for [0046812345678@10.77.0.1] from ip {ip}\n",
        t.to_zoned(jiff::tz::TimeZone::UTC)
            .strftime("%Y-%m-%d %H:%M:%S")
    )
}

/// The `sources` of jail `jail` in `status --json`.
fn sources(dir: &TempDir, jail: &str) -> Vec<Value> {
    let out = cli(dir, &["status", jail, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["result"]["sources"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// N4: `check` accepted `invite_weight = 4294967295`, and one failed INVITE
/// then stalled the whole daemon for half a minute.
#[test]
fn check_refuses_an_invite_weight_beyond_1000() {
    let dir = TempDir::new("edge-w");
    let path = dir.path("sipwarden.toml");
    std::fs::write(
        &path,
        "[jail.esl]\nesl = { host = \"127.0.0.1\" }\ninvite_weight = 4294967295\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(
        err.contains("sipwarden.toml:3:") && err.contains("invite_weight must be at most 1000"),
        "{err}"
    );
}

/// N4: `invite_weight` applied only to Event Socket events; a `(INVITE)` line
/// in freeswitch.log counted 1. Now the jail applies it whichever source saw
/// the INVITE, and the largest weight is counted at once.
#[test]
fn invite_weight_counts_for_log_lines_and_event_socket_events() {
    let port = fake_esl(vec![register_failure("203.0.113.20", "INVITE", now_us())]);
    let dir = TempDir::new("edge-iw");
    let log = dir.path("freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let d = start(
        &dir,
        &format!(
            "[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\nlogtimezone = \"UTC\"\nmaxretry = 3\ninvite_weight = 3\n\n\
             [jail.esl]\nesl = {{ host = \"127.0.0.1\", port = {port}, password = \"ClueCon\" }}\nmaxretry = 5\ninvite_weight = 1000\n",
            log.display()
        ),
    );
    assert!(d.wait_for(": following", Duration::from_secs(30)).is_some());
    let ban = d
        .wait_for("[esl] Ban 203.0.113.20", Duration::from_secs(30))
        .expect("one failed INVITE of weight 1000 bans at maxretry 5");
    assert!(ban.contains("(5 failures"), "{ban}");
    // A REGISTER failure still counts 1; one INVITE line counts 3.
    append(&log, &fs_line(0, "REGISTER", "203.0.113.21"));
    assert!(
        d.wait_for("[fs] Found 203.0.113.21", Duration::from_secs(30))
            .is_some()
    );
    append(&log, &fs_line(0, "INVITE", "203.0.113.22"));
    let ban = d
        .wait_for("[fs] Ban 203.0.113.22", Duration::from_secs(30))
        .expect("one (INVITE) line of weight 3 bans at maxretry 3");
    assert!(ban.contains("(3 failures"), "{ban}");
    assert!(d.lines_with("[fs] Ban 203.0.113.21").is_empty());
    let out = cli(&dir, &["ping"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pong\n");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// N8: events whose `Event-Date-Timestamp` was an hour old were dropped as
/// older than findtime, silently (status healthy, no ban); two hours ahead
/// they were counted. A live event is a failure now: both are counted at
/// arrival, the log names the peer and the offset, status counts them.
#[test]
fn event_socket_events_dated_off_the_clock_are_counted_at_arrival() {
    let hour = 3_600_000_000;
    let mut frames: Vec<String> = (0..3)
        .map(|_| register_failure("203.0.113.30", "REGISTER", now_us() - hour))
        .collect();
    frames.push(register_failure(
        "203.0.113.31",
        "REGISTER",
        now_us() + 2 * hour,
    ));
    let port = fake_esl(frames);
    let dir = TempDir::new("edge-skew");
    let d = start(
        &dir,
        &format!(
            "[jail.esl]\nesl = {{ host = \"127.0.0.1\", port = {port}, password = \"ClueCon\" }}\nmaxretry = 3\nfindtime = \"10m\"\n"
        ),
    );
    let ban = d
        .wait_for("[esl] Ban 203.0.113.30", Duration::from_secs(30))
        .expect("three failures from a PBX an hour behind ban");
    assert!(ban.contains("(3 failures"), "{ban}");
    let warn = d
        .wait_for("Event-Date-Timestamp", Duration::from_secs(10))
        .expect("the offset is logged");
    assert!(
        warn.contains(&format!("127.0.0.1:{port}"))
            && warn.contains("behind")
            && warn.contains("arrival"),
        "{warn}"
    );
    assert!(
        d.wait_for("[esl] Found 203.0.113.31", Duration::from_secs(10))
            .is_some()
    );
    let mut src = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            src = sources(&dir, "esl").first().cloned().unwrap_or(Value::Null);
            src["skewed"] == 4
        }),
        "{src}"
    );
    // The last one was two hours ahead.
    let last = src["last_skew_s"].as_i64().unwrap_or(0);
    assert!((7100..=7200).contains(&last), "{src}");
    assert_eq!(src["too_old"], 0, "{src}");
    let text = String::from_utf8_lossy(&cli(&dir, &["status", "esl"]).stdout).into_owned();
    assert!(text.contains("4 off the clock"), "{text}");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// N8, the same class for log files: lines older than findtime (a wrong
/// `logtimezone`, a clock that is off) were not counted and said so only at
/// debug level. Status counts them, the log warns (rarely); lines far ahead
/// are counted as now and noted.
#[test]
fn log_lines_older_than_findtime_show_in_status_and_the_log() {
    let dir = TempDir::new("edge-old");
    let log = dir.path("freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let d = start(
        &dir,
        &format!(
            "[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\nlogtimezone = \"UTC\"\nmaxretry = 3\nfindtime = \"10m\"\n",
            log.display()
        ),
    );
    assert!(d.wait_for(": following", Duration::from_secs(30)).is_some());
    let old: String = (0..3)
        .map(|_| fs_line(-3600, "REGISTER", "203.0.113.40"))
        .collect();
    append(&log, &old);
    let warn = d
        .wait_for("older than findtime", Duration::from_secs(30))
        .expect("a warning about lines older than findtime");
    assert!(
        warn.contains(&log.display().to_string()) && warn.contains("logtimezone (UTC)"),
        "{warn}"
    );
    let mut src = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            src = sources(&dir, "fs").first().cloned().unwrap_or(Value::Null);
            src["too_old"] == 3
        }),
        "{src}"
    );
    assert!(d.lines_with("Ban 203.0.113.40").is_empty());
    // Two hours ahead: counted as now, and noted.
    append(&log, &fs_line(7200, "REGISTER", "203.0.113.41"));
    assert!(
        d.wait_for("[fs] Found 203.0.113.41", Duration::from_secs(30))
            .is_some()
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            src = sources(&dir, "fs").first().cloned().unwrap_or(Value::Null);
            src["skewed"] == 1
        }),
        "{src}"
    );
    let text = String::from_utf8_lossy(&cli(&dir, &["status", "fs"]).stdout).into_owned();
    assert!(
        text.contains("3 too old, not counted") && text.contains("1 off the clock"),
        "{text}"
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// N9: `ban J ADDR --for 0s` (and the API's `"for":"0s"`) reported a ban the
/// kernel never held; `--for 1ms` said "a unit has no number before it".
#[test]
fn a_ban_of_no_length_is_refused_by_the_cli_and_the_api() {
    let port = crate::http::free_port();
    let dir = TempDir::new("edge-zero");
    let log = dir.path("freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let d = start(
        &dir,
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{}\"\n\n[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            crate::http::TOKEN,
            log.display()
        ),
    );
    assert!(
        d.wait_for("http: dashboard", Duration::from_secs(30))
            .is_some()
    );
    for zero in ["0s", "0", "0m"] {
        let out = cli(&dir, &["ban", "fs", "203.0.113.10", "--for", zero]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--for {zero} accepted");
        assert!(
            err.contains("at least 1s") && err.contains("-1 bans for ever"),
            "{zero}: {err}"
        );
    }
    let out = cli(&dir, &["ban", "fs", "203.0.113.10", "--for", "1ms"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--for 1ms accepted");
    assert!(
        err.contains("s, m, h, d or w") && err.contains("smallest is 1s"),
        "{err}"
    );
    let (code, body) = crate::http::http(
        port,
        "POST",
        "/api/ban",
        Some(crate::http::TOKEN),
        Some(&json!({"jail": "fs", "addr": "203.0.113.10", "for": "0s"})),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("at least 1s"), "{body}");
    assert!(d.lines_with("Ban 203.0.113.10").is_empty());
    // One second is the smallest, and is a ban.
    let out = cli(&dir, &["ban", "fs", "203.0.113.11", "--for", "1s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}
