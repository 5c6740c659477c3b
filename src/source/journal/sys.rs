//! A small binding to libsystemd's sd-journal API, loaded at run time.
//!
//! `libsystemd.so.0` is opened with `dlopen` the first time a journal is
//! read, never at link time: the binary stays free of a build dependency on
//! `libsystemd-dev` (and of its licence), and starts where libsystemd is
//! absent; only journal jails then fail, saying what to install.
//!
//! Only what a follower needs is bound: opening (the system journal, a
//! directory, files), matches, seeking (head, tail, cursor), stepping,
//! reading an entry's fields and times, cursors, and waiting for changes.
//! A [`Journal`] is used by the one thread that opened it (sd-journal is not
//! thread-safe), so it is neither `Send` nor `Sync`.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;
use std::sync::OnceLock;

/// The library's name, as Debian's `libsystemd0` ships it.
pub const LIBRARY: &str = "libsystemd.so.0";

/// `sd_journal_open` flags (sd-journal.h), as fail2ban's `journalflags`
/// takes them.
pub mod flags {
    /// Entries of this machine only.
    pub const LOCAL_ONLY: i32 = 1 << 0;
    /// Volatile (/run) journal files only.
    pub const RUNTIME_ONLY: i32 = 1 << 1;
    /// System services and the kernel.
    pub const SYSTEM: i32 = 1 << 2;
    /// The current user's journal.
    pub const CURRENT_USER: i32 = 1 << 3;
}

/// What `sd_journal_wait` saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing within the timeout.
    Nop,
    /// Entries were appended.
    Append,
    /// Files were added or removed (rotation, vacuuming).
    Invalidate,
}

/// Why the journal cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// libsystemd is not installed (or lacks a symbol).
    #[error(
        "{LIBRARY} cannot be loaded ({0}); journal jails need libsystemd: install it (Debian: apt install libsystemd0)"
    )]
    NoLibrary(String),
    /// A call returned an error (`-errno`).
    #[error("{call}: {}", std::io::Error::from_raw_os_error(*errno))]
    Call {
        /// The sd-journal function.
        call: &'static str,
        /// The error number.
        errno: i32,
    },
    /// A path or match holding a NUL byte.
    #[error("{0:?} holds a NUL byte")]
    Nul(String),
}

type Sd = c_void;

// The C prototypes of sd-journal.h.
type FnOpen = unsafe extern "C" fn(*mut *mut Sd, c_int) -> c_int;
type FnOpenDirectory = unsafe extern "C" fn(*mut *mut Sd, *const c_char, c_int) -> c_int;
type FnOpenFiles = unsafe extern "C" fn(*mut *mut Sd, *const *const c_char, c_int) -> c_int;
type FnClose = unsafe extern "C" fn(*mut Sd);
type FnAddMatch = unsafe extern "C" fn(*mut Sd, *const c_void, usize) -> c_int;
type FnAddDisjunction = unsafe extern "C" fn(*mut Sd) -> c_int;
type FnFlushMatches = unsafe extern "C" fn(*mut Sd);
type FnSeekHead = unsafe extern "C" fn(*mut Sd) -> c_int;
type FnSeekTail = unsafe extern "C" fn(*mut Sd) -> c_int;
type FnSeekRealtime = unsafe extern "C" fn(*mut Sd, u64) -> c_int;
type FnSeekCursor = unsafe extern "C" fn(*mut Sd, *const c_char) -> c_int;
type FnTestCursor = unsafe extern "C" fn(*mut Sd, *const c_char) -> c_int;
type FnGetCursor = unsafe extern "C" fn(*mut Sd, *mut *mut c_char) -> c_int;
type FnNext = unsafe extern "C" fn(*mut Sd) -> c_int;
type FnPrevious = unsafe extern "C" fn(*mut Sd) -> c_int;
type FnGetRealtimeUsec = unsafe extern "C" fn(*mut Sd, *mut u64) -> c_int;
type FnGetMonotonicUsec = unsafe extern "C" fn(*mut Sd, *mut u64, *mut [u8; 16]) -> c_int;
type FnSetDataThreshold = unsafe extern "C" fn(*mut Sd, usize) -> c_int;
type FnRestartData = unsafe extern "C" fn(*mut Sd);
type FnEnumerateData = unsafe extern "C" fn(*mut Sd, *mut *const c_void, *mut usize) -> c_int;
type FnProcess = unsafe extern "C" fn(*mut Sd) -> c_int;
type FnWait = unsafe extern "C" fn(*mut Sd, u64) -> c_int;

