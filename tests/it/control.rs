//! The control socket and the CLI verbs, against a dry-run daemon.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Daemon, TempDir, bin, cli, daemon_section};

fn start(dir: &TempDir, extra: &str) -> Daemon {
    let log = dir.path("freeswitch.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nignoreip = [\"127.0.0.0/8\", \"192.0.2.0/24\"]\n{extra}\n[firewall]\nbackend = \"none\"\n\n\
             [jail.freeswitch]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n\n\
             [jail.sip]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\nbantime = \"10m\"\n",
            daemon_section(dir),
            log.display(),
            dir.path("other.log").display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for("control socket", Duration::from_secs(10))
            .is_some()
    );
    d
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
        "expected failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_verb_and_alias_with_text_and_json() {
    let dir = TempDir::new("ctl");
    let d = start(&dir, "");

    assert_eq!(ok(&cli(&dir, &["ping"])), "pong\n");
    assert_eq!(
        json(&cli(&dir, &["ping", "--json"]))["result"]["pong"],
        true
    );

    // ban / set banip, with a duration, a prefix, IPv6.
    let text = ok(&cli(
        &dir,
        &["ban", "freeswitch", "203.0.113.7", "--for", "2h"],
    ));
    assert_eq!(text, "[freeswitch] Ban 203.0.113.7 (manual, 2h)\n");
    assert!(
        d.wait_for(
            "[freeswitch] Ban 203.0.113.7 (manual, 2h)",
            Duration::from_secs(5)
        )
        .is_some()
    );
    ok(&cli(&dir, &["set", "sip", "banip", "198.51.100.0/24"]));
    let j = json(&cli(
        &dir,
        &["ban", "freeswitch", "2001:db8::66", "--for", "-1", "--json"],
    ));
    assert_eq!(j["result"]["bantime"], "permanent");
    assert!(j["result"]["end"].is_null());

    // status: the overview and one jail, as text and JSON.
    let text = ok(&cli(&dir, &["status"]));
    assert!(text.contains("firewall none"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("freeswitch") && l.split_whitespace().nth(3) == Some("2")),
        "{text}"
    );
    let s = json(&cli(&dir, &["status", "--json"]));
    assert_eq!(s["ok"], true);
    let jails = s["result"]["jails"].as_array().unwrap();
    assert_eq!(jails.len(), 2);
    for key in [
        "name",
        "filter",
        "maxretry",
        "findtime",
        "bantime",
        "currently_failing",
        "total_failed",
        "currently_banned",
        "total_banned",
        "evictions",
        "sources",
    ] {
        assert!(jails[0].get(key).is_some(), "status JSON has {key}: {s}");
    }
    assert!(jails[0].get("banned").is_none());
    let text = ok(&cli(&dir, &["status", "freeswitch"]));
    assert!(text.contains("Status for the jail: freeswitch"), "{text}");
    assert!(
        text.contains("Banned IP list:   203.0.113.7 2001:db8::66")
            || text.contains("Banned IP list:   2001:db8::66 203.0.113.7"),
        "{text}"
    );
    assert!(text.contains("permanent"), "{text}");
    let js = json(&cli(&dir, &["status", "sip", "--json"]));
    let banned = js["result"]["banned"].as_array().unwrap();
    assert_eq!(banned.len(), 1);
    assert_eq!(banned[0]["addr"], "198.51.100.0/24");
    assert_eq!(banned[0]["reason"], "manual");
    assert!(banned[0]["remaining_s"].as_i64().unwrap() > 500);

    // unban / set unbanip / unban --all.
    assert_eq!(
        ok(&cli(&dir, &["unban", "203.0.113.7"])),
        "[freeswitch] Unban 203.0.113.7 (manual)\n"
    );
    assert!(
        d.wait_for(
            "[freeswitch] Unban 203.0.113.7 (manual)",
            Duration::from_secs(5)
        )
        .is_some()
    );
    ok(&cli(&dir, &["set", "sip", "unbanip", "198.51.100.0/24"]));
    assert!(fails(&cli(&dir, &["unban", "203.0.113.7"])).contains("not banned"));
    ok(&cli(&dir, &["ban", "sip", "203.0.113.8"]));
    let u = json(&cli(&dir, &["unban", "--all", "--json"]));
    assert_eq!(u["result"]["unbanned"].as_array().unwrap().len(), 2);
    assert_eq!(
        json(&cli(&dir, &["status", "--json"]))["result"]["jails"][0]["currently_banned"],
        0
    );

    // Bad input: refused with a message, the daemon keeps running.
    assert!(fails(&cli(&dir, &["ban", "freeswitch", "999.1.1.1"])).contains("not an IP address"));
    assert!(fails(&cli(&dir, &["ban", "freeswitch", "::g"])).contains("not an IP address"));
    assert!(
        fails(&cli(&dir, &["ban", "freeswitch", "198.51.100.9/24"]))
            .contains("did you mean 198.51.100.0/24")
    );
    assert!(fails(&cli(&dir, &["ban", "nosuchjail", "203.0.113.9"])).contains("no running jail"));
    assert!(
        fails(&cli(
            &dir,
            &["ban", "freeswitch", "203.0.113.9", "--for", "soon"]
        ))
        .contains("invalid duration")
    );
    // ignoreip is refused unless forced.
    let e = fails(&cli(&dir, &["ban", "freeswitch", "192.0.2.10"]));
    assert!(e.contains("ignoreip") && e.contains("--force"), "{e}");
    assert!(fails(&cli(&dir, &["ban", "freeswitch", "127.0.0.1"])).contains("--force"));
    ok(&cli(&dir, &["ban", "freeswitch", "192.0.2.10", "--force"]));
    let err = json(&cli(&dir, &["ban", "freeswitch", "1.2.3.4/40", "--json"]));
    assert_eq!(err["ok"], false);
    assert!(err["error"].as_str().is_some());

    // Malformed requests on the raw socket get a JSON error, never a crash.
    let mut s = UnixStream::connect(dir.path("sipwarden.sock")).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for bad in [
        "not json",
        "{\"cmd\":\"explode\"}",
        "{\"cmd\":\"ping\",\"extra\":1}",
        "[]",
        "{\"cmd\":\"ban\"}",
        "\u{1b}[31m\u{0}",
    ] {
        s.write_all(format!("{bad}\n").as_bytes()).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false, "{bad} -> {line}");
    }
    s.write_all(b"{\"cmd\":\"ping\"}\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"pong\":true"));
    // An oversized request is refused and the connection closed.
    let mut s2 = UnixStream::connect(dir.path("sipwarden.sock")).unwrap();
    let _ = s2.write_all(&vec![b'x'; 70 * 1024]);
    let mut line = String::new();
    BufReader::new(s2).read_line(&mut line).unwrap();
    assert!(line.contains("longer than"), "{line}");

    // A second daemon with the same state dir and socket refuses to start.
    let cfg = dir.path("sipwarden.toml");
    let out = std::process::Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another sipwarden is running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ok(&cli(&dir, &["ping"])),
        "pong\n",
        "the first daemon is unharmed"
    );

    assert!(d.stop().is_some_and(|s| s.success()));
    // Without a daemon: one line, non-zero.
    let e = fails(&cli(&dir, &["status"]));
    assert!(e.contains("not running") && e.lines().count() == 1, "{e}");
}

