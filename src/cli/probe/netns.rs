//! The probe's private pair of network namespaces, and running code in them.
//!
//! Code runs inside a namespace on a fresh thread that entered it with
//! setns(2), not in a re-executed `ip netns exec sipwarden ...`: the
//! enforcer's own netlink code and its `nft -f -` child then run unchanged
//! (a socket stays in the namespace it was made in; a child inherits its
//! thread's namespace), results and errors come back as values instead of
//! text over a pipe, and the guard that deletes the namespaces lives in the
//! one process that made them, so Ctrl-C and errors clean up in one place.
//! The thread ends with its step, so no pooled thread keeps the namespace.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why a step of the probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A command or system call failed; the text says which and why.
    #[error("{0}")]
    Step(String),
    /// Ctrl-C (or SIGTERM, SIGHUP) arrived.
    #[error("interrupted")]
    Interrupted,
    /// The probe ran out of its time.
    #[error("the probe ran out of its {0} s")]
    OutOfTime(u64),
}

/// Set by the signal handler; every step checks it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C, SIGTERM and SIGHUP into a flag the steps check, so the
/// namespaces are deleted before the process ends.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; `on_signal` has the signature signal(2) wants.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Whether Ctrl-C, SIGTERM or SIGHUP arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The probe's time limit and the interrupt flag, checked between steps.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    end: Instant,
    total: Duration,
}

impl Budget {
    /// A budget of `total` from now.
    pub fn new(total: Duration) -> Budget {
        Budget {
            end: Instant::now() + total,
            total,
        }
    }

    /// Fails when interrupted or out of time.
    pub fn check(&self) -> Result<(), ProbeError> {
        if interrupted() {
            return Err(ProbeError::Interrupted);
        }
        if Instant::now() >= self.end {
            return Err(ProbeError::OutOfTime(self.total.as_secs()));
        }
        Ok(())
    }

    /// `want`, or less when less time is left.
    pub fn at_most(&self, want: Duration) -> Duration {
        want.min(self.end.saturating_duration_since(Instant::now()))
    }
}

/// Runs `cmd` (feeding it `input`), killed after `limit`; fails unless it
/// exits 0, with its stderr in the message.
pub fn run(cmd: &mut Command, input: Option<&str>, limit: Duration) -> Result<Output, ProbeError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProbeError::Step(format!("cannot run `{shown}`: {e}")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    // Readers on their own threads: a large ruleset must not fill the pipe
    // while we wait for the exit.
    let reader = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let end = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::Step(format!(
                    "`{shown}` did not finish within {} ms; killed",
                    limit.as_millis()
                )));
            }
            Err(e) => return Err(ProbeError::Step(format!("`{shown}`: {e}"))),
        }
    };
    let o = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    if !o.status.success() {
        return Err(ProbeError::Step(format!(
            "`{shown}` failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(o)
}

/// Runs `f` on a new thread inside namespace `ns`, waiting at most `limit`
/// for it (a thread still running then is left behind; the process is
/// about to end).
pub fn inside<T: Send + 'static>(
    ns: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ProbeError> {
    let path = format!("/run/netns/{ns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("probe-{ns}"))
        .spawn(move || {
            let r = std::fs::File::open(&path)
                .map_err(|e| ProbeError::Step(format!("cannot open {path}: {e}")))
                .and_then(|fd| {
                    // SAFETY: `fd` is an open namespace file for the whole
                    // call; setns(2) moves only this new thread.
                    match unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } {
                        0 => Ok(f()),
                        _ => Err(ProbeError::Step(format!(
                            "cannot enter {path}: {}",
                            std::io::Error::last_os_error()
                        ))),
                    }
                });
            let _ = tx.send(r);
        })
        .map_err(|e| ProbeError::Step(format!("cannot start a thread: {e}")))?;
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        Err(ProbeError::Step(format!(
            "a step in namespace {ns} did not finish within {} ms",
            limit.as_millis()
        )))
    })
}

/// The prefix of the probe's namespace names.
pub const PREFIX: &str = "swprobe-";

/// Two namespaces, `a` (the source) and `b` (the server, with sipwarden's
/// table), deleted on drop.
#[derive(Debug)]
pub struct Pair {
    /// The namespace the probe's packets come from.
    pub a: String,
    /// The namespace with sipwarden's table and the listeners.
    pub b: String,
    made: Vec<String>,
}

/// The probe's addresses (documentation ranges, RFC 5737 and 3849).
pub mod addr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// The server in `b`.
    pub const SERVER_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    /// The banned source in `a`.
    pub const BANNED_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    /// A second source in `a`, never banned: the control.
    pub const CONTROL_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
    /// A third source in `a`, banned by a port-scoped jail.
    pub const SCOPED_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 4));
    /// The server in `b`, IPv6.
    pub const SERVER_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    /// The banned source in `a`, IPv6.
    pub const BANNED_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
}

impl Pair {
    /// Makes `swprobe-<pid>-a` and `-b`, joined by a veth pair, with the
    /// documentation addresses in [`addr`].
    pub fn create(budget: &Budget) -> Result<Pair, ProbeError> {
        let pid = std::process::id();
        let mut p = Pair {
            a: format!("{PREFIX}{pid}-a"),
            b: format!("{PREFIX}{pid}-b"),
            made: Vec::new(),
        };
        let step = |args: &[&str]| -> Result<(), ProbeError> {
            budget.check()?;
            run(
                Command::new("ip").args(args),
                None,
                budget.at_most(Duration::from_secs(5)),
            )
            .map(drop)
        };
        for ns in [p.a.clone(), p.b.clone()] {
            // One of this name can only be left by a dead process that had
            // our pid.
            if std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
                let _ = step(&["netns", "del", &ns]);
            }
            step(&["netns", "add", &ns])?;
            p.made.push(ns);
        }
        // Interface names are at most 15 bytes.
        let (va, vb) = (format!("swp{pid}a"), format!("swp{pid}b"));
        step(&[
            "link", "add", &va, "netns", &p.a, "type", "veth", "peer", "name", &vb, "netns", &p.b,
        ])?;
        let a4 = [
            format!("{}/24", addr::BANNED_V4),
            format!("{}/24", addr::CONTROL_V4),
            format!("{}/24", addr::SCOPED_V4),
        ];
        for (ns, dev, v4, v6) in [
            (&p.a, &va, &a4[..], addr::BANNED_V6),
            (
                &p.b,
                &vb,
                &[format!("{}/24", addr::SERVER_V4)][..],
                addr::SERVER_V6,
            ),
        ] {
            for a in v4 {
                step(&["-n", ns, "addr", "add", a, "dev", dev])?;
            }
            step(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            step(&["-n", ns, "link", "set", "lo", "up"])?;
            step(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(p)
    }

    /// Deletes the namespaces now; returns what could not be deleted.
    pub fn delete(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        for ns in std::mem::take(&mut self.made) {
            let r = run(
                Command::new("ip").args(["netns", "del", &ns]),
                None,
                Duration::from_secs(5),
            );
            if let Err(e) = r {
                left.push(format!("{ns} ({e})"));
            }
        }
        left
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for l in self.delete() {
            eprintln!("warn  namespace {l} is left; delete it with `ip netns del`");
        }
    }
}

/// Deletes the namespaces of earlier probes whose process is gone (one
/// killed with SIGKILL could not clean up); returns their names.
pub fn sweep_stale() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut gone = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let r = run(
                Command::new("ip").args(["netns", "del", &name]),
                None,
                Duration::from_secs(5),
            );
            if r.is_ok() {
                gone.push(name);
            }
        }
    }
    gone
}
