//! `[cluster]`, resolved: where Redis is (one URL, or sentinels and the
//! master's name), how to reach it (TLS files, ACL user and password,
//! database), this node's name and the key prefix.
//!
//! The raw TOML keys live in `config/`; this file checks them and says
//! which key is wrong ([`Problem`]), so the error points at its line.

use std::fmt;
use std::path::{Path, PathBuf};

/// The Redis port when a URL names none.
const REDIS_PORT: u16 = 6379;
/// The Sentinel port when a `sentinels` entry names none.
const SENTINEL_PORT: u16 = 26379;
/// Largest TLS file read (a certificate chain is a few KiB).
const PEM_MAX: u64 = 1024 * 1024;

/// `[cluster]`, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// How to reach Redis.
    pub link: LinkConfig,
    /// This node's name (unique in the fleet).
    pub node: String,
    /// Prefix of every key.
    pub prefix: String,
}

/// A host (name or address) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Name or address, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port`, `[v6]:port`, a bare IPv6 address or a bare host
    /// (with `default_port`).
    pub fn parse(s: &str, default_port: u16) -> Result<HostPort, String> {
        let s = s.trim();
        let bad =
            || format!("{s:?} is not host:port (e.g. \"10.0.0.5:26379\" or \"[fd00::5]:26379\")");
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
    pub fn client(&self, server: &HostPort, auth: bool) -> Result<redis::Client, String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let info = redis::IntoConnectionInfo::into_connection_info(format!("{scheme}://{server}"))
            .map_err(|e| format!("{server}: {e}"))?;
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
            None => redis::Client::open(info).map_err(|e| e.to_string()),
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
            .map_err(|e| e.to_string()),
        }
    }
}

/// The `[cluster]` keys that say how to reach Redis, as written.
#[derive(Debug, Default)]
pub struct LinkKeys<'a> {
    /// `redis`: the URL.
    pub redis: Option<&'a str>,
    /// `sentinels`.
    pub sentinels: &'a [String],
    /// `master_name`.
    pub master_name: Option<&'a str>,
    /// `tls_ca`.
    pub tls_ca: Option<&'a Path>,
    /// `tls_cert`.
    pub tls_cert: Option<&'a Path>,
    /// `tls_key`.
    pub tls_key: Option<&'a Path>,
}

/// Which key a problem is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// `redis`.
    Redis,
    /// `sentinels`.
    Sentinels,
    /// `master_name`.
    MasterName,
    /// `tls_ca`.
    TlsCa,
    /// `tls_cert`.
    TlsCert,
    /// `tls_key`.
    TlsKey,
    /// The `[cluster]` table as a whole.
    Table,
}

/// A wrong `[cluster]` key and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key.
    pub key: Key,
    /// What is wrong, and what to write instead.
    pub msg: String,
}

fn problem(key: Key, msg: impl Into<String>) -> Problem {
    Problem {
        key,
        msg: msg.into(),
    }
}

/// The parts of a `redis://` or `rediss://` URL.
struct Url {
    tls: bool,
    server: HostPort,
    user: Option<String>,
    password: Option<String>,
    db: i64,
}

fn parse_url(url: &str) -> Result<Url, String> {
    let tls = if url.starts_with("rediss://") {
        true
    } else if url.starts_with("redis://") {
        false
    } else {
        return Err(
            "the URL must start with redis:// or rediss:// (TCP only: a unix socket cannot be shared by a fleet)"
                .into(),
        );
    };
    if url.contains('#') {
        return Err("a URL fragment (#insecure) is not accepted: certificates are always checked; set tls_ca to the CA that signed the server's".into());
    }
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
        format!(
            "{e}; the form is redis[s]://[user:password@]host[:port][/db], with reserved characters in user or password percent-encoded (@ as %40, : as %3A, / as %2F)"
        )
    })?;
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p)
        | redis::ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => (h.clone(), *p),
        _ => return Err("only TCP servers are supported".into()),
    };
    if url.contains("protocol=") {
        return Err("?protocol= is not accepted: the fleet speaks RESP2".into());
    }
    let r = info.redis_settings();
    Ok(Url {
        tls,
        server: HostPort {
            host,
            port: if port == 0 { REDIS_PORT } else { port },
        },
        user: r.username().map(String::from),
        password: r.password().map(String::from),
        db: r.db(),
    })
}

fn read_pem(path: &Path, key: Key, what: &str) -> Result<Pem, Problem> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(PEM_MAX + 1).read_to_end(&mut bytes))
        .map_err(|e| problem(key, format!("cannot read {what} {}: {e}", path.display())))?;
    if bytes.len() as u64 > PEM_MAX {
        return Err(problem(
            key,
            format!(
                "{} is over {PEM_MAX} bytes: not a PEM {what}",
                path.display()
            ),
        ));
    }
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(problem(
            key,
            format!(
                "{} is not PEM (no -----BEGIN line): {what} expected",
                path.display()
            ),
        ));
    }
    Ok(Pem {
        path: path.to_path_buf(),
        bytes,
    })
}

