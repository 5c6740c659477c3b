//! The HTTP listener (`[http] listen`, off by default): a JSON API in the
//! control socket's shapes, Prometheus metrics, and the dashboard.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /` | the dashboard (one page, assets embedded, no CDN) |
//! | `GET /api/status` | `sipwarden status --json` |
//! | `GET /api/jails/{jail}?limit=N&cursor=C` | `sipwarden status JAIL --json`: counters and one page of active bans with remaining time (1,000 unless `limit`, at most 10,000; `next_cursor` when more follow) |
//! | `GET /api/recent` | recent failures, failures per minute, top addresses and user names |
//! | `GET /api/history/{addr}` | every ban of an address from the store, newest first |
//! | `POST /api/ban` | `{"jail","addr","for","force"}`, bearer token |
//! | `POST /api/unban` | `{"addr","jail","all"}`, bearer token |
//! | `GET /metrics` | Prometheus text format |
//!
//! Every request is answered by the same task that answers the control
//! socket, so the two can never disagree. Write operations need
//! `Authorization: Bearer <[http] token>`; without a configured token they
//! are refused. Every request must name this listener in `Host` ([`host`]),
//! and connections are capped and timed out ([`conn`]).

pub mod config;
pub mod conn;
pub mod host;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request as HttpRequest, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};

pub use config::{HttpConfig, HttpConfigError};

use crate::control::page::Page;
use crate::control::server::ControlMsg;
use crate::control::{JailView, Request, Response};

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");
/// Largest request body accepted (a ban or unban is under 200 bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// A request body must arrive within this once its head has.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Bans of one address a history answer lists at most (newest first).
pub const HISTORY_ROWS: usize = 1_000;

/// History lookups run at once; more wait their turn (within the
/// connection's idle timeout). Each opens the store read-only, so a burst of
/// them must not take the descriptors and threads the daemon needs.
pub const MAX_HISTORY_LOOKUPS: usize = 4;

/// Bans asked of the core per piece of a streamed page: the answer leaves
/// in pieces of about 50 KB as the client reads, so a client that does not
/// read holds one piece, not a copy of the page, and the core is never busy
/// with one request for long.
pub const STREAM_CHUNK: usize = 250;

/// What the handlers share.
#[derive(Clone)]
struct Ctx {
    core: mpsc::Sender<ControlMsg>,
    token: Option<Arc<str>>,
    state_dir: PathBuf,
    metrics: Arc<metrics::Metrics>,
    /// Slots for history lookups (each opens the store: three descriptors
    /// and a blocking thread).
    history: Arc<tokio::sync::Semaphore>,
}

/// The HTTP listener could not be bound. The I/O error is part of the
/// message, not its cause: said once.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for [http] ({error}); choose another `listen` address or port")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    pub error: std::io::Error,
}

/// Binds `addr`; the error says what to change.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| BindError { addr, error })
}

/// Serves until the task is aborted. `allowed_hosts` are the `Host` names
/// accepted besides the listener's own address.
pub async fn serve(
    listener: tokio::net::TcpListener,
    core: mpsc::Sender<ControlMsg>,
    token: Option<String>,
    allowed_hosts: Vec<String>,
    state_dir: PathBuf,
    metrics: Arc<metrics::Metrics>,
) {
    let hosts = match listener.local_addr() {
        Ok(a) => Arc::new(host::HostCheck::new(a, &allowed_hosts)),
        Err(e) => {
            tracing::error!("http listener stopped: its address is unknown ({e})");
            return;
        }
    };
    let ctx = Ctx {
        core,
        token: token.map(Arc::from),
        state_dir,
        metrics,
        history: Arc::new(tokio::sync::Semaphore::new(MAX_HISTORY_LOOKUPS)),
    };
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/api/status", get(status))
        .route("/api/jails/{jail}", get(jail))
        .route("/api/recent", get(recent))
        .route("/api/history/{addr}", get(history))
        .route("/api/ban", post(ban))
        .route("/api/unban", post(unban))
        .route("/metrics", get(prometheus))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(hosts, check_host))
        // Outermost: refusals by the layers above carry them too.
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ctx);
    conn::serve(listener, app).await;
}

/// Headers on every answer: no page may frame the dashboard (its unban
/// button would be open to clickjacking: `X-Frame-Options` for browsers
/// that do not read the CSP's `frame-ancestors`), no answer is sniffed into
/// another type, and no address of the dashboard leaks in a `Referer`.
async fn security_headers(mut resp: HttpResponse) -> HttpResponse {
    let h = resp.headers_mut();
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// Refuses a request that does not name this listener (421, as for a
/// request sent to the wrong server); the message says how to allow a name.
async fn check_host(
    State(hosts): State<Arc<host::HostCheck>>,
    req: HttpRequest,
    next: Next,
) -> HttpResponse {
    let named = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        });
    match named {
        None => refuse(StatusCode::BAD_REQUEST, "a Host header is required"),
        Some(h) if hosts.allows(&h) => next.run(req).await,
        Some(h) => refuse(
            StatusCode::MISDIRECTED_REQUEST,
            &format!(
                "Host {:?} does not name this listener; add it to [http] allowed_hosts if it should (e.g. allowed_hosts = [\"pbx1:9080\"])",
                crate::event::escape_text(&h, 100)
            ),
        ),
    }
}

