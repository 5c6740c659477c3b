//! The systemd journal as a source: journal files written by
//! `systemd-journal-remote` from the export format (CI has no running
//! journald), read by `sipwarden run` with the firewall off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Daemon, TempDir, cli, daemon_section};
use crate::test_support::{export_entry, need, write_journal};

const WAIT: Duration = Duration::from_secs(15);

/// `(host, pid, message)` of the IPv4 "Failed password" lines of fail2ban's
/// sshd sample log.
fn sample_failures() -> Option<Vec<(String, String, String)>> {
    let log = crate::common::corpus("fail2ban-1.1.2.dev1/tests/files/logs/sshd")?;
    let text = std::fs::read_to_string(log).unwrap();
    let found: Vec<_> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("Failed password for"))
        .filter_map(|l| {
            // `Mon DD HH:MM:SS host sshd[pid]: message`
            let rest = l.get(16..)?;
            let (host, rest) = rest.split_once(' ')?;
            let rest = rest.strip_prefix("sshd[")?;
            let (pid, msg) = rest.split_once("]: ")?;
            Some((host.to_string(), pid.to_string(), msg.to_string()))
        })
        .filter(|(_, _, m)| {
            m.split_whitespace()
                .any(|w| w.parse::<std::net::Ipv4Addr>().is_ok())
        })
        .collect();
    assert!(!found.is_empty(), "no sshd failure in the sample log");
    Some(found)
}

/// The address a sample message names.
fn addr_of(msg: &str) -> String {
    msg.split_whitespace()
        .find(|w| w.parse::<std::net::Ipv4Addr>().is_ok())
        .unwrap()
        .to_string()
}

/// A sample message with its address replaced by `addr`.
fn with_addr(msg: &str, addr: &str) -> String {
    msg.replace(&addr_of(msg), addr)
}

/// `n` journal entries of sshd (as Debian's `ssh.service` logs them) with
/// `msg`, dated now.
fn sshd_entries(host: &str, pid: &str, msg: &str, n: usize) -> String {
    let now = jiff::Timestamp::now().as_microsecond() as u64;
    (0..n as u64)
        .map(|i| {
            export_entry(
                now + i,
                &[
                    &format!("_HOSTNAME={host}"),
                    "_SYSTEMD_UNIT=ssh.service",
                    "_COMM=sshd",
                    "SYSLOG_IDENTIFIER=sshd",
                    &format!("_PID={pid}"),
                    &format!("MESSAGE={msg}"),
                ],
            )
        })
        .collect()
}

/// The corpus's fail2ban 1.1 configuration with `jail_local`.
fn fail2ban_dir(dir: &TempDir, jail_local: &str) -> Option<PathBuf> {
    let src = crate::common::corpus("fail2ban-1.1.2.dev1/config")?;
    let dst = dir.path("fail2ban");
    let ok = std::process::Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&dst)
        .status();
    std::fs::write(dst.join("jail.local"), jail_local).unwrap();
    Some(dst)
}

fn start(cfg: &Path, f2b: &Path) -> Daemon {
    Daemon::start(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--fail2ban-config",
        f2b.to_str().unwrap(),
    ])
}

