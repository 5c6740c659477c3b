//! `[cluster]`, resolved: where Redis is (one URL, or sentinels and the
//! master's name), how to reach it (TLS files, ACL user and password,
//! database), this node's name and the key prefix.
//!
//! The keys as written ([`RawCluster`]) are checked here
//! ([`ClusterConfig::from_raw`]); an error carries the span of the wrong
//! key, so `config/` can point at its line. What the link keys resolve to
//! (the server or sentinels, TLS files, credentials) is in `target.rs`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::target::{ClientError, HostPort, HostPortError, LinkConfig, Pem, Target, TlsFiles};

/// The Redis port when a URL names none.
const REDIS_PORT: u16 = 6379;
/// The Sentinel port when a `sentinels` entry names none.
const SENTINEL_PORT: u16 = 26379;
/// Largest TLS file read (a certificate chain is a few KiB).
const PEM_MAX: u64 = 1024 * 1024;

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    redis: Option<Spanned<String>>,
    sentinels: Option<Spanned<Vec<String>>>,
    master_name: Option<Spanned<String>>,
    tls_ca: Option<Spanned<PathBuf>>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    node: Option<Spanned<String>>,
    key_prefix: Option<Spanned<String>>,
}

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
#[derive(Debug)]
pub struct Problem {
    /// The key.
    pub key: Key,
    /// What is wrong, and what to write instead.
    pub reason: ClusterConfigError,
}

fn problem(key: Key, reason: ClusterConfigError) -> Problem {
    Problem { key, reason }
}

/// What is wrong with a `[cluster]` key, and what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum ClusterConfigError {
    /// Neither `redis://` nor `rediss://`.
    #[error(
        "the URL must start with redis:// or rediss:// (TCP only: a unix socket cannot be shared by a fleet)"
    )]
    Scheme,
    /// `#insecure` and the like.
    #[error(
        "a URL fragment (#insecure) is not accepted: certificates are always checked; set tls_ca to the CA that signed the server's"
    )]
    Fragment,
    /// The `redis` crate could not read the URL.
    #[error(
        "{0}; the form is redis[s]://[user:password@]host[:port][/db], with reserved characters in user or password percent-encoded (@ as %40, : as %3A, / as %2F)"
    )]
    Url(#[source] redis::RedisError),
    /// A unix socket URL.
    #[error("only TCP servers are supported")]
    NotTcp,
    /// `?protocol=`.
    #[error("?protocol= is not accepted: the fleet speaks RESP2")]
    Protocol,
    /// `master_name` without `sentinels`.
    #[error("master_name {0:?} needs sentinels = [\"host:port\", ...]")]
    MasterWithoutSentinels(String),
    /// Neither `redis` nor `sentinels`.
    #[error(
        "[cluster] needs redis = \"redis://host:6379\" (or sentinels = [...] with master_name)"
    )]
    NoServer,
    /// A `sentinels` entry that is not `host:port`.
    #[error(transparent)]
    Sentinel(#[from] HostPortError),
    /// With sentinels, the URL's host is not `master_name`.
    #[error(
        "with sentinels, the host of redis names the master: {host:?} is not master_name {master:?}"
    )]
    MasterMismatch {
        /// The URL's host.
        host: String,
        /// `master_name`.
        master: String,
    },
    /// `sentinels` without a master name.
    #[error(
        "sentinels need master_name = \"mymaster\" (the name in their `sentinel monitor` line)"
    )]
    NoMasterName,
    /// A master name no sentinel configuration has.
    #[error("master_name must be 1-128 letters, digits, '-', '_' or '.'")]
    MasterName,
    /// A TLS file that cannot be read.
    #[error("cannot read {what} {}: {source}", .path.display())]
    ReadPem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS file too large to be a certificate or key.
    #[error("{} is over {PEM_MAX} bytes: not a PEM {what}", .path.display())]
    PemTooLarge {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A TLS file without a PEM block.
    #[error("{} is not PEM (no -----BEGIN line): {what} expected", .path.display())]
    NotPem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// `tls_cert` alone.
    #[error("tls_cert needs tls_key (its private key)")]
    CertWithoutKey,
    /// `tls_key` alone.
    #[error("tls_key needs tls_cert (its certificate)")]
    KeyWithoutCert,
    /// A TLS file with a `redis://` URL.
    #[error("{0} is for TLS: write the URL as rediss://... (redis = \"rediss://host:6379\")")]
    TlsWithoutRediss(&'static str),
    /// The TLS files do not make a client (a key that is not a key).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `node` is not a name.
    #[error("node must be 1-64 letters, digits, '-', '_' or '.'")]
    Node,
    /// `key_prefix` is not a name.
    #[error("key_prefix must be 1-64 letters, digits, '-', '_' or '.'")]
    KeyPrefix,
}

/// The parts of a `redis://` or `rediss://` URL.
struct Url {
    tls: bool,
    server: HostPort,
    user: Option<String>,
    password: Option<String>,
    db: i64,
}

fn parse_url(url: &str) -> Result<Url, ClusterConfigError> {
    let tls = if url.starts_with("rediss://") {
        true
    } else if url.starts_with("redis://") {
        false
    } else {
        return Err(ClusterConfigError::Scheme);
    };
    if url.contains('#') {
        return Err(ClusterConfigError::Fragment);
    }
    let info =
        redis::IntoConnectionInfo::into_connection_info(url).map_err(ClusterConfigError::Url)?;
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p)
        | redis::ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => (h.clone(), *p),
        _ => return Err(ClusterConfigError::NotTcp),
    };
    if url.contains("protocol=") {
        return Err(ClusterConfigError::Protocol);
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

fn read_pem(path: &Path, key: Key, what: &'static str) -> Result<Pem, Problem> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let path_buf = || path.to_path_buf();
    std::fs::File::open(path)
        .and_then(|f| f.take(PEM_MAX + 1).read_to_end(&mut bytes))
        .map_err(|source| {
            problem(
                key,
                ClusterConfigError::ReadPem {
                    what,
                    path: path_buf(),
                    source,
                },
            )
        })?;
    if bytes.len() as u64 > PEM_MAX {
        return Err(problem(
            key,
            ClusterConfigError::PemTooLarge {
                what,
                path: path_buf(),
            },
        ));
    }
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(problem(
            key,
            ClusterConfigError::NotPem {
                what,
                path: path_buf(),
            },
        ));
    }
    Ok(Pem {
        path: path_buf(),
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
                ClusterConfigError::MasterWithoutSentinels(m.to_string()),
            ));
        }
        let Some(u) = &url else {
            return Err(problem(Key::Table, ClusterConfigError::NoServer));
        };
        Target::Direct(u.server.clone())
    } else {
        let mut sentinels = Vec::new();
        for s in k.sentinels {
            let hp =
                HostPort::parse(s, SENTINEL_PORT).map_err(|e| problem(Key::Sentinels, e.into()))?;
            if !sentinels.contains(&hp) {
                sentinels.push(hp);
            }
        }
        let from_url = url.as_ref().map(|u| u.server.host.clone());
        let master = match (k.master_name, from_url) {
            (Some(m), Some(h)) if m != h => {
                return Err(problem(
                    Key::Redis,
                    ClusterConfigError::MasterMismatch {
                        host: h,
                        master: m.to_string(),
                    },
                ));
            }
            (Some(m), _) => m.to_string(),
            (None, Some(h)) => h,
            (None, None) => {
                return Err(problem(Key::Sentinels, ClusterConfigError::NoMasterName));
            }
        };
        if master.is_empty()
            || master.len() > 128
            || !master
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(problem(Key::MasterName, ClusterConfigError::MasterName));
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
                return Err(problem(Key::TlsCert, ClusterConfigError::CertWithoutKey));
            }
            (None, Some(_)) => {
                return Err(problem(Key::TlsKey, ClusterConfigError::KeyWithoutCert));
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
                return Err(problem(key, ClusterConfigError::TlsWithoutRediss(name)));
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
        let said = e.to_string();
        let key = if said.contains("root") || said.contains("trust") {
            Key::TlsCa
        } else if said.contains("private key") {
            Key::TlsKey
        } else if link.tls.is_some() {
            Key::TlsCert
        } else {
            Key::Redis
        };
        return Err(problem(key, e.into()));
    }
    Ok(link)
}