async fn ask(ctx: &Ctx, req: Request) -> Response {
    let (tx, rx) = oneshot::channel();
    if ctx.core.send((req, tx)).await.is_err() {
        return Response::error("the daemon is stopping");
    }
    rx.await
        .unwrap_or_else(|_| Response::error("the daemon is stopping"))
}

/// The control response as JSON, with a status code that says how it went.
fn json(resp: &Response) -> HttpResponse {
    let code = if resp.ok {
        StatusCode::OK
    } else if resp
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with("no running jail") || e.contains("is not banned"))
    {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    let body = serde_json::to_vec(resp)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"encoding failed"}"#.to_vec());
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn refuse(code: StatusCode, msg: &str) -> HttpResponse {
    json_with(code, &Response::error(msg))
}

fn json_with(code: StatusCode, resp: &Response) -> HttpResponse {
    let mut r = json(resp);
    *r.status_mut() = code;
    r
}

async fn dashboard() -> HttpResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything the page needs is in it; nothing else may load.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// `status` of every jail (no ban lists: bounded by the configuration).
fn overview() -> Request {
    Request::Status {
        jail: None,
        limit: None,
        cursor: None,
    }
}

async fn status(State(ctx): State<Ctx>) -> HttpResponse {
    json(&ask(&ctx, overview()).await)
}

/// Why a jail page's query string was refused.
#[derive(Debug, thiserror::Error)]
enum PageQueryError {
    /// `limit` is not a number (the text shown escaped, cut at 40).
    #[error("limit must be a number, not {0:?}")]
    NotANumber(String),
    /// A parameter other than `limit` and `cursor` (escaped, cut at 40).
    #[error("unknown query parameter {0:?}: this path takes `limit` and `cursor`")]
    Unknown(String),
    /// The limit or the cursor is out of range.
    #[error(transparent)]
    Page(#[from] crate::control::page::PageError),
}

/// `limit` and `cursor` from a query string; anything else is refused (a
/// misspelt parameter would otherwise silently page by 1,000).
fn page_query(query: Option<&str>) -> Result<Page, PageQueryError> {
    let (mut limit, mut cursor) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => {
                limit =
                    Some(v.parse::<usize>().map_err(|_| {
                        PageQueryError::NotANumber(crate::event::escape_text(v, 40))
                    })?)
            }
            "cursor" => cursor = Some(v),
            _ => {
                return Err(PageQueryError::Unknown(crate::event::escape_text(k, 40)));
            }
        }
    }
    Ok(Page::new(limit, cursor)?)
}

/// One jail with one page of its bans, streamed: the core is asked for
/// [`STREAM_CHUNK`] bans at a time as the client reads.
async fn jail(State(ctx): State<Ctx>, Path(jail): Path<String>, uri: Uri) -> HttpResponse {
    let page = match page_query(uri.query()) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let first = ask(
        &ctx,
        Request::Status {
            jail: Some(jail.clone()),
            limit: Some(page.limit.min(STREAM_CHUNK)),
            cursor: page.after.map(|c| c.to_string()),
        },
    )
    .await;
    if !first.ok {
        return json(&first);
    }
    let Some(mut view) = first.parse::<JailView>() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "status unavailable");
    };
    let bans = view.banned.take().unwrap_or_default();
    let next = view.next_cursor.take();
    // The view without its list ends in `}`: reopen it for the list.
    let mut head = serde_json::to_string(&view).unwrap_or_else(|_| "{".into());
    head.pop();
    let head = format!("{{\"ok\":true,\"result\":{head},\"banned\":[");
    let stream = PageStream {
        ctx,
        jail,
        left: page.limit.saturating_sub(bans.len()),
        next,
        pending: Some(bans),
        out: head,
        first: true,
        done: false,
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(futures_util::stream::unfold(stream, PageStream::step)),
    )
        .into_response()
}

/// The state of a page being streamed.
struct PageStream {
    ctx: Ctx,
    jail: String,
    /// Bans still to send in this page.
    left: usize,
    /// Where the rest starts, when more bans follow.
    next: Option<String>,
    /// Bans fetched, not yet written.
    pending: Option<Vec<crate::control::BanView>>,
    /// Text not yet handed out.
    out: String,
    first: bool,
    done: bool,
}

