//! The verbs that talk to the running daemon (`status`, `ban`, `unban`,
//! `reload`, `ping`, `set`): one request over the control socket, the
//! answer printed as text for people or passed through as JSON for scripts.

use std::process::ExitCode;

use super::{CliError, Talk, out};
use crate::config::Config;
use crate::control::client;
use crate::control::{JailView, Request, Response, StatusView, UnbanView};
use crate::duration::Duration;
use crate::event::escape_text;

/// Sends one request to the daemon and prints the answer. `status JAIL`
/// without a page asked for fetches every page.
pub fn talk(t: Talk, req: Request) -> Result<ExitCode, CliError> {
    let socket = match t.socket {
        Some(s) => s,
        None => Config::load(t.config.as_deref())?.daemon.socket,
    };
    let resp = match &req {
        Request::Status {
            jail: Some(jail),
            limit: None,
            cursor: None,
        } => client::jail_status(&socket, jail)?,
        _ => client::request(&socket, &req)?,
    };
    if t.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&resp)?))?;
    } else if resp.ok {
        out(&render(&req, &resp))?;
    } else {
        eprintln!(
            "error: {}",
            resp.error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(if resp.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The request of fail2ban-client's spellings: `set JAIL banip ADDR` (a
/// ban for the jail's bantime), `set JAIL unbanip ADDR`.
pub fn set_request(jail: String, action: &str, addr: String) -> Request {
    if action == "banip" {
        Request::Ban {
            jail,
            addr,
            duration: None,
            force: false,
        }
    } else {
        Request::Unban {
            addr: Some(addr),
            jail: Some(jail),
            all: false,
        }
    }
}

fn secs(s: i64) -> String {
    Duration(s.max(0) as u64).to_string()
}

fn jail_table(jails: &[JailView]) -> String {
    let mut out = format!(
        "{:<20} {:>8} {:>8} {:>8} {:>13}\n",
        "JAIL", "FAILING", "FAILED", "BANNED", "TOTAL BANNED"
    );
    for j in jails {
        out.push_str(&format!(
            "{:<20} {:>8} {:>8} {:>8} {:>13}\n",
            j.name, j.currently_failing, j.total_failed, j.currently_banned, j.total_banned
        ));
    }
    out
}

/// A line about the jails' fail2ban actions, when a jail has some.
fn actions_text(a: Option<&crate::action::ActionsView>) -> String {
    match a {
        Some(a) => {
            let mut out = format!(
                "\nactions: {} command(s) run, {} failed ({} timed out), {} dropped\n",
                a.run, a.failed, a.timed_out, a.dropped
            );
            for n in &a.notify {
                out.push_str(&format!(
                    "notify {}: {} sent, {} failed, {} retries, {} rate-limited, {} skipped\n",
                    n.kind, n.sent, n.failed, n.retries, n.rate_limited, n.skipped
                ));
            }
            out
        }
        None => String::new(),
    }
}

/// A line about the state store when something happened to it.
fn store_text(s: Option<&crate::control::StoreView>) -> String {
    match s {
        Some(s) if !s.ok => format!(
            "\nstate store {}: FAILING since {}: {}\n",
            s.path,
            s.since.as_deref().unwrap_or("?"),
            s.error.as_deref().unwrap_or("?")
        ),
        Some(s) if s.repairs > 0 => format!(
            "\nstate store {}: ok, rebuilt {} time(s); last problem at {}: {}\n",
            s.path,
            s.repairs,
            s.last_error_at.as_deref().unwrap_or("?"),
            s.last_error.as_deref().unwrap_or("?")
        ),
        _ => String::new(),
    }
}

/// Peer host names: what each protects, and a warning when its lookups
/// fail.
fn names_text(names: &[crate::control::NameView]) -> String {
    let mut out = String::new();
    for n in names {
        let addrs = if n.addrs.is_empty() {
            "no address protected".to_string()
        } else {
            n.addrs.join(" ")
        };
        let when = match (&n.resolved_at, n.from_store) {
            (Some(t), true) => format!(" (from the store, resolved {t})"),
            (Some(t), false) => format!(" (resolved {t})"),
            (None, _) => String::new(),
        };
        out.push_str(&format!(
            "peer name {} -> {addrs}{when}, jail(s) {}\n",
            escape_text(&n.name, 255),
            n.jails.join(", ")
        ));
        if let Some(p) = &n.problem {
            out.push_str(&format!(
                "  WARNING: {} (since {})\n",
                escape_text(p, 512),
                n.problem_since.as_deref().unwrap_or("?")
            ));
        }
    }
    if !out.is_empty() {
        out.insert(0, '\n');
    }
    out
}

fn feeds_text(feeds: &[crate::control::FeedView]) -> String {
    let mut out = String::new();
    for f in feeds {
        out.push_str(&format!(
            "feed {}: {} entries{}{}\n",
            f.name,
            f.entries,
            if f.cut > 0 {
                format!(" ({} cut around protected addresses)", f.cut)
            } else {
                String::new()
            },
            match &f.error {
                Some(e) => format!(", last fetch FAILED ({e})"),
                None => f
                    .last_ok
                    .as_ref()
                    .map(|t| format!(", fetched {t}"))
                    .unwrap_or_default(),
            }
        ));
    }
    if !out.is_empty() {
        out.insert(0, '\n');
    }
    out
}

fn cluster_text(c: &crate::cluster::ClusterView) -> String {
    let mut out = format!(
        "\ncluster: node {}, redis {} {}, {} published, {} received, {} queued\n",
        c.node,
        c.redis,
        if c.connected {
            "connected".to_string()
        } else {
            format!("DOWN ({})", c.error.as_deref().unwrap_or("connecting"))
        },
        c.published,
        c.received,
        c.queued
    );
    if c.skipped > 0 {
        out.push_str(&format!(
            "  {} key(s) or entries under the prefix skipped (wrong type or shape; see the log)\n",
            c.skipped
        ));
    }
    for t in &c.tasks {
        if !t.up || t.restarts > 0 {
            out.push_str(&format!(
                "  {} {}, {} restart(s){}\n",
                t.name,
                if t.up { "up" } else { "DOWN" },
                t.restarts,
                t.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    for p in &c.peers {
        out.push_str(&format!(
            "  peer {:<20} seen {} ms ago{}  {}\n",
            p.node,
            p.seen_ms_ago,
            p.lag_ms
                .map(|l| format!(", lag {l} ms"))
                .unwrap_or_default(),
            p.addrs.join(" ")
        ));
    }
    out
}

/// What status says of a source's dates, when they disagree with the
/// clock: `; 3 too old, not counted; 1 off the clock, last -1h`.
fn dates_note(s: &crate::control::SourceView) -> String {
    let mut out = String::new();
    if s.too_old > 0 {
        out.push_str(&format!("; {} too old, not counted", s.too_old));
    }
    if s.skewed > 0 {
        out.push_str(&format!("; {} off the clock", s.skewed));
    }
    for (n, why) in [
        (s.dropped_sender, "from senders outside allow"),
        (s.dropped_auth, "with a wrong auth key"),
        (
            s.dropped_malformed,
            "malformed or over the connection bound",
        ),
        (
            s.dropped_kernel.unwrap_or(0),
            "by the kernel (the sensor did not keep up)",
        ),
    ] {
        if n > 0 {
            out.push_str(&format!("; {n} dropped {why}"));
        }
    }
    if let Some(off) = s.last_skew_s {
        out.push_str(&format!(
            ", last {}{}",
            if off < 0 { "-" } else { "+" },
            Duration(off.unsigned_abs())
        ));
    }
    out
}

/// An Event Socket's fraud watch: its rules, accounts under watch, and
/// what fired (accounts arrive escaped).
fn fraud_detail(path: &str, f: &crate::fraud::FraudView) -> String {
    let mut out = format!(
        "\nToll fraud on {path}: rules {}; {} account(s) followed; hang-ups: {} sent, {} confirmed, {} failed\n",
        f.rules.join(", "),
        f.accounts,
        f.hangups_sent,
        f.hangups_confirmed,
        f.hangups_failed
    );
    for a in &f.watched {
        out.push_str(&format!(
            "  under watch: {} ({} live call(s)) {}{}\n",
            a.account,
            a.live,
            a.levels.join(", "),
            if a.held.is_empty() {
                String::new()
            } else {
                format!("; held: {}", a.held.join(", "))
            }
        ));
    }
    for x in &f.fired {
        out.push_str(&format!(
            // Asked, not done: the jail (ignoreip) or the kernel may refuse
            // a ban, FreeSWITCH a hang-up; the jail's bans say what holds.
            "  {} {} {} account {}: {} {} reached {}; {} hang-up(s) sent{}\n",
            x.time,
            x.rule,
            x.level.as_str(),
            x.account,
            x.metric,
            x.value,
            x.threshold,
            x.hung_up,
            if x.banned.is_empty() {
                String::new()
            } else {
                format!(", ban asked for {}", x.banned.join(" "))
            }
        ));
    }
    out
}

fn jail_detail(j: &JailView) -> String {
    let files: Vec<String> = j
        .sources
        .iter()
        .map(|s| {
            let state = match (&s.reason, s.healthy) {
                (_, true) => "followed".to_string(),
                (Some(why), false) => format!("waiting: {why}"),
                (None, false) => "waiting".to_string(),
            };
            format!("{} ({state}{})", s.path, dates_note(s))
        })
        .collect();
    let banned = j.banned.as_deref().unwrap_or_default();
    let list: Vec<&str> = banned.iter().map(|b| b.addr.as_str()).collect();
    let mut out = format!(
        "Status for the jail: {}\n|- Filter\n|  |- Currently failed: {}\n|  |- Total failed:     {}\n|  `- File list:        {}\n`- Actions\n   |- Currently banned: {}\n   |- Total banned:     {}\n   `- Banned IP list:   {}\n",
        j.name,
        j.currently_failing,
        j.total_failed,
        files.join(" "),
        j.currently_banned,
        j.total_banned,
        list.join(" ")
    );
    if !banned.is_empty() {
        out.push_str(&format!(
            "\n{:<40} {:>10} {:>9}  {:<9} {}\n",
            "ADDRESS", "REMAINING", "FAILURES", "REASON", "SINCE"
        ));
        for b in banned {
            out.push_str(&format!(
                "{:<40} {:>10} {:>9}  {:<9} {}\n",
                b.addr,
                b.remaining_s.map_or_else(|| "permanent".to_string(), secs),
                b.failures,
                match &b.origin {
                    Some(o) => format!("{} ({o})", b.reason),
                    None => b.reason.clone(),
                },
                b.start
            ));
            if !b.seen.is_empty() {
                out.push_str(&format!(
                    "  seen failing in it: {}{}\n",
                    b.seen.join(" "),
                    if b.seen_more { " and others" } else { "" }
                ));
            }
        }
    }
    for s in &j.sources {
        if let Some(f) = &s.fraud {
            out.push_str(&fraud_detail(&s.path, f));
        }
    }
    if let Some(c) = &j.next_cursor {
        out.push_str(&format!(
            "\n(more bans follow: add --cursor {c} for the next page)\n"
        ));
    }
    out
}

/// Renders a successful answer for people.
pub fn render(req: &Request, resp: &Response) -> String {
    let Some(v) = resp.parse::<serde_json::Value>() else {
        return String::new();
    };
    match req {
        Request::Ping {} => "pong\n".to_string(),
        Request::Status { jail: None, .. } => match serde_json::from_value::<StatusView>(v) {
            Ok(s) => format!(
                "sipwarden {}, up {}, firewall {}, configuration {}\n{}{}",
                s.version,
                secs(s.uptime_s),
                s.firewall,
                s.config,
                jail_table(&s.jails),
                s.cluster.as_ref().map(cluster_text).unwrap_or_default()
                    + &names_text(&s.names)
                    + &feeds_text(&s.feeds)
                    + &store_text(s.store.as_ref())
                    + &actions_text(s.actions.as_ref())
            ),
            Err(_) => "(unreadable status)\n".into(),
        },
        Request::Status { jail: Some(_), .. } => match serde_json::from_value::<JailView>(v) {
            Ok(j) => jail_detail(&j),
            Err(_) => "(unreadable status)\n".into(),
        },
        Request::Ban { .. } => {
            let addr = v["addr"].as_str().unwrap_or("?");
            let jail = v["jail"].as_str().unwrap_or("?");
            let len = v["bantime"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| "permanent".into());
            format!(
                "[{}] Ban {} (manual, {})\n",
                escape_text(jail, 64),
                addr,
                len
            )
        }
        Request::Unban { .. } => match serde_json::from_value::<UnbanView>(v) {
            Ok(u) if u.unbanned.is_empty() => "nothing to unban\n".into(),
            Ok(u) => u
                .unbanned
                .iter()
                .map(|b| format!("[{}] Unban {} (manual)\n", b.jail, b.addr))
                .collect(),
            Err(_) => "(unreadable answer)\n".into(),
        },
        Request::Reload { .. } => format!("reloaded: {}\n", v["config"].as_str().unwrap_or("?")),
        Request::Recent {} | Request::FraudBan { .. } => format!("{v}\n"),
    }
}

#[cfg(test)]
mod tests {
    use crate::fraud::view::FiredView;
    use crate::fraud::{FraudView, Level};

    /// A firing's ban goes to the jail, which may refuse it (ignoreip, a
    /// protected peer) or the kernel may: status says the ban was asked,
    /// never that the address is banned, and counts the hang-ups sent
    /// beside those FreeSWITCH confirmed. (Before: "2 call(s) hung up,
    /// banned 10.0.0.5" for a refused ban and unanswered kills.)
    #[test]
    fn a_firing_claims_no_ban_nor_hang_up_it_cannot_know() {
        let v = FraudView {
            rules: vec!["premium".into()],
            fired: vec![FiredView {
                time: "2026-12-01T03:00:00.000Z".into(),
                rule: "premium".into(),
                level: Level::Critical,
                account: "1002".into(),
                metric: "calls_per_minute".into(),
                value: 10,
                threshold: 10,
                hung_up: 2,
                banned: vec!["10.0.0.5".into()],
            }],
            hangups_sent: 2,
            hangups_confirmed: 1,
            hangups_failed: 1,
            ..FraudView::default()
        };
        let text = super::fraud_detail("127.0.0.1:8021", &v);
        assert!(!text.contains("banned 10.0.0.5"), "{text}");
        assert!(!text.contains("call(s) hung up"), "{text}");
        assert!(text.contains("ban asked for 10.0.0.5"), "{text}");
        assert!(text.contains("2 hang-up(s) sent"), "{text}");
        assert!(text.contains("1 confirmed, 1 failed"), "{text}");
    }

    /// `status JAIL` of a jail that banned a /64 for the failures of 30 of
    /// its addresses: the ban is the prefix, with the first 8 addresses
    /// seen in it and a word that there were more, in JSON and in text.
    #[test]
    fn status_shows_a_banned_prefix_with_a_bounded_sample() {
        use crate::control::page::Page;
        use crate::control::views::{JailView, jail_view};
        use crate::decision::Decision;
        use crate::duration::{BanTime, Duration};
        use crate::event::{FailureEvent, FailureKind, Time};
        use crate::jail::{JailSet, JailSpec};
        let mut policy = crate::jail::tests::policy(30, 600, BanTime::For(Duration(3600)));
        policy.ipv6_prefix = 64;
        let spec = JailSpec {
            name: "sip".into(),
            filter: None,
            ignoreself: false,
            policy,
            peers: Vec::new(),
            names: Vec::new(),
            ignore_files: Vec::new(),
            ignore_names: Vec::new(),
        };
        let mut set = JailSet::new(Vec::new(), &[spec]);
        let id = set.jail_id("sip").unwrap();
        let batch: Vec<FailureEvent> = (0..30u32)
            .map(|i| FailureEvent {
                time: Time(1000),
                jail: id,
                addr: format!("2001:db8:1:2::{:x}", 0x100 + i).parse().unwrap(),
                kind: FailureKind::RegisterAuth,
                user: None,
                scanner: false,
            })
            .collect();
        let mut out = Vec::new();
        set.handle(&batch, Time(1000), &mut out);
        let [Decision::Ban(b)] = &out[..] else {
            panic!("{out:?}")
        };
        assert!(set.confirm(b));
        let j = set.jail(id).unwrap();
        let v = jail_view(
            &set,
            j,
            Vec::new(),
            Some(&Page::default()),
            Time(2000),
            &Default::default(),
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["ipv6_prefix"], 64);
        let ban = &json["banned"][0];
        assert_eq!(ban["addr"], "2001:db8:1:2::/64");
        let seen: Vec<&str> = ban["seen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(seen.len(), crate::jail::prefix::SAMPLE_ADDRS);
        assert_eq!(seen[0], "2001:db8:1:2::100");
        assert_eq!(ban["seen_more"], true);
        let back: JailView = serde_json::from_value(json).unwrap();
        let text = super::jail_detail(&back);
        assert!(
            text.contains("2001:db8:1:2::/64")
                && text.contains(
                    "seen failing in it: 2001:db8:1:2::100 2001:db8:1:2::101 2001:db8:1:2::102 2001:db8:1:2::103 2001:db8:1:2::104 2001:db8:1:2::105 2001:db8:1:2::106 2001:db8:1:2::107 and others"
                ),
            "{text}"
        );
    }
}
