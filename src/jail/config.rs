//! `[defaults]` and `[jail.NAME]`: the tables that make a jail. The keys as
//! written ([`RawDefaults`], [`RawJail`]) are resolved here, each jail
//! against `[defaults]` ([`Defaults::from_raw`], [`JailConfig::from_raw`]).
//! The counting keys (`maxretry`, `findtime`, `bantime`, `ignoreip`,
//! escalation, trust) are checked here; a jail's filter keys by
//! [`filter::config`](crate::filter::config), its source keys (`logpath`,
//! `esl`, `ami`, `wire`) by [`source::config`](crate::source::config).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use super::Escalation;
use super::burst::{BurstKey, check_burst, parse_burst};
use crate::action::ActionRef;
use crate::duration::{BanTime, Duration};
use crate::enforce::scope::{PortScope, ScopeKey};
use crate::filter::FilterOptions;
use crate::filter::config::{self as filter_config, FilterConfigError};
use crate::net::NetSet;
use crate::notify::{NotifyTarget, parse_notify};
use crate::source::ami::AmiPeer;
use crate::source::config::{PathList, RawWire, ami_peers, esl_peers, hep, journal_keys};
use crate::source::esl::EslPeer;
use crate::source::hep::HepConfig;
use crate::source::journal::{JournalConfig, JournalMatch};
use crate::source::wire::WireConfig;

mod checks;
mod error;
mod ignore;

use super::prefix::DEFAULT_IPV6_PREFIX;
use checks::{EscKeys, ban_length, ipv6_prefix, maxretry, positive};
pub use error::{JailConfigError, JailWarning};
pub use ignore::IgnoreSpec;
use ignore::{IgnoreKeys, ignore_set};

/// Largest `invite_weight`. A weight of `maxretry` already bans at the
/// first failed INVITE; more changes nothing, and 1000 leaves room for any
/// `maxretry` (or `trusted_maxretry`) a jail sensibly has. Larger values
/// are typing slips (4294967295 once stalled the daemon for 30 s per INVITE
/// failure).
pub const MAX_INVITE_WEIGHT: u32 = 1000;

/// `ignoreip` when none is given: loopback.
pub const DEFAULT_IGNOREIP: [IpNet; 2] = [
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
];

/// Narrowest IPv4 prefix length in `ignoreip` taken without a warning.
const WIDE_IGNORE_V4: u8 = 8;
/// Narrowest IPv6 prefix length in `ignoreip` taken without a warning.
const WIDE_IGNORE_V6: u8 = 16;

/// Why `findtime = 0` is refused.
const NO_FAILURE: &str = "with 0 no failure is ever counted";
/// Why `bantime_maxtime = 0` is refused.
const NO_BAN: &str = "0 would lift each escalated ban as it is made";

/// An address or CIDR network, as `ignoreip` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetSpec(pub IpNet);

impl<'de> Deserialize<'de> for NetSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::net::parse_net(&s)
            .map(NetSpec)
            .map_err(de::Error::custom)
    }
}

/// `[defaults]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    maxretry: Option<Spanned<u32>>,
    findtime: Option<Spanned<Duration>>,
    bantime: Option<Spanned<BanTime>>,
    ignoreip: Option<Vec<Spanned<IgnoreSpec>>>,
    ignoreself: Option<bool>,
    max_tracked: Option<Spanned<usize>>,
    bantime_increment: Option<bool>,
    bantime_factor: Option<Spanned<f64>>,
    bantime_multipliers: Option<Spanned<Vec<u32>>>,
    bantime_maxtime: Option<Spanned<Duration>>,
    bantime_overalljails: Option<bool>,
    bantime_rndtime: Option<Duration>,
    ipv6_prefix: Option<Spanned<i64>>,
}

