//! A small Redis client: RESP2 over TCP, the handful of commands the cluster
//! needs. Written by hand (the protocol is a page long) so the daemon does
//! not carry a client library's connection pools and feature matrix.
//!
//! Replies are bounded (size, element count, nesting): a misbehaving server
//! gets an error, not the daemon's memory.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest bulk string accepted.
const MAX_BULK: usize = 16 * 1024 * 1024;
/// Most elements in one array reply.
const MAX_ELEMENTS: usize = 1_000_000;
/// Deepest nesting (stream replies are four deep).
const MAX_DEPTH: usize = 8;
/// Connect, AUTH and SELECT must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `$-1` / `*-1`.
    Nil,
    /// `+OK`.
    Simple(String),
    /// `:n`.
    Int(i64),
    /// `$n` bytes.
    Bulk(Vec<u8>),
    /// `*n` values.
    Array(Vec<Value>),
}

impl Value {
    /// The text of a bulk or simple string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Bulk(b) => std::str::from_utf8(b).ok(),
            Value::Simple(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array (empty for anything else).
    pub fn items(&self) -> &[Value] {
        match self {
            Value::Array(v) => v,
            _ => &[],
        }
    }

    /// An integer reply, or an integer in a string.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            other => other.text()?.parse().ok(),
        }
    }
}

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// The connection.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An `-ERR ...` reply.
    #[error("redis said: {0}")]
    Server(String),
    /// Bytes that are not RESP, or over the limits.
    #[error("bad reply from redis: {0}")]
    Protocol(String),
    /// Connect or handshake too slow.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Where and how to connect: parsed from `redis://[user:password@]host[:port][/db]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or address.
    pub host: String,
    /// Port (6379 by default).
    pub port: u16,
    /// ACL user, when given.
    pub user: Option<String>,
    /// Password, when given.
    pub password: Option<String>,
    /// Database number.
    pub db: u32,
}

impl RedisUrl {
    /// Parses a `redis://` URL; `rediss://` (TLS) is refused with what to do.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        if url.starts_with("rediss://") {
            return Err("TLS (rediss://) is not built in: reach Redis over a private network, or through stunnel/spiped on loopback, and use redis://".into());
        }
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url:?} is not a redis:// URL"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, d)) if !d.is_empty() => (
                h,
                d.parse()
                    .map_err(|_| format!("database {d:?} in {url:?} is not a number"))?,
            ),
            Some((h, _)) => (h, 0),
            None => (rest, 0),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6
                .split_once(']')
                .ok_or_else(|| format!("unclosed [ in {url:?}"))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| format!("port {p:?} in {url:?} is not a number"))?,
            None => 6379,
        };
        if host.is_empty() {
            return Err(format!("no host in {url:?}"));
        }
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
                None => (None, Some(a.to_string())),
            },
        };
        Ok(RedisUrl {
            host,
            port,
            user,
            password,
            db,
        })
    }

    /// `host:port`, for logs (never the password).
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One connection.
pub struct Conn {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    out: Vec<u8>,
}

impl Conn {
    /// Connects, authenticates and selects the database.
    pub async fn open(url: &RedisUrl) -> Result<Conn, RespError> {
        let fut = async {
            let s = TcpStream::connect((url.host.as_str(), url.port)).await?;
            let _ = s.set_nodelay(true);
            let (r, w) = s.into_split();
            let mut c = Conn {
                rd: BufReader::with_capacity(64 * 1024, r),
                wr: w,
                out: Vec::new(),
            };
            if let Some(p) = &url.password {
                match &url.user {
                    Some(u) => c.cmd(&["AUTH", u, p]).await?,
                    None => c.cmd(&["AUTH", p]).await?,
                };
            }
            if url.db != 0 {
                c.cmd(&["SELECT", &url.db.to_string()]).await?;
            }
            Ok::<Conn, RespError>(c)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| RespError::Timeout(CONNECT_TIMEOUT))?
    }

    /// Queues one command (sent by `flush`).
    pub fn queue<S: AsRef<[u8]>>(&mut self, args: &[S]) {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            let a = a.as_ref();
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends the queued commands and reads `n` replies (a pipeline). A
    /// server error in any reply is returned as that reply, not as `Err`.
    pub async fn flush(&mut self, n: usize) -> Result<Vec<Result<Value, String>>, RespError> {
        let out = std::mem::take(&mut self.out);
        self.wr.write_all(&out).await?;
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            replies.push(read_value(&mut self.rd, 0).await?);
        }
        Ok(replies)
    }

