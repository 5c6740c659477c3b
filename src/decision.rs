//! Decisions: what the jails decide and everything downstream takes (the
//! enforcer, the store, the fleet, the logs), in one place so each of them
//! depends on this small module rather than on the jails.

use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::duration::BanTime;
use crate::event::{JailId, Time};
use crate::net::DisplayNet;

/// A ban in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActiveBan {
    /// When it began.
    pub start: Time,
    /// When it ends; `None` for permanent.
    pub end: Option<Time>,
    /// Failures that caused it.
    pub failures: u32,
    /// Why.
    pub reason: BanReason,
}

/// Why an address was banned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BanReason {
    /// It reached `maxretry` failures.
    Failures,
    /// Its failures came at machine speed (the jail's `burst` rule).
    Burst,
    /// An operator banned it.
    Manual,
    /// Another node of the cluster decided it.
    Cluster,
    /// A toll-fraud rule on live calls asked for it (`[[fraud]]`).
    Fraud,
}

/// Why an address was unbanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnbanReason {
    /// Its bantime ran out.
    Expired,
    /// An operator unbanned it.
    Manual,
}

/// A decision to ban one address (or prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanDecision {
    /// The deciding jail.
    pub jail: JailId,
    /// Its name, for logs.
    pub jail_name: Arc<str>,
    /// What to ban: a single address is a /32 or /128.
    pub addr: IpNet,
    /// When the ban began.
    pub start: Time,
    /// When it ends; `None` for permanent.
    pub end: Option<Time>,
    /// Its length as configured, for logs.
    pub bantime: BanTime,
    /// Failures counted when it was decided (0 for manual bans).
    pub failures: u32,
    /// Why.
    pub reason: BanReason,
}

/// A decision to lift a ban.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnbanDecision {
    /// The jail whose ban ends.
    pub jail: JailId,
    /// Its name, for logs.
    pub jail_name: Arc<str>,
    /// The address or prefix.
    pub addr: IpNet,
    /// Why.
    pub reason: UnbanReason,
    /// The ban a manual unban lifts, put back in force if the firewall
    /// refuses to lift it (`None` for an expiry: the kernel's own timeout
    /// already removed the element).
    pub lifted: Option<ActiveBan>,
}

/// What enforcers act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Block this address.
    Ban(BanDecision),
    /// Stop blocking it.
    Unban(UnbanDecision),
}

impl Decision {
    /// The address or prefix it is about.
    pub fn addr(&self) -> IpNet {
        match self {
            Decision::Ban(b) => b.addr,
            Decision::Unban(u) => u.addr,
        }
    }

    /// The jail it comes from.
    pub fn jail(&self) -> JailId {
        match self {
            Decision::Ban(b) => b.jail,
            Decision::Unban(u) => u.jail,
        }
    }
}

impl fmt::Display for BanDecision {
    /// `[JAIL] Ban ADDR (N failures, DURATION)` or `[JAIL] Ban ADDR (manual, DURATION)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] Ban {} (", self.jail_name, DisplayNet(&self.addr))?;
        match self.reason {
            BanReason::Failures => write!(f, "{} failures, {})", self.failures, self.bantime),
            BanReason::Burst => write!(
                f,
                "{} failures in a burst, {})",
                self.failures, self.bantime
            ),
            BanReason::Manual => write!(f, "manual, {})", self.bantime),
            BanReason::Cluster => write!(f, "cluster, {})", self.bantime),
            BanReason::Fraud => write!(f, "toll fraud, {})", self.bantime),
        }
    }
}

impl fmt::Display for UnbanDecision {
    /// `[JAIL] Unban ADDR (expired)` or `(manual)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            UnbanReason::Expired => "expired",
            UnbanReason::Manual => "manual",
        };
        write!(
            f,
            "[{}] Unban {} ({why})",
            self.jail_name,
            DisplayNet(&self.addr)
        )
    }
}
