//! The fleet link against real redis-server processes on loopback ports,
//! with dry-run daemons (no kernel needed): issue 17's findings (a reply
//! that is not RESP, keys of the wrong type under the prefix, a
//! percent-encoded password), TLS with certificates made by the test, and a
//! Sentinel failover.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::common::{Daemon, TempDir, append, cli, daemon_section, need, wait_until};

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server (or sentinel) started by the test, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// `redis-cli` arguments reaching it (TLS options included).
    cli: Vec<String>,
}

impl Redis {
    /// Starts `redis-server` on a loopback port with `extra` options (no
    /// persistence) and waits until it answers PING.
    pub fn start(dir: &TempDir, tag: &str, extra: &[&str]) -> Redis {
        Redis::start_as(dir, tag, extra, Vec::new())
    }

    /// Like `start`, with `cli` added to every `redis-cli` call (`--user`).
    pub fn start_as(dir: &TempDir, tag: &str, extra: &[&str], cli: Vec<String>) -> Redis {
        let port = free_port();
        Redis::start_on(dir, tag, port, &["--port", &port.to_string()], extra, cli)
    }

    fn start_on(
        dir: &TempDir,
        tag: &str,
        port: u16,
        listen: &[&str],
        extra: &[&str],
        cli_extra: Vec<String>,
    ) -> Redis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir"])
            .arg(&dir.0)
            .arg("--logfile")
            .arg(dir.path(&format!("{tag}.log")))
            .args(listen)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut cli = vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        cli.extend(cli_extra);
        let r = Redis {
            child: Some(child),
            port,
            cli,
        };
        let up = wait_until(Duration::from_secs(10), || {
            r.try_cli(&["PING"]).is_some_and(|o| o.contains("PONG"))
        });
        assert!(up, "redis-server {tag} answers on {port}");
        r
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(&self.cli)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `redis-cli ARGS` against it, answered.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} did not run"))
    }

    /// `redis-cli -x ARGS` with `input` as the last argument.
    fn cli_with_input(&self, args: &[&str], input: &Path) -> String {
        let out = Command::new("redis-cli")
            .args(&self.cli)
            .arg("-x")
            .args(args)
            .stdin(std::fs::File::open(input).unwrap())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One `INFO` field as a number.
    fn info(&self, field: &str) -> u64 {
        let text = self.cli(&["INFO", "stats"]);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in INFO: {text}"))
    }

    /// SIGKILL, waited for.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node: a dry-run daemon with one `shared_count` jail fed by a log file,
/// and `cluster` as its `[cluster]` table body.
struct Node {
    dir: TempDir,
    daemon: Daemon,
}

impl Node {
    fn start(name: &str, cluster: &str) -> Node {
        let dir = TempDir::new(&format!("fleet-{name}"));
        std::fs::write(dir.path("freeswitch.log"), "").unwrap();
        let cfg = dir.path("sipwarden.toml");
        std::fs::write(
            &cfg,
            format!(
                "{}[defaults]\nmaxretry = 3\nbantime = \"1h\"\nignoreself = false\n\
                 [cluster]\nnode = \"{name}\"\n{cluster}\n\
                 [jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nshared_count = true\nlogpath = \"{}\"\n",
                daemon_section(&dir),
                dir.path("freeswitch.log").display()
            ),
        )
        .unwrap();
        let daemon = Daemon::start(&["run", "--dry-run", "--config", cfg.to_str().unwrap()]);
        assert!(
            daemon
                .wait_for(" started: ", Duration::from_secs(30))
                .is_some(),
            "node {name} did not start"
        );
        Node { dir, daemon }
    }

    /// `status --json`'s cluster part (Null while the daemon does not answer).
    fn cluster(&self) -> Value {
        let out = cli(&self.dir, &["status", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["result"]["cluster"].clone()
    }

    fn connected(&self) -> bool {
        self.cluster()["connected"] == Value::Bool(true)
    }

    fn wait_connected(&self, what: &str) {
        assert!(
            wait_until(Duration::from_secs(30), || self.connected()),
            "{what}: not connected; status: {}",
            self.cluster()
        );
    }

    /// Whether this node holds a ban of `addr` that came from the fleet.
    fn holds_from_fleet(&self, addr: &str) -> bool {
        self.daemon
            .lines_with(&format!("Ban {addr} (cluster,"))
            .iter()
            .any(|l| l.contains("from node"))
    }

    fn ban(&self, addr: &str) {
        let out = cli(&self.dir, &["ban", "freeswitch", addr]);
        assert!(
            out.status.success(),
            "ban {addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn failures(&self, addr: &str, n: usize) {
        let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S%.6f");
        let text: String = (0..n)
            .map(|_| format!("{now} [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1001@pbx] from ip {addr}\n"))
            .collect();
        append(&self.dir.path("freeswitch.log"), &text);
    }
}

/// A ban made on `from` reaches `to` (bounded wait).
fn flows(from: &Node, to: &Node, addr: &str, what: &str) {
    from.ban(addr);
    assert!(
        wait_until(Duration::from_secs(30), || to.holds_from_fleet(addr)),
        "{what}: the ban of {addr} did not reach the other node; its cluster status: {}",
        to.cluster()
    );
}

/// Finding 1: a server whose replies are not RESP (`é` as the first byte of
/// a line) must not take the fleet link down for good. Here a fake Redis
/// answers `\xc3\xa9bc\r\n` to everything, then turns into a proxy to a
/// real redis-server: the node says it is not connected and why while the
/// garbage lasts, then connects and publishes again.
#[test]
fn finding1_a_reply_that_is_not_resp_does_not_kill_the_fleet_link() {
    if !need("redis") {
        return;
    }
    let rdir = TempDir::new("fleet-f1-redis");
    let redis = Redis::start(&rdir, "redis", &[]);
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    let proxy = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (proxy, accepted, stop, real) =
            (proxy.clone(), accepted.clone(), stop.clone(), redis.port);
        std::thread::spawn(move || {
            for conn in fake.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                accepted.fetch_add(1, Ordering::Relaxed);
                let proxy = proxy.clone();
                std::thread::spawn(move || {
                    if proxy.load(Ordering::Relaxed) {
                        let Ok(up) = TcpStream::connect(("127.0.0.1", real)) else {
                            return;
                        };
                        let (mut a, mut b) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut a, &mut b);
                            let _ = b.shutdown(std::net::Shutdown::Both);
                        });
                        let (mut up, mut c) = (up, c);
                        let _ = std::io::copy(&mut up, &mut c);
                        let _ = c.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
                    let mut buf = [0u8; 65536];
                    // Garbage for every read, until the test turns proxy.
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || proxy.load(Ordering::Relaxed) {
                            break;
                        }
                        if c.write_all(b"\xc3\xa9bc\r\n").is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    let a = Node::start("a", &format!("redis = \"redis://127.0.0.1:{fake_port}\""));
    let b = Node::start(
        "b",
        &format!("redis = \"redis://127.0.0.1:{}\"", redis.port),
    );
    b.wait_connected("b, direct");

    // While the garbage lasts: never connected, and the reason shown.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let c = a.cluster();
            c["connected"] == Value::Bool(false) && c["error"].is_string()
        }),
        "a says it is down and why: {}",
        a.cluster()
    );
    for _ in 0..20 {
        assert_ne!(
            a.cluster()["connected"],
            Value::Bool(true),
            "connected through a server that answers garbage"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Redis answers properly from now on: a's tasks come back by themselves.
    proxy.store(true, Ordering::Relaxed);
    a.wait_connected("a after the server answers properly again");
    flows(&a, &b, "192.0.2.71", "after recovering");
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(("127.0.0.1", fake_port));
    println!(
        "finding 1: {} connection(s) to the fake server; a's status now: {}",
        accepted.load(Ordering::Relaxed),
        a.cluster()
    );
}

/// Finding 2: keys of the wrong type or shape under the prefix (a list as a
/// ban key, a string that is no ban, a 17 MiB node key starting with `é`)
/// are skipped and counted after a reconnection (CLIENT KILL), never a
/// reason to reconnect again: the reader follows the stream, and the number
/// of connections Redis sees stays small.
#[test]
fn finding2_keys_of_the_wrong_type_are_skipped_and_counted() {
    if !need("redis") {
        return;
    }
    let rdir = TempDir::new("fleet-f2-redis");
    let redis = Redis::start(&rdir, "redis", &[]);
    let url = format!("redis = \"redis://127.0.0.1:{}\"", redis.port);
    let a = Node::start("a", &url);
    let b = Node::start("b", &url);
    a.wait_connected("a");
    b.wait_connected("b");
    flows(&a, &b, "192.0.2.80", "before the bad keys");

    redis.cli(&["LPUSH", "sipwarden:ban:freeswitch:6.6.6.6", "x"]);
    redis.cli(&["SET", "sipwarden:ban:freeswitch:6.6.6.7", "not a ban"]);
    let big = rdir.path("big");
    {
        let mut f = std::fs::File::create(&big).unwrap();
        f.write_all("é\r\n".as_bytes()).unwrap();
        f.write_all(&vec![b'x'; 17 * 1024 * 1024]).unwrap();
    }
    redis.cli_with_input(&["SET", "sipwarden:node:zz"], &big);
    let before = redis.info("total_connections_received");
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);

    // The stream is followed again: a ban made after the kill reaches b.
    flows(
        &a,
        &b,
        "192.0.2.81",
        "after CLIENT KILL with bad keys present",
    );
    a.wait_connected("a after CLIENT KILL");
    b.wait_connected("b after CLIENT KILL");
    // Counted, and seen in status.
    assert!(
        wait_until(Duration::from_secs(10), || b.cluster()["skipped"]
            .as_u64()
            .is_some_and(|n| n >= 2)),
        "b counts the skipped keys: {}",
        b.cluster()
    );
    // A few reconnections (two nodes, two connections each, plus the
    // redis-cli calls of this test), not thousands.
    std::thread::sleep(Duration::from_secs(3));
    let after = redis.info("total_connections_received");
    assert!(
        after - before < 40,
        "{} connections after CLIENT KILL",
        after - before
    );
    // The stream key itself of the wrong type: reported, retried with
    // backoff on the same connection, followed again once deleted.
    redis.cli(&["DEL", "sipwarden:events"]);
    redis.cli(&["SET", "sipwarden:events", "garbage"]);
    assert!(
        wait_until(Duration::from_secs(20), || b.cluster()["error"]
            .as_str()
            .is_some_and(|e| e.contains("sipwarden:events"))),
        "b says the stream key is wrong: {}",
        b.cluster()
    );
    let before = redis.info("total_connections_received");
    std::thread::sleep(Duration::from_secs(3));
    let during = redis.info("total_connections_received");
    assert!(
        during - before < 10,
        "{} connections while the stream key is wrong",
        during - before
    );
    // A ban made meanwhile cannot be published: it waits in a's queue,
    // and a does not claim to be connected.
    a.ban("192.0.2.83");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let c = a.cluster();
            c["queued"].as_u64().is_some_and(|n| n >= 1) && c["connected"] == Value::Bool(false)
        }),
        "a queues the ban it cannot publish: {}",
        a.cluster()
    );
    redis.cli(&["DEL", "sipwarden:events"]);
    flows(&a, &b, "192.0.2.82", "after the stream key was deleted");
    assert!(
        wait_until(Duration::from_secs(30), || b.holds_from_fleet("192.0.2.83")),
        "the ban queued while the stream key was wrong arrives: {}",
        b.cluster()
    );
    a.wait_connected("a publishing again");
}

/// Finding 3: the ACL user and password in the URL are percent-decoded
/// (`p%40ss%3Aw%2Frd` is `p@ss:w/rd`), checked by a server that requires
/// them; a wrong password is refused with a clear reason.
#[test]
fn finding3_a_percent_encoded_password_is_decoded() {
    if !need("redis") {
        return;
    }
    let rdir = TempDir::new("fleet-f3-redis");
    let redis = Redis::start_as(
        &rdir,
        "redis",
        &[
            "--user",
            "default",
            "off",
            "--user",
            "s@w",
            "on",
            ">p@ss:w/rd",
            "~*",
            "&*",
            "+@all",
        ],
        ["--user", "s@w", "--pass", "p@ss:w/rd", "--no-auth-warning"]
            .map(String::from)
            .to_vec(),
    );
    let a = Node::start(
        "a",
        &format!(
            "redis = \"redis://s%40w:p%40ss%3Aw%2Frd@127.0.0.1:{}\"",
            redis.port
        ),
    );
    a.wait_connected("the decoded user and password");
    let bad = Node::start(
        "bad",
        &format!("redis = \"redis://s%40w:p%40ss@127.0.0.1:{}\"", redis.port),
    );
    assert!(
        wait_until(Duration::from_secs(20), || bad.cluster()["error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("password"))),
        "a wrong password is named: {}",
        bad.cluster()
    );
    assert_ne!(bad.cluster()["connected"], Value::Bool(true));
}

/// Certificates for a CA, a server (`localhost`, 127.0.0.1) and a client,
/// made with the openssl CLI.
fn certificates(dir: &TempDir) -> PathBuf {
    let d = dir.path("tls");
    std::fs::create_dir_all(&d).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&d)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        d.join("ext.cnf"),
        "[server]\nsubjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n\
         [client]\nextendedKeyUsage = clientAuth\n",
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
    for (who, cn) in [("server", "localhost"), ("client", "sipwarden node")] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{who}.crt"),
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-extensions",
            who,
        ]);
    }
    d
}

