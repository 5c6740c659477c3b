//! Blocklist feeds: each feed's two interval sets replaced whole.

use ipnet::IpNet;

use super::NftEnforcer;
use super::batch::{
    MAX_BATCH_OPS, MAX_MSG_PAYLOAD, NFPROTO_INET, NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, explain_io,
};
use super::layout::after_prefix;
use crate::enforce::EnforceError;
use crate::enforce::elements::{NFT_SET_ELEM_INTERVAL_END, addr_bytes, put_elem};
use crate::enforce::netlink::{
    NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, Reply, explain,
};

impl NftEnforcer {
    /// Puts every feed's contents back (after the table was laid out again).
    pub(super) fn reload_feeds(&mut self) -> Result<(), EnforceError> {
        let feeds: Vec<(String, Vec<IpNet>)> = self
            .feed_nets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, nets) in feeds {
            self.replace_feed(&name, &nets)?;
        }
        Ok(())
    }

    /// Replaces the contents of feed `name`'s two sets: flush and refill in
    /// one netlink transaction (several, in order, past `MAX_BATCH_OPS`
    /// elements), so the kernel never holds a half-read feed.
    pub(super) fn replace_feed(
        &mut self,
        name: &str,
        nets: &[IpNet],
    ) -> Result<usize, EnforceError> {
        if !self.feeds.iter().any(|f| f == name) {
            return Err(EnforceError::Failed(format!(
                "feed {name} has no sets in table inet {} (feeds are laid out at start; restart after adding one)",
                self.table
            )));
        }
        let sets = [format!("feed_{name}_v4"), format!("feed_{name}_v6")];
        let chunks: Vec<&[IpNet]> = if nets.is_empty() {
            vec![&[]]
        } else {
            nets.chunks(MAX_BATCH_OPS / 2).collect()
        };
        for (i, chunk) in chunks.iter().enumerate() {
            let mut b = self.sock.buffer();
            b.batch_begin(NFNL_SUBSYS_NFTABLES);
            if i == 0 {
                for set in &sets {
                    // DELSETELEM without elements flushes the set.
                    let m = b.begin(
                        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM,
                        NLM_F_REQUEST | NLM_F_ACK,
                        NFPROTO_INET,
                        0,
                    );
                    b.attr_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
                    b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
                    b.end(m);
                }
            }
            for (set, v4) in [(&sets[0], true), (&sets[1], false)] {
                let mut items = chunk
                    .iter()
                    .filter(|n| matches!(n, IpNet::V4(_)) == v4)
                    .peekable();
                while items.peek().is_some() {
                    let m = b.begin(
                        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
                        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                        NFPROTO_INET,
                        0,
                    );
                    b.attr_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
                    b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
                    let list = b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                    while let Some(n) = items.peek() {
                        if b.len() - list >= MAX_MSG_PAYLOAD {
                            break;
                        }
                        // Interval sets: every entry is a start and, unless
                        // it runs to the end of the space, an end.
                        put_elem(&mut b, &addr_bytes(n.network()), None, 0);
                        if let Some(end) = after_prefix(n) {
                            put_elem(&mut b, &addr_bytes(end), None, NFT_SET_ELEM_INTERVAL_END);
                        }
                        items.next();
                    }
                    b.nest_end(list);
                    b.end(m);
                }
            }
            b.batch_end(NFNL_SUBSYS_NFTABLES);
            let replies = self
                .sock
                .transact(&b)
                .map_err(|e| EnforceError::Failed(explain_io(&e, &self.table)))?;
            if let Some(errno) = replies.iter().find_map(|r| match r {
                Reply::Error(e) => Some(*e),
                Reply::Ack => None,
            }) {
                return Err(EnforceError::Failed(explain(
                    errno,
                    &format!("loading feed {name} into table inet {}", self.table),
                )));
            }
        }
        self.feed_nets.insert(name.to_string(), nets.to_vec());
        Ok(nets.len())
    }
}
