//! The source keys of a configuration: a jail's `logpath` (one path or a
//! list), its Event Sockets (`esl`, one table or an array of tables), its
//! Asterisk managers (`ami`, the same), its wire sensor (`wire`), its HEP
//! listener (`hep`), its journal (`backend`, `journalmatch`,
//! `journal_dir`), and `[scanners]`. The `[jail.NAME]` table that
//! holds them is read by the jail's configuration; each key is checked here.

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::ami::AmiPeer;
use super::esl::{EslFormat, EslPeer};
use super::hep::{DEFAULT_PORT, HepConfig};
use super::journal::{JournalConfig, JournalMatch, Location};
use super::scanner::DEFAULT_SCANNERS;
use super::wire::WireConfig;

/// One path or a list of paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathList(pub Vec<PathBuf>);

impl<'de> Deserialize<'de> for PathList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(PathBuf),
            Many(Vec<PathBuf>),
        }
        match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(p)) => Ok(PathList(vec![p])),
            Ok(OneOrMany::Many(v)) => Ok(PathList(v)),
            Err(_) => Err(de::Error::custom("expected a path or a list of paths")),
        }
    }
}

/// One `esl` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEsl {
    host: Option<String>,
    port: Option<u16>,
    password: Option<String>,
    format: Option<EslFormat>,
    log_acl: Option<bool>,
}

/// One `ami` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmi {
    host: Option<String>,
    port: Option<u16>,
    username: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
}

/// Largest `ami.secret_file` read.
const MAX_SECRET_FILE: u64 = 4096;

/// A jail's `wire` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWire {
    interface: Option<String>,
    ports: Option<Vec<u16>>,
}

/// A jail's `hep` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHep {
    listen: Option<String>,
    password: Option<String>,
    allow: Option<Vec<String>>,
}

/// A wrong `hep` value.
#[derive(Debug, thiserror::Error)]
pub enum HepConfigError {
    /// Not a table, an unknown key, or a value of the wrong type.
    #[error(
        "hep: {0}; expected {{ listen = \"127.0.0.1:9060\", password = \"...\", allow = [\"10.0.0.0/8\"] }}"
    )]
    Table(String),
    /// `listen` not an address and port.
    #[error(
        "hep.listen {0:?} is not an address and port (e.g. \"127.0.0.1:9060\", \"[::1]:9060\")"
    )]
    Listen(String),
    /// An `allow` entry that is not an address or network.
    #[error("hep.allow: {0}")]
    Allow(crate::net::NetError),
    /// `allow = []`: nothing would ever be accepted.
    #[error("hep.allow is empty: no sender would be accepted; list the servers that send HEP")]
    AllowEmpty,
    /// A listener beyond loopback that does not say whom it takes.
    #[error(
        "hep.listen {0} is reachable beyond this host: list the servers that send HEP in hep.allow (e.g. allow = [\"10.0.0.5\"]); without allow only loopback is accepted"
    )]
    AllowNeeded(std::net::SocketAddr),
    /// `password = ""`.
    #[error("hep.password is empty; remove it or set the servers' HEP auth key")]
    EmptyPassword,
}

/// Reads a jail's `hep`: `listen` defaults to `127.0.0.1:9060`, `allow` to
/// loopback (required when `listen` is not loopback).
pub fn hep(v: &toml::Value) -> Result<HepConfig, HepConfigError> {
    let raw: RawHep = v
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| HepConfigError::Table(e.message().to_string()))?;
    let listen = match &raw.listen {
        Some(l) => l
            .parse::<std::net::SocketAddr>()
            .map_err(|_| HepConfigError::Listen(l.clone()))?,
        None => std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
    };
    let allow = match &raw.allow {
        Some(list) if list.is_empty() => return Err(HepConfigError::AllowEmpty),
        Some(list) => list
            .iter()
            .map(|a| crate::net::parse_net(a).map_err(HepConfigError::Allow))
            .collect::<Result<Vec<_>, _>>()?,
        None if listen.ip().is_loopback() => vec![
            ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(
                std::net::Ipv4Addr::new(127, 0, 0, 0),
                8,
            )),
            ipnet::IpNet::from(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
        ],
        None => return Err(HepConfigError::AllowNeeded(listen)),
    };
    if raw.password.as_deref() == Some("") {
        return Err(HepConfigError::EmptyPassword);
    }
    Ok(HepConfig {
        listen,
        password: raw.password,
        allow,
    })
}

