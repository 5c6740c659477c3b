//! `[firewall]`: how decisions reach the kernel. The keys as written
//! ([`RawFirewall`]), resolved and checked by [`FirewallConfig::from_raw`].

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

/// The firewall backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Kernel sets in table `inet <table>`, over netlink.
    Nftables,
    /// Log decisions only.
    None,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Nftables => "nftables",
            Backend::None => "none",
        })
    }
}

/// `[firewall]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    backend: Option<Backend>,
    table: Option<Spanned<String>>,
    keep_on_exit: Option<bool>,
    set_size: Option<u32>,
}

/// `[firewall]`: how decisions reach the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallConfig {
    /// Which enforcer applies decisions.
    pub backend: Backend,
    /// The nftables table (family inet) sipwarden owns.
    pub table: String,
    /// Leave the table and its bans in place on exit.
    pub keep_on_exit: bool,
    /// Maximum elements per kernel set; 0 for no limit.
    pub set_size: u32,
}

/// A wrong `[firewall]` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FirewallConfigError {
    /// `table` is not a name nftables and the CLI both take.
    #[error("table name {0:?} must be 1-64 letters, digits, '_' or '-'")]
    TableName(String),
}

impl FirewallConfig {
    /// Checks `[firewall]` and fills in the defaults; an error carries the
    /// span of the offending value.
    pub fn from_raw(raw: &RawFirewall) -> Result<FirewallConfig, Spanned<FirewallConfigError>> {
        let table = match &raw.table {
            Some(t) => {
                let name = t.get_ref();
                if name.is_empty()
                    || name.len() > 64
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(Spanned::new(
                        t.span(),
                        FirewallConfigError::TableName(name.clone()),
                    ));
                }
                name.clone()
            }
            None => "sipwarden".to_string(),
        };
        Ok(FirewallConfig {
            backend: raw.backend.unwrap_or(Backend::Nftables),
            table,
            keep_on_exit: raw.keep_on_exit.unwrap_or(true),
            set_size: raw.set_size.unwrap_or(1_000_000),
        })
    }
}
