//! `sipwarden doctor --probe` (root): a proof, on this kernel, that a ban
//! drops packets before connection tracking, then a read-only look at what
//! on this host could let a banned source past sipwarden's chain.
//!
//! In a private pair of network namespaces ([`netns`]), the daemon's own
//! enforcer lays out the configured table and bans a documentation
//! address; UDP and TCP from it must stop reaching a listener, an
//! established UDP flow (and a TCP connection) must stop, no conntrack
//! entry may come back for it, and a counter between sipwarden's chain and
//! conntrack must see none of its packets, while an unbanned neighbour
//! still gets through. A port-scoped ban ([`scoped`]) must drop only its
//! ports. The host's ruleset, interfaces and tc filters are then read and
//! judged by [`host`].
//!
//! Exit code: 0 when the probe passed and nothing on the host can bypass
//! the chain; 1 when the probe failed or could not run; 2 when it passed
//! but the host has something that can bypass the chain (or that could
//! not be checked); 130 when interrupted (the namespaces are deleted
//! first).

mod host;
mod netns;
mod scoped;
mod traffic;

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use serde_json::Value;

use self::host::{Finding, Severity};
use self::netns::{Budget, Pair, ProbeError, addr, inside, run as run_cmd};
use self::traffic::Listeners;
use crate::config::Config;
use crate::decision::{BanDecision, BanReason, Decision};
use crate::duration::BanTime;
use crate::enforce::{Backend, Enforcer, FirewallConfig, NftEnforcer, PortScope};
use crate::event::{JailId, Time};

/// The whole probe's time limit, cleanup excluded.
const TOTAL: Duration = Duration::from_secs(40);
/// How long a packet that should arrive may take (and how long one that
/// should not is waited for).
const WAIT: Duration = Duration::from_secs(1);
/// Conntrack's priority at prerouting (NF_IP_PRI_CONNTRACK).
const CONNTRACK_PRIORITY: i64 = -200;
/// The port the listeners use inside the private namespace.
const PORT: u16 = 5060;

/// What the probe printed so far: failures decide the verdict.
#[derive(Default)]
struct Out {
    failed: Vec<String>,
}

impl Out {
    fn ok(&mut self, what: impl AsRef<str>) {
        println!("ok    {}", what.as_ref());
    }
    fn warn(&mut self, what: impl AsRef<str>) {
        println!("warn  {}", what.as_ref());
    }
    fn fail(&mut self, what: impl Into<String>) {
        let w = what.into();
        println!("FAIL  {w}");
        self.failed.push(w);
    }
    /// `ok` when `good`, else `fail`.
    fn check(&mut self, good: bool, what: impl Into<String>) {
        if good {
            self.ok(what.into());
        } else {
            self.fail(what);
        }
    }
}

