//! Names only one running process can hold: abstract unix sockets.
//!
//! A lock file lives on an inode anyone with access can delete: after `rm -rf`
//! of the state directory the lock still exists, but nothing on disk leads a
//! second daemon to it. An abstract socket name lives in the network
//! namespace's socket table instead: nobody can remove it from the file
//! system, and it vanishes with the process that bound it. sipwarden holds
//! one for its state directory (`sipwarden-state:<dir>`) and one for its
//! nftables table (`sipwarden-nft:<table>`; tables are per namespace too).
//!
//! The holder answers each peer that connects with one line saying what it
//! holds; the kernel says who the peer is (pid and uid, `SO_PEERCRED`), so a
//! refusal can name the running daemon. Any local user can bind any abstract
//! name: a holder that is neither root nor this process's user is reported
//! as such, and callers decide (they treat it as a squatter, not a daemon).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Longest key used as is in a name; longer ones are hashed (the kernel
/// takes 107 bytes per abstract name, an nftables comment 128).
const MAX_KEY: usize = 80;

/// How long a peer waits for the holder's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Longest answer read from a holder.
const MAX_ANSWER: usize = 1024;

/// A name this process holds until the value is dropped.
#[derive(Debug)]
pub struct Claim {
    name: String,
    listener: Arc<UnixListener>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Who holds a name another process asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its process id, as the kernel reports it (`None` when the holder is
    /// in a pid namespace this process cannot see into).
    pub pid: Option<u32>,
    /// Its user id.
    pub uid: Option<u32>,
    /// What it says it holds (its text, cleaned of control characters).
    pub says: String,
}

impl Holder {
    /// Whether the holder runs as root or as this process's user: only such
    /// a process can be a sipwarden whose state or table this one must
    /// respect. Anyone else holding the name is squatting it.
    pub fn trusted(&self) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        self.uid.is_some_and(|u| u == 0 || u == me)
    }
}

impl std::fmt::Display for Holder {
    /// `pid N`, with the uid when it is neither root nor ours.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(p) => write!(f, "pid {p}")?,
            None => write!(f, "pid unknown")?,
        }
        match self.uid {
            Some(u) if !self.trusted() => write!(f, ", uid {u}"),
            _ => Ok(()),
        }
    }
}

/// The outcome of `take`.
#[derive(Debug)]
pub enum Taken {
    /// This process holds the name now.
    Mine(Claim),
    /// Another live process holds it.
    Held(Holder),
}

/// The abstract name for `prefix` and `key`: `prefix:key` when the key is
/// short and plain, else `prefix:#<hash of key>`. The part after the colon
/// depends on the key alone, so one key gives matching names under every
/// prefix (a table's owner mark leads to its owner's state lock).
pub fn name(prefix: &str, key: &str) -> String {
    format!("{prefix}:{}", key_part(key))
}

/// The key as it appears in names: itself, or `#` and its hash when it is
/// long or holds quotes, backslashes or control characters.
fn key_part(key: &str) -> String {
    let plain = key.len() <= MAX_KEY
        && !key.starts_with('#')
        && key
            .chars()
            .all(|c| !c.is_control() && c != '"' && c != '\\');
    if plain {
        key.to_string()
    } else {
        format!("#{:016x}", fnv1a(key.as_bytes()))
    }
}

/// FNV-1a, 64 bits: stable across builds and versions (unlike std's
/// hasher), so two sipwarden versions agree on a long path's name.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn addr(name: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