/// The functions used, resolved once per process.
struct Lib {
    open: FnOpen,
    open_directory: FnOpenDirectory,
    open_files: FnOpenFiles,
    close: FnClose,
    add_match: FnAddMatch,
    add_disjunction: FnAddDisjunction,
    flush_matches: FnFlushMatches,
    seek_head: FnSeekHead,
    seek_tail: FnSeekTail,
    seek_realtime_usec: FnSeekRealtime,
    seek_cursor: FnSeekCursor,
    test_cursor: FnTestCursor,
    get_cursor: FnGetCursor,
    next: FnNext,
    previous: FnPrevious,
    get_realtime_usec: FnGetRealtimeUsec,
    get_monotonic_usec: FnGetMonotonicUsec,
    set_data_threshold: FnSetDataThreshold,
    restart_data: FnRestartData,
    enumerate_data: FnEnumerateData,
    process: FnProcess,
    wait: FnWait,
}

/// The last `dlerror()` text, or `what` when there is none.
fn dl_error(what: &str) -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc,
    // valid until the next dl* call on this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        return what.to_string();
    }
    // SAFETY: non-NULL, NUL-terminated (see above).
    unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
}

impl Lib {
    fn load() -> Result<Lib, JournalError> {
        let name = CString::new(LIBRARY).map_err(|_| JournalError::Nul(LIBRARY.into()))?;
        // SAFETY: a valid NUL-terminated name; libsystemd's initialisers are
        // safe to run on any thread. The handle is never closed, so the
        // function pointers below stay valid for the life of the process.
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            return Err(JournalError::NoLibrary(dl_error("dlopen failed")));
        }
        let sym = |s: &str| -> Result<*mut c_void, JournalError> {
            let c = CString::new(s).map_err(|_| JournalError::Nul(s.into()))?;
            // SAFETY: `h` is a live handle from dlopen, `c` NUL-terminated.
            let p = unsafe { libc::dlsym(h, c.as_ptr()) };
            if p.is_null() {
                return Err(JournalError::NoLibrary(format!("no symbol {s}")));
            }
            Ok(p)
        };
        macro_rules! f {
            ($name:literal, $t:ty) => {
                // SAFETY: the symbol is the sd-journal function of that
                // name, whose C prototype (sd-journal.h) is the field's
                // type; a data pointer and a function pointer have the same
                // size and representation on every platform Linux runs on.
                unsafe { std::mem::transmute::<*mut c_void, $t>(sym($name)?) }
            };
        }
        Ok(Lib {
            open: f!("sd_journal_open", FnOpen),
            open_directory: f!("sd_journal_open_directory", FnOpenDirectory),
            open_files: f!("sd_journal_open_files", FnOpenFiles),
            close: f!("sd_journal_close", FnClose),
            add_match: f!("sd_journal_add_match", FnAddMatch),
            add_disjunction: f!("sd_journal_add_disjunction", FnAddDisjunction),
            flush_matches: f!("sd_journal_flush_matches", FnFlushMatches),
            seek_head: f!("sd_journal_seek_head", FnSeekHead),
            seek_tail: f!("sd_journal_seek_tail", FnSeekTail),
            seek_realtime_usec: f!("sd_journal_seek_realtime_usec", FnSeekRealtime),
            seek_cursor: f!("sd_journal_seek_cursor", FnSeekCursor),
            test_cursor: f!("sd_journal_test_cursor", FnTestCursor),
            get_cursor: f!("sd_journal_get_cursor", FnGetCursor),
            next: f!("sd_journal_next", FnNext),
            previous: f!("sd_journal_previous", FnPrevious),
            get_realtime_usec: f!("sd_journal_get_realtime_usec", FnGetRealtimeUsec),
            get_monotonic_usec: f!("sd_journal_get_monotonic_usec", FnGetMonotonicUsec),
            set_data_threshold: f!("sd_journal_set_data_threshold", FnSetDataThreshold),
            restart_data: f!("sd_journal_restart_data", FnRestartData),
            enumerate_data: f!("sd_journal_enumerate_data", FnEnumerateData),
            process: f!("sd_journal_process", FnProcess),
            wait: f!("sd_journal_wait", FnWait),
        })
    }
}

/// libsystemd, loaded once; the error is kept and given to every caller.
fn lib() -> Result<&'static Lib, JournalError> {
    static LIB: OnceLock<Result<Lib, JournalError>> = OnceLock::new();
    LIB.get_or_init(Lib::load).as_ref().map_err(Clone::clone)
}

