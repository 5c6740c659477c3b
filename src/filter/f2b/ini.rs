//! fail2ban's configuration dialect: INI files as Python's configparser reads
//! them, layered the way fail2ban layers them.
//!
//! For `NAME`: `[INCLUDES] before` files, `NAME.conf`, `NAME.d/*.conf`,
//! `NAME.local`, `NAME.d/*.local`, `[INCLUDES] after` files; later values
//! replace earlier ones key by key. Values may span lines (continuation lines
//! start with whitespace). `%(name)s`, `%(section/name)s`, `%(known/name)s`
//! (the value before this layer replaced it) and `%(default/name)s` are
//! interpolated; `<tag>` substitution happens later, in the filter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a value was set, for errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// 1-based line of the key.
    pub line: usize,
}

/// One section: keys in file order, later layers replacing values.
pub type Section = BTreeMap<String, (String, Origin)>;

/// A configuration read from one or more files.
#[derive(Clone, Debug, Default)]
pub struct Ini {
    /// Sections by name (`DEFAULT` included).
    pub sections: BTreeMap<String, Section>,
}

/// A file that is not fail2ban's dialect.
#[derive(Debug, thiserror::Error)]
pub enum IniError {
    /// Cannot read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Bad syntax.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Includes nest too deep (a loop).
    #[error("{path}: [INCLUDES] nest deeper than 10 levels (a loop?)")]
    TooDeep {
        /// The file.
        path: String,
    },
}

/// Parses one file's text into (section, key, value, line) entries.
pub fn parse(text: &str, path: &Path) -> Result<Vec<(String, String, String, usize)>, IniError> {
    let mut out: Vec<(String, String, String, usize)> = Vec::new();
    let mut section: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        // Continuation of the previous value (indented), even if it looks
        // like a comment-free text.
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                if trimmed.starts_with('#') || trimmed.starts_with(';') {
                    continue;
                }
                if !last.2.is_empty() {
                    last.2.push('\n');
                }
                last.2.push_str(trimmed);
                continue;
            }
        }
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[') {
            let Some(name) = name.strip_suffix(']') else {
                return Err(IniError::Syntax {
                    path: path.display().to_string(),
                    line: n,
                    message: format!("section header {trimmed:?} has no closing ]"),
                });
            };
            section = Some(name.trim().to_string());
            continue;
        }
        let Some(sec) = &section else {
            return Err(IniError::Syntax {
                path: path.display().to_string(),
                line: n,
                message: "a key before any [section]".into(),
            });
        };
        let sep = trimmed.find(['=', ':']).filter(|&p| p > 0);
        let Some(sep) = sep else {
            return Err(IniError::Syntax {
                path: path.display().to_string(),
                line: n,
                message: format!("expected `key = value`, found {trimmed:?}"),
            });
        };
        let key = trimmed[..sep].trim().to_string();
        let mut value = trimmed[sep + 1..].trim().to_string();
        // Inline comments (` #` / ` ;` after whitespace) are stripped, as
        // configparser with inline_comment_prefixes does in fail2ban.
        for marker in [" #", "\t#", " ;", "\t;"] {
            if let Some(p) = value.find(marker) {
                value.truncate(p);
                value = value.trim_end().to_string();
            }
        }
        out.push((sec.clone(), key, value, n));
    }
    Ok(out)
}

impl Ini {
    /// Reads `base` (a path without extension, e.g. `.../filter.d/sshd`) with
    /// fail2ban's layering and includes.
    pub fn load(base: &Path) -> Result<Ini, IniError> {
        let mut ini = Ini::default();
        ini.load_layers(base, 0)?;
        Ok(ini)
    }

