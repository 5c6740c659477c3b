//! What on this host could let a banned source past sipwarden's chain, read
//! from the JSON that `nft -j list ruleset`, `ip -j -d link show` and
//! `tc -j filter show dev X ingress` print. Pure: the caller runs the tools.
//!
//! sipwarden drops at hook prerouting, priority raw (-300). Only what runs
//! before that drop and takes the packet somewhere else can bypass it: an
//! XDP program, a tc ingress redirect or mirror, a netdev-family ingress
//! chain that forwards or duplicates, or, at prerouting with an equal or
//! earlier priority, a rule that queues to userspace (whose verdict can skip
//! the rest of the hook), duplicates or redirects. An `accept` anywhere is
//! not final (the next chain still runs), so it is never reported.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

/// The priority of sipwarden's chain as laid out (`priority raw`).
pub const RAW_PRIORITY: i64 = -300;

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// It can let a banned source's packets through (or could not be
    /// checked).
    Bypass,
    /// Worth knowing; it cannot undo a ban.
    Note,
}

/// One thing found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// What was found, where, and why it matters.
    pub what: String,
}

fn bypass(what: String) -> Finding {
    Finding {
        severity: Severity::Bypass,
        what,
    }
}

fn note(what: String) -> Finding {
    Finding {
        severity: Severity::Note,
        what,
    }
}

/// What a rule does that matters here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    /// To a userspace program (nft `queue`, xtables NFQUEUE/QUEUE).
    Queue,
    /// Out through another device (netdev `fwd`).
    Fwd,
    /// A copy elsewhere (`dup`, xtables TEE).
    Dup,
    /// To a local socket or port (`tproxy`, `redirect`, `dnat`).
    Redirect,
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Queue => "queues packets to userspace (NFQUEUE)",
            Act::Fwd => "forwards packets to another device (fwd)",
            Act::Dup => "duplicates packets elsewhere (dup)",
            Act::Redirect => "redirects packets (tproxy/redirect/dnat)",
        }
    }
}

/// A chain of the ruleset.
struct Chain<'a> {
    family: &'a str,
    table: &'a str,
    name: &'a str,
    hook: Option<&'a str>,
    prio: Option<i64>,
    dev: Option<String>,
}

/// A chain's or map's key: (family, table, name).
type Key<'a> = (&'a str, &'a str, &'a str);

/// What one rule (with the named maps it uses) does and where it jumps.
#[derive(Default)]
struct Walk {
    acts: BTreeSet<Act>,
    jumps: BTreeSet<String>,
    maps: BTreeSet<String>,
}

