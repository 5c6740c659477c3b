//! Configuration: TOML in fail2ban's vocabulary, read in two phases.
//!
//! Phase one deserialises into `Raw*` structs that reject unknown keys and bad
//! values with the span of the offending text. Each section's raw struct
//! belongs to the component that owns the section, which also resolves and
//! checks it (`[defaults]` and `[jail.NAME]`: `jail::config`; `[firewall]`:
//! `enforce::config`; `[http]`, `[cluster]`, `[[feed]]`: their modules'
//! `config.rs`; a jail's sources and filter keys: `source::config`,
//! `filter::config`). This module composes them into one [`Config`], tells
//! each error's place (file, line, key, caret: [`Place`]) and reads files,
//! fail2ban's included ([`fail2ban`]). Every error names the file, line and
//! key, and says what is expected.

mod error;
pub mod fail2ban;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use error::Text;
pub use error::{ConfigError, Invalid, Place, Reason};

use crate::cluster::{ClusterConfig, RawCluster};
use crate::enforce::FirewallConfig;
use crate::enforce::config::RawFirewall;
use crate::feed::FeedConfig;
use crate::feed::config::RawFeed;
use crate::fraud::config::{RawFraud, rules_from_raw};
use crate::http::HttpConfig;
use crate::http::config::RawHttp;
use crate::jail::config::{Defaults, JailConfig, RawDefaults, RawJail};
use crate::net::NetSet;
use crate::source::ami::AmiPeer;
use crate::source::config::{RawScanners, user_agents};
use crate::source::esl::EslPeer;

/// The embedded default configuration (also the commented reference).
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Where the daemon looks for its configuration when none is given.
pub const DEFAULT_PATH: &str = "/etc/sipwarden/sipwarden.toml";