/// One `[jail.NAME]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJail {
    enabled: Option<bool>,
    esl: Option<Spanned<toml::Value>>,
    ami: Option<Spanned<toml::Value>>,
    invite_weight: Option<Spanned<u32>>,
    ban_scanners: Option<bool>,
    trust_registered: Option<Duration>,
    trusted_maxretry: Option<u32>,
    wrong_call_state_maxretry: Option<u32>,
    shared_count: Option<bool>,
    wire: Option<RawWire>,
    hep: Option<Spanned<toml::Value>>,
    filter: Option<Spanned<String>>,
    fail2ban_filter: Option<Spanned<String>>,
    logpath: Option<PathList>,
    from_start: Option<bool>,
    backend: Option<Spanned<String>>,
    journalmatch: Option<Spanned<String>>,
    journal_dir: Option<Spanned<PathBuf>>,
    logtimezone: Option<Spanned<String>>,
    count_challenges: Option<bool>,
    count_abandoned: Option<bool>,
    maxretry: Option<Spanned<u32>>,
    findtime: Option<Spanned<Duration>>,
    bantime: Option<Spanned<BanTime>>,
    ignoreip: Option<Vec<Spanned<IgnoreSpec>>>,
    ignoreself: Option<bool>,
    bantime_increment: Option<bool>,
    bantime_factor: Option<Spanned<f64>>,
    bantime_multipliers: Option<Spanned<Vec<u32>>>,
    bantime_maxtime: Option<Spanned<Duration>>,
    bantime_overalljails: Option<bool>,
    bantime_rndtime: Option<Duration>,
    actions: Option<Vec<Spanned<String>>>,
    burst: Option<Spanned<toml::Value>>,
    notify: Option<Spanned<toml::Value>>,
    port: Option<Spanned<toml::Value>>,
    protocol: Option<Spanned<toml::Value>>,
    ipv6_prefix: Option<Spanned<i64>>,
}

/// One jail, with `[defaults]` applied.
#[derive(Clone, Debug, PartialEq)]
pub struct JailConfig {
    /// The jail's name (`[jail.NAME]`).
    pub name: String,
    /// Whether it runs.
    pub enabled: bool,
    /// Built-in filter name.
    pub filter: Option<String>,
    /// A fail2ban filter file instead: (fail2ban configuration directory,
    /// `NAME[options]`).
    pub fail2ban_filter: Option<(PathBuf, String)>,
    /// Log files to follow.
    pub logpath: Vec<PathBuf>,
    /// Read followed files from their start.
    pub from_start: bool,
    /// Zone of zone-less timestamps, as written.
    pub logtimezone: String,
    /// Options passed to the filter.
    pub filter_options: FilterOptions,
    /// Failures that trigger a ban.
    pub maxretry: u32,
    /// The counting window.
    pub findtime: Duration,
    /// Ban length.
    pub bantime: BanTime,
    /// Networks never counted: one structure shared by every jail that
    /// inherits `[defaults] ignoreip`, not a copy per jail.
    pub ignoreip: Arc<NetSet>,
    /// `ignoreip` files (`file:/path`), read by the daemon at start, on
    /// reload and when they change.
    pub ignore_files: Vec<PathBuf>,
    /// `ignoreip` host names: every address they resolve to.
    pub ignore_names: Vec<String>,
    /// Never count the host's own addresses.
    pub ignoreself: bool,
    /// Cap on addresses with live failure state.
    pub max_tracked: usize,
    /// Escalation for repeat offenders, when `bantime_increment = true`.
    pub escalation: Option<Escalation>,
    /// FreeSWITCH Event Sockets to listen to.
    pub esl: Vec<EslPeer>,
    /// Asterisk managers to listen to.
    pub ami: Vec<AmiPeer>,
    /// The `[[fraud]]` rules watching this jail's Event Sockets (set by
    /// `config/`, which reads them).
    pub fraud: Vec<std::sync::Arc<crate::fraud::FraudRule>>,
    /// Weight of an INVITE authentication failure.
    pub invite_weight: u32,
    /// Ban attack tools (by user agent) at their first failure.
    pub ban_scanners: bool,
    /// Trust an address for this long after a successful registration.
    pub trust_registered: Option<Duration>,
    /// Failures that ban a trusted address.
    pub trusted_maxretry: u32,
    /// `wrong_call_state` events that ban on their own (0 = not counted).
    pub wrong_call_state_maxretry: u32,
    /// Count failures across the cluster toward one maxretry.
    pub shared_count: bool,
    /// A wire sensor: SIP seen on the network.
    pub wire: Option<WireConfig>,
    /// A HEP listener: SIP mirrored by the server.
    pub hep: Option<HepConfig>,
    /// fail2ban actions run beside the kernel ban (`actions`, or a fail2ban
    /// jail's `action`).
    pub actions: Vec<ActionRef>,
    /// The systemd journal (`backend = "systemd"`), read through the
    /// jail's filter.
    pub journal: Option<JournalConfig>,
    /// `burst` as written; `None` = the default of the jail's family
    /// ([`burst::resolve`](super::burst::resolve)).
    pub burst: Option<BurstKey>,
    /// Where this node tells of the bans it decides (`notify`).
    pub notify: Vec<NotifyTarget>,
    /// What its bans drop (`port`, `protocol`); `None`: every packet.
    pub scope: Option<PortScope>,
    /// IPv6 sources are counted and banned as their prefix of this many
    /// bits (`ipv6_prefix`, see [`prefix`](super::prefix)).
    pub ipv6_prefix: u8,
}

