//! The fleet's roster: which nodes exist, without scanning the keyspace.
//!
//! Each node keeps two things in Redis on every heartbeat, in one `EVAL`:
//! its node key `<prefix>:node:<name>` (its record, expiring after
//! [`NODE_TTL_MS`]: the key existing is what "alive" means, on Redis's
//! clock, as before, so nodes of the previous version that scan for node
//! keys still see this one), and its name in the sorted set
//! `<prefix>:nodes`, scored with its last heartbeat. The script returns
//! the names, newest first; the node keys of those are then read by name.
//! A `SCAN` of the whole keyspace (about 130 round trips per heartbeat at
//! 100,000 ban keys) is what this replaces.
//!
//! The scores only serve to forget names: a name not refreshed for
//! [`FORGET_MS`] leaves the set (generous, so nodes whose clocks disagree
//! by minutes still see each other; a dead node is out of `peers` as soon
//! as its node key expires).

use redis::aio::MultiplexedConnection;

use super::link::{self, Failure};

/// A node key lives this long without a refresh.
pub const NODE_TTL_MS: u64 = 10_000;
/// A name not refreshed for this long leaves `<prefix>:nodes`.
pub const FORGET_MS: i64 = 10 * 60 * 1000;
/// Most names read from `<prefix>:nodes` per heartbeat (the newest).
pub const NAMES_MAX: usize = 10_000;
/// Longest name read (a node name is at most 64 bytes, a host name too):
/// longer members are dropped inside Redis, never sent.
pub const NAME_MAX: usize = 64;

/// KEYS: node key, roster. ARGV: record, TTL ms, now ms, forget before
/// (ms), most names, longest name. Returns the names (at most ARGV[5] of
/// at most ARGV[6] bytes each) and, last, how many were too long.
const BEAT_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
local out = {}
local long = 0
for _, m in ipairs(redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[5]) - 1)) do
  if #m <= tonumber(ARGV[6]) then out[#out + 1] = m else long = long + 1 end
end
out[#out + 1] = long
return out
";

/// The roster's key.
pub fn roster_key(prefix: &str) -> String {
    format!("{prefix}:nodes")
}

/// A node's key.
pub fn node_key(prefix: &str, node: &str) -> String {
    format!("{prefix}:node:{node}")
}

/// What one heartbeat learnt.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Beat {
    /// Node keys to read, by name (this node's own included).
    pub keys: Vec<String>,
    /// Members that are no name sipwarden writes (too long, not UTF-8).
    pub odd: Vec<String>,
}

/// Refreshes this node's key and name and returns the fleet's node keys,
/// in one round trip. A refused script (no `EVAL` for this ACL user, the
/// roster of the wrong type) still refreshes the node key with a plain
/// `SET`, so the others keep seeing this node; the refusal is in `odd`.
pub async fn beat(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    node: &str,
    record: &str,
    now: i64,
) -> Result<Beat, Failure> {
    let key = node_key(prefix, node);
    let roster = roster_key(prefix);
    let r = link::query(
        conn,
        redis::cmd("EVAL")
            .arg(BEAT_SCRIPT)
            .arg(2)
            .arg(&key)
            .arg(&roster)
            .arg(record)
            .arg(NODE_TTL_MS)
            .arg(now)
            .arg(now - FORGET_MS)
            .arg(NAMES_MAX)
            .arg(NAME_MAX)
            .arg(node)
            .arg(FORGET_MS),
    )
    .await;
    match r {
        Ok(v) => Ok(names(prefix, &v)),
        Err(Failure::Refused(e)) => {
            let mut out = Beat {
                odd: vec![format!("{roster}: {e}")],
                ..Beat::default()
            };
            match link::query(
                conn,
                redis::cmd("SET")
                    .arg(&key)
                    .arg(record)
                    .arg("PX")
                    .arg(NODE_TTL_MS),
            )
            .await
            {
                Ok(_) => {}
                Err(Failure::Refused(e)) => out.odd.push(format!("{key}: {e}")),
                Err(e) => return Err(e),
            }
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

/// The script's reply as node keys; bounded again here (a reply that is
/// not the script's cannot make more than [`NAMES_MAX`] keys).
fn names(prefix: &str, v: &redis::Value) -> Beat {
    let items = link::items(v);
    let (names, long) = match items.split_last() {
        Some((long, names)) => (names, link::int(long).unwrap_or(0)),
        None => (items, 0),
    };
    let mut out = Beat::default();
    if long > 0 {
        out.odd.push(format!(
            "{}: {long} name(s) longer than {NAME_MAX} bytes",
            roster_key(prefix)
        ));
    }
    for n in names.iter().take(NAMES_MAX) {
        match link::text(n) {
            Some(n) if !n.is_empty() && n.len() <= NAME_MAX => out.keys.push(node_key(prefix, n)),
            _ => out.odd.push(format!(
                "{}: a member that is no node name",
                roster_key(prefix)
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn the_reply_becomes_node_keys_under_the_prefix_and_odd_members_are_counted() {
        let v = Value::Array(vec![
            bulk(b"pbx-2"),
            bulk(b"pbx-1"),
            bulk(&[0xff, 0xfe]),
            bulk(&[b'x'; NAME_MAX + 1]),
            bulk(b""),
            Value::Int(3),
        ]);
        let b = names("sw", &v);
        assert_eq!(b.keys, vec!["sw:node:pbx-2", "sw:node:pbx-1"]);
        assert_eq!(b.odd.len(), 4, "{:?}", b.odd);
        assert!(b.odd[0].contains("3 name(s) longer than 64 bytes"));
    }

    #[test]
    fn a_reply_that_is_not_the_scripts_gives_at_most_names_max_keys() {
        assert_eq!(names("sw", &Value::Nil), Beat::default());
        assert_eq!(names("sw", &Value::Int(5)), Beat::default());
        let many = Value::Array((0..NAMES_MAX + 50).map(|_| bulk(b"n")).collect());
        assert_eq!(names("sw", &many).keys.len(), NAMES_MAX);
    }
}
