//! fail2ban's actions beside the kernel ban, with fail2ban's own action
//! files from the corpus: mail on ban through stub `mail` and `sendmail`
//! commands first on the daemon's PATH, and the `abuseipdb` report over
//! HTTPS to a server the test runs in the daemon's namespace. A user name
//! full of shell metacharacters arrives intact and runs nothing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Daemon, NetNs, TempDir, bin, corpus, daemon_section, need, wait_until};

/// The attacker's address in the log lines.
const ATTACKER: &str = "203.0.113.7";

/// What the hostile user name of a test in `dir` would create if it ever
/// ran: the test's own file, so that tests running at once never erase
/// each other's evidence.
fn pwned(dir: &TempDir) -> PathBuf {
    dir.path("pwned")
}

/// A user name that would run `touch` on [`pwned`] if it ever became
/// shell text.
fn hostile(dir: &TempDir) -> String {
    let p = pwned(dir).display().to_string();
    format!("$(touch {p})`touch {p}`;touch {p}|true&&touch {p}'\"'<ip>${{IFS}}*%s")
}

/// A fail2ban filter that takes the user name from the line, and the jail's
/// log; returns the TOML jail (without `actions`).
fn jail(dir: &TempDir) -> String {
    std::fs::create_dir_all(dir.path("filter.d")).unwrap();
    std::fs::write(
        dir.path("filter.d/t.conf"),
        "[Definition]\nfailregex = ^ auth failure for user <F-USER>.+</F-USER> from <HOST>$\n",
    )
    .unwrap();
    std::fs::write(dir.path("t.log"), "").unwrap();
    format!(
        "{}[defaults]\nignoreself = false\n\n[jail.t]\nfail2ban_filter = {:?}\nlogpath = {:?}\nmaxretry = 2\nbantime = \"1h\"\n",
        daemon_section(dir),
        dir.path("filter.d/t.conf").display().to_string(),
        dir.path("t.log").display().to_string()
    )
}

/// Two failures of `user` from [`ATTACKER`], dated now.
fn attack(dir: &TempDir, user: &str) {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path("t.log"))
        .unwrap();
    for _ in 0..2 {
        writeln!(f, "{now} auth failure for user {user} from {ATTACKER}").unwrap();
    }
}

/// The corpus's fail2ban configuration directory (its `action.d`).
fn fail2ban_dir() -> PathBuf {
    corpus("fail2ban-1.1.2.dev1/config").unwrap()
}

/// An `actions` entry, TOML-quoted.
fn entry(path: &Path, args: &str) -> String {
    format!("{:?}", format!("{}{args}", path.display()))
}

/// Starts the daemon in `ns` with extra environment; waits until it follows
/// its log.
fn start(ns: &NetNs, cfg: &Path, env: &[(&str, String)]) -> Daemon {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, bin(), "run", "--config"])
        .arg(cfg);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let d = Daemon::start_with(&mut cmd);
    for needle in [": following", " started: "] {
        assert!(
            d.wait_for(needle, Duration::from_secs(30)).is_some(),
            "daemon did not start (no {needle:?} in its log)"
        );
    }
    d
}