/// `[scanners]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScanners {
    user_agents: Option<Vec<String>>,
}

/// A wrong `esl` value.
#[derive(Debug, thiserror::Error)]
pub enum EslConfigError {
    /// A table with an unknown key or a value of the wrong type.
    #[error("esl: {}", .0.message())]
    Table(toml::de::Error),
    /// Neither a table nor an array of tables.
    #[error(
        "esl must be a table {{ host, port, password, format, log_acl }} or an array of such tables"
    )]
    Shape,
    /// `esl = []`.
    #[error("esl is an empty list; give at least one {{ host, port, password }}")]
    Empty,
}

/// Reads a jail's `esl`: one table or an array of tables, each filled in
/// with FreeSWITCH's defaults (`127.0.0.1:8021`, `ClueCon`, plain events).
pub fn esl_peers(v: &toml::Value) -> Result<Vec<EslPeer>, EslConfigError> {
    let raws: Vec<RawEsl> = match v {
        toml::Value::Array(_) => v.clone().try_into().map_err(EslConfigError::Table)?,
        toml::Value::Table(_) => vec![v.clone().try_into().map_err(EslConfigError::Table)?],
        _ => return Err(EslConfigError::Shape),
    };
    if raws.is_empty() {
        return Err(EslConfigError::Empty);
    }
    Ok(raws
        .into_iter()
        .map(|r| EslPeer {
            host: r.host.unwrap_or_else(|| "127.0.0.1".into()),
            port: r.port.unwrap_or(8021),
            password: r.password.unwrap_or_else(|| "ClueCon".into()),
            format: r.format.unwrap_or(EslFormat::Plain),
            log_acl: r.log_acl.unwrap_or(false),
        })
        .collect())
}

/// A wrong `ami` value.
#[derive(Debug, thiserror::Error)]
pub enum AmiConfigError {
    /// A table with an unknown key or a value of the wrong type.
    #[error("ami: {}", .0.message())]
    Table(toml::de::Error),
    /// Neither a table nor an array of tables.
    #[error(
        "ami must be a table {{ host, port, username, secret or secret_file }} or an array of such tables"
    )]
    Shape,
    /// `ami = []`.
    #[error("ami is an empty list; give at least one {{ host, port, username, secret }}")]
    Empty,
    /// Both `secret` and `secret_file`.
    #[error("ami {peer}: secret and secret_file are both set; keep one")]
    TwoSecrets {
        /// `host:port`.
        peer: String,
    },
    /// A `secret_file` that cannot be used; never its content.
    #[error("ami {peer}: secret_file {}: {why}", path.display())]
    SecretFile {
        /// `host:port`.
        peer: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// No `secret` (Asterisk has no default one).
    #[error(
        "ami {peer} has no secret; give the secret of its manager.conf user (a [{user}] section with read = security), as secret or in a secret_file"
    )]
    NoSecret {
        /// `host:port`.
        peer: String,
        /// The username.
        user: String,
    },
    /// An empty value, or one with a line break or a control character,
    /// which would end the login message early.
    #[error(
        "ami {peer}: {key} must be non-empty, on one line, without control characters (it is sent in the login message)"
    )]
    BadValue {
        /// `host:port`.
        peer: String,
        /// `username` or `secret`.
        key: &'static str,
    },
}

