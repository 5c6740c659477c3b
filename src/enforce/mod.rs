//! Enforcers apply decisions: the kernel firewall, or nothing at all.

pub mod config;
pub mod conntrack;
mod elements;
pub mod intervals;
pub mod netlink;
pub mod nftables;
mod owner;
pub mod scope;
mod sets;

pub use config::{Backend, FirewallConfig, FirewallConfigError};
pub use nftables::NftEnforcer;
pub use scope::{PortScope, Proto, ScopeError, ScopeId};

use crate::decision::Decision;

/// Why a firewall operation failed, in words that name the object.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// Any failure, already phrased for the operator.
    #[error("{0}")]
    Failed(String),
}

/// A decision the firewall refused, with the kernel's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Its index in the batch given to [`Enforcer::apply`].
    pub index: usize,
    /// Why, phrased for the operator (which element, what to do).
    pub reason: String,
}

/// Applies ban and unban decisions. Calls come from one thread, in order,
/// with decisions that arrived together batched into one call.
pub trait Enforcer: Send {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Applies a batch of decisions. Each decision the firewall refused is
    /// returned with the reason; the others are in force. `Err` when the
    /// firewall could not be reached at all (every decision refused).
    fn apply(&mut self, decisions: &[Decision]) -> Result<Vec<Refusal>, EnforceError>;

    /// Does the slow part of the batches applied since the last call that
    /// need not hold up their answer: deleting the banned sources'
    /// conntrack entries (one dump of the whole table for all of them).
    /// The enforcer thread calls it after it has answered the batches; it
    /// is safe a few ms late because the kernel drops a banned source's
    /// packets before conntrack from the moment [`Enforcer::apply`]
    /// returns, so an entry left meanwhile forwards nothing. A failure is
    /// logged here and turns the flushing off.
    fn flush_pending(&mut self) {}

    /// The wall clock stepped by `delta_ms` while the kernel's timeouts ran
    /// on: every ban's end moves with it.
    fn shift_clock(&mut self, delta_ms: i64) {
        let _ = delta_ms;
    }
    /// Called when no decision arrived for a while (about every 500 ms):
    /// time to check that the firewall still holds what it should.
    fn tick(&mut self) -> Result<(), EnforceError> {
        Ok(())
    }

    /// Replaces the contents of blocklist feed `name` with `nets` (merged,
    /// non-overlapping); returns how many entries are in force.
    fn load_feed(&mut self, name: &str, nets: &[ipnet::IpNet]) -> Result<usize, EnforceError> {
        tracing::info!(
            "feed {name}: {} entries (not enforced: no firewall backend)",
            nets.len()
        );
        Ok(nets.len())
    }

    /// Each jail's port scope (`None`: its bans drop every packet), by
    /// jail id: at start, and again on reload. A jail whose scope changed
    /// has its bans moved to its new scope's sets.
    fn set_scopes(
        &mut self,
        scopes: &[(crate::event::JailId, Option<PortScope>)],
    ) -> Result<(), EnforceError> {
        let _ = scopes;
        Ok(())
    }

    /// A second, faster way in for a few new bans, if this firewall has
    /// one (see [`FastLane`]).
    fn fast_lane(&self) -> Option<Box<dyn FastLane>> {
        None
    }

    /// Called once when the daemon stops.
    fn close(&mut self) -> Result<(), EnforceError> {
        Ok(())
    }
}

/// A second way into the firewall for a few new bans, driven from the run
/// loop the moment they are decided, so an attacker's packets are dropped
/// without waiting for the enforcer thread (busy with a large batch, a
/// drift check or a conntrack flush, or merely asleep on another CPU).
/// It must never wait: changes are posted, not awaited. Best effort: the
/// enforcer applies the same bans right after, keeps the books and gives
/// the answer that counts.
pub trait FastLane: Send {
    /// Adds the elements of `bans` (single addresses only; prefixes need the
    /// enforcer's interval ledger). Errors are left to the enforcer.
    fn add(&mut self, bans: &[crate::decision::BanDecision]);

    /// Each jail's port scope after a reload, taken at once so that a ban
    /// decided right after it never lands in the old scope's sets (the
    /// enforcer lays out a new scope's sets a moment later; until then an
    /// element for them is refused, and the enforcer applies the ban).
    fn set_scopes(&mut self, scopes: &[(crate::event::JailId, Option<PortScope>)]) {
        let _ = scopes;
    }
}

/// Most bans sent down a [`FastLane`] at once; larger bursts go the
/// enforcer's way only.
pub const FAST_LANE_MAX: usize = 64;

/// `backend = "none"` and `--dry-run`: decisions are logged by the jails and
/// nothing else happens.
#[derive(Debug, Default)]
pub struct LogOnly;

impl Enforcer for LogOnly {
    fn name(&self) -> &'static str {
        "none"
    }

    fn apply(&mut self, decisions: &[Decision]) -> Result<Vec<Refusal>, EnforceError> {
        tracing::debug!("dry run: {} decisions not enforced", decisions.len());
        Ok(Vec::new())
    }
}
