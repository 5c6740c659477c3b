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