/// Reads a jail's `ami`: one table or an array of tables, filled in with
/// Asterisk's defaults (`127.0.0.1:5038`) and the username `sipwarden`;
/// the `secret` must be given.
pub fn ami_peers(v: &toml::Value) -> Result<Vec<AmiPeer>, AmiConfigError> {
    let raws: Vec<RawAmi> = match v {
        toml::Value::Array(_) => v.clone().try_into().map_err(AmiConfigError::Table)?,
        toml::Value::Table(_) => vec![v.clone().try_into().map_err(AmiConfigError::Table)?],
        _ => return Err(AmiConfigError::Shape),
    };
    if raws.is_empty() {
        return Err(AmiConfigError::Empty);
    }
    let one_line = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    raws.into_iter()
        .map(|r| {
            let mut peer = AmiPeer {
                host: r.host.unwrap_or_else(|| "127.0.0.1".into()),
                port: r.port.unwrap_or(5038),
                username: r.username.unwrap_or_else(|| "sipwarden".into()),
                secret: String::new(),
            };
            let label = peer.label();
            if !one_line(&peer.username) {
                return Err(AmiConfigError::BadValue {
                    peer: label,
                    key: "username",
                });
            }
            peer.secret = match (r.secret, r.secret_file) {
                (Some(_), Some(_)) => return Err(AmiConfigError::TwoSecrets { peer: label }),
                (Some(s), None) => s,
                (None, Some(path)) => secret_file(&label, path)?,
                (None, None) => {
                    return Err(AmiConfigError::NoSecret {
                        peer: label,
                        user: peer.username,
                    });
                }
            };
            if !one_line(&peer.secret) {
                return Err(AmiConfigError::BadValue {
                    peer: label,
                    key: "secret",
                });
            }
            Ok(peer)
        })
        .collect()
}

/// Reads `ami.secret_file`: an absolute path to a regular file of at most
/// [`MAX_SECRET_FILE`] bytes of UTF-8, the secret on its first line (a
/// final line end is not part of it). What goes wrong names the file,
/// never its content.
fn secret_file(peer: &str, path: PathBuf) -> Result<String, AmiConfigError> {
    let err = |path: &PathBuf, why: &str| AmiConfigError::SecretFile {
        peer: peer.to_string(),
        path: path.clone(),
        why: why.to_string(),
    };
    if !path.is_absolute() {
        return Err(err(&path, "must be an absolute path"));
    }
    let meta = std::fs::metadata(&path).map_err(|e| err(&path, &e.to_string()))?;
    if !meta.is_file() {
        return Err(err(&path, "is not a regular file"));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(err(
            &path,
            &format!("is larger than {MAX_SECRET_FILE} bytes"),
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| err(&path, &e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| err(&path, "is not UTF-8 text"))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(err(&path, "is empty"));
    }
    Ok(secret.to_string())
}

impl WireConfig {
    /// A jail's `wire`, with SIP's port 5060 unless `ports` says otherwise.
    pub fn from_raw(raw: &RawWire) -> WireConfig {
        WireConfig {
            interface: raw.interface.clone(),
            ports: raw.ports.clone().unwrap_or_else(|| vec![5060]),
        }
    }
}

/// `[scanners] user_agents`, or the built-in list of attack tools.
pub fn user_agents(raw: RawScanners) -> Vec<String> {
    raw.user_agents
        .unwrap_or_else(|| DEFAULT_SCANNERS.iter().map(|s| s.to_string()).collect())
}

/// A wrong `backend`, `journalmatch` or `journal_dir`.
#[derive(Debug, thiserror::Error)]
pub enum JournalConfigError {
    /// A backend other than the two there are.
    #[error(
        "backend {0:?}: use \"systemd\" (the journal) or \"file\" (logpath, the default; fail2ban's \"auto\", \"polling\" and \"pyinotify\" mean the same)"
    )]
    Backend(String),
    /// A journal key in a jail that does not read the journal.
    #[error("{0} is read only with backend = \"systemd\"")]
    NotJournal(&'static str),
    /// A `journalmatch` that cannot be used.
    #[error(transparent)]
    Match(#[from] crate::source::journal::MatchError),
    /// fail2ban's `journalflags` not a number.
    #[error(
        "journalflags {0:?} is not a number (sd_journal_open flags: 1 local only, 2 runtime only, 4 system, 8 current user)"
    )]
    Flags(String),
    /// `journalflags` libsystemd refuses for this journal (it would fail
    /// every open with EINVAL).
    #[error(
        "journalflags {flags} cannot be used with {what} (libsystemd refuses it); allowed there: {allowed}"
    )]
    FlagsRefused {
        /// As written.
        flags: i32,
        /// Which journal: the host's, `journalpath` or `journalfiles`.
        what: &'static str,
        /// The allowed flags, named.
        allowed: &'static str,
    },
}

