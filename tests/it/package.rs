//! The Debian package: installed with `dpkg -i`, the installed binary runs
//! on the installed configuration (in a network namespace, so its nftables
//! table stays there) and answers `sipwarden status`; the unit file passes
//! `systemd-analyze verify`; then the package is purged. It changes the
//! machine (dpkg), so it runs only when asked: `SIPWARDEN_TEST_PACKAGE=1`,
//! which `.ci/run` sets after `packaging/build-deb.sh` built the package;
//! a developer's plain `cargo test` leaves the system alone.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::{Daemon, NetNs, need, wait_until};

fn built_deb() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    debs.pop()
}

struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "sipwarden"]).output();
    }
}

#[test]
fn the_deb_installs_runs_and_answers_status() {
    if std::env::var("SIPWARDEN_TEST_PACKAGE").as_deref() != Ok("1") {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "NOT RUN the_deb_installs_runs_and_answers_status: it installs a package; SIPWARDEN_TEST_PACKAGE=1 asks for it (.ci/run does)"
        );
        return;
    }
    let deb = built_deb()
        .expect("no target/debian/*.deb: run `bash packaging/build-deb.sh` first (.ci/run does)");
    if !need("netns") {
        return;
    }
    assert!(
        Command::new("dpkg").arg("--version").output().is_ok(),
        "needs dpkg"
    );
    // Never replace (and then purge) a real installation.
    assert!(
        !Command::new("dpkg")
            .args(["-s", "sipwarden"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "a sipwarden package is installed on this machine; this test would replace and purge it"
    );
    let fresh_state = !std::path::Path::new("/var/lib/sipwarden").exists();
    let fresh_run = !std::path::Path::new("/run/sipwarden").exists();
    let out = Command::new("dpkg").arg("-i").arg(&deb).output().unwrap();
    let _purge = Purge;
    assert!(
        out.status.success(),
        "dpkg -i {}: {}",
        deb.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "/usr/bin/sipwarden",
        "/etc/sipwarden/sipwarden.toml",
        "/lib/systemd/system/sipwarden.service",
        "/usr/share/man/man1/sipwarden.1.gz",
        "/usr/share/bash-completion/completions/sipwarden",
    ] {
        assert!(std::path::Path::new(f).exists(), "{f} installed");
    }
    let v = Command::new("systemd-analyze")
        .args(["verify", "/lib/systemd/system/sipwarden.service"])
        .output()
        .expect("needs systemd-analyze (systemd) to verify the unit file");
    assert!(
        v.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    // The installed binary on the installed configuration.
    let ns = NetNs::new("deb");
    let d = Daemon::start_with(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        "/usr/bin/sipwarden",
        "run",
    ]));
    assert!(
        d.wait_for("control socket", Duration::from_secs(30))
            .is_some(),
        "the installed daemon starts on /etc/sipwarden/sipwarden.toml"
    );
    let status = || {
        Command::new("/usr/bin/sipwarden")
            .arg("status")
            .output()
            .unwrap()
    };
    assert!(wait_until(Duration::from_secs(10), || status()
        .status
        .success()));
    let text = String::from_utf8_lossy(&status().stdout).into_owned();
    println!("{text}");
    assert!(text.contains("freeswitch-esl"), "{text}");
    assert!(d.stop().is_some_and(|s| s.success()));
    // Purge removes the package; the test removes what the daemon made,
    // when it was not there before.
    if fresh_state {
        let _ = std::fs::remove_dir_all("/var/lib/sipwarden");
    }
    if fresh_run {
        let _ = std::fs::remove_dir_all("/run/sipwarden");
    }
}
