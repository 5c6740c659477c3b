//! The `Host` check: a request must name this listener, so that a web page
//! in an operator's browser cannot read the API by pointing a name of its
//! own at 127.0.0.1 (DNS rebinding). A name an attacker controls can be
//! re-pointed; an address literal and `localhost` cannot.
//!
//! Accepted, with the listener's port (no port means 80):
//! * the listener's own address (any address literal when it listens on
//!   `0.0.0.0` or `::`),
//! * `localhost`, when it listens on loopback or on every address,
//! * any entry of `[http] allowed_hosts`: `name:port` exactly, or `name`
//!   with no port or the listener's.

use std::net::{IpAddr, SocketAddr};

/// A `Host` value split into its name (lowercase, IPv6 without brackets)
/// and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostName {
    name: String,
    port: Option<u16>,
}

/// Why a `Host` value (or an `allowed_hosts` entry) is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostNameError {
    /// `[v6` without `]`.
    #[error("an IPv6 address needs its closing `]`")]
    Unclosed,
    /// `[x]` where x is no IPv6 address.
    #[error("{0:?} inside [] is not an IPv6 address")]
    NotV6(String),
    /// Something other than `:port` after `]`.
    #[error("after `]` only `:port` may follow")]
    AfterBracket,
    /// The port is not a number from 0 to 65535.
    #[error("{0:?} is not a port number")]
    Port(String),
    /// The name has characters no host name has.
    #[error(
        "{0:?} is not a host name or address (e.g. \"pbx1\", \"pbx1.example.com:9080\", \"[2001:db8::1]:9080\")"
    )]
    Name(String),
}

impl HostName {
    /// Parses `name`, `name:port`, `v4:port`, `[v6]` or `[v6]:port`; the
    /// error says what is wrong.
    pub fn parse(s: &str) -> Result<HostName, HostNameError> {
        let s = s.trim();
        let (name, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or(HostNameError::Unclosed)?;
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(HostNameError::NotV6(v6.to_string()));
            }
            match after {
                "" => (v6, None),
                p => (
                    v6,
                    Some(p.strip_prefix(':').ok_or(HostNameError::AfterBracket)?),
                ),
            }
        } else {
            match s.rsplit_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (s, None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| HostNameError::Port(p.to_string()))
            })
            .transpose()?;
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && (name.parse::<IpAddr>().is_ok()
                || name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
        if !name_ok {
            return Err(HostNameError::Name(name.to_string()));
        }
        Ok(HostName {
            name: name.to_ascii_lowercase(),
            port,
        })
    }
}

/// Which `Host` values this listener answers.
#[derive(Clone, Debug)]
pub struct HostCheck {
    listen: SocketAddr,
    allowed: Vec<HostName>,
}

impl HostCheck {
    /// The check for a listener on `listen` with `[http] allowed_hosts`
    /// (entries that do not parse match nothing; the configuration refuses
    /// them first).
    pub fn new(listen: SocketAddr, allowed: &[String]) -> HostCheck {
        HostCheck {
            listen,
            allowed: allowed
                .iter()
                .filter_map(|a| HostName::parse(a).ok())
                .collect(),
        }
    }

    /// Whether a request whose `Host` is `host` may be answered.
    pub fn allows(&self, host: &str) -> bool {
        let Ok(h) = HostName::parse(host) else {
            return false;
        };
        let port = self.listen.port();
        let ours = h.port.unwrap_or(80) == port;
        if self.allowed.iter().any(|a| {
            a.name == h.name
                && match a.port {
                    Some(p) => h.port.unwrap_or(80) == p,
                    None => h.port.is_none() || ours,
                }
        }) {
            return true;
        }
        if !ours {
            return false;
        }
        let ip = self.listen.ip();
        match h.name.parse::<IpAddr>() {
            Ok(a) => ip.is_unspecified() || a == ip,
            Err(_) => h.name == "localhost" && (ip.is_loopback() || ip.is_unspecified()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(listen: &str, allowed: &[&str]) -> HostCheck {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        HostCheck::new(listen.parse().unwrap(), &allowed)
    }

    #[test]
    fn loopback_listener() {
        let c = check("127.0.0.1:9080", &[]);
        for ok in ["127.0.0.1:9080", "localhost:9080", "LOCALHOST:9080"] {
            assert!(c.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:9080",
            "evil.example",
            "127.0.0.1",
            "127.0.0.1:9081",
            "127.0.0.1.nip.io:9080",
            "localhost.evil.example:9080",
            "10.0.0.1:9080",
            "",
            ":9080",
            "[::1]:9080",
            "a b:9080",
            "evil.example:9080:9080",
        ] {
            assert!(!c.allows(bad), "{bad}");
        }
    }

    #[test]
    fn any_address_listener_and_allowed_names() {
        let c = check(
            "0.0.0.0:9080",
            &["pbx1:9080", "Metrics.Example", "[2001:db8::1]:81"],
        );
        for ok in [
            "192.0.2.5:9080",
            "[2001:db8::7]:9080",
            "localhost:9080",
            "pbx1:9080",
            "PBX1:9080",
            "metrics.example",
            "metrics.example:9080",
            "[2001:db8::1]:81",
        ] {
            assert!(c.allows(ok), "{ok}");
        }
        for bad in [
            "pbx1",
            "pbx1:9081",
            "metrics.example:81",
            "pbx2:9080",
            "192.0.2.5",
        ] {
            assert!(!c.allows(bad), "{bad}");
        }
        let c = check("[::1]:80", &[]);
        assert!(c.allows("[::1]") && c.allows("[::1]:80") && c.allows("localhost"));
        assert!(!c.allows("127.0.0.1"));
    }

    #[test]
    fn entries_are_checked() {
        for bad in [
            "",
            "pbx1:x",
            "pbx1:70000",
            "[::1",
            "[nope]:80",
            "a/b",
            "user@pbx1",
            "a b",
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            HostName::parse("PBX1:9080"),
            Ok(HostName {
                name: "pbx1".into(),
                port: Some(9080)
            })
        );
    }
}
