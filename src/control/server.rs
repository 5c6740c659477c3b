//! The daemon's side of the control socket.

use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{MAX_REQUEST, Request, Response};

/// A request on its way to the core, with the way back.
pub type ControlMsg = (Request, oneshot::Sender<Response>);

/// Most control connections served at once. The CLI opens one per command
/// and closes it at once; past this a connection is told the socket is busy
/// and closed.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection that sends no complete request line for this long (after
/// connecting, or after its last answer) is closed, and so is one that does
/// not take its answer for this long: an idle or stuck client frees its
/// slot. The CLI sends at once; a person typing JSON into `socat` has ten
/// seconds per line.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long accepting pauses after the kernel refused to give a descriptor
/// (instead of spinning a core while the connection waits in the queue).
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// The bound control socket; the file is removed on drop, if it is still
/// the socket this daemon bound.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file bound, so that exit removes it
    /// and nothing put in its place.
    ident: Option<(u64, u64)>,
    /// Group whose members may talk to the daemon (besides root and the
    /// daemon's own user).
    gid: Option<u32>,
}

/// Why the control socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    /// Another daemon answers on the path.
    #[error(
        "another sipwarden is running: its control socket {} answers; stop it first, or give this one another [daemon] socket",
        .0.display()
    )]
    Answers(PathBuf),
    /// Something other than a socket is at the path; it is left alone.
    #[error(
        "[daemon] socket {} is {what}, not a socket; refusing to replace it: remove it yourself if it is not needed, or give [daemon] socket another path",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there instead.
        what: &'static str,
    },
    /// `[daemon] socket_group` names no group.
    #[error("[daemon] socket_group: no group named {0:?} on this system")]
    NoGroup(String),
    /// A step on the file system failed: looking at the path, removing a
    /// stale socket, creating the directory, binding, setting the mode. The
    /// I/O error is part of the message, not its cause: said once.
    #[error("{step} {}: {error}", path.display())]
    Io {
        /// What was being done, e.g. "binding control socket".
        step: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// Why it failed.
        error: std::io::Error,
    },
    /// The socket could not be given to the group.
    #[error("giving {} to group {group}: {error}", path.display())]
    Chown {
        /// The socket.
        path: PathBuf,
        /// The group.
        group: String,
        /// Why.
        error: std::io::Error,
    },
}

/// The numeric id of group `name`.
fn group_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer to static storage or null; we copy
    // the id out at once. The daemon calls this once at start.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        None
    } else {
        // SAFETY: `g` is non-null and points to getgrnam's static record,
        // valid until the next getgr* call; nothing else calls one meanwhile.
        Some(unsafe { (*g).gr_gid })
    }
}

