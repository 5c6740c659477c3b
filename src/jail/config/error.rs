//! What is wrong with a `[defaults]` or `[jail.NAME]` table, and what it
//! accepts but probably does not mean: one `Display` per reason, told with
//! its place by `config`.

use std::path::PathBuf;

use ipnet::IpNet;

use super::MAX_INVITE_WEIGHT;
use crate::action::SpecError;
use crate::duration::ZERO_BAN;
use crate::filter::BUILTIN_FILTERS;
use crate::filter::config::FilterConfigError;
use crate::jail::prefix::MIN_IPV6_PREFIX;
use crate::source::config::{AmiConfigError, EslConfigError, HepConfigError, JournalConfigError};

/// A wrong `[defaults]` or `[jail.NAME]` value.
#[derive(Debug, thiserror::Error)]
pub enum JailConfigError {
    /// `maxretry = 0`.
    #[error("maxretry must be at least 1")]
    Maxretry,
    /// `ipv6_prefix` out of range.
    #[error(
        "ipv6_prefix must be {MIN_IPV6_PREFIX} to 128, not {0} (64: a customer's network, as providers hand them out; 128: each address alone; wider than /{MIN_IPV6_PREFIX} is more than a provider's allocation)"
    )]
    Ipv6Prefix(i64),
    /// `max_tracked = 0`.
    #[error("max_tracked must be at least 1")]
    MaxTracked,
    /// `findtime` or `bantime_maxtime` of 0.
    #[error("{key} must be at least 1s ({why})")]
    ZeroDuration {
        /// The key.
        key: &'static str,
        /// What 0 would do.
        why: &'static str,
    },
    /// `bantime = 0`.
    #[error("bantime {ZERO_BAN}")]
    ZeroBan,
    /// `bantime_factor` not a positive number.
    #[error("bantime_factor must be a positive number")]
    Factor,
    /// `bantime_multipliers` empty or with a 0.
    #[error("bantime_multipliers must be a non-empty list of positive integers")]
    Multipliers,
    /// An `ignoreip` of every address.
    #[error(
        "ignoreip {0} is every address: nothing would ever be counted or banned; list the networks to leave alone"
    )]
    EveryAddress(IpNet),
    /// A jail name that cannot name kernel comments, logs and the CLI's
    /// arguments safely.
    #[error("jail name {0:?} must be 1-64 letters, digits, '-', '_' or '.'")]
    Name(String),
    /// `notify`.
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyConfigError),
    /// `burst`.
    #[error(transparent)]
    Burst(#[from] crate::jail::burst::BurstError),
    /// `port` or `protocol`.
    #[error(transparent)]
    Scope(#[from] crate::enforce::ScopeError),
    /// `filter`, `fail2ban_filter` or `logtimezone`.
    #[error(transparent)]
    Filter(#[from] FilterConfigError),
    /// Both `filter` and `fail2ban_filter`.
    #[error("jail {0:?} sets both `filter` and `fail2ban_filter`; keep one")]
    TwoFilters(String),
    /// `esl`.
    #[error(transparent)]
    Esl(#[from] EslConfigError),
    /// `ami`.
    #[error(transparent)]
    Ami(#[from] AmiConfigError),
    /// `hep`.
    #[error(transparent)]
    Hep(#[from] HepConfigError),
    /// `backend`, `journalmatch`, `journal_dir`.
    #[error(transparent)]
    Journal(#[from] JournalConfigError),
    /// The journal and no filter to read it with.
    #[error(
        "jail {0:?} reads the journal (backend = \"systemd\") but has no `filter` or `fail2ban_filter` to read it with"
    )]
    JournalNoFilter(String),
    /// A journal jail whose filter names no service: it would read every
    /// entry, including those any local process writes.
    #[error(
        "jail {0:?} would read every journal entry (its filter names no service), and any local process can write one that reads as a failure; write the units it reads, e.g. journalmatch = \"_SYSTEMD_UNIT=myservice.service\""
    )]
    JournalEveryEntry(String),
    /// An enabled jail with no source.
    #[error(
        "jail {0:?} has nothing to read: set `filter` and `logpath` (built-in filters: {list}) or `backend = \"systemd\"` (the journal), `esl`, `ami`, `wire`, or `hep`",
        list = BUILTIN_FILTERS.join(", ")
    )]
    NothingToRead(String),
    /// A filter and no file to read.
    #[error(
        "jail {0:?} has no `logpath`; list the log files it should follow, or set `backend = \"systemd\"` to read the journal"
    )]
    NoLogpath(String),
    /// Files and no filter to read them with.
    #[error("jail {0:?} has a `logpath` but no `filter` to read it with")]
    NoFilter(String),
    /// `invite_weight = 0`.
    #[error("invite_weight must be at least 1")]
    InviteWeightZero,
    /// `invite_weight` over [`MAX_INVITE_WEIGHT`].
    #[error(
        "invite_weight must be at most {MAX_INVITE_WEIGHT} (a weight of maxretry already bans at the first failed INVITE)"
    )]
    InviteWeightTooLarge,
    /// An `actions` entry.
    #[error(transparent)]
    Action(#[from] SpecError),
}

/// What a jail table accepts but probably does not mean.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JailWarning {
    /// An `ignoreip` prefix wider than /8 (IPv4) or /16 (IPv6).
    #[error(
        "ignoreip {net} is wider than /{wide}: failures from any of its addresses are never counted; is that meant?"
    )]
    WideIgnore {
        /// The network.
        net: IpNet,
        /// The narrowest prefix length taken without a warning.
        wide: u8,
    },
    /// `bantime_rndtime` in a jail without `bantime_increment`: as in
    /// fail2ban, it only mixes into escalated bans.
    #[error(
        "jail {0:?} sets bantime_rndtime without bantime_increment = true: it does nothing (as in fail2ban, the random extra is added to escalated bans only)"
    )]
    RndtimeWithoutIncrement(String),
    /// A HEP listener beyond loopback without a password.
    #[error(
        "jail {jail:?}: hep listens on {listen} beyond loopback without a password: anyone who can forge a UDP packet from an address in allow can make sipwarden ban any address; set hep.password (the servers' HEP auth key)"
    )]
    HepWithoutPassword {
        /// The jail.
        jail: String,
        /// Where it listens.
        listen: std::net::SocketAddr,
    },
    /// A `logpath` listed twice.
    #[error("jail {jail:?} lists logpath {} twice; it is followed once", .path.display())]
    LogpathTwice {
        /// The jail.
        jail: String,
        /// The path.
        path: PathBuf,
    },
}
