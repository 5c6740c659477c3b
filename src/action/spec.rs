//! Which actions a jail names: fail2ban's `action =` lines
//! (`sendmail-whois[dest="ops@example.org"]`, one or more per value) and
//! sipwarden's `actions = ["/etc/fail2ban/action.d/NAME.conf[k=v]"]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::filter::f2b::parse_filter_spec;

/// One action as a jail names it: the file and the jail's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionRef {
    /// The action's name: its file name without extension (fail2ban's
    /// default `actname`).
    pub name: String,
    /// The file without extension: fail2ban's layers (`.conf`, `.d/*.conf`,
    /// `.local`, `.d/*.local`) are read from it.
    pub base: PathBuf,
    /// The jail's arguments (`dest=ops@example.org`), which override the
    /// action's `[Init]`.
    pub args: BTreeMap<String, String>,
}

/// An `actions` entry that names no action file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Not an absolute path to a `.conf` or `.local` file.
    #[error(
        "{0:?} is not an action file's path; give it as \"/etc/fail2ban/action.d/NAME.conf[option=value, ...]\""
    )]
    NotAPath(String),
    /// No such file.
    #[error("{0}: no such action file (neither .conf nor .local)")]
    Missing(String),
}

/// The firewall actions whose work sipwarden's own enforcer does: never
/// run (their ban would be a second, unmanaged firewall rule).
pub fn replaced_by_sipwarden(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "iptables",
        "ip6tables",
        "nftables",
        "firewallcmd",
        "shorewall",
        "ufw",
        "ipset",
    ];
    const NAMES: &[&str] = &[
        "pf",
        "route",
        "ipfw",
        "bsd-ipfw",
        "osx-ipfw",
        "osx-afctl",
        "ipfilter",
        "npf",
        "apf",
        "csf",
        "symbiosis-blacklist-allports",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

impl ActionRef {
    /// `NAME[k=v, ...]` found in `DIR/action.d` (a jail of a fail2ban
    /// configuration).
    pub fn in_dir(dir: &Path, spec: &str) -> ActionRef {
        let (name, args) = parse_filter_spec(spec);
        ActionRef {
            base: dir.join("action.d").join(&name),
            name,
            args,
        }
    }

    /// `/PATH/NAME.conf[k=v, ...]` (a TOML jail's `actions` entry); the file
    /// must exist.
    pub fn from_path_spec(spec: &str) -> Result<ActionRef, SpecError> {
        let (path, args) = parse_filter_spec(spec);
        let p = Path::new(&path);
        let base = match (path.strip_suffix(".conf"), path.strip_suffix(".local")) {
            (Some(b), _) | (None, Some(b)) if p.is_absolute() => PathBuf::from(b),
            _ => return Err(SpecError::NotAPath(spec.to_string())),
        };
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", base.display()));
        if !with("conf").is_file() && !with("local").is_file() {
            return Err(SpecError::Missing(path));
        }
        let name = base
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(ActionRef { name, base, args })
    }

    /// Whether sipwarden's enforcer does this action's work.
    pub fn is_firewall(&self) -> bool {
        replaced_by_sipwarden(&self.name)
    }
}

impl std::fmt::Display for ActionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Splits a fail2ban `action` value into its specs: one per line, or
/// several on a line separated by spaces outside `[...]` and quotes.
pub fn split_specs(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for c in value.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') if depth > 0 => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => depth = depth.saturating_sub(1),
            (None, c) if c.is_whitespace() && depth == 0 => {
                if !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur).trim().to_string());
                }
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jail_action_value_splits_into_specs() {
        let v = "nftables[port=\"ssh, 2222\", protocol=\"tcp\"]\n  sendmail-whois[sender=\"a b\", dest=\"x@y\"] abuseipdb";
        assert_eq!(
            split_specs(v),
            vec![
                "nftables[port=\"ssh, 2222\", protocol=\"tcp\"]",
                "sendmail-whois[sender=\"a b\", dest=\"x@y\"]",
                "abuseipdb"
            ]
        );
        let r = ActionRef::in_dir(Path::new("/etc/fail2ban"), &split_specs(v)[1]);
        assert_eq!(r.name, "sendmail-whois");
        assert_eq!(
            r.base,
            Path::new("/etc/fail2ban/action.d/sendmail-whois").to_path_buf()
        );
        assert_eq!(r.args.get("sender").map(String::as_str), Some("a b"));
        assert!(!r.is_firewall());
    }

    #[test]
    fn firewall_actions_are_the_ones_sipwarden_replaces() {
        for n in [
            "iptables-multiport",
            "nftables",
            "nftables-allports",
            "firewallcmd-ipset",
            "shorewall",
            "ufw",
            "pf",
            "route",
            "iptables-ipset-proto6",
        ] {
            assert!(replaced_by_sipwarden(n), "{n}");
        }
        for n in [
            "sendmail-whois",
            "mail",
            "abuseipdb",
            "cloudflare",
            "dummy",
            "pfx",
        ] {
            assert!(!replaced_by_sipwarden(n), "{n}");
        }
    }

    #[test]
    fn a_toml_action_is_an_absolute_path_to_an_existing_file() {
        assert!(matches!(
            ActionRef::from_path_spec("sendmail-whois[dest=x]"),
            Err(SpecError::NotAPath(_))
        ));
        assert!(matches!(
            ActionRef::from_path_spec("/nonexistent/action.d/x.conf"),
            Err(SpecError::Missing(_))
        ));
        let d = std::env::temp_dir().join(format!("sipwarden-spec-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("mine.conf"), "[Definition]\nactionban = true\n").unwrap();
        let r =
            ActionRef::from_path_spec(&format!("{}/mine.conf[dest=ops@example.org]", d.display()))
                .unwrap();
        assert_eq!(r.name, "mine");
        assert_eq!(r.base, d.join("mine"));
        assert_eq!(
            r.args.get("dest").map(String::as_str),
            Some("ops@example.org")
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