/// Issue 19's "done when": fail2ban's own sshd jail (the corpus's 1.1
/// configuration, `backend = systemd[journalpath=DIR]`) bans from journal
/// entries; a restart resumes after the stored cursor (an entry written
/// while it was down is read, none read before is read again); a rotation
/// (a second journal file, the first removed) loses nothing.
#[test]
fn fail2ban_sshd_bans_from_the_journal_resumes_and_survives_rotation() {
    if !need("journal") {
        return;
    }
    let Some(samples) = sample_failures() else {
        return;
    };
    let (host, pid, msg) = samples[0].clone();
    let dir = TempDir::new("journal-f2b");
    let jdir = dir.path("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let a = jdir.join("a.journal");
    // History before the first start: not read (the first start follows
    // from the end, like a log file).
    write_journal(&a, &sshd_entries(&host, &pid, &msg, 3));
    let Some(f2b) = fail2ban_dir(
        &dir,
        &format!(
            "[sshd]\nenabled = true\nbackend = systemd[journalpath={}]\nmaxretry = 3\n",
            jdir.display()
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

    let d = start(&cfg, &f2b);
    d.wait_for("following from its end", WAIT)
        .expect("the sshd jail follows the journal");
    let attacker = addr_of(&msg);
    write_journal(&a, &sshd_entries(&host, &pid, &msg, 3));
    let ban = d
        .wait_for(&format!("[sshd] Ban {attacker}"), WAIT)
        .expect("banned from journal entries by fail2ban's sshd filter");
    assert!(ban.contains("(3 failures"), "{ban}");
    // Two failures of another address, below maxretry.
    let b = "198.51.100.7";
    write_journal(&a, &sshd_entries(&host, &pid, &with_addr(&msg, b), 2));
    let deadline = std::time::Instant::now() + WAIT;
    while d.lines_with(&format!("[sshd] Found {b}")).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "two failures of {b} found"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = cli(&dir, &["status", "sshd"]);
    let shown = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        shown.contains("journal"),
        "status lists the journal: {shown}"
    );
    assert!(d.stop().is_some_and(|s| s.success()));

    // While stopped: one more failure of b.
    write_journal(&a, &sshd_entries(&host, &pid, &with_addr(&msg, b), 1));
    let d = start(&cfg, &f2b);
    d.wait_for("following after the last entry read", WAIT)
        .expect("the second start resumes from the stored cursor");
    d.wait_for(&format!("[sshd] Found {b}"), WAIT)
        .expect("the entry written while stopped is read");
    // Rotation: a second file, the first removed, then more entries.
    let c = "203.0.113.9";
    let bj = jdir.join("b.journal");
    write_journal(&bj, &sshd_entries(&host, &pid, &with_addr(&msg, c), 1));
    std::fs::remove_file(&a).unwrap();
    write_journal(&bj, &sshd_entries(&host, &pid, &with_addr(&msg, c), 2));
    d.wait_for(&format!("[sshd] Ban {c}"), WAIT)
        .expect("every entry of the new file after the rotation is read");
    // Nothing read twice: the first run's entries were not counted again
    // (b has 1 failure in this run, not 3; the attacker's are not found).
    assert_eq!(d.lines_with(&format!("[sshd] Found {b}")).len(), 1);
    assert!(d.lines_with(&format!("Ban {b}")).is_empty());
    assert!(d.lines_with(&format!("[sshd] Found {attacker}")).is_empty());
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// A journal directory under a new temporary directory, with sshd's
/// "listening" entry, for a TOML jail `ssh` reading it.
struct SshJournal {
    dir: TempDir,
    jdir: std::path::PathBuf,
    /// The journal file entries are appended to.
    a: std::path::PathBuf,
    cfg: std::path::PathBuf,
}

impl SshJournal {
    fn new(name: &str, host: &str, pid: &str) -> SshJournal {
        let dir = TempDir::new(name);
        let jdir = dir.path("journal");
        std::fs::create_dir_all(&jdir).unwrap();
        let a = jdir.join("a.journal");
        write_journal(
            &a,
            &sshd_entries(host, pid, "Server listening on 0.0.0.0 port 22.", 1),
        );
        let cfg = dir.path("sipwarden.toml");
        SshJournal { dir, jdir, a, cfg }
    }

    /// Writes the configuration: jail `ssh` with the built-in sshd filter
    /// on the journal directory, plus `keys`.
    fn write_config(&self, keys: &str) {
        std::fs::write(
            &self.cfg,
            format!(
                "{}[firewall]\nbackend = \"none\"\n\n[jail.ssh]\nfilter = \"sshd\"\nbackend = \"systemd\"\njournal_dir = \"{}\"\n{keys}",
                daemon_section(&self.dir),
                self.jdir.display()
            ),
        )
        .unwrap();
    }
}

/// A TOML jail: `backend = "systemd"`, `journal_dir`, its own
/// `journalmatch` (entries of other units are not read), the built-in
/// sshd filter.
#[test]
fn toml_journal_jail_reads_only_its_matches() {
    if !need("journal") {
        return;
    }
    let Some(samples) = sample_failures() else {
        return;
    };
    let (host, pid, msg) = samples[0].clone();
    let j = SshJournal::new("journal-toml", &host, &pid);
    let (a, cfg) = (j.a.clone(), j.cfg.clone());
    j.write_config("journalmatch = \"_SYSTEMD_UNIT=ssh.service\"\nmaxretry = 2\n");
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_for("following from its end (_SYSTEMD_UNIT=ssh.service)", WAIT)
        .expect("the jail follows the journal with its journalmatch");
    // Another unit's entries with the same text are not the jail's.
    let other = "192.0.2.77";
    let now = jiff::Timestamp::now().as_microsecond() as u64;
    let not_ssh: String = (0..3)
        .map(|i| {
            export_entry(
                now + i,
                &[
                    "_SYSTEMD_UNIT=cron.service",
                    "_COMM=sshd",
                    &format!("MESSAGE={}", with_addr(&msg, other)),
                ],
            )
        })
        .collect();
    write_journal(&a, &not_ssh);
    let e = "192.0.2.78";
    write_journal(&a, &sshd_entries(&host, &pid, &with_addr(&msg, e), 2));
    d.wait_for(&format!("[ssh] Ban {e}"), WAIT)
        .expect("banned from the jail's own matches");
    assert!(d.lines_with(other).is_empty(), "other units are not read");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// `doctor` checks a journal jail: the journal opens and is readable, and a
/// user outside the systemd-journal group is told to join it.
#[test]
fn doctor_checks_journal_jails_and_the_journal_group() {
    if !need("journal") {
        return;
    }
    let dir = TempDir::new("journal-doctor");
    let jdir = dir.path("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    write_journal(
        &jdir.join("a.journal"),
        &sshd_entries("h", "1", "Server listening on 0.0.0.0 port 22.", 1),
    );
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[firewall]\nbackend = \"none\"\n\n[jail.files]\nfilter = \"sshd\"\nbackend = \"systemd\"\njournal_dir = \"{}\"\n\n[jail.host]\nfilter = \"sshd\"\nbackend = \"systemd\"\n",
            daemon_section(&dir),
            jdir.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(crate::common::bin())
        .args(["doctor", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("ok")
            && l.contains(&format!("[files] journal {}: readable", jdir.display()))),
        "{text}"
    );
    assert!(
        !text.contains("systemd-journal group"),
        "root reads it all: {text}"
    );
    // As a user outside the group (setpriv, util-linux): told to join it.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(crate::common::bin())
        .args(["doctor", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("[host] journal")
            && l.contains("not in the systemd-journal group")),
        "{text}"
    );
    assert!(
        text.contains("SupplementaryGroups=systemd-journal"),
        "{text}"
    );
}

/// Without libsystemd the journal jail fails saying what to install, and
/// the other jails run. The library is hidden from the daemon alone: it
/// runs in a mount namespace of its own (`unshare -m`, root) where
/// `/dev/null` is bound over `libsystemd.so.0`.
#[test]
fn without_libsystemd_journal_jails_fail_and_others_run() {
    if !need("journal") || !need("netns") {
        return;
    }
    let lib = [
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ]
    .iter()
    .map(|d| Path::new(d).join("libsystemd.so.0"))
    .find(|p| p.exists())
    .expect("libsystemd.so.0 (the journal group checked it)");
    // The real file, not the symlink: a bind mount follows the link.
    let lib = std::fs::canonicalize(&lib).unwrap();
    let dir = TempDir::new("journal-nolib");
    let jdir = dir.path("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let auth = dir.path("auth.log");
    std::fs::write(&auth, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[firewall]\nbackend = \"none\"\n\n[jail.journal]\nfilter = \"sshd\"\nbackend = \"systemd\"\njournal_dir = \"{}\"\n\n[jail.file]\nfilter = \"sshd\"\nlogpath = \"{}\"\nmaxretry = 2\n",
            daemon_section(&dir),
            jdir.display(),
            auth.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with(
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind /dev/null {} && exec \"$0\" \"$@\"",
                lib.display()
            ))
            .arg(crate::common::bin())
            .args(["run", "--config", cfg.to_str().unwrap()]),
    );
    let err = d
        .wait_for("libsystemd.so.0 cannot be loaded", WAIT)
        .expect("the journal jail says libsystemd is missing");
    assert!(err.contains("apt install libsystemd0"), "{err}");
    assert!(err.contains("[journal]"), "{err}");
    assert!(
        err.contains("restart sipwarden once it is installed"),
        "{err}"
    );
    d.wait_for(&format!("{}: following", auth.display()), WAIT)
        .expect("the file jail runs");
    let now = jiff::Timestamp::now()
        .strftime("%b %e %H:%M:%S")
        .to_string();
    crate::common::append(
        &auth,
        &format!("{now} pbx sshd[1]: Failed password for root from 192.0.2.44 port 22 ssh2\n")
            .repeat(2),
    );
    d.wait_for("[file] Ban 192.0.2.44", WAIT)
        .expect("the file jail bans without libsystemd");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// A reload that changes a journal jail's sources starts its follower again
/// after the last entry read: the jail's counts are kept, no entry is read
/// twice (a re-read would reach maxretry and ban).
#[test]
fn a_reload_resumes_after_the_last_entry_read() {
    if !need("journal") {
        return;
    }
    let Some(samples) = sample_failures() else {
        return;
    };
    let (host, pid, msg) = samples[0].clone();
    let j = SshJournal::new("journal-reload", &host, &pid);
    let dir = &j.dir;
    let (a, cfg) = (j.a.clone(), j.cfg.clone());
    let write_cfg = |m: &str| j.write_config(&format!("journalmatch = \"{m}\"\nmaxretry = 3\n"));
    write_cfg("_SYSTEMD_UNIT=ssh.service");
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_for("following from its end", WAIT)
        .expect("the jail follows the journal");
    let x = "192.0.2.90";
    write_journal(&a, &sshd_entries(&host, &pid, &with_addr(&msg, x), 2));
    let deadline = std::time::Instant::now() + WAIT;
    while d.lines_with(&format!("[ssh] Found {x}")).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "two failures of {x} found"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another journalmatch (still matching sshd): the follower restarts.
    write_cfg("_COMM=sshd");
    let r = cli(dir, &["reload"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    d.wait_for("following after the last entry read (_COMM=sshd)", WAIT)
        .expect("the new follower resumes where the old one stopped");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.lines_with(&format!("[ssh] Found {x}")).len(), 2);
    assert!(
        d.lines_with(&format!("Ban {x}")).is_empty(),
        "nothing read twice"
    );
    write_journal(&a, &sshd_entries(&host, &pid, &with_addr(&msg, x), 1));
    d.wait_for(&format!("[ssh] Ban {x}"), WAIT)
        .expect("the third failure, after the reload, bans: counts were kept");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// Finding 1 (review of issue 19): a TOML journal jail with a built-in
/// filter and no `journalmatch` reads only its service's unit. An entry
/// any local process can write (`logger -t sshd`: SYSLOG_IDENTIFIER=sshd,
/// from another unit) never counts, however it reads.
#[test]
fn a_forged_syslog_identifier_never_counts_in_a_builtin_journal_jail() {
    if !need("journal") {
        return;
    }
    let Some(samples) = sample_failures() else {
        return;
    };
    let (host, pid, msg) = samples[0].clone();
    let j = SshJournal::new("journal-forged", &host, &pid);
    let (a, cfg) = (j.a.clone(), j.cfg.clone());
    j.write_config("maxretry = 2\n");
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_for("following from its end", WAIT)
        .expect("the jail follows the journal");
    // What `logger -t sshd` writes from a user's session.
    let forged = "192.0.2.66";
    let now = jiff::Timestamp::now().as_microsecond() as u64;
    let logger: String = (0..3)
        .map(|i| {
            export_entry(
                now + i,
                &[
                    &format!("_HOSTNAME={host}"),
                    "_SYSTEMD_UNIT=session-3.scope",
                    "_COMM=logger",
                    "SYSLOG_IDENTIFIER=sshd",
                    "_PID=4242",
                    &format!("MESSAGE={}", with_addr(&msg, forged)),
                ],
            )
        })
        .collect();
    write_journal(&a, &logger);
    // Then sshd's own, from its unit: counted.
    let real = "192.0.2.67";
    write_journal(&a, &sshd_entries(&host, &pid, &with_addr(&msg, real), 2));
    d.wait_for(&format!("[ssh] Ban {real}"), WAIT)
        .expect("sshd's own entries (_SYSTEMD_UNIT=ssh.service) count");
    assert!(
        d.lines_with(forged).is_empty(),
        "an entry of another unit is not read: {:?}",
        d.lines_with(forged)
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// Finding 2 (review of issue 19): a reload that restarts a follower still
/// reading a backlog (more than one wake-up's 4096 entries) counts every
/// entry exactly once: the old follower has left before the new one
/// starts, and the new one resumes after the last entry the old one sent.
#[test]
fn a_reload_during_a_backlog_counts_each_entry_once() {
    if !need("journal") {
        return;
    }
    const N: usize = 50_000;
    let j = SshJournal::new("journal-reload-busy", "h", "7");
    let dir = &j.dir;
    let (a, cfg) = (j.a.clone(), j.cfg.clone());
    let write_cfg = |m: &str| j.write_config(&format!("journalmatch = \"{m}\"\nmaxretry = 3\n"));
    write_cfg("_SYSTEMD_UNIT=ssh.service");
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_for("following from its end", WAIT)
        .expect("the jail follows the journal");
    // N failures, each from an address of its own.
    let addr = |i: usize| format!("45.{}.{}.7", i / 250 + 1, i % 250 + 1);
    let now = jiff::Timestamp::now().as_microsecond() as u64;
    let backlog: String = (0..N)
        .map(|i| {
            export_entry(
                now + i as u64,
                &[
                    "_HOSTNAME=h",
                    "_SYSTEMD_UNIT=ssh.service",
                    "_COMM=sshd",
                    "SYSLOG_IDENTIFIER=sshd",
                    "_PID=7",
                    &format!(
                        "MESSAGE=Failed password for root from {} port 22 ssh2",
                        addr(i)
                    ),
                ],
            )
        })
        .collect();
    // Written while the daemon is stopped: the next start has all of it
    // to read at once, and the reload comes while it does.
    assert!(d.stop().is_some_and(|s| s.success()));
    write_journal(&a, &backlog);
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_for("following after the last entry read", WAIT)
        .expect("the jail resumes");
    write_cfg("_SYSTEMD_UNIT=ssh.service + _SYSTEMD_UNIT=sshd.service");
    let r = cli(dir, &["reload"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    d.wait_for(
        &format!("[ssh] Found {}", addr(N - 1)),
        Duration::from_secs(60),
    )
    .expect("the whole backlog is read");
    // Give a follower that read twice the time to show it.
    std::thread::sleep(Duration::from_millis(500));
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for l in d.lines_with("[ssh] Found ") {
        if let Some(a) = l.split("[ssh] Found ").nth(1) {
            *counts.entry(a.trim().to_string()).or_default() += 1;
        }
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    let missing = (0..N).filter(|i| !counts.contains_key(&addr(*i))).count();
    assert!(
        twice.is_empty() && missing == 0,
        "{} address(es) found more than once (e.g. {:?}), {missing} never",
        twice.len(),
        twice.iter().take(3).collect::<Vec<_>>()
    );
    assert!(d.lines_with("Ban ").is_empty(), "no entry counted twice");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// Finding 1, for fail2ban filters: a journal jail whose filter has no
/// `journalmatch` (fail2ban's freeswitch.conf) would read every entry; it
/// is refused at start, saying what to write, instead of read.
#[test]
fn a_fail2ban_journal_jail_that_would_read_every_entry_is_refused() {
    if !need("journal") {
        return;
    }
    let dir = TempDir::new("journal-everything");
    let jdir = dir.path("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let Some(f2b) = fail2ban_dir(
        &dir,
        &format!(
            "[freeswitch]\nenabled = true\nbackend = systemd[journalpath={}]\n",
            jdir.display()
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
    let d = start(&cfg, &f2b);
    let refused = d
        .wait_for("reads the journal with no journalmatch", WAIT)
        .expect("the jail is refused");
    assert!(refused.contains("freeswitch"), "{refused}");
    assert!(refused.contains("_SYSTEMD_UNIT="), "{refused}");
    assert!(d.lines_with("following").is_empty(), "nothing is read");
    let _ = d.stop();
}