/// TLS with client certificates (`tls-auth-clients yes`, as Debian's
/// redis-server asks): bans and shared counts flow between two nodes; a
/// node without the CA is refused with a log line that names the
/// certificate problem, and so is one that names the server by an address
/// the certificate does not cover.
#[test]
fn tls_bans_and_counts_flow_and_a_client_without_the_ca_is_refused() {
    if !need("redis") || !need("openssl") {
        return;
    }
    let rdir = TempDir::new("fleet-tls-redis");
    let tls = certificates(&rdir);
    let p = |f: &str| tls.join(f).display().to_string();
    let port = free_port();
    let redis = Redis::start_on(
        &rdir,
        "redis",
        port,
        &["--port", "0", "--tls-port", &port.to_string()],
        &[
            "--tls-cert-file",
            &p("server.crt"),
            "--tls-key-file",
            &p("server.key"),
            "--tls-ca-cert-file",
            &p("ca.crt"),
            "--tls-auth-clients",
            "yes",
            // Also on an address the certificate does not name.
            "--bind",
            "127.0.0.1 127.0.0.2",
            "--requirepass",
            "s3cret",
        ],
        vec![
            "--tls".into(),
            "--cacert".into(),
            p("ca.crt"),
            "--cert".into(),
            p("client.crt"),
            "--key".into(),
            p("client.key"),
            "-a".into(),
            "s3cret".into(),
            "--no-auth-warning".into(),
        ],
    );
    let certs = format!(
        "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        p("ca.crt"),
        p("client.crt"),
        p("client.key")
    );
    let url = format!("redis = \"rediss://:s3cret@localhost:{port}\"\n{certs}");
    let a = Node::start("a", &url);
    let b = Node::start("b", &url);
    a.wait_connected("a over TLS");
    b.wait_connected("b over TLS");
    flows(&a, &b, "192.0.2.90", "over TLS");
    // Shared counting: 2 + 2 failures on two nodes reach maxretry 3.
    a.failures("192.0.2.91", 2);
    b.failures("192.0.2.91", 2);
    assert!(
        wait_until(Duration::from_secs(30), || {
            [&a, &b]
                .iter()
                .any(|n| !n.daemon.lines_with("Ban 192.0.2.91 (").is_empty())
        }),
        "2 + 2 failures over TLS ban at maxretry 3"
    );
    assert!(
        redis
            .cli(&["KEYS", "sipwarden:ban:*"])
            .contains("192.0.2.91"),
        "the shared ban is in Redis"
    );

    // Without the CA (the system's roots only): refused, and said why.
    let no_ca = Node::start(
        "noca",
        &format!(
            "redis = \"rediss://:s3cret@localhost:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            p("client.crt"),
            p("client.key")
        ),
    );
    assert!(
        no_ca
            .daemon
            .wait_for("certificate", Duration::from_secs(20))
            .is_some_and(|l| l.contains("tls_ca")),
        "a node without the CA says the certificate is not trusted and what to set"
    );
    assert_ne!(no_ca.cluster()["connected"], Value::Bool(true));
    // A name the certificate does not cover.
    let wrong_name = Node::start(
        "wrongname",
        &format!("redis = \"rediss://:s3cret@127.0.0.2:{port}\"\n{certs}"),
    );
    assert!(
        wrong_name
            .daemon
            .wait_for("certificate", Duration::from_secs(20))
            .is_some(),
        "a server name the certificate does not cover is refused"
    );
    assert_ne!(wrong_name.cluster()["connected"], Value::Bool(true));
}