/// Files in `dir` whose name starts with `prefix`, with their contents.
fn recorded(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Stub `mail`, `sendmail` and `whois` commands in `bin_dir`: each call of
/// `mail` or `sendmail` leaves one file in `out` with its argv, its
/// `f2bV_` variables and its stdin.
fn stubs(bin_dir: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    std::fs::create_dir_all(bin_dir).unwrap();
    for stub in ["mail", "sendmail", "whois"] {
        let p = bin_dir.join(stub);
        let body = if stub == "whois" {
            "#!/bin/sh\necho \"whois of $1\"\n".to_string()
        } else {
            format!(
                "#!/bin/sh\nf={}/{stub}.$$\n{{ printf 'ARGV'; for a in \"$@\"; do printf ' [%s]' \"$a\"; done; printf '\\n'; env | grep '^f2bV_' | cut -c1-40; echo STDIN; cat; }} > \"$f\"\n",
                out.display()
            )
        };
        std::fs::write(&p, body).unwrap();
        Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    }
}

/// fail2ban's mail actions (`mail-whois`, and `sendmail-whois-matches`
/// with its matches in the body) and an action of the operator's own run
/// on ban: the stub `mail`/`sendmail` first on the daemon's PATH get the
/// mail, the user name arrives byte for byte and nothing it holds ran. On
/// restart the restored ban runs the own action with `<restored>` 1 and no
/// mail (fail2ban's `norestored`).
#[test]
fn mail_actions_run_on_ban_with_values_intact_and_inert() {
    if !need("netns") || !need("corpus") {
        return;
    }
    let dir = TempDir::new("actions-mail");
    let out = dir.path("out");
    let bin_dir = dir.path("bin");
    stubs(&bin_dir, &out);
    std::fs::create_dir_all(dir.path("action.d")).unwrap();
    std::fs::write(
        dir.path("action.d/record.conf"),
        format!(
            "[Definition]\nactionban = printf '%s|%s|%s|%s\\n' '<ip>' \"<F-USER>\" '<restored>' '<failures>' >> {}/record\nactionunban = echo unban <ip> >> {}/record\n",
            out.display(),
            out.display()
        ),
    )
    .unwrap();
    let f2b = fail2ban_dir();
    let actions = [
        entry(
            &f2b.join("action.d/mail-whois.conf"),
            "[dest=\"ops@example.org\"]",
        ),
        entry(
            &f2b.join("action.d/sendmail-whois-matches.conf"),
            "[dest=\"ops@example.org\", sender=\"sw@example.org\", mailcmd='sendmail -f \"<sender>\" \"<dest>\"']",
        ),
        entry(&dir.path("action.d/record.conf"), ""),
    ];
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!("{}actions = [{}]\n", jail(&dir), actions.join(", ")),
    )
    .unwrap();
    let ns = NetNs::new("act");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [("PATH", path)];
    let d = start(&ns, &cfg, &env);
    let user = hostile(&dir);
    attack(&dir, &user);
    assert!(
        d.wait_for(&format!("Ban {ATTACKER}"), Duration::from_secs(20))
            .is_some(),
        "no ban"
    );
    let banned = |prefix: &str| {
        recorded(&out, prefix)
            .into_iter()
            .filter(|m| m.contains("banned"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || banned("mail.") == 1
            && banned("sendmail.") == 1
            && out.join("record").exists()),
        "the ban's mails and record did not arrive: {:?} {:?}",
        recorded(&out, "mail."),
        recorded(&out, "sendmail.")
    );
    let mail = recorded(&out, "mail.")
        .into_iter()
        .find(|m| m.contains("banned"))
        .unwrap();
    assert!(
        mail.starts_with(&format!(
            "ARGV [-E] [set escape] [-s] [[Fail2Ban] t: banned {ATTACKER} from "
        )),
        "{mail}"
    );
    assert!(mail.contains("] [ops@example.org]\n"), "{mail}");
    assert!(
        mail.contains(&format!(
            "The IP {ATTACKER} has just been banned by Fail2Ban after\n2 attempts against t."
        )),
        "{mail}"
    );
    assert!(mail.contains(&format!("whois of {ATTACKER}")), "{mail}");
    let smail = recorded(&out, "sendmail.")
        .into_iter()
        .find(|m| m.contains("banned"))
        .unwrap();
    assert!(
        smail.starts_with("ARGV [-f] [sw@example.org] [ops@example.org]\n")
            && smail.contains("\nf2bV_matches="),
        "{smail}"
    );
    assert!(smail.contains("To: ops@example.org"), "{smail}");
    // The matches, with the user name as it was in the log, in the body.
    assert!(smail.contains(&format!(" user {user}\n")), "{smail}");
    let record = std::fs::read_to_string(out.join("record")).unwrap();
    assert_eq!(record, format!("{ATTACKER}|{user}|0|2\n"));
    let status = crate::common::cli(&dir, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(" 0 failed (0 timed out), 0 dropped"),
        "{status}"
    );
    assert!(!pwned(&dir).exists(), "the user name ran as code");

    // Restart: the own action (no actionflush) unbans at stop, as
    // fail2ban stops a jail; the ban is restored; the own action runs
    // with <restored> 1, the mail actions (norestored) send nothing.
    assert!(d.stop().is_some_and(|s| s.success()));
    assert!(
        wait_until(Duration::from_secs(10), || recorded(&out, "sendmail.")
            .iter()
            .any(|m| m.contains("stopped"))),
        "no actionstop mail"
    );
    let d = start(&ns, &cfg, &env);
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(
            out.join("record")
        )
        .is_ok_and(|r| r.lines().count() == 3)),
        "the restored ban's action did not run"
    );
    let record = std::fs::read_to_string(out.join("record")).unwrap();
    let lines: Vec<&str> = record.lines().skip(1).collect();
    assert_eq!(
        lines,
        [format!("unban {ATTACKER}"), format!("{ATTACKER}||1|2")]
    );
    // Start mails arrived for the second start; no second ban mail.
    assert!(wait_until(Duration::from_secs(10), || recorded(
        &out, "mail."
    )
    .iter()
    .filter(|m| m.contains("started"))
    .count()
        == 2));
    assert_eq!(banned("mail."), 1);
    assert_eq!(banned("sendmail."), 1);
    // An unban runs actionunban.
    let o = crate::common::cli(&dir, &["unban", ATTACKER]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(
            out.join("record")
        )
        .is_ok_and(|r| r.ends_with(&format!("unban {ATTACKER}\n")))),
        "no actionunban"
    );
    assert!(d.stop().is_some_and(|s| s.success()));
    assert!(!pwned(&dir).exists(), "the user name ran as code");
}

