//! Helpers shared by the integration tests: temp dirs, the daemon as a child
//! process, and its log lines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sipwarden")
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sipwarden-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running daemon whose stderr is collected line by line.
pub struct Daemon {
    pub child: Child,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Daemon {
    /// Starts `sipwarden` with `args`, logs at `info`.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_with(Command::new(bin()).args(args))
    }

    pub fn start_with(cmd: &mut Command) -> Daemon {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sipwarden");
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("  daemon| {line}");
                let (m, cv) = &*sink;
                m.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        Daemon { child, log }
    }

    /// Waits (bounded) for a log line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.log;
        let mut lines = m.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = cv.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Log lines containing `needle`, so far.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        self.terminate()
    }

    /// Like `stop`, keeping the daemon's collected log readable.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) touches no memory of ours; the pid is our own
        // child, not yet waited for, so it cannot name another process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends `text` to `path` in one write, as a logger would.
pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

pub use crate::test_support::need;

/// A file of the reference data beside the checkout: `None` only when the
/// run opted out of the `corpus` group; a missing corpus fails the test.
pub use crate::test_support::corpus_path as corpus;

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace made by this test, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sw{tag}{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        NetNs { name }
    }

    /// Runs a command inside the namespace.
    pub fn sh(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread that has entered this namespace (sockets made
    /// there stay in it).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: `fd` is an open namespace file for the whole call;
            // setns(2) changes only this new thread's network namespace.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}");
            f()
        })
        .join()
        .unwrap()
    }

    /// The single addresses in a set of table inet sipwarden, as text.
    pub fn addresses(&self, set: &str) -> std::collections::BTreeSet<String> {
        self.set_elements(set)
            .iter()
            .filter_map(|e| {
                e["elem"]["val"]
                    .as_str()
                    .or_else(|| e.as_str())
                    .map(str::to_string)
            })
            .collect()
    }

    /// Elements of a set of table inet sipwarden, as `nft -j` lists them.
    pub fn set_elements(&self, set: &str) -> Vec<serde_json::Value> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "nft",
                "-j",
                "list",
                "set",
                "inet",
                "sipwarden",
                set,
            ])
            .output()
            .unwrap();
        if !out.status.success() {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .and_then(|a| a.iter().find_map(|o| o.get("set")))
            .and_then(|s| s.get("elem"))
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair: `pbx` (10.77.0.1, fd77::1) and
/// `atk` (10.77.0.2, fd77::2).
pub struct TestNet {
    pub pbx: NetNs,
    pub atk: NetNs,
}

impl TestNet {
    pub fn new() -> TestNet {
        let pbx = NetNs::new("p");
        let atk = NetNs::new("a");
        let (v1, v2) = (format!("{}v", pbx.name), format!("{}v", atk.name));
        sh(&[
            "ip", "link", "add", &v1, "netns", &pbx.name, "type", "veth", "peer", "name", &v2,
            "netns", &atk.name,
        ]);
        for (ns, dev, a4, a6) in [
            (&pbx, &v1, "10.77.0.1/24", "fd77::1/64"),
            (&atk, &v2, "10.77.0.2/24", "fd77::2/64"),
        ] {
            ns.sh(&["ip", "addr", "add", a4, "dev", dev]);
            ns.sh(&["ip", "-6", "addr", "add", a6, "dev", dev, "nodad"]);
            ns.sh(&["ip", "link", "set", dev, "up"]);
        }
        TestNet { pbx, atk }
    }
}

/// Whether a datagram sent from `from` reaches `to` within `wait`.
pub fn delivered(from: &std::net::UdpSocket, to: &std::net::UdpSocket, wait: Duration) -> bool {
    let peer = to.local_addr().unwrap();
    let token = format!("probe-{}", Instant::now().elapsed().as_nanos());
    let _ = from.send_to(token.as_bytes(), peer);
    to.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match to.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == token.as_bytes() => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// A `[daemon]` table keeping state and socket inside `dir`.
pub fn daemon_section(dir: &TempDir) -> String {
    format!(
        "[daemon]\nstate_dir = \"{}\"\nsocket = \"{}\"\n\n",
        dir.path("state").display(),
        dir.path("sipwarden.sock").display()
    )
}

/// Runs the CLI against the daemon whose state lives in `dir`.
pub fn cli(dir: &TempDir, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .arg("--socket")
        .arg(dir.path("sipwarden.sock"))
        .output()
        .unwrap()
}

/// Starts `sipwarden run` inside `ns` and waits (bounded) until it follows
/// its log.
pub fn start_in(ns: &NetNs, cfg: &Path) -> Daemon {
    let d = Daemon::start_with(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        bin(),
        "run",
        "--config",
        cfg.to_str().unwrap(),
    ]));
    // Following its log, and past installing its signal handlers (a
    // SIGTERM before that would kill it with a failing status).
    for needle in [": following", " started: "] {
        assert!(
            d.wait_for(needle, Duration::from_secs(30)).is_some(),
            "daemon did not start (no {needle:?} in its log)"
        );
    }
    d
}

/// Polls `f` until it holds or `timeout` passes; returns its last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Kills, on drop, every process whose command line holds `arg` (a path
/// unique to one test). For daemons started under a wrapper such as
/// `strace`: killing the wrapper leaves its tracee running.
pub struct KillByArg(pub String);

impl Drop for KillByArg {
    fn drop(&mut self) {
        let me = std::process::id();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if pid as u32 == me {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let hit = cmdline.split(|&b| b == 0).any(|a| a == self.0.as_bytes());
            if hit {
                // SAFETY: kill(2) touches no memory of ours. The pid was read
                // from /proc just now with this test's marker in its command
                // line; at worst it exited meanwhile and the call fails.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A FreeSWITCH `SIP auth failure` log line from `ip`, dated `ago_s`
/// seconds before now (UTC, as `logtimezone = "UTC"` reads it).
pub fn fs_auth_failure(ip: &str, ago_s: i64) -> String {
    let at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(ago_s);
    format!(
        "{} 3.10% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1001@10.77.0.1] from ip {ip}\n",
        at.strftime("%Y-%m-%d %H:%M:%S%.6f")
    )
}