fn walk(v: &Value, w: &mut Walk) {
    match v {
        Value::Object(m) => {
            for (k, inner) in m {
                match k.as_str() {
                    "queue" => {
                        w.acts.insert(Act::Queue);
                    }
                    "fwd" => {
                        w.acts.insert(Act::Fwd);
                    }
                    "dup" => {
                        w.acts.insert(Act::Dup);
                    }
                    "tproxy" | "redirect" | "dnat" => {
                        w.acts.insert(Act::Redirect);
                    }
                    "jump" | "goto" => {
                        if let Some(t) = inner.get("target").and_then(Value::as_str) {
                            w.jumps.insert(t.to_string());
                        }
                    }
                    // iptables-nft rules show their targets this way.
                    "xt" if inner.get("type").and_then(Value::as_str) == Some("target") => {
                        match inner.get("name").and_then(Value::as_str) {
                            Some("NFQUEUE" | "QUEUE") => {
                                w.acts.insert(Act::Queue);
                            }
                            Some("TEE") => {
                                w.acts.insert(Act::Dup);
                            }
                            Some("TPROXY" | "REDIRECT" | "DNAT") => {
                                w.acts.insert(Act::Redirect);
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
                walk(inner, w);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, w)),
        Value::String(s) => {
            if let Some(name) = s.strip_prefix('@') {
                w.maps.insert(name.to_string());
            }
        }
        _ => {}
    }
}

fn items(ruleset: &Value) -> &[Value] {
    ruleset
        .get("nftables")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn s<'a>(o: &'a Value, k: &str) -> &'a str {
    o.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// The priority of sipwarden's prerouting chain in table `inet <table>`,
/// when that table is laid out.
pub fn our_priority(ruleset: &Value, table: &str) -> Option<i64> {
    items(ruleset).iter().find_map(|i| {
        let c = i.get("chain")?;
        (s(c, "family") == "inet" && s(c, "table") == table && s(c, "hook") == "prerouting")
            .then(|| c.get("prio").and_then(Value::as_i64))
            .flatten()
    })
}

/// What in the ruleset could let a banned source past sipwarden's chain
/// (table `inet <table>`, priority `ours`).
pub fn ruleset_findings(ruleset: &Value, table: &str, ours: i64) -> Vec<Finding> {
    let mut chains = Vec::new();
    // Per (family, table, chain): what its rules do, with rule handles.
    let mut rules: HashMap<Key, Vec<(i64, Walk)>> = HashMap::new();
    // Per (family, table, map): the map's elements, for verdict maps.
    let mut maps: HashMap<Key, &Value> = HashMap::new();
    for i in items(ruleset) {
        if let Some(c) = i.get("chain") {
            chains.push(Chain {
                family: s(c, "family"),
                table: s(c, "table"),
                name: s(c, "name"),
                hook: c.get("hook").and_then(Value::as_str),
                prio: c.get("prio").and_then(Value::as_i64),
                dev: c
                    .get("dev")
                    .map(|d| match d {
                        Value::String(x) => x.clone(),
                        other => other.to_string(),
                    })
                    .or_else(|| c.get("devices").map(Value::to_string)),
            });
        } else if let Some(r) = i.get("rule") {
            let mut w = Walk::default();
            if let Some(e) = r.get("expr") {
                walk(e, &mut w);
            }
            rules
                .entry((s(r, "family"), s(r, "table"), s(r, "chain")))
                .or_default()
                .push((r.get("handle").and_then(Value::as_i64).unwrap_or(-1), w));
        } else if let Some(m) = i.get("map") {
            if let Some(e) = m.get("elem") {
                maps.insert((s(m, "family"), s(m, "table"), s(m, "name")), e);
            }
        }
    }
    let mut out = Vec::new();
    for c in &chains {
        let Some(hook) = c.hook else { continue };
        if c.family == "inet" && c.table == table {
            continue; // sipwarden's own
        }
        let at = format!(
            "chain {} {} {} (hook {hook}, priority {}{})",
            c.family,
            c.table,
            c.name,
            c.prio.map_or("?".into(), |p| p.to_string()),
            c.dev
                .as_deref()
                .map(|d| format!(", device {d}"))
                .unwrap_or_default()
        );
        // Everything this base chain reaches through jumps, gotos and
        // verdict maps: (chain, rule handle, act).
        let mut found: Vec<(String, i64, Act)> = Vec::new();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut todo: Vec<String> = vec![c.name.to_string()];
        while let Some(name) = todo.pop() {
            let Some(chain) = chains
                .iter()
                .find(|x| x.family == c.family && x.table == c.table && x.name == name)
            else {
                continue;
            };
            if !seen.insert(chain.name) {
                continue;
            }
            for (handle, w) in rules
                .get(&(c.family, c.table, chain.name))
                .map_or(&[][..], Vec::as_slice)
            {
                let mut w2 = Walk::default();
                for m in &w.maps {
                    if let Some(e) = maps.get(&(c.family, c.table, m.as_str())) {
                        walk(e, &mut w2);
                    }
                }
                for a in w.acts.iter().chain(&w2.acts) {
                    found.push((chain.name.to_string(), *handle, *a));
                }
                todo.extend(w.jumps.iter().chain(&w2.jumps).cloned());
            }
        }
        let place = |chain: &str, handle: i64| {
            if chain == c.name {
                format!("rule handle {handle}")
            } else {
                format!("rule handle {handle} of chain {chain}, reached from it")
            }
        };
        let ingress = c.family == "netdev" && hook == "ingress";
        let early = matches!(c.family, "ip" | "ip6" | "inet")
            && hook == "prerouting"
            && c.prio.is_some_and(|p| p <= ours);
        let mut diverts = false;
        for (chain, handle, act) in &found {
            let where_ = place(chain, *handle);
            if ingress && matches!(act, Act::Fwd | Act::Dup) {
                diverts = true;
                out.push(bypass(format!(
                    "{at}: {} before prerouting ({where_}); those packets never meet sipwarden's chain",
                    act.name()
                )));
            } else if early && matches!(act, Act::Queue | Act::Dup | Act::Redirect) {
                let order = if c.prio == Some(ours) {
                    "at the same priority as sipwarden's chain (the kernel runs equal priorities in registration order, so it may come first)"
                } else {
                    "before sipwarden's chain"
                };
                let why = match act {
                    Act::Queue => {
                        "; a userspace program decides on banned packets first, and its verdict can skip the rest of the hook"
                    }
                    Act::Dup => "; copies of banned packets leave before the drop",
                    _ => "; banned packets are sent on to a local socket before the drop",
                };
                out.push(bypass(format!(
                    "{at}: {} {order} ({where_}){why}",
                    act.name()
                )));
            } else if *act == Act::Queue {
                out.push(note(format!(
                    "{at}: queues packets to userspace ({where_}); it runs after sipwarden's drop, so it sees only what sipwarden let through"
                )));
            }
        }
        if ingress && !diverts {
            out.push(note(format!(
                "{at}: runs before prerouting; it neither forwards nor duplicates (its accept is not final, sipwarden's drop still follows)"
            )));
        }
    }
    out
}

/// XDP programs attached to interfaces, from `ip -j -d link show`.
pub fn link_findings(links: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    for l in links.as_array().map_or(&[][..], Vec::as_slice) {
        let Some(xdp) = l.get("xdp") else { continue };
        let prog = xdp
            .get("prog")
            .and_then(|p| p.get("id"))
            .map(|id| format!(" (program id {id})"))
            .or_else(|| {
                xdp.get("attached")
                    .and_then(Value::as_array)
                    .map(|a| format!(" ({} programs)", a.len()))
            })
            .unwrap_or_default();
        out.push(bypass(format!(
            "interface {}: an XDP program is attached{prog}; it sees packets before netfilter and can redirect them or hand them to AF_XDP sockets past sipwarden's chain",
            s(l, "ifname")
        )));
    }
    out
}

/// The interface names in `ip -j link show`'s output.
pub fn interfaces(links: &Value) -> Vec<String> {
    links
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|l| l.get("ifname").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// tc ingress filters of `dev` that redirect or mirror (mirred) or run BPF
/// (which may redirect), from `tc -j filter show dev DEV ingress`.
pub fn tc_findings(dev: &str, filters: &Value) -> Vec<Finding> {
    fn kinds(v: &Value, mirred: &mut Vec<String>, bpf: &mut usize) {
        match v {
            Value::Object(m) => {
                match m.get("kind").and_then(Value::as_str) {
                    Some("mirred") => mirred.push(format!(
                        "mirred {} to {}",
                        m.get("mirred_action")
                            .and_then(Value::as_str)
                            .unwrap_or("redirect"),
                        m.get("to_dev").and_then(Value::as_str).unwrap_or("?")
                    )),
                    Some("bpf") => *bpf += 1,
                    _ => {}
                }
                m.values().for_each(|x| kinds(x, mirred, bpf));
            }
            Value::Array(a) => a.iter().for_each(|x| kinds(x, mirred, bpf)),
            _ => {}
        }
    }
    let (mut mirred, mut bpf) = (Vec::new(), 0);
    kinds(filters, &mut mirred, &mut bpf);
    mirred.sort();
    mirred.dedup();
    let mut out = Vec::new();
    if !mirred.is_empty() {
        out.push(bypass(format!(
            "interface {dev}: tc ingress {}; those packets leave before prerouting and never meet sipwarden's chain",
            mirred.join(", ")
        )));
    }
    if bpf > 0 {
        out.push(bypass(format!(
            "interface {dev}: tc ingress runs BPF ({bpf} classifier/action entries); a BPF program can redirect packets before prerouting"
        )));
    }
    out
}

/// Runs a tool (name, arguments): its standard output, or why it could not.
pub type Tool<'a> = dyn FnMut(&str, &[&str]) -> Result<Vec<u8>, String> + 'a;

/// At most this many interfaces have their tc filters read.
pub const MAX_INTERFACES: usize = 256;

/// Every finding on the host: the ruleset, the interfaces' XDP programs,
/// their tc ingress filters and iptables-legacy's tables. `run` runs a tool
/// (name, arguments) and returns its standard output, or why it could not;
/// a tool that is missing or fails is a finding, never a crash. `legacy` is
/// `/proc/net/ip_tables_names`, when readable.
pub fn survey(table: &str, run: &mut Tool<'_>, legacy: Option<&str>) -> Vec<Finding> {
    let mut out = Vec::new();
    let cannot = |what: &str, e: String| bypass(format!("cannot check {what}: {e}"));
    let mut json = |tool: &str, args: &[&str]| -> Result<Value, String> {
        let o = run(tool, args)?;
        if o.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Array(Vec::new()));
        }
        serde_json::from_slice(&o).map_err(|e| format!("its output is not JSON ({e})"))
    };
    match json("nft", &["-j", "list", "ruleset"]) {
        Ok(r) => {
            let ours = our_priority(&r, table).unwrap_or_else(|| {
                out.push(note(format!(
                    "table inet {table} is not laid out on this host (is the daemon running?); compared with the layout's priority raw ({RAW_PRIORITY})"
                )));
                RAW_PRIORITY
            });
            out.extend(ruleset_findings(&r, table, ours));
        }
        Err(e) => out.push(cannot("the nftables ruleset (`nft -j list ruleset`)", e)),
    }
    match json("ip", &["-j", "-d", "link", "show"]) {
        Ok(links) => {
            out.extend(link_findings(&links));
            let devs = interfaces(&links);
            for dev in devs.iter().take(MAX_INTERFACES) {
                match json("tc", &["-j", "filter", "show", "dev", dev, "ingress"]) {
                    Ok(f) => out.extend(tc_findings(dev, &f)),
                    Err(e) => {
                        out.push(cannot(
                            "tc ingress filters (`tc -j filter show dev X ingress`)",
                            e,
                        ));
                        break;
                    }
                }
            }
            if devs.len() > MAX_INTERFACES {
                out.push(bypass(format!(
                    "{} interfaces: the tc filters of the first {MAX_INTERFACES} were checked, not those of {} and the rest",
                    devs.len(),
                    devs[MAX_INTERFACES]
                )));
            }
        }
        Err(e) => out.push(cannot(
            "interfaces for XDP programs (`ip -j -d link show`)",
            e,
        )),
    }
    let names: Vec<&str> = legacy.map_or(Vec::new(), |l| l.split_whitespace().collect());
    if !names.is_empty() {
        out.push(note(format!(
            "iptables-legacy tables are loaded ({}); `nft` does not show their rules: look for NFQUEUE in `iptables-legacy -t raw -S` and `-t mangle -S`",
            names.join(", ")
        )));
    }
    out
}

/// The packet counts of the rules of one chain, by rule comment, from
/// `nft -j list chain ...` (or a whole ruleset).
pub fn counters(ruleset: &Value, chain: &str) -> HashMap<String, u64> {
    fn packets(v: &Value) -> Option<u64> {
        match v {
            Value::Object(m) => m
                .get("counter")
                .and_then(|c| c.get("packets"))
                .and_then(Value::as_u64)
                .or_else(|| m.values().find_map(packets)),
            Value::Array(a) => a.iter().find_map(packets),
            _ => None,
        }
    }
    items(ruleset)
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| s(r, "chain") == chain)
        .filter_map(|r| Some((r.get("comment")?.as_str()?.to_string(), packets(r)?)))
        .collect()
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