/// Takes `name`, answering peers with `answer`; or says who holds it.
pub fn take(name: &str, answer: &str) -> std::io::Result<Taken> {
    let a = addr(name)?;
    // A holder that exits between our bind and our probe frees the name:
    // try again a few times.
    for _ in 0..3 {
        match UnixListener::bind_addr(&a) {
            Ok(l) => return Ok(Taken::Mine(Claim::serve(name, l, answer)?)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if let Some(h) = probe(name) {
                    return Ok(Taken::Held(h));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("abstract socket @{name} is bound but nobody answers on it"),
    ))
}

/// Who holds `name`, or `None` when nobody does.
pub fn probe(name: &str) -> Option<Holder> {
    let a = addr(name).ok()?;
    let mut s = UnixStream::connect_addr(&a).ok()?;
    let (pid, uid) = peer_cred(&s);
    let _ = s.set_read_timeout(Some(ANSWER_WAIT));
    let mut buf = Vec::new();
    let _ = (&mut s)
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut buf)
        .map(|_| ());
    let says: String = String::from_utf8_lossy(&buf)
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(Holder { pid, uid, says })
}

/// The peer's pid and uid, from the kernel.
fn peer_cred(s: &UnixStream) -> (Option<u32>, Option<u32>) {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and
    // the descriptor is a connected unix socket owned by `s`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return (None, None);
    }
    // A pid of 0: the holder lives in a pid namespace we cannot see.
    ((cred.pid > 0).then_some(cred.pid as u32), Some(cred.uid))
}

impl Claim {
    fn serve(name: &str, l: UnixListener, answer: &str) -> std::io::Result<Claim> {
        let listener = Arc::new(l);
        let stop = Arc::new(AtomicBool::new(false));
        let (l, halt) = (listener.clone(), stop.clone());
        let line = format!("{answer}\n");
        let thread = std::thread::Builder::new()
            .name("claim".into())
            .spawn(move || {
                loop {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_write_timeout(Some(ANSWER_WAIT));
                            let _ = s.write_all(line.as_bytes());
                        }
                        // `Drop` shut the listener down.
                        Err(_) if halt.load(Ordering::Acquire) => break,
                        // Out of descriptors, say: the name stays held.
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })?;
        Ok(Claim {
            name: name.to_string(),
            listener,
            stop,
            thread: Some(thread),
        })
    }

    /// The abstract name held.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // SAFETY: the descriptor belongs to `self.listener`, alive for this
        // whole call; shutting it down makes the thread's blocked accept()
        // return an error, so the thread sees `stop` and ends. The name is
        // freed when the last handle (ours, just after) closes it.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(tag: &str) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        name(
            "sipwarden-test",
            &format!(
                "{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        )
    }

    #[test]
    fn a_held_name_names_its_holder_and_is_freed_on_drop() {
        let n = unique("held");
        let Taken::Mine(c) = take(&n, "sipwarden pid=1 state_dir=/x\u{1b}[2J").unwrap() else {
            panic!("fresh name is free");
        };
        assert_eq!(c.name(), n);
        match take(&n, "second").unwrap() {
            Taken::Held(h) => {
                assert_eq!(h.pid, Some(std::process::id()));
                assert!(h.trusted(), "our own uid is trusted: {h:?}");
                // The holder's text is data: control characters are removed.
                assert_eq!(h.says, "sipwarden pid=1 state_dir=/x [2J");
                assert_eq!(h.to_string(), format!("pid {}", std::process::id()));
            }
            Taken::Mine(_) => panic!("a held name must not be taken twice"),
        }
        drop(c);
        assert!(probe(&n).is_none(), "dropping the claim frees the name");
        assert!(matches!(take(&n, "third").unwrap(), Taken::Mine(_)));
    }

    #[test]
    fn long_keys_are_hashed_stably() {
        let long = "/".repeat(300);
        let a = name("sipwarden-state", &long);
        assert_eq!(a.len(), "sipwarden-state:#".len() + 16, "{a}");
        assert_eq!(a, name("sipwarden-state", &long));
        assert_ne!(a, name("sipwarden-state", &"/".repeat(301)));
        assert_eq!(
            name("sipwarden-state", "/var/lib/sipwarden"),
            "sipwarden-state:/var/lib/sipwarden"
        );
        assert_eq!(
            name("sipwarden", "/a\"b").strip_prefix("sipwarden:"),
            name("sipwarden-state", "/a\"b").strip_prefix("sipwarden-state:"),
        );
        assert!(name("sipwarden", "/a\"b").starts_with("sipwarden:#"));
        // Known FNV-1a value, so the hash never changes between versions.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
