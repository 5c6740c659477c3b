//! One action file read the way fail2ban reads it, and its commands built
//! for a ban: `[INCLUDES]` and layers (the filter files' reader,
//! [`Ini`]), `[Definition]` commands, `[Init]` options overridden by the
//! jail's arguments, and fail2ban's tags.
//!
//! Tags are substituted in two steps. First the options (`<dest>`,
//! `<mailcmd>`, `<known/chain>`, `[Init?family=inet6]` for IPv6 bans...),
//! recursively: they are the operator's configuration, and are shell text
//! by design. Then, once and never recursively, the ban's own values
//! ([`DynamicTag`]): what an attacker can influence (`<matches>`,
//! `<F-USER>`...) always, and any other value holding a character the shell
//! gives meaning to, becomes `${f2bV_NAME}` in the text, its value passed in
//! that environment variable (fail2ban's names), so it is never read as
//! shell code.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::spec::ActionRef;
use crate::event::Time;
use crate::filter::f2b::ini::{Ini, IniError};

/// fail2ban's default time a command may take.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Largest command text built (a runaway self-reference in options stops
/// here rather than filling memory).
const MAX_TEXT: usize = 1 << 20;

/// Which command of an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// `actionstart`: the jail starts.
    Start,
    /// `actionstop`: the jail stops.
    Stop,
    /// `actioncheck`: before each ban.
    Check,
    /// `actionrepair`: when the check failed.
    Repair,
    /// `actionban`.
    Ban,
    /// `actionunban`.
    Unban,
    /// `actionflush`: at stop, every ban at once.
    Flush,
}

impl Phase {
    /// The `[Definition]` key.
    pub fn key(self) -> &'static str {
        match self {
            Phase::Start => "actionstart",
            Phase::Stop => "actionstop",
            Phase::Check => "actioncheck",
            Phase::Repair => "actionrepair",
            Phase::Ban => "actionban",
            Phase::Unban => "actionunban",
            Phase::Flush => "actionflush",
        }
    }
}

/// What one ban tells its actions (fail2ban's ticket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The address or prefix banned.
    pub addr: IpNet,
    /// Failures counted.
    pub failures: u32,
    /// When the ban began.
    pub time: Time,
    /// Its length in seconds; -1 for permanent.
    pub bantime: i64,
    /// Restored at start (fail2ban's `<restored>`).
    pub restored: bool,
    /// The last user name tried (attacker text).
    pub user: Option<String>,
    /// What was seen of each failure, one line each (attacker text).
    pub matches: Vec<String>,
}

/// A command ready for `sh -c`: the text and the values passed beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The shell text: the action's command with options substituted.
    pub text: String,
    /// `f2bV_*` variables the text refers to.
    pub env: Vec<(String, String)>,
}

/// An action file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// Neither `.conf` nor `.local` exists.
    #[error("{0}.conf: no such action file")]
    Missing(String),
    /// A file of it is not fail2ban's dialect.
    #[error(transparent)]
    Ini(#[from] IniError),
}

/// One action of one jail, read.
#[derive(Clone, Debug)]
pub struct Action {
    /// fail2ban's `actname`: the file's name unless the jail gave one.
    pub name: String,
    /// The jail, fail2ban's `<name>` unless the jail's arguments say.
    jail: String,
    ini: Ini,
    args: BTreeMap<String, String>,
    /// This host's name, for `<fq-hostname>` and `<sh-hostname>`.
    hostname: String,
    /// fail2ban's `norestored`: bans restored at start do not run it.
    pub norestored: bool,
    /// How long one command may run (`timeout` option, seconds).
    pub timeout: std::time::Duration,
    /// Where it was read from, for logs.
    pub file: PathBuf,
    /// A hash of what its files hold: a reload restarts an action whose
    /// files changed even when the jail names it the same way.
    pub fingerprint: u64,
}

/// The ban's own values, substituted once and never recursively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DynamicTag {
    /// Text an attacker can influence: always an environment variable.
    Attacker,
    /// sipwarden's own value (an address, a number, the host name): in the
    /// text when it holds only harmless characters.
    Own,
}

/// Whether `tag` is a ban's value rather than an option, and what kind.
pub fn dynamic_tag(tag: &str) -> Option<DynamicTag> {
    match tag {
        "matches" | "ipmatches" | "ipjailmatches" => Some(DynamicTag::Attacker),
        t if t.starts_with("F-") => Some(DynamicTag::Attacker),
        "ip" | "ip-host" | "ip-rev" | "family" | "fid" | "failures" | "ipfailures"
        | "ipjailfailures" | "time" | "bantime" | "restored" | "fq-hostname" | "sh-hostname" => {
            Some(DynamicTag::Own)
        }
        _ => None,
    }
}

