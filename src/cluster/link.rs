//! One connection to the Redis master: found directly or through the
//! sentinels, over TLS when configured, with replies read as data (the
//! `redis` crate parses the protocol; this file decides what an error
//! means for the link).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind, Value};

use super::target::{ClientError, HostPort, LinkConfig, Target};

/// Connecting (TCP, TLS, AUTH) must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A reply must come within this (the reader's XREAD blocks for 1 s).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// A value read back from a key: bans and node records are a few hundred
/// bytes; anything longer is cut, fails to parse and is skipped.
pub const VALUE_MAX: usize = 64 * 1024;

/// A connection to the master, and which server it is.
pub struct Link {
    /// The connection.
    pub conn: MultiplexedConnection,
    /// The master it reached.
    pub server: HostPort,
}

/// What a failed command means.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The connection is broken, or the server is no longer the master:
    /// reconnect (after a backoff).
    #[error("{0}")]
    Link(String),
    /// The server refused this command (a key of the wrong type, ...): the
    /// connection is fine.
    #[error("{0}")]
    Refused(String),
}

/// Why no connection to a server (the master or a sentinel) was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No client for it: its address, or the TLS files, were refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// TCP, TLS or the login failed; the message says what to fix when an
    /// operator can (CA, certificate name, client certificate, password).
    #[error("{server}: {}", explain(.source))]
    Failed {
        /// The server.
        server: HostPort,
        /// What the `redis` crate said.
        source: RedisError,
    },
    /// Nothing within the connect timeout (twice `CONNECT_TIMEOUT`).
    #[error("{server}: no connection within {secs} s")]
    Timeout {
        /// The server.
        server: HostPort,
        /// The time allowed.
        secs: u64,
    },
}

/// Why one sentinel did not lead to the master.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    /// The sentinel, or the master it named, could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The sentinel did not answer the question.
    #[error("{0}")]
    Query(Failure),
    /// The sentinel monitors no master of that name.
    #[error(
        "does not know a master named {master:?} (check master_name against its `sentinel monitor` line)"
    )]
    UnknownMaster {
        /// `master_name`.
        master: String,
    },
    /// The server it named did not answer `ROLE`.
    #[error("{server}: {failure}")]
    Role {
        /// The server named as master.
        server: HostPort,
        /// Why it did not answer.
        failure: Failure,
    },
    /// The server it named is not (or not yet) the master.
    #[error("names {server} as master, which says it is {role} (failover in progress?)")]
    NotMaster {
        /// The server named as master.
        server: HostPort,
        /// The role it reported ("something else" when it gave none).
        role: String,
    },
}

/// Why no connection to the master was opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The one configured server could not be reached.
    #[error(transparent)]
    Direct(#[from] ConnectError),
    /// No sentinel led to the master; each one's reason, in the order tried.
    #[error("no master {master:?} found: {}", tried_text(.tried))]
    NoMaster {
        /// `master_name`.
        master: String,
        /// Each sentinel tried and why it failed.
        tried: Vec<(HostPort, SentinelError)>,
    },
}

/// `sentinel HOST:PORT: reason; ...`, for [`OpenError::NoMaster`].
fn tried_text(tried: &[(HostPort, SentinelError)]) -> String {
    tried
        .iter()
        .map(|(s, e)| format!("sentinel {s}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Sorts a `redis` error: a server's error reply is about the command,
/// except those that say the server is not (or no longer) a usable master.
pub fn classify(e: &RedisError) -> Failure {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading,
        ) => Failure::Link(format!("{e} (not a usable master)")),
        ErrorKind::Server(_) | ErrorKind::Extension => Failure::Refused(e.to_string()),
        _ => Failure::Link(explain(e)),
    }
}

/// The error, with what to do for the ones an operator can fix.
fn explain(e: &RedisError) -> String {
    let s = e.to_string();
    let hint = if s.contains("UnknownIssuer") || s.contains("unknown issuer") {
        " (the server's certificate is not signed by a CA this node trusts: set tls_ca to the CA that signed it)"
    } else if s.contains("NotValidForName") || s.contains("not valid for name") {
        " (the server's certificate does not name the host this node connects to: use a name or address it lists)"
    } else if s.contains("CertificateRequired") || s.contains("certificate required") {
        " (the server asks for a client certificate: set tls_cert and tls_key)"
    } else if s.contains("WRONGPASS") || s.contains("NOAUTH") {
        " (check the user and password in redis = \"redis://user:password@host\", percent-encoded)"
    } else {
        ""
    };
    format!("{s}{hint}")
}

/// Connects to `server` (the master when `auth`), bounded in time.
async fn connect(
    cfg: &LinkConfig,
    server: &HostPort,
    auth: bool,
) -> Result<MultiplexedConnection, ConnectError> {
    let client = cfg.client(server, auth)?;
    let conf = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(REPLY_TIMEOUT));
    match tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        client.get_multiplexed_async_connection_with_config(&conf),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(source)) => Err(ConnectError::Failed {
            server: server.clone(),
            source,
        }),
        Err(_) => Err(ConnectError::Timeout {
            server: server.clone(),
            secs: (CONNECT_TIMEOUT * 2).as_secs(),
        }),
    }
}

