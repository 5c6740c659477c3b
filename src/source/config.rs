//! The source keys of a configuration: a jail's `logpath` (one path or a
//! list), its Event Sockets (`esl`, one table or an array of tables), its
//! wire sensor (`wire`), and `[scanners]`. The `[jail.NAME]` table that
//! holds them is read by the jail's configuration; each key is checked here.

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::esl::{EslFormat, EslPeer};
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

/// A jail's `wire` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWire {
    interface: Option<String>,
    ports: Option<Vec<u16>>,
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