/// fail2ban's variable name for a tag: `f2bV_` and the tag, `-` as `_`.
pub fn env_name(tag: &str) -> String {
    let mut s = String::from("f2bV_");
    s.extend(
        tag.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    s
}

/// Characters a value may hold and still be written into the text.
fn harmless(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || ".:-_/@+,=%".contains(c))
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "on"
    )
}

/// Replaces `<tag>` occurrences (innermost first: `<<sender>>` is `<` +
/// `<sender>` + `>`) for which `f` answers. With `repeat`, the result is
/// scanned again until nothing changes (options that name options).
fn substitute(text: &str, repeat: bool, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let mut s = text.to_string();
    for _ in 0..40 {
        let mut changed = false;
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(p) = rest.find('<') {
            out.push_str(&rest[..p]);
            let after = &rest[p + 1..];
            let end = after.find(['<', '>']);
            let name = match end {
                Some(e) if after.as_bytes()[e] == b'>' => Some(&after[..e]),
                _ => None,
            };
            let plausible = name.filter(|n| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-/.?=".contains(c))
            });
            match plausible.and_then(&mut f) {
                Some(v) => {
                    out.push_str(&v);
                    changed = true;
                    rest = &after[plausible.map_or(0, str::len) + 1..];
                }
                None => {
                    out.push('<');
                    rest = after;
                }
            }
            if out.len() > MAX_TEXT {
                return out;
            }
        }
        out.push_str(rest);
        s = out;
        if !changed || !repeat {
            break;
        }
    }
    s
}

/// `4.3.2.1.` for `1.2.3.4`, nibbles for IPv6 (fail2ban's `<ip-rev>`).
fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s
        }
    }
}

