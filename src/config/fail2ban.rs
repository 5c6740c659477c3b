//! A fail2ban configuration (`jail.conf`, `jail.d/`, `jail.local`, filters)
//! read as a sipwarden configuration: `sipwarden run --fail2ban-config DIR`
//! and `sipwarden import-fail2ban DIR`.
//!
//! Every enabled jail keeps its filter file, `logpath`, `maxretry`,
//! `findtime`, `bantime`, `ignoreip` and `bantime.increment` settings, and
//! its `action` list: sipwarden's own nftables enforcer bans, whatever
//! `banaction` says; the other actions (mail, AbuseIPDB, scripts) run
//! beside it ([`crate::action`]).

use std::collections::BTreeMap;
use std::path::Path;

use super::{Config, ConfigError};
use crate::action::ActionRef;
use crate::action::spec::split_specs;
use crate::duration::{self, BanTime, Duration, DurationError, parse_bantime, parse_duration};
use crate::filter::f2b::ini::{Ini, IniError};
use crate::jail::Escalation;
use crate::jail::config::{DEFAULT_IGNOREIP, Defaults, JailConfig};
use crate::jail::ignore_file::IgnoreEntry;
use crate::net::NetSet;

/// Why a fail2ban configuration cannot be run as it is.
#[derive(Debug, thiserror::Error)]
pub enum Fail2banError {
    /// `jail.conf` and what it includes could not be read.
    #[error(transparent)]
    Ini(#[from] IniError),
    /// The directory holds no jail definitions.
    #[error("{dir}: no jail.conf or jail.local there")]
    NoJails {
        /// The directory.
        dir: String,
    },
    /// One key of one enabled jail.
    #[error("{file}: [{jail}] {key}: {reason}")]
    Key {
        /// `DIR/jail.conf`.
        file: String,
        /// The jail's section.
        jail: String,
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        reason: KeyReason,
    },
}

/// What is wrong with one key of a fail2ban jail.
#[derive(Debug, thiserror::Error)]
pub enum KeyReason {
    /// An enabled jail without `logpath`.
    #[error("an enabled jail needs a logpath, or backend = systemd to read the journal")]
    NoLogpath,
    /// `backend` and its journal arguments.
    #[error(transparent)]
    Journal(#[from] crate::source::config::JournalConfigError),
    /// `maxretry` is not a count.
    #[error(transparent)]
    Count(#[from] std::num::ParseIntError),
    /// A duration that cannot be read.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// `findtime = 0`.
    #[error("must be at least 1s (with 0 no failure is ever counted)")]
    ZeroFindtime,
    /// `bantime = 0`.
    #[error("{}", duration::ZERO_BAN)]
    ZeroBan,
    /// An `ignoreip` of every address.
    #[error("{0} is every address: nothing would ever be counted or banned")]
    EveryAddress(ipnet::IpNet),
}

/// Whether a `logpath` entry names a log file there now (a glob pattern:
/// whether it matches one), for `backend = auto`. A pattern over the
/// match cap counts as there: the jail stays on its files, and starting it
/// says which pattern is too wide.
fn log_file_there(p: &Path) -> bool {
    use crate::source::file::glob;
    if glob::is_pattern(p) {
        glob::expand(p).map_or(true, |m| !m.is_empty())
    } else {
        p.exists()
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "on" | "enabled"
    )
}

/// Builds a configuration from fail2ban's directory (e.g. `/etc/fail2ban`),
/// on top of sipwarden's defaults for `[daemon]` and `[firewall]`.
pub fn from_fail2ban(dir: &Path) -> Result<Config, ConfigError> {
    let ini = Ini::load(&dir.join("jail")).map_err(Fail2banError::from)?;
    if ini.sections.is_empty() {
        return Err(Fail2banError::NoJails {
            dir: dir.display().to_string(),
        }
        .into());
    }
    let mut base = Config::parse("", &format!("fail2ban configuration {}", dir.display()))?;
    // Jails that inherit one `ignoreip` share one set.
    let mut replaced = Vec::new();
    let mut ignore_sets: BTreeMap<String, std::sync::Arc<NetSet>> = BTreeMap::new();
    for name in ini.sections.keys() {
        if matches!(
            name.as_str(),
            "DEFAULT" | "INCLUDES" | "Init" | "Definition"
        ) {
            continue;
        }
        let mut extra = BTreeMap::new();
        extra.insert("__name__".to_string(), name.clone());
        let get = |k: &str| {
            ini.get(name, k, &extra)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if !get("enabled").is_some_and(|v| truthy(&v)) {
            continue;
        }
        let at = |key: &'static str, reason: KeyReason| Fail2banError::Key {
            file: dir.join("jail.conf").display().to_string(),
            jail: name.clone(),
            key,
            reason,
        };
        let spec = get("filter").unwrap_or_else(|| name.clone());
        let logpath: Vec<std::path::PathBuf> = get("logpath")
            .unwrap_or_default()
            .split_whitespace()
            .map(Into::into)
            .collect();
        // The journal, when the backend says so (fail2ban ignores logpath
        // then), or with `auto` when no log file is there (fail2ban 1.1).
        let journal = crate::source::config::fail2ban_journal(
            &get("backend").unwrap_or_else(|| "auto".into()),
            &logpath,
            log_file_there,
        )
        .map_err(|e| at("backend", e.into()))?;
        let logpath = if journal.is_some() {
            Vec::new()
        } else {
            logpath
        };
        if logpath.is_empty() && journal.is_none() {
            return Err(at("logpath", KeyReason::NoLogpath).into());
        }
        let maxretry = get("maxretry")
            .map(|v| v.parse::<u32>().map_err(|e| at("maxretry", e.into())))
            .transpose()?
            .unwrap_or(5);
        let findtime = get("findtime")
            .map(|v| parse_duration(&v).map_err(|e| at("findtime", e.into())))
            .transpose()?
            .unwrap_or(Duration(600));
        if findtime.0 == 0 {
            return Err(at("findtime", KeyReason::ZeroFindtime).into());
        }
        let bantime = get("bantime")
            .map(|v| parse_bantime(&v).map_err(|e| at("bantime", e.into())))
            .transpose()?
            .unwrap_or(BanTime::For(Duration(600)));
        if bantime == BanTime::For(Duration(0)) {
            return Err(at("bantime", KeyReason::ZeroBan).into());
        }
        let ignore_text = get("ignoreip").unwrap_or_default();
        let mut ignoreip = Vec::new();
        let (mut ignore_files, mut ignore_names) = (Vec::new(), Vec::new());
        for a in ignore_text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|a| !a.is_empty())
        {
            match IgnoreEntry::parse(a) {
                Ok(IgnoreEntry::Net(n)) if n.prefix_len() == 0 => {
                    return Err(at("ignoreip", KeyReason::EveryAddress(n)).into());
                }
                Ok(IgnoreEntry::Net(n)) => ignoreip.push(n),
                Ok(IgnoreEntry::File(p)) if !ignore_files.contains(&p) => ignore_files.push(p),
                Ok(IgnoreEntry::Name(n)) if !ignore_names.contains(&n) => ignore_names.push(n),
                Ok(_) => {}
                Err(e) => tracing::warn!("[{name}] {e}; skipped"),
            }
        }
        let escalation = get("bantime.increment")
            .is_some_and(|v| truthy(&v))
            .then(|| Escalation {
                factor: get("bantime.factor")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1.0),
                multipliers: get("bantime.multipliers")
                    .map(|v| {
                        v.split_whitespace()
                            .filter_map(|m| m.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default(),
                maxtime: get("bantime.maxtime").and_then(|v| parse_duration(&v).ok()),
                overall_jails: get("bantime.overalljails").is_some_and(|v| truthy(&v)),
                rndtime: get("bantime.rndtime")
                    .and_then(|v| parse_duration(&v).ok())
                    .filter(|r| r.0 > 0),
            });
        // The firewall ones are sipwarden's enforcer's work.
        let (firewall, actions): (Vec<ActionRef>, Vec<ActionRef>) = get("action")
            .map(|v| split_specs(&v))
            .unwrap_or_default()
            .iter()
            .map(|s| ActionRef::in_dir(dir, s))
            .partition(ActionRef::is_firewall);
        if !firewall.is_empty() {
            let names: Vec<&str> = firewall.iter().map(|a| a.name.as_str()).collect();
            replaced.push(format!("{name}: {}", names.join(", ")));
        }
        // The keys fail2ban has; sipwarden's own (Event Sockets, wire,
        // trust, weights) keep their defaults.
        base.jails.push(JailConfig {
            fail2ban_filter: Some((dir.to_path_buf(), spec)),
            logpath,
            journal,
            maxretry: maxretry.max(1),
            findtime,
            bantime,
            ignoreip: ignore_sets
                .entry(ignore_text)
                .or_insert_with(|| {
                    std::sync::Arc::new(if ignoreip.is_empty() {
                        NetSet::new(DEFAULT_IGNOREIP)
                    } else {
                        NetSet::new(ignoreip)
                    })
                })
                .clone(),
            ignore_files,
            ignore_names,
            ignoreself: get("ignoreself").is_none_or(|v| truthy(&v)),
            escalation,
            trusted_maxretry: maxretry.saturating_mul(3),
            actions,
            ..JailConfig::inheriting(name.clone(), &Defaults::builtin())
        });
    }
    if !replaced.is_empty() {
        tracing::info!(
            "fail2ban firewall actions are not run; sipwarden's nftables enforcer bans instead ({})",
            replaced.join("; ")
        );
    }
    Ok(base)
}

/// An `actions` entry: `"/DIR/action.d/NAME.conf[k=\"v\", ...]"`.
fn action_entry(a: &crate::action::ActionRef) -> String {
    let args: Vec<String> = a
        .args
        .iter()
        .map(|(k, v)| match v.contains('"') {
            true => format!("{k}='{v}'"),
            false => format!("{k}=\"{v}\""),
        })
        .collect();
    let args = match args.is_empty() {
        true => String::new(),
        false => format!("[{}]", args.join(", ")),
    };
    format!("{:?}", format!("{}.conf{args}", a.base.display()))
}

/// A journal jail's keys in TOML: `journal_dir` for a directory; fail2ban's
/// `journalfiles` and other `journalflags` have no TOML key (noted).
fn journal_toml(jc: &crate::source::journal::JournalConfig) -> String {
    use crate::source::journal::{JournalConfig, Location};
    let mut out = "backend = \"systemd\"\n".to_string();
    let expected = match &jc.location {
        Location::System => JournalConfig::system().flags,
        Location::Directory(d) => {
            out.push_str(&format!("journal_dir = {:?}\n", d.display().to_string()));
            0
        }
        Location::Files(f) => {
            out.push_str(&format!(
                "# fail2ban's journalfiles ({}) have no TOML key: the host's journal is read\n",
                f.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            0
        }
    };
    if jc.flags != expected {
        out.push_str(&format!(
            "# fail2ban's journalflags = {} have no TOML key\n",
            jc.flags
        ));
    }
    if let Some(m) = &jc.matches {
        out.push_str(&format!("journalmatch = {:?}\n", m.to_string()));
    }
    out
}

/// The sipwarden TOML equivalent of a fail2ban configuration.
pub fn to_toml(c: &Config) -> String {
    let mut out = format!(
        "# sipwarden configuration imported from {}\n# Firewall actions are not imported: sipwarden bans with its own nftables enforcer.\n",
        c.origin
    );
    for j in c.jails.iter().filter(|j| j.enabled) {
        out.push_str(&format!("\n[jail.{}]\n", j.name));
        if let Some((dir, spec)) = &j.fail2ban_filter {
            let (name, opts) = spec
                .split_once('[')
                .map_or((spec.as_str(), String::new()), |(n, o)| {
                    (n, format!("[{o}"))
                });
            out.push_str(&format!(
                "fail2ban_filter = {:?}\n",
                format!("{}/filter.d/{name}.conf{opts}", dir.display())
            ));
        }
        let paths: Vec<String> = j
            .logpath
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        if !paths.is_empty() || j.journal.is_none() {
            out.push_str(&format!("logpath = [{}]\n", paths.join(", ")));
        }
        if let Some(jc) = &j.journal {
            out.push_str(&journal_toml(jc));
        }
        out.push_str(&format!(
            "maxretry = {}\nfindtime = \"{}\"\n",
            j.maxretry, j.findtime
        ));
        match j.bantime {
            BanTime::Permanent => out.push_str("bantime = -1\n"),
            BanTime::For(d) => out.push_str(&format!("bantime = \"{d}\"\n")),
        }
        let ips: Vec<String> = j
            .ignoreip
            .nets()
            .iter()
            .map(|n| format!("\"{n}\""))
            .chain(
                j.ignore_files
                    .iter()
                    .map(|p| toml::Value::String(format!("file:{}", p.display())).to_string()),
            )
            .chain(j.ignore_names.iter().map(|n| format!("\"{n}\"")))
            .collect();
        out.push_str(&format!("ignoreip = [{}]\n", ips.join(", ")));
        if !j.actions.is_empty() {
            let list: Vec<String> = j.actions.iter().map(action_entry).collect();
            out.push_str(&format!("actions = [{}]\n", list.join(", ")));
        }
        if let Some(e) = &j.escalation {
            out.push_str(&format!(
                "bantime_increment = true\nbantime_factor = {}\n",
                e.factor
            ));
            if let Some(m) = e.maxtime {
                out.push_str(&format!("bantime_maxtime = \"{m}\"\n"));
            }
            if e.overall_jails {
                out.push_str("bantime_overalljails = true\n");
            }
            if let Some(r) = e.rndtime {
                out.push_str(&format!("bantime_rndtime = \"{r}\"\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glob_counts_as_a_log_file_only_when_it_matches_one() {
        let d = std::env::temp_dir().join(format!("sw-f2b-glob-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("site-error.log"), "").unwrap();
        assert!(log_file_there(&d.join("*error.log")));
        assert!(!log_file_there(&d.join("*access.log")));
        assert!(!log_file_there(&d.join("nothing/*")));
        assert!(log_file_there(&d.join("site-error.log")));
        assert!(!log_file_there(&d.join("access.log")));
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A jail imported from fail2ban is the jail its TOML rendering gives:
    /// the keys fail2ban has carried over, every key only sipwarden has
    /// (Event Sockets, wire, trust, weights, tracking cap) at the default
    /// a `[jail.NAME]` table gets.
    #[test]
    fn an_imported_jail_is_the_jail_its_toml_gives() {
        let dir = std::env::temp_dir().join(format!("sipwarden-f2b-import-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("filter.d")).unwrap();
        std::fs::create_dir_all(dir.join("action.d")).unwrap();
        std::fs::write(
            dir.join("action.d/mine.conf"),
            "[Definition]\nactionban = true\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("jail.conf"),
            "[DEFAULT]\nbantime = 3600\n\n\
             [sshd]\nenabled = true\nlogpath = /var/log/auth.log /var/log/secure\n\
             maxretry = 4\nfindtime = 900\n\
             action = iptables-multiport[port=ssh]\n  mine[dest=\"ops@example.org\", note='a \"b\"']\nignoreip = 127.0.0.1/8 192.0.2.0/24 file:/etc/fail2ban/ignore.txt pbx.example.org\n\
             bantime.increment = true\nbantime.factor = 1.5\nbantime.maxtime = 86400\nbantime.rndtime = 5m\n\n\
             [asterisk]\nenabled = true\nfilter = asterisk[mode=extra]\nlogpath = /var/log/asterisk/messages\n\n\
             [off]\nenabled = false\nlogpath = /var/log/off.log\n",
        )
        .unwrap();
        let imported = from_fail2ban(&dir).unwrap();
        assert_eq!(imported.jails.len(), 2);
        // The firewall action is sipwarden's enforcer's work; the other is kept.
        let sshd = imported.jails.iter().find(|j| j.name == "sshd").unwrap();
        assert_eq!(sshd.actions.len(), 1);
        assert_eq!(
            sshd.actions[0].args.get("note").map(String::as_str),
            Some("a \"b\"")
        );
        assert_eq!(sshd.ignore_files, [Path::new("/etc/fail2ban/ignore.txt")]);
        assert_eq!(sshd.ignore_names, ["pbx.example.org"]);
        let esc = sshd.escalation.as_ref().unwrap();
        assert_eq!(esc.rndtime, Some(Duration(300)));
        let again = Config::parse(&to_toml(&imported), "imported.toml");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(imported.jails, again.unwrap().jails);
    }
}
