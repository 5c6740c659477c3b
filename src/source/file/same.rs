//! Two `logpath` entries that reach the same file (a symbolic link to a
//! directory, a hard link, the same path written twice) would count every
//! failure twice: they are told apart by device and inode, not by name.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a path reaches, as far as can be told now.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reach {
    /// The file there: device and inode.
    File(u64, u64),
    /// No file yet, but its directory (device and inode) and name: a file
    /// that appears there later is the same through either path.
    InDir(u64, u64, std::ffi::OsString),
    /// Neither exists: only the text tells.
    Text(PathBuf),
}

fn reach(p: &Path) -> Reach {
    if let Ok(m) = std::fs::metadata(p) {
        return Reach::File(m.dev(), m.ino());
    }
    if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(m) = std::fs::metadata(dir) {
            return Reach::InDir(m.dev(), m.ino(), name.to_os_string());
        }
    }
    Reach::Text(p.to_path_buf())
}

/// One path of a list that reaches what an earlier one does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SameFile {
    /// The later path, not followed.
    pub path: PathBuf,
    /// The earlier one, followed.
    pub first: PathBuf,
    /// Whether the two reach one existing file (else one directory, the
    /// file not there yet, or the same text).
    pub existing: bool,
}

impl std::fmt::Display for SameFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "logpath {} is the same {} as {} ({}); followed once, through {}, so each line counts once",
            self.path.display(),
            if self.existing { "file" } else { "place" },
            self.first.display(),
            if self.existing {
                "same device and inode"
            } else {
                "same directory and name"
            },
            self.first.display()
        )
    }
}

/// Splits `paths` into those to follow (the first of each file, in order)
/// and the ones that reach a file an earlier one does.
pub fn distinct(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<SameFile>) {
    let mut seen: Vec<(Reach, &PathBuf)> = Vec::new();
    let mut keep = Vec::new();
    let mut same = Vec::new();
    for p in paths {
        let r = reach(p);
        match seen.iter().find(|(s, _)| *s == r) {
            Some((_, first)) => same.push(SameFile {
                path: p.clone(),
                first: (*first).clone(),
                existing: matches!(r, Reach::File(..)),
            }),
            None => {
                seen.push((r, p));
                keep.push(p.clone());
            }
        }
    }
    (keep, same)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Black-box pass N7: `logpath = [p, p]`, or two paths where one
    /// directory is a symbolic link to the other, counted every failure
    /// twice.
    #[test]
    fn the_same_file_by_any_path_is_followed_once() {
        let base = std::env::temp_dir().join(format!("sw-same-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("real")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("alias")).unwrap();
        std::fs::write(base.join("real/fs.log"), "").unwrap();
        std::fs::hard_link(base.join("real/fs.log"), base.join("hard.log")).unwrap();
        std::fs::write(base.join("other.log"), "").unwrap();
        let p = |s: &str| base.join(s);
        let (keep, same) = distinct(&[
            p("real/fs.log"),
            p("alias/fs.log"),
            p("real/fs.log"),
            p("hard.log"),
            p("other.log"),
            // Not there yet: the same directory and name.
            p("real/later.log"),
            p("alias/later.log"),
            // Neither file nor directory: only the text.
            p("none/x.log"),
            p("none/x.log"),
            p("none/y.log"),
        ]);
        assert_eq!(
            keep,
            [
                p("real/fs.log"),
                p("other.log"),
                p("real/later.log"),
                p("none/x.log"),
                p("none/y.log")
            ]
        );
        assert_eq!(same.len(), 5);
        assert!(
            same[..3]
                .iter()
                .all(|s| s.existing && s.first == p("real/fs.log"))
        );
        assert_eq!(same[3].first, p("real/later.log"));
        assert!(!same[3].existing);
        let msg = same[0].to_string();
        assert!(
            msg.contains(&p("alias/fs.log").display().to_string())
                && msg.contains(&p("real/fs.log").display().to_string()),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
