//! `logpath` patterns, expanded as fail2ban does with Python's
//! `glob.glob`: `*`, `?` and `[...]` (`[!...]` negated, `a-z` ranges) match
//! within one path component, never across `/`; a component whose pattern
//! does not start with `.` matches no name that does (hidden files); a path
//! without those characters is kept as written (its file may appear later).
//! Bounded: at most [`MAX_MATCHES`] paths per pattern and [`MAX_ENTRIES`]
//! directory entries read, and kernel pseudo file systems (`/proc`, `/sys`)
//! are never listed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Paths one pattern may match: more is an error naming it.
pub const MAX_MATCHES: usize = 1000;

/// How often a running jail expands its patterns again, so that a file
/// that appears later is followed.
pub const RESCAN: std::time::Duration = std::time::Duration::from_secs(5);

/// Directory entries one expansion may read (`/*/*/*/*.log` walks a lot).
pub const MAX_ENTRIES: usize = 100_000;

/// A pattern that could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// More matches than [`MAX_MATCHES`].
    #[error(
        "logpath pattern {0} matches more than {MAX_MATCHES} files; name the log files more narrowly"
    )]
    TooMany(PathBuf),
    /// More directory entries read than [`MAX_ENTRIES`].
    #[error(
        "logpath pattern {0} reads more than {MAX_ENTRIES} directory entries; put fewer glob characters in its directories"
    )]
    TooWide(PathBuf),
}

/// Whether `p` has glob characters (Python's `glob.has_magic`).
pub fn is_pattern(p: &Path) -> bool {
    p.as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// One element of a component's pattern.
#[derive(Debug)]
enum Tok {
    Lit(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `[...]`: ranges (a single character is `c-c`), negated with `!`.
    Class(bool, Vec<(char, char)>),
}

/// The characters of a name: UTF-8 as characters, anything else byte by
/// byte (as Python's surrogate escapes do, one character per byte).
fn chars(s: &OsStr) -> Vec<char> {
    match s.to_str() {
        Some(t) => t.chars().collect(),
        None => s.as_bytes().iter().map(|&b| char::from(b)).collect(),
    }
}

fn parse(pat: &[char]) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pat.len() {
        let c = pat[i];
        i += 1;
        match c {
            '*' => {
                // `**` is `*` (no recursive globbing, as fail2ban calls it).
                if !matches!(out.last(), Some(Tok::Star)) {
                    out.push(Tok::Star);
                }
            }
            '?' => out.push(Tok::One),
            '[' => {
                // A `]` right after `[` or `[!` is a member; no closing `]`
                // leaves `[` a literal, as fnmatch does.
                let mut j = i;
                if j < pat.len() && pat[j] == '!' {
                    j += 1;
                }
                if j < pat.len() && pat[j] == ']' {
                    j += 1;
                }
                while j < pat.len() && pat[j] != ']' {
                    j += 1;
                }
                if j >= pat.len() {
                    out.push(Tok::Lit('['));
                    continue;
                }
                let mut body = &pat[i..j];
                i = j + 1;
                let neg = body.first() == Some(&'!');
                if neg {
                    body = &body[1..];
                }
                let mut set = Vec::new();
                let mut k = 0;
                while k < body.len() {
                    if k + 2 < body.len() && body[k + 1] == '-' {
                        // A reversed range (`z-a`) matches nothing.
                        if body[k] <= body[k + 2] {
                            set.push((body[k], body[k + 2]));
                        }
                        k += 3;
                    } else {
                        set.push((body[k], body[k]));
                        k += 1;
                    }
                }
                out.push(Tok::Class(neg, set));
            }
            c => out.push(Tok::Lit(c)),
        }
    }
    out
}

fn one(t: &Tok, c: char) -> bool {
    match t {
        Tok::Lit(l) => *l == c,
        Tok::One => true,
        Tok::Star => false,
        Tok::Class(neg, set) => set.iter().any(|(a, b)| *a <= c && c <= *b) != *neg,
    }
}

/// Whether `name` (one path component) matches `pattern` (one component),
/// as `fnmatch.fnmatchcase` does; the hidden-file rule is the caller's.
/// Linear in practice: one star remembered, as the classic wildcard match.
pub fn component_matches(pattern: &OsStr, name: &OsStr) -> bool {
    let toks = parse(&chars(pattern));
    let name = chars(name);
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if t < toks.len() && matches!(toks[t], Tok::Star) {
            star = Some((t, n));
            t += 1;
        } else if t < toks.len() && one(&toks[t], name[n]) {
            t += 1;
            n += 1;
        } else if let Some((st, sn)) = star {
            t = st + 1;
            n = sn + 1;
            star = Some((st, sn + 1));
        } else {
            return false;
        }
    }
    toks[t..].iter().all(|x| matches!(x, Tok::Star))
}

/// What expansion has used of its bounds.
struct Budget {
    entries: usize,
}