/// `/etc/netns/NS/hosts`, removed on drop: the name `ip netns exec` maps.
struct NetnsHosts(PathBuf);

impl NetnsHosts {
    fn new(ns: &NetNs, text: &str) -> NetnsHosts {
        let d = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("hosts"), text).unwrap();
        NetnsHosts(d)
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a certificate for `api.abuseipdb.com`, made with openssl.
fn certificate(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let d = dir.path("tls");
    std::fs::create_dir_all(&d).unwrap();
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    std::fs::write(
        d.join("ext.cnf"),
        "[server]\nsubjectAltName = DNS:api.abuseipdb.com\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=sipwarden test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=api.abuseipdb.com",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-extensions",
        "server",
    ]);
    (d.join("ca.crt"), d.join("server.crt"), d.join("server.key"))
}

/// Percent-decoding of a form value (`+` is a space).
fn form_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// fail2ban's `abuseipdb` action reports the ban: `curl -sSf
/// https://api.abuseipdb.com/...` reaches the test's HTTPS server on port
/// 443 in the daemon's namespace (the name mapped in the namespace's
/// hosts file, the test's CA in CURL_CA_BUNDLE), with the key, the address,
/// the category, and a comment holding the user name byte for byte; the
/// name ran nothing.
#[test]
fn abuseipdb_reports_a_ban_with_the_user_name_intact_and_inert() {
    if !need("netns") || !need("corpus") || !need("openssl") || !need("curl") {
        return;
    }
    let dir = TempDir::new("actions-abuseipdb");
    let ns = NetNs::new("abu");
    let _hosts = NetnsHosts::new(&ns, "127.0.0.1 localhost\n127.0.0.1 api.abuseipdb.com\n");
    let (ca, crt, key) = certificate(&dir);
    // One connection: the request is read from its output, the answer
    // written to its input.
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "openssl", "s_server", "-quiet", "-naccept", "1",
        ])
        .args(["-accept", "443", "-cert"])
        .arg(&crt)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _kill = crate::common::KillByArg(crt.display().to_string());
    let mut answer = server.stdin.take().unwrap();
    let mut stdout = server.stdout.take().unwrap();
    let request = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stdout.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(h) = text.find("\r\n\r\n") {
                let len = text[..h]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if got.len() >= h + 4 + len {
                    let _ = answer.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                    let _ = answer.flush();
                    break;
                }
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    assert!(
        wait_until(Duration::from_secs(20), || {
            let o = Command::new("ip")
                .args(["netns", "exec", &ns.name, "ss", "-ltnH", "sport = :443"])
                .output()
                .unwrap();
            !o.stdout.is_empty()
        }),
        "the HTTPS server did not listen"
    );
    let f2b = fail2ban_dir();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}actions = [{}]\n",
            jail(&dir),
            entry(
                &f2b.join("action.d/abuseipdb.conf"),
                "[abuseipdb_apikey=\"k3y\", abuseipdb_category=\"18,22\"]"
            )
        ),
    )
    .unwrap();
    let d = start(&ns, &cfg, &[("CURL_CA_BUNDLE", ca.display().to_string())]);
    let user = hostile(&dir);
    attack(&dir, &user);
    assert!(
        d.wait_for(&format!("Ban {ATTACKER}"), Duration::from_secs(20))
            .is_some(),
        "no ban"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(request.join());
    });
    let req = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("no request reached the HTTPS server")
        .unwrap();
    assert!(req.starts_with("POST /api/v2/report HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("\r\nHost: api.abuseipdb.com\r\n"), "{req}");
    assert!(req.contains("\r\nKey: k3y\r\n"), "{req}");
    let body = &req[req.find("\r\n\r\n").unwrap() + 4..];
    let form: Vec<(String, String)> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), form_decode(v)))
        .collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("ip").as_deref(), Some(ATTACKER));
    assert_eq!(get("categories").as_deref(), Some("18,22"));
    let comment = get("comment").unwrap_or_default();
    assert!(comment.contains(&format!(" user {user}\n")), "{comment:?}");
    let mut d = d;
    assert!(d.terminate().is_some_and(|s| s.success()));
    // Stopping waited for the action: curl's answer was a success.
    let failed = d.lines_with(" failed");
    assert!(failed.is_empty(), "{failed:?}");
    let _ = server.kill();
    let _ = server.wait();
    assert!(!pwned(&dir).exists(), "the user name ran as code");
}