impl Action {
    /// Reads the action `r` names for `jail`.
    pub fn load(r: &ActionRef, jail: &str, hostname: &str) -> Result<Action, ActionError> {
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", r.base.display()));
        if !with("conf").is_file() && !with("local").is_file() {
            return Err(ActionError::Missing(r.base.display().to_string()));
        }
        let ini = Ini::load(&r.base)?;
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for (name, sec) in &ini.sections {
                name.hash(&mut h);
                for (k, (v, _)) in sec {
                    k.hash(&mut h);
                    v.hash(&mut h);
                }
            }
            h.finish()
        };
        let mut a = Action {
            name: r.args.get("actname").cloned().unwrap_or(r.name.clone()),
            jail: jail.to_string(),
            ini,
            args: r.args.clone(),
            hostname: hostname.to_string(),
            norestored: false,
            timeout: DEFAULT_TIMEOUT,
            file: with("conf"),
            fingerprint,
        };
        a.norestored = a.option("norestored", false).is_some_and(|v| truthy(&v));
        if let Some(t) = a.option("timeout", false) {
            if let Ok(secs) = t.trim().parse::<u64>() {
                a.timeout = std::time::Duration::from_secs(secs.clamp(1, 3600));
            }
        }
        Ok(a)
    }

    /// An option as the action sees it: the jail's argument, else the
    /// action's own ([`Action::own`]); `name` is the jail.
    fn option(&self, key: &str, v6: bool) -> Option<String> {
        if let Some(k) = key.strip_prefix("known/") {
            return self.own(k, v6);
        }
        if let Some(v) = self.args.get(key) {
            return Some(v.clone());
        }
        match key {
            "name" => Some(self.jail.clone()),
            "actname" => Some(self.name.clone()),
            // fail2ban's spellings of a newline and a space, unless the
            // action defines them.
            "br" => self.own(key, v6).or_else(|| Some("\n".into())),
            "sp" => self.own(key, v6).or_else(|| Some(" ".into())),
            _ => self.own(key, v6),
        }
    }

    /// The action file's value: `[Init]`, then `[Definition]`, then
    /// `[DEFAULT]`; for an IPv6 ban `[Init?family=inet6]` first.
    fn own(&self, key: &str, v6: bool) -> Option<String> {
        let sections: &[&str] = if v6 {
            &["Init?family=inet6", "Init", "Definition"]
        } else {
            &["Init", "Definition"]
        };
        for sec in sections {
            if let Some((raw, _)) = self.ini.sections.get(*sec).and_then(|s| s.get(key)) {
                return Some(self.ini.interpolate(sec, raw, &self.args, 0));
            }
        }
        self.ini
            .raw("DEFAULT", key)
            .map(|raw| self.ini.interpolate("DEFAULT", raw, &self.args, 0))
    }

    /// A ban's value for a dynamic tag; `None` leaves the tag as written.
    fn value(&self, tag: &str, t: Option<&Ticket>) -> Option<String> {
        match tag {
            "fq-hostname" | "sh-hostname" => return Some(self.hostname.clone()),
            _ => {}
        }
        let t = t?;
        let single = t.addr.prefix_len() == t.addr.max_prefix_len();
        Some(match tag {
            // `ip-host` without a DNS lookup: the address, as for an
            // address with no name (a PTR record is the attacker's text).
            "ip" | "fid" | "ip-host" if single => t.addr.addr().to_string(),
            "ip" | "fid" | "ip-host" => t.addr.to_string(),
            "ip-rev" => reversed(t.addr.addr()),
            "family" if t.addr.addr().is_ipv6() => "inet6".into(),
            "family" => "inet4".into(),
            "failures" | "ipfailures" | "ipjailfailures" => t.failures.to_string(),
            "time" => t.time.as_secs().to_string(),
            "bantime" => t.bantime.to_string(),
            "restored" => u8::from(t.restored).to_string(),
            "matches" | "ipmatches" | "ipjailmatches" => t.matches.join("\n"),
            "F-USER" => t.user.clone().unwrap_or_default(),
            // Other captures sipwarden does not keep: empty, as fail2ban
            // gives a ticket without them.
            _ => String::new(),
        })
    }

    /// Whether the action has a command for `phase` (before any tag is
    /// substituted: cheap enough for the run loop).
    pub fn has(&self, phase: Phase) -> bool {
        self.option(phase.key(), false)
            .is_some_and(|t| !t.trim().is_empty())
    }

    /// The command of `phase` for ticket `t` (none for start and stop), or
    /// `None` when the action has none.
    pub fn command(&self, phase: Phase, t: Option<&Ticket>) -> Option<Command> {
        let v6 = t.is_some_and(|t| t.addr.addr().is_ipv6());
        let text = self.option(phase.key(), v6)?;
        if text.trim().is_empty() {
            return None;
        }
        let text = substitute(&text, true, |tag| {
            dynamic_tag(tag)
                .is_none()
                .then(|| self.option(tag, v6))
                .flatten()
        });
        let mut env: Vec<(String, String)> = Vec::new();
        let text = substitute(&text, false, |tag| {
            let kind = dynamic_tag(tag)?;
            let v = self.value(tag, t)?;
            if kind == DynamicTag::Own && harmless(&v) {
                return Some(v);
            }
            let name = env_name(tag);
            // A NUL cannot be passed in the environment.
            let v = v.replace('\0', "\u{fffd}");
            if !env.iter().any(|(n, _)| *n == name) {
                env.push((name.clone(), v));
            }
            Some(format!("${{{name}}}"))
        });
        Some(Command { text, env })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action_d() -> Option<PathBuf> {
        let d = crate::test_support::corpus_dir().join("fail2ban-1.1.2.dev1/config");
        if d.join("action.d").is_dir() {
            return Some(d);
        }
        assert!(
            !crate::test_support::need("corpus"),
            "the reference corpus has no action.d"
        );
        None
    }

    pub(crate) const HOSTILE: &str =
        "$(touch /tmp/pwned)`touch /tmp/pwned`;'\"\n<ip> ${HOME} | rm -rf / & \\";

    fn ticket(addr: &str) -> Ticket {
        Ticket {
            addr: addr.parse().unwrap(),
            failures: 5,
            time: Time(1_795_621_254_659),
            bantime: 600,
            restored: false,
            user: Some(HOSTILE.into()),
            matches: vec![format!("line one user {HOSTILE}"), "line two".into()],
        }
    }

    #[test]
    fn sendmail_whois_from_the_corpus_builds_its_mail() {
        let Some(dir) = action_d() else { return };
        let r = ActionRef::in_dir(&dir, "sendmail-whois[dest=\"ops@example.org\"]");
        let a = Action::load(&r, "sshd", "pbx.example.org").unwrap();
        assert!(a.norestored);
        let c = a
            .command(Phase::Ban, Some(&ticket("192.0.2.7/32")))
            .unwrap();
        assert!(
            c.text.starts_with(
                "printf %b \"Subject: [Fail2Ban] sshd: banned 192.0.2.7 from pbx.example.org\n"
            ),
            "{}",
            c.text
        );
        assert!(c.text.contains("From: Fail2Ban <fail2ban>"), "{}", c.text);
        assert!(c.text.contains("To: ops@example.org"));
        assert!(c.text.contains("after\n5 attempts against sshd"));
        assert!(
            c.text
                .contains("`whois 192.0.2.7 || echo \"missing whois program\"`")
        );
        assert!(
            c.text
                .ends_with("| /usr/sbin/sendmail -f \"fail2ban\" \"ops@example.org\"")
        );
        assert!(c.env.is_empty(), "{:?}", c.env);
        let start = a.command(Phase::Start, None).unwrap();
        assert!(
            start
                .text
                .contains("The jail sshd has been started successfully.")
        );
        assert!(
            a.command(Phase::Unban, Some(&ticket("192.0.2.7/32")))
                .is_none()
        );
    }

    #[test]
    fn abuseipdb_matches_travel_in_the_environment() {
        let Some(dir) = action_d() else { return };
        let r = ActionRef::in_dir(
            &dir,
            "abuseipdb[abuseipdb_apikey=\"k3y\", abuseipdb_category=\"18,22\"]",
        );
        let a = Action::load(&r, "sip", "h").unwrap();
        assert!(a.norestored);
        let t = ticket("2001:db8::7/128");
        let c = a.command(Phase::Ban, Some(&t)).unwrap();
        assert!(
            c.text
                .contains("lgm=$(printf '%.1000s\\n...' \"${f2bV_matches}\")"),
            "{}",
            c.text
        );
        assert!(c.text.contains("-H \"Key: k3y\""));
        assert!(c.text.contains("--data-urlencode \"ip=2001:db8::7\""));
        assert!(c.text.contains("categories=18,22"));
        assert!(!c.text.contains("pwned"), "{}", c.text);
        assert_eq!(
            c.env,
            vec![("f2bV_matches".to_string(), t.matches.join("\n"))]
        );
    }

    #[test]
    fn options_tags_and_attacker_values() {
        let d = std::env::temp_dir().join(format!("sipwarden-action-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("common.conf"),
            "[DEFAULT]\nshared = S\n[Definition]\nactionstop = stop <name>\n",
        )
        .unwrap();
        std::fs::write(
            d.join("mine.conf"),
            "[INCLUDES]\nbefore = common.conf\n[Definition]\nnorestored = 0\ntimeout = 7\n\
             actionban = echo <x> <known/dest> <dest> <restored> <F-USER> <F-OTHER> <ip> <family> <ip-rev> <bantime> <time> <unknown> %(shared)s %%<sp><ip-host><br>\n\
             actionunban = echo '<matches>' <blocktype>\n\
             [Init]\nx = a<y>\ny = b\ndest = root\nblocktype = reject\n[Init?family=inet6]\nblocktype = drop6\n",
        )
        .unwrap();
        let r = ActionRef::from_path_spec(&format!(
            "{}/mine.conf[dest=\"ops@x\", name=web]",
            d.display()
        ))
        .unwrap();
        let a = Action::load(&r, "sshd", "h").unwrap();
        assert!(!a.norestored);
        assert_eq!(a.timeout, std::time::Duration::from_secs(7));
        let t = ticket("192.0.2.7/32");
        let c = a.command(Phase::Ban, Some(&t)).unwrap();
        assert_eq!(
            c.text,
            "echo ab root ops@x 0 ${f2bV_F_USER} ${f2bV_F_OTHER} 192.0.2.7 inet4 7.2.0.192. 600 1795621254 <unknown> S % 192.0.2.7\n"
        );
        assert_eq!(
            c.env,
            vec![
                ("f2bV_F_USER".to_string(), HOSTILE.to_string()),
                ("f2bV_F_OTHER".to_string(), String::new())
            ]
        );
        let c6 = a
            .command(Phase::Unban, Some(&ticket("2001:db8::/64")))
            .unwrap();
        assert_eq!(c6.text, "echo '${f2bV_matches}' drop6");
        assert_eq!(a.command(Phase::Stop, None).unwrap().text, "stop web");
        let mut restored = t.clone();
        restored.restored = true;
        restored.user = None;
        let c = a.command(Phase::Ban, Some(&restored)).unwrap();
        assert!(c.text.contains(" 1 ${f2bV_F_USER}"), "{}", c.text);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_value_that_names_itself_stops() {
        let d = std::env::temp_dir().join(format!("sipwarden-action-loop-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("loop.conf"),
            "[Definition]\nactionstart = <a>\n[Init]\na = x<a><a>\n",
        )
        .unwrap();
        let r = ActionRef::from_path_spec(&format!("{}/loop.conf", d.display())).unwrap();
        let a = Action::load(&r, "j", "h").unwrap();
        let c = a.command(Phase::Start, None).unwrap();
        assert!(c.text.len() <= 2 * MAX_TEXT);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn every_stock_action_reads() {
        let Some(dir) = action_d() else { return };
        let mut n = 0;
        for e in std::fs::read_dir(dir.join("action.d")).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "conf") {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                let a = Action::load(&ActionRef::in_dir(&dir, &name), "j", "h")
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let _ = a.command(Phase::Ban, Some(&ticket("192.0.2.7/32")));
                n += 1;
            }
        }
        assert!(n > 50, "{n}");
    }
}
