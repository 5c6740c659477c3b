//! One file of a followed path: opened only when it is a regular file, read
//! from an offset, and checked for having been truncated under it.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::lines::LineSplitter;

/// Bytes before the read offset compared on each wake-up: a file truncated
/// and written again past the offset (copytruncate while the follower was
/// busy) no longer has them there. Long enough to hold a whole line, with its
/// timestamp, of a typical log.
const TAIL: usize = 256;

/// Which file a handle or a path is: device, inode, and birth time where
/// the file system keeps one (an inode number is reused once its file is
/// deleted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ident {
    dev: u64,
    ino: u64,
    born: Option<SystemTime>,
}

impl Ident {
    pub(super) fn of(m: &Metadata) -> Ident {
        Ident {
            dev: m.dev(),
            ino: m.ino(),
            born: m.created().ok(),
        }
    }
}

/// One file being read: the one at the path, or one rotated away.
pub(super) struct Generation {
    file: File,
    pub(super) ident: Ident,
    /// Where it was found (for messages).
    pub(super) name: PathBuf,
    pos: u64,
    pub(super) lines: LineSplitter,
    /// The last bytes before `pos` (at most [`TAIL`]).
    tail: Vec<u8>,
}

impl Generation {
    pub(super) fn new(file: File, ident: Ident, name: PathBuf, pos: u64) -> Generation {
        let mut g = Generation {
            file,
            ident,
            name,
            pos,
            lines: LineSplitter::default(),
            tail: Vec::new(),
        };
        let t = pos.min(TAIL as u64) as usize;
        let mut tail = vec![0; t];
        // Without it only a file shorter than `pos` shows a truncation.
        if g.file.read_exact_at(&mut tail, pos - t as u64).is_ok() {
            g.tail = tail;
        }
        g
    }

    /// Reads on from the offset.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        self.keep_tail(&buf[..n]);
        Ok(n)
    }

    /// Reads again from the start (the file was truncated).
    pub(super) fn restart(&mut self) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.pos = 0;
        self.tail.clear();
        // The rest of a half-read line went with the truncation: a line cut
        // short could name the wrong address.
        self.lines.clear();
        Ok(())
    }

    fn keep_tail(&mut self, data: &[u8]) {
        if data.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - TAIL..]);
        } else {
            let excess = (self.tail.len() + data.len()).saturating_sub(TAIL);
            self.tail.drain(..excess);
            self.tail.extend_from_slice(data);
        }
    }

    /// Whether the bytes before `pos` are no longer the ones read: the file
    /// was truncated, and perhaps written again past `pos` since.
    pub(super) fn rewritten(&self) -> std::io::Result<bool> {
        if self.pos == 0 {
            return Ok(false);
        }
        if self.tail.is_empty() {
            return Ok(self.file.metadata()?.len() < self.pos);
        }
        let mut now = [0u8; TAIL];
        let now = &mut now[..self.tail.len()];
        match self
            .file
            .read_exact_at(now, self.pos - self.tail.len() as u64)
        {
            Ok(()) => Ok(*now != *self.tail),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// Why a path was not opened.
pub(super) enum Refusal {
    Io(std::io::Error),
    /// It is something else than a regular file (what it is).
    NotRegular(&'static str),
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Refusal {
        Refusal::Io(e)
    }
}

/// What `m` is when it is not a regular file.
fn not_regular(m: &Metadata) -> Option<&'static str> {
    let t = m.file_type();
    if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("something other than a file")
    }
}

/// Opens `path` for reading if it is a regular file.
pub(super) fn open_regular(path: &Path) -> Result<(File, Metadata), Refusal> {
    // A look first: opening a device can do something by itself (a tape
    // rewinds, a watchdog arms), and a FIFO opened on every check would wake
    // the directory watch (IN_OPEN) over and over.
    if let Some(kind) = not_regular(&std::fs::metadata(path)?) {
        return Err(Refusal::NotRegular(kind));
    }
    // The look races with the path changing, so: non-blocking (a FIFO
    // swapped in since returns at once instead of waiting for a writer), no
    // controlling terminal, and the descriptor's own type decides.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let m = file.metadata()?;
    match not_regular(&m) {
        Some(kind) => Err(Refusal::NotRegular(kind)),
        None => Ok((file, m)),
    }
}