/// A jail of a fail2ban configuration (`run --fail2ban-config`) with
/// `action = %(action_mw)s` and `mta = mail`: its firewall action is left
/// to sipwarden's enforcer (one log line), fail2ban's `mail-whois` mails
/// the ban through the `mail` first on PATH.
#[test]
fn a_fail2ban_jail_with_action_mw_mails_on_ban() {
    if !need("corpus") {
        return;
    }
    let dir = TempDir::new("actions-f2b");
    let (out, bin_dir) = (dir.path("out"), dir.path("bin"));
    stubs(&bin_dir, &out);
    let f2b = dir.path("fail2ban");
    let st = Command::new("cp")
        .arg("-r")
        .arg(fail2ban_dir())
        .arg(&f2b)
        .status()
        .unwrap();
    assert!(st.success());
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(&f2b).status();
    std::fs::write(
        f2b.join("filter.d/t.conf"),
        "[Definition]\nfailregex = ^ auth failure for user <F-USER>.+</F-USER> from <HOST>$\n",
    )
    .unwrap();
    std::fs::write(dir.path("t.log"), "").unwrap();
    std::fs::write(
        f2b.join("jail.local"),
        format!(
            "[DEFAULT]\nmta = mail\ndestemail = ops@example.org\n\n[t]\nenabled = true\nfilter = t\nlogpath = {}\nmaxretry = 2\nbantime = 1h\naction = %(action_mw)s\n",
            dir.path("t.log").display()
        ),
    )
    .unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!("{}[firewall]\nbackend = \"none\"\n", daemon_section(&dir)),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = Daemon::start_with(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .arg("--fail2ban-config")
            .arg(&f2b)
            .env("PATH", path),
    );
    assert!(
        d.wait_for(": following", Duration::from_secs(30)).is_some(),
        "daemon did not start"
    );
    let skipped = d
        .wait_for("firewall actions are not run", Duration::from_secs(5))
        .expect("no line about the firewall action");
    assert!(skipped.contains("(t: nftables)"), "{skipped}");
    attack(&dir, &hostile(&dir));
    assert!(
        d.wait_for(&format!("Ban {ATTACKER}"), Duration::from_secs(20))
            .is_some(),
        "no ban"
    );
    let banned = || {
        recorded(&out, "mail.")
            .into_iter()
            .find(|m| m.contains("banned"))
    };
    assert!(
        wait_until(Duration::from_secs(30), || banned().is_some()),
        "no ban mail: {:?}",
        recorded(&out, "mail.")
    );
    let mail = banned().unwrap();
    assert!(
        mail.starts_with(&format!(
            "ARGV [-E] [set escape] [-s] [[Fail2Ban] t: banned {ATTACKER} from "
        )) && mail.contains("] [ops@example.org]\n"),
        "{mail}"
    );
    assert!(d.stop().is_some_and(|s| s.success()));
    assert!(!pwned(&dir).exists(), "the user name ran as code");
}