/// Whether libsystemd can be loaded here (for `doctor`).
pub fn available() -> Result<(), JournalError> {
    lib().map(|_| ())
}

/// Which journal to open.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// The host's journal (`sd_journal_open`).
    System,
    /// The journal files of one directory (`journal_dir`, fail2ban's
    /// `journalpath`).
    Directory(std::path::PathBuf),
    /// These journal files (fail2ban's `journalfiles`).
    Files(Vec<std::path::PathBuf>),
}

/// An open journal. Closed on drop.
pub struct Journal {
    lib: &'static Lib,
    j: *mut Sd,
}

fn cstr(s: &str) -> Result<CString, JournalError> {
    CString::new(s).map_err(|_| JournalError::Nul(s.into()))
}

fn path_cstr(p: &Path) -> Result<CString, JournalError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JournalError::Nul(p.display().to_string()))
}

fn check(call: &'static str, r: c_int) -> Result<c_int, JournalError> {
    if r < 0 {
        Err(JournalError::Call { call, errno: -r })
    } else {
        Ok(r)
    }
}

/// Longest field value read (`sd_journal_set_data_threshold`): longer ones
/// are cut (uncompressed); a log line is never this long.
pub const DATA_THRESHOLD: usize = 64 * 1024;

impl Journal {
    /// Opens the journal at `loc`; `flags` apply to directories and files
    /// too (fail2ban's `journalflags`).
    pub fn open(loc: &Location, flags: i32) -> Result<Journal, JournalError> {
        let lib = lib()?;
        let mut j: *mut Sd = std::ptr::null_mut();
        let r = match loc {
            // SAFETY: `j` is a valid out-pointer.
            Location::System => unsafe { (lib.open)(&mut j, flags) },
            Location::Directory(d) => {
                let c = path_cstr(d)?;
                // SAFETY: `c` is NUL-terminated and outlives the call; `j` a
                // valid out-pointer.
                unsafe { (lib.open_directory)(&mut j, c.as_ptr(), flags) }
            }
            Location::Files(files) => {
                let cs = files
                    .iter()
                    .map(|p| path_cstr(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut ptrs: Vec<*const c_char> = cs.iter().map(|c| c.as_ptr()).collect();
                ptrs.push(std::ptr::null());
                // SAFETY: a NULL-terminated array of NUL-terminated strings,
                // all alive during the call (libsystemd copies them).
                unsafe { (lib.open_files)(&mut j, ptrs.as_ptr(), flags) }
            }
        };
        check("sd_journal_open", r)?;
        if j.is_null() {
            return Err(JournalError::Call {
                call: "sd_journal_open",
                errno: libc::EINVAL,
            });
        }
        let journal = Journal { lib, j };
        // SAFETY: `j` is the open journal.
        check("sd_journal_set_data_threshold", unsafe {
            (lib.set_data_threshold)(j, DATA_THRESHOLD)
        })?;
        Ok(journal)
    }

    /// Adds a `FIELD=value` match (ANDed with the group's others of other
    /// fields, ORed with those of the same field).
    pub fn add_match(&mut self, m: &str) -> Result<(), JournalError> {
        // SAFETY: the open journal; data and length describe `m`'s bytes,
        // which libsystemd copies.
        check("sd_journal_add_match", unsafe {
            (self.lib.add_match)(self.j, m.as_ptr().cast(), m.len())
        })
        .map(drop)
    }

    /// Starts a new group of matches, ORed with the ones before.
    pub fn add_disjunction(&mut self) -> Result<(), JournalError> {
        // SAFETY: the open journal.
        check("sd_journal_add_disjunction", unsafe {
            (self.lib.add_disjunction)(self.j)
        })
        .map(drop)
    }

    /// Drops every match.
    pub fn flush_matches(&mut self) {
        // SAFETY: the open journal.
        unsafe { (self.lib.flush_matches)(self.j) }
    }

    /// Before the first entry.
    pub fn seek_head(&mut self) -> Result<(), JournalError> {
        // SAFETY: the open journal.
        check("sd_journal_seek_head", unsafe {
            (self.lib.seek_head)(self.j)
        })
        .map(drop)
    }

    /// Before the first entry written at or after `usec` (µs since the
    /// epoch, the journal's own `__REALTIME_TIMESTAMP`).
    pub fn seek_realtime_usec(&mut self, usec: u64) -> Result<(), JournalError> {
        // SAFETY: the open journal; the time is a plain value.
        check("sd_journal_seek_realtime_usec", unsafe {
            (self.lib.seek_realtime_usec)(self.j, usec)
        })
        .map(drop)
    }

    /// After the last entry.
    pub fn seek_tail(&mut self) -> Result<(), JournalError> {
        // SAFETY: the open journal.
        check("sd_journal_seek_tail", unsafe {
            (self.lib.seek_tail)(self.j)
        })
        .map(drop)
    }

    /// At the entry of `cursor`, or the nearest one when it is gone; the
    /// next [`next_entry`](Self::next_entry) lands on it.
    pub fn seek_cursor(&mut self, cursor: &str) -> Result<(), JournalError> {
        let c = cstr(cursor)?;
        // SAFETY: the open journal; `c` NUL-terminated, alive during the call.
        check("sd_journal_seek_cursor", unsafe {
            (self.lib.seek_cursor)(self.j, c.as_ptr())
        })
        .map(drop)
    }

    /// Whether the current entry is the one of `cursor`.
    pub fn test_cursor(&mut self, cursor: &str) -> Result<bool, JournalError> {
        let c = cstr(cursor)?;
        // SAFETY: as for seek_cursor.
        check("sd_journal_test_cursor", unsafe {
            (self.lib.test_cursor)(self.j, c.as_ptr())
        })
        .map(|r| r > 0)
    }

    /// The current entry's cursor.
    pub fn cursor(&mut self) -> Result<String, JournalError> {
        let mut p: *mut c_char = std::ptr::null_mut();
        // SAFETY: the open journal; `p` a valid out-pointer.
        check("sd_journal_get_cursor", unsafe {
            (self.lib.get_cursor)(self.j, &mut p)
        })?;
        if p.is_null() {
            return Err(JournalError::Call {
                call: "sd_journal_get_cursor",
                errno: libc::EINVAL,
            });
        }
        // SAFETY: on success `p` is a NUL-terminated string malloc'ed by
        // libsystemd for the caller, copied here and then freed once.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        // SAFETY: see above; freed with the allocator that made it.
        unsafe { libc::free(p.cast()) };
        Ok(s)
    }

    /// Steps to the next entry; false at the end.
    pub fn next_entry(&mut self) -> Result<bool, JournalError> {
        // SAFETY: the open journal.
        check("sd_journal_next", unsafe { (self.lib.next)(self.j) }).map(|r| r > 0)
    }

    /// Steps to the previous entry; false at the start.
    pub fn previous_entry(&mut self) -> Result<bool, JournalError> {
        // SAFETY: the open journal.
        check("sd_journal_previous", unsafe {
            (self.lib.previous)(self.j)
        })
        .map(|r| r > 0)
    }

    /// The current entry's `__REALTIME_TIMESTAMP` (µs since the epoch).
    pub fn realtime_usec(&mut self) -> Result<u64, JournalError> {
        let mut t = 0u64;
        // SAFETY: the open journal; `t` a valid out-pointer.
        check("sd_journal_get_realtime_usec", unsafe {
            (self.lib.get_realtime_usec)(self.j, &mut t)
        })?;
        Ok(t)
    }

    /// The current entry's `__MONOTONIC_TIMESTAMP` (µs since its boot).
    pub fn monotonic_usec(&mut self) -> Result<u64, JournalError> {
        let mut t = 0u64;
        let mut boot = [0u8; 16];
        // SAFETY: the open journal; `t` and `boot` (an sd_id128_t, 16
        // bytes) valid out-pointers.
        check("sd_journal_get_monotonic_usec", unsafe {
            (self.lib.get_monotonic_usec)(self.j, &mut t, &mut boot)
        })?;
        Ok(t)
    }

    /// Calls `f` with each `FIELD=value` of the current entry, in order
    /// (a field may come more than once).
    pub fn for_each_field(&mut self, mut f: impl FnMut(&[u8])) -> Result<(), JournalError> {
        // SAFETY: the open journal.
        unsafe { (self.lib.restart_data)(self.j) };
        // An entry has a bounded number of fields; the bound keeps a broken
        // file from looping forever.
        for _ in 0..65_536 {
            let mut data: *const c_void = std::ptr::null();
            let mut len = 0usize;
            // SAFETY: the open journal; valid out-pointers.
            let r = check("sd_journal_enumerate_data", unsafe {
                (self.lib.enumerate_data)(self.j, &mut data, &mut len)
            })?;
            if r == 0 || data.is_null() {
                break;
            }
            // SAFETY: on success `data` points at `len` bytes owned by the
            // journal, valid until the next call on it; used only here.
            let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
            f(bytes);
        }
        Ok(())
    }

    /// Takes in file changes after a wake-up not seen through
    /// [`wait`](Self::wait).
    pub fn process(&mut self) -> Result<Change, JournalError> {
        // SAFETY: the open journal.
        let r = check("sd_journal_process", unsafe { (self.lib.process)(self.j) })?;
        Ok(change(r))
    }

    /// Waits up to `timeout` for a change.
    pub fn wait(&mut self, timeout: std::time::Duration) -> Result<Change, JournalError> {
        let us = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX - 1);
        // SAFETY: the open journal.
        let r = check("sd_journal_wait", unsafe { (self.lib.wait)(self.j, us) })?;
        Ok(change(r))
    }
}

fn change(r: c_int) -> Change {
    match r {
        1 => Change::Append,
        2 => Change::Invalidate,
        _ => Change::Nop,
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // SAFETY: `j` was opened by this value and is closed once, here.
        unsafe { (self.lib.close)(self.j) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let e = JournalError::NoLibrary("not found".into());
        assert!(e.to_string().contains("apt install libsystemd0"), "{e}");
        let e = JournalError::Call {
            call: "sd_journal_open",
            errno: libc::ENOENT,
        };
        assert!(e.to_string().starts_with("sd_journal_open: "), "{e}");
    }

    /// Journal files named one by one (fail2ban's `journalfiles`): fields,
    /// times and cursors read back as written, and a cursor seeks back to
    /// its entry.
    #[test]
    fn files_read_back_with_their_fields_and_cursors() {
        if !crate::test_support::need("journal") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("sw-journal-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.journal");
        let e = |us: u64, comm: &str, msg: &str| {
            crate::test_support::export_entry(
                us,
                &[&format!("_COMM={comm}"), &format!("MESSAGE={msg}")],
            )
        };
        crate::test_support::write_journal(
            &f,
            &(e(1_700_000_000_000_001, "sshd", "one")
                + &e(1_700_000_000_000_002, "cron", "two")
                + &e(1_700_000_000_000_003, "sshd", "three")),
        );
        let mut j = Journal::open(&Location::Files(vec![f.clone()]), 0).unwrap();
        j.add_match("_COMM=sshd").unwrap();
        j.seek_head().unwrap();
        let mut seen = Vec::new();
        let mut cursors = Vec::new();
        while j.next_entry().unwrap() {
            let mut msg = Vec::new();
            j.for_each_field(|d| {
                if let Some(m) = d.strip_prefix(b"MESSAGE=") {
                    msg = m.to_vec();
                }
            })
            .unwrap();
            seen.push((String::from_utf8(msg).unwrap(), j.realtime_usec().unwrap()));
            cursors.push(j.cursor().unwrap());
        }
        assert_eq!(
            seen,
            [
                ("one".to_string(), 1_700_000_000_000_001),
                ("three".to_string(), 1_700_000_000_000_003)
            ]
        );
        j.seek_cursor(&cursors[0]).unwrap();
        assert!(j.next_entry().unwrap());
        assert!(j.test_cursor(&cursors[0]).unwrap());
        assert!(!j.test_cursor(&cursors[1]).unwrap());
        assert!(j.next_entry().unwrap());
        assert!(j.test_cursor(&cursors[1]).unwrap());
        assert!(!j.next_entry().unwrap());
        drop(j);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An empty directory opens and reads as an empty journal; the library
    /// is on every machine the tests run on (libsystemd0 is part of a
    /// Debian system).
    #[test]
    fn an_empty_directory_is_an_empty_journal() {
        let dir = std::env::temp_dir().join(format!("sw-journal-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut j = Journal::open(&Location::Directory(dir.clone()), 0).unwrap();
        j.add_match("_COMM=sshd").unwrap();
        j.add_disjunction().unwrap();
        j.add_match("_SYSTEMD_UNIT=ssh.service").unwrap();
        j.seek_head().unwrap();
        assert!(!j.next_entry().unwrap());
        j.seek_tail().unwrap();
        assert!(!j.previous_entry().unwrap());
        // The first wait may report the files it starts to watch.
        assert_ne!(
            j.wait(std::time::Duration::from_millis(1)).unwrap(),
            Change::Append
        );
        // A malformed match is refused, not a crash.
        assert!(j.add_match("no equals sign").is_err());
        drop(j);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