#[test]
fn reload_keeps_bans_and_refuses_a_bad_config() {
    let dir = TempDir::new("reload");
    let d = start(&dir, "");
    ok(&cli(&dir, &["ban", "freeswitch", "203.0.113.50"]));
    let cfg = dir.path("sipwarden.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    // A broken file: refused, the old configuration keeps running.
    std::fs::write(&cfg, good.replace("bantime = \"10m\"", "bantime = \"ten\"")).unwrap();
    let e = fails(&cli(&dir, &["reload"]));
    assert!(
        e.contains("reload refused") && e.contains("sipwarden.toml:"),
        "{e}"
    );
    assert_eq!(ok(&cli(&dir, &["ping"])), "pong\n");
    // A good change: maxretry of a jail, and jail `sip` removed.
    let mut changed = good.replace("[defaults]\n", "[defaults]\nmaxretry = 9\n");
    changed.truncate(changed.find("[jail.sip]").unwrap());
    std::fs::write(&cfg, changed).unwrap();
    assert!(ok(&cli(&dir, &["reload"])).starts_with("reloaded"));
    let s = json(&cli(&dir, &["status", "freeswitch", "--json"]));
    assert_eq!(s["result"]["maxretry"], 9);
    assert_eq!(
        s["result"]["banned"][0]["addr"], "203.0.113.50",
        "bans survive a reload"
    );
    assert_eq!(
        json(&cli(&dir, &["status", "--json"]))["result"]["jails"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // SIGHUP reloads too.
    std::fs::write(&cfg, good).unwrap();
    // SAFETY: kill(2) touches no memory of ours; the pid is our own child,
    // not yet waited for, so it cannot name another process.
    unsafe {
        libc::kill(d.child.id() as i32, libc::SIGHUP);
    }
    assert!(d.wait_for("jail(s)", Duration::from_secs(5)).is_some());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while json(&cli(&dir, &["status", "--json"]))["result"]["jails"]
        .as_array()
        .unwrap()
        .len()
        != 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        json(&cli(&dir, &["status", "--json"]))["result"]["jails"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// Bans `n` distinct addresses in `jail` over one control connection
/// (requests pipelined: thousands in a few seconds); returns them.
pub(crate) fn ban_many(sock: &std::path::Path, jail: &str, n: usize) -> Vec<String> {
    let addrs: Vec<String> = (0..n)
        .map(|i| format!("198.18.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let s = UnixStream::connect(sock).unwrap();
    let mut w = s.try_clone().unwrap();
    let (reqs, jail) = (addrs.clone(), jail.to_string());
    // A writer of its own: the daemon answers while we still send, and both
    // socket buffers filling up must not deadlock the test.
    let writer = std::thread::spawn(move || {
        for a in &reqs {
            let line = format!(
                "{{\"cmd\":\"ban\",\"jail\":\"{jail}\",\"addr\":\"{a}\",\"for\":\"2h\"}}\n"
            );
            if w.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
    });
    let mut r = BufReader::new(s);
    for a in &addrs {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":true"), "ban {a}: {line}");
    }
    writer.join().unwrap();
    addrs
}

/// Finding 7: 64 idle clients locked the CLI out with "Broken pipe". Over
/// the cap the CLI now hears that the socket is busy, and idle clients are
/// closed after the idle timeout, so `ping` gets in while they are still
/// held open on this side.
#[test]
fn idle_control_clients_do_not_lock_out_the_cli() {
    let dir = TempDir::new("ctlidle");
    let _d = start(&dir, "");
    let held: Vec<UnixStream> = (0..80)
        .filter_map(|_| UnixStream::connect(dir.path("sipwarden.sock")).ok())
        .collect();
    assert_eq!(
        held.len(),
        80,
        "the kernel queues connections the daemon has not taken"
    );

    let first = cli(&dir, &["ping"]);
    let err = String::from_utf8_lossy(&first.stderr).into_owned();
    assert!(
        !err.contains("Broken pipe")
            && !err.contains("os error")
            && !err.contains("could not be read"),
        "a full control socket must say so, not: {err}"
    );
    assert!(
        String::from_utf8_lossy(&first.stdout) == "pong\n" || err.contains("busy"),
        "either served or told the socket is busy: {err}"
    );
    assert!(
        crate::common::wait_until(Duration::from_secs(90), || {
            String::from_utf8_lossy(&cli(&dir, &["ping"]).stdout) == "pong\n"
        }),
        "idle clients are closed after the idle timeout and the CLI gets in"
    );
    drop(held);
}

/// Finding 9: `sipwarden status JAIL | head` panicked with a backtrace on
/// the closed pipe. The output must be larger than a pipe's buffer (64 KiB)
/// for the CLI to still be writing when `head` exits.
#[test]
fn status_into_a_closed_pipe_exits_quietly() {
    let dir = TempDir::new("ctlpipe");
    let _d = start(&dir, "");
    ban_many(&dir.path("sipwarden.sock"), "freeswitch", 3000);
    for args in ["status freeswitch", "status freeswitch --json"] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("\"$0\" {args} --socket \"$1\" | head -1"))
            .arg(bin())
            .arg(dir.path("sipwarden.sock"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "`{args} | head -1` must exit quietly: {err}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
}

/// Black-box pass N6: `socket = "x/precious.txt"` pointing at an existing
/// regular file, then `run`: the file was gone (removed when connecting
/// failed, and again at exit). Only a socket is ever removed: anything else
/// at the path (a file, a symbolic link, a directory) stops the start with
/// what is there, and the daemon at exit removes only the socket it bound.
#[test]
fn control_socket_path_removes_only_a_socket() {
    let dir = TempDir::new("ctlpath");
    std::fs::write(dir.path("fs.log"), "").unwrap();
    let config = |socket: &std::path::Path| {
        let cfg = dir.path("sipwarden.toml");
        std::fs::write(
            &cfg,
            format!(
                "[daemon]\nstate_dir = \"{}\"\nsocket = \"{}\"\n[firewall]\nbackend = \"none\"\n\
                 [jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
                dir.path("state").display(),
                socket.display(),
                dir.path("fs.log").display()
            ),
        )
        .unwrap();
        cfg
    };
    // Runs the daemon until it exits (bounded: one that starts is stopped
    // after 15 s); returns whether it exited by itself with a failure, and
    // its log.
    let run = |cfg: &std::path::Path| {
        let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut refused = false;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = d.child.try_wait() {
                refused = !st.success();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !refused {
            d.terminate();
        }
        // The log reader thread takes the last lines after the exit.
        let _ = d.wait_for("refusing", Duration::from_secs(2));
        (refused, d.lines_with("").join("\n"))
    };
    // A regular file, a symbolic link to one, a directory.
    let precious = dir.path("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    std::os::unix::fs::symlink(&precious, dir.path("link.sock")).unwrap();
    std::fs::create_dir(dir.path("adir")).unwrap();
    for (path, what) in [
        (precious.clone(), "a regular file"),
        (dir.path("link.sock"), "a symbolic link"),
        (dir.path("adir"), "a directory"),
    ] {
        let (refused, err) = run(&config(&path));
        assert!(refused, "{}: started\n{err}", path.display());
        assert!(
            err.contains(what) && err.contains(&path.display().to_string()),
            "{}: the refusal says what is there: {err}",
            path.display()
        );
    }
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    assert!(std::fs::symlink_metadata(dir.path("link.sock")).is_ok());
    assert!(dir.path("adir").is_dir());

    // A stale socket (its daemon gone) is still taken over.
    let sock = dir.path("sipwarden.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let cfg = config(&sock);
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for("control socket", Duration::from_secs(10))
            .is_some()
    );
    // Replaced while running: at exit the file is left alone.
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, "not the daemon's").unwrap();
    assert!(d.stop().is_some_and(|s| s.success()));
    assert_eq!(
        std::fs::read_to_string(&sock).unwrap(),
        "not the daemon's",
        "the daemon removed a file it did not create"
    );
}
