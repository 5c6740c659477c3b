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
/// the table's comment.
pub fn layout(table: &str, set_size: u32, feeds: &[String], mark: Option<&str>) -> String {
    let comment = mark
        .map(|m| format!("\tcomment \"{m}\"\n"))
        .unwrap_or_default();
    let size = if set_size > 0 {
        format!(" size {set_size};")
    } else {
        String::new()
    };
    // Blocklist feeds: prefixes, replaced whole on each refresh.
    let mut feed_sets = String::new();
    let mut feed_rules = String::new();
    for f in feeds {
        feed_sets.push_str(&format!(
            "\tset feed_{f}_v4 {{ type ipv4_addr; flags interval;{size} }}\n\tset feed_{f}_v6 {{ type ipv6_addr; flags interval;{size} }}\n"
        ));
        feed_rules.push_str(&format!(
            "\t\tip saddr @feed_{f}_v4 drop\n\t\tip6 saddr @feed_{f}_v6 drop\n"
        ));
    }
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         {comment}\
         \tset banned_v4 {{ type ipv4_addr; flags timeout;{size} }}\n\
         \tset banned_v6 {{ type ipv6_addr; flags timeout;{size} }}\n\
         \tset banned_net_v4 {{ type ipv4_addr; flags interval, timeout;{size} }}\n\
         \tset banned_net_v6 {{ type ipv6_addr; flags interval, timeout;{size} }}\n\
         {feed_sets}\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tip saddr @banned_v4 drop\n\
         \t\tip6 saddr @banned_v6 drop\n\
         \t\tip saddr @banned_net_v4 drop\n\
         \t\tip6 saddr @banned_net_v6 drop\n\
         {feed_rules}\
         \t}}\n\
         }}\n"
    )
}

/// Runs `nft -f -` with the layout: one atomic transaction.
pub(super) fn apply_layout(
    table: &str,
    set_size: u32,
    feeds: &[String],
    mark: Option<&str>,
) -> Result<(), EnforceError> {
    let text = layout(table, set_size, feeds, mark);
    let child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EnforceError::Failed(
                "cannot lay out table inet sipwarden: the `nft` command is missing; install the nftables package (or run with --dry-run)".into(),
            ));
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
        "laying out table inet {table} failed: {}{hint}",
        err.trim()
    )))
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
