//! The table's layout: one `nft -f -` transaction that replaces any
//! leftover table of the same name, and its removal.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use super::NftEnforcer;
use super::batch::{NFPROTO_INET, NFT_MSG_DELTABLE, NFTA_TABLE_NAME, explain_io};
use crate::enforce::EnforceError;
use crate::enforce::netlink::{NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_REQUEST, Reply, explain};
use crate::enforce::scope::{PortScope, ScopeId};
use crate::enforce::sets::{SetKind, SetName};

/// The first address after the prefix, or `None` when the prefix reaches the
/// top of the address space (the interval is then open-ended).
pub(super) fn after_prefix(net: &IpNet) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => u32::from(n.broadcast())
            .checked_add(1)
            .map(|v| IpAddr::from(v.to_be_bytes())),
        IpNet::V6(n) => u128::from(n.broadcast())
            .checked_add(1)
            .map(|v| IpAddr::from(v.to_be_bytes())),
    }
}

/// The nftables ruleset sipwarden owns, as one `nft -f` transaction that
/// replaces any leftover table of the same name. `mark`, the owner, becomes
/// the table's comment. Without port scopes: see [`layout_with`].
pub fn layout(table: &str, set_size: u32, feeds: &[String], mark: Option<&str>) -> String {
    layout_with(table, set_size, feeds, &[], mark)
}

fn size_clause(set_size: u32) -> String {
    if set_size > 0 {
        format!(" size {set_size};")
    } else {
        String::new()
    }
}

/// The four sets of bans of `scope` (`ScopeId::ALL`: the unscoped ones),
/// each as `set NAME { ... }`.
fn ban_sets(scope: ScopeId, size: &str) -> [String; 4] {
    SetKind::ALL.map(|kind| {
        let name = SetName { kind, scope }.label();
        let (ty, flags) = match kind {
            SetKind::V4 => ("ipv4_addr", "timeout"),
            SetKind::V6 => ("ipv6_addr", "timeout"),
            SetKind::NetV4 => ("ipv4_addr", "interval, timeout"),
            SetKind::NetV6 => ("ipv6_addr", "interval, timeout"),
        };
        format!("set {name} {{ type {ty}; flags {flags};{size} }}")
    })
}

/// The four drop rules of the sets of `scope`, narrowed to its protocols
/// and ports when it has some.
fn ban_rules(scope: ScopeId, port_scope: Option<&PortScope>) -> [String; 4] {
    let tail = port_scope.map_or_else(|| "drop".to_string(), |s| format!("{} drop", s.nft_match()));
    SetKind::ALL.map(|kind| {
        let name = SetName { kind, scope }.label();
        let ip = match kind {
            SetKind::V4 | SetKind::NetV4 => "ip",
            SetKind::V6 | SetKind::NetV6 => "ip6",
        };
        format!("{ip} saddr @{name} {tail}")
    })
}

/// The nftables ruleset sipwarden owns, as one `nft -f` transaction that
/// replaces any leftover table of the same name, with four sets and four
/// rules per port scope (`banned_v4_s<id>`, each rule narrowed to the
/// scope's protocols and ports). `mark`, the owner, becomes the table's
/// comment. Without scopes the table is exactly the unscoped one.
pub fn layout_with(
    table: &str,
    set_size: u32,
    feeds: &[String],
    scopes: &[PortScope],
    mark: Option<&str>,
) -> String {
    let comment = mark
        .map(|m| format!("\tcomment \"{m}\"\n"))
        .unwrap_or_default();
    let size = size_clause(set_size);
    let mut sets = String::new();
    let mut rules = String::new();
    for set in ban_sets(ScopeId::ALL, &size) {
        sets.push_str(&format!("\t{set}\n"));
    }
    for rule in ban_rules(ScopeId::ALL, None) {
        rules.push_str(&format!("\t\t{rule}\n"));
    }
    for s in scopes {
        for set in ban_sets(s.id(), &size) {
            sets.push_str(&format!("\t{set}\n"));
        }
        for rule in ban_rules(s.id(), Some(s)) {
            rules.push_str(&format!("\t\t{rule}\n"));
        }
    }
    // Blocklist feeds: prefixes, replaced whole on each refresh.
    for f in feeds {
        sets.push_str(&format!(
            "\tset feed_{f}_v4 {{ type ipv4_addr; flags interval;{size} }}\n\tset feed_{f}_v6 {{ type ipv6_addr; flags interval;{size} }}\n"
        ));
        rules.push_str(&format!(
            "\t\tip saddr @feed_{f}_v4 drop\n\t\tip6 saddr @feed_{f}_v6 drop\n"
        ));
    }
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         {comment}\
         {sets}\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         {rules}\
         \t}}\n\
         }}\n"
    )
}

