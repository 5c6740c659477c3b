//! `sipwarden doctor`: checks the machine and the configuration, one line
//! each, and says what to fix.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::enforce::Backend;
use crate::source::ami::AmiPeer;
use crate::source::esl::EslPeer;
use crate::source::journal::JournalConfig;

/// How a check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Must be fixed.
    Fail,
}

/// One check's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// How it went.
    pub level: Level,
    /// What was checked, and what was found.
    pub what: String,
    /// What to do (empty when fine).
    pub fix: String,
}

fn ok(what: impl Into<String>) -> Check {
    Check {
        level: Level::Ok,
        what: what.into(),
        fix: String::new(),
    }
}

fn warn(what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        level: Level::Warn,
        what: what.into(),
        fix: fix.into(),
    }
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        level: Level::Fail,
        what: what.into(),
        fix: fix.into(),
    }
}

/// Runs every check, prints them, and exits non-zero when one failed.
pub fn run(config: Option<&Path>) -> ExitCode {
    let checks = checks(config);
    for c in &checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        if c.fix.is_empty() {
            println!("{tag}  {}", c.what);
        } else {
            println!("{tag}  {}: {}", c.what, c.fix);
        }
    }
    if checks.iter().any(|c| c.level == Level::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every check, in order.
pub fn checks(config: Option<&Path>) -> Vec<Check> {
    let mut out = Vec::new();
    let cfg = match Config::load(config) {
        Ok(c) => {
            out.push(ok(format!(
                "configuration {}: valid, {} jail(s) enabled",
                c.origin,
                c.enabled_jails().count()
            )));
            c
        }
        Err(e) => {
            out.push(fail(
                format!("configuration: {e}"),
                "fix the file (`sipwarden check` shows the same error)",
            ));
            return out;
        }
    };
    out.push(clock());
    let admin = cap_net_admin();
    out.push(if admin {
        ok("CAP_NET_ADMIN: held")
    } else {
        fail(
            "CAP_NET_ADMIN: not held",
            "run as root, or with AmbientCapabilities=CAP_NET_ADMIN (see README, Security model)",
        )
    });
    if cfg.firewall.backend == Backend::Nftables {
        out.push(nftables());
        out.push(conntrack());
    } else {
        out.push(ok("firewall: backend \"none\" (decisions are logged only)"));
    }
    out.push(state_dir(&cfg.daemon.state_dir));
    for j in cfg.enabled_jails() {
        for p in &j.esl {
            out.extend(esl(&j.name, p));
        }
        for p in &j.ami {
            out.push(ami(&j.name, p));
        }
        if let Some(h) = &j.hep {
            out.push(hep(&j.name, h));
        }
        out.extend(log_paths(&j.name, &j.logpath));
        if let Some(jc) = &j.journal {
            out.extend(journal(&j.name, jc));
        }
        if j.filter.as_deref() == Some("freeswitch") {
            out.push(log_auth_failures(&j.name));
        }
    }
    out
}

/// A HEP listener: beyond loopback without a password it takes forged
/// UDP from anyone who can spoof an allowed address.
fn hep(jail: &str, h: &crate::source::hep::HepConfig) -> Check {
    let what = format!("[{jail}] hep {}", h.label());
    match h.warning() {
        Some(w) => warn(what, w),
        None if h.password.is_some() => ok(format!("{what}: auth key required")),
        None => ok(format!("{what}: loopback only")),
    }
}

fn clock() -> Check {
    let now = crate::event::Time::now();
    // Earlier than this release, or absurdly far ahead: the clock is wrong,
    // and findtime windows with it.
    let (min, max) = (1_735_689_600_000, 4_102_444_800_000); // 2025-01-01, 2100-01-01
    if now.0 < min || now.0 > max {
        fail(
            format!("clock: {now}"),
            "set the system clock (NTP); failure windows and ban ends depend on it",
        )
    } else {
        ok(format!("clock: {now}"))
    }
}

/// Whether this process holds CAP_NET_ADMIN (bit 12 of CapEff).
fn cap_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

fn nftables() -> Check {
    match std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(
            "nftables: the `nft` command is missing",
            "apt-get install nftables (sipwarden lays its table out with it once at start)",
        ),
        Err(e) => fail(
            format!("nftables: cannot run `nft` ({e})"),
            "check the installation",
        ),
        Ok(o) if o.status.success() => ok("nftables: usable"),
        Ok(o) => fail(
            format!(
                "nftables: `nft list tables` failed ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            "needs CAP_NET_ADMIN and a kernel with nf_tables",
        ),
    }
}

fn conntrack() -> Check {
    let loaded = Path::new("/proc/net/nf_conntrack").exists()
        || std::fs::read_to_string("/proc/modules")
            .is_ok_and(|m| m.lines().any(|l| l.starts_with("nf_conntrack ")));
    if loaded {
        ok("conntrack: available (established flows of banned sources are flushed)")
    } else {
        warn(
            "conntrack: not loaded",
            "nothing to flush until a rule uses it; bans still drop packets before connection tracking",
        )
    }
}

fn state_dir(dir: &Path) -> Check {
    if !dir.exists() {
        return warn(
            format!("state directory {}: does not exist yet", dir.display()),
            "the daemon creates it at start (systemd: StateDirectory=sipwarden)",
        );
    }
    let probe = dir.join(".doctor-probe");
    let r = std::fs::write(&probe, b"x");
    let _ = std::fs::remove_file(&probe);
    match r {
        Ok(()) => ok(format!("state directory {}: writable", dir.display())),
        Err(e) => fail(
            format!("state directory {}: not writable ({e})", dir.display()),
            "create it for the daemon's user (systemd: StateDirectory=sipwarden)",
        ),
    }
}

/// Each `logpath` entry: a glob pattern with what it matches now (as
/// `run` expands it), then each file.
fn log_paths(jail: &str, logpath: &[std::path::PathBuf]) -> Vec<Check> {
    use crate::source::file::glob;
    let mut out = Vec::new();
    for entry in logpath {
        if !glob::is_pattern(entry) {
            out.push(log_path(jail, entry));
            continue;
        }
        match glob::expand(entry) {
            Ok(m) if m.is_empty() => out.push(warn(
                format!("[{jail}] logpath pattern {}: matches no file yet", entry.display()),
                format!(
                    "files that appear are followed within {} s; check the pattern if the server logs elsewhere",
                    glob::RESCAN.as_secs()
                ),
            )),
            Ok(m) => {
                // The first few by name; the rest have a line each below.
                let mut names: Vec<String> =
                    m.iter().take(10).map(|p| p.display().to_string()).collect();
                if m.len() > names.len() {
                    names.push(format!("and {} more", m.len() - names.len()));
                }
                out.push(ok(format!(
                    "[{jail}] logpath pattern {}: matches {} file(s): {}",
                    entry.display(),
                    m.len(),
                    names.join(", ")
                )));
                out.extend(m.iter().map(|p| log_path(jail, p)));
            }
            Err(e) => out.push(fail(
                format!("[{jail}] {e}"),
                "name the log files more narrowly (`run` refuses a pattern over the cap)",
            )),
        }
    }
    out
}

fn log_path(jail: &str, path: &Path) -> Check {
    match std::fs::File::open(path) {
        Ok(_) => ok(format!("[{jail}] log {}: readable", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => warn(
            format!("[{jail}] log {}: does not exist", path.display()),
            "it is followed once it appears; check the path if the server logs elsewhere",
        ),
        Err(e) => fail(
            format!("[{jail}] log {}: cannot be read ({e})", path.display()),
            "add the daemon's user to the file's group (FreeSWITCH: group freeswitch)",
        ),
    }
}

/// A journal jail: libsystemd there, the journal opened, entries visible,
/// and the user allowed to see every entry.
fn journal(jail: &str, jc: &JournalConfig) -> Vec<Check> {
    use crate::source::journal::{JOURNAL_GROUP, JournalError, reads_whole_journal};
    let label = jc.label();
    // The jail's own journalmatch; a filter's is applied by the daemon.
    let matches = jc.matches.clone().unwrap_or_default();
    let group_fix = format!(
        "add the daemon's user to the {JOURNAL_GROUP} group (usermod -aG {JOURNAL_GROUP} USER; in the unit: SupplementaryGroups={JOURNAL_GROUP})"
    );
    let mut out = vec![match crate::source::journal::probe(jc, &matches) {
        Err(e @ JournalError::NoLibrary(_)) => fail(
            format!("[{jail}] {label}: {e}"),
            "install libsystemd0; other jails run without it",
        ),
        Err(e) => fail(
            format!("[{jail}] {label}: cannot be opened ({e})"),
            match &jc.location {
                crate::source::journal::Location::System => group_fix.clone(),
                _ => "check the path and that the daemon's user can read it".to_string(),
            },
        ),
        Ok(true) => ok(format!("[{jail}] {label}: readable")),
        Ok(false) => warn(
            format!("[{jail}] {label}: opened, but no entry is visible yet"),
            "normal on a quiet host; else check journal_dir (or journalpath) and the user's groups",
        ),
    }];
    if jc.location == crate::source::journal::Location::System
        && reads_whole_journal() == Some(false)
    {
        out.push(warn(
            format!("[{jail}] {label}: this user is not in the {JOURNAL_GROUP} group and sees only its own entries"),
            group_fix,
        ));
    }
    out
}

/// FreeSWITCH's profiles must log failed authentications for the log jail.
fn log_auth_failures(jail: &str) -> Check {
    let dirs = [
        "/etc/freeswitch/sip_profiles",
        "/usr/local/freeswitch/conf/sip_profiles",
    ];
    let mut seen = 0;
    let mut off = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("xml") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            seen += 1;
            let on = text.lines().any(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("log-auth-failures")
                    && l.contains("value=\"true\"")
                    && !l.contains("<!--")
            });
            if !on {
                off.push(p.display().to_string());
            }
        }
    }
    if seen == 0 {
        warn(
            format!(
                "[{jail}] FreeSWITCH profiles: none found in {}",
                dirs.join(" or ")
            ),
            "make sure each SIP profile has <param name=\"log-auth-failures\" value=\"true\"/>, or use the Event Socket jail",
        )
    } else if off.is_empty() {
        ok(format!(
            "[{jail}] FreeSWITCH profiles: log-auth-failures is on ({seen})"
        ))
    } else {
        fail(
            format!("[{jail}] log-auth-failures is off in {}", off.join(", ")),
            "add <param name=\"log-auth-failures\" value=\"true\"/> and `reloadxml`, or the log jail sees nothing",
        )
    }
}