/// Runs the probe and the host checks, prints what they saw, and returns
/// the exit code described in the module docs.
pub fn run(config: Option<&Path>) -> ExitCode {
    netns::catch_signals();
    let (fw, feeds, scopes, names) = match Config::load(config) {
        Ok(c) => (
            c.firewall.clone(),
            c.feeds.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
            c.enabled_jails()
                .enumerate()
                .map(|(i, j)| {
                    (
                        JailId(u16::try_from(i).unwrap_or(u16::MAX - 1)),
                        j.scope.clone(),
                    )
                })
                .collect::<Vec<_>>(),
            c.enabled_jails()
                .map(|j| j.name.clone())
                .collect::<Vec<_>>(),
        ),
        Err(e) => {
            println!("warn  configuration: {e}; probing the default layout (table inet sipwarden)");
            (
                FirewallConfig {
                    backend: Backend::Nftables,
                    table: "sipwarden".into(),
                    keep_on_exit: true,
                    set_size: 1_000_000,
                },
                Vec::new(),
                Vec::new(),
                Vec::new(),
            )
        }
    };
    println!(
        "probe: table inet {} as the daemon lays it out, in a private pair of network namespaces",
        fw.table
    );
    let mut out = Out::default();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        out.fail("the probe needs root: it makes network namespaces and lays out a table in them (run `sudo sipwarden doctor --probe`)");
    } else {
        for n in netns::sweep_stale() {
            out.warn(format!(
                "deleted namespace {n}, left by an earlier probe that was killed"
            ));
        }
        let budget = Budget::new(TOTAL);
        match Pair::create(&budget) {
            Err(e) => out.fail(format!("making the namespaces: {e}")),
            Ok(mut pair) => {
                println!(
                    "probe: namespaces {} ({}, {}, {}, {}) and {} ({}, {}), joined by a veth pair",
                    pair.a,
                    addr::BANNED_V4,
                    addr::CONTROL_V4,
                    addr::SCOPED_V4,
                    addr::BANNED_V6,
                    pair.b,
                    addr::SERVER_V4,
                    addr::SERVER_V6
                );
                if let Err(e) = probe(&pair, &fw, feeds, scopes, &names, &budget, &mut out) {
                    if netns::interrupted() {
                        out.fail("the probe stopped: interrupted");
                    } else {
                        out.fail(format!("the probe stopped: {e}"));
                    }
                }
                let left = pair.delete();
                if left.is_empty() {
                    println!("probe: namespaces {} and {} deleted", pair.a, pair.b);
                } else {
                    out.warn(format!(
                        "namespaces left: {}; delete them with `ip netns del`",
                        left.join(", ")
                    ));
                }
            }
        }
    }
    if netns::interrupted() {
        println!("probe: interrupted; nothing else checked");
        return ExitCode::from(130);
    }
    let passed = out.failed.is_empty();
    if passed {
        println!(
            "probe: PASS: bans drop UDP and TCP before conntrack and stop established flows, a port-scoped ban only its ports, on this kernel"
        );
    } else {
        println!("probe: FAIL: {} check(s) failed", out.failed.len());
    }
    println!(
        "host: what could let a banned source past table inet {}'s chain",
        fw.table
    );
    let mut findings = host_findings(&fw.table);
    if fw.backend == Backend::None {
        // The kernel proof above used nftables regardless: say that the
        // configured daemon would put no ban in the kernel at all.
        findings.insert(
            0,
            Finding {
                severity: Severity::Bypass,
                what: "the configuration has [firewall] backend = \"none\": the daemon decides bans and logs them but puts none in the kernel, so nothing is dropped (set backend = \"nftables\")".to_string(),
            },
        );
    }
    for f in &findings {
        match f.severity {
            Severity::Bypass => println!("warn  {}", f.what),
            Severity::Note => println!("note  {}", f.what),
        }
    }
    let bypasses = findings
        .iter()
        .filter(|f| f.severity == Severity::Bypass)
        .count();
    if bypasses == 0 {
        println!("host: nothing found that can bypass the chain");
    } else {
        println!(
            "host: {bypasses} finding(s) that can let banned packets through, or could not be checked"
        );
    }
    if !passed {
        ExitCode::from(1)
    } else if bypasses > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// `nft -j ARGS` inside `ns`, parsed.
fn nft_json(ns: &str, args: &[&str], budget: &Budget) -> Result<Value, ProbeError> {
    budget.check()?;
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let limit = budget.at_most(Duration::from_secs(5));
    let o = inside(ns, limit, move || {
        run_cmd(Command::new("nft").arg("-j").args(&args), None, limit)
    })??;
    serde_json::from_slice(&o.stdout)
        .map_err(|e| ProbeError::Step(format!("`nft -j` printed what is not JSON: {e}")))
}

/// `nft -f -` with `text` inside `ns`.
fn nft_load(ns: &str, text: String, budget: &Budget) -> Result<(), ProbeError> {
    budget.check()?;
    let limit = budget.at_most(Duration::from_secs(5));
    inside(ns, limit, move || {
        run_cmd(Command::new("nft").args(["-f", "-"]), Some(&text), limit).map(drop)
    })?
}

