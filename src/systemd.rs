//! systemd's readiness and watchdog protocol (`Type=notify`,
//! `WatchdogSec=`): a datagram to `$NOTIFY_SOCKET`. A few lines by hand
//! rather than a crate; without the variable (not under systemd) every
//! call does nothing.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`) to systemd, if it is listening.
pub fn notify(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        send(&path, state);
    }
}

/// Sends `state` to the socket `path` names (`@name` for an abstract one).
/// Apart from `notify` so a test hands it a path rather than setting the
/// environment, which is unsafe beside other threads.
fn send(path: &OsStr, state: &str) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        // An abstract socket name.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        None => sock.send_to(state.as_bytes(), path),
    };
    if let Err(e) = sent {
        tracing::debug!("systemd notification {state:?} not sent: {e}");
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when systemd
/// set one for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    let us: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (us > 0).then(|| Duration::from_micros(us / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_a_listening_socket() {
        let dir = std::env::temp_dir().join(format!("sw-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1");
        let mut buf = [0u8; 64];
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
