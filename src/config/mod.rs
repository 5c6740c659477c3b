//! Configuration: TOML in fail2ban's vocabulary, read in two phases.
//!
//! Phase one deserialises into `Raw*` structs that reject unknown keys and bad
//! values with the span of the offending text. Phase two resolves jails
//! against `[defaults]` and checks what only makes sense as a whole (a filter
//! that exists, a jail with something to read). Every error names the file,
//! line and key, and says what is expected.

mod error;
pub mod fail2ban;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use crate::duration::{self, BanTime, Duration};
use error::Text;
pub use error::{ConfigError, Invalid, Place, Reason};

use crate::cluster::ClusterConfig;
use crate::enforce::FirewallConfig;
use crate::enforce::config::RawFirewall;
use crate::feed::FeedConfig;
use crate::filter::{self, FilterOptions};
use crate::http::HttpConfig;
use crate::net::NetSet;
use crate::source::esl::{EslFormat, EslPeer};

/// The embedded default configuration (also the commented reference).
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Where the daemon looks for its configuration when none is given.
pub const DEFAULT_PATH: &str = "/etc/sipwarden/sipwarden.toml";

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

/// Largest configuration file read, 64 MiB: a million `ignoreip` entries fit
/// in a fifth of it; a runaway generator or a wrong path does not fill memory.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

/// Largest `invite_weight`. A weight of `maxretry` already bans at the
/// first failed INVITE; more changes nothing, and 1000 leaves room for any
/// `maxretry` (or `trusted_maxretry`) a jail sensibly has. Larger values
/// are typing slips (4294967295 once stalled the daemon for 30 s per INVITE
/// failure).
pub const MAX_INVITE_WEIGHT: u32 = 1000;

/// `ignoreip` when none is given: loopback.
pub const DEFAULT_IGNOREIP: [IpNet; 2] = [
    IpNet::V4(ipnet::Ipv4Net::new_assert(
        std::net::Ipv4Addr::new(127, 0, 0, 0),
        8,
    )),
    IpNet::V6(ipnet::Ipv6Net::new_assert(
        std::net::Ipv6Addr::LOCALHOST,
        128,
    )),
];