    /// One command, one reply; a server error is `Err`.
    pub async fn cmd<S: AsRef<[u8]>>(&mut self, args: &[S]) -> Result<Value, RespError> {
        self.queue(args);
        match self.flush(1).await?.pop() {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(RespError::Server(e)),
            None => Err(RespError::Protocol("no reply".into())),
        }
    }
}

async fn read_line<R: AsyncBufReadExt + Unpin>(rd: &mut R) -> Result<String, RespError> {
    let mut line = Vec::new();
    // Header lines are short; a server sending an endless one is cut off.
    let n = (&mut *rd)
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(RespError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(RespError::Protocol("line without CRLF".into()));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| RespError::Protocol("header is not UTF-8".into()))
}

/// One reply, or the server's error message.
type Reply = Result<Result<Value, String>, RespError>;
/// A boxed reply future (the reader recurses into arrays).
type ReplyFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send + 'a>>;

/// Reads one reply; `Ok(Err(msg))` is a server error reply.
fn read_value<R: AsyncBufReadExt + Unpin + Send>(rd: &mut R, depth: usize) -> ReplyFuture<'_> {
    Box::pin(async move {
        if depth > MAX_DEPTH {
            return Err(RespError::Protocol("reply nested too deep".into()));
        }
        let line = read_line(rd).await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let num = || {
            rest.parse::<i64>()
                .map_err(|_| RespError::Protocol(format!("bad number {rest:?}")))
        };
        Ok(Ok(match kind {
            "+" => Value::Simple(rest.to_string()),
            "-" => return Ok(Err(rest.to_string())),
            ":" => Value::Int(num()?),
            "$" => {
                let n = num()?;
                if n < 0 {
                    Value::Nil
                } else if n as usize > MAX_BULK {
                    return Err(RespError::Protocol(format!("bulk of {n} bytes")));
                } else {
                    let mut b = vec![0u8; n as usize + 2];
                    rd.read_exact(&mut b).await?;
                    b.truncate(n as usize);
                    Value::Bulk(b)
                }
            }
            "*" => {
                let n = num()?;
                if n < 0 {
                    Value::Nil
                } else if n as usize > MAX_ELEMENTS {
                    return Err(RespError::Protocol(format!("array of {n} elements")));
                } else {
                    let mut v = Vec::with_capacity((n as usize).min(1024));
                    for _ in 0..n {
                        // An error inside an array (EXEC) stays data.
                        v.push(match read_value(rd, depth + 1).await? {
                            Ok(x) => x,
                            Err(e) => Value::Simple(format!("-{e}")),
                        });
                    }
                    Value::Array(v)
                }
            }
            other => return Err(RespError::Protocol(format!("unknown reply type {other:?}"))),
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = RedisUrl::parse("redis://10.0.0.5:6380/2").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("10.0.0.5", 6380, 2));
        let u = RedisUrl::parse("redis://:secret@redis.example").unwrap();
        assert_eq!(
            (u.password.as_deref(), u.user, u.port),
            (Some("secret"), None, 6379)
        );
        let u = RedisUrl::parse("redis://sw:p%40ss@[fd00::5]:7000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_deref()),
            ("fd00::5", 7000, Some("sw"))
        );
        assert_eq!(u.endpoint(), "[fd00::5]:7000");
        assert!(
            RedisUrl::parse("rediss://h")
                .unwrap_err()
                .contains("stunnel")
        );
        assert!(RedisUrl::parse("http://h").is_err());
        assert!(RedisUrl::parse("redis://h:x").is_err());
    }

    #[tokio::test]
    async fn replies_and_limits() {
        let parse = |b: &'static [u8]| async move {
            let mut r = BufReader::new(b);
            read_value(&mut r, 0).await
        };
        assert_eq!(
            parse(b"+OK\r\n").await.unwrap(),
            Ok(Value::Simple("OK".into()))
        );
        assert_eq!(parse(b":42\r\n").await.unwrap(), Ok(Value::Int(42)));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Ok(Value::Nil));
        assert_eq!(parse(b"-ERR no\r\n").await.unwrap(), Err("ERR no".into()));
        assert_eq!(
            parse(b"*2\r\n$3\r\nabc\r\n*1\r\n:1\r\n").await.unwrap(),
            Ok(Value::Array(vec![
                Value::Bulk(b"abc".to_vec()),
                Value::Array(vec![Value::Int(1)])
            ]))
        );
        assert!(parse(b"$99999999999\r\n").await.is_err());
        assert!(
            parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n")
                .await
                .is_err()
        );
        assert!(parse(b"?x\r\n").await.is_err());
        assert!(parse(b"+OK").await.is_err());
    }
}