/// The paths `pattern` matches now, sorted. A path without glob
/// characters is returned as written, whether or not it exists.
pub fn expand(pattern: &Path) -> Result<Vec<PathBuf>, GlobError> {
    if !is_pattern(pattern) {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let mut budget = Budget { entries: 0 };
    // Start from the root or the working directory, then one component at
    // a time: literal components are joined, patterns listed.
    let mut cur: Vec<PathBuf> = vec![PathBuf::new()];
    let comps: Vec<Component<'_>> = pattern.components().collect();
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        match comp {
            Component::Normal(c) if is_pattern(Path::new(c)) => {
                for dir in &cur {
                    list(dir, c, last, &mut next, &mut budget)
                        .map_err(|()| GlobError::TooWide(pattern.to_path_buf()))?;
                    if next.len() > MAX_MATCHES {
                        return Err(GlobError::TooMany(pattern.to_path_buf()));
                    }
                }
            }
            other => {
                for dir in &cur {
                    let p = dir.join(other.as_os_str());
                    // Only what exists goes on (Python checks the final
                    // literal component with lexists).
                    if std::fs::symlink_metadata(&p).is_ok() {
                        next.push(p);
                    }
                }
            }
        }
        cur = next;
        if cur.is_empty() {
            break;
        }
    }
    cur.sort();
    cur.dedup();
    Ok(cur)
}

/// Adds the entries of `dir` matching `pat` to `out`: only directories
/// unless `last`; never inside a kernel pseudo file system. `Err` when the
/// entry budget is spent.
fn list(
    dir: &Path,
    pat: &OsStr,
    last: bool,
    out: &mut Vec<PathBuf>,
    budget: &mut Budget,
) -> Result<(), ()> {
    let at = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if super::generation::pseudo_at(at).is_some() {
        return Ok(());
    }
    let Ok(rd) = std::fs::read_dir(at) else {
        return Ok(());
    };
    let hidden_ok = pat.as_bytes().first() == Some(&b'.');
    for e in rd {
        budget.entries += 1;
        if budget.entries > MAX_ENTRIES {
            return Err(());
        }
        let Ok(e) = e else { continue };
        let name = e.file_name();
        if !hidden_ok && name.as_bytes().first() == Some(&b'.') {
            continue;
        }
        if !component_matches(pat, &name) {
            continue;
        }
        let p = dir.join(&name);
        // A directory component must be one (links followed, as Python's
        // `is_dir`).
        if !last && !std::fs::metadata(&p).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        out.push(p);
    }
    Ok(())
}

/// A jail's `logpath` list expanded: the paths to follow, in the order of
/// the list, and the patterns that match nothing now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expanded {
    /// Literal paths as written and every match of each pattern.
    pub paths: Vec<PathBuf>,
    /// Each pattern with what it matched now (empty: nothing yet).
    pub patterns: Vec<(PathBuf, Vec<PathBuf>)>,
}

impl Expanded {
    /// The patterns that match no file now.
    pub fn empty(&self) -> impl Iterator<Item = &Path> {
        self.patterns
            .iter()
            .filter(|(_, m)| m.is_empty())
            .map(|(p, _)| p.as_path())
    }
}

/// Expands every entry of a `logpath` list (see [`expand`]); a path listed
/// twice, or matched by two patterns, is kept once.
pub fn expand_list(list: &[PathBuf]) -> Result<Expanded, GlobError> {
    let mut out = Expanded::default();
    for p in list {
        let found = expand(p)?;
        for f in &found {
            if !out.paths.contains(f) {
                out.paths.push(f.clone());
            }
        }
        if is_pattern(p) {
            out.patterns.push((p.clone(), found));
        }
    }
    Ok(out)
}

