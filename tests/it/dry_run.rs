//! The whole pipeline with `--dry-run`: followed log files to Ban lines.

use std::time::{Duration, Instant};

use crate::common::{Daemon, TempDir, append, daemon_section};

/// Rewrites mod_fail2ban's `at[...]` stamps so the last line is "now" and the
/// spacing between lines stays as captured.
fn shift_to_now(text: &str) -> String {
    let stamp = |l: &str| -> Option<(usize, usize, jiff::Timestamp)> {
        let a = l.rfind(" at[")? + 4;
        let b = l.len() - 1;
        let ts: jiff::Timestamp = l[a..b].replace("+0000", "Z").parse().ok()?;
        Some((a, b, ts))
    };
    let last = text.lines().filter_map(stamp).map(|s| s.2).max().unwrap();
    let shift = jiff::Timestamp::now().duration_since(last);
    text.lines()
        .map(|l| match stamp(l) {
            Some((a, _, ts)) => {
                let t = ts.checked_add(shift).unwrap();
                format!("{}{}+0000]\n", &l[..a], t.strftime("%Y-%m-%dT%H:%M:%S%.6f"))
            }
            None => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn mod_fail2ban_corpus_bans_the_attacker_once() {
    let Some(corpus) = crate::common::corpus("freeswitch-1.10.12/fail2ban.log") else {
        return;
    };
    let dir = TempDir::new("dry");
    let log = dir.path("fail2ban.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 5\nfindtime = \"10m\"\nbantime = \"1h\"\nignoreip = [\"127.0.0.0/8\"]\nignoreself = false\n\n\
             [firewall]\nbackend = \"nftables\"\n\n\
             [jail.mod-fail2ban]\nfilter = \"mod-fail2ban\"\nlogpath = [\"{}\"]\n\
             # This test counts to maxretry; the burst rule has tests of its own.\n\
             burst = false\n",
            daemon_section(&dir),
            log.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--dry-run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for(
            &format!("{}: following", log.display()),
            Duration::from_secs(10)
        )
        .is_some(),
        "daemon never followed the log"
    );

    let mut text = shift_to_now(&std::fs::read_to_string(corpus).unwrap());
    // A second address with maxretry-1 failures must not be banned.
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6f+0000")
        .to_string();
    for _ in 0..4 {
        text.push_str(&format!(
            "A registration failed user[1001] ip[198.51.100.9] at[{now}]\n"
        ));
    }
    let t0 = Instant::now();
    append(&log, &text);
    let ban = d.wait_for("[mod-fail2ban] Ban 10.77.0.2", Duration::from_secs(10));
    let took = t0.elapsed();
    assert!(ban.is_some(), "no ban within 10 s");
    assert!(ban.unwrap().contains("(5 failures, 1h)"));
    println!("dry-run ban of 10.77.0.2 logged {took:?} after the append");
    // Every line has been read once 198.51.100.9's 4th failure is counted.
    let fourth = d.wait_for("[mod-fail2ban] Found 198.51.100.9", Duration::from_secs(10));
    assert!(fourth.is_some());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.lines_with("[mod-fail2ban] Found 198.51.100.9").len(), 4);
    assert_eq!(
        d.lines_with("] Ban ").len(),
        1,
        "exactly one ban: {:?}",
        d.lines_with("] Ban ")
    );
    // 13 failures from 10.77.0.2: 5 counted up to the ban, the rest ignored.
    assert_eq!(d.lines_with("[mod-fail2ban] Found 10.77.0.2").len(), 5);
    let status = d.stop().expect("daemon stops on SIGTERM");
    assert!(status.success());
}

#[test]
fn freeswitch_log_follows_rotation_and_truncation() {
    let dir = TempDir::new("rot");
    let log = dir.path("freeswitch.log");
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 3\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}\"\n",
            daemon_section(&dir),
            log.display()
        ),
    )
    .unwrap();
    // The file does not exist yet: the daemon waits for it.
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for("waiting for it to appear", Duration::from_secs(10))
            .is_some()
    );
    let line = |ip: &str| {
        let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S%.6f");
        format!(
            "{now} 12.50% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1000@pbx] from ip {ip}\n"
        )
    };
    // Appears: read from its start. A half-written line waits for its end.
    let first = line("203.0.113.1");
    std::fs::write(&log, &first[..40]).unwrap();
    assert!(
        d.wait_for(
            &format!("{}: following", log.display()),
            Duration::from_secs(10)
        )
        .is_some()
    );
    append(&log, &first[40..]);
    assert!(
        d.wait_for("[freeswitch] Found 203.0.113.1", Duration::from_secs(10))
            .is_some()
    );
    // Rename rotation: the new file is read from its start.
    std::fs::rename(&log, dir.path("freeswitch.log.1")).unwrap();
    std::fs::write(&log, line("203.0.113.1")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.lines_with("[freeswitch] Found 203.0.113.1").len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.lines_with("[freeswitch] Found 203.0.113.1").len(), 2);
    // copytruncate: truncated in place, then written again.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    append(&log, &line("203.0.113.1"));
    assert!(
        d.wait_for(
            "[freeswitch] Ban 203.0.113.1 (3 failures, 1h)",
            Duration::from_secs(10)
        )
        .is_some()
    );
    // Garbage never stops the follower.
    let mut junk = vec![b'x'; 70 * 1024];
    junk.extend_from_slice(b"\n\xff\xfe\n");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &junk))
        .unwrap();
    append(&log, &line("203.0.113.2"));
    assert!(
        d.wait_for("[freeswitch] Found 203.0.113.2", Duration::from_secs(10))
            .is_some()
    );
    assert!(
        d.wait_for("skipped a line over 64 KiB", Duration::from_secs(5))
            .is_some()
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// Copies fail2ban's stock configuration (read at test time from
/// ../shared, never committed) into a temp dir with a jail.local.
pub(crate) fn fail2ban_dir(dir: &TempDir, jail_local: &str) -> Option<std::path::PathBuf> {
    let src = crate::common::corpus("fail2ban-1.1.2.dev1/config")?;
    let dst = dir.path("fail2ban");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&dst)
        .status()
        .ok()?;
    assert!(status.success());
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&dst)
        .status();
    std::fs::write(dst.join("jail.local"), jail_local).unwrap();
    Some(dst)
}