/// Checks the link keys: `redis` alone, or `sentinels` with `master_name`
/// (and optionally `redis` for TLS, credentials and database, its host
/// being the master's name).
pub fn link_config(k: &LinkKeys<'_>) -> Result<LinkConfig, Problem> {
    let url = k
        .redis
        .map(|u| parse_url(u).map_err(|m| problem(Key::Redis, m)))
        .transpose()?;
    let target = if k.sentinels.is_empty() {
        if let Some(m) = k.master_name {
            return Err(problem(
                Key::MasterName,
                format!("master_name {m:?} needs sentinels = [\"host:port\", ...]"),
            ));
        }
        let Some(u) = &url else {
            return Err(problem(
                Key::Table,
                "[cluster] needs redis = \"redis://host:6379\" (or sentinels = [...] with master_name)",
            ));
        };
        Target::Direct(u.server.clone())
    } else {
        let mut sentinels = Vec::new();
        for s in k.sentinels {
            let hp = HostPort::parse(s, SENTINEL_PORT).map_err(|m| problem(Key::Sentinels, m))?;
            if !sentinels.contains(&hp) {
                sentinels.push(hp);
            }
        }
        let from_url = url.as_ref().map(|u| u.server.host.clone());
        let master = match (k.master_name, from_url) {
            (Some(m), Some(h)) if m != h => {
                return Err(problem(
                    Key::Redis,
                    format!(
                        "with sentinels, the host of redis names the master: {h:?} is not master_name {m:?}"
                    ),
                ));
            }
            (Some(m), _) => m.to_string(),
            (None, Some(h)) => h,
            (None, None) => {
                return Err(problem(
                    Key::Sentinels,
                    "sentinels need master_name = \"mymaster\" (the name in their `sentinel monitor` line)",
                ));
            }
        };
        if master.is_empty()
            || master.len() > 128
            || !master
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(problem(
                Key::MasterName,
                "master_name must be 1-128 letters, digits, '-', '_' or '.'",
            ));
        }
        Target::Sentinel { sentinels, master }
    };
    let tls_wanted = url.as_ref().is_some_and(|u| u.tls);
    let tls = if tls_wanted {
        let ca = k
            .tls_ca
            .map(|p| read_pem(p, Key::TlsCa, "CA certificate"))
            .transpose()?;
        let client = match (k.tls_cert, k.tls_key) {
            (Some(c), Some(key)) => Some((
                read_pem(c, Key::TlsCert, "certificate")?,
                read_pem(key, Key::TlsKey, "private key")?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(problem(
                    Key::TlsCert,
                    "tls_cert needs tls_key (its private key)",
                ));
            }
            (None, Some(_)) => {
                return Err(problem(
                    Key::TlsKey,
                    "tls_key needs tls_cert (its certificate)",
                ));
            }
        };
        Some(TlsFiles { ca, client })
    } else {
        for (key, v, name) in [
            (Key::TlsCa, k.tls_ca, "tls_ca"),
            (Key::TlsCert, k.tls_cert, "tls_cert"),
            (Key::TlsKey, k.tls_key, "tls_key"),
        ] {
            if v.is_some() {
                return Err(problem(
                    key,
                    format!(
                        "{name} is for TLS: write the URL as rediss://... (redis = \"rediss://host:6379\")"
                    ),
                ));
            }
        }
        None
    };
    let link = LinkConfig {
        target,
        tls,
        user: url.as_ref().and_then(|u| u.user.clone()),
        password: url.as_ref().and_then(|u| u.password.clone()),
        db: url.as_ref().map_or(0, |u| u.db),
    };
    // The certificates parse (a key that is not a key is found now, not at
    // the first connection).
    let probe = HostPort {
        host: "localhost".into(),
        port: REDIS_PORT,
    };
    if let Err(e) = link.client(&probe, true) {
        let key = if e.contains("root") || e.contains("trust") {
            Key::TlsCa
        } else if e.contains("private key") {
            Key::TlsKey
        } else if link.tls.is_some() {
            Key::TlsCert
        } else {
            Key::Redis
        };
        return Err(problem(key, e));
    }
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(url: &str) -> Result<LinkConfig, Problem> {
        link_config(&LinkKeys {
            redis: Some(url),
            ..LinkKeys::default()
        })
    }

    #[test]
    fn urls_are_decoded_and_checked() {
        let l = direct("redis://10.0.0.5:6380/2").unwrap();
        assert_eq!(
            l.target,
            Target::Direct(HostPort {
                host: "10.0.0.5".into(),
                port: 6380
            })
        );
        assert_eq!(l.db, 2);
        // Finding 3: user and password percent-decoded.
        let l = direct("redis://s%40w:p%40ss%3Aw%2Frd@[fd00::5]:7000").unwrap();
        assert_eq!(l.user.as_deref(), Some("s@w"));
        assert_eq!(l.password.as_deref(), Some("p@ss:w/rd"));
        assert_eq!(l.describe(), "redis://[fd00::5]:7000");
        assert!(!format!("{l:?}").contains("p@ss"), "no password in Debug");
        let l = direct("redis://:secret@redis.example").unwrap();
        assert_eq!(
            (l.user.as_deref(), l.password.as_deref()),
            (None, Some("secret"))
        );
        assert_eq!(l.configured_hosts(), vec!["redis.example"]);
        let l = direct("rediss://redis.example:6380").unwrap();
        assert_eq!(
            l.tls,
            Some(TlsFiles {
                ca: None,
                client: None
            })
        );
        for bad in [
            "http://h",
            "redis://h:x",
            "redis+unix:///run/redis.sock",
            "rediss://h/#insecure",
            "redis://h/?protocol=resp3",
            "redis://h/zz",
        ] {
            let e = direct(bad).unwrap_err();
            assert_eq!(e.key, Key::Redis, "{bad}: {e:?}");
        }
    }

    #[test]
    fn tls_files_need_rediss_and_come_in_pairs() {
        let dir = std::env::temp_dir().join(format!("sw-cluster-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = link_config(&LinkKeys {
            redis: Some("redis://h"),
            tls_ca: Some(&not_pem),
            ..LinkKeys::default()
        })
        .unwrap_err();
        assert_eq!(e.key, Key::TlsCa);
        assert!(e.msg.contains("rediss://"), "{e:?}");
        let e = link_config(&LinkKeys {
            redis: Some("rediss://h"),
            tls_ca: Some(&not_pem),
            ..LinkKeys::default()
        })
        .unwrap_err();
        assert_eq!(e.key, Key::TlsCa);
        assert!(e.msg.contains("not PEM"), "{e:?}");
        let e = link_config(&LinkKeys {
            redis: Some("rediss://h"),
            tls_cert: Some(&not_pem),
            ..LinkKeys::default()
        })
        .unwrap_err();
        assert_eq!(e.key, Key::TlsCert);
        let e = link_config(&LinkKeys {
            redis: Some("rediss://h"),
            tls_ca: Some(&dir.join("missing.pem")),
            ..LinkKeys::default()
        })
        .unwrap_err();
        assert!(e.msg.contains("cannot read"), "{e:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sentinels_name_the_master() {
        let s = vec![
            "10.0.0.5:26379".to_string(),
            "[fd00::6]".into(),
            "s3".into(),
        ];
        let l = link_config(&LinkKeys {
            sentinels: &s,
            master_name: Some("mymaster"),
            ..LinkKeys::default()
        })
        .unwrap();
        let Target::Sentinel { sentinels, master } = &l.target else {
            panic!("{l:?}")
        };
        assert_eq!(master, "mymaster");
        assert_eq!(
            sentinels
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.0.0.5:26379", "[fd00::6]:26379", "s3:26379"]
        );
        assert_eq!(l.configured_hosts(), ["10.0.0.5", "fd00::6", "s3"]);
        // The URL gives TLS, credentials and database; its host is the
        // master's name.
        let l = link_config(&LinkKeys {
            redis: Some("rediss://sw:pw@mymaster/3"),
            sentinels: &s,
            ..LinkKeys::default()
        })
        .unwrap();
        assert!(matches!(&l.target, Target::Sentinel { master, .. } if master == "mymaster"));
        assert_eq!((l.db, l.tls.is_some()), (3, true));
        let e = link_config(&LinkKeys {
            redis: Some("redis://other"),
            sentinels: &s,
            master_name: Some("mymaster"),
            ..LinkKeys::default()
        })
        .unwrap_err();
        assert_eq!(e.key, Key::Redis);
        let e = link_config(&LinkKeys {
            sentinels: &s,
            ..LinkKeys::default()
        })
        .unwrap_err();
        assert_eq!(e.key, Key::Sentinels);
        let e = link_config(&LinkKeys {
            master_name: Some("m"),
            redis: Some("redis://h"),
            ..LinkKeys::default()
        })
        .unwrap_err();
        assert_eq!(e.key, Key::MasterName);
        let bad = vec!["10.0.0.5:0".to_string()];
        let e = link_config(&LinkKeys {
            sentinels: &bad,
            master_name: Some("m"),
            ..LinkKeys::default()
        })
        .unwrap_err();
        assert_eq!(e.key, Key::Sentinels);
        assert_eq!(
            link_config(&LinkKeys::default()).unwrap_err().key,
            Key::Table
        );
    }
}
