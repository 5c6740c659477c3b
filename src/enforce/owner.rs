//! One table, one owner.
//!
//! The daemon that lays out table `inet <table>` holds the abstract socket
//! `@sipwarden-nft:<table>` in its network namespace for as long as it runs
//! (tables are per namespace too; see `crate::claim`), and writes its owner
//! into the table's comment: `sipwarden:<canonical state directory>`. A
//! second daemon meeting the socket held refuses to start and names the
//! first (pid, state directory) before it touches the table. A table whose
//! owner is gone is taken over, and the log names the previous owner. At
//! exit, `keep_on_exit = false` deletes the table only while its comment
//! still names this daemon.

use super::EnforceError;
use super::netlink::{NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_REQUEST, NfSocket, attrs, explain};
use crate::claim::{self, Claim, Taken};

const NFT_MSG_GETTABLE: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
/// The comment's type inside a table's user data (libnftnl's TLVs).
const NFTNL_UDATA_TABLE_COMMENT: u8 = 0;

/// This daemon's hold on its table.
#[derive(Debug)]
pub(super) struct TableOwner {
    /// The comment naming this owner (`sipwarden:<state dir>`).
    pub(super) mark: String,
    /// The abstract socket (`None` when another user's process squats it).
    _claim: Option<Claim>,
}

/// What the kernel holds under the table's name.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// No such table.
    None,
    /// A table without a comment (made by hand, or by an older sipwarden).
    Unmarked,
    /// A table with this comment.
    Marked(String),
}

/// The state directory an owner mark names, for messages.
fn owner_of(mark: &str) -> &str {
    mark.strip_prefix("sipwarden:").unwrap_or(mark)
}

/// The state directory a claim's holder says it has.
fn said_dir(says: &str) -> &str {
    says.strip_prefix("sipwarden state_dir=").unwrap_or(says)
}

/// Takes table `inet <table>` for `owner` (the canonical state directory),
/// or refuses when another running sipwarden owns it. Reads what is there
/// now and logs a takeover; does not touch the table.
pub(super) fn take(
    sock: &mut NfSocket,
    table: &str,
    owner: &str,
) -> Result<TableOwner, EnforceError> {
    let mark = claim::name("sipwarden", owner);
    let name = claim::name("sipwarden-nft", table);
    let refuse = |h: &claim::Holder, dir: &str| {
        EnforceError::Failed(format!(
            "table inet {table} belongs to another running sipwarden ({h}, state directory {dir}); give this daemon its own [firewall] table, or stop that one"
        ))
    };
    let held = match claim::take(&name, &format!("sipwarden state_dir={owner}")) {
        Ok(Taken::Mine(c)) => Some(c),
        Ok(Taken::Held(h)) if h.trusted() => return Err(refuse(&h, said_dir(&h.says))),
        Ok(Taken::Held(h)) => {
            tracing::warn!(
                "firewall: the abstract socket @{name} is held by a process of another user ({h}), not a sipwarden of this one; the table's owner mark alone decides"
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                "firewall: cannot bind the abstract socket @{name}: {e}; the table's owner mark alone decides"
            );
            None
        }
    };
    match found(sock, table)? {
        Found::None => {}
        Found::Marked(m) if m == mark => {
            tracing::info!("firewall: table inet {table} is this daemon's from an earlier run");
        }
        Found::Marked(m) => {
            // Without our own claim, the previous owner's state lock says
            // whether it still runs.
            if held.is_none() {
                let state = format!(
                    "sipwarden-state:{}",
                    m.strip_prefix("sipwarden:").unwrap_or(&m)
                );
                if let Some(h) = claim::probe(&state).filter(claim::Holder::trusted) {
                    return Err(refuse(&h, owner_of(&m)));
                }
            }
            tracing::warn!(
                "firewall: taking over table inet {table} left by the sipwarden with state directory {} (no longer running)",
                owner_of(&m)
            );
        }
        Found::Unmarked => tracing::warn!(
            "firewall: table inet {table} has no owner mark (made by hand, or by an older sipwarden); replacing it"
        ),
    }
    Ok(TableOwner { mark, _claim: held })
}

/// The table's comment, as the kernel holds it.
pub(super) fn found(sock: &mut NfSocket, table: &str) -> Result<Found, EnforceError> {
    let mut b = sock.buffer();
    let s = b.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        NFPROTO_INET,
        0,
    );
    b.attr_str(NFTA_TABLE_NAME, table);
    b.end(s);
    let mut comment = None;
    let mut seen = false;
    let r = sock
        .dump(&b, |m| {
            seen = true;
            let Some(body) = m.payload.get(4..) else {
                return;
            };
            if let Some(u) = attrs(body).find(|a| a.ty == NFTA_TABLE_USERDATA) {
                comment = udata_comment(u.data);
            }
        })
        .map_err(|e| EnforceError::Failed(format!("reading table inet {table}: {e}")))?;
    match r {
        Some(libc::ENOENT) => Ok(Found::None),
        Some(e) => Err(EnforceError::Failed(explain(
            e,
            &format!("reading table inet {table}"),
        ))),
        None if !seen => Ok(Found::None),
        None => Ok(comment.map_or(Found::Unmarked, Found::Marked)),
    }
}

/// The comment in a table's user data: type-length-value entries of one
/// byte each for type and length; the comment ends with a NUL.
fn udata_comment(mut b: &[u8]) -> Option<String> {
    while let [ty, len, rest @ ..] = b {
        let v = rest.get(..usize::from(*len))?;
        if *ty == NFTNL_UDATA_TABLE_COMMENT {
            let v = v.strip_suffix(&[0]).unwrap_or(v);
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        b = &rest[usize::from(*len)..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_read_from_table_user_data() {
        let mut u = vec![7, 2, b'x', b'y', NFTNL_UDATA_TABLE_COMMENT, 6];
        u.extend_from_slice(b"sw:/a\0");
        assert_eq!(udata_comment(&u).as_deref(), Some("sw:/a"));
        assert_eq!(udata_comment(&[0, 9, b'a']), None, "truncated");
        assert_eq!(udata_comment(&[]), None);
        assert_eq!(
            owner_of("sipwarden:/var/lib/sipwarden"),
            "/var/lib/sipwarden"
        );
        assert_eq!(said_dir("sipwarden state_dir=/x"), "/x");
    }
}