/// Whether libsystemd (252) opens `location` with `flags`: the host's
/// journal takes 1 local only, 2 runtime only, 4 system, 8 current user;
/// a directory 4, 8 and 16 (os root); files none.
fn check_flags(location: &Location, flags: i32) -> Result<(), JournalConfigError> {
    use super::journal::sys::flags::{CURRENT_USER, LOCAL_ONLY, RUNTIME_ONLY, SYSTEM};
    const OS_ROOT: i32 = 1 << 4;
    let (allowed_bits, what, allowed) = match location {
        Location::System => (
            LOCAL_ONLY | RUNTIME_ONLY | SYSTEM | CURRENT_USER,
            "the host's journal",
            "0, or a sum of 1 (local only), 2 (runtime only), 4 (system), 8 (current user)",
        ),
        Location::Directory(_) => (
            SYSTEM | CURRENT_USER | OS_ROOT,
            "journalpath",
            "0, or a sum of 4 (system), 8 (current user), 16 (os root)",
        ),
        Location::Files(_) => (0, "journalfiles", "0 only"),
    };
    if flags < 0 || flags & !allowed_bits != 0 {
        return Err(JournalConfigError::FlagsRefused {
            flags,
            what,
            allowed,
        });
    }
    Ok(())
}

/// A jail's journal keys as written: `backend`, `journalmatch`,
/// `journal_dir`.
#[derive(Debug, Default)]
pub struct RawJournal<'a> {
    /// `backend`.
    pub backend: Option<&'a str>,
    /// `journalmatch`.
    pub journalmatch: Option<&'a str>,
    /// `journal_dir`.
    pub journal_dir: Option<&'a std::path::Path>,
}

/// Which key of [`RawJournal`] an error is about, for its span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalKey {
    /// `backend`.
    Backend,
    /// `journalmatch`.
    Journalmatch,
    /// `journal_dir`.
    JournalDir,
}

/// Reads a jail's journal keys: `Some` when it reads the journal
/// (`backend = "systemd"`: the host's journal, or the files of
/// `journal_dir`; `journalmatch`, else the filter's).
pub fn journal(
    raw: &RawJournal<'_>,
) -> Result<Option<JournalConfig>, (JournalKey, JournalConfigError)> {
    let systemd = match raw.backend {
        None | Some("file") => false,
        Some("systemd") => true,
        Some(other) => {
            return Err((
                JournalKey::Backend,
                JournalConfigError::Backend(other.to_string()),
            ));
        }
    };
    if !systemd {
        if raw.journalmatch.is_some() {
            return Err((
                JournalKey::Journalmatch,
                JournalConfigError::NotJournal("journalmatch"),
            ));
        }
        if raw.journal_dir.is_some() {
            return Err((
                JournalKey::JournalDir,
                JournalConfigError::NotJournal("journal_dir"),
            ));
        }
        return Ok(None);
    }
    let matches = raw
        .journalmatch
        .map(JournalMatch::parse)
        .transpose()
        .map_err(|e| (JournalKey::Journalmatch, e.into()))?;
    let mut cfg = JournalConfig::system();
    if let Some(d) = raw.journal_dir {
        cfg.location = Location::Directory(d.to_path_buf());
        cfg.flags = 0;
    }
    cfg.matches = matches;
    Ok(Some(cfg))
}

/// [`journal`] over the keys as a `[jail.NAME]` table holds them: an error
/// comes with the span of its key.
#[allow(clippy::type_complexity)]
pub fn journal_keys(
    backend: &Option<toml::Spanned<String>>,
    journalmatch: &Option<toml::Spanned<String>>,
    journal_dir: &Option<toml::Spanned<PathBuf>>,
) -> Result<Option<JournalConfig>, (Option<std::ops::Range<usize>>, JournalConfigError)> {
    let raw = RawJournal {
        backend: backend.as_ref().map(|b| b.get_ref().as_str()),
        journalmatch: journalmatch.as_ref().map(|m| m.get_ref().as_str()),
        journal_dir: journal_dir.as_ref().map(|d| d.get_ref().as_path()),
    };
    journal(&raw).map_err(|(key, e)| {
        let at = match key {
            JournalKey::Backend => backend.as_ref().map(toml::Spanned::span),
            JournalKey::Journalmatch => journalmatch.as_ref().map(toml::Spanned::span),
            JournalKey::JournalDir => journal_dir.as_ref().map(toml::Spanned::span),
        };
        (at, e)
    })
}

