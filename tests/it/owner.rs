//! Who owns what, under a careless operator: the state store damaged or
//! removed while the daemon runs, a second daemon on the same state
//! directory after `rm -rf`, two daemons on one nftables table. Each runs
//! the real daemon with the nftables backend in a namespace this test
//! creates. Needs root.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::common::{Daemon, NetNs, TempDir, bin, cli, need, sh, start_in, wait_until};

/// Port of `/metrics` inside each test's own namespace.
const HTTP_PORT: u16 = 9080;

/// A configuration in `dir` (`name.toml`) with its own socket, state
/// directory `state`, and `firewall` lines. `/metrics` listens on
/// `HTTP_PORT` for the first daemon (`sipwarden`), one above for others.
fn config(dir: &TempDir, name: &str, state: &Path, firewall: &str) -> PathBuf {
    let port = if name == "sipwarden" {
        HTTP_PORT
    } else {
        HTTP_PORT + 1
    };
    let cfg = dir.path(&format!("{name}.toml"));
    let log = dir.path("freeswitch.log");
    if !log.exists() {
        std::fs::write(&log, "").unwrap();
    }
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nsocket = \"{}\"\n\n[defaults]\nbantime = \"1h\"\nignoreself = false\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n[firewall]\n{firewall}\n\n[jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}\"\n",
            state.display(),
            dir.path(&format!("{name}.sock")).display(),
            log.display()
        ),
    )
    .unwrap();
    cfg
}

/// Starts the daemon and waits (bounded) until it says it started: its
/// signal handlers are in place from then on, so a SIGTERM stops it cleanly.
fn start(ns: &NetNs, cfg: &Path) -> Daemon {
    let d = start_in(ns, cfg);
    assert!(
        d.wait_for(" started: ", Duration::from_secs(20)).is_some(),
        "daemon did not say it started"
    );
    d
}

