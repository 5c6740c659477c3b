//! Configuration as a careless operator writes it, and what reaches the
//! jails: `check`, reload as a transaction, addresses that are never a
//! packet's source, and memory for a large configuration (issue 16,
//! findings 8, 10, 13 and 18).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Daemon, TempDir, append, bin, cli, daemon_section};

/// `sipwarden check --config PATH`: (success, stdout, stderr).
fn check(path: &Path) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts a daemon with backend none and waits (bounded) for its socket.
fn start(cfg: &Path) -> Daemon {
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for("control socket", Duration::from_secs(20))
            .is_some(),
        "daemon did not start"
    );
    d
}

/// One control request on the socket, its JSON answer.
fn request(dir: &TempDir, req: &str) -> Value {
    let mut s = UnixStream::connect(dir.path("sipwarden.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// The banned addresses of `jail`, from status.
fn banned(dir: &TempDir, jail: &str) -> Vec<String> {
    let v: Value =
        serde_json::from_slice(&ok(&cli(dir, &["status", jail, "--json"])).into_bytes()).unwrap();
    v["result"]["banned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_str().unwrap().to_string())
        .collect()
}

/// Finding 8: `check` accepted `bantime = 0`, `findtime = "0s"`,
/// `ignoreip = ["0.0.0.0/0"]` and `bantime = "300000d"`.
#[test]
fn check_refuses_what_nobody_means() {
    let dir = TempDir::new("cfgcheck");
    let jail = "[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/var/log/freeswitch.log\"\n";
    for (defaults, why) in [
        ("bantime = 0", "bantime must be at least 1s"),
        ("findtime = \"0s\"", "findtime must be at least 1s"),
        ("ignoreip = [\"0.0.0.0/0\"]", "is every address"),
        (
            "ignoreip = [\"::ffff:0:0/96\"]",
            "0.0.0.0/0 is every address",
        ),
        ("bantime = \"300000d\"", "the largest accepted, 213000d"),
        ("bantime = -7", "negative"),
    ] {
        let cfg = dir.path("bad.toml");
        std::fs::write(&cfg, format!("[defaults]\n{defaults}\n\n{jail}")).unwrap();
        let (good, out, err) = check(&cfg);
        assert!(!good, "{defaults}: accepted: {out}");
        assert!(
            err.contains(&format!("{}:2:", cfg.display())) && err.contains(why),
            "{defaults}: {err}"
        );
    }
    // Wide but meant, perhaps: accepted with a warning naming the line.
    let cfg = dir.path("wide.toml");
    std::fs::write(
        &cfg,
        format!("[defaults]\nignoreip = [\"127.0.0.0/8\",\n  \"10.0.0.0/7\"]\n\n{jail}"),
    )
    .unwrap();
    let (good, out, err) = check(&cfg);
    assert!(good, "{err}");
    assert!(out.contains("OK (1 jail(s)"), "{out}");
    assert!(
        err.contains(&format!("warning: {}:3:", cfg.display())) && err.contains("wider than /8"),
        "{err}"
    );
}

/// Finding 10: addresses that are never a packet's source were banned, by
/// hand and from log lines; `ban J ::ffff:0:0/96` passed without --force.
/// Also finding 8's `ban --for` beyond the kernel's range.
#[test]
fn never_a_source_is_never_banned() {
    let dir = TempDir::new("cfgsrc");
    let log = dir.path("freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 2\nignoreip = [\"127.0.0.0/8\", \"192.0.2.0/24\"]\nignoreself = false\n\n\
             [firewall]\nbackend = \"none\"\n\n\
             [jail.esl]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            daemon_section(&dir),
            log.display()
        ),
    )
    .unwrap();
    let d = start(&cfg);
    assert!(
        d.wait_for(": following", Duration::from_secs(20)).is_some(),
        "the log is never followed"
    );

    // By hand: refused, each with its reason, even with --force.
    for (addr, why) in [
        ("::ffff:0:0/96", "would ban everything"),
        ("0.0.0.0", "never a packet's source"),
        ("::ffff:0.0.0.0", "never a packet's source"),
        ("255.255.255.255", "never a packet's source"),
        ("224.0.0.1", "never a packet's source"),
        ("224.0.0.0/4", "never a packet's source"),
        ("::", "never a packet's source"),
        ("ff02::1", "never a packet's source"),
        ("ff00::/8", "never a packet's source"),
    ] {
        for force in [false, true] {
            let mut args = vec!["ban", "esl", addr];
            if force {
                args.push("--force");
            }
            let e = fails(&cli(&dir, &args));
            assert!(e.contains(why), "{addr} (force {force}): {e}");
        }
    }
    // A mapped prefix is compared with ignoreip as the IPv4 prefix it is.
    let e = fails(&cli(&dir, &["ban", "esl", "::ffff:192.0.2.0/120"]));
    assert!(e.contains("covered by ignoreip"), "{e}");
    // Longer than the kernel holds: refused with the largest accepted.
    let e = fails(&cli(
        &dir,
        &["ban", "esl", "203.0.113.5", "--for", "300000d"],
    ));
    assert!(e.contains("largest accepted, 213000d"), "{e}");
    let r = request(
        &dir,
        r#"{"cmd":"ban","jail":"esl","addr":"203.0.113.5","for":"999999999999d"}"#,
    );
    assert_eq!(r["ok"], false, "{r}");
    assert!(banned(&dir, "esl").is_empty());

    // From the log: lines naming them are not counted; a real address
    // after them is (the barrier that shows the lines were read).
    let line = |a: &str| {
        format!(
            "[WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1000@pbx] from ip {a}\n"
        )
    };
    let mut text = String::new();
    for a in [
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "239.255.255.250",
        "::",
        "ff02::1",
        "::ffff:0.0.0.0",
    ] {
        text.push_str(&line(a));
        text.push_str(&line(a));
        text.push_str(&line(a));
    }
    text.push_str(&line("198.51.100.7"));
    text.push_str(&line("198.51.100.7"));
    append(&log, &text);
    assert!(
        d.wait_for("[esl] Ban 198.51.100.7", Duration::from_secs(20))
            .is_some(),
        "the real attacker is never banned"
    );
    let bans = d.lines_with("] Ban ");
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(banned(&dir, "esl"), vec!["198.51.100.7".to_string()]);
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// Finding 13: a reload of an empty or half-written configuration lifted
/// every ban; `check` called an empty file OK.
#[test]
fn reload_is_a_transaction() {
    let dir = TempDir::new("cfgreload");
    let log = dir.path("freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    let text = |maxretry: u32| {
        format!(
            "{}[defaults]\nmaxretry = {maxretry}\nignoreip = [\"127.0.0.0/8\"]\n\n[firewall]\nbackend = \"none\"\n\n\
             [jail.a]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n\n\
             [jail.b]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\nbantime = \"10m\"\n",
            daemon_section(&dir),
            log.display(),
            dir.path("other.log").display()
        )
    };
    std::fs::write(&cfg, text(5)).unwrap();
    let d = start(&cfg);
    ok(&cli(&dir, &["ban", "a", "203.0.113.1"]));
    ok(&cli(&dir, &["ban", "b", "203.0.113.2"]));

    // A storm: the file rewritten in place (truncate, then write, as `cp`
    // does) while reloads arrive. Bounded in count and in time.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, writes, cfg) = (stop.clone(), writes.clone(), cfg.clone());
        let variants = [text(5), text(6)];
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && writes.load(Ordering::Relaxed) < 100_000 {
                let n = writes.fetch_add(1, Ordering::Relaxed);
                std::fs::write(&cfg, &variants[n % 2]).unwrap();
                // Mostly whole, sometimes caught between truncate and write.
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut accepted, mut refused) = (0, 0);
    // At least 500 reloads, over at least 300 rewrites; bounded in time.
    while (accepted + refused < 500 || writes.load(Ordering::Relaxed) < 300)
        && Instant::now() < deadline
    {
        let r = request(&dir, r#"{"cmd":"reload"}"#);
        if r["ok"] == true {
            accepted += 1;
        } else {
            refused += 1;
            let e = r["error"].as_str().unwrap_or_default();
            assert!(e.contains("reload refused"), "{e}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let writes = writes.load(Ordering::Relaxed);
    println!("reload storm: {accepted} accepted, {refused} refused, {writes} writes");
    assert!(accepted > 0, "no reload was accepted at all");
    assert_eq!(banned(&dir, "a"), vec!["203.0.113.1".to_string()]);
    assert_eq!(banned(&dir, "b"), vec!["203.0.113.2".to_string()]);

    // On purpose: `: > cfg; reload` is refused, bans stay; check says so.
    std::fs::write(&cfg, "").unwrap();
    let e = fails(&cli(&dir, &["reload"]));
    assert!(
        e.contains("reload refused") && e.contains("defines no jail") && e.contains("--force"),
        "{e}"
    );
    let (good, out, err) = check(&cfg);
    assert!(!good, "check of an empty file: {out}");
    assert!(err.contains("defines no jail"), "{err}");
    // Every running jail gone (renamed): refused too.
    std::fs::write(
        &cfg,
        text(5)
            .replace("[jail.a]", "[jail.c]")
            .replace("[jail.b]", "[jail.d]"),
    )
    .unwrap();
    let e = fails(&cli(&dir, &["reload"]));
    assert!(e.contains("keeps none of the running jails (a, b)"), "{e}");
    assert_eq!(banned(&dir, "a"), vec!["203.0.113.1".to_string()]);
    assert_eq!(banned(&dir, "b"), vec!["203.0.113.2".to_string()]);
    // SIGHUP takes the same path.
    std::fs::write(&cfg, "").unwrap();
    // SAFETY: kill(2) touches no memory of ours; the pid is our own child,
    // not yet waited for, so it cannot name another process.
    unsafe {
        libc::kill(d.child.id() as i32, libc::SIGHUP);
    }
    assert!(
        d.wait_for("reload refused", Duration::from_secs(10))
            .is_some()
    );
    assert!(
        d.lines_with("lifting its bans").is_empty() && d.lines_with("Unban").is_empty(),
        "a ban was lifted: {:?}",
        d.lines_with("Unban")
    );
    assert_eq!(banned(&dir, "a"), vec!["203.0.113.1".to_string()]);
    // Forced, it applies: jail b goes with its ban.
    let mut only_a = text(5);
    only_a.truncate(only_a.find("[jail.b]").unwrap());
    std::fs::write(&cfg, only_a.replace("[jail.a]", "[jail.c]")).unwrap();
    fails(&cli(&dir, &["reload"]));
    ok(&cli(&dir, &["reload", "--force"]));
    assert!(
        d.wait_for("[b] jail removed", Duration::from_secs(10))
            .is_some()
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// Peak resident memory of a finished child, in bytes (`wait4`'s rusage:
/// this child alone, not the other tests' children).
fn wait_peak_rss(child: &mut std::process::Child, limit: Duration) -> (i32, u64) {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain integers; zeroed is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are valid for writes for the whole call;
        // the pid is our own child, so wait4 reaps nothing of anyone else.
        let pid = unsafe { libc::wait4(child.id() as i32, &mut status, libc::WNOHANG, &mut ru) };
        if pid == child.id() as i32 {
            return (status, ru.ru_maxrss as u64 * 1024);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("check did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A field of /proc/PID/status, in bytes (`VmRSS`, `VmHWM`).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Finding 18: 100,000 `ignoreip` entries in `[defaults]` and 500 jails:
/// `check` used 890 MB and the daemon grew past 3.5 GB (the list was copied
/// into every jail).
#[test]
fn large_configuration_memory_is_bounded() {
    const BOUND: u64 = 200 * 1024 * 1024;
    let dir = TempDir::new("cfgmem");
    let log = dir.path("freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let mut text = format!(
        "{}[firewall]\nbackend = \"none\"\n\n[defaults]\nignoreself = false\nignoreip = [\n",
        daemon_section(&dir)
    );
    for i in 0..100_000u32 {
        // Distinct /32s in 10.0.0.0/8, spread out so no two merge.
        let a = std::net::Ipv4Addr::from(0x0a00_0000 | (i * 97));
        text.push_str(&format!("  \"{a}\",\n"));
    }
    text.push_str("]\n");
    for j in 0..500 {
        text.push_str(&format!(
            "\n[jail.j{j}]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            log.display()
        ));
    }
    let cfg = dir.path("big.toml");
    std::fs::write(&cfg, &text).unwrap();

    let mut child = Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let (status, peak) = wait_peak_rss(&mut child, Duration::from_secs(120));
    println!("check: peak RSS {} MB; {out}", peak / 1_000_000);
    assert_eq!(status, 0, "check failed: {out}");
    assert!(
        out.contains("configuration: 500 jail(s), 100000 ignoreip network(s), ~"),
        "{out}"
    );
    assert!(peak < BOUND, "check peaked at {} MB", peak / 1_000_000);

    let d = Daemon::start(&["run", "--dry-run", "--config", cfg.to_str().unwrap()]);
    let pid = d.child.id();
    // Started: the socket answers. Bounded wait; the daemon is killed
    // early when it passes the bound (main reached 3.5 GB).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut up = false;
    while Instant::now() < deadline && proc_kb(pid, "VmRSS") < BOUND {
        if d.wait_for("control socket", Duration::from_millis(200))
            .is_some()
            && cli(&dir, &["ping"]).status.success()
        {
            up = true;
            break;
        }
    }
    let started = proc_kb(pid, "VmHWM");
    println!("daemon: peak RSS {} MB at start", started / 1_000_000);
    assert!(
        up,
        "daemon not up within the bound; peak {} MB",
        started / 1_000_000
    );
    assert!(
        started < BOUND,
        "daemon peaked at {} MB",
        started / 1_000_000
    );
    // And it stays there: a few more seconds of running, one status.
    std::thread::sleep(Duration::from_secs(3));
    ok(&cli(&dir, &["status"]));
    let later = proc_kb(pid, "VmHWM");
    println!("daemon: peak RSS {} MB after 3 s", later / 1_000_000);
    assert!(later < BOUND, "daemon peaked at {} MB", later / 1_000_000);
    assert!(d.stop().is_some_and(|s| s.success()));
}
