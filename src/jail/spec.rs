//! What the registry needs to run one jail, built from its configuration:
//! the policy a [`Jail`](super::Jail) counts with, and the Event Socket and
//! manager peers every jail must leave alone.

use std::path::PathBuf;

use ipnet::IpNet;

use super::config::JailConfig;
use super::{IgnoreList, JailPolicy};

/// What the registry needs to run one jail: its name, the filter it reads
/// (for status), and its policy as configured. The set adds this host's own
/// addresses (when `ignoreself`) and the cluster's to `ignore` itself.
#[derive(Clone, Debug)]
pub struct JailSpec {
    /// The jail's name.
    pub name: String,
    /// The filter its log sources use, if any (shown in status).
    pub filter: Option<String>,
    /// Never ban this host's own addresses.
    pub ignoreself: bool,
    /// The policy from configuration.
    pub policy: JailPolicy,
    /// Addresses of the Event Socket and manager (AMI) peers it listens
    /// to: protected in every jail (a ban of a PBX's address in any jail
    /// cuts this jail's connection to it too).
    pub peers: Vec<IpNet>,
    /// Host names of the Event Socket and manager peers it listens to:
    /// every address they resolve to is protected in every jail (see
    /// [`JailSet::set_resolved`](super::JailSet::set_resolved)).
    pub names: Vec<String>,
    /// Its `ignoreip` files (`file:/path`): what the set was last handed
    /// for each ([`JailSet::set_ignore_file`](super::JailSet::set_ignore_file))
    /// is left alone in this jail.
    pub ignore_files: Vec<PathBuf>,
    /// Its `ignoreip` host names: every address they resolve to is left
    /// alone in this jail.
    pub ignore_names: Vec<String>,
}

impl JailSpec {
    /// The spec of a configured jail. The Event Socket and manager peers
    /// it listens to are never banned: those given by address here, those
    /// given by name once their addresses are known.
    pub fn from_config(jc: &JailConfig) -> JailSpec {
        let mut addrs = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let hosts = jc.esl.iter().map(|p| &p.host);
        for host in hosts.chain(jc.ami.iter().map(|p| &p.host)) {
            match crate::net::host_addr(host) {
                Some(a) => addrs.push(IpNet::from(a)),
                None if !names.contains(host) => names.push(host.clone()),
                None => {}
            }
        }
        // The configured list is shared with every jail that inherits it,
        // not copied; the set adds the PBXs every jail listens to.
        let ignore = IgnoreList::shared(jc.ignoreip.clone(), Vec::new());
        JailSpec {
            name: jc.name.clone(),
            filter: jc.filter.clone(),
            ignoreself: jc.ignoreself,
            policy: JailPolicy {
                maxretry: jc.maxretry,
                findtime: jc.findtime,
                bantime: jc.bantime,
                ignore,
                max_tracked: jc.max_tracked,
                escalation: jc.escalation.clone(),
                ban_scanners: jc.ban_scanners,
                trust_registered: jc.trust_registered,
                trusted_maxretry: jc.trusted_maxretry,
                wrong_call_state_maxretry: jc.wrong_call_state_maxretry,
                invite_weight: jc.invite_weight,
                burst: super::burst::resolve(jc),
                ipv6_prefix: jc.ipv6_prefix,
            },
            peers: addrs,
            names,
            ignore_files: jc.ignore_files.clone(),
            ignore_names: jc.ignore_names.clone(),
        }
    }
}
