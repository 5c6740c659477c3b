//! Bans and unbans by hand (the control socket, the HTTP API, the CLI), and
//! why the set refuses one.

use ipnet::IpNet;

use super::JailSet;
use crate::duration::BanTime;
use crate::event::Time;
use crate::jail::{BanDecision, BanReason, DisplayNet, Jail, UnbanDecision};

/// Why the set refuses a command given by hand.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JailSetError {
    /// No running jail has this name.
    #[error("no running jail named {name:?}; jails: {}", .running.join(", "))]
    NoSuchJail {
        /// The name asked for.
        name: String,
        /// The running jails, in id order.
        running: Vec<String>,
    },
    /// A ban of addresses the jail never bans, without `--force`.
    #[error(
        "{} is covered by ignoreip/ignoreself ({by}) of jail {jail}; refusing (add --force to ban it anyway)",
        DisplayNet(.net)
    )]
    Protected {
        /// What was to be banned.
        net: IpNet,
        /// The protected network it overlaps.
        by: IpNet,
        /// The jail.
        jail: String,
    },
    /// An unban of one address that is banned only as part of a prefix
    /// (an IPv6 source's, or one banned by hand).
    #[error(
        "{} is not banned on its own: jail {jail} bans {}, which holds it; unban {} to lift that",
        DisplayNet(.net),
        DisplayNet(.by),
        DisplayNet(.by)
    )]
    CoveredBy {
        /// The address asked for.
        net: IpNet,
        /// The ban that covers it.
        by: IpNet,
        /// The jail of that ban.
        jail: String,
    },
    /// An unban of an address no (asked) jail holds.
    #[error(
        "{} is not banned{}",
        DisplayNet(.net),
        .jail.as_ref().map(|j| format!(" in jail {j}")).unwrap_or_default()
    )]
    NotBanned {
        /// The address or prefix.
        net: IpNet,
        /// The jail asked, when one was.
        jail: Option<String>,
    },
}

impl JailSet {
    /// A ban by hand. Refuses addresses a jail must never ban unless `force`.
    pub fn manual_ban(
        &mut self,
        jail: &str,
        net: IpNet,
        bantime: Option<BanTime>,
        force: bool,
        now: Time,
    ) -> Result<BanDecision, JailSetError> {
        self.ban_for(jail, net, bantime, force, now, BanReason::Manual)
    }

    /// A ban a toll-fraud rule asked for: as a ban by hand (never of an
    /// address the jail must not ban), with its own reason.
    pub fn fraud_ban(
        &mut self,
        jail: &str,
        net: IpNet,
        bantime: Option<BanTime>,
        now: Time,
    ) -> Result<BanDecision, JailSetError> {
        self.ban_for(jail, net, bantime, false, now, BanReason::Fraud)
    }

    fn ban_for(
        &mut self,
        jail: &str,
        net: IpNet,
        bantime: Option<BanTime>,
        force: bool,
        now: Time,
        reason: BanReason,
    ) -> Result<BanDecision, JailSetError> {
        let id = self.jail_id(jail).ok_or_else(|| self.no_such_jail(jail))?;
        let Some(Some(j)) = self.slots.get_mut(usize::from(id.0)) else {
            return Err(self.no_such_jail(jail));
        };
        if !force {
            if let Some(by) = j.policy().ignore.overlapping(&net) {
                return Err(JailSetError::Protected {
                    net,
                    by,
                    jail: jail.to_string(),
                });
            }
        }
        let bantime = bantime.unwrap_or(j.policy().bantime);
        let d = j.ban(net, now, bantime, 0, reason);
        self.history.note_ban(j.name_arc(), net, 1);
        Ok(d)
    }

    /// Lifts bans by hand: of `addr` (in `jail`, or every jail), or all of
    /// them. A lifted address starts over with a clean slate.
    pub fn unban(
        &mut self,
        addr: Option<IpNet>,
        jail: Option<&str>,
        all: bool,
    ) -> Result<Vec<UnbanDecision>, JailSetError> {
        if let Some(name) = jail {
            if self.jail_id(name).is_none() {
                return Err(self.no_such_jail(name));
            }
        }
        let mut out = Vec::new();
        for j in self.slots.iter_mut().flatten() {
            if jail.is_some_and(|n| n != j.name()) {
                continue;
            }
            if all {
                out.extend(j.unban_all());
            } else if let Some(a) = addr {
                out.extend(j.unban(a));
            }
        }
        for u in &out {
            self.history.clear(&u.addr);
            tracing::info!("{u}");
        }
        if out.is_empty() && !all {
            if let Some(net) = addr {
                if let Some(e) = self.covered(net, jail) {
                    return Err(e);
                }
                return Err(JailSetError::NotBanned {
                    net,
                    jail: jail.map(str::to_string),
                });
            }
        }
        Ok(out)
    }

    /// Why an unban of address `net` lifted nothing though a ban (of a
    /// prefix) covers it, if one does.
    fn covered(&self, net: IpNet, jail: Option<&str>) -> Option<JailSetError> {
        if !crate::net::is_host(&net) {
            return None;
        }
        self.jails()
            .filter(|j| jail.is_none_or(|n| n == j.name()))
            .find_map(|j| {
                Some(JailSetError::CoveredBy {
                    net,
                    by: j.covering(net.addr())?,
                    jail: j.name().to_string(),
                })
            })
    }

    /// The error for a jail name that is not running, listing those that are.
    pub fn no_such_jail(&self, name: &str) -> JailSetError {
        JailSetError::NoSuchJail {
            name: name.to_string(),
            running: self.jails().map(Jail::name).map(str::to_string).collect(),
        }
    }
}