#[test]
fn a_fail2ban_configuration_runs_as_is_and_imports_to_toml() {
    let dir = TempDir::new("f2bcfg");
    let auth = dir.path("auth.log");
    std::fs::write(&auth, "").unwrap();
    let Some(f2b) = fail2ban_dir(
        &dir,
        &format!(
            // fail2ban 1.1's Debian paths read sshd from the journal;
            // `auto` reads the log file, which is there.
            "[sshd]\nenabled = true\nbackend = auto\nlogpath = {}\nmaxretry = 3\n",
            auth.display()
        ),
    ) else {
        return;
    };
    // The TOML file only places state and socket in the temp dir.
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!("{}[firewall]\nbackend = \"none\"\n", daemon_section(&dir)),
    )
    .unwrap();
    let d = Daemon::start(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--fail2ban-config",
        f2b.to_str().unwrap(),
    ]);
    assert!(
        d.wait_for(
            &format!("{}: following", auth.display()),
            Duration::from_secs(10)
        )
        .is_some()
    );
    let now = jiff::Timestamp::now()
        .strftime("%b %e %H:%M:%S")
        .to_string();
    let line = |ip: &str| {
        format!(
            "{now} pbx sshd[123]: Failed password for invalid user admin from {ip} port 4242 ssh2\n"
        )
    };
    append(
        &auth,
        &(line("192.0.2.10").repeat(3) + &line("192.0.2.11").repeat(2)),
    );
    let ban = d
        .wait_for("[sshd] Ban 192.0.2.10", Duration::from_secs(10))
        .expect("banned by fail2ban's own sshd filter");
    assert!(ban.contains("(3 failures, 10m)"), "{ban}");
    assert!(
        d.wait_for("[sshd] Found 192.0.2.11", Duration::from_secs(5))
            .is_some()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.lines_with("Ban 192.0.2.11").is_empty());
    assert!(d.stop().is_some_and(|s| s.success()));

    // import-fail2ban prints TOML that sipwarden accepts as it is.
    let out = std::process::Command::new(crate::common::bin())
        .arg("import-fail2ban")
        .arg(&f2b)
        .output()
        .unwrap();
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(
        toml.contains("[jail.sshd]")
            && toml.contains("sshd.conf[mode=normal]")
            && toml.contains("maxretry = 3"),
        "{toml}"
    );
    let imported = dir.path("imported.toml");
    std::fs::write(&imported, toml).unwrap();
    let check = std::process::Command::new(crate::common::bin())
        .args(["check", "--config"])
        .arg(&imported)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// A dry run changes nothing outside: a jail's fail2ban action and its
/// webhook are not run for a ban it logs (the warning says they are off).
#[test]
fn a_dry_run_runs_no_action_and_sends_no_notification() {
    let dir = TempDir::new("dry-actions");
    let log = dir.path("fail2ban.log");
    std::fs::write(&log, "").unwrap();
    let record = dir.path("record");
    let action = dir.path("record.conf");
    std::fs::write(
        &action,
        format!("[Definition]\nactionban = touch {}\n", record.display()),
    )
    .unwrap();
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    hook.set_nonblocking(true).unwrap();
    let port = hook.local_addr().unwrap().port();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 2\nignoreip = [\"127.0.0.0/8\"]\nignoreself = false\n\n\
             [jail.mod-fail2ban]\nfilter = \"mod-fail2ban\"\nlogpath = [\"{}\"]\nburst = false\n\
             actions = [{:?}]\n\
             notify = [{{ type = \"webhook\", url = \"http://127.0.0.1:{port}/hook\", retries = 0 }}]\n",
            daemon_section(&dir),
            log.display(),
            action.display().to_string(),
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--dry-run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for("--dry-run: 2 action(s)", Duration::from_secs(10))
            .is_some(),
        "no warning that the action and the webhook are off"
    );
    assert!(
        d.wait_for(
            &format!("{}: following", log.display()),
            Duration::from_secs(10)
        )
        .is_some()
    );
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6f+0000")
        .to_string();
    let mut text = String::new();
    for _ in 0..2 {
        text.push_str(&format!(
            "A registration failed user[1001] ip[198.51.100.9] at[{now}]\n"
        ));
    }
    append(&log, &text);
    assert!(
        d.wait_for("[mod-fail2ban] Ban 198.51.100.9", Duration::from_secs(10))
            .is_some(),
        "no ban logged"
    );
    // An action or a webhook would run within moments of the ban; give
    // them two seconds to show themselves.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(hook.accept().is_err(), "a dry run sent a notification");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!record.exists(), "a dry run ran an action");
    let status = d.stop().expect("daemon stops on SIGTERM");
    assert!(status.success());
}