/// Narrowest IPv4 prefix length in `ignoreip` taken without a warning.
const WIDE_IGNORE_V4: u8 = 8;
/// Narrowest IPv6 prefix length in `ignoreip` taken without a warning.
const WIDE_IGNORE_V6: u8 = 16;

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    socket_group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    maxretry: Option<Spanned<u32>>,
    findtime: Option<Spanned<Duration>>,
    bantime: Option<Spanned<BanTime>>,
    ignoreip: Option<Vec<Spanned<NetSpec>>>,
    ignoreself: Option<bool>,
    max_tracked: Option<Spanned<usize>>,
    bantime_increment: Option<bool>,
    bantime_factor: Option<Spanned<f64>>,
    bantime_multipliers: Option<Spanned<Vec<u32>>>,
    bantime_maxtime: Option<Spanned<Duration>>,
    bantime_overalljails: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEsl {
    host: Option<String>,
    port: Option<u16>,
    password: Option<String>,
    format: Option<EslFormat>,
    log_acl: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScanners {
    user_agents: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJail {
    enabled: Option<bool>,
    esl: Option<Spanned<toml::Value>>,
    invite_weight: Option<Spanned<u32>>,
    ban_scanners: Option<bool>,
    trust_registered: Option<Duration>,
    trusted_maxretry: Option<u32>,
    wrong_call_state_maxretry: Option<u32>,
    shared_count: Option<bool>,
    wire: Option<RawWire>,
    filter: Option<Spanned<String>>,
    fail2ban_filter: Option<Spanned<String>>,
    logpath: Option<PathList>,
    from_start: Option<bool>,
    logtimezone: Option<Spanned<String>>,
    count_challenges: Option<bool>,
    count_abandoned: Option<bool>,
    maxretry: Option<Spanned<u32>>,
    findtime: Option<Spanned<Duration>>,
    bantime: Option<Spanned<BanTime>>,
    ignoreip: Option<Vec<Spanned<NetSpec>>>,
    ignoreself: Option<bool>,
    bantime_increment: Option<bool>,
    bantime_factor: Option<Spanned<f64>>,
    bantime_multipliers: Option<Spanned<Vec<u32>>>,
    bantime_maxtime: Option<Spanned<Duration>>,
    bantime_overalljails: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    firewall: RawFirewall,
    #[serde(default)]
    scanners: RawScanners,
    #[serde(default)]
    cluster: Option<Spanned<crate::cluster::RawCluster>>,
    #[serde(default)]
    http: Option<crate::http::config::RawHttp>,
    #[serde(default)]
    feed: Vec<Spanned<crate::feed::config::RawFeed>>,
    #[serde(default)]
    jail: BTreeMap<String, Spanned<RawJail>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWire {
    interface: Option<String>,
    ports: Option<Vec<u16>>,
}

/// `[daemon]`: where the daemon keeps its state and control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Directory of the state database.
    pub state_dir: PathBuf,
    /// Path of the control socket.
    pub socket: PathBuf,
    /// Group allowed to use the control socket.
    pub socket_group: Option<String>,
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
    /// Never count the host's own addresses.
    pub ignoreself: bool,
    /// Cap on addresses with live failure state.
    pub max_tracked: usize,
    /// Escalation for repeat offenders, when `bantime_increment = true`.
    pub escalation: Option<crate::jail::Escalation>,
    /// FreeSWITCH Event Sockets to listen to.
    pub esl: Vec<EslPeer>,
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
    pub wire: Option<crate::source::wire::WireConfig>,
}

/// A whole, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where it was read from (`<embedded default>` for the built-in one).
    pub origin: String,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[firewall]`.
    pub firewall: FirewallConfig,
    /// Every `[jail.NAME]`, enabled or not, in name order.
    pub jails: Vec<JailConfig>,
    /// `[scanners] user_agents`: attack-tool user-agent fragments.
    pub scanners: Vec<String>,
    /// `[cluster]`: bans shared through Redis; `None` runs alone.
    pub cluster: Option<ClusterConfig>,
    /// `[http]`: `None` keeps the listener off.
    pub http: Option<HttpConfig>,
    /// `[[feed]]`: blocklists loaded into kernel sets of their own.
    pub feeds: Vec<FeedConfig>,
    /// What is accepted but probably not meant (an `ignoreip` prefix wider
    /// than /8), each with file:line; `check` prints them, the daemon logs
    /// them.
    pub warnings: Vec<String>,
}

/// The size of a configuration in memory, as `check` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Jails, enabled or not.
    pub jails: usize,
    /// Distinct `ignoreip` networks (a list shared by many jails counts once).
    pub ignoreip_networks: usize,
    /// Bytes held, estimated from the structures' sizes.
    pub bytes: usize,
}

impl fmt::Display for Footprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "configuration: {} jail(s), {} ignoreip network(s), ~{:.1} MB",
            self.jails,
            self.ignoreip_networks,
            self.bytes as f64 / 1_000_000.0
        )
    }
}

impl Config {
    /// The embedded default configuration.
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG, "<embedded default>")
    }

    /// Reads `path`, or without one `/etc/sipwarden/sipwarden.toml`, or when that
    /// does not exist the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let p = PathBuf::from(DEFAULT_PATH);
                if !p.exists() {
                    return Config::embedded();
                }
                p
            }
        };
        let text = read_bounded(&path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Reads the configuration the way `sipwarden run` is told to: a TOML file
    /// (or the default search), plus, with `fail2ban`, the enabled jails of a
    /// fail2ban configuration directory. With `fail2ban` and no TOML file,
    /// only fail2ban's jails run (on sipwarden's `[daemon]`/`[firewall]`
    /// defaults).
    pub fn load_with(path: Option<&Path>, fail2ban: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(dir) = fail2ban else {
            return Config::load(path);
        };
        let f2b = fail2ban::from_fail2ban(dir)?;
        let Some(p) = path else { return Ok(f2b) };
        let mut c = Config::load(Some(p))?;
        for j in f2b.jails {
            if c.jails.iter().any(|k| k.name == j.name) {
                return Err(ConfigError::DefinedTwice {
                    name: j.name,
                    toml: c.origin,
                    fail2ban: f2b.origin,
                });
            }
            c.jails.push(j);
        }
        c.origin = format!("{} + {}", c.origin, f2b.origin);
        Ok(c)
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            Text { text, origin }.invalid(Spanned::new(span, Reason::Toml(e)))
        })?;
        resolve(raw, text, origin)
    }

    /// The jails that run.
    pub fn enabled_jails(&self) -> impl Iterator<Item = &JailConfig> {
        self.jails.iter().filter(|j| j.enabled)
    }

    /// Why this configuration has nothing to do, if it has not: no jail, or
    /// none enabled (an empty file, or one caught half-written). `check`
    /// refuses it and a reload keeps the running one, unless forced.
    pub fn emptiness(&self) -> Option<String> {
        if self.jails.is_empty() {
            return Some(format!(
                "{} defines no jail: nothing would be counted or banned (an empty or half-written file?)",
                self.origin
            ));
        }
        if self.enabled_jails().next().is_none() {
            return Some(format!(
                "{} enables no jail (all {} are `enabled = false`): nothing would be counted or banned",
                self.origin,
                self.jails.len()
            ));
        }
        None
    }

    /// Why this configuration must not replace a running one whose jails are
    /// `running`, unless forced: it is empty, or it keeps none of them
    /// (every running jail would go, and its bans with it).
    pub fn reload_refusal(&self, running: &[&str]) -> Option<String> {
        if let Some(why) = self.emptiness() {
            return Some(why);
        }
        let keeps = |name: &str| self.enabled_jails().any(|j| j.name == name);
        if !running.is_empty() && !running.iter().any(|r| keeps(r)) {
            let mut names = running[..running.len().min(5)].join(", ");
            if running.len() > 5 {
                names.push_str(&format!(" and {} more", running.len() - 5));
            }
            return Some(format!(
                "{} keeps none of the running jails ({names}): each would be removed and its bans lifted",
                self.origin
            ));
        }
        None
    }

    /// Paths of one enabled jail that reach the same file or directory on
    /// this machine now (a symbolic link to a directory, a hard link): only
    /// the first is followed. Looks at the file system, so `check` asks
    /// for it; the parse itself never does.
    pub fn same_file_warnings(&self) -> Vec<String> {
        self.enabled_jails()
            .flat_map(|j| {
                let (_, same) = crate::source::file::distinct(&j.logpath);
                same.into_iter()
                    .map(move |s| format!("jail {:?}: {s}", j.name))
            })
            .collect()
    }

    /// How big this configuration is in memory.
    pub fn footprint(&self) -> Footprint {
        let mut seen: std::collections::HashSet<*const NetSet> = Default::default();
        let (mut networks, mut bytes) = (0, 0);
        for j in &self.jails {
            bytes += std::mem::size_of::<JailConfig>()
                + j.name.len()
                + j.logpath
                    .iter()
                    .map(|p| p.as_os_str().len() + 24)
                    .sum::<usize>()
                + j.esl.len() * std::mem::size_of::<EslPeer>();
            let p = Arc::as_ptr(&j.ignoreip);
            if seen.insert(p) {
                networks += j.ignoreip.len();
                bytes += j.ignoreip.heap_bytes();
            }
        }
        Footprint {
            jails: self.jails.len(),
            ignoreip_networks: networks,
            bytes,
        }
    }
}

/// Reads a configuration file of at most [`MAX_CONFIG_BYTES`].
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other(format!(
            "it is larger than {} MiB, the largest configuration read",
            MAX_CONFIG_BYTES / (1024 * 1024)
        )));
    }
    Ok(text)
}

/// Builds an `Invalid` error at byte range `span` of `text`.
fn invalid(text: &str, origin: &str, span: Range<usize>, message: &str) -> ConfigError {
    Text { text, origin }.invalid(Spanned::new(span, Reason::Other(message.to_string())))
}

/// The escalation keys of one table, before inheritance.
struct EscKeys {
    inc: Option<bool>,
    factor: Option<f64>,
    mults: Option<Vec<u32>>,
    maxtime: Option<Duration>,
    overall: Option<bool>,
}

/// A duration that must be at least a second: `findtime`, `bantime_maxtime`.
fn positive(
    d: &Option<Spanned<Duration>>,
    key: &str,
    why: &str,
    err: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<Option<Duration>, ConfigError> {
    match d {
        Some(v) if v.get_ref().0 == 0 => {
            Err(err(v.span(), format!("{key} must be at least 1s ({why})")))
        }
        Some(v) => Ok(Some(*v.get_ref())),
        None => Ok(None),
    }
}

/// A ban length: at least a second, or `-1`.
fn ban_length(
    b: &Option<Spanned<BanTime>>,
    err: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<Option<BanTime>, ConfigError> {
    match b {
        Some(v) if *v.get_ref() == BanTime::For(Duration(0)) => {
            Err(err(v.span(), format!("bantime {}", duration::ZERO_BAN)))
        }
        Some(v) => Ok(Some(*v.get_ref())),
        None => Ok(None),
    }
}

/// Reads an `ignoreip` list into one shared set: `/0` (or the mapped
/// `::ffff:0:0/96`) is refused, prefixes wider than /8 (IPv4) or /16 (IPv6)
/// are taken with a warning.
fn ignore_set(
    list: &[Spanned<NetSpec>],
    text: &str,
    origin: &str,
    warnings: &mut Vec<String>,
) -> Result<Arc<NetSet>, ConfigError> {
    for n in list {
        let net = n.get_ref().0;
        let wide = match net {
            IpNet::V4(_) => WIDE_IGNORE_V4,
            IpNet::V6(_) => WIDE_IGNORE_V6,
        };
        if net.prefix_len() == 0 {
            return Err(invalid(
                text,
                origin,
                n.span(),
                &format!(
                    "ignoreip {net} is every address: nothing would ever be counted or banned; list the networks to leave alone"
                ),
            ));
        }
        if net.prefix_len() < wide {
            warnings.push(Text { text, origin }.warning(&Spanned::new(
                n.span(),
                format!(
                    "ignoreip {net} is wider than /{wide}: failures from any of its addresses are never counted; is that meant?"
                ),
            )));
        }
    }
    Ok(Arc::new(list.iter().map(|n| n.get_ref().0).collect()))
}

fn resolve(raw: RawConfig, text: &str, origin: &str) -> Result<Config, ConfigError> {
    let src = Text { text, origin };
    let err = |span: Range<usize>, msg: String| invalid(text, origin, span, &msg);
    let mut warnings = Vec::new();
    let d = &raw.defaults;
    let def_maxretry = d.maxretry.as_ref().map_or(5, |s| *s.get_ref());
    if let Some(m) = &d.maxretry {
        if *m.get_ref() == 0 {
            return Err(err(m.span(), "maxretry must be at least 1".into()));
        }
    }
    let def_max_tracked = d.max_tracked.as_ref().map_or(1_000_000, |s| *s.get_ref());
    if let Some(m) = &d.max_tracked {
        if *m.get_ref() == 0 {
            return Err(err(m.span(), "max_tracked must be at least 1".into()));
        }
    }
    const NO_FAILURE: &str = "with 0 no failure is ever counted";
    const NO_BAN: &str = "0 would lift each escalated ban as it is made";
    let def_findtime =
        positive(&d.findtime, "findtime", NO_FAILURE, &err)?.unwrap_or(Duration(600));
    let def_bantime = ban_length(&d.bantime, &err)?.unwrap_or(BanTime::For(Duration(3600)));
    let def_ignoreip: Arc<NetSet> = match &d.ignoreip {
        Some(v) => ignore_set(v, text, origin, &mut warnings)?,
        None => Arc::new(NetSet::new(DEFAULT_IGNOREIP)),
    };
    let def_ignoreself = d.ignoreself.unwrap_or(true);
    let esc_keys = |inc: Option<bool>,
                    factor: &Option<Spanned<f64>>,
                    mults: &Option<Spanned<Vec<u32>>>,
                    maxtime: Option<Duration>,
                    overall: Option<bool>|
     -> Result<EscKeys, ConfigError> {
        if let Some(f) = factor {
            let v = *f.get_ref();
            if !(v.is_finite() && v > 0.0) {
                return Err(err(
                    f.span(),
                    "bantime_factor must be a positive number".into(),
                ));
            }
        }
        if let Some(m) = mults {
            if m.get_ref().is_empty() || m.get_ref().contains(&0) {
                return Err(err(
                    m.span(),
                    "bantime_multipliers must be a non-empty list of positive integers".into(),
                ));
            }
        }
        Ok(EscKeys {
            inc,
            factor: factor.as_ref().map(|f| *f.get_ref()),
            mults: mults.as_ref().map(|m| m.get_ref().clone()),
            maxtime,
            overall,
        })
    };
    let def_esc = esc_keys(
        d.bantime_increment,
        &d.bantime_factor,
        &d.bantime_multipliers,
        positive(&d.bantime_maxtime, "bantime_maxtime", NO_BAN, &err)?,
        d.bantime_overalljails,
    )?;

    let firewall = FirewallConfig::from_raw(&raw.firewall).map_err(|e| src.invalid(e))?;
    let cluster = raw
        .cluster
        .as_ref()
        .map(ClusterConfig::from_raw)
        .transpose()
        .map_err(|e| src.invalid(e))?;
    let http = raw
        .http
        .as_ref()
        .map(HttpConfig::from_raw)
        .transpose()
        .map_err(|e| src.invalid(e))?;
    let feeds = FeedConfig::from_raw(&raw.feed).map_err(|e| src.invalid(e))?;
    let daemon = DaemonConfig {
        state_dir: raw
            .daemon
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/sipwarden")),
        socket: raw
            .daemon
            .socket
            .unwrap_or_else(|| PathBuf::from("/run/sipwarden/sipwarden.sock")),
        socket_group: raw.daemon.socket_group,
    };

    let mut jails = Vec::new();
    for (name, sj) in raw.jail {
        let span = sj.span();
        let j = sj.into_inner();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(err(
                span,
                format!("jail name {name:?} must be 1-64 letters, digits, '-', '_' or '.'"),
            ));
        }
        let enabled = j.enabled.unwrap_or(true);
        let filter = match &j.filter {
            Some(f) => {
                let fname = f.get_ref();
                if !filter::BUILTIN_FILTERS.contains(&fname.as_str()) {
                    return Err(err(
                        f.span(),
                        format!(
                            "unknown filter {fname:?}; built-in filters are: {}",
                            filter::BUILTIN_FILTERS.join(", ")
                        ),
                    ));
                }
                Some(fname.clone())
            }
            None => None,
        };
        let fail2ban_filter = match &j.fail2ban_filter {
            Some(f) => Some(split_fail2ban_filter(f.get_ref()).map_err(|m| err(f.span(), m))?),
            None => None,
        };
        if filter.is_some() && fail2ban_filter.is_some() {
            return Err(err(
                span,
                format!("jail {name:?} sets both `filter` and `fail2ban_filter`; keep one"),
            ));
        }
        let filter_set = filter.is_some() || fail2ban_filter.is_some();
        let mut logpath: Vec<PathBuf> = Vec::new();
        for p in j.logpath.map(|p| p.0).unwrap_or_default() {
            // Followed twice, every failure would count twice.
            if logpath.contains(&p) {
                warnings.push(
                    err(
                        span.clone(),
                        format!(
                            "jail {name:?} lists logpath {} twice; it is followed once",
                            p.display()
                        ),
                    )
                    .to_string(),
                );
            } else {
                logpath.push(p);
            }
        }
        let esl = match &j.esl {
            Some(v) => esl_peers(v.get_ref()).map_err(|m| err(v.span(), m))?,
            None => Vec::new(),
        };
        let wire = j.wire.as_ref().map(|w| crate::source::wire::WireConfig {
            interface: w.interface.clone(),
            ports: w.ports.clone().unwrap_or_else(|| vec![5060]),
        });
        if enabled && esl.is_empty() && !filter_set && wire.is_none() {
            return Err(err(
                span,
                format!(
                    "jail {name:?} has nothing to read: set `filter` and `logpath` (built-in filters: {}), `esl`, or `wire`",
                    filter::BUILTIN_FILTERS.join(", ")
                ),
            ));
        }
        if enabled && filter_set && logpath.is_empty() {
            return Err(err(
                span,
                format!("jail {name:?} has no `logpath`; list the log files it should follow"),
            ));
        }
        if enabled && !filter_set && !logpath.is_empty() {
            return Err(err(
                span,
                format!("jail {name:?} has a `logpath` but no `filter` to read it with"),
            ));
        }
        if let Some(w) = &j.invite_weight {
            if *w.get_ref() == 0 {
                return Err(err(w.span(), "invite_weight must be at least 1".into()));
            }
            if *w.get_ref() > MAX_INVITE_WEIGHT {
                return Err(err(
                    w.span(),
                    format!(
                        "invite_weight must be at most {MAX_INVITE_WEIGHT} (a weight of maxretry already bans at the first failed INVITE)"
                    ),
                ));
            }
        }
        let logtimezone = match &j.logtimezone {
            Some(z) => {
                filter::date::parse_zone(z.get_ref()).map_err(|m| err(z.span(), m))?;
                z.get_ref().clone()
            }
            None => "local".to_string(),
        };
        let maxretry = match &j.maxretry {
            Some(m) if *m.get_ref() == 0 => {
                return Err(err(m.span(), "maxretry must be at least 1".into()));
            }
            Some(m) => *m.get_ref(),
            None => def_maxretry,
        };
        let k = esc_keys(
            j.bantime_increment,
            &j.bantime_factor,
            &j.bantime_multipliers,
            positive(&j.bantime_maxtime, "bantime_maxtime", NO_BAN, &err)?,
            j.bantime_overalljails,
        )?;
        let escalation = k
            .inc
            .or(def_esc.inc)
            .unwrap_or(false)
            .then(|| crate::jail::Escalation {
                factor: k.factor.or(def_esc.factor).unwrap_or(1.0),
                multipliers: k
                    .mults
                    .or_else(|| def_esc.mults.clone())
                    .unwrap_or_default(),
                maxtime: k.maxtime.or(def_esc.maxtime),
                overall_jails: k.overall.or(def_esc.overall).unwrap_or(false),
            });
        jails.push(JailConfig {
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
            },
            maxretry,
            findtime: positive(&j.findtime, "findtime", NO_FAILURE, &err)?.unwrap_or(def_findtime),
            bantime: ban_length(&j.bantime, &err)?.unwrap_or(def_bantime),
            ignoreip: match &j.ignoreip {
                Some(v) => ignore_set(v, text, origin, &mut warnings)?,
                None => def_ignoreip.clone(),
            },
            ignoreself: j.ignoreself.unwrap_or(def_ignoreself),
            max_tracked: def_max_tracked,
            escalation,
            esl,
            invite_weight: j.invite_weight.map_or(1, |w| *w.get_ref()),
            ban_scanners: j.ban_scanners.unwrap_or(false),
            trust_registered: j.trust_registered,
            trusted_maxretry: j.trusted_maxretry.unwrap_or(maxretry.saturating_mul(3)),
            wrong_call_state_maxretry: j.wrong_call_state_maxretry.unwrap_or(0),
            shared_count: j.shared_count.unwrap_or(false),
            wire,
        });
    }
    let scanners = raw.scanners.user_agents.unwrap_or_else(|| {
        crate::source::scanner::DEFAULT_SCANNERS
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    Ok(Config {
        origin: origin.to_string(),
        daemon,
        firewall,
        jails,
        scanners,
        cluster,
        http,
        feeds,
        warnings,
    })
}

/// Splits `/etc/fail2ban/filter.d/sshd.conf[mode=aggressive]` into the
/// fail2ban configuration directory and `sshd[mode=aggressive]`.
pub fn split_fail2ban_filter(v: &str) -> Result<(PathBuf, String), String> {
    let (path, opts) = match v.find('[') {
        Some(p) => (&v[..p], &v[p..]),
        None => (v, ""),
    };
    let p = Path::new(path.trim());
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".conf").trim_end_matches(".local"))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("fail2ban_filter {v:?}: expected a path such as \"/etc/fail2ban/filter.d/sshd.conf\""))?;
    let dir = p
        .parent()
        .filter(|d| d.ends_with("filter.d"))
        .and_then(Path::parent)
        .ok_or_else(|| {
            format!("fail2ban_filter {v:?}: the file must sit in a filter.d directory")
        })?;
    Ok((dir.to_path_buf(), format!("{name}{opts}")))
}

/// Reads a jail's `esl`: one table or an array of tables.
fn esl_peers(v: &toml::Value) -> Result<Vec<EslPeer>, String> {
    let raws: Vec<RawEsl> = match v {
        toml::Value::Array(_) => v.clone().try_into().map_err(|e: toml::de::Error| format!("esl: {}", e.message()))?,
        toml::Value::Table(_) => vec![v.clone().try_into().map_err(|e: toml::de::Error| format!("esl: {}", e.message()))?],
        _ => return Err("esl must be a table { host, port, password, format, log_acl } or an array of such tables".into()),
    };
    if raws.is_empty() {
        return Err("esl is an empty list; give at least one { host, port, password }".into());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::Backend;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded().unwrap();
        assert_eq!(c.firewall.backend, Backend::Nftables);
        assert_eq!(c.firewall.table, "sipwarden");
        let esl = c.jails.iter().find(|j| j.name == "freeswitch-esl").unwrap();
        assert!(esl.enabled && esl.ban_scanners);
        assert_eq!(esl.esl[0].label(), "127.0.0.1:8021");
        assert_eq!(
            c.enabled_jails().count(),
            1,
            "log jails are present but disabled: one failure never counts twice"
        );
        let fs = c.jails.iter().find(|j| j.name == "freeswitch").unwrap();
        assert!(!fs.enabled);
        assert_eq!(fs.maxretry, 5);
        assert_eq!(fs.findtime, Duration(600));
        assert_eq!(fs.bantime, BanTime::For(Duration(3600)));
        assert!(
            fs.logpath
                .iter()
                .any(|p| p.starts_with("/usr/local/freeswitch/log"))
        );
        assert!(
            fs.logpath
                .iter()
                .any(|p| p.starts_with("/var/log/freeswitch"))
        );
        assert!(c.jails.iter().any(|j| j.name == "mod-fail2ban"));
    }

    #[test]
    fn issue_example_parses_and_inherits() {
        let c = parse(
            r#"
[defaults]
maxretry = 5
findtime = "10m"
bantime  = "1h"
ignoreip = ["127.0.0.0/8", "::1", "192.0.2.0/24"]

[firewall]
backend = "nftables"

[jail.freeswitch]
filter  = "freeswitch"
logpath = ["/usr/local/freeswitch/log/freeswitch.log"]

[jail.mod-fail2ban]
filter  = "mod-fail2ban"
logpath = ["/usr/local/freeswitch/log/fail2ban.log"]
maxretry = 10
bantime = -1
"#,
        )
        .unwrap();
        let m = &c.jails[1];
        assert_eq!(m.name, "mod-fail2ban");
        assert_eq!(m.maxretry, 10);
        assert_eq!(m.bantime, BanTime::Permanent);
        assert_eq!(m.ignoreip.len(), 3);
        assert_eq!(c.jails[0].maxretry, 5);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = error(
            "[defaults]\nmaxretry = 5\n\n[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/x\"\nmaxretryy = 3\n",
        );
        assert!(
            e.starts_with("test.toml:7:1: unknown field `maxretryy`"),
            "{e}"
        );
        assert!(e.contains("maxretry"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = error("[defaults]\nfindtime = \"10x\"\n");
        assert!(
            e.starts_with("test.toml:2:12: key `findtime`: invalid duration"),
            "{e}"
        );
        assert!(e.contains("(in [defaults])"), "{e}");
        let e = error("[defaults]\nignoreip = [\"999.1.1.1\"]\n");
        assert!(
            e.contains("test.toml:2:") && e.contains("not an IP address"),
            "{e}"
        );
        let e = error("[jail.fs]\nfilter = \"freeswich\"\nlogpath = \"/x\"\n");
        assert!(
            e.starts_with("test.toml:2:10: key `filter`: unknown filter \"freeswich\""),
            "{e}"
        );
        let e = error(
            "[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/x\"\nlogtimezone = \"Mars/Base\"\n",
        );
        assert!(
            e.contains("test.toml:4:") && e.contains("unknown time zone"),
            "{e}"
        );
        let e = error("[firewall]\nbackend = \"iptables\"\n");
        assert!(e.contains("test.toml:2:") && e.contains("iptables"), "{e}");
        let e = error("[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/x\"\nmaxretry = 0\n");
        assert!(
            e.contains("test.toml:4:") && e.contains("at least 1"),
            "{e}"
        );
    }

    #[test]
    fn jail_without_logpath_is_an_error_unless_disabled() {
        let e = error("[jail.fs]\nfilter = \"freeswitch\"\n");
        assert!(
            e.starts_with("test.toml:1:") && e.contains("no `logpath`"),
            "{e}"
        );
        assert!(parse("[jail.fs]\nenabled = false\n").is_ok());
    }

    #[test]
    fn escalation_keys() {
        let c = parse("[defaults]\nbantime_increment = true\nbantime_maxtime = \"1w\"\n[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/x\"\nbantime_factor = 2.0\n[jail.b]\nfilter = \"freeswitch\"\nlogpath = \"/y\"\nbantime_increment = false\n").unwrap();
        let e = c.jails[1].escalation.as_ref().unwrap();
        assert_eq!((e.factor, e.maxtime), (2.0, Some(Duration(604_800))));
        assert!(c.jails[0].escalation.is_none());
        let e = error("[defaults]\nbantime_multipliers = [1, 0]\n");
        assert!(e.contains(":2:") && e.contains("positive"), "{e}");
    }

    #[test]
    fn esl_jails() {
        let c = parse("[jail.esl]\nesl = { host = \"127.0.0.1\", port = 8021, password = \"ClueCon\" }\ninvite_weight = 3\n[jail.two]\nesl = [{ host = \"10.0.0.1\" }, { host = \"10.0.0.2\", format = \"json\" }]\n").unwrap();
        assert_eq!(c.jails[0].esl.len(), 1);
        assert_eq!(c.jails[0].invite_weight, 3);
        assert_eq!(c.jails[1].esl[1].format, EslFormat::Json);
        assert_eq!(c.jails[1].esl[0].password, "ClueCon");
        let e = error("[jail.esl]\nesl = { hots = \"x\" }\n");
        assert!(e.starts_with("test.toml:2:") && e.contains("hots"), "{e}");
        let e = error("[jail.esl]\nesl = 5\n");
        assert!(e.contains("esl must be a table"), "{e}");
        assert!(!c.scanners.is_empty());
    }

    /// Issue N4: `invite_weight = 4294967295` was accepted by `check`, and
    /// each failed INVITE then stalled the daemon for half a minute.
    #[test]
    fn invite_weight_is_bounded() {
        let esl = "[jail.esl]\nesl = { host = \"127.0.0.1\" }\n";
        for w in ["1001", "4294967295"] {
            let e = error(&format!("{esl}invite_weight = {w}\n"));
            assert!(
                e.starts_with("test.toml:3:") && e.contains("at most 1000"),
                "{w}: {e}"
            );
        }
        let c = parse(&format!("{esl}invite_weight = 1000\n")).unwrap();
        assert_eq!(c.jails[0].invite_weight, MAX_INVITE_WEIGHT);
    }

    #[test]
    fn syntax_error_points_at_place() {
        let e = error("[defaults]\nmaxretry = = 5\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
    }

    /// Issue 16, finding 8: `check` accepted zero and out-of-range
    /// durations and an `ignoreip` of every address.
    #[test]
    fn check_refuses_what_nobody_means() {
        let fs = "[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/x\"\n";
        for (text, at, why) in [
            (
                "[defaults]\nbantime = 0\n".to_string(),
                ":2:11:",
                "bantime must be at least 1s",
            ),
            (
                "[defaults]\nbantime = \"0s\"\n".into(),
                ":2:11:",
                "bantime must be at least 1s",
            ),
            (
                "[defaults]\nfindtime = \"0s\"\n".into(),
                ":2:12:",
                "findtime must be at least 1s",
            ),
            (
                format!("{fs}findtime = 0\n"),
                ":4:12:",
                "findtime must be at least 1s",
            ),
            (
                format!("{fs}bantime = \"0m\"\n"),
                ":4:11:",
                "bantime must be at least 1s",
            ),
            (
                "[defaults]\nbantime_maxtime = 0\n".into(),
                ":2:19:",
                "bantime_maxtime must be at least 1s",
            ),
            (
                "[defaults]\nignoreip = [\"0.0.0.0/0\"]\n".into(),
                ":2:13:",
                "is every address",
            ),
            (
                "[defaults]\nignoreip = [\"::/0\"]\n".into(),
                ":2:13:",
                "is every address",
            ),
            (
                "[defaults]\nignoreip = [\"127.0.0.1\",\n  \"::ffff:0:0/96\"]\n".into(),
                ":3:3:",
                "ignoreip 0.0.0.0/0 is every address",
            ),
            (
                format!("{fs}ignoreip = [\"0.0.0.0/0\"]\n"),
                ":4:13:",
                "is every address",
            ),
            (
                "[defaults]\nbantime = \"300000d\"\n".into(),
                ":2:11:",
                "the largest accepted, 213000d",
            ),
            (
                "[defaults]\nbantime = 25920000000\n".into(),
                ":2:11:",
                "the largest accepted, 213000d",
            ),
            (
                format!("{fs}findtime = \"300000d\"\n"),
                ":4:12:",
                "the largest accepted, 213000d",
            ),
            ("[defaults]\nbantime = -5\n".into(), ":2:11:", "negative"),
            (
                "[defaults]\nbantime = \"-5m\"\n".into(),
                ":2:11:",
                "negative",
            ),
            ("[defaults]\nfindtime = -1\n".into(), ":2:12:", "negative"),
        ] {
            let e = error(&text);
            assert!(
                e.starts_with(&format!("test.toml{at}")) && e.contains(why),
                "{text:?}: {e}"
            );
        }
        // What is meant still passes: permanent bans, the longest ban.
        assert!(parse("[defaults]\nbantime = -1\n").is_ok());
        assert!(parse("[defaults]\nbantime = \"213000d\"\n").is_ok());
    }

    #[test]
    fn wide_ignoreip_is_a_warning_with_its_line() {
        let c = parse(
            "[defaults]\nignoreip = [\"10.0.0.0/8\", \"2001::/16\",\n  \"10.0.0.0/7\", \"2001::/15\"]\n[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/x\"\n",
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(
            c.warnings[0].starts_with("test.toml:3:3:") && c.warnings[0].contains("wider than /8"),
            "{}",
            c.warnings[0]
        );
        assert!(
            c.warnings[1].starts_with("test.toml:3:17:")
                && c.warnings[1].contains("wider than /16"),
            "{}",
            c.warnings[1]
        );
        assert!(Config::embedded().unwrap().warnings.is_empty());
    }

    /// Issue 16, finding 13: an empty configuration was "OK (0 jail(s))".
    #[test]
    fn empty_configuration_is_refused_and_so_is_one_removing_every_jail() {
        for (text, why) in [
            ("", "defines no jail"),
            ("[defaults]\nmaxretry = 3\n", "defines no jail"),
            ("[jail.fs]\nenabled = false\n", "enables no jail"),
        ] {
            let c = parse(text).unwrap();
            let e = c.emptiness().unwrap_or_default();
            assert!(e.contains(why), "{text:?}: {e}");
            assert!(c.reload_refusal(&["fs"]).is_some_and(|r| r.contains(why)));
        }
        let c = parse("[jail.a]\nfilter = \"freeswitch\"\nlogpath = \"/x\"\n").unwrap();
        assert_eq!(c.emptiness(), None);
        assert_eq!(c.reload_refusal(&["a", "b"]), None, "keeps one: fine");
        assert_eq!(c.reload_refusal(&[]), None);
        let names: Vec<String> = (0..8).map(|i| format!("j{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let r = c.reload_refusal(&names).unwrap();
        assert!(
            r.contains("keeps none of the running jails (j0, j1, j2, j3, j4 and 3 more)"),
            "{r}"
        );
        assert!(Config::embedded().unwrap().emptiness().is_none());
    }

    /// Issue 16, finding 18: `[defaults] ignoreip` was copied into every jail.
    #[test]
    fn defaults_ignoreip_is_shared_between_jails() {
        let mut text = String::from("[defaults]\nignoreip = [");
        for i in 0..2000u32 {
            text.push_str(&format!("\"10.{}.{}.0/24\", ", i / 256, i % 256));
        }
        text.push_str("]\n");
        for j in 0..50 {
            text.push_str(&format!(
                "[jail.j{j}]\nfilter = \"freeswitch\"\nlogpath = \"/x{j}\"\n"
            ));
        }
        text.push_str("[jail.own]\nfilter = \"freeswitch\"\nlogpath = \"/y\"\nignoreip = [\"192.0.2.0/24\"]\n");
        let c = parse(&text).unwrap();
        let first = &c.jails[0].ignoreip;
        assert_eq!(first.len(), 2000);
        let shared = c
            .jails
            .iter()
            .filter(|j| Arc::ptr_eq(&j.ignoreip, first))
            .count();
        assert_eq!(shared, 50, "one structure for the 50 inheriting jails");
        let f = c.footprint();
        assert_eq!((f.jails, f.ignoreip_networks), (51, 2001));
        assert!(f.bytes < 200_000, "{f}");
        assert!(
            f.to_string()
                .starts_with("configuration: 51 jail(s), 2001 ignoreip network(s), ~")
        );
    }

    #[test]
    fn missing_file_says_so() {
        let e = Config::load(Some(Path::new("/nonexistent/sipwarden.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/sipwarden.toml: cannot read"),
            "{e}"
        );
    }

    /// Black-box pass N7: `logpath = [p, p]` followed `p` twice.
    #[test]
    fn a_logpath_listed_twice_is_kept_once_with_a_warning() {
        let c = parse(
            "[jail.fs]\nfilter = \"freeswitch\"\nlogpath = [\"/x\", \"/y\", \"/x\", \"//x\"]\n",
        )
        .unwrap();
        let fs = c.jails.iter().find(|j| j.name == "fs").unwrap();
        assert_eq!(fs.logpath, [PathBuf::from("/x"), PathBuf::from("/y")]);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(
            c.warnings[0].starts_with("test.toml:1:") && c.warnings[0].contains("/x twice"),
            "{}",
            c.warnings[0]
        );
    }
}