/// One command, its reply or what the failure means.
pub async fn query(conn: &mut MultiplexedConnection, cmd: &redis::Cmd) -> Result<Value, Failure> {
    cmd.query_async::<Value>(conn)
        .await
        .map_err(|e| classify(&e))
}

/// Opens a connection to the master: the configured server, or the one
/// the sentinels name (tried in turn from `*next`, which moves on past a
/// sentinel that failed).
pub async fn open(cfg: &LinkConfig, next: &mut usize) -> Result<Link, OpenError> {
    match &cfg.target {
        Target::Direct(server) => Ok(Link {
            conn: connect(cfg, server, true).await?,
            server: server.clone(),
        }),
        Target::Sentinel { sentinels, master } => {
            let mut tried = Vec::new();
            for i in 0..sentinels.len() {
                let at = (*next + i) % sentinels.len();
                let s = &sentinels[at];
                match via_sentinel(cfg, s, master).await {
                    Ok(link) => {
                        *next = at;
                        return Ok(link);
                    }
                    Err(e) => tried.push((s.clone(), e)),
                }
            }
            *next = (*next + 1) % sentinels.len().max(1);
            Err(OpenError::NoMaster {
                master: master.clone(),
                tried,
            })
        }
    }
}

/// How often a session on a master found through the sentinels asks them
/// again whether it is still the master (a master cut off from the
/// sentinels, but not from this node, is replaced without this node's
/// connection breaking).
pub const MASTER_CHECK: Duration = Duration::from_secs(10);

/// With Sentinel: the master the sentinels name now, when it is not
/// `server`. `None` when it still is, or when no sentinel answers
/// (nothing better is known: the session goes on).
pub async fn master_moved(cfg: &LinkConfig, server: &HostPort) -> Option<HostPort> {
    let Target::Sentinel { sentinels, master } = &cfg.target else {
        return None;
    };
    for s in sentinels {
        if let Ok(now) = ask_sentinel(cfg, s, master).await {
            return (&now != server).then_some(now);
        }
    }
    None
}

/// The master one sentinel names.
async fn ask_sentinel(
    cfg: &LinkConfig,
    sentinel: &HostPort,
    master: &str,
) -> Result<HostPort, SentinelError> {
    let mut s = connect(cfg, sentinel, false).await?;
    let reply = query(
        &mut s,
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master),
    )
    .await
    .map_err(SentinelError::Query)?;
    let addr = items(&reply);
    let (Some(host), Some(port)) = (
        addr.first().and_then(text),
        addr.get(1)
            .and_then(text)
            .and_then(|p| p.parse::<u16>().ok()),
    ) else {
        return Err(SentinelError::UnknownMaster {
            master: master.to_string(),
        });
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// Asks one sentinel for the master, connects to it, and checks it says
/// it is the master (a sentinel can be behind during a failover).
async fn via_sentinel(
    cfg: &LinkConfig,
    sentinel: &HostPort,
    master: &str,
) -> Result<Link, SentinelError> {
    let server = ask_sentinel(cfg, sentinel, master).await?;
    let mut conn = connect(cfg, &server, true).await?;
    let role = match query(&mut conn, &redis::cmd("ROLE")).await {
        Ok(role) => role,
        Err(failure) => return Err(SentinelError::Role { server, failure }),
    };
    match items(&role).first().and_then(text) {
        Some("master") => Ok(Link { conn, server }),
        other => Err(SentinelError::NotMaster {
            role: other.unwrap_or("something else").to_string(),
            server,
        }),
    }
}

/// The text of a string reply (`None` for anything else, or bytes that
/// are not UTF-8).
pub fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Okay => Some("OK"),
        _ => None,
    }
}

/// The elements of an array reply (empty for anything else).
pub fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) => a,
        _ => &[],
    }
}

/// An integer reply.
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// Every key matching `pattern` (SCAN, so Redis is never blocked), up to
/// `max` keys. Keys whose names are not UTF-8 cannot be ours: skipped and
/// counted in `odd`.
pub async fn scan(
    conn: &mut MultiplexedConnection,
    pattern: &str,
    max: usize,
    odd: &mut u64,
) -> Result<Vec<String>, Failure> {
    let mut cursor = "0".to_string();
    let mut out = Vec::new();
    loop {
        let r = query(
            conn,
            redis::cmd("SCAN")
                .arg(&cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000),
        )
        .await?;
        let parts = items(&r);
        cursor = parts.first().and_then(text).unwrap_or("0").to_string();
        for k in parts.get(1).map(items).unwrap_or_default() {
            match text(k) {
                Some(k) => out.push(k.to_string()),
                None => *odd += 1,
            }
        }
        if cursor == "0" || out.len() >= max {
            out.truncate(max);
            return Ok(out);
        }
    }
}