/// Sentinel: one master, one replica, one sentinel on loopback ports. Two
/// nodes find the master through the sentinel; the master is killed, the
/// sentinel promotes the replica, and bans keep flowing.
#[test]
fn sentinel_failover_keeps_bans_flowing() {
    if !need("redis") {
        return;
    }
    let rdir = TempDir::new("fleet-sentinel");
    let master = Redis::start(&rdir, "master", &[]);
    let replica = Redis::start(
        &rdir,
        "replica",
        &["--replicaof", "127.0.0.1", &master.port.to_string()],
    );
    assert!(
        wait_until(Duration::from_secs(20), || master
            .cli(&["INFO", "replication"])
            .contains("connected_slaves:1")),
        "the replica follows the master"
    );
    let sport = free_port();
    let conf = rdir.path("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sport}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
             sentinel monitor mymaster 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds mymaster 1000\n\
             sentinel failover-timeout mymaster 5000\n",
            rdir.0.display(),
            rdir.path("sentinel.log").display(),
            master.port
        ),
    )
    .unwrap();
    let sentinel_child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server --sentinel");
    let sentinel = Redis {
        child: Some(sentinel_child),
        port: sport,
        cli: vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            sport.to_string(),
        ],
    };
    assert!(
        wait_until(Duration::from_secs(20), || sentinel
            .try_cli(&["SENTINEL", "get-master-addr-by-name", "mymaster"])
            .is_some_and(|o| o.contains(&master.port.to_string()))),
        "the sentinel knows the master"
    );
    let cfg = format!("sentinels = [\"127.0.0.1:{sport}\"]\nmaster_name = \"mymaster\"");
    let a = Node::start("a", &cfg);
    let b = Node::start("b", &cfg);
    a.wait_connected("a through the sentinel");
    b.wait_connected("b through the sentinel");
    assert!(
        a.cluster()["redis"]
            .as_str()
            .is_some_and(|r| r.contains(&master.port.to_string())),
        "a names the master it uses: {}",
        a.cluster()
    );
    flows(&a, &b, "192.0.2.100", "before the failover");

    // A failover asked of the sentinel, both servers alive: the old
    // master turns replica (writes to it are refused, the reader's
    // connection stays open) and the nodes move to the new one.
    // The sentinel refuses while it sees no replica in sync yet
    // (NOGOODSLAVE) or a failover is under way (INPROG): asked again.
    let mut answer = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            answer = sentinel.cli(&["SENTINEL", "FAILOVER", "mymaster"]);
            answer.contains("OK")
        }),
        "SENTINEL FAILOVER accepted: {answer}"
    );
    follow(
        &sentinel,
        &[&a, &b],
        &replica,
        "a failover asked of the sentinel",
    );
    flows(&a, &b, "192.0.2.101", "after the asked failover");
    flows(
        &b,
        &a,
        "192.0.2.102",
        "after the asked failover, the other way",
    );

    // The old master now replicates the new one; the new one is killed and
    // the sentinel promotes the old one back.
    assert!(
        wait_until(Duration::from_secs(60), || {
            let r = master.cli(&["INFO", "replication"]);
            r.contains("role:slave") && r.contains("master_link_status:up")
        }),
        "the old master follows the new one"
    );
    let mut current = replica;
    current.kill();
    follow(&sentinel, &[&a, &b], &master, "the master killed");
    flows(&a, &b, "192.0.2.103", "after the master was killed");
    flows(
        &b,
        &a,
        "192.0.2.104",
        "after the master was killed, the other way",
    );
    // The bans made before the failovers are still held.
    for addr in ["192.0.2.100", "192.0.2.101"] {
        assert!(b.holds_from_fleet(addr), "{addr}");
    }
}