    /// Reads only the files that exist among fail2ban's layers for `base`.
    fn load_layers(&mut self, base: &Path, depth: usize) -> Result<(), IniError> {
        if depth > 10 {
            return Err(IniError::TooDeep {
                path: base.display().to_string(),
            });
        }
        let mut files = Vec::new();
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", base.display()));
        let d = PathBuf::from(format!("{}.d", base.display()));
        let listed = |ext: &str| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == ext))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        files.push(with("conf"));
        files.extend(listed("conf"));
        files.push(with("local"));
        files.extend(listed("local"));
        for f in files.into_iter().filter(|f| f.is_file()) {
            self.load_file(&f, depth)?;
        }
        Ok(())
    }

    fn load_file(&mut self, file: &Path, depth: usize) -> Result<(), IniError> {
        let text = std::fs::read_to_string(file).map_err(|source| IniError::Read {
            path: file.display().to_string(),
            source,
        })?;
        let entries = parse(&text, file)?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let includes = |key: &str| -> Vec<PathBuf> {
            entries
                .iter()
                .filter(|(s, k, _, _)| s == "INCLUDES" && k == key)
                .flat_map(|(_, _, v, _)| {
                    v.split_whitespace()
                        .map(|p| dir.join(p))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for inc in includes("before") {
            self.load_include(&inc, depth)?;
        }
        for (sec, key, value, line) in &entries {
            if sec == "INCLUDES" {
                continue;
            }
            let origin = Origin {
                file: file.to_path_buf(),
                line: *line,
            };
            // `%(known/key)s` is the value this assignment replaces: the
            // section's own, else the one it inherits from `[DEFAULT]`.
            let known = [sec.as_str(), "DEFAULT"]
                .iter()
                .find_map(|s| self.sections.get(*s).and_then(|s| s.get(key)))
                .map(|(v, _)| v.clone())
                .unwrap_or_default();
            let value = value.replace(&format!("%(known/{key})s"), &known);
            self.sections
                .entry(sec.clone())
                .or_default()
                .insert(key.clone(), (value, origin));
        }
        for inc in includes("after") {
            self.load_include(&inc, depth)?;
        }
        Ok(())
    }

    /// An included file: `common.conf` loads `common.conf`, `.d`, `.local`
    /// layers; a missing include (e.g. `common.local`) is fine.
    fn load_include(&mut self, path: &Path, depth: usize) -> Result<(), IniError> {
        let s = path.display().to_string();
        let base = s
            .strip_suffix(".conf")
            .or_else(|| s.strip_suffix(".local"))
            .unwrap_or(&s);
        if s.ends_with(".local") {
            // Only the .local layer of that name.
            if path.is_file() {
                return self.load_file(path, depth + 1);
            }
            return Ok(());
        }
        self.load_layers(Path::new(base), depth + 1)
    }

    /// A raw value: `section` then `DEFAULT`.
    pub fn raw(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .or_else(|| self.sections.get("DEFAULT").and_then(|s| s.get(key)))
            .map(|(v, _)| v.as_str())
    }

    /// Sets a value (filter options given by the caller).
    pub fn set(&mut self, section: &str, key: &str, value: &str) {
        self.sections
            .entry(section.to_string())
            .or_default()
            .insert(
                key.to_string(),
                (
                    value.to_string(),
                    Origin {
                        file: PathBuf::from("<options>"),
                        line: 0,
                    },
                ),
            );
    }

    /// A value of `section` with `%(...)s` interpolated (`extra` first: the
    /// caller's options), recursively up to a depth.
    pub fn get(
        &self,
        section: &str,
        key: &str,
        extra: &BTreeMap<String, String>,
    ) -> Option<String> {
        let v = extra
            .get(key)
            .map(String::as_str)
            .or_else(|| self.raw(section, key))?;
        Some(self.interpolate(section, v, extra, 0))
    }

    /// Interpolates `%(name)s` references in `v`.
    pub fn interpolate(
        &self,
        section: &str,
        v: &str,
        extra: &BTreeMap<String, String>,
        depth: usize,
    ) -> String {
        if depth > 20 || !v.contains('%') {
            return v.to_string();
        }
        let mut out = String::with_capacity(v.len());
        let mut rest = v;
        while let Some(p) = rest.find('%') {
            out.push_str(&rest[..p]);
            let after = &rest[p + 1..];
            // `%%` is a literal `%` (configparser), as in datepatterns.
            if let Some(r) = after.strip_prefix('%') {
                out.push('%');
                rest = r;
                continue;
            }
            let Some(inner) = after.strip_prefix('(') else {
                out.push('%');
                rest = after;
                continue;
            };
            let Some(close) = inner.find(")s") else {
                out.push_str(&rest[p..]);
                rest = "";
                break;
            };
            let name = &inner[..close];
            let (sec, key) = match name.split_once('/') {
                Some(("default", k)) => ("DEFAULT", k),
                Some(("known", k)) => (section, k),
                Some((s, k)) => (s, k),
                None => (section, name),
            };
            let val = if sec == section {
                extra
                    .get(key)
                    .map(String::as_str)
                    .or_else(|| self.raw(sec, key))
            } else {
                self.raw(sec, key)
            };
            match val {
                Some(val) => out.push_str(&self.interpolate(sec, val, extra, depth + 1)),
                // Unknown names stay as written (fail2ban would fail; the
                // regex then simply does not match).
                None => out.push_str(&rest[p..p + 2 + close + 2]),
            }
            rest = &inner[close + 2..];
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "sipwarden-ini-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("x.d")).unwrap();
        d
    }

    #[test]
    fn multiline_values_comments_and_errors() {
        let e = parse(
            "[A]\nk = one\n  two\n # c\n\tthree\nj: v ; note\n",
            Path::new("f"),
        )
        .unwrap();
        assert_eq!(e[0].2, "one\ntwo\nthree");
        assert_eq!((e[1].1.as_str(), e[1].2.as_str()), ("j", "v"));
        let err = parse("k = v\n", Path::new("f.conf"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "f.conf:1: a key before any [section]");
        let err = parse("[A\n", Path::new("f.conf")).unwrap_err().to_string();
        assert!(err.starts_with("f.conf:1:"));
        let err = parse("[A]\njunk\n", Path::new("f.conf"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.conf:2: expected `key = value`"));
    }

    #[test]
    fn layers_includes_and_interpolation() {
        let d = tmp();
        std::fs::write(
            d.join("common.conf"),
            "[DEFAULT]\nbase = B\n[Other]\no = O\n",
        )
        .unwrap();
        std::fs::write(d.join("x.conf"), "[INCLUDES]\nbefore = common.conf\nafter = x-extra.local\n[Definition]\na = 1 %(base)s\nb = %(Other/o)s\nr = first\n").unwrap();
        std::fs::write(
            d.join("x.d/10.conf"),
            "[Definition]\nr = %(known/r)s second\n",
        )
        .unwrap();
        std::fs::write(
            d.join("x.local"),
            "[Definition]\nc = %(default/base)s\nbase = %(known/base)s+\n",
        )
        .unwrap();
        let ini = Ini::load(&d.join("x")).unwrap();
        let no = BTreeMap::new();
        assert_eq!(ini.get("Definition", "a", &no).as_deref(), Some("1 B+"));
        assert_eq!(ini.get("Definition", "b", &no).as_deref(), Some("O"));
        assert_eq!(ini.get("Definition", "c", &no).as_deref(), Some("B"));
        // `known/` of a key the section inherits from [DEFAULT].
        assert_eq!(ini.get("Definition", "base", &no).as_deref(), Some("B+"));
        assert_eq!(
            ini.get("Definition", "r", &no).as_deref(),
            Some("first second")
        );
        let mut opts = BTreeMap::new();
        opts.insert("base".to_string(), "X".to_string());
        assert_eq!(ini.get("Definition", "a", &opts).as_deref(), Some("1 X"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn reads_every_stock_filter() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/fail2ban-1.1.2.dev1/config/filter.d"
        );
        let Ok(rd) = std::fs::read_dir(dir) else {
            assert!(
                !crate::test_support::need("corpus"),
                "the reference corpus is missing a file"
            );
            return;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "conf") {
                let base = p.with_extension("");
                Ini::load(&base).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n > 90);
    }
}