/// What one key held.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Its text (at most [`VALUE_MAX`] bytes of it).
    Text(String),
    /// Gone since it was listed.
    Gone,
    /// Not a string, or not UTF-8: never ours.
    Odd(String),
}

/// The values of `keys` (at most [`VALUE_MAX`] bytes each), in pipelines
/// of 500; a key of the wrong type is `Read::Odd`, not an error.
pub async fn read_keys(
    conn: &mut MultiplexedConnection,
    keys: &[String],
) -> Result<Vec<Read>, Failure> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let mut p = redis::pipe();
        p.ignore_errors();
        for k in chunk {
            p.cmd("GETRANGE").arg(k).arg(0).arg(VALUE_MAX - 1);
        }
        let replies: Vec<Value> = p.query_async(conn).await.map_err(|e| classify(&e))?;
        for (k, v) in chunk.iter().zip(replies) {
            out.push(match &v {
                Value::Nil => Read::Gone,
                Value::BulkString(b) if b.is_empty() => Read::Gone,
                Value::ServerError(e) => Read::Odd(format!("{k}: {}", e.code())),
                v => match text(v) {
                    Some(t) => Read::Text(t.to_string()),
                    None => Read::Odd(format!("{k}: not UTF-8 text")),
                },
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_sorted_by_what_they_mean_for_the_link() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(classify(&io), Failure::Link(_)));
        let parse = RedisError::from((ErrorKind::Parse, "invalid response"));
        assert!(matches!(classify(&parse), Failure::Link(_)));
        let ro = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(matches!(classify(&ro), Failure::Link(_)));
        let wrong = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "wrong kind",
        ));
        assert!(matches!(classify(&wrong), Failure::Refused(_)));
        let auth = RedisError::from((
            ErrorKind::AuthenticationFailed,
            "WRONGPASS invalid username-password pair",
        ));
        assert!(classify(&auth).to_string().contains("percent-encoded"));
    }

    /// The reasons' wording is what logs, status and the fleet tests read:
    /// pinned, so a typed error keeps the words the strings had.
    #[test]
    fn why_no_master_was_found_reads_as_before() {
        let hp = |host: &str, port| HostPort {
            host: host.into(),
            port,
        };
        let e = OpenError::NoMaster {
            master: "mymaster".into(),
            tried: vec![
                (
                    hp("10.0.0.5", 26379),
                    SentinelError::Connect(ConnectError::Timeout {
                        server: hp("10.0.0.5", 26379),
                        secs: 10,
                    }),
                ),
                (
                    hp("fd00::6", 26379),
                    SentinelError::UnknownMaster {
                        master: "mymaster".into(),
                    },
                ),
                (
                    hp("s3", 26379),
                    SentinelError::NotMaster {
                        server: hp("10.0.0.7", 6379),
                        role: "slave".into(),
                    },
                ),
                (
                    hp("s4", 26379),
                    SentinelError::Role {
                        server: hp("10.0.0.8", 6379),
                        failure: Failure::Link("broken pipe".into()),
                    },
                ),
            ],
        };
        assert_eq!(
            e.to_string(),
            "no master \"mymaster\" found: \
             sentinel 10.0.0.5:26379: 10.0.0.5:26379: no connection within 10 s; \
             sentinel [fd00::6]:26379: does not know a master named \"mymaster\" \
             (check master_name against its `sentinel monitor` line); \
             sentinel s3:26379: names 10.0.0.7:6379 as master, which says it is slave \
             (failover in progress?); \
             sentinel s4:26379: 10.0.0.8:6379: broken pipe"
        );
        let wrongpass = RedisError::from((
            ErrorKind::AuthenticationFailed,
            "WRONGPASS invalid username-password pair",
        ));
        let said = explain(&wrongpass);
        let e = OpenError::Direct(ConnectError::Failed {
            server: hp("redis.example", 6379),
            source: wrongpass,
        });
        assert_eq!(e.to_string(), format!("redis.example:6379: {said}"));
        assert!(said.ends_with("percent-encoded)"), "{said}");
        let e = super::super::supervise::SessionError::Lost {
            server: hp("fd00::7", 6379),
            failure: Failure::Refused("WRONGTYPE".into()),
        };
        assert_eq!(e.to_string(), "redis [fd00::7]:6379: WRONGTYPE");
    }

    #[test]
    fn replies_are_read_as_data() {
        let v = Value::Array(vec![
            Value::BulkString(b"10.0.0.5".to_vec()),
            Value::BulkString(b"6379".to_vec()),
            Value::BulkString(vec![0xc3, 0x28]),
        ]);
        assert_eq!(items(&v).first().and_then(text), Some("10.0.0.5"));
        assert_eq!(items(&v).get(1).and_then(int), Some(6379));
        assert_eq!(items(&v).get(2).and_then(text), None);
        assert!(items(&Value::Nil).is_empty());
        assert_eq!(int(&Value::Int(-3)), Some(-3));
    }
}