/// A node of a fleet on `redis_port`, with no firewall (`backend = "none"`:
/// actions still run, unlike `--dry-run`), whose jail runs an action that
/// records each ban in `DIR/out/record`.
fn fleet_node(name: &str, redis_port: u16) -> (TempDir, Daemon) {
    let dir = TempDir::new(&format!("actions-fleet-{name}"));
    std::fs::create_dir_all(dir.path("action.d")).unwrap();
    std::fs::create_dir_all(dir.path("out")).unwrap();
    std::fs::write(
        dir.path("action.d/record.conf"),
        format!(
            "[Definition]\nactionban = echo ban <ip> >> {}\n",
            dir.path("out/record").display()
        ),
    )
    .unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}actions = [{}]\n\n[firewall]\nbackend = \"none\"\n\n[cluster]\nnode = \"{name}\"\nredis = \"redis://127.0.0.1:{redis_port}\"\n",
            jail(&dir),
            entry(&dir.path("action.d/record.conf"), "")
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for(": following", Duration::from_secs(30)).is_some(),
        "node {name} did not start"
    );
    let connected = wait_until(Duration::from_secs(30), || {
        let o = crate::common::cli(&dir, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["result"]["cluster"]["connected"] == serde_json::Value::Bool(true)
    });
    assert!(connected, "node {name} did not join the fleet");
    (dir, d)
}

/// Only the node that decided a ban runs its actions: the node that
/// receives it from the fleet holds it and runs nothing.
#[test]
fn a_ban_received_from_the_fleet_runs_no_action() {
    if !need("redis") {
        return;
    }
    let rdir = TempDir::new("actions-fleet-redis");
    let redis = crate::fleet::Redis::start(&rdir, "redis", &[]);
    let (a_dir, a) = fleet_node("a", redis.port);
    let (b_dir, mut b) = fleet_node("b", redis.port);
    attack(&a_dir, &hostile(&a_dir));
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(
            a_dir.path("out/record")
        )
        .is_ok_and(|r| r == format!("ban {ATTACKER}\n"))),
        "the deciding node did not run its action"
    );
    assert!(
        b.wait_for(
            &format!("Ban {ATTACKER} (cluster,"),
            Duration::from_secs(30)
        )
        .is_some(),
        "the ban did not reach node b"
    );
    // Stopping waits for every queued command.
    assert!(b.terminate().is_some_and(|s| s.success()));
    assert!(
        !b_dir.path("out/record").exists(),
        "node b ran an action for a ban it received"
    );
    assert!(a.stop().is_some_and(|s| s.success()));
    assert!(!pwned(&a_dir).exists(), "the user name ran as code");
}

/// One Event Socket `sofia::register_failure` event from [`ATTACKER`] for
/// `user` (percent-encoded, as FreeSWITCH writes header values).
fn register_failure(user: &str) -> Vec<u8> {
    let enc: String = user
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = format!(
        "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nto-user: {enc}\nnetwork-ip: {ATTACKER}\nregistration-type: REGISTER\n\n"
    );
    format!(
        "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A user name from the Event Socket, where it may hold newlines and
/// carriage returns besides shell syntax, reaches an action's command byte
/// for byte, and runs nothing.
#[test]
fn an_event_socket_user_name_with_newlines_arrives_intact_and_inert() {
    let dir = TempDir::new("actions-esl");
    std::fs::create_dir_all(dir.path("action.d")).unwrap();
    std::fs::create_dir_all(dir.path("out")).unwrap();
    std::fs::write(
        dir.path("action.d/user.conf"),
        format!(
            "[Definition]\nactionban = printf '%s' \"<F-USER>\" > {}\n",
            dir.path("out/user").display()
        ),
    )
    .unwrap();
    // Under the Event Socket's 256 characters: the forms of hostile()
    // split over lines.
    let user = format!(
        "$(touch {p})'\"\nsecond line\r\n`touch {p}`;touch {p}|true\n",
        p = pwned(&dir).display()
    );
    let sim = crate::esl::Simulator::start(
        "ClueCon",
        vec![crate::esl::Conn::Replay],
        vec![register_failure(&user), register_failure(&user)],
    );
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 2\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.e]\nesl = {{ host = \"127.0.0.1\", port = {}, password = \"ClueCon\" }}\nactions = [{}]\n",
            daemon_section(&dir),
            sim.port,
            entry(&dir.path("action.d/user.conf"), "")
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for(&format!("Ban {ATTACKER}"), Duration::from_secs(30))
            .is_some(),
        "no ban"
    );
    assert!(d.terminate().is_some_and(|s| s.success()));
    let got = std::fs::read(dir.path("out/user")).expect("the action did not run");
    assert_eq!(String::from_utf8_lossy(&got), user);
    assert!(!pwned(&dir).exists(), "the user name ran as code");
}