/// The name of a path as bytes, for tests that build odd names.
#[cfg(test)]
fn os(b: &[u8]) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(b.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        component_matches(OsStr::new(p), OsStr::new(n))
    }

    #[test]
    fn stars_and_marks_match_within_a_name() {
        assert!(m("*error.log", "error.log"));
        assert!(m("*error.log", "site-error.log"));
        assert!(!m("*error.log", "error.log.1"));
        assert!(m("messages*", "messages"));
        assert!(m("messages*", "messages.1.gz"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("a?c", "aéc"), "? is one character, not one byte");
        assert!(m("**.log", "x.log"));
        assert!(m("*a*b*c", "xxaxxbxxc"));
        assert!(!m("*a*b*c", "xxaxxbxx"));
        assert!(m("", ""));
        assert!(!m("", "x"));
        // A long run of stars against a long name stays quick.
        assert!(!m(&"*a".repeat(50), &"a".repeat(49)));
    }

    #[test]
    fn classes_ranges_negation_and_brackets() {
        assert!(m("log[0-9]", "log7"));
        assert!(!m("log[0-9]", "logx"));
        assert!(m("log[!0-9]", "logx"));
        assert!(!m("log[!0-9]", "log7"));
        assert!(m("[]]", "]"), "] first is a member");
        assert!(m("[!]]", "x"));
        assert!(!m("[!]]", "]"));
        assert!(m("[ab-]", "-"), "a trailing - is a member");
        assert!(!m("[z-a]", "m"), "a reversed range matches nothing");
        assert!(m("a[", "a["), "an unclosed [ is a literal");
        assert!(m("[*?]", "*"));
        assert!(!m("[*?]", "x"));
        assert!(component_matches(OsStr::new("*"), &os(b"\xffbad")));
        assert!(component_matches(OsStr::new("?bad"), &os(b"\xffbad")));
    }

    /// A directory of its own under the temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("sw-glob-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tree(tag: &str) -> Scratch {
        let d = Scratch::new(tag);
        for f in [
            "a/error.log",
            "a/site-error.log",
            "a/.hidden-error.log",
            "a/access.log",
            "b/error.log",
            ".c/error.log",
            "x.log",
            "y.log",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "").unwrap();
        }
        // A file named like a directory pattern match is not descended.
        std::fs::write(d.path().join("z"), "").unwrap();
        d
    }

    fn names(d: &Path, v: Vec<PathBuf>) -> Vec<String> {
        v.iter()
            .map(|p| p.strip_prefix(d).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn a_star_never_crosses_a_slash() {
        let d = tree("t1");
        let r = expand(&d.path().join("*.log")).unwrap();
        assert_eq!(names(d.path(), r), ["x.log", "y.log"]);
        let r = expand(&d.path().join("*error.log")).unwrap();
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn hidden_names_need_a_dot_in_the_pattern() {
        let d = tree("t2");
        let r = expand(&d.path().join("a/*error.log")).unwrap();
        assert_eq!(names(d.path(), r), ["a/error.log", "a/site-error.log"]);
        let r = expand(&d.path().join("a/.*")).unwrap();
        assert_eq!(names(d.path(), r), ["a/.hidden-error.log"]);
        let r = expand(&d.path().join("a/[.]*")).unwrap();
        assert!(r.is_empty(), "[.] does not reveal hidden files: {r:?}");
        // In directories too.
        let r = expand(&d.path().join("*/error.log")).unwrap();
        assert_eq!(names(d.path(), r), ["a/error.log", "b/error.log"]);
        let r = expand(&d.path().join(".*/error.log")).unwrap();
        assert_eq!(names(d.path(), r), [".c/error.log"]);
    }

    #[test]
    fn patterns_in_directories_list_only_directories() {
        let d = tree("t3");
        let r = expand(&d.path().join("[a-z]/*.log")).unwrap();
        assert_eq!(
            names(d.path(), r),
            [
                "a/access.log",
                "a/error.log",
                "a/site-error.log",
                "b/error.log"
            ]
        );
        let r = expand(&d.path().join("[!a]/error.log")).unwrap();
        assert_eq!(names(d.path(), r), ["b/error.log"]);
        assert!(expand(&d.path().join("*/nothing")).unwrap().is_empty());
    }

    #[test]
    fn a_path_without_glob_characters_is_kept_as_written() {
        let p = PathBuf::from("/no/such/dir/file.log");
        assert!(!is_pattern(&p));
        assert_eq!(expand(&p).unwrap(), std::slice::from_ref(&p));
        let e = expand_list(&[p.clone(), p.clone()]).unwrap();
        assert_eq!(e.paths, [p]);
        assert!(e.patterns.is_empty());
    }

    #[test]
    fn a_pattern_matching_nothing_is_told() {
        let d = tree("t4");
        let pat = d.path().join("a/*.err");
        let e = expand_list(&[d.path().join("x.log"), pat.clone()]).unwrap();
        assert_eq!(e.paths, [d.path().join("x.log")]);
        assert_eq!(e.empty().collect::<Vec<_>>(), [pat.as_path()]);
    }

    #[test]
    fn too_many_matches_is_an_error_naming_the_pattern() {
        let d = Scratch::new("many");
        for i in 0..=MAX_MATCHES {
            std::fs::write(d.path().join(format!("{i}.log")), "").unwrap();
        }
        let pat = d.path().join("*.log");
        let e = expand(&pat).unwrap_err();
        assert_eq!(e, GlobError::TooMany(pat.clone()));
        assert!(e.to_string().contains(&pat.display().to_string()));
        assert_eq!(expand(&d.path().join("1*.log")).unwrap().len(), 112);
    }

    #[test]
    fn kernel_pseudo_file_systems_are_never_listed() {
        if Path::new("/proc/self").exists() {
            assert!(expand(Path::new("/proc/*/status")).unwrap().is_empty());
            assert!(expand(Path::new("/proc/self/*")).unwrap().is_empty());
            assert!(expand(Path::new("/sys/*")).unwrap().is_empty());
        }
    }
}