impl ClusterConfig {
    /// Checks `[cluster]` (`table` spans the whole table, for an error
    /// about no key in particular); an error carries the span of the wrong
    /// key. Reads the TLS files, and this host's name when `node` is unset.
    pub fn from_raw(
        table: &Spanned<RawCluster>,
    ) -> Result<ClusterConfig, Spanned<ClusterConfigError>> {
        let c = table.get_ref();
        let sentinels: &[String] = c.sentinels.as_ref().map_or(&[], |s| s.get_ref());
        let link = link_config(&LinkKeys {
            redis: c.redis.as_ref().map(|r| r.get_ref().as_str()),
            sentinels,
            master_name: c.master_name.as_ref().map(|m| m.get_ref().as_str()),
            tls_ca: c.tls_ca.as_ref().map(|p| p.get_ref().as_path()),
            tls_cert: c.tls_cert.as_ref().map(|p| p.get_ref().as_path()),
            tls_key: c.tls_key.as_ref().map(|p| p.get_ref().as_path()),
        })
        .map_err(|p| {
            let span = match p.key {
                Key::Redis => c.redis.as_ref().map(Spanned::span),
                Key::Sentinels => c.sentinels.as_ref().map(Spanned::span),
                Key::MasterName => c.master_name.as_ref().map(Spanned::span),
                Key::TlsCa => c.tls_ca.as_ref().map(Spanned::span),
                Key::TlsCert => c.tls_cert.as_ref().map(Spanned::span),
                Key::TlsKey => c.tls_key.as_ref().map(Spanned::span),
                Key::Table => None,
            };
            Spanned::new(span.unwrap_or_else(|| table.span()), p.reason)
        })?;
        let word = |v: &str| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let node = match &c.node {
            Some(n) if !word(n.get_ref()) => {
                return Err(Spanned::new(n.span(), ClusterConfigError::Node));
            }
            Some(n) => n.get_ref().clone(),
            None => default_node_name(),
        };
        let prefix = match &c.key_prefix {
            Some(p) if !word(p.get_ref()) => {
                return Err(Spanned::new(p.span(), ClusterConfigError::KeyPrefix));
            }
            Some(p) => p.get_ref().clone(),
            None => "sipwarden".into(),
        };
        Ok(ClusterConfig { link, node, prefix })
    }
}

/// The host's name, for a cluster node without `node`.
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sipwarden".into())
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
        assert!(e.reason.to_string().contains("rediss://"), "{e:?}");
        let e = link_config(&LinkKeys {
            redis: Some("rediss://h"),
            tls_ca: Some(&not_pem),
            ..LinkKeys::default()
        })
        .unwrap_err();
        assert_eq!(e.key, Key::TlsCa);
        assert!(e.reason.to_string().contains("not PEM"), "{e:?}");
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
        assert!(e.reason.to_string().contains("cannot read"), "{e:?}");
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
