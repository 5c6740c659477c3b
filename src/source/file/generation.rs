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
            // Followed from its end (or resumed) inside a line being
            // written: that line's rest is no line.
            if tail.last().is_some_and(|&b| b != b'\n') {
                g.lines.start_mid_line();
            }
            g.tail = tail;
        }
        g
    }

    /// The read offset.
    pub(super) fn pos(&self) -> u64 {
        self.pos
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
    /// A file of a kernel pseudo file system (which one).
    Pseudo(&'static str),
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

/// Kernel pseudo file systems (`f_type` of `statfs`, from
/// `linux/magic.h`): their "regular files" are kernel state, not logs.
/// Reading one can fail forever (`/proc/self/mem`: EIO), never end, or
/// take something away (`/proc/kmsg` hands each kernel message to one
/// reader only).
const PSEUDO_FS: [(u64, &str); 18] = [
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroupfs"),
    (0x6367_7270, "cgroup2fs"),
    (0xcafe_4a11, "bpffs"),
    (0x6265_6570, "configfs"),
    (0x6165_676c, "pstorefs"),
    (0xde5e_81e4, "efivarfs"),
    (0x1cd1, "devpts"),
    (0x6573_5543, "fusectl"),
    (0x4249_4e4d, "binfmt_misc"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x6e73_6673, "nsfs"),
    (0x0765_5821, "resctrl"),
];

/// The pseudo file system `f_type` names, if it is one.
fn pseudo_fs(f_type: u64) -> Option<&'static str> {
    // `f_type` is a signed word on some architectures: compare 32 bits.
    let t = f_type & 0xffff_ffff;
    PSEUDO_FS.iter().find(|(m, _)| *m == t).map(|(_, n)| *n)
}

/// The file system of `path` (following links), when it is a pseudo one.
pub(super) fn pseudo_at(path: &Path) -> Option<&'static str> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: zeroed memory is a valid `statfs` (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable `statfs`
    // that outlives the call.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (r == 0).then(|| pseudo_fs(st.f_type as u64)).flatten()
}

/// The file system of an open file, when it is a pseudo one.
fn pseudo_of(file: &File) -> Option<&'static str> {
    use std::os::fd::AsRawFd;
    // SAFETY: zeroed memory is a valid `statfs` (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the duration of the call, and `st`
    // a writable `statfs` that outlives it.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    (r == 0).then(|| pseudo_fs(st.f_type as u64)).flatten()
}

/// Opens `path` for reading if it is a regular file of a real file system.
pub(super) fn open_regular(path: &Path) -> Result<(File, Metadata), Refusal> {
    // A look first: opening a device can do something by itself (a tape
    // rewinds, a watchdog arms), and a FIFO opened on every check would wake
    // the directory watch (IN_OPEN) over and over.
    if let Some(kind) = not_regular(&std::fs::metadata(path)?) {
        return Err(Refusal::NotRegular(kind));
    }
    if let Some(fs) = pseudo_at(path) {
        return Err(Refusal::Pseudo(fs));
    }
    // The look races with the path changing, so: non-blocking (a FIFO
    // swapped in since returns at once instead of waiting for a writer), no
    // controlling terminal, and the descriptor's own type decides.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let m = file.metadata()?;
    if let Some(kind) = not_regular(&m) {
        return Err(Refusal::NotRegular(kind));
    }
    match pseudo_of(&file) {
        Some(fs) => Err(Refusal::Pseudo(fs)),
        None => Ok((file, m)),
    }
}
