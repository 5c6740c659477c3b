//! The command line: `check`, `config default`.

use std::process::Command;

use crate::common::{TempDir, bin};

#[test]
fn check_reports_typo_with_file_and_line() {
    let dir = TempDir::new("check");
    let cfg = dir.path("bad.toml");
    std::fs::write(&cfg, "[defaults]\nmaxretry = 3\n\n[jail.freeswitch]\nfilter = \"freeswitch\"\nlogpath = [\"/tmp/x.log\"]\nbantme = \"1h\"\n").unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{}:7:1: unknown field `bantme`", cfg.display())),
        "{err}"
    );
    assert!(
        err.contains("`bantime`"),
        "the message lists the valid keys: {err}"
    );
}

#[test]
fn check_accepts_the_default_and_a_good_file() {
    let out = Command::new(bin())
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[jail.freeswitch]"));
    let dir = TempDir::new("check");
    let cfg = dir.path("default.toml");
    std::fs::write(&cfg, &text).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn run_refuses_a_bad_config() {
    let dir = TempDir::new("check");
    let cfg = dir.path("bad.toml");
    std::fs::write(&cfg, "[defaults]\nfindtime = \"ten minutes\"\n").unwrap();
    let out = Command::new(bin())
        .args(["run", "--dry-run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:") && err.contains("findtime"), "{err}");
}

/// fail2ban's annotated samples: evaluations that pass today. The count may
/// only go up; raise it when filters improve (docs/fail2ban-samples.md lists what remains).
const SAMPLES_PASSING: u64 = 1809;

#[test]
fn fail2ban_samples_do_not_regress() {
    let (Some(config), Some(logs)) = (
        crate::common::corpus("fail2ban-1.1.2.dev1/config"),
        crate::common::corpus("fail2ban-1.1.2.dev1/tests/files/logs"),
    ) else {
        return;
    };
    let samples = |extra: &[&str]| {
        Command::new(bin())
            .arg("samples")
            .arg("--config")
            .arg(&config)
            .arg("--logs")
            .arg(&logs)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = samples(&["--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("samples --json prints JSON");
    let (total, passed, failed) = (
        v["total"].as_u64().unwrap(),
        v["passed"].as_u64().unwrap(),
        v["failed"].as_u64().unwrap(),
    );
    println!("fail2ban samples: {passed} passed, {failed} failed of {total}");
    assert_eq!(passed + failed, total);
    assert_eq!(v["filters"], 99);
    assert!(
        passed >= SAMPLES_PASSING,
        "regression: {passed} < {SAMPLES_PASSING} passing evaluations"
    );
    // The text form ends with the count line.
    let out = samples(&["--filter", "freeswitch"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .ends_with(" passed, 0 failed"),
        "{text}"
    );
}

#[test]
fn test_filter_counts_the_corpus() {
    let Some(log) = crate::common::corpus("freeswitch-1.10.12/freeswitch.log") else {
        return;
    };
    let out = Command::new(bin())
        .arg("test-filter")
        .arg(&log)
        .args(["freeswitch", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["matched"], 13);
    assert_eq!(
        v["lines"].as_u64().unwrap(),
        v["matched"].as_u64().unwrap()
            + v["ignored"].as_u64().unwrap()
            + v["missed"].as_u64().unwrap()
    );
    // A fail2ban filter file with options, and a bare regex.
    if let Some(conf) = crate::common::corpus("fail2ban-1.1.2.dev1/config/filter.d/freeswitch.conf")
    {
        let spec = format!("{}[mode=normal]", conf.display());
        let out = Command::new(bin())
            .arg("test-filter")
            .arg(&log)
            .arg(&spec)
            .arg("--json")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(
            v["matched"], 13,
            "fail2ban's filter in normal mode counts the same 13 failures"
        );
    }
    let out = Command::new(bin())
        .arg("test-filter")
        .arg(&log)
        .args([
            r"SIP auth failure \(REGISTER\) .* from ip <HOST>$",
            "--json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["matched"], 11);
}

/// A one-connection Event Socket that accepts `password` and answers
/// `module_exists`.
fn fake_esl(password: &'static str) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = w.write_all(b"Content-Type: auth/request\n\n");
        let mut cmd = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.trim().is_empty() {
                let c = std::mem::take(&mut cmd);
                let reply = if c.starts_with("auth ") {
                    if c.trim() == format!("auth {password}") {
                        "Content-Type: command/reply\nReply-Text: +OK accepted\n\n".to_string()
                    } else {
                        "Content-Type: command/reply\nReply-Text: -ERR invalid\n\n".to_string()
                    }
                } else if c.starts_with("api module_exists") {
                    "Content-Type: api/response\nContent-Length: 5\n\nfalse".to_string()
                } else {
                    return;
                };
                let _ = w.write_all(reply.as_bytes());
            } else {
                cmd.push_str(&line);
            }
        }
    });
    port
}

#[test]
fn doctor_says_what_to_fix() {
    let dir = TempDir::new("doctor");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound and dropped: nothing listens there now
    let good = fake_esl("ClueCon");
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[firewall]\nbackend = \"none\"\n[jail.up]\nesl = {{ host = \"localhost\", port = {good}, password = \"ClueCon\" }}\n[jail.down]\nesl = {{ host = \"127.0.0.1\", port = {closed}, password = \"x\" }}\n[jail.logs]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            crate::common::daemon_section(&dir),
            dir.path("missing.log").display()
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["doctor", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(!out.status.success(), "a failed check fails the command");
    assert!(text.contains("ok    configuration"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && l.contains("password accepted")),
        "{text}"
    );
    assert!(text.contains("mod_fail2ban: not loaded"), "{text}");
    // A peer given by name: doctor says which addresses the daemon protects.
    assert!(
        text.lines().any(|l| l.starts_with("ok")
            && l.contains("localhost")
            && l.contains("resolves to")
            && l.contains("127.0.0.1")
            && l.contains("never bans")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains(&format!(":{closed}: cannot connect"))),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("warn") && l.contains("missing.log: does not exist")),
        "{text}"
    );
}

#[test]
fn completions_and_man_page() {
    for (args, needle) in [
        (&["completions", "bash"][..], "_sipwarden()"),
        (&["completions", "zsh"][..], "#compdef sipwarden"),
        (&["man"][..], ".TH sipwarden 1"),
    ] {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(needle),
            "{args:?}"
        );
    }
}

/// The README's architecture picture is the imports the code makes today,
/// and no module imports another that imports it back.
#[test]
fn readme_architecture_picture_matches_the_imports() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/scripts/architecture.py"))
        .arg("--check")
        .output()
        .expect("python3 is needed to read the imports (Debian: python3)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
