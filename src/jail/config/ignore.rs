//! `ignoreip` as written: addresses and networks (one set shared by the
//! jails that inherit it), host names and `file:/path` entries.

use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use super::{Bad, JailConfigError, JailWarning, WIDE_IGNORE_V4, WIDE_IGNORE_V6};
use crate::jail::ignore_file::IgnoreEntry;
use crate::net::NetSet;

/// One `ignoreip` entry as written: an address or network, a host name, or
/// `file:/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoreSpec(pub IgnoreEntry);

impl<'de> Deserialize<'de> for IgnoreSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IgnoreEntry::parse(&s)
            .map(IgnoreSpec)
            .map_err(de::Error::custom)
    }
}

/// An `ignoreip` list, read: its networks (one set, shared by every jail
/// that inherits it), its files and its host names.
#[derive(Clone, Debug)]
pub(super) struct IgnoreKeys {
    pub(super) nets: Arc<NetSet>,
    pub(super) files: Vec<PathBuf>,
    pub(super) names: Vec<String>,
}

/// Reads an `ignoreip` list: `/0` (or the mapped `::ffff:0:0/96`) is
/// refused, prefixes wider than /8 (IPv4) or /16 (IPv6) are taken with a
/// warning; files and host names are kept for the daemon.
pub(super) fn ignore_set(
    list: &[Spanned<IgnoreSpec>],
    warnings: &mut Vec<Spanned<JailWarning>>,
) -> Result<IgnoreKeys, Bad> {
    let mut keys = IgnoreKeys {
        nets: Arc::default(),
        files: Vec::new(),
        names: Vec::new(),
    };
    let mut nets = Vec::new();
    for n in list {
        let net = match &n.get_ref().0 {
            IgnoreEntry::Net(net) => *net,
            IgnoreEntry::File(p) => {
                if !keys.files.contains(p) {
                    keys.files.push(p.clone());
                }
                continue;
            }
            IgnoreEntry::Name(name) => {
                if !keys.names.contains(name) {
                    keys.names.push(name.clone());
                }
                continue;
            }
        };
        let wide = match net {
            IpNet::V4(_) => WIDE_IGNORE_V4,
            IpNet::V6(_) => WIDE_IGNORE_V6,
        };
        if net.prefix_len() == 0 {
            return Err(Spanned::new(n.span(), JailConfigError::EveryAddress(net)));
        }
        if net.prefix_len() < wide {
            warnings.push(Spanned::new(
                n.span(),
                JailWarning::WideIgnore { net, wide },
            ));
        }
        nets.push(net);
    }
    keys.nets = Arc::new(nets.into_iter().collect());
    Ok(keys)
}