/// Largest configuration file read, 64 MiB: a million `ignoreip` entries fit
/// in a fifth of it; a runaway generator or a wrong path does not fill memory.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    socket_group: Option<String>,
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
    cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    http: Option<RawHttp>,
    #[serde(default)]
    feed: Vec<Spanned<RawFeed>>,
    #[serde(default)]
    fraud: Vec<Spanned<RawFraud>>,
    #[serde(default)]
    jail: BTreeMap<String, Spanned<RawJail>>,
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
    /// Glob patterns are expanded first: one that matches nothing yet, or
    /// more files than `run` follows, is told too.
    pub fn same_file_warnings(&self) -> Vec<String> {
        use crate::source::file::glob;
        self.enabled_jails()
            .flat_map(|j| {
                let mut out = Vec::new();
                let paths = match glob::expand_list(&j.logpath) {
                    Ok(e) => {
                        for p in e.empty() {
                            out.push(format!(
                                "jail {:?}: logpath pattern {} matches no file yet; files that appear are followed (the daemon expands it again every {} s)",
                                j.name,
                                p.display(),
                                glob::RESCAN.as_secs()
                            ));
                        }
                        e.paths
                    }
                    Err(e) => {
                        out.push(format!("jail {:?}: {e}; `run` refuses to start", j.name));
                        Vec::new()
                    }
                };
                let (_, same) = crate::source::file::distinct(&paths);
                out.extend(
                    same.into_iter()
                        .map(|s| format!("jail {:?}: {s}", j.name)),
                );
                out
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
                + j.esl.len() * std::mem::size_of::<EslPeer>()
                + j.ami.len() * std::mem::size_of::<AmiPeer>();
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

/// Resolves every section, each by its component, and puts them together.
fn resolve(raw: RawConfig, text: &str, origin: &str) -> Result<Config, ConfigError> {
    let src = Text { text, origin };
    let mut jail_warnings = Vec::new();
    let defaults =
        Defaults::from_raw(&raw.defaults, &mut jail_warnings).map_err(|e| src.invalid(e))?;
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
    for (name, table) in raw.jail {
        jails.push(
            JailConfig::from_raw(name, table, &defaults, &mut jail_warnings)
                .map_err(|e| src.invalid(e))?,
        );
    }
    // Each jail gets the rules that watch its Event Sockets.
    let rules = rules_from_raw(&raw.fraud, |name| match name {
        Some(n) => jails
            .iter()
            .find(|j| j.name == n)
            .map(|j| j.esl.iter().map(EslPeer::label).collect()),
        None => Some(
            jails
                .iter()
                .flat_map(|j| j.esl.iter().map(EslPeer::label))
                .collect(),
        ),
    })
    .map_err(|e| src.invalid(e))?;
    for j in jails.iter_mut().filter(|j| !j.esl.is_empty()) {
        j.fraud = rules
            .iter()
            .filter(|r| r.jail.as_deref().is_none_or(|n| n == j.name))
            .map(|r| Arc::new(r.clone()))
            .collect();
    }
    Ok(Config {
        origin: origin.to_string(),
        daemon,
        firewall,
        jails,
        scanners: user_agents(raw.scanners),
        cluster,
        http,
        feeds,
        warnings: jail_warnings.iter().map(|w| src.warning(w)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::{BanTime, Duration};
    use crate::enforce::Backend;
    use crate::jail::config::MAX_INVITE_WEIGHT;
    use crate::source::esl::EslFormat;

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
    fn port_and_protocol_scope_a_jail_and_wrong_ones_name_file_and_line() {
        let jail = "[jail.sip]\nfilter = \"freeswitch\"\nlogpath = \"/x\"\n";
        let c = parse(&format!(
            "{jail}port = [5060, \"5061\", \"10000-20000\"]\nprotocol = [\"udp\"]\n"
        ))
        .unwrap();
        let s = c.jails[0].scope.as_ref().unwrap();
        assert_eq!(s.ports(), &[(5060, 5061), (10000, 20000)]);
        assert_eq!(s.protocols(), &[crate::enforce::Proto::Udp]);
        // Without protocol: UDP and TCP; without port: every packet.
        let c = parse(&format!("{jail}port = [5060]\n")).unwrap();
        assert_eq!(c.jails[0].scope.as_ref().unwrap().protocols().len(), 2);
        assert!(parse(jail).unwrap().jails[0].scope.is_none());
        let e = error(&format!("{jail}port = [5060, 70000]\n"));
        assert!(
            e.starts_with("test.toml:4:8: ") && e.contains("port entry 70000 must be a port"),
            "{e}"
        );
        let e = error(&format!("{jail}port = [5060]\nprotocol = [\"icmp\"]\n"));
        assert!(
            e.starts_with("test.toml:5:12: ") && e.contains("\"icmp\" is not one of"),
            "{e}"
        );
        let e = error(&format!("{jail}protocol = [\"udp\"]\n"));
        assert!(
            e.starts_with("test.toml:4:") && e.contains("only together with port"),
            "{e}"
        );
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
            e.contains("test.toml:2:")
                && e.contains("\"999.1.1.1\" is not an address, a network, a host name"),
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
        assert_eq!(e.rndtime, None);
        // bantime_rndtime: inherited from [defaults], a jail's own wins, 0 is none.
        let c = parse("[defaults]\nbantime_increment = true\nbantime_rndtime = \"10m\"\n[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/x\"\n[jail.b]\nfilter = \"freeswitch\"\nlogpath = \"/y\"\nbantime_rndtime = 30\n[jail.c]\nfilter = \"freeswitch\"\nlogpath = \"/z\"\nbantime_rndtime = 0\n").unwrap();
        let rnd: Vec<_> = c
            .jails
            .iter()
            .map(|j| j.escalation.as_ref().unwrap().rndtime)
            .collect();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // Jails in name order: b, c, fs.
        assert_eq!(rnd, [Some(Duration(30)), None, Some(Duration(600))]);
        // Without bantime_increment it does nothing, as in fail2ban: said.
        let c = parse(
            "[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"/x\"\nbantime_rndtime = \"5m\"\n",
        )
        .unwrap();
        assert!(
            c.warnings.len() == 1
                && c.warnings[0].contains("bantime_rndtime without bantime_increment"),
            "{:?}",
            c.warnings
        );
        let e = error("[defaults]\nbantime_multipliers = [1, 0]\n");
        assert!(e.contains(":2:") && e.contains("positive"), "{e}");
    }

    /// An `ami` table: Asterisk's defaults, a required secret, and each
    /// wrong value told with its place and what to do.
    #[test]
    fn ami_jails() {
        let c = parse("[jail.ast]\nami = { secret = \"s3cret\" }\n[jail.two]\nami = [{ host = \"10.0.0.1\", port = 5039, username = \"warden\", secret = \"a\" }, { host = \"pbx.example\", secret = \"b\" }]\n").unwrap();
        let a = &c.jails[0].ami[0];
        assert_eq!(
            (a.label(), a.username.as_str(), a.secret.as_str()),
            ("127.0.0.1:5038".to_string(), "sipwarden", "s3cret")
        );
        assert_eq!(c.jails[1].ami.len(), 2);
        assert_eq!(c.jails[1].ami[0].label(), "10.0.0.1:5039");
        assert!(
            !format!("{:?}", c.jails[0].ami).contains("s3cret"),
            "the secret is never shown"
        );
        for (text, want) in [
            (
                "[jail.a]\nami = {}\n",
                "test.toml:2:7: key `ami`: ami 127.0.0.1:5038 has no secret; give the secret of its manager.conf user (a [sipwarden] section with read = security), as secret or in a secret_file (in [jail.a])",
            ),
            (
                "[jail.a]\nami = { secret = \"x\\r\\nAction: Originate\" }\n",
                "test.toml:2:7: key `ami`: ami 127.0.0.1:5038: secret must be non-empty, on one line, without control characters (it is sent in the login message) (in [jail.a])",
            ),
            (
                "[jail.a]\nami = { username = \"\", secret = \"x\" }\n",
                "test.toml:2:7: key `ami`: ami 127.0.0.1:5038: username must be non-empty, on one line, without control characters (it is sent in the login message) (in [jail.a])",
            ),
            (
                "[jail.a]\nami = { secret = \"x\", password = \"y\" }\n",
                "test.toml:2:7: key `ami`: ami: unknown field `password`, expected one of `host`, `port`, `username`, `secret`, `secret_file` (in [jail.a])",
            ),
            (
                "[jail.a]\nami = []\n",
                "test.toml:2:7: key `ami`: ami is an empty list; give at least one { host, port, username, secret } (in [jail.a])",
            ),
            (
                "[jail.a]\nami = \"127.0.0.1\"\n",
                "test.toml:2:7: key `ami`: ami must be a table { host, port, username, secret or secret_file } or an array of such tables (in [jail.a])",
            ),
        ] {
            let e = error(text);
            assert_eq!(e.lines().next(), Some(want), "{text}");
        }
    }

    /// The toll-fraud examples an operator would copy (README, docs/fraud.md)
    /// are valid configurations, and their rules reach the jail.
    #[test]
    fn fraud_examples_in_the_docs_parse() {
        for doc in [
            include_str!("../../README.md"),
            include_str!("../../docs/fraud.md"),
        ] {
            let block = doc
                .split("```toml\n")
                .skip(1)
                .find(|b| b.contains("[[fraud]]"))
                .and_then(|b| b.split("```").next())
                .unwrap();
            let text = if block.contains("[jail.") {
                block.to_string()
            } else {
                format!("[jail.fs]\nesl = {{}}\n{block}")
            };
            let c = parse(&text).unwrap();
            assert!(!c.jails[0].fraud.is_empty(), "{text}");
        }
        // The default configuration's commented rule, uncommented.
        let rule: String = DEFAULT_CONFIG
            .split("# [[fraud]]")
            .nth(1)
            .unwrap()
            .lines()
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&format!("{DEFAULT_CONFIG}\n[[fraud]]{rule}\n")).unwrap();
        let esl = c.jails.iter().find(|j| j.name == "freeswitch-esl").unwrap();
        assert_eq!(esl.fraud[0].name, "international-night");
    }

    /// Issue 20: a `hep` jail reads; beyond loopback without a password
    /// it is a warning with its place; a wrong value an error with its.
    #[test]
    fn hep_jails() {
        let c = parse("[jail.kam]\nhep = {}\n").unwrap();
        assert_eq!(c.jails[0].hep.as_ref().unwrap().listen.port(), 9060);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = parse("[jail.kam]\nhep = { listen = \"0.0.0.0:9060\", allow = [\"10.0.0.5\"] }\n")
            .unwrap();
        assert!(
            c.warnings.len() == 1
                && c.warnings[0].starts_with("test.toml:2:7:")
                && c.warnings[0].contains("without a password"),
            "{:?}",
            c.warnings
        );
        // The example in docs/sources.md is a valid jail.
        let block = include_str!("../../docs/sources.md")
            .split("```toml\n")
            .find(|b| b.starts_with("[jail.kamailio-hep]"))
            .and_then(|b| b.split("```").next())
            .unwrap();
        assert!(parse(block).unwrap().jails[0].hep.is_some(), "{block}");
        let e = error("[jail.kam]\nhep = { listen = \"0.0.0.0:9060\" }\n");
        assert!(
            e.starts_with("test.toml:2:7:") && e.contains("hep.allow"),
            "{e}"
        );
    }

    /// `ami.secret_file`: the secret read from a file at load (its final
    /// line end dropped); a file that cannot be used is named, its content
    /// never shown.
    #[test]
    fn ami_secret_from_a_file() {
        let dir = std::env::temp_dir().join(format!("sipwarden-amisecret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ami.secret");
        std::fs::write(&file, "t0p-s3cret\n").unwrap();
        let text = |extra: &str| {
            format!(
                "[jail.a]\nami = {{ secret_file = \"{}\"{extra} }}\n",
                file.display()
            )
        };
        let c = parse(&text("")).unwrap();
        assert_eq!(c.jails[0].ami[0].secret, "t0p-s3cret");
        let first = |t: &str| error(t).lines().next().unwrap_or_default().to_string();
        assert!(
            first(&text(", secret = \"x\"")).contains("secret and secret_file are both set"),
            "{}",
            first(&text(", secret = \"x\""))
        );
        std::fs::write(&file, "two\nlines\n").unwrap();
        let e = first(&text(""));
        assert!(e.contains("secret must be non-empty, on one line"), "{e}");
        assert!(!e.contains("two"), "the content is never shown: {e}");
        std::fs::write(&file, "").unwrap();
        assert!(first(&text("")).contains(": is empty"));
        std::fs::write(&file, vec![b'x'; 5000]).unwrap();
        assert!(first(&text("")).contains("is larger than 4096 bytes"));
        let e = first("[jail.a]\nami = { secret_file = \"ami.secret\" }\n");
        assert!(
            e.contains("secret_file ami.secret: must be an absolute path"),
            "{e}"
        );
        let e = first(&format!(
            "[jail.a]\nami = {{ secret_file = \"{}\" }}\n",
            dir.display()
        ));
        assert!(e.contains("is not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
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

    /// `ipv6_prefix`: 64 unless set, inherited from `[defaults]`, 32 to 128,
    /// refused with its place otherwise.
    #[test]
    fn ipv6_prefix_is_inherited_and_bounded() {
        let esl = "[jail.a]\nesl = { host = \"127.0.0.1\" }\n";
        let c = parse(esl).unwrap();
        assert_eq!(c.jails[0].ipv6_prefix, 64);
        let c = parse(&format!(
            "[defaults]\nipv6_prefix = 56\n{esl}[jail.b]\nesl = {{}}\nipv6_prefix = 128\n"
        ))
        .unwrap();
        assert_eq!((c.jails[0].ipv6_prefix, c.jails[1].ipv6_prefix), (56, 128));
        for bad in ["0", "31", "129", "-1", "300"] {
            let e = error(&format!("{esl}ipv6_prefix = {bad}\n"));
            let want = format!(
                "test.toml:3:15: key `ipv6_prefix`: ipv6_prefix must be 32 to 128, not {bad} (64: a customer's network, as providers hand them out; 128: each address alone; wider than /32 is more than a provider's allocation) (in [jail.a])"
            );
            assert!(e.starts_with(&want), "{e}");
        }
        let e = error("[defaults]\nipv6_prefix = 8\n");
        assert!(
            e.starts_with(
                "test.toml:2:15: key `ipv6_prefix`: ipv6_prefix must be 32 to 128, not 8"
            ),
            "{e}"
        );
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

    /// Every refusal of `[defaults]`, `[jail.NAME]` and a jail's source and
    /// filter keys, and the jail warnings, told in full (first line): the
    /// wording the checks had before they moved to their components.
    #[test]
    fn jail_refusals_and_warnings_keep_their_wording() {
        let cases: &[(&str, &str)] = &[
            (
                "[defaults]\nmaxretry = 0\n",
                "test.toml:2:12: key `maxretry`: maxretry must be at least 1 (in [defaults])",
            ),
            (
                "[defaults]\nmax_tracked = 0\n",
                "test.toml:2:15: key `max_tracked`: max_tracked must be at least 1 (in [defaults])",
            ),
            (
                "[defaults]\nfindtime = 0\n",
                "test.toml:2:12: key `findtime`: findtime must be at least 1s (with 0 no failure is ever counted) (in [defaults])",
            ),
            (
                "[defaults]\nbantime = 0\n",
                "test.toml:2:11: key `bantime`: bantime must be at least 1s (0 would lift each ban as it is made; -1 bans for ever) (in [defaults])",
            ),
            (
                "[defaults]\nbantime_maxtime = 0\n",
                "test.toml:2:19: key `bantime_maxtime`: bantime_maxtime must be at least 1s (0 would lift each escalated ban as it is made) (in [defaults])",
            ),
            (
                "[defaults]\nbantime_factor = -1.0\n",
                "test.toml:2:18: key `bantime_factor`: bantime_factor must be a positive number (in [defaults])",
            ),
            (
                "[defaults]\nignoreip = [\"0.0.0.0/0\"]\n",
                "test.toml:2:13: key `ignoreip`: ignoreip 0.0.0.0/0 is every address: nothing would ever be counted or banned; list the networks to leave alone (in [defaults])",
            ),
            (
                "[jail.a]\nesl = {}\nbantime_multipliers = []\n",
                "test.toml:3:23: key `bantime_multipliers`: bantime_multipliers must be a non-empty list of positive integers (in [jail.a])",
            ),
            (
                "[jail.\"a b\"]\nesl = {}\n",
                "test.toml:1:1: jail name \"a b\" must be 1-64 letters, digits, '-', '_' or '.'",
            ),
            (
                "[jail.a]\nfilter = \"nope\"\n",
                "test.toml:2:10: key `filter`: unknown filter \"nope\"; built-in filters are: freeswitch, mod-fail2ban, asterisk, kamailio, opensips, sshd (in [jail.a])",
            ),
            (
                "[jail.a]\nfail2ban_filter = \"\"\n",
                "test.toml:2:19: key `fail2ban_filter`: fail2ban_filter \"\": expected a path such as \"/etc/fail2ban/filter.d/sshd.conf\" (in [jail.a])",
            ),
            (
                "[jail.a]\nfail2ban_filter = \"/etc/sshd.conf\"\n",
                "test.toml:2:19: key `fail2ban_filter`: fail2ban_filter \"/etc/sshd.conf\": the file must sit in a filter.d directory (in [jail.a])",
            ),
            (
                "[jail.a]\nfilter = \"freeswitch\"\nfail2ban_filter = \"/etc/fail2ban/filter.d/sshd.conf\"\nlogpath = \"/x\"\n",
                "test.toml:1:1: jail \"a\" sets both `filter` and `fail2ban_filter`; keep one",
            ),
            (
                "[jail.a]\nmaxretry = 3\n",
                "test.toml:1:1: jail \"a\" has nothing to read: set `filter` and `logpath` (built-in filters: freeswitch, mod-fail2ban, asterisk, kamailio, opensips, sshd) or `backend = \"systemd\"` (the journal), `esl`, `ami`, `wire`, or `hep`",
            ),
            (
                "[jail.a]\nfilter = \"freeswitch\"\n",
                "test.toml:1:1: jail \"a\" has no `logpath`; list the log files it should follow, or set `backend = \"systemd\"` to read the journal",
            ),
            (
                "[jail.a]\nesl = {}\nlogpath = \"/x\"\n",
                "test.toml:1:1: jail \"a\" has a `logpath` but no `filter` to read it with",
            ),
            (
                "[jail.a]\nesl = {}\ninvite_weight = 0\n",
                "test.toml:3:17: key `invite_weight`: invite_weight must be at least 1 (in [jail.a])",
            ),
            (
                "[jail.a]\nesl = {}\ninvite_weight = 1001\n",
                "test.toml:3:17: key `invite_weight`: invite_weight must be at most 1000 (a weight of maxretry already bans at the first failed INVITE) (in [jail.a])",
            ),
            (
                "[jail.a]\nesl = []\n",
                "test.toml:2:7: key `esl`: esl is an empty list; give at least one { host, port, password } (in [jail.a])",
            ),
            (
                "[jail.a]\nesl = 1\n",
                "test.toml:2:7: key `esl`: esl must be a table { host, port, password, format, log_acl } or an array of such tables (in [jail.a])",
            ),
            (
                "[jail.a]\nesl = { hots = \"x\" }\n",
                "test.toml:2:7: key `esl`: esl: unknown field `hots`, expected one of `host`, `port`, `password`, `format`, `log_acl` (in [jail.a])",
            ),
            (
                "[jail.a]\nesl = {}\nmaxretry = 0\n",
                "test.toml:3:12: key `maxretry`: maxretry must be at least 1 (in [jail.a])",
            ),
            (
                "[jail.a]\nesl = {}\nactions = [\"sendmail-whois[dest=a]\"]\n",
                "test.toml:3:12: key `actions`: \"sendmail-whois[dest=a]\" is not an action file's path; give it as \"/etc/fail2ban/action.d/NAME.conf[option=value, ...]\" (in [jail.a])",
            ),
            (
                "[jail.a]\nesl = {}\nactions = [\"/nonexistent/action.d/x.conf\"]\n",
                "test.toml:3:12: key `actions`: /nonexistent/action.d/x.conf: no such action file (neither .conf nor .local) (in [jail.a])",
            ),
            (
                "[jail.a]\nfilter = \"sshd\"\nbackend = \"journald\"\n",
                "test.toml:3:11: key `backend`: backend \"journald\": use \"systemd\" (the journal) or \"file\" (logpath, the default; fail2ban's \"auto\", \"polling\" and \"pyinotify\" mean the same) (in [jail.a])",
            ),
            (
                "[jail.a]\nfilter = \"sshd\"\nlogpath = \"/x\"\njournalmatch = \"_COMM=sshd\"\n",
                "test.toml:4:16: key `journalmatch`: journalmatch is read only with backend = \"systemd\" (in [jail.a])",
            ),
            (
                "[jail.a]\nfilter = \"sshd\"\nlogpath = \"/x\"\njournal_dir = \"/j\"\n",
                "test.toml:4:15: key `journal_dir`: journal_dir is read only with backend = \"systemd\" (in [jail.a])",
            ),
            (
                "[jail.a]\nfilter = \"sshd\"\nbackend = \"systemd\"\njournalmatch = \"_COMM=sshd +\"\n",
                "test.toml:4:16: key `journalmatch`: journalmatch \"_COMM=sshd +\" has a '+' with no term on one side (in [jail.a])",
            ),
            (
                "[jail.a]\nbackend = \"systemd\"\n",
                "test.toml:1:1: jail \"a\" reads the journal (backend = \"systemd\") but has no `filter` or `fail2ban_filter` to read it with",
            ),
        ];
        for (text, want) in cases {
            let told = error(text);
            assert_eq!(told.lines().next(), Some(*want), "{text}");
        }
        let c = parse(
            "[defaults]\nignoreip = [\"10.0.0.0/7\", \"::/8\"]\n[jail.a]\nfilter = \"freeswitch\"\nlogpath = [\"/x\", \"/x\"]\n",
        )
        .unwrap();
        let warned: Vec<&str> = c.warnings.iter().filter_map(|w| w.lines().next()).collect();
        assert_eq!(
            warned,
            [
                "test.toml:2:13: key `ignoreip`: ignoreip 10.0.0.0/7 is wider than /8: failures from any of its addresses are never counted; is that meant? (in [defaults])",
                "test.toml:2:27: key `ignoreip`: ignoreip ::/8 is wider than /16: failures from any of its addresses are never counted; is that meant? (in [defaults])",
                "test.toml:3:1: jail \"a\" lists logpath /x twice; it is followed once",
            ]
        );
    }
}
