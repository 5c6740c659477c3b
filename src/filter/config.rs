//! The filter keys of a `[jail.NAME]` table (`filter`, `fail2ban_filter`,
//! `logtimezone`) checked: the name of a built-in filter, where a fail2ban
//! filter file sits, a zone that exists.

use std::path::{Path, PathBuf};

use super::BUILTIN_FILTERS;
use super::date::{ZoneError, parse_zone};

/// A wrong filter key.
#[derive(Debug, thiserror::Error)]
pub enum FilterConfigError {
    /// `filter` names no built-in filter.
    #[error("unknown filter {0:?}; built-in filters are: {list}", list = BUILTIN_FILTERS.join(", "))]
    Unknown(String),
    /// `fail2ban_filter` has no file name.
    #[error("fail2ban_filter {0:?}: expected a path such as \"/etc/fail2ban/filter.d/sshd.conf\"")]
    Fail2banPath(String),
    /// `fail2ban_filter` is not in a `filter.d` directory.
    #[error("fail2ban_filter {0:?}: the file must sit in a filter.d directory")]
    Fail2banDir(String),
    /// `logtimezone` is no zone.
    #[error(transparent)]
    Zone(#[from] ZoneError),
}

/// Checks that `name` is a built-in filter.
pub fn builtin_name(name: &str) -> Result<(), FilterConfigError> {
    if BUILTIN_FILTERS.contains(&name) {
        Ok(())
    } else {
        Err(FilterConfigError::Unknown(name.to_string()))
    }
}

/// The built-in filters that read SIP servers' logs (every one but sshd).
pub const SIP_FILTERS: &[&str] = &[
    "freeswitch",
    "mod-fail2ban",
    "asterisk",
    "kamailio",
    "opensips",
];

/// Whether a filter reads SIP failures: a built-in SIP filter, or a
/// fail2ban filter (`NAME[options]`) of one of those names (fail2ban ships
/// `asterisk` and `freeswitch`).
pub fn is_sip_filter(name: &str) -> bool {
    let base = name.split('[').next().unwrap_or(name).trim();
    SIP_FILTERS.contains(&base)
}

/// Checks a `logtimezone`.
pub fn zone(name: &str) -> Result<(), FilterConfigError> {
    parse_zone(name).map(|_| ()).map_err(Into::into)
}

/// Splits `/etc/fail2ban/filter.d/sshd.conf[mode=aggressive]` into the
/// fail2ban configuration directory and `sshd[mode=aggressive]`.
pub fn split_fail2ban_filter(v: &str) -> Result<(PathBuf, String), FilterConfigError> {
    let (path, opts) = match v.find('[') {
        Some(p) => (&v[..p], &v[p..]),
        None => (v, ""),
    };
    let p = Path::new(path.trim());
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".conf").trim_end_matches(".local"))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| FilterConfigError::Fail2banPath(v.to_string()))?;
    let dir = p
        .parent()
        .filter(|d| d.ends_with("filter.d"))
        .and_then(Path::parent)
        .ok_or_else(|| FilterConfigError::Fail2banDir(v.to_string()))?;
    Ok((dir.to_path_buf(), format!("{name}{opts}")))
}