impl ControlSocket {
    /// Binds `path` (mode 0660, group `group`). Refuses when another daemon
    /// answers on it, and when something other than a socket is there (a
    /// configuration mistake must not delete a file); removes a stale
    /// socket.
    pub fn bind(path: &Path, group: Option<&str>) -> Result<ControlSocket, ControlSocketError> {
        let failed = |step, path: &Path| {
            let path = path.to_path_buf();
            move |error| ControlSocketError::Io { step, path, error }
        };
        // lstat: a symbolic link is not followed, nor removed.
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ControlSocketError::Answers(path.to_path_buf()));
                }
                // Nobody answers: a socket left by a daemon that died.
                std::fs::remove_file(path)
                    .map_err(failed("removing the stale control socket", path))?;
            }
            Ok(m) => {
                return Err(ControlSocketError::NotASocket {
                    path: path.to_path_buf(),
                    what: what_is(&m.file_type()),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("looking at", path)(e)),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed("creating", dir))?;
        }
        let listener = UnixListener::bind(path).map_err(failed("binding control socket", path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(failed("setting mode 0660 on", path))?;
        let gid = match group {
            Some(g) => {
                let gid = group_id(g).ok_or_else(|| ControlSocketError::NoGroup(g.to_string()))?;
                std::os::unix::fs::chown(path, None, Some(gid)).map_err(|error| {
                    ControlSocketError::Chown {
                        path: path.to_path_buf(),
                        group: g.to_string(),
                        error,
                    }
                })?;
                Some(gid)
            }
            None => None,
        };
        let ident = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            ident,
            gid,
        })
    }

    /// Serves connections; runs until the daemon drops the task.
    pub async fn serve(self, core: mpsc::Sender<ControlMsg>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        // SAFETY: geteuid has no preconditions and cannot fail.
        let own_uid = unsafe { libc::geteuid() };
        let mut refused = 0u64;
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket: cannot accept a connection ({e})");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        "control socket: {MAX_CONNECTIONS} connections open; refused {refused} so far (idle ones close after {} s)",
                        IDLE_TIMEOUT.as_secs()
                    );
                }
                // Best effort: a fresh socket's buffer takes the whole line.
                let _ = stream.try_write(&busy_line());
                continue;
            };
            let allowed = match stream.peer_cred() {
                Ok(c) => {
                    c.uid() == 0 || c.uid() == own_uid || self.gid.is_some_and(|g| c.gid() == g)
                }
                Err(_) => false,
            };
            let core = core.clone();
            tokio::spawn(async move {
                let _permit = permit;
                serve_conn(stream, allowed, core).await;
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Only the socket bound at start: a file put at the path since (by
        // hand, or another daemon's socket) stays.
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && Some((m.dev(), m.ino())) == self.ident);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What a file type is, for a message.
fn what_is(t: &std::fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "something other than a socket"
    }
}

/// The answer of a full socket, as one line.
fn busy_line() -> Vec<u8> {
    let mut line = serde_json::to_vec(&Response::error(format!(
        "control socket busy: {MAX_CONNECTIONS} connections are open (the most it serves); idle ones are closed after {} s, try again",
        IDLE_TIMEOUT.as_secs()
    )))
    .unwrap_or_else(|_| br#"{"ok":false,"error":"control socket busy"}"#.to_vec());
    line.push(b'\n');
    line
}

async fn serve_conn(stream: UnixStream, allowed: bool, core: mpsc::Sender<ControlMsg>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut rd).take(MAX_REQUEST as u64 + 1);
        let read = limited.read_until(b'\n', &mut line);
        // Idle (or a line that never ends): close, freeing the slot.
        let n = match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let resp = if !allowed {
            Response::error(
                "permission denied: the control socket serves root, the daemon's user and [daemon] socket_group",
            )
        } else if line.len() > MAX_REQUEST {
            Response::error(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => ask(&core, req).await,
                Err(e) => Response::error(format!("bad request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&resp)
            .unwrap_or_else(|_| br#"{"ok":false,"error":"encoding failed"}"#.to_vec());
        out.push(b'\n');
        let sent = tokio::time::timeout(IDLE_TIMEOUT, wr.write_all(&out)).await;
        if !matches!(sent, Ok(Ok(()))) || !allowed || line.len() > MAX_REQUEST {
            return;
        }
    }
}

async fn ask(core: &mpsc::Sender<ControlMsg>, req: Request) -> Response {
    let (tx, rx) = oneshot::channel();
    if core.send((req, tx)).await.is_err() {
        return Response::error("the daemon is stopping");
    }
    rx.await
        .unwrap_or_else(|_| Response::error("the daemon is stopping"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refusal keeps the message it had as a string: what is there,
    /// what to do.
    #[tokio::test]
    async fn bind_refusals_say_what_is_there_and_what_to_do() {
        let dir = std::env::temp_dir().join(format!("sipwarden-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file.sock");
        std::fs::write(&file, b"keep me").unwrap();
        let e = ControlSocket::bind(&file, None).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "[daemon] socket {} is a regular file, not a socket; refusing to replace it: remove it yourself if it is not needed, or give [daemon] socket another path",
                file.display()
            )
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        let sock = dir.join("ctl.sock");
        let first = ControlSocket::bind(&sock, None).unwrap();
        let e = ControlSocket::bind(&sock, None).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "another sipwarden is running: its control socket {} answers; stop it first, or give this one another [daemon] socket",
                sock.display()
            )
        );
        drop(first);

        let e = ControlSocket::bind(&dir.join("g.sock"), Some("no-such-group-x"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "[daemon] socket_group: no group named \"no-such-group-x\" on this system"
        );

        let e = ControlSocket::bind(&file.join("under-a-file.sock"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "looking at {}: ",
                file.join("under-a-file.sock").display()
            )),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
