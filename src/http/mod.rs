//! The HTTP listener (`[http] listen`, off by default): a JSON API in the
//! control socket's shapes, Prometheus metrics, and the dashboard.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /` | the dashboard (one page, assets embedded, no CDN) |
//! | `GET /api/status` | `sipwarden status --json` |
//! | `GET /api/jails/{jail}` | `sipwarden status JAIL --json` (with active bans and remaining time) |
//! | `GET /api/recent` | recent failures, failures per minute, top addresses and user names |
//! | `GET /api/history/{addr}` | every ban of an address from the store, newest first |
//! | `POST /api/ban` | `{"jail","addr","for","force"}`, bearer token |
//! | `POST /api/unban` | `{"addr","jail","all"}`, bearer token |
//! | `GET /metrics` | Prometheus text format |
//!
//! Every request is answered by the same task that answers the control
//! socket, so the two can never disagree. Write operations need
//! `Authorization: Bearer <[http] token>`; without a configured token they
//! are refused.

pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};

use crate::control::server::ControlMsg;
use crate::control::{Request, Response};

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");
/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
struct Ctx {
    core: mpsc::Sender<ControlMsg>,
    token: Option<Arc<str>>,
    state_dir: PathBuf,
    metrics: Arc<metrics::Metrics>,
}

/// Binds `addr`; the error says what to change.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr} for [http] ({e}); choose another `listen` address or port")
    })
}

/// Serves until the task is aborted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    core: mpsc::Sender<ControlMsg>,
    token: Option<String>,
    state_dir: PathBuf,
    metrics: Arc<metrics::Metrics>,
) {
    let ctx = Ctx {
        core,
        token: token.map(Arc::from),
        state_dir,
        metrics,
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
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("http listener stopped: {e}");
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
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn status(State(ctx): State<Ctx>) -> HttpResponse {
    json(&ask(&ctx, Request::Status { jail: None }).await)
}

async fn jail(State(ctx): State<Ctx>, Path(jail): Path<String>) -> HttpResponse {
    json(&ask(&ctx, Request::Status { jail: Some(jail) }).await)
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
    // The store is a file: read it with a read-only connection of our own,
    // off the async threads (WAL lets it read beside the writer).
    let rows = tokio::task::spawn_blocking(move || {
        let store = crate::store::Store::open_read_only(&dir)?;
        store.history(&net, 1000)
    })
    .await;
    match rows {
        Ok(Ok(rows)) => {
            let list: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|(b, lifted)| {
                    serde_json::json!({
                        "jail": b.jail,
                        "addr": crate::jail::DisplayNet(&b.addr).to_string(),
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
        .and_then(|v| v.strip_prefix("Bearer "))
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

async fn ban(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Err(r) = authorised(&ctx, &headers) {
        return *r;
    }
    match request("ban", &body) {
        Ok(req) => json(&ask(&ctx, req).await),
        Err(r) => *r,
    }
}

async fn unban(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Err(r) = authorised(&ctx, &headers) {
        return *r;
    }
    match request("unban", &body) {
        Ok(req) => json(&ask(&ctx, req).await),
        Err(r) => *r,
    }
}

async fn prometheus(State(ctx): State<Ctx>) -> HttpResponse {
    let resp = ask(&ctx, Request::Status { jail: None }).await;
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