/// Reads one Event Socket frame: headers, and the body its Content-Length
/// announces.
fn read_frame(r: &mut BufReader<TcpStream>) -> std::io::Result<(String, String)> {
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.trim().is_empty() {
            if headers.is_empty() {
                continue;
            }
            break;
        }
        headers.push_str(&line);
        if headers.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
    let len = headers
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((headers, String::from_utf8_lossy(&body).into_owned()))
}

fn header<'a>(headers: &'a str, name: &str) -> &'a str {
    headers
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
        .map_or("", str::trim)
}

/// Resolves the peer's host (for a name: every address, which the daemon
/// protects), then checks its Event Socket.
fn esl(jail: &str, p: &EslPeer) -> Vec<Check> {
    let label = format!("[{jail}] Event Socket {}:{}", p.host, p.port);
    let addrs: Vec<std::net::SocketAddr> = match (p.host.as_str(), p.port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return vec![fail(
                format!("{label}: cannot resolve the host ({e})"),
                "check esl.host; while the name does not resolve, the daemon protects the addresses it last resolved to (kept in the state store), none on a first start",
            )];
        }
    };
    if addrs.is_empty() {
        return vec![fail(
            format!("{label}: the host resolves to no address"),
            "check esl.host",
        )];
    }
    let mut out = Vec::new();
    if crate::net::host_addr(&p.host).is_none() {
        let mut ips: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        ips.sort();
        ips.dedup();
        out.push(ok(format!(
            "{label}: the name resolves to {}; the daemon never bans any of them in jail {jail} (looked up again every 5 minutes)",
            ips.join(", ")
        )));
    }
    // Each address in turn, as the daemon connects.
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, Duration::from_secs(3)) {
            Ok(s) => {
                out.extend(esl_session(&label, s, p));
                return out;
            }
            Err(e) => last = Some(e),
        }
    }
    out.push(fail(
        format!(
            "{label}: cannot connect ({})",
            last.map_or_else(|| "no address".to_string(), |e| e.to_string())
        ),
        "is FreeSWITCH running with mod_event_socket? check listen-ip and listen-port in event_socket.conf.xml",
    ));
    out
}

