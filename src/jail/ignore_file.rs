//! `ignoreip` entries beyond addresses, as fail2ban 1.1 takes them: a host
//! name (its addresses are looked up and refreshed as the Event Socket
//! peers' names are, see [`JailSet::set_resolved`](super::JailSet::set_resolved)),
//! and `file:/path`, a file of entries read at start and reload and again
//! when it changes. Parsing is here (pure); the daemon reads the file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// Largest `ignoreip` file read: 1 MiB holds ~50,000 entries.
pub const MAX_IGNORE_FILE_BYTES: u64 = 1 << 20;
/// Most entries one `ignoreip` file may hold.
pub const MAX_IGNORE_FILE_ENTRIES: usize = 65_536;
/// Longest host name (DNS).
const MAX_NAME: usize = 253;

/// One `ignoreip` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IgnoreEntry {
    /// An address or network.
    Net(IpNet),
    /// A host name: every address it resolves to.
    Name(String),
    /// `file:/path`: the entries of a file (addresses, networks, names).
    File(PathBuf),
}

/// Why an `ignoreip` entry or file is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreEntryError {
    /// Not an address, a network, a host name or `file:`.
    #[error("ignoreip {0:?} is not an address, a network, a host name or file:/path")]
    Bad(String),
    /// `file:` with a relative path (the daemon's working directory is not
    /// the configuration's).
    #[error("ignoreip {0:?}: the file must be given by its absolute path (file:/etc/...)")]
    Relative(String),
    /// A bad line in an `ignoreip` file.
    #[error(
        "{}:{line}: {entry:?} is not an address, a network or a host name (one a line, # comments)",
        .path.display()
    )]
    Line {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The entry as written (escaped when shown).
        entry: String,
    },
    /// `file:` inside an `ignoreip` file.
    #[error("{}:{line}: a file: entry inside an ignoreip file is not followed", .path.display())]
    Nested {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
    },
    /// Too many entries.
    #[error(
        "{}: more than {MAX_IGNORE_FILE_ENTRIES} entries; split the list or use wider prefixes",
        .0.display()
    )]
    TooMany(PathBuf),
}

/// What an `ignoreip` file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoreFile {
    /// Its addresses and networks.
    pub nets: Vec<IpNet>,
    /// Its host names.
    pub names: Vec<String>,
}

