//! Where Redis is and how to reach it, resolved: the master, or the
//! sentinels that name it; TLS files, ACL user, password and database; and
//! the `redis` client they make.
//!
//! Apart from `config.rs`, which checks the keys as written and builds
//! these: the link (`link.rs`) needs only what is here, never the keys.

use std::fmt;
use std::path::PathBuf;

/// A host (name or address) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Name or address, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// A `sentinels` entry that is not `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not host:port (e.g. \"10.0.0.5:26379\" or \"[fd00::5]:26379\")")]
pub struct HostPortError(String);

impl HostPort {
    /// Parses `host:port`, `[v6]:port`, a bare IPv6 address or a bare host
    /// (with `default_port`).
    pub fn parse(s: &str, default_port: u16) -> Result<HostPort, HostPortError> {
        let s = s.trim();
        let bad = || HostPortError(s.to_string());
        let (host, port) = if let Some(v6) = s.strip_prefix('[') {
            let (h, rest) = v6.split_once(']').ok_or_else(bad)?;
            match rest {
                "" => (h, None),
                p => (h, Some(p.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else if s.parse::<std::net::Ipv6Addr>().is_ok() {
            (s, None)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?,
            None => default_port,
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where the Redis master is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One server (`redis = "redis://host:port"`).
    Direct(HostPort),
    /// Asked of the sentinels, before every connection.
    Sentinel {
        /// The sentinels, tried in turn.
        sentinels: Vec<HostPort>,
        /// The master's name in their configuration.
        master: String,
    },
}

/// A PEM file, read when the configuration is loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    /// Where it came from (for messages).
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pem({})", self.path.display())
    }
}

/// TLS: on for `rediss://`, towards the master and the sentinels alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the servers' certificates; `None` trusts the
    /// system's roots.
    pub ca: Option<Pem>,
    /// This node's certificate and key, for servers that ask for one
    /// (`tls-auth-clients yes`, Debian's default).
    pub client: Option<(Pem, Pem)>,
}

/// How to reach Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// The master, or the sentinels that name it.
    pub target: Target,
    /// `Some` for `rediss://`.
    pub tls: Option<TlsFiles>,
    /// ACL user (percent-decoded).
    pub user: Option<String>,
    /// Password (percent-decoded).
    pub password: Option<String>,
    /// Database number.
    pub db: i64,
}

impl fmt::Debug for LinkConfig {
    // Never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field("target", &self.target)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

impl LinkConfig {
    /// For logs and status: the server, or the sentinels and master name.
    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.target {
            Target::Direct(hp) => format!("{scheme}://{hp}"),
            Target::Sentinel { sentinels, master } => format!(
                "{scheme}, master {master:?} of sentinel(s) {}",
                sentinels
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The hosts named in the configuration (the server, or the
    /// sentinels): never to be banned.
    pub fn configured_hosts(&self) -> Vec<&str> {
        match &self.target {
            Target::Direct(hp) => vec![hp.host.as_str()],
            Target::Sentinel { sentinels, .. } => {
                sentinels.iter().map(|s| s.host.as_str()).collect()
            }
        }
    }

    /// A client for `server`: TLS as configured; the ACL user, password and
    /// database only for the master (`auth`), not for a sentinel.
    pub fn client(&self, server: &HostPort, auth: bool) -> Result<redis::Client, ClientError> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let info = redis::IntoConnectionInfo::into_connection_info(format!("{scheme}://{server}"))
            .map_err(|source| ClientError::Address {
                server: server.clone(),
                source,
            })?;
        let mut settings = redis::RedisConnectionInfo::default()
            .set_protocol(redis::ProtocolVersion::RESP2)
            .set_skip_set_lib_name();
        if auth {
            settings = settings.set_db(self.db);
            if let Some(u) = &self.user {
                settings = settings.set_username(u);
            }
            if let Some(p) = &self.password {
                settings = settings.set_password(p);
            }
        }
        let info = info.set_redis_settings(settings);
        match &self.tls {
            None => redis::Client::open(info).map_err(ClientError::Client),
            Some(t) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: t.client.as_ref().map(|(c, k)| redis::ClientTlsConfig {
                        client_cert: c.bytes.clone(),
                        client_key: k.bytes.clone(),
                    }),
                    root_cert: t.ca.as_ref().map(|c| c.bytes.clone()),
                },
            )
            .map_err(ClientError::Client),
        }
    }
}

/// Why no client could be made for a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server's address does not make a URL.
    #[error("{server}: {source}")]
    Address {
        /// The server.
        server: HostPort,
        /// The `redis` crate's reason.
        source: redis::RedisError,
    },
    /// The client (its TLS files) was refused.
    #[error("{0}")]
    Client(#[source] redis::RedisError),
}
