//! The `ignoreip` files (`file:/path`): read before the sources start, on
//! every reload, and again when one changes (its modification time or
//! length, looked at every [`POLL`] on the run loop's clock tick). A file
//! that cannot be read, is over [`MAX_IGNORE_FILE_BYTES`] or has a bad line
//! keeps the last good list in force (the jail set says so); a file missing
//! is told once, not at every look.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::runtime::Runtime;
use crate::jail::JailSet;
use crate::jail::ignore_file::{IgnoreFile, MAX_IGNORE_FILE_BYTES, parse_ignore_file};

/// How often the files' modification times are looked at.
pub(super) const POLL: Duration = Duration::from_secs(2);

/// What each file looked like when last read (`None`: it could not be
/// looked at).
type Stamp = Option<(Option<SystemTime>, u64)>;

/// The `ignoreip` files in use and what each looked like when last read.
#[derive(Debug, Default)]
pub(super) struct IgnoreFiles {
    seen: HashMap<PathBuf, Stamp>,
    last: Option<Instant>,
}

impl IgnoreFiles {
    /// Reads each file the jails name that changed since it was last read
    /// (every one, with `all`) and hands it to the jails. Returns whether
    /// what the jails leave alone changed.
    pub(super) fn poll(&mut self, jails: &mut JailSet, all: bool) -> bool {
        let paths = jails.ignore_files();
        self.seen.retain(|p, _| paths.contains(p));
        let mut changed = false;
        for p in paths {
            let stamp: Stamp = std::fs::metadata(&p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()));
            if !all && self.seen.get(&p) == Some(&stamp) {
                continue;
            }
            self.seen.insert(p.clone(), stamp);
            changed |= jails.set_ignore_file(&p, read(&p));
        }
        changed
    }

    /// [`IgnoreFiles::poll`] at most every [`POLL`].
    pub(super) fn due(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.duration_since(t) < POLL => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// Reads and parses one `ignoreip` file, at most [`MAX_IGNORE_FILE_BYTES`].
fn read(path: &Path) -> Result<IgnoreFile, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot be read ({e})"))?;
    let mut buf = Vec::new();
    f.take(MAX_IGNORE_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot be read ({e})"))?;
    if buf.len() as u64 > MAX_IGNORE_FILE_BYTES {
        return Err(format!(
            "larger than {MAX_IGNORE_FILE_BYTES} bytes; split the list or use wider prefixes"
        ));
    }
    let text = String::from_utf8(buf).map_err(|_| "is not UTF-8 text".to_string())?;
    parse_ignore_file(path, &text).map_err(|e| e.to_string())
}

impl Runtime {
    /// Reads the `ignoreip` files that changed (all of them, with `all`);
    /// names they add are looked up from now on.
    pub(super) fn read_ignore_files(&mut self, all: bool) {
        if self.ignore_files.poll(&mut self.jails, all) {
            self.resolver.sync(self.jails.names_in_use().keys());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::JailSpec;
    use crate::jail::config::JailConfig;

    /// `ignoreip = file:/path` through the daemon's reading: read at first
    /// poll, read again only when it changed, a bad edit or a deleted file
    /// keeps the last good list, an oversized file is refused.
    #[test]
    fn an_ignore_file_is_read_again_when_it_changes_and_kept_when_it_breaks() {
        let dir = std::env::temp_dir().join(format!("sipwarden-ignorefile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ignore.txt");
        std::fs::write(&path, "192.0.2.7 # office\n").unwrap();
        let mut jc = JailConfig::inheriting("fs".into(), &crate::jail::config::Defaults::builtin());
        jc.ignore_files = vec![path.clone()];
        let mut set = JailSet::new(Vec::new(), &[JailSpec::from_config(&jc)]);
        let leaves = |set: &JailSet, a: &str| {
            let j = set.jail(set.jail_id("fs").unwrap()).unwrap();
            j.policy().ignore.contains(a.parse().unwrap())
        };
        let mut files = IgnoreFiles::default();
        assert!(files.poll(&mut set, false));
        assert!(leaves(&set, "192.0.2.7"));
        assert!(!files.poll(&mut set, false), "unchanged: not read again");
        std::fs::write(&path, "198.51.100.0/24\n").unwrap();
        assert!(files.poll(&mut set, false));
        assert!(leaves(&set, "198.51.100.9") && !leaves(&set, "192.0.2.7"));
        // A typo: refused whole, the last good list stays.
        std::fs::write(&path, "198.51.100.0/24\n203.0.113.x\n").unwrap();
        assert!(!files.poll(&mut set, false));
        assert!(leaves(&set, "198.51.100.9"));
        assert!(!leaves(&set, "203.0.113.1"));
        std::fs::remove_file(&path).unwrap();
        assert!(!files.poll(&mut set, false));
        assert!(leaves(&set, "198.51.100.9"));
        let big = "#".repeat(MAX_IGNORE_FILE_BYTES as usize + 1);
        std::fs::write(&path, big).unwrap();
        assert!(read(&path).unwrap_err().starts_with("larger than"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
