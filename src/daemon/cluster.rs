//! The bridge to the fleet: this node's bans and shared failures go out,
//! what other nodes decided comes in as decisions.

use std::sync::Arc;

use ipnet::IpNet;

use super::runtime::{JobMeta, Runtime};
use crate::event::{FailureEvent, JailId, Time};
use crate::jail::{BanReason, Decision, DisplayNet, RemoteBan};
use crate::net::{parse_ban_target, parse_prefix};

impl Runtime {
    /// Joins the fleet when `[cluster]` is set; what the fleet says comes
    /// back over `tx`. The Redis server (or the sentinels) is never banned.
    pub(super) fn start_cluster(&mut self, tx: tokio::sync::mpsc::Sender<crate::cluster::Inbound>) {
        let Some(cc) = self.config.cluster.clone() else {
            return;
        };
        let own: Vec<std::net::IpAddr> = super::own_addresses().iter().map(IpNet::addr).collect();
        self.jails.add_peers(configured_addrs(&cc));
        self.cluster = Some(crate::cluster::Cluster::start(cc, own, tx));
    }

    /// Hands this node's own decisions to the cluster: its bans, and its
    /// manual unbans (expiries happen on every node by themselves).
    pub(super) fn publish(&self, decisions: &[Decision]) {
        let Some(c) = &self.cluster else { return };
        for d in decisions {
            match d {
                Decision::Ban(b) if b.reason != BanReason::Cluster => {
                    c.send(crate::cluster::Outbound::Ban(crate::cluster::SharedBan {
                        jail: b.jail_name.to_string(),
                        addr: DisplayNet(&b.addr).to_string(),
                        start: b.start.0,
                        end: b.end.map(|e| e.0),
                        failures: b.failures,
                        origin: c.config.node.clone(),
                    }));
                }
                Decision::Unban(u) if u.reason == crate::jail::UnbanReason::Manual => {
                    c.send(crate::cluster::Outbound::Unban {
                        jail: u.jail_name.to_string(),
                        addr: DisplayNet(&u.addr).to_string(),
                    });
                }
                _ => {}
            }
        }
    }

    /// Failures of `shared_count` jails go to the cluster's counter.
    pub(super) fn share_failures(&self, batch: &[FailureEvent]) {
        let Some(c) = &self.cluster else { return };
        // Which jails share their counts: looked up once per batch, not per event.
        let shared: Vec<JailId> = self
            .config
            .enabled_jails()
            .filter(|j| j.shared_count)
            .filter_map(|j| self.jails.jail_id(&j.name))
            .collect();
        if shared.is_empty() {
            return;
        }
        for ev in batch {
            if !shared.contains(&ev.jail) {
                continue;
            }
            if let Some((jail, maxretry, findtime_ms, addr)) = self.jails.shared_failure(ev) {
                c.send(crate::cluster::Outbound::Failure {
                    jail,
                    addr,
                    time: ev.time,
                    maxretry,
                    findtime_ms,
                });
            }
        }
    }

    /// Applies what the cluster says: the decisions to enforce, and whether
    /// they are this node's to publish (a shared count this node decided) or
    /// the fleet's own (never published again).
    pub(super) fn apply_cluster(
        &mut self,
        msg: crate::cluster::Inbound,
    ) -> (Vec<Decision>, JobMeta) {
        use crate::cluster::Inbound;
        let ds = match msg {
            Inbound::Ban(b) => {
                let addr = match parse_ban_target(&b.addr) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("cluster ban from node {} refused: {e}", b.origin);
                        return (Vec::new(), JobMeta::default());
                    }
                };
                let remote = RemoteBan {
                    jail: &b.jail,
                    addr,
                    start: Time(b.start),
                    end: b.end.map(Time),
                    failures: b.failures,
                    origin: &b.origin,
                };
                match self.jails.remote_ban(&remote, Time::now()) {
                    Some(d) => {
                        self.origins
                            .insert((d.jail, d.addr), Arc::from(b.origin.as_str()));
                        vec![Decision::Ban(d)]
                    }
                    None => Vec::new(),
                }
            }
            Inbound::Unban { jail, addr, origin } => {
                let Ok(net) = parse_prefix(&addr) else {
                    return (Vec::new(), JobMeta::default());
                };
                if self.jails.jail_id(&jail).is_none() {
                    return (Vec::new(), JobMeta::default());
                }
                match self.jails.unban(Some(net), Some(&jail), false) {
                    Ok(us) => {
                        tracing::info!("[{jail}] unban of {addr} came from node {origin}");
                        if let Some(c) = &self.cluster {
                            c.send(crate::cluster::Outbound::Forget {
                                jail: jail.clone(),
                                addr: addr.clone(),
                            });
                        }
                        us.into_iter()
                            .map(|u| {
                                self.origins.remove(&(u.jail, u.addr));
                                Decision::Unban(u)
                            })
                            .collect()
                    }
                    Err(_) => Vec::new(),
                }
            }
            Inbound::SharedBan {
                jail,
                addr,
                failures,
            } => {
                // This node decided: published once the firewall accepts.
                let d = self.jails.shared_ban(&jail, addr, failures, Time::now());
                let meta = JobMeta {
                    publish: true,
                    note: Some(" (counted across the cluster)"),
                    ..JobMeta::default()
                };
                return (d.map(Decision::Ban).into_iter().collect(), meta);
            }
            Inbound::Peers(addrs) => {
                let mut nets: Vec<IpNet> = addrs.into_iter().map(IpNet::from).collect();
                if let Some(c) = &self.config.cluster {
                    nets.extend(configured_addrs(c));
                }
                nets.sort();
                nets.dedup();
                self.jails.add_peers(nets);
                Vec::new()
            }
            Inbound::Server(server) => {
                // The master in use (with Sentinel, the one a failover
                // chose) is protected like the configured hosts; the set
                // only grows, so a former master stays protected too.
                // Sentinels report addresses unless `resolve-hostnames` is
                // on; a name is looked up like the configured ones.
                match crate::net::host_addr(&server.host) {
                    Some(ip) => self.jails.add_peers(vec![IpNet::from(ip)]),
                    None => {
                        if self.jails.protect_everywhere(&server.host) {
                            self.resolver.sync(self.jails.names_in_use().keys());
                        }
                    }
                }
                Vec::new()
            }
        };
        (ds, JobMeta::default())
    }
}

/// The addresses named in `[cluster]` (the Redis server, or the
/// sentinels), never to be banned.
pub(super) fn configured_addrs(c: &crate::cluster::ClusterConfig) -> Vec<IpNet> {
    c.link
        .configured_hosts()
        .into_iter()
        .filter_map(crate::net::host_addr)
        .map(IpNet::from)
        .collect()
}

/// The host names in `[cluster]` (the Redis server, or the sentinels):
/// every address they resolve to is never banned, in any jail
/// (`daemon/names.rs`).
pub(super) fn configured_names(c: &crate::cluster::ClusterConfig) -> Vec<&str> {
    c.link
        .configured_hosts()
        .into_iter()
        .filter(|h| crate::net::host_addr(h).is_none())
        .collect()
}