/// A fail2ban jail's `backend` (`systemd[journalpath=DIR, journalfiles=F,
/// journalflags=N]`, `auto`, `polling`, ...): `Some` when the jail reads
/// the journal. `auto` reads it when none of the jail's log files exists
/// (`exists` tells, for a glob pattern: whether it matches a file now), as
/// fail2ban 1.1 falls back to it.
pub fn fail2ban_journal(
    backend: &str,
    logpath: &[PathBuf],
    exists: impl Fn(&std::path::Path) -> bool,
) -> Result<Option<JournalConfig>, JournalConfigError> {
    let (name, opts) = crate::filter::f2b::parse_filter_spec(backend);
    match name.to_ascii_lowercase().as_str() {
        "systemd" => {
            let mut cfg = JournalConfig::system();
            let files: Vec<PathBuf> = opts
                .get("journalfiles")
                .map(|f| f.split_whitespace().map(PathBuf::from).collect())
                .unwrap_or_default();
            if let Some(p) = opts.get("journalpath").filter(|p| !p.is_empty()) {
                cfg.location = Location::Directory(PathBuf::from(p));
                cfg.flags = 0;
            } else if !files.is_empty() {
                cfg.location = Location::Files(files);
                cfg.flags = 0;
            }
            if let Some(f) = opts.get("journalflags") {
                cfg.flags = f
                    .trim()
                    .parse()
                    .map_err(|_| JournalConfigError::Flags(f.clone()))?;
            }
            check_flags(&cfg.location, cfg.flags)?;
            Ok(Some(cfg))
        }
        "auto" if !logpath.iter().any(|p| exists(p)) => Ok(Some(JournalConfig::system())),
        "auto" | "polling" | "pyinotify" | "gamin" | "inotify" => Ok(None),
        _ => Err(JournalConfigError::Backend(backend.to_string())),
    }
}

#[cfg(test)]
mod hep_tests {
    use super::*;

    fn read(text: &str) -> Result<HepConfig, HepConfigError> {
        let t: toml::Table = toml::from_str(&format!("hep = {text}")).unwrap();
        hep(&t["hep"])
    }