/// Whether `s` is a host name: dot-separated labels of letters, digits and
/// `-` (not at a label's ends), not address-like (`203.0.113.x`: every
/// label but the last all digits is a typo of an address, not a name).
pub fn is_host_name(s: &str) -> bool {
    let labels: Vec<&str> = s.trim_end_matches('.').split('.').collect();
    let numeric = |l: &&str| l.bytes().all(|b| b.is_ascii_digit());
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && !(labels.len() > 1 && labels[..labels.len() - 1].iter().all(numeric))
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl IgnoreEntry {
    /// Reads one entry as written in `ignoreip`.
    pub fn parse(s: &str) -> Result<IgnoreEntry, IgnoreEntryError> {
        let s = s.trim();
        if let Some(p) = s.strip_prefix("file:") {
            let path = PathBuf::from(p);
            return if path.is_absolute() {
                Ok(IgnoreEntry::File(path))
            } else {
                Err(IgnoreEntryError::Relative(s.to_string()))
            };
        }
        if let Ok(n) = crate::net::parse_net(s) {
            return Ok(IgnoreEntry::Net(n));
        }
        // An address-like text that failed above is a typo, not a name.
        if s.parse::<IpAddr>().is_err() && !s.contains(['/', ':']) && is_host_name(s) {
            return Ok(IgnoreEntry::Name(s.to_ascii_lowercase()));
        }
        Err(IgnoreEntryError::Bad(crate::event::escape_text(s, 255)))
    }

    /// The entry as `ignoreip` writes it.
    pub fn to_text(&self) -> String {
        match self {
            IgnoreEntry::Net(n) => n.to_string(),
            IgnoreEntry::Name(n) => n.clone(),
            IgnoreEntry::File(p) => format!("file:{}", p.display()),
        }
    }
}

/// Reads the text of the `ignoreip` file `path`: one entry a line, `#` to
/// the end of a line is a comment, blank lines skipped. A bad line refuses
/// the whole file (the caller keeps the last good list).
pub fn parse_ignore_file(path: &Path, text: &str) -> Result<IgnoreFile, IgnoreEntryError> {
    let mut out = IgnoreFile::default();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        if out.nets.len() + out.names.len() >= MAX_IGNORE_FILE_ENTRIES {
            return Err(IgnoreEntryError::TooMany(path.to_path_buf()));
        }
        match IgnoreEntry::parse(entry) {
            Ok(IgnoreEntry::Net(net)) if net.prefix_len() > 0 => out.nets.push(net),
            Ok(IgnoreEntry::Name(name)) => {
                if !out.names.contains(&name) {
                    out.names.push(name);
                }
            }
            Ok(IgnoreEntry::File(_)) => {
                return Err(IgnoreEntryError::Nested {
                    path: path.to_path_buf(),
                    line: n + 1,
                });
            }
            // Every address (/0) is as bad an entry as a typo.
            Ok(IgnoreEntry::Net(_)) | Err(_) => {
                return Err(IgnoreEntryError::Line {
                    path: path.to_path_buf(),
                    line: n + 1,
                    entry: crate::event::escape_text(entry, 255),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_addresses_networks_names_or_files() {
        let p = |s| IgnoreEntry::parse(s);
        assert_eq!(
            p("192.0.2.7"),
            Ok(IgnoreEntry::Net("192.0.2.7/32".parse().unwrap()))
        );
        assert_eq!(
            p("2001:db8::/32"),
            Ok(IgnoreEntry::Net("2001:db8::/32".parse().unwrap()))
        );
        assert_eq!(
            p("PBX.example.org"),
            Ok(IgnoreEntry::Name("pbx.example.org".into()))
        );
        assert_eq!(
            p("file:/etc/sipwarden/ignore.txt"),
            Ok(IgnoreEntry::File("/etc/sipwarden/ignore.txt".into()))
        );
        assert!(matches!(
            p("file:ignore.txt"),
            Err(IgnoreEntryError::Relative(_))
        ));
        for bad in [
            "192.0.2.300",
            "192.0.2.0/33",
            "1.2.3",
            "-x.example",
            "a b",
            "$(id)",
            "",
        ] {
            assert!(matches!(p(bad), Err(IgnoreEntryError::Bad(_))), "{bad}");
        }
    }

    /// `ignoreip = file:/path`: one entry a line, `#` comments; a bad line
    /// refuses the file with its path and line number; every address
    /// (`/0`) and nested files are bad lines; the entry count is capped.
    #[test]
    fn an_ignore_file_is_read_line_by_line_with_file_and_line_in_errors() {
        let path = Path::new("/etc/sipwarden/ignore.txt");
        let f = parse_ignore_file(
            path,
            "# office\n192.0.2.7\n\n  198.51.100.0/24   # branch\npbx.example.org\nPBX.example.org\n2001:db8::1\n",
        )
        .unwrap();
        assert_eq!(f.nets.len(), 3);
        assert_eq!(f.names, ["pbx.example.org"]);
        let e = parse_ignore_file(path, "192.0.2.7\n192.0.2.999 # typo\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/sipwarden/ignore.txt:2: \"192.0.2.999\" is not an address, a network or a host name (one a line, # comments)"
        );
        let e = parse_ignore_file(path, "0.0.0.0/0\n").unwrap_err();
        assert!(
            e.to_string().starts_with("/etc/sipwarden/ignore.txt:1:"),
            "{e}"
        );
        let e = parse_ignore_file(path, "\nfile:/etc/other\n").unwrap_err();
        assert_eq!(
            e,
            IgnoreEntryError::Nested {
                path: path.into(),
                line: 2
            }
        );
        let many: String = (0..=MAX_IGNORE_FILE_ENTRIES)
            .map(|n| format!("10.{}.{}.1\n", n / 256 % 256, n % 256))
            .collect();
        assert_eq!(
            parse_ignore_file(path, &many),
            Err(IgnoreEntryError::TooMany(path.into()))
        );
    }
}