/// The sentinel names `to` as the master, and every node is connected to
/// it (bounded waits).
fn follow(sentinel: &Redis, nodes: &[&Node], to: &Redis, what: &str) {
    let port = to.port.to_string();
    assert!(
        wait_until(Duration::from_secs(60), || sentinel
            .try_cli(&["SENTINEL", "get-master-addr-by-name", "mymaster"])
            .is_some_and(|o| o.contains(&port))),
        "{what}: the sentinel names {port} as the master"
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            nodes.iter().all(|n| {
                let c = n.cluster();
                c["connected"] == Value::Bool(true)
                    && c["redis"].as_str().is_some_and(|r| r.contains(&port))
            })
        }),
        "{what}: the nodes follow to {port}: {:?}",
        nodes.iter().map(|n| n.cluster()).collect::<Vec<_>>()
    );
}

/// `INFO commandstats` calls of one command (0 when never called).
fn calls(redis: &Redis, cmd: &str) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The peer names in a node's status.
fn peer_names(n: &Node) -> Vec<String> {
    n.cluster()["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["node"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 23 (fleet): the heartbeat found its peers with a `SCAN` of the
/// whole keyspace (130 round trips at 100,000 bans, every 2 s, on the
/// task that publishes). Now it issues no `SCAN` while the peers are
/// still found; the node keys keep their TTL (nodes of the previous
/// version scan for them); a dead node leaves `peers`, a long-dead name
/// leaves the roster, and hostile members of the roster are skipped.
#[test]
fn the_heartbeat_finds_peers_without_scanning_the_keyspace() {
    if !need("redis") {
        return;
    }
    let rdir = TempDir::new("fleet-hb-redis");
    let redis = Redis::start(&rdir, "redis", &[]);
    let url = format!("redis = \"redis://127.0.0.1:{}\"", redis.port);
    let a = Node::start("a", &url);
    let b = Node::start("b", &url);
    a.wait_connected("a");
    b.wait_connected("b");
    assert!(
        wait_until(Duration::from_secs(20), || peer_names(&a) == ["b"]
            && peer_names(&b) == ["a"]),
        "each node sees the other: a {} b {}",
        a.cluster(),
        b.cluster()
    );
    // Hostile or stale members: a name too long, one whose node key is a
    // list, and one last seen long ago.
    let long = "x".repeat(100);
    redis.cli(&["ZADD", "sipwarden:nodes", "9999999999999", &long]);
    redis.cli(&["ZADD", "sipwarden:nodes", "9999999999999", "odd"]);
    redis.cli(&["LPUSH", "sipwarden:node:odd", "x"]);
    redis.cli(&["ZADD", "sipwarden:nodes", "1", "ghost"]);
    redis.cli(&["SET", "sipwarden:node:ghost", "{\"node\":\"ghost\"}"]);

    // From here on only heartbeats run (the reader's scan of the ban keys
    // is at connection time): wait for a few of both nodes (each sets its
    // node key, inside the script or not), then count.
    redis.cli(&["CONFIG", "RESETSTAT"]);
    assert!(
        wait_until(Duration::from_secs(30), || calls(&redis, "set") >= 6),
        "heartbeats ran (SET of the node keys): {}",
        redis.cli(&["INFO", "commandstats"])
    );
    assert_eq!(
        calls(&redis, "scan"),
        0,
        "no SCAN while heartbeating: {}",
        redis.cli(&["INFO", "commandstats"])
    );
    assert_eq!(peer_names(&a), ["b"], "a still sees b: {}", a.cluster());
    assert_eq!(peer_names(&b), ["a"], "b still sees a: {}", b.cluster());
    assert!(
        a.cluster()["skipped"].as_u64().is_some_and(|n| n >= 2),
        "the long name and the list are skipped and counted: {}",
        a.cluster()
    );
    // The long-dead name is forgotten; the node keys still expire.
    assert_eq!(
        redis.cli(&["ZSCORE", "sipwarden:nodes", "ghost"]).trim(),
        "",
        "the long-dead name left the roster"
    );
    let ttl: i64 = redis
        .cli(&["PTTL", "sipwarden:node:a"])
        .trim()
        .parse()
        .unwrap_or(-3);
    assert!(ttl > 0 && ttl <= 10_000, "a's node key expires: PTTL {ttl}");

    // b dies: its key expires and a no longer lists it.
    drop(b);
    assert!(
        wait_until(Duration::from_secs(40), || peer_names(&a).is_empty()),
        "the dead node b ages out of a's peers: {}",
        a.cluster()
    );
}
