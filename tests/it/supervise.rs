//! Every background task is supervised: a task that panics is started
//! again after a pause and shows it in status; the enforcer thread, whose
//! ledger a panic may leave half updated, stops the daemon with the reason
//! instead (the service manager starts it again). Faults are injected with
//! `SIPWARDEN_FAULT` (debug builds only).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Daemon, TempDir, bin, cli, daemon_section, wait_until};
use crate::names::{FakeEsl, register_failure};

fn config(dir: &TempDir, esl_port: u16) -> std::path::PathBuf {
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 3\nignoreip = []\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.pbx]\nesl = {{ host = \"127.0.0.1\", port = {esl_port}, password = \"ClueCon\" }}\n",
            daemon_section(dir)
        ),
    )
    .unwrap();
    cfg
}

fn start(cfg: &std::path::Path, fault: &str) -> Daemon {
    let d = Daemon::start_with(
        Command::new(bin())
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("SIPWARDEN_FAULT", fault),
    );
    assert!(d.wait_for(" started: ", Duration::from_secs(20)).is_some());
    d
}

fn task(dir: &TempDir, prefix: &str) -> Option<Value> {
    let out = cli(dir, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["result"]["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .cloned()
}

#[test]
fn an_event_socket_client_that_panics_is_started_again_and_shows_it() {
    let esl = FakeEsl::start();
    let dir = TempDir::new("sup-esl");
    let d = start(&config(&dir, esl.port), "esl");
    esl.subscribed
        .recv_timeout(Duration::from_secs(20))
        .unwrap();
    // The first batch makes the client panic: it is started again and
    // subscribes anew.
    esl.send.send(register_failure("203.0.113.5")).unwrap();
    assert!(
        d.wait_for("panicked: fault injected at esl", Duration::from_secs(10))
            .is_some()
    );
    // The fake serves one connection at a time: writes to the dead one
    // fail after a few tries, and it takes the next.
    let heartbeat =
        b"Content-Length: 26\nContent-Type: text/event-plain\n\nEvent-Name: HEARTBEAT\n\n\n\n"
            .to_vec();
    let came_back = (0..40).any(|_| {
        let _ = esl.send.send(heartbeat.clone());
        esl.subscribed
            .recv_timeout(Duration::from_millis(500))
            .is_ok()
    });
    assert!(came_back, "the client came back and subscribed again");
    let mut batch = Vec::new();
    for _ in 0..3 {
        batch.extend(register_failure("203.0.113.5"));
    }
    esl.send.send(batch).unwrap();
    assert!(
        d.wait_for("[pbx] Ban 203.0.113.5", Duration::from_secs(15))
            .is_some(),
        "failures are counted again after the restart"
    );
    let t = task(&dir, "[pbx] event socket").expect("the client is listed as a task");
    assert_eq!(t["restarts"], 1, "{t}");
    assert_eq!(t["up"], true, "{t}");
    let metrics_free = cli(&dir, &["status"]);
    assert!(metrics_free.status.success());
    assert!(d.stop().is_some_and(|s| s.success()));
}

#[test]
fn a_store_writer_that_panics_is_started_again_and_loses_no_record() {
    let esl = FakeEsl::start();
    let dir = TempDir::new("sup-store");
    let cfg = config(&dir, esl.port);
    let d = start(&cfg, "store");
    let out = cli(&dir, &["ban", "pbx", "198.51.100.44", "--for", "1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        d.wait_for(
            "store writer: panicked: fault injected at store",
            Duration::from_secs(10)
        )
        .is_some()
    );
    assert!(wait_until(Duration::from_secs(10), || task(
        &dir,
        "store writer"
    )
    .is_some_and(|t| t["restarts"] == 1 && t["up"] == true)));
    assert!(d.stop().is_some_and(|s| s.success()));
    // The record that was being written when it panicked is in the store.
    let d = start(&cfg, "");
    assert!(
        d.wait_for("restored 1 active ban(s)", Duration::from_secs(10))
            .is_some()
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

#[test]
fn an_enforcer_thread_that_panics_stops_the_daemon_with_the_reason() {
    let esl = FakeEsl::start();
    let dir = TempDir::new("sup-enf");
    let mut d = start(&config(&dir, esl.port), "enforcer");
    let out = cli(&dir, &["ban", "pbx", "198.51.100.45"]);
    assert!(!out.status.success(), "the ban cannot be confirmed");
    assert!(
        d.wait_for(
            "the enforcer thread stopped (panicked: fault injected at enforcer",
            Duration::from_secs(10)
        )
        .is_some()
    );
    let status = wait_until(Duration::from_secs(10), || {
        matches!(d.child.try_wait(), Ok(Some(_)))
    });
    assert!(status, "the daemon exits");
    let code = d.child.wait().unwrap();
    assert!(
        !code.success(),
        "with a failing status, for the service manager"
    );
}

fn failure_line(ip: &str) -> String {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S%.6f");
    format!(
        "{now} [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1001@10.0.0.1] from ip {ip}\n"
    )
}

#[test]
fn a_follower_and_a_feed_that_panic_are_started_again() {
    let dir = TempDir::new("sup-follow");
    let log = dir.path("fs.log");
    std::fs::write(&log, "").unwrap();
    let list = dir.path("list.txt");
    std::fs::write(&list, "198.51.100.0/24\n").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 3\nignoreip = []\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.fs]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}\"\n\
             [[feed]]\nname = \"local\"\npath = \"{}\"\nrefresh = \"1s\"\n",
            daemon_section(&dir),
            log.display(),
            list.display()
        ),
    )
    .unwrap();
    let d = start(&cfg, "follower,feed");
    // The feed's first fetch panics; it is fetched again and loaded.
    assert!(
        d.wait_for(
            "feed local: panicked: fault injected at feed",
            Duration::from_secs(10)
        )
        .is_some()
    );
    assert!(
        d.wait_for("feed local: 1 entries in force", Duration::from_secs(15))
            .is_some()
    );
    // The follower's first batch panics; it follows again, and later
    // failures are counted.
    assert!(d.wait_for(": following", Duration::from_secs(10)).is_some());
    crate::common::append(&log, &failure_line("203.0.113.9"));
    assert!(
        d.wait_for(
            "panicked: fault injected at follower",
            Duration::from_secs(10)
        )
        .is_some()
    );
    assert!(wait_until(Duration::from_secs(15), || task(
        &dir,
        "[fs] follower"
    )
    .is_some_and(|t| t["restarts"] == 1 && t["up"] == true)));
    // Following again (from the end): new lines count.
    let banned = wait_until(Duration::from_secs(20), || {
        crate::common::append(&log, &failure_line("203.0.113.9"));
        !d.lines_with("[fs] Ban 203.0.113.9").is_empty()
    });
    assert!(banned, "failures are counted after the follower's restart");
    assert!(task(&dir, "feed local").is_some_and(|t| t["restarts"] == 1));
    assert!(d.stop().is_some_and(|s| s.success()));
}
