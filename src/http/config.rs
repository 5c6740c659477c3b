//! `[http]`: the JSON API, metrics and dashboard listener. The keys as
//! written ([`RawHttp`]), resolved and checked by [`HttpConfig::from_raw`].

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::host::{HostName, HostNameError};

/// `[http]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    listen: Spanned<toml::Value>,
    token: Option<Spanned<String>>,
    allowed_hosts: Option<Vec<Spanned<String>>>,
}

/// `[http]`: the JSON API, metrics and dashboard listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where to listen (a bare port means loopback).
    pub listen: SocketAddr,
    /// Bearer token for write operations; without one they are refused.
    pub token: Option<String>,
    /// `Host` names accepted besides the listener's own address (e.g.
    /// `pbx1:9080` for a Prometheus that scrapes by name).
    pub allowed_hosts: Vec<String>,
}

/// Shortest `token` accepted.
const MIN_TOKEN: usize = 16;

/// A wrong `[http]` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpConfigError {
    /// `listen` is neither a port nor an address and port.
    #[error("listen must be a port (loopback) or \"address:port\", e.g. \"127.0.0.1:9080\"")]
    Listen,
    /// `token` is too short to resist guessing.
    #[error("token must be at least {MIN_TOKEN} characters (e.g. `openssl rand -hex 24`)")]
    ShortToken,
    /// An `allowed_hosts` entry that is no `Host` value.
    #[error(
        "allowed_hosts: {0}; an entry is a name or address with an optional port, as a browser sends it in `Host`"
    )]
    AllowedHost(#[source] HostNameError),
}

impl HttpConfig {
    /// Checks `[http]`; an error carries the span of the offending value.
    pub fn from_raw(raw: &RawHttp) -> Result<HttpConfig, Spanned<HttpConfigError>> {
        let bad = || Spanned::new(raw.listen.span(), HttpConfigError::Listen);
        let loopback = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let listen = match raw.listen.get_ref() {
            toml::Value::Integer(p) => loopback(u16::try_from(*p).map_err(|_| bad())?),
            toml::Value::String(s) => match s.parse::<u16>() {
                Ok(p) => loopback(p),
                Err(_) => s.parse().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        if let Some(t) = &raw.token {
            if t.get_ref().len() < MIN_TOKEN {
                return Err(Spanned::new(t.span(), HttpConfigError::ShortToken));
            }
        }
        let mut allowed_hosts = Vec::new();
        for a in raw.allowed_hosts.iter().flatten() {
            HostName::parse(a.get_ref())
                .map_err(|e| Spanned::new(a.span(), HttpConfigError::AllowedHost(e)))?;
            allowed_hosts.push(a.get_ref().trim().to_string());
        }
        Ok(HttpConfig {
            listen,
            token: raw.token.as_ref().map(|t| t.get_ref().clone()),
            allowed_hosts,
        })
    }
}