/// `status --json` of the daemon whose socket is `dir/sipwarden.sock`.
fn status(dir: &TempDir) -> serde_json::Value {
    let out = cli(dir, &["status", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()["result"].clone()
}

/// Bans in force in jail `freeswitch`, as `status freeswitch` lists them.
fn banned(dir: &TempDir) -> Vec<String> {
    let out = cli(dir, &["status", "freeswitch", "--json"]);
    let v = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default();
    let mut a: Vec<String> = v["result"]["banned"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["addr"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    a.sort();
    a
}

fn ban(dir: &TempDir, addr: &str) {
    let out = cli(dir, &["ban", "freeswitch", addr, "--for", "1h"]);
    assert!(
        out.status.success(),
        "ban {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET /metrics` inside the namespace.
fn metrics(ns: &NetNs) -> String {
    ns.run(|| {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", HTTP_PORT)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.write_all(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{HTTP_PORT}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Starts a daemon that should refuse to start: its exit status (`None`
/// when it was still running after 20 s, or printed that it follows its
/// log) and what it logged.
fn run_refused(ns: &NetNs, cfg: &Path) -> (Option<ExitStatus>, String) {
    let mut d = Daemon::start_with(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        bin(),
        "run",
        "--config",
        cfg.to_str().unwrap(),
    ]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = None;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = d.child.try_wait() {
            status = Some(st);
            break;
        }
        if !d.lines_with(": following").is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its last lines are read before they are returned.
    std::thread::sleep(Duration::from_millis(300));
    let log = d.lines_with("").join("\n");
    if status.is_none() {
        d.terminate();
    }
    (status, log)
}

/// Elements of `set` in table `inet <table>`.
fn elements(ns: &NetNs, table: &str, set: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "nft", "list", "set", "inet", table, set,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_damaged_state_database_is_logged_shown_and_rebuilt_from_memory() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("sdmg");
    let dir = TempDir::new("sdmg");
    let state = dir.path("state");
    let cfg = config(&dir, "sipwarden", &state, "");
    let d = start(&ns, &cfg);
    ban(&dir, "198.51.100.1");
    let db = state.join("sipwarden.db");
    assert!(wait_until(Duration::from_secs(10), || db
        .metadata()
        .is_ok_and(|m| m.len() > 0)));

    // Random bytes over the database, in place (same inode).
    let len = db.metadata().unwrap().len().max(64 * 1024) as usize;
    let mut noise = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut noise)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .write_all(&noise)
        .unwrap();

    let t0 = Instant::now();
    let line = d
        .wait_for("damaged", Duration::from_secs(15))
        .expect("a damaged state database is logged while the daemon runs");
    println!("logged {:?} after the damage: {line}", t0.elapsed());
    assert!(
        wait_until(Duration::from_secs(20), || {
            let s = &status(&dir)["store"];
            s["ok"] == true && s["repairs"].as_u64().is_some_and(|n| n >= 1)
        }),
        "status shows the store rebuilt: {}",
        status(&dir)["store"]
    );
    let s = status(&dir)["store"].clone();
    println!("status store: {s}");
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("damaged")),
        "{s}"
    );
    let m = metrics(&ns);
    assert_eq!(metric(&m, "sipwarden_store_up"), Some(1.0), "{m}");
    assert!(
        metric(&m, "sipwarden_store_errors_total").is_some_and(|v| v >= 1.0),
        "{m}"
    );
    let aside: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sipwarden.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is moved aside");

    // A ban after the damage, then a restart: both come back.
    ban(&dir, "198.51.100.2");
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.stop().is_some_and(|s| s.success()));
    let d = start(&ns, &cfg);
    let restored = d
        .wait_for("restored ", Duration::from_secs(20))
        .expect("restore line");
    assert!(restored.contains("restored 2 active ban(s)"), "{restored}");
    assert_eq!(
        banned(&dir),
        vec!["198.51.100.1".to_string(), "198.51.100.2".to_string()]
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

#[test]
fn a_removed_state_directory_is_logged_shown_and_rebuilt_from_memory() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("srm");
    let dir = TempDir::new("srm");
    let state = dir.path("state");
    let cfg = config(&dir, "sipwarden", &state, "");
    let d = start(&ns, &cfg);
    ban(&dir, "198.51.100.1");
    std::thread::sleep(Duration::from_millis(300));

    // `rm -rf` of the state directory, and a file in its place so that it
    // cannot be re-created until the file goes: the error stays visible.
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, "in the way\n").unwrap();
    let t0 = Instant::now();
    let line = d
        .wait_for("vanished", Duration::from_secs(15))
        .expect("a removed state directory is logged while the daemon runs");
    println!("logged {:?} after rm -rf: {line}", t0.elapsed());
    assert!(
        wait_until(Duration::from_secs(10), || status(&dir)["store"]["ok"]
            == false),
        "status shows the store down: {}",
        status(&dir)["store"]
    );
    let s = status(&dir)["store"].clone();
    println!("status store while down: {s}");
    assert!(
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains(&state.display().to_string())),
        "the error names the directory: {s}"
    );
    assert!(s["since"].is_string(), "and says since when: {s}");
    let m = metrics(&ns);
    assert_eq!(metric(&m, "sipwarden_store_up"), Some(0.0), "{m}");
    assert!(
        metric(&m, "sipwarden_store_errors_total").is_some_and(|v| v >= 1.0),
        "{m}"
    );

    // A ban while the store is down, then the way is cleared.
    ban(&dir, "198.51.100.2");
    std::fs::remove_file(&state).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || status(&dir)["store"]["ok"]
            == true),
        "the store is rebuilt without a restart: {}",
        status(&dir)["store"]
    );
    assert!(state.join("sipwarden.db").exists());
    let m = metrics(&ns);
    assert_eq!(metric(&m, "sipwarden_store_up"), Some(1.0), "{m}");

    assert!(d.stop().is_some_and(|s| s.success()));
    let d = start(&ns, &cfg);
    let restored = d
        .wait_for("restored ", Duration::from_secs(20))
        .expect("restore line");
    assert!(restored.contains("restored 2 active ban(s)"), "{restored}");
    assert_eq!(
        banned(&dir),
        vec!["198.51.100.1".to_string(), "198.51.100.2".to_string()]
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

#[test]
fn after_rm_rf_of_the_state_directory_a_second_daemon_on_it_still_refuses() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("slock");
    let dir = TempDir::new("slock");
    let state = dir.path("state");
    let cfg = config(&dir, "sipwarden", &state, "");
    let d = start(&ns, &cfg);
    let pid = d.child.id();
    std::fs::remove_dir_all(&state).unwrap();
    // Same state directory; its own socket and table, so that only the
    // state directory can stop it.
    let second = config(&dir, "second", &state, "table = \"other\"");
    let (st, log) = run_refused(&ns, &second);
    println!("second daemon: {st:?}\n{log}");
    assert!(
        st.is_some_and(|s| !s.success()),
        "a second daemon on the same (removed) state directory must refuse to start"
    );
    assert!(
        log.contains(&format!("pid {pid}")),
        "the refusal names the running daemon (pid {pid}): {log}"
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}

#[test]
fn a_second_daemon_on_the_same_table_refuses_and_names_the_first() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("tbl");
    let dir = TempDir::new("tbl");
    let state_a = dir.path("state-a");
    let cfg_a = config(
        &dir,
        "sipwarden",
        &state_a,
        "table = \"shared\"\nkeep_on_exit = false",
    );
    let a = start(&ns, &cfg_a);
    let pid = a.child.id();
    ban(&dir, "198.51.100.7");
    assert!(
        wait_until(Duration::from_secs(5), || elements(
            &ns,
            "shared",
            "banned_v4"
        )
        .contains("198.51.100.7")),
        "the first daemon's ban is in its table"
    );

    let state_b = dir.path("state-b");
    let cfg_b = config(
        &dir,
        "second",
        &state_b,
        "table = \"shared\"\nkeep_on_exit = false",
    );
    let (st, log) = run_refused(&ns, &cfg_b);
    println!("second daemon: {st:?}\n{log}");
    // Right after: the first daemon's elements were never touched.
    let set = elements(&ns, "shared", "banned_v4");
    assert!(
        set.contains("198.51.100.7"),
        "the first daemon's elements are untouched: {set}"
    );
    assert!(
        st.is_some_and(|s| !s.success()),
        "a second daemon on the same table must refuse to start"
    );
    assert!(
        log.contains(&format!("pid {pid}")) && log.contains(&state_a.display().to_string()),
        "the refusal names the first daemon (pid {pid}, {}): {log}",
        state_a.display()
    );
    assert!(
        a.lines_with("missing from the kernel").is_empty(),
        "nothing had to be re-added"
    );

    // The first, keep_on_exit = false, still owns and removes its table.
    assert!(a.stop().is_some_and(|s| s.success()));
    let tables = sh(&["ip", "netns", "exec", &ns.name, "nft", "list", "tables"]);
    assert!(
        !tables.contains("shared"),
        "the owner removes its table at exit: {tables}"
    );
}

#[test]
fn a_leftover_table_of_a_stopped_daemon_is_taken_over_naming_its_owner() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("tko");
    let dir = TempDir::new("tko");
    let state_a = dir.path("state-a");
    let cfg_a = config(&dir, "sipwarden", &state_a, "table = \"shared\"");
    let a = start(&ns, &cfg_a);
    assert!(a.stop().is_some_and(|s| s.success()));
    let table = sh(&[
        "ip", "netns", "exec", &ns.name, "nft", "list", "table", "inet", "shared",
    ]);
    assert!(
        table.contains(&state_a.display().to_string()),
        "the table names its owner: {table}"
    );

    let state_b = dir.path("state-b");
    let cfg_b = config(
        &dir,
        "second",
        &state_b,
        "table = \"shared\"\nkeep_on_exit = false",
    );
    let b = start(&ns, &cfg_b);
    let line = b
        .wait_for("taking over", Duration::from_secs(5))
        .expect("taking over a leftover table is logged");
    assert!(
        line.contains(&state_a.display().to_string()),
        "naming the previous owner: {line}"
    );
    let table = sh(&[
        "ip", "netns", "exec", &ns.name, "nft", "list", "table", "inet", "shared",
    ]);
    assert!(
        table.contains(&state_b.display().to_string()),
        "the table now names its new owner: {table}"
    );
    assert!(b.stop().is_some_and(|s| s.success()));
    let tables = sh(&["ip", "netns", "exec", &ns.name, "nft", "list", "tables"]);
    assert!(!tables.contains("shared"), "{tables}");
}