/// A ban of `addr` by jail `jail` for 10 minutes, as a jail decides it.
fn ban(jail: JailId, addr: impl Into<ipnet::IpNet>) -> Decision {
    let now = Time::now();
    Decision::Ban(BanDecision {
        jail,
        jail_name: "doctor-probe".into(),
        addr: addr.into(),
        start: now,
        end: Some(Time(now.0 + 600_000)),
        bantime: BanTime::For(crate::duration::Duration(600)),
        failures: 0,
        reason: BanReason::Manual,
    })
}

/// A jail id past every configured jail: its bans drop every packet.
const UNSCOPED: JailId = JailId(u16::MAX);

/// The steps in the namespaces; a step that cannot run ends the probe with
/// an error, a check that fails is printed and counted in `out`. `scopes`
/// are the enabled jails' port scopes by jail id, laid out as the daemon
/// lays them out; `names` the jails' names by the same id.
fn probe(
    pair: &Pair,
    fw: &FirewallConfig,
    feeds: Vec<String>,
    mut scopes: Vec<(JailId, Option<PortScope>)>,
    names: &[String],
    budget: &Budget,
    out: &mut Out,
) -> Result<(), ProbeError> {
    let lim = |d: Duration| budget.at_most(d);
    // The configuration's first scoped jail is proved; without one, the
    // probe's own scope is laid out beside the configured sets.
    let proved = match scopes.iter().find_map(|(j, s)| Some((*j, s.clone()?))) {
        Some((j, s)) => {
            let name = names.get(usize::from(j.0)).map_or("?", String::as_str);
            Some((j, s, format!("jail {name}")))
        }
        None => scoped::own_scope().map(|s| {
            let j = JailId(u16::try_from(scopes.len()).unwrap_or(u16::MAX - 1));
            scopes.push((j, Some(s.clone())));
            (j, s, "the probe's own".to_string())
        }),
    };
    let (b4, b6, c4) = (addr::BANNED_V4, addr::BANNED_V6, addr::CONTROL_V4);
    // The table, laid out by the daemon's enforcer inside `b`.
    let owner = format!("doctor --probe, process {}", std::process::id());
    let cfg = fw.clone();
    let mut enforcer = inside(&pair.b, lim(Duration::from_secs(10)), move || {
        NftEnforcer::start_scoped(&cfg, feeds, &owner, &scopes)
    })?
    .map_err(|e| ProbeError::Step(format!("the enforcer could not lay out the table: {e}")))?;
    let table = nft_json(&pair.b, &["list", "table", "inet", &fw.table], budget)?;
    let prio = host::our_priority(&table, &fw.table).ok_or_else(|| {
        ProbeError::Step(format!(
            "table inet {} has no chain at hook prerouting after the layout",
            fw.table
        ))
    })?;
    out.check(
        prio < CONNTRACK_PRIORITY,
        format!(
            "table inet {} laid out in {} by the daemon's enforcer: its chain hooks prerouting at priority {prio}, {} conntrack ({CONNTRACK_PRIORITY})",
            fw.table,
            pair.b,
            if prio < CONNTRACK_PRIORITY { "before" } else { "NOT before" }
        ),
    );
    // A counter at the last priority before conntrack: a packet counted
    // there was not dropped before conntrack. And a stateful input chain
    // (as most hosts have) so the namespace tracks connections.
    let watch = CONNTRACK_PRIORITY - 1;
    // The probe's own table, never the configured one.
    let helper = if fw.table == "swprobe" {
        "swprobe_watch"
    } else {
        "swprobe"
    };
    let watch_rules = format!(
        "table inet {helper} {{\n\tchain watch {{\n\t\ttype filter hook prerouting priority {watch}; policy accept;\n\t\tip saddr {b4} counter comment \"v4\"\n\t\tip6 saddr {b6} counter comment \"v6\"\n\t}}\n"
    );
    let tracked = nft_load(
        &pair.b,
        format!(
            "{watch_rules}\tchain track {{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tct state established,related counter accept\n\t}}\n}}\n"
        ),
        budget,
    );
    let conntrack = match tracked {
        Ok(()) => true,
        Err(e) => {
            out.warn(format!(
                "conntrack: a `ct state` rule was refused ({e}); the conntrack checks are skipped"
            ));
            nft_load(&pair.b, format!("{watch_rules}}}\n"), budget)?;
            false
        }
    };
    let watched = |budget: &Budget| -> Result<u64, ProbeError> {
        let j = nft_json(&pair.b, &["list", "chain", "inet", helper, "watch"], budget)?;
        Ok(host::counters(&j, "watch").values().sum())
    };
    let l = Listeners::open(&pair.b, PORT, lim(Duration::from_secs(5)))?;
    let c = traffic::Clients::open(&pair.a, lim(Duration::from_secs(5)))?;

    // Before the ban: everything passes, and the flows are established.
    budget.check()?;
    let got = traffic::udp(&c.flow, &l.udp4, 3, "before", lim(WAIT * 2), true)?;
    out.check(
        got.arrived == 3 && got.answered,
        format!(
            "before the ban: UDP {} -> {}:{PORT}: {} of 3 arrived, {} (the flow is established)",
            c.flow_addr(),
            addr::SERVER_V4,
            got.arrived,
            if got.answered {
                "the answer came back"
            } else {
                "NO answer came back"
            }
        ),
    );
    let (tcp, peer) = traffic::tcp_connect(&pair.a, b4, &l, lim(WAIT * 2))?;
    let tcp_ok = peer.is_some_and(|p| p.ip() == b4);
    out.check(
        tcp_ok,
        format!(
            "before the ban: TCP to {}:{PORT}: {}",
            addr::SERVER_V4,
            peer.map_or("not accepted".to_string(), |p| format!("accepted from {p}"))
        ),
    );
    let got6 = traffic::udp(&c.v6, &l.udp6, 3, "before", lim(WAIT * 2), false)?;
    out.check(
        got6.arrived == 3,
        format!(
            "before the ban: UDP {} -> [{}]:{PORT}: {} of 3 arrived",
            addr::BANNED_V6,
            addr::SERVER_V6,
            got6.arrived
        ),
    );
    if conntrack {
        let n = traffic::conntrack_from(&pair.b, &[b4, b6], lim(Duration::from_secs(5)))?.len();
        out.check(
            n > 0,
            format!(
                "before the ban: conntrack holds {n} entr{} from {} and {} (connection tracking works in the namespace)",
                if n == 1 { "y" } else { "ies" },
                addr::BANNED_V4,
                addr::BANNED_V6
            ),
        );
    }
    let seen_before = watched(budget)?;
    out.check(
        seen_before > 0,
        format!(
            "before the ban: a counter at priority {watch} (just before conntrack) saw {seen_before} packet(s) from the sources"
        ),
    );

    // The ban, through the enforcer as the daemon applies decisions.
    budget.check()?;
    // IPv6 as jails ban a source by default (`ipv6_prefix = 64`): its /64,
    // an element of the interval set banned_net_v6, not of banned_v6.
    let b6_net = ipnet::IpNet::new(b6, 64)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| b6.into());
    let decisions = vec![ban(UNSCOPED, b4), ban(UNSCOPED, b6_net)];
    let (enforcer_back, applied) = inside(&pair.b, lim(Duration::from_secs(10)), move || {
        let r = enforcer.apply(&decisions);
        // The conntrack flush the daemon runs after answering the batch.
        enforcer.flush_pending();
        (enforcer, r)
    })?;
    enforcer = enforcer_back;
    match applied {
        Ok(refused) if refused.is_empty() => out.ok(format!(
            "banned {} and {b6_net} through the enforcer (10 minutes, kernel timeouts; the /64 as jails ban IPv6 sources)",
            addr::BANNED_V4,
        )),
        Ok(refused) => {
            for r in refused {
                out.fail(format!("the enforcer refused a ban: {}", r.reason));
            }
        }
        Err(e) => out.fail(format!("the enforcer failed to ban: {e}")),
    }

    // After the ban: nothing from the banned sources gets in.
    budget.check()?;
    let got = traffic::udp(&c.flow, &l.udp4, 3, "after", lim(WAIT), false)?;
    out.check(
        got.arrived == 0,
        format!(
            "after the ban: the established UDP flow {} -> {}:{PORT}: {} of 3 arrived",
            c.flow_addr(),
            addr::SERVER_V4,
            got.arrived
        ),
    );
    if let Some(tcp) = tcp.filter(|_| tcp_ok) {
        let n = traffic::tcp_after(tcp, lim(WAIT))?;
        out.check(
            n == 0,
            format!("after the ban: the established TCP connection: {n} byte(s) of 5 arrived"),
        );
    }
    let fresh = traffic::Clients::open(&pair.a, lim(Duration::from_secs(5)))?;
    let got = traffic::udp(&fresh.flow, &l.udp4, 3, "new", lim(WAIT), false)?;
    out.check(
        got.arrived == 0,
        format!(
            "after the ban: UDP from a new socket {}: {} of 3 arrived",
            fresh.flow_addr(),
            got.arrived
        ),
    );
    let (_, peer) = traffic::tcp_connect(&pair.a, b4, &l, lim(WAIT))?;
    out.check(
        peer.is_none(),
        format!(
            "after the ban: a new TCP connection from {}: {}",
            addr::BANNED_V4,
            peer.map_or(
                "not established, nothing accepted".to_string(),
                |p| format!("accepted from {p}")
            )
        ),
    );
    let got6 = traffic::udp(&c.v6, &l.udp6, 3, "after", lim(WAIT), false)?;
    out.check(
        got6.arrived == 0,
        format!(
            "after the ban: UDP {} -> [{}]:{PORT}: {} of 3 arrived",
            addr::BANNED_V6,
            addr::SERVER_V6,
            got6.arrived
        ),
    );
    if conntrack {
        let n = traffic::conntrack_from(&pair.b, &[b4, b6], lim(Duration::from_secs(5)))?.len();
        out.check(
            n == 0,
            format!(
                "after the ban: conntrack holds {n} entr{} from the banned sources{}",
                if n == 1 { "y" } else { "ies" },
                if n == 0 {
                    " (the enforcer flushed them; none came back)"
                } else {
                    ""
                }
            ),
        );
    }
    let seen_after = watched(budget)?;
    out.check(
        seen_after == seen_before,
        format!(
            "after the ban: the counter at priority {watch} saw {} more packet(s) from the banned sources: {}",
            seen_after.saturating_sub(seen_before),
            if seen_after == seen_before {
                "dropped before conntrack"
            } else {
                "they reached conntrack"
            }
        ),
    );
    let got = traffic::udp(&c.control, &l.udp4, 3, "control", lim(WAIT * 2), false)?;
    out.check(
        got.arrived == 3,
        format!(
            "control: UDP from {c4} (not banned) after the ban: {} of 3 arrived",
            got.arrived
        ),
    );
    if let Some((jail, scope, whose)) = proved {
        let ctx = scoped::Ctx {
            pair,
            budget,
            main: &l,
            conntrack,
        };
        enforcer = scoped::prove(&ctx, enforcer, jail, &scope, &whose, out)?;
    }
    drop(enforcer);
    Ok(())
}

/// The host's findings, from the tools run here (read-only).
fn host_findings(table: &str) -> Vec<Finding> {
    let limit = Duration::from_secs(10);
    let legacy = std::fs::read_to_string("/proc/net/ip_tables_names").ok();
    host::survey(
        table,
        &mut |tool, args| {
            run_cmd(Command::new(tool).args(args), None, limit)
                .map(|o| o.stdout)
                .map_err(|e| e.to_string())
        },
        legacy.as_deref(),
    )
}
