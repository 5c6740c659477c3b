//! Log followers seen from outside: what `status` says about a logpath that
//! is not a regular file, and that the follower carries on once one is back.

use std::time::Duration;

use crate::common::{Daemon, TempDir, append, cli, daemon_section, wait_until};

/// The jail's one source, from `status --json`.
fn source(dir: &TempDir) -> serde_json::Value {
    let out = cli(dir, &["status", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .map(|v| v["result"]["jails"][0]["sources"][0].clone())
        .unwrap_or_default()
}

fn failures(dir: &TempDir) -> u64 {
    let out = cli(dir, &["status", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["result"]["jails"][0]["total_failed"].as_u64())
        .unwrap_or(0)
}

fn failure(ip: &str) -> String {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S%.6f");
    format!(
        "{now} 12.50% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1000@pbx] from ip {ip}\n"
    )
}

/// Finding 3 of issue 16: `rm log; mkfifo log` hung the follower in open(),
/// status kept saying "followed", later failures were never read and
/// `reload` did not help.
#[test]
fn a_fifo_at_the_logpath_shows_in_status_and_the_real_file_is_followed_again() {
    let dir = TempDir::new("fifo");
    let log = dir.path("freeswitch.log");
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 1000\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}\"\n",
            daemon_section(&dir),
            log.display()
        ),
    )
    .unwrap();
    std::fs::write(&log, "").unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for(": following", Duration::from_secs(20)).is_some(),
        "daemon did not start"
    );
    append(&log, &failure("203.0.113.1"));
    assert!(wait_until(Duration::from_secs(10), || failures(&dir) == 1));

    std::fs::remove_file(&log).unwrap();
    let c = std::ffi::CString::new(log.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo_shown = || {
        let s = source(&dir);
        s["healthy"] == false && s["reason"].as_str().is_some_and(|r| r.contains("FIFO"))
    };
    assert!(
        wait_until(Duration::from_secs(10), fifo_shown),
        "status does not say the logpath is a FIFO: {}",
        source(&dir)
    );
    assert!(
        d.wait_for("not a regular file", Duration::from_secs(5))
            .is_some(),
        "no warning in the log"
    );
    // A reload with the FIFO still there answers, and says the same.
    assert!(cli(&dir, &["reload"]).status.success());
    assert!(wait_until(Duration::from_secs(10), fifo_shown));
    let text = String::from_utf8_lossy(&cli(&dir, &["status", "freeswitch"]).stdout).into_owned();
    assert!(text.contains("FIFO"), "status JAIL: {text}");

    std::fs::remove_file(&log).unwrap();
    append(&log, &failure("203.0.113.2"));
    assert!(
        wait_until(Duration::from_secs(10), || failures(&dir) == 2),
        "a failure in the regular file that replaced the FIFO was not counted"
    );
    let s = source(&dir);
    assert_eq!(s["healthy"], true, "{s}");
    assert!(s.get("reason").is_none_or(|r| r.is_null()), "{s}");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// Black-box pass N7: the same log file followed twice counted every
/// failure twice: `logpath = [p, p]`, or two paths where one directory is a
/// symbolic link to the other (the embedded default lists two FreeSWITCH
/// log paths). Each file is followed once, with one warning naming both
/// paths; `check` says the same beforehand.
#[test]
fn one_file_reached_by_several_logpaths_counts_once() {
    let dir = TempDir::new("samefile");
    std::fs::create_dir(dir.path("real")).unwrap();
    std::os::unix::fs::symlink(dir.path("real"), dir.path("alias")).unwrap();
    let log = dir.path("real/freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 1000\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = [\"{}\", \"{}\", \"{}\"]\n",
            daemon_section(&dir),
            log.display(),
            dir.path("alias/freeswitch.log").display(),
            log.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for(": following", Duration::from_secs(20)).is_some(),
        "daemon did not start"
    );
    // Every follower there is has opened its file by now.
    std::thread::sleep(Duration::from_millis(1500));
    for i in 1..=3 {
        append(&log, &failure(&format!("203.0.113.{i}")));
    }
    assert!(wait_until(Duration::from_secs(10), || failures(&dir) >= 3));
    // Two more wake-ups of any follower: nothing counted twice.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(failures(&dir), 3, "each failure counts once");
    let warned = d.lines_with("is the same file as");
    assert_eq!(warned.len(), 1, "one warning: {warned:?}");
    assert!(warned[0].contains("alias/freeswitch.log"), "{warned:?}");
    assert_eq!(d.lines_with(": following").len(), 1);
    drop(d);

    let check = std::process::Command::new(crate::common::bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(check.status.success(), "{err}");
    assert!(
        err.contains("twice"),
        "check warns for the literal duplicate: {err}"
    );
    assert!(
        err.contains("alias/freeswitch.log") && err.contains("same file"),
        "check warns for the same file through the link: {err}"
    );
}

/// Black-box pass N10: `ln -s /proc/self/mem fs.log` logged a `read failed
/// (EIO)` / `following` pair four times per 0.5 s wake-up, forever, and a
/// file of procfs or sysfs was followed as a regular file (`/proc/kmsg`
/// read that way consumes the kernel's messages). Files on kernel pseudo
/// file systems are refused like FIFOs (a reason in status, looked at
/// again), and the log says so once.
#[test]
fn files_of_kernel_pseudo_file_systems_are_refused_and_never_flood_the_log() {
    let dir = TempDir::new("procfs");
    let cfg = dir.path("sipwarden.toml");
    let logs = ["mem.log", "status.log", "sys.log"];
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.mem]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n\
             [jail.status]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n\
             [jail.sys]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n\
             [jail.real]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            daemon_section(&dir),
            dir.path(logs[0]).display(),
            dir.path(logs[1]).display(),
            dir.path(logs[2]).display(),
            dir.path("real.log").display()
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink("/proc/self/mem", dir.path(logs[0])).unwrap();
    std::os::unix::fs::symlink("/proc/self/status", dir.path(logs[1])).unwrap();
    std::os::unix::fs::symlink("/sys/class/net/lo/address", dir.path(logs[2])).unwrap();
    std::fs::write(dir.path("real.log"), "").unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for("real.log: following", Duration::from_secs(20))
            .is_some(),
        "daemon did not start"
    );
    // Six poll intervals of 0.5 s.
    std::thread::sleep(Duration::from_secs(3));
    let out = cli(&dir, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let jails = v["result"]["jails"].as_array().cloned().unwrap_or_default();
    for (jail, fs) in [("mem", "procfs"), ("status", "procfs"), ("sys", "sysfs")] {
        let src = jails
            .iter()
            .find(|j| j["name"] == jail)
            .map(|j| j["sources"][0].clone())
            .unwrap_or_default();
        assert_eq!(src["healthy"], false, "{jail}: {src}");
        assert!(
            src["reason"].as_str().is_some_and(|r| r.contains(fs)),
            "{jail}: status says it is on {fs}: {src}"
        );
    }
    for log in logs {
        let lines = d.lines_with(log);
        assert!(
            lines.len() <= 2,
            "{log}: at most a line or two, not one per wake-up: {} lines, e.g. {:?}",
            lines.len(),
            &lines[..lines.len().min(6)]
        );
        assert!(
            !lines.iter().any(|l| l.contains(": following")),
            "{log} is never followed: {lines:?}"
        );
    }
}