/// Logs in to an Asterisk manager as the daemon does, and out again.
fn ami(jail: &str, p: &AmiPeer) -> Check {
    let label = format!("[{jail}] manager interface {}", p.label());
    // The errors name the peer themselves.
    let failed = format!("[{jail}] manager interface");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("{label}: {e}"), ""),
    };
    match rt.block_on(crate::source::ami::probe(p)) {
        Ok(true) => ok(format!(
            "{label}: reachable, logged in as {:?}, security events seen (its own login)",
            p.username
        )),
        Ok(false) => warn(
            format!(
                "{label}: reachable, logged in as {:?}, but Asterisk did not report the login as a security event within 3 s",
                p.username
            ),
            "give that manager.conf user read = security (then: asterisk -rx \"manager reload\"), or no failure is ever seen",
        ),
        Err(
            e @ (crate::source::ami::AmiError::Login { .. }
            | crate::source::ami::AmiError::NotAmi { .. }),
        ) => fail(format!("{failed} {e}"), ""),
        Err(e) => fail(
            format!("{failed} {e}"),
            "is Asterisk running with its manager on? manager.conf: [general] enabled = yes, port, bindaddr",
        ),
    }
}

/// Authenticates on a connected Event Socket and asks whether
/// mod_fail2ban is loaded.
fn esl_session(label: &str, stream: TcpStream, p: &EslPeer) -> Vec<Check> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => return vec![fail(format!("{label}: {e}"), "")],
    };
    let mut r = BufReader::new(stream);
    let talk =
        |r: &mut BufReader<TcpStream>| -> std::io::Result<(String, String)> { read_frame(r) };
    let result = (|| -> std::io::Result<Vec<Check>> {
        let (h, _) = talk(&mut r)?;
        match header(&h, "Content-Type") {
            "auth/request" => {}
            "text/rude-rejection" => {
                return Ok(vec![fail(
                    format!("{label}: refused this address"),
                    "add it to the apply-inbound-acl of event_socket.conf.xml",
                )]);
            }
            other => {
                return Ok(vec![fail(
                    format!("{label}: answered {other:?}, not an Event Socket"),
                    "check esl.port",
                )]);
            }
        }
        w.write_all(format!("auth {}\n\n", p.password).as_bytes())?;
        let (h, _) = talk(&mut r)?;
        let reply = header(&h, "Reply-Text");
        if !reply.starts_with("+OK") {
            return Ok(vec![fail(
                format!("{label}: password refused ({reply})"),
                "set esl.password to the password in event_socket.conf.xml",
            )]);
        }
        let mut out = vec![ok(format!("{label}: reachable, password accepted"))];
        w.write_all(b"api module_exists mod_fail2ban\n\n")?;
        let (_, body) = talk(&mut r)?;
        out.push(ok(match body.trim() {
            "true" => "mod_fail2ban: loaded (not needed: sipwarden reads the Event Socket; its log can feed the mod-fail2ban jail)".to_string(),
            "false" => "mod_fail2ban: not loaded (not needed with the Event Socket)".to_string(),
            other => format!("mod_fail2ban: unknown ({other})"),
        }));
        let _ = w.write_all(b"exit\n\n");
        Ok(out)
    })();
    result.unwrap_or_else(|e| {
        vec![fail(
            format!("{label}: {e}"),
            "the server closed or stalled the connection; check its logs",
        )]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20: `doctor` warns of a HEP listener beyond loopback without
    /// a password.
    #[test]
    fn hep_beyond_loopback_without_password_is_a_warning() {
        let mut h = crate::source::hep::HepConfig {
            listen: "0.0.0.0:9060".parse().unwrap(),
            password: None,
            allow: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let c = hep("pbx", &h);
        assert_eq!(c.level, Level::Warn);
        assert!(c.fix.contains("set password"), "{c:?}");
        h.password = Some("k".into());
        assert_eq!(hep("pbx", &h).level, Level::Ok);
        h.password = None;
        h.listen = "127.0.0.1:9060".parse().unwrap();
        assert_eq!(hep("pbx", &h).level, Level::Ok);
    }
}