    #[test]
    fn hep_keys() {
        let c = read("{}").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9060");
        assert_eq!(c.allow.len(), 2, "loopback, both families");
        assert!(c.password.is_none() && c.warning().is_none());
        let c =
            read(r#"{ listen = "0.0.0.0:9061", allow = ["10.0.0.0/8", "2001:db8::5"] }"#).unwrap();
        assert_eq!(c.listen.port(), 9061);
        assert!(c.warning().unwrap().contains("without a password"));
        let c = read(r#"{ listen = "[::]:9060", allow = ["10.0.0.5"], password = "k" }"#).unwrap();
        assert!(c.warning().is_none());
        for (text, want) in [
            ("5", "hep: "),
            (r#"{ lisen = "x" }"#, "unknown field `lisen`"),
            (r#"{ listen = "localhost" }"#, "not an address and port"),
            (
                r#"{ allow = ["ten"] }"#,
                "hep.allow: \"ten\" is not an IP address",
            ),
            (r#"{ allow = [] }"#, "hep.allow is empty"),
            (
                r#"{ listen = "0.0.0.0:9060" }"#,
                "list the servers that send HEP",
            ),
            (r#"{ password = "" }"#, "hep.password is empty"),
        ] {
            let e = read(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;

    fn toml(
        backend: Option<&str>,
        m: Option<&str>,
        dir: Option<&str>,
    ) -> Result<Option<JournalConfig>, JournalKey> {
        journal(&RawJournal {
            backend,
            journalmatch: m,
            journal_dir: dir.map(std::path::Path::new),
        })
        .map_err(|(k, _)| k)
    }

    #[test]
    fn toml_journal_keys() {
        assert_eq!(toml(None, None, None), Ok(None));
        assert_eq!(toml(Some("file"), None, None), Ok(None));
        let j = toml(
            Some("systemd"),
            Some("_COMM=sshd + _SYSTEMD_UNIT=ssh.service"),
            Some("/j"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(j.location, Location::Directory("/j".into()));
        assert_eq!(j.flags, 0);
        assert_eq!(j.matches.unwrap().groups.len(), 2);
        let j = toml(Some("systemd"), None, None).unwrap().unwrap();
        assert_eq!(
            (j.location, j.flags, j.matches),
            (Location::System, 4, None)
        );
        assert_eq!(toml(Some("journald"), None, None), Err(JournalKey::Backend));
        assert_eq!(
            toml(None, Some("_COMM=sshd"), None),
            Err(JournalKey::Journalmatch)
        );
        assert_eq!(toml(None, None, Some("/j")), Err(JournalKey::JournalDir));
        assert_eq!(
            toml(Some("systemd"), Some("sshd"), None),
            Err(JournalKey::Journalmatch)
        );
    }

    /// Finding 4 (review of issue 19): flags libsystemd refuses for the
    /// journal chosen (EINVAL at every open, retried every 5 s forever)
    /// are refused when the configuration is read, naming those allowed.
    #[test]
    fn journalflags_libsystemd_refuses_are_refused_at_load() {
        let all = |_: &std::path::Path| true;
        for spec in [
            "systemd[journalpath=/run/j, journalflags=1]",
            "systemd[journalpath=/run/j, journalflags=2]",
            "systemd[journalpath=/run/j, journalflags=32]",
            "systemd[journalfiles=/a.journal, journalflags=4]",
            "systemd[journalfiles=/a.journal, journalflags=1]",
            "systemd[journalflags=16]",
            "systemd[journalflags=-1]",
        ] {
            let e = fail2ban_journal(spec, &[], all)
                .expect_err(spec)
                .to_string();
            assert!(e.contains("allowed"), "{spec}: {e}");
        }
        for spec in [
            "systemd[journalpath=/run/j, journalflags=4]",
            "systemd[journalpath=/run/j, journalflags=0]",
            "systemd[journalfiles=/a.journal, journalflags=0]",
            "systemd[journalflags=1]",
            "systemd[journalflags=15]",
        ] {
            assert!(fail2ban_journal(spec, &[], all).is_ok(), "{spec}");
        }
    }

    #[test]
    fn fail2ban_backends() {
        let none = |_: &std::path::Path| false;
        let all = |_: &std::path::Path| true;
        let logs = [PathBuf::from("/var/log/auth.log")];
        let j = fail2ban_journal("systemd", &logs, all).unwrap().unwrap();
        assert_eq!((j.location, j.flags), (Location::System, 4));
        let j = fail2ban_journal("systemd[journalpath=/run/j, journalflags=4]", &[], all)
            .unwrap()
            .unwrap();
        assert_eq!(
            (j.location, j.flags),
            (Location::Directory("/run/j".into()), 4)
        );
        let j = fail2ban_journal(r#"systemd[journalfiles="/a.journal /b.journal"]"#, &[], all)
            .unwrap()
            .unwrap();
        assert_eq!(
            (j.location, j.flags),
            (
                Location::Files(vec!["/a.journal".into(), "/b.journal".into()]),
                0
            )
        );
        // auto: the journal only when no log file is there.
        assert!(fail2ban_journal("auto", &logs, all).unwrap().is_none());
        assert_eq!(
            fail2ban_journal("auto", &logs, none)
                .unwrap()
                .unwrap()
                .location,
            Location::System
        );
        assert!(fail2ban_journal("auto", &[], all).unwrap().is_some());
        // A glob that matches nothing: the journal, as fail2ban 1.1 does.
        let glob = [PathBuf::from("/var/log/apache*/*error.log")];
        assert!(fail2ban_journal("auto", &glob, none).unwrap().is_some());
        assert!(fail2ban_journal("auto", &glob, all).unwrap().is_none());
        assert!(fail2ban_journal("polling", &logs, none).unwrap().is_none());
        assert!(fail2ban_journal("systemd[journalflags=x]", &[], all).is_err());
        assert!(fail2ban_journal("journald", &logs, all).is_err());
    }
}