impl PageStream {
    /// The next piece of the body, fetching from the core when needed.
    async fn step(mut self) -> Option<(Result<Bytes, std::io::Error>, PageStream)> {
        if self.done {
            return None;
        }
        loop {
            if let Some(bans) = self.pending.take() {
                for b in &bans {
                    if !std::mem::replace(&mut self.first, false) {
                        self.out.push(',');
                    }
                    if let Ok(text) = serde_json::to_string(b) {
                        self.out.push_str(&text);
                    }
                }
                let piece = std::mem::take(&mut self.out);
                return Some((Ok(Bytes::from(piece)), self));
            }
            match self.next.clone() {
                Some(cursor) if self.left > 0 => {
                    let resp = ask(
                        &self.ctx,
                        Request::Status {
                            jail: Some(self.jail.clone()),
                            limit: Some(self.left.min(STREAM_CHUNK)),
                            cursor: Some(cursor),
                        },
                    )
                    .await;
                    let Some(v) = resp.parse::<JailView>().filter(|_| resp.ok) else {
                        // The jail went (a reload) mid-page: end the body
                        // abruptly, so no client takes it for a whole page.
                        self.done = true;
                        let why = resp.error.unwrap_or_else(|| "status unavailable".into());
                        return Some((Err(std::io::Error::other(why)), self));
                    };
                    let bans = v.banned.unwrap_or_default();
                    self.left = self.left.saturating_sub(bans.len());
                    self.next = v.next_cursor.filter(|_| !bans.is_empty());
                    self.pending = Some(bans);
                }
                _ => {
                    self.out.push(']');
                    if let Some(c) = self
                        .next
                        .as_ref()
                        .and_then(|c| serde_json::to_string(c).ok())
                    {
                        self.out.push_str(",\"next_cursor\":");
                        self.out.push_str(&c);
                    }
                    self.out.push_str("}}");
                    self.done = true;
                    let piece = std::mem::take(&mut self.out);
                    return Some((Ok(Bytes::from(piece)), self));
                }
            }
        }
    }
}

async fn recent(State(ctx): State<Ctx>) -> HttpResponse {
    json(&ask(&ctx, Request::Recent {}).await)
}

async fn history(State(ctx): State<Ctx>, Path(addr): Path<String>) -> HttpResponse {
    let Ok(net) = crate::net::parse_prefix(&addr) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "not an address or CIDR prefix (write a prefix's slash as %2F)",
        );
    };
    let dir = ctx.state_dir.clone();
    let Ok(slot) = ctx.history.clone().acquire_owned().await else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    };
    // The store is a file: read it with a read-only connection of our own,
    // off the async threads (WAL lets it read beside the writer).
    let rows = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let store = crate::store::Store::open_read_only(&dir)?;
        store.history(&net, HISTORY_ROWS)
    })
    .await;
    match rows {
        Ok(Ok(rows)) => {
            let list: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|(b, lifted)| {
                    serde_json::json!({
                        "jail": b.jail,
                        "addr": crate::net::DisplayNet(&b.addr).to_string(),
                        "start": b.start.to_string(),
                        "end": b.end.map(|e| e.to_string()),
                        "failures": b.failures,
                        "reason": format!("{:?}", b.reason).to_lowercase(),
                        "lifted": lifted.as_ref().map(|(t, _)| t.to_string()),
                        "lifted_reason": lifted.map(|(_, r)| r),
                    })
                })
                .collect();
            json(&Response::ok(
                serde_json::json!({ "addr": addr, "bans": list }),
            ))
        }
        Ok(Err(e)) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "history lookup failed"),
    }
}

/// Whether the request carries the configured bearer token (compared in
/// constant time).
fn authorised(ctx: &Ctx, headers: &HeaderMap) -> Result<(), Box<HttpResponse>> {
    let Some(token) = &ctx.token else {
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            "write operations are off: set [http] token to enable them",
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <[http] token>)",
        )))
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 7235 section 2.1), the token is not.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Parses a body into a control request of the given `cmd`.
fn request(cmd: &str, body: &Bytes) -> Result<Request, Box<HttpResponse>> {
    let bad = |m: String| Box::new(refuse(StatusCode::BAD_REQUEST, &m));
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(bad("the body must be a JSON object".into()));
    };
    obj.insert("cmd".into(), cmd.into());
    serde_json::from_value(v).map_err(|e| bad(format!("bad request: {e}")))
}

/// The body, read within [`BODY_TIMEOUT`] and [`MAX_BODY`].
async fn read_body(body: Body) -> Result<Bytes, Box<HttpResponse>> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(Box::new(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body must be at most {MAX_BODY} bytes"),
        ))),
        Err(_) => Err(Box::new(refuse(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        ))),
    }
}

/// A write (`cmd`): token first, then the body.
async fn write(ctx: &Ctx, cmd: &str, headers: &HeaderMap, body: Body) -> HttpResponse {
    if let Err(r) = authorised(ctx, headers) {
        return *r;
    }
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match request(cmd, &body) {
        Ok(req) => json(&ask(ctx, req).await),
        Err(r) => *r,
    }
}

async fn ban(State(ctx): State<Ctx>, headers: HeaderMap, body: Body) -> HttpResponse {
    write(&ctx, "ban", &headers, body).await
}

async fn unban(State(ctx): State<Ctx>, headers: HeaderMap, body: Body) -> HttpResponse {
    write(&ctx, "unban", &headers, body).await
}

async fn prometheus(State(ctx): State<Ctx>) -> HttpResponse {
    let resp = ask(&ctx, overview()).await;
    let Some(view) = resp.parse::<crate::control::StatusView>() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "status unavailable");
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&view, &ctx.metrics),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc"), Some("abc"));
        assert_eq!(bearer("Bearer ABC"), Some("ABC"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