/// A spanned jail error.
type Bad = Spanned<JailConfigError>;

/// `[defaults]`, resolved: what a jail inherits for the keys it leaves out.
pub struct Defaults {
    maxretry: u32,
    max_tracked: usize,
    findtime: Duration,
    bantime: BanTime,
    ignoreip: IgnoreKeys,
    ignoreself: bool,
    esc: EscKeys,
    ipv6_prefix: u8,
}

impl Defaults {
    /// `[defaults]` as built in: what an empty (or missing) table gives.
    pub fn builtin() -> Defaults {
        Defaults {
            maxretry: 5,
            max_tracked: 1_000_000,
            findtime: Duration(600),
            bantime: BanTime::For(Duration(3600)),
            ignoreip: IgnoreKeys {
                nets: Arc::new(NetSet::new(DEFAULT_IGNOREIP)),
                files: Vec::new(),
                names: Vec::new(),
            },
            ignoreself: true,
            esc: EscKeys::default(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Checks `[defaults]`; warnings (an `ignoreip` wider than meant) are
    /// added to `warnings`.
    pub fn from_raw(
        d: &RawDefaults,
        warnings: &mut Vec<Spanned<JailWarning>>,
    ) -> Result<Defaults, Bad> {
        let builtin = Defaults::builtin();
        let maxretry = maxretry(&d.maxretry)?.unwrap_or(builtin.maxretry);
        let max_tracked = match &d.max_tracked {
            Some(m) if *m.get_ref() == 0 => {
                return Err(Spanned::new(m.span(), JailConfigError::MaxTracked));
            }
            Some(m) => *m.get_ref(),
            None => builtin.max_tracked,
        };
        let findtime = positive(&d.findtime, "findtime", NO_FAILURE)?.unwrap_or(builtin.findtime);
        let bantime = ban_length(&d.bantime)?.unwrap_or(builtin.bantime);
        let ignoreip = match &d.ignoreip {
            Some(v) => ignore_set(v, warnings)?,
            None => builtin.ignoreip,
        };
        let esc = EscKeys::check(
            d.bantime_increment,
            &d.bantime_factor,
            &d.bantime_multipliers,
            &d.bantime_maxtime,
            d.bantime_overalljails,
            d.bantime_rndtime,
        )?;
        Ok(Defaults {
            maxretry,
            max_tracked,
            findtime,
            bantime,
            ignoreip,
            ignoreself: d.ignoreself.unwrap_or(builtin.ignoreself),
            esc,
            ipv6_prefix: ipv6_prefix(&d.ipv6_prefix)?.unwrap_or(builtin.ipv6_prefix),
        })
    }
}

impl JailConfig {
    /// The jail a `[jail.NAME]` table with no key of its own would be:
    /// enabled, reading nothing, counting as `defaults` say. A jail read from
    /// elsewhere (fail2ban's `jail.conf`) sets the keys it has over this, so
    /// a key added here reaches it with its default.
    pub fn inheriting(name: String, defaults: &Defaults) -> JailConfig {
        JailConfig {
            name,
            enabled: true,
            filter: None,
            fail2ban_filter: None,
            logpath: Vec::new(),
            from_start: false,
            logtimezone: "local".to_string(),
            filter_options: FilterOptions::default(),
            maxretry: defaults.maxretry,
            findtime: defaults.findtime,
            bantime: defaults.bantime,
            ignoreip: defaults.ignoreip.nets.clone(),
            ignore_files: defaults.ignoreip.files.clone(),
            ignore_names: defaults.ignoreip.names.clone(),
            ignoreself: defaults.ignoreself,
            max_tracked: defaults.max_tracked,
            escalation: EscKeys::default().over(&defaults.esc),
            esl: Vec::new(),
            ami: Vec::new(),
            fraud: Vec::new(),
            invite_weight: 1,
            ban_scanners: false,
            trust_registered: None,
            trusted_maxretry: defaults.maxretry.saturating_mul(3),
            wrong_call_state_maxretry: 0,
            shared_count: false,
            wire: None,
            hep: None,
            actions: Vec::new(),
            journal: None,
            burst: None,
            notify: Vec::new(),
            scope: None,
            ipv6_prefix: defaults.ipv6_prefix,
        }
    }

    /// Checks `[jail.NAME]` and fills what it leaves out from `[defaults]`;
    /// an error carries the span of the offending value (or of the whole
    /// table, for what is missing). Warnings are added to `warnings`.
    pub fn from_raw(
        name: String,
        table: Spanned<RawJail>,
        defaults: &Defaults,
        warnings: &mut Vec<Spanned<JailWarning>>,
    ) -> Result<JailConfig, Bad> {
        let span = table.span();
        let j = table.into_inner();
        let at_table = |e| Spanned::new(span.clone(), e);
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(at_table(JailConfigError::Name(name)));
        }
        let enabled = j.enabled.unwrap_or(true);
        let filter_err = |s: &Spanned<String>| {
            let span = s.span();
            move |e: FilterConfigError| Spanned::new(span, e.into())
        };
        let filter = match &j.filter {
            Some(f) => {
                filter_config::builtin_name(f.get_ref()).map_err(filter_err(f))?;
                Some(f.get_ref().clone())
            }
            None => None,
        };
        let fail2ban_filter = match &j.fail2ban_filter {
            Some(f) => {
                Some(filter_config::split_fail2ban_filter(f.get_ref()).map_err(filter_err(f))?)
            }
            None => None,
        };
        if filter.is_some() && fail2ban_filter.is_some() {
            return Err(at_table(JailConfigError::TwoFilters(name)));
        }
        let filter_set = filter.is_some() || fail2ban_filter.is_some();
        let mut logpath: Vec<PathBuf> = Vec::new();
        for p in j.logpath.map(|p| p.0).unwrap_or_default() {
            // Followed twice, every failure would count twice.
            if logpath.contains(&p) {
                warnings.push(Spanned::new(
                    span.clone(),
                    JailWarning::LogpathTwice {
                        jail: name.clone(),
                        path: p,
                    },
                ));
            } else {
                logpath.push(p);
            }
        }
        let esl = match &j.esl {
            Some(v) => esl_peers(v.get_ref()).map_err(|e| Spanned::new(v.span(), e.into()))?,
            None => Vec::new(),
        };
        let ami = match &j.ami {
            Some(v) => ami_peers(v.get_ref()).map_err(|e| Spanned::new(v.span(), e.into()))?,
            None => Vec::new(),
        };
        let wire = j.wire.as_ref().map(WireConfig::from_raw);
        let hep = match &j.hep {
            Some(v) => Some(hep(v.get_ref()).map_err(|e| Spanned::new(v.span(), e.into()))?),
            None => None,
        };
        if let (true, Some(h), Some(v)) = (enabled, &hep, &j.hep)
            && h.warning().is_some()
        {
            warnings.push(Spanned::new(
                v.span(),
                JailWarning::HepWithoutPassword {
                    jail: name.clone(),
                    listen: h.listen,
                },
            ));
        }
        let mut journal = journal_keys(&j.backend, &j.journalmatch, &j.journal_dir)
            .map_err(|(at, e)| Spanned::new(at.unwrap_or_else(|| span.clone()), e.into()))?;
        // Without a journalmatch, a built-in filter reads its service's
        // units only: the whole journal would let any local process write
        // failures (SYSLOG_IDENTIFIER is the writer's to choose).
        if let (Some(cfg), Some(f)) = (journal.as_mut(), &filter)
            && cfg.matches.is_none()
        {
            cfg.matches = Some(JournalMatch::for_builtin(f).ok_or_else(|| {
                Spanned::new(
                    j.backend
                        .as_ref()
                        .map_or_else(|| span.clone(), Spanned::span),
                    JailConfigError::JournalEveryEntry(name.clone()),
                )
            })?);
        }
        if enabled && journal.is_some() && !filter_set {
            return Err(at_table(JailConfigError::JournalNoFilter(name)));
        }
        if enabled
            && esl.is_empty()
            && ami.is_empty()
            && !filter_set
            && wire.is_none()
            && hep.is_none()
        {
            return Err(at_table(JailConfigError::NothingToRead(name)));
        }
        if enabled && filter_set && logpath.is_empty() && journal.is_none() {
            return Err(at_table(JailConfigError::NoLogpath(name)));
        }
        if enabled && !filter_set && !logpath.is_empty() {
            return Err(at_table(JailConfigError::NoFilter(name)));
        }
        if let Some(w) = &j.invite_weight {
            if *w.get_ref() == 0 {
                return Err(Spanned::new(w.span(), JailConfigError::InviteWeightZero));
            }
            if *w.get_ref() > MAX_INVITE_WEIGHT {
                return Err(Spanned::new(
                    w.span(),
                    JailConfigError::InviteWeightTooLarge,
                ));
            }
        }
        let logtimezone = match &j.logtimezone {
            Some(z) => {
                filter_config::zone(z.get_ref()).map_err(filter_err(z))?;
                z.get_ref().clone()
            }
            None => "local".to_string(),
        };
        let maxretry = maxretry(&j.maxretry)?.unwrap_or(defaults.maxretry);
        let k = EscKeys::check(
            j.bantime_increment,
            &j.bantime_factor,
            &j.bantime_multipliers,
            &j.bantime_maxtime,
            j.bantime_overalljails,
            j.bantime_rndtime,
        )?;
        let rndtime = k.rndtime.or(defaults.esc.rndtime).is_some_and(|r| r.0 > 0);
        let escalation = k.over(&defaults.esc);
        if enabled && rndtime && escalation.is_none() {
            warnings.push(Spanned::new(
                span.clone(),
                JailWarning::RndtimeWithoutIncrement(name.clone()),
            ));
        }
        let ignore = match &j.ignoreip {
            Some(v) => ignore_set(v, warnings)?,
            None => defaults.ignoreip.clone(),
        };
        let mut actions = Vec::new();
        for a in j.actions.iter().flatten() {
            actions.push(
                ActionRef::from_path_spec(a.get_ref())
                    .map_err(|e| Spanned::new(a.span(), e.into()))?,
            );
        }
        let findtime = positive(&j.findtime, "findtime", NO_FAILURE)?.unwrap_or(defaults.findtime);
        let burst = match &j.burst {
            Some(v) => Some(
                parse_burst(v.get_ref())
                    .and_then(|k| check_burst(k, findtime))
                    .map_err(|e| Spanned::new(v.span(), e.into()))?,
            ),
            None => None,
        };
        let notify = match &j.notify {
            Some(v) => parse_notify(v.get_ref()).map_err(|e| Spanned::new(v.span(), e.into()))?,
            None => Vec::new(),
        };
        let scope = PortScope::from_keys(
            j.port.as_ref().map(Spanned::get_ref),
            j.protocol.as_ref().map(Spanned::get_ref),
        )
        .map_err(|(key, e)| {
            let at = match key {
                ScopeKey::Port => j.port.as_ref(),
                ScopeKey::Protocol => j.protocol.as_ref(),
            };
            Spanned::new(at.map_or_else(|| span.clone(), Spanned::span), e.into())
        })?;
        Ok(JailConfig {
            name,
            enabled,
            filter,
            fail2ban_filter,
            logpath,
            from_start: j.from_start.unwrap_or(false),
            logtimezone,
            filter_options: FilterOptions {
                count_challenges: j.count_challenges.unwrap_or(false),
                count_abandoned: j.count_abandoned.unwrap_or(false),
                without_users: false,
            },
            maxretry,
            findtime,
            bantime: ban_length(&j.bantime)?.unwrap_or(defaults.bantime),
            ignoreip: ignore.nets,
            ignore_files: ignore.files,
            ignore_names: ignore.names,
            ignoreself: j.ignoreself.unwrap_or(defaults.ignoreself),
            max_tracked: defaults.max_tracked,
            escalation,
            esl,
            ami,
            fraud: Vec::new(),
            invite_weight: j.invite_weight.map_or(1, |w| *w.get_ref()),
            ban_scanners: j.ban_scanners.unwrap_or(false),
            trust_registered: j.trust_registered,
            trusted_maxretry: j.trusted_maxretry.unwrap_or(maxretry.saturating_mul(3)),
            wrong_call_state_maxretry: j.wrong_call_state_maxretry.unwrap_or(0),
            shared_count: j.shared_count.unwrap_or(false),
            wire,
            hep,
            actions,
            journal,
            burst,
            notify,
            scope,
            ipv6_prefix: ipv6_prefix(&j.ipv6_prefix)?.unwrap_or(defaults.ipv6_prefix),
        })
    }
}