/// The sets and rules of port scopes new to a running table (a reload
/// scoped a jail anew), as one `nft -f` transaction that adds them beside
/// what is there.
pub fn scope_additions(table: &str, set_size: u32, scopes: &[PortScope]) -> String {
    let size = size_clause(set_size);
    let mut out = String::new();
    for s in scopes {
        for set in ban_sets(s.id(), &size) {
            out.push_str(&format!(
                "add {} inet {table} {}\n",
                "set",
                &set["set ".len()..]
            ));
        }
        for rule in ban_rules(s.id(), Some(s)) {
            out.push_str(&format!("add rule inet {table} prerouting {rule}\n"));
        }
    }
    out
}

/// Runs `nft -f -` with `text`: one atomic transaction. `what` names it in
/// errors.
fn run_nft(table: &str, text: &str, what: &str) -> Result<(), EnforceError> {
    let child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EnforceError::Failed(format!(
                "{what} table inet {table}: the `nft` command is missing; install the nftables package (or run with --dry-run)"
            )));
        }
        Err(e) => return Err(EnforceError::Failed(format!("cannot run `nft`: {e}"))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| EnforceError::Failed(format!("`nft -f -`: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let hint = if err.contains("Operation not permitted") {
        "; run sipwarden as root or give it CAP_NET_ADMIN (or use --dry-run)"
    } else if err.contains("No such file or directory") || err.contains("Protocol not supported") {
        "; is the nf_tables kernel module available?"
    } else {
        ""
    };
    Err(EnforceError::Failed(format!(
        "{what} table inet {table} failed: {}{hint}",
        err.trim()
    )))
}

/// Adds the sets and rules of `scopes` to the running table.
pub(super) fn add_scopes(
    table: &str,
    set_size: u32,
    scopes: &[PortScope],
) -> Result<(), EnforceError> {
    run_nft(
        table,
        &scope_additions(table, set_size, scopes),
        "adding port scopes to",
    )
}

/// Runs `nft -f -` with the layout: one atomic transaction.
pub(super) fn apply_layout(
    table: &str,
    set_size: u32,
    feeds: &[String],
    scopes: &[PortScope],
    mark: Option<&str>,
) -> Result<(), EnforceError> {
    run_nft(
        table,
        &layout_with(table, set_size, feeds, scopes, mark),
        "laying out",
    )
}

impl NftEnforcer {
    /// Removes the table (for `keep_on_exit = false`).
    pub(super) fn delete_table(&mut self) -> Result<(), EnforceError> {
        let mut b = self.sock.buffer();
        b.batch_begin(NFNL_SUBSYS_NFTABLES);
        let s = b.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE,
            NLM_F_REQUEST | NLM_F_ACK,
            NFPROTO_INET,
            0,
        );
        b.attr_str(NFTA_TABLE_NAME, &self.table);
        b.end(s);
        b.batch_end(NFNL_SUBSYS_NFTABLES);
        match self
            .sock
            .transact(&b)
            .map_err(|e| EnforceError::Failed(explain_io(&e, &self.table)))?
            .first()
        {
            Some(Reply::Error(e)) if *e != libc::ENOENT => Err(EnforceError::Failed(explain(
                *e,
                &format!("deleting table inet {}", self.table),
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::scope::Proto;

    /// Without port scopes the table is the one sipwarden always laid out,
    /// byte for byte (the benches' unscoped jails keep it).
    #[test]
    fn without_scopes_the_table_is_unchanged() {
        let want = "table inet sipwarden\ndelete table inet sipwarden\ntable inet sipwarden {\n\tcomment \"m\"\n\
\tset banned_v4 { type ipv4_addr; flags timeout; size 1000; }\n\
\tset banned_v6 { type ipv6_addr; flags timeout; size 1000; }\n\
\tset banned_net_v4 { type ipv4_addr; flags interval, timeout; size 1000; }\n\
\tset banned_net_v6 { type ipv6_addr; flags interval, timeout; size 1000; }\n\
\tset feed_apiban_v4 { type ipv4_addr; flags interval; size 1000; }\n\
\tset feed_apiban_v6 { type ipv6_addr; flags interval; size 1000; }\n\
\tchain prerouting {\n\
\t\ttype filter hook prerouting priority raw; policy accept;\n\
\t\tip saddr @banned_v4 drop\n\
\t\tip6 saddr @banned_v6 drop\n\
\t\tip saddr @banned_net_v4 drop\n\
\t\tip6 saddr @banned_net_v6 drop\n\
\t\tip saddr @feed_apiban_v4 drop\n\
\t\tip6 saddr @feed_apiban_v6 drop\n\
\t}\n}\n";
        assert_eq!(
            layout("sipwarden", 1000, &["apiban".into()], Some("m")),
            want
        );
        assert_eq!(
            layout_with("sipwarden", 1000, &["apiban".into()], &[], Some("m")),
            want
        );
    }

    #[test]
    fn each_scope_has_four_sets_and_four_narrowed_drop_rules() {
        let sip = PortScope::new(&[Proto::Udp, Proto::Tcp], &[(5060, 5061), (5080, 5080)]).unwrap();
        let id = format!("{:08x}", sip.id().0);
        let l = layout_with("t", 0, &[], std::slice::from_ref(&sip), None);
        assert!(
            l.contains(&format!(
                "\tset banned_v4_s{id} {{ type ipv4_addr; flags timeout; }}\n"
            )),
            "{l}"
        );
        assert!(l.contains(&format!(
            "\tset banned_net_v6_s{id} {{ type ipv6_addr; flags interval, timeout; }}\n"
        )));
        for (ip, set) in [
            ("ip", "v4"),
            ("ip6", "v6"),
            ("ip", "net_v4"),
            ("ip6", "net_v6"),
        ] {
            let rule = format!(
                "\t\t{ip} saddr @banned_{set}_s{id} meta l4proto {{ tcp, udp }} th dport {{ 5060-5061, 5080 }} drop\n"
            );
            assert!(l.contains(&rule), "{rule} in {l}");
        }
        // The unscoped sets and rules are still there, first.
        assert!(l.contains("\t\tip saddr @banned_v4 drop\n"));
        assert!(l.find("@banned_v4 drop") < l.find(&format!("@banned_v4_s{id}")));
        // A reload's new scope: the same sets and rules, added.
        let add = scope_additions("t", 10, std::slice::from_ref(&sip));
        assert!(
            add.contains(&format!(
                "add set inet t banned_v6_s{id} {{ type ipv6_addr; flags timeout; size 10; }}\n"
            )),
            "{add}"
        );
        assert!(add.contains(&format!(
            "add rule inet t prerouting ip6 saddr @banned_net_v6_s{id} meta l4proto {{ tcp, udp }} th dport {{ 5060-5061, 5080 }} drop\n"
        )));
        assert!(!add.contains("delete"));
    }
}
