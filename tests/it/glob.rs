//! `logpath` glob patterns (issue 19): a jail with `DIR/*.log` follows every
//! matching file, and a file that matches later is followed without a
//! reload.

use std::time::Duration;

use crate::common::{Daemon, TempDir, append, daemon_section};

fn failure(ip: &str) -> String {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S%.6f");
    format!(
        "{now} 12.50% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1000@pbx] from ip {ip}\n"
    )
}

/// On main the pattern was followed as a literal path that never exists:
/// nothing was read and nothing banned.
#[test]
fn a_logpath_glob_follows_every_match_and_files_that_appear_later() {
    let dir = TempDir::new("glob");
    let logs = dir.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (a, b, later) = (logs.join("a.log"), logs.join("b.log"), logs.join("c.log"));
    std::fs::write(&a, "").unwrap();
    std::fs::write(&b, "").unwrap();
    // Neither a hidden file nor another suffix matches.
    std::fs::write(logs.join(".hidden.log"), "").unwrap();
    std::fs::write(logs.join("a.log.1"), "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 2\nfindtime = \"10m\"\nbantime = \"1h\"\nignoreself = false\n\
             [firewall]\nbackend = \"none\"\n\
             [jail.fs]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}/*.log\"\n",
            daemon_section(&dir),
            logs.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    for f in [&a, &b] {
        assert!(
            d.wait_for(
                &format!("{}: following", f.display()),
                Duration::from_secs(20)
            )
            .is_some(),
            "{} not followed",
            f.display()
        );
    }
    assert!(d.lines_with(".hidden.log").is_empty());
    assert!(d.lines_with("a.log.1").is_empty());
    // One failure in each file: two failures, a ban.
    append(&a, &failure("203.0.113.7"));
    append(&b, &failure("203.0.113.7"));
    assert!(
        d.wait_for("[fs] Ban 203.0.113.7", Duration::from_secs(10))
            .is_some(),
        "no ban from the two matched files"
    );
    // A file created after the start: found by the next expansion (every
    // 5 s) and read from its start.
    std::fs::write(&later, failure("203.0.113.8") + &failure("203.0.113.8")).unwrap();
    assert!(
        d.wait_for(
            &format!("new file {} matches a pattern", later.display()),
            Duration::from_secs(20)
        )
        .is_some(),
        "the file created later was not followed"
    );
    assert!(
        d.wait_for("[fs] Ban 203.0.113.8", Duration::from_secs(10))
            .is_some(),
        "no ban from the file created later"
    );
    // A matched file that goes away for good stops being followed (names
    // that come and go, such as dated logs, do not pile up).
    let sources = || {
        let out = crate::common::cli(&dir, &["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["result"]["jails"][0]["sources"].as_array().map(Vec::len))
    };
    assert_eq!(sources(), Some(3));
    std::fs::remove_file(&later).unwrap();
    assert!(
        d.wait_for(
            &format!("{} no longer matches a pattern", later.display()),
            Duration::from_secs(30)
        )
        .is_some(),
        "the follower of the removed file was kept"
    );
    assert_eq!(sources(), Some(2));
    d.stop();
}

/// `check` says a pattern matches nothing yet; `doctor` shows what each
/// pattern matches.
#[test]
fn check_and_doctor_show_what_each_pattern_matches() {
    let dir = TempDir::new("globcheck");
    let logs = dir.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for f in ["a.log", "b.log"] {
        std::fs::write(logs.join(f), "").unwrap();
    }
    let (some, none) = (logs.join("*.log"), dir.path("none/*error.log"));
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[firewall]\nbackend = \"none\"\n\
             [jail.fs]\nfilter = \"freeswitch\"\nlogpath = [\"{}\", \"{}\"]\n",
            daemon_section(&dir),
            some.display(),
            none.display()
        ),
    )
    .unwrap();
    let run = |verb: &str| {
        let out = std::process::Command::new(crate::common::bin())
            .args([verb, "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let text = run("check");
    assert!(
        text.contains(&format!(
            "logpath pattern {} matches no file yet",
            none.display()
        )),
        "{text}"
    );
    assert!(!text.contains(&some.display().to_string()), "{text}");
    let text = run("doctor");
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
    };
    let matched = line(&format!(
        "logpath pattern {}: matches 2 file(s)",
        some.display()
    ))
    .unwrap_or_else(|| panic!("{text}"));
    assert!(matched.starts_with("ok"), "{matched}");
    assert!(matched.contains(&logs.join("a.log").display().to_string()));
    assert!(matched.contains(&logs.join("b.log").display().to_string()));
    let empty = line(&format!(
        "logpath pattern {}: matches no file yet",
        none.display()
    ))
    .unwrap_or_else(|| panic!("{text}"));
    assert!(empty.starts_with("warn"), "{empty}");
}

/// A fail2ban jail with a glob `logpath` and `backend = auto` (fail2ban's
/// default): the pattern matches files, so the jail reads them (on main
/// the pattern was followed as one literal path and nothing was read).
#[test]
fn a_fail2ban_jail_with_a_glob_reads_every_match() {
    let dir = TempDir::new("f2bglob");
    let logs = dir.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (a, b) = (logs.join("auth.log"), logs.join("auth-old.log"));
    std::fs::write(&a, "").unwrap();
    std::fs::write(&b, "").unwrap();
    let Some(f2b) = crate::dry_run::fail2ban_dir(
        &dir,
        &format!(
            "[sshd]\nenabled = true\nbackend = auto\nlogpath = {}/auth*.log\nmaxretry = 3\n",
            logs.display()
        ),
    ) else {
        return;
    };
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
    for f in [&a, &b] {
        assert!(
            d.wait_for(
                &format!("{}: following", f.display()),
                Duration::from_secs(20)
            )
            .is_some(),
            "{} not followed",
            f.display()
        );
    }
    let now = jiff::Timestamp::now()
        .strftime("%b %e %H:%M:%S")
        .to_string();
    let line = format!(
        "{now} pbx sshd[123]: Failed password for invalid user admin from 192.0.2.20 port 4242 ssh2\n"
    );
    append(&a, &line.repeat(2));
    append(&b, &line);
    assert!(
        d.wait_for("[sshd] Ban 192.0.2.20", Duration::from_secs(10))
            .is_some(),
        "no ban from the two files the pattern matches"
    );
    d.stop();
}
