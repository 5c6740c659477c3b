//! The HTTP listener: the JSON API in the control socket's shapes, bearer
//! tokens on writes, Prometheus metrics, and the dashboard driven in a real
//! headless Chromium through chromedriver (Debian's `chromium` and
//! `chromium-driver`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Daemon, TempDir, cli, daemon_section, wait_until};

pub(crate) const TOKEN: &str = "test-token-0123456789abcdef";

/// A port free right now on loopback.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// One HTTP/1.1 request; returns status and body.
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = auth {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    // Read the head, then exactly the body it announces: chromedriver keeps
    // the connection open whatever the request asks.
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break out.len(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&out[..head_end.min(out.len())]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let have = out.len() - head_end.min(out.len());
        let done = match length {
            Some(n) => have >= n,
            None if chunked => out.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // Chunked bodies (axum streams some): join the chunks.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut rest = body;
        let mut joined = String::new();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            joined.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        joined
    } else {
        body.to_string()
    };
    (status, body)
}

fn get_json(port: u16, path: &str) -> Value {
    serde_json::from_str(&http(port, "GET", path, None, None).1).unwrap_or(Value::Null)
}

fn start(dir: &TempDir, port: u16) -> Daemon {
    std::fs::write(dir.path("fs.log"), "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            daemon_section(dir),
            dir.path("fs.log").display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--dry-run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for("http: dashboard", Duration::from_secs(30))
            .is_some(),
        "the http listener starts"
    );
    d
}

fn banned(port: u16) -> Vec<String> {
    get_json(port, "/api/jails/fs")["result"]["banned"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["addr"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn api_metrics_and_tokens() {
    let dir = TempDir::new("http");
    let port = free_port();
    let _d = start(&dir, port);

    // The same shapes as `sipwarden status --json`.
    let api = get_json(port, "/api/status");
    let sock: Value = serde_json::from_slice(&cli(&dir, &["status", "--json"]).stdout).unwrap();
    assert_eq!(api["ok"], true);
    assert_eq!(
        api["result"]["jails"][0]["name"],
        sock["result"]["jails"][0]["name"]
    );
    assert_eq!(
        api["result"]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        sock["result"]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
    );

    // Writes need the token.
    let ban = json!({"jail": "fs", "addr": "203.0.113.77", "for": "2h"});
    assert_eq!(http(port, "POST", "/api/ban", None, Some(&ban)).0, 401);
    assert_eq!(
        http(port, "POST", "/api/ban", Some("wrong"), Some(&ban)).0,
        401
    );
    let (code, body) = http(port, "POST", "/api/ban", Some(TOKEN), Some(&ban));
    assert_eq!(code, 200, "{body}");
    let jail = get_json(port, "/api/jails/fs");
    let b = &jail["result"]["banned"][0];
    assert_eq!(b["addr"], "203.0.113.77");
    let left = b["remaining_s"].as_i64().unwrap();
    assert!(left > 7000 && left <= 7200, "{left}");
    assert_eq!(get_json(port, "/api/jails/nope")["ok"], false);
    assert_eq!(http(port, "GET", "/api/jails/nope", None, None).0, 404);
    assert_eq!(
        http(
            port,
            "POST",
            "/api/ban",
            Some(TOKEN),
            Some(&json!({"jail": "fs"}))
        )
        .0,
        400
    );

    // History from the store, metrics, the page.
    assert!(wait_until(Duration::from_secs(10), || {
        get_json(port, "/api/history/203.0.113.77")["result"]["bans"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    }));
    let (code, metrics) = http(port, "GET", "/metrics", None, None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("sipwarden_bans_total{jail=\"fs\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("sipwarden_active_bans{jail=\"fs\"} 1\n"));
    assert!(metrics.contains("sipwarden_ban_latency_seconds_bucket{le=\"+Inf\"}"));
    assert!(metrics.contains("sipwarden_source_up{jail=\"fs\",kind=\"file\""));
    let (code, page) = http(port, "GET", "/", None, None);
    assert_eq!(code, 200);
    assert!(page.contains("<title>sipwarden</title>"));
    for external in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "fetch(\"http",
    ] {
        assert!(
            !page.contains(external),
            "the page loads nothing from elsewhere ({external})"
        );
    }

    let (code, _) = http(
        port,
        "POST",
        "/api/unban",
        Some(TOKEN),
        Some(&json!({"addr": "203.0.113.77"})),
    );
    assert_eq!(code, 200);
    assert!(banned(port).is_empty());
    assert!(get_json(port, "/metrics").is_null(), "metrics are not JSON");
}

/// A WebDriver session against chromedriver.
pub(crate) struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    pub(crate) fn start() -> Option<Browser> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
        };
        if !wait_until(Duration::from_secs(20), || {
            http(port, "GET", "/status", None, None).0 == 200
        }) {
            return None;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        }}});
        let (_, body) = http(port, "POST", "/session", None, Some(&caps));
        let v: Value = serde_json::from_str(&body).ok()?;
        b.session = v["value"]["sessionId"].as_str()?.to_string();
        Some(b)
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let (_, r) = http(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            None,
            (method != "GET").then_some(&body),
        );
        serde_json::from_str(&r).unwrap_or(Value::Null)
    }

    pub(crate) fn elements(&self, css: &str) -> Vec<String> {
        self.call(
            "POST",
            "/elements",
            json!({"using": "css selector", "value": css}),
        )["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        e.as_object()
                            .and_then(|o| o.values().next())
                            .and_then(Value::as_str)
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn dashboard_shows_a_ban_and_unbans_it_in_chromium() {
    if !crate::common::need("chromium") {
        return;
    }
    let dir = TempDir::new("dash");
    let port = free_port();
    let _d = start(&dir, port);
    let Some(browser) = Browser::start() else {
        panic!("chromedriver did not start a headless chromium session");
    };
    // The token travels in the fragment (never sent to the server) and the
    // page keeps it in local storage.
    browser.call(
        "POST",
        "/url",
        json!({"url": format!("http://127.0.0.1:{port}/#token={TOKEN}")}),
    );
    assert!(
        wait_until(Duration::from_secs(20), || !browser
            .elements("#jails tbody tr")
            .is_empty()),
        "the page lists the jails"
    );

    // A ban made through the API appears on the page, with its countdown.
    let ban = json!({"jail": "fs", "addr": "203.0.113.50", "for": "1h"});
    assert_eq!(
        http(port, "POST", "/api/ban", Some(TOKEN), Some(&ban)).0,
        200
    );
    let row = r#"tr.ban[data-addr="203.0.113.50"]"#;
    assert!(
        wait_until(Duration::from_secs(20), || !browser
            .elements(row)
            .is_empty()),
        "the ban appears on the dashboard"
    );
    let text = browser.call(
        "GET",
        &format!("/element/{}/text", browser.elements(row)[0]),
        Value::Null,
    );
    let text = text["value"].as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("203.0.113.50") && text.contains("59m"),
        "{text}"
    );

    // Clicking unban lifts it, and the row goes.
    let buttons = browser.elements(r#"button.unban[data-addr="203.0.113.50"]"#);
    assert_eq!(buttons.len(), 1);
    browser.call("POST", &format!("/element/{}/click", buttons[0]), json!({}));
    assert!(
        wait_until(Duration::from_secs(20), || browser.elements(row).is_empty()),
        "the row goes after unban"
    );
    assert!(banned(port).is_empty(), "the daemon lifted the ban");
}

/// Writes the config of `start` with `extra` lines in `[http]`.
fn config_with(dir: &TempDir, port: u16, extra: &str) -> std::path::PathBuf {
    std::fs::write(dir.path("fs.log"), "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n{extra}\n[jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            daemon_section(dir),
            dir.path("fs.log").display()
        ),
    )
    .unwrap();
    cfg
}

fn start_cmd(cmd: &mut Command) -> Daemon {
    let d = Daemon::start_with(cmd);
    assert!(
        d.wait_for("http: dashboard", Duration::from_secs(30))
            .is_some(),
        "the http listener starts"
    );
    d
}

/// One request with a chosen `Host` header (`None`: no header at all);
/// returns the status code (0: closed without an answer).
fn get_with_host(port: u16, host: Option<&str>, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let _ =
        s.write_all(format!("GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Whether the server has closed `s` (what it sent before is read and
/// dropped); never blocks.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Finding 6: 300 half-sent requests were still held after 38 s. A head
/// that does not arrive, a connection that sends nothing, and a kept-alive
/// connection left idle are all closed by the server (header and idle
/// timeouts); the bound here is generous, no timing is asserted.
#[test]
fn half_sent_and_idle_http_connections_are_closed() {
    let dir = TempDir::new("httpslow");
    let port = free_port();
    let _d = start(&dir, port);
    let mut conns = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(
            format!("GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: {i}\r\n")
                .as_bytes(),
        )
        .unwrap();
        conns.push(s);
    }
    conns.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
    // Kept alive after one full answer, then silent.
    let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
    kept.write_all(
        format!("GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let _ = kept.set_read_timeout(Some(Duration::from_secs(30)));
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    conns.push(kept);

    let all_closed = wait_until(Duration::from_secs(120), || {
        conns.iter_mut().all(closed_by_server)
    });
    let open = conns
        .iter_mut()
        .map(closed_by_server)
        .filter(|c| !c)
        .count();
    assert!(
        all_closed,
        "{open} of {} slow or idle connections still held",
        conns.len()
    );
    assert_eq!(
        String::from_utf8_lossy(&cli(&dir, &["ping"]).stdout),
        "pong\n"
    );
}

/// Finding 6: there was no connection cap. With 300 connections held open,
/// one more request is refused (503, or closed unanswered) instead of served,
/// and the control socket still answers.
#[test]
fn http_connections_over_the_cap_are_refused_and_ping_still_answers() {
    let dir = TempDir::new("httpcap");
    let port = free_port();
    let _d = start(&dir, port);
    // The held connections expire after the header timeout; if that happened
    // before the extra request, it was rightly served: try again (bounded).
    for _ in 0..3 {
        let mut held: Vec<TcpStream> = (0..300)
            .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
            .collect();
        let (code, body) = http(port, "GET", "/api/status", None, None);
        assert_eq!(
            String::from_utf8_lossy(&cli(&dir, &["ping"]).stdout),
            "pong\n",
            "the control socket answers while HTTP is full"
        );
        if code == 200 {
            let expired = held[..50].iter_mut().any(closed_by_server);
            assert!(
                expired,
                "a request over the cap was served while 300 connections were held"
            );
            continue;
        }
        assert!(code == 503 || code == 0, "{code} {body}");
        drop(held);
        assert!(
            wait_until(Duration::from_secs(60), || http(
                port,
                "GET",
                "/api/status",
                None,
                None
            )
            .0 == 200),
            "served again once connections are released"
        );
        return;
    }
    panic!("the held connections kept expiring before the extra request (machine too slow?)");
}

/// Finding 6: once the fd limit was reached the control socket stopped
/// accepting and `ping` hung. With RLIMIT_NOFILE at 256 and 400 HTTP
/// connections opened, descriptors stay in reserve: `ping` answers.
#[test]
fn at_the_fd_limit_the_control_socket_still_answers() {
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("httpfd");
    let port = free_port();
    let cfg = config_with(&dir, port, "");
    let mut cmd = Command::new(crate::common::bin());
    cmd.args(["run", "--dry-run", "--config", cfg.to_str().unwrap()]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _d = start_cmd(&mut cmd);
    // A daemon out of descriptors stops accepting and its queue fills up:
    // then connecting blocks, so each try is bounded.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut held = Vec::new();
    for _ in 0..400 {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            break;
        };
        let _ = s.write_all(b"GET / HTTP/1.1\r\n");
        held.push(s);
    }
    assert!(held.len() > 250, "only {} connections opened", held.len());
    // Bounded: a hung CLI is killed and counts as a failure.
    let mut ping = Command::new(crate::common::bin())
        .args(["ping", "--socket"])
        .arg(dir.path("sipwarden.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let answered = wait_until(Duration::from_secs(30), || {
        ping.try_wait().ok().flatten().is_some()
    });
    if !answered {
        let _ = ping.kill();
    }
    let out = ping.wait_with_output().unwrap();
    assert!(answered, "ping hung with 400 HTTP connections open");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pong\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(60), || http(
            port,
            "GET",
            "/api/status",
            None,
            None
        )
        .0 == 200),
        "HTTP is served again once connections are released"
    );
}

/// Finding 6: any `Host` was accepted, so a page in the operator's browser
/// could read the API through DNS rebinding. Only this listener's address,
/// `localhost` (for a loopback listener) and `[http] allowed_hosts` pass.
#[test]
fn host_header_must_name_this_listener() {
    let dir = TempDir::new("httphost");
    let port = free_port();
    let d = start(&dir, port);
    for evil in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("rebind.attacker.test:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
    ] {
        let code = get_with_host(port, Some(&evil), "/api/status");
        assert!(code == 421 || code == 403, "Host: {evil} -> {code}");
    }
    let code = get_with_host(port, None, "/api/status");
    assert!(code == 400 || code == 421, "no Host -> {code}");
    for good in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        assert_eq!(
            get_with_host(port, Some(&good), "/api/status"),
            200,
            "Host: {good}"
        );
    }
    assert!(d.stop().is_some(), "the first daemon stops");

    let cfg = config_with(
        &dir,
        port,
        &format!("allowed_hosts = [\"pbx1:{port}\", \"Metrics.Example\"]\n"),
    );
    let _d = start_cmd(Command::new(crate::common::bin()).args([
        "run",
        "--dry-run",
        "--config",
        cfg.to_str().unwrap(),
    ]));
    for good in [
        format!("pbx1:{port}"),
        format!("PBX1:{port}"),
        format!("metrics.example:{port}"),
        "metrics.example".to_string(),
        format!("127.0.0.1:{port}"),
    ] {
        assert_eq!(
            get_with_host(port, Some(&good), "/metrics"),
            200,
            "Host: {good}"
        );
    }
    for evil in [
        format!("pbx1:{}", port.wrapping_add(1)),
        format!("pbx2:{port}"),
        "evil.example".into(),
    ] {
        let code = get_with_host(port, Some(&evil), "/metrics");
        assert!(code == 421 || code == 403, "Host: {evil} -> {code}");
    }
}

/// Finding 6: `GET /api/jails/J` answered every ban at once (31 MB for
/// 200,000). Pages of 1,000 by default; `next_cursor` walks them all with
/// no duplicate and no gap; the control socket pages the same way, and the
/// CLI fetches every page.
#[test]
fn ban_lists_are_paged_with_a_cursor() {
    let dir = TempDir::new("httppage");
    let port = free_port();
    let _d = start(&dir, port);
    let addrs = crate::control::ban_many(&dir.path("sipwarden.sock"), "fs", 2500);
    let want: std::collections::BTreeSet<String> = addrs.into_iter().collect();

    let page = |q: &str| get_json(port, &format!("/api/jails/fs{q}"));
    let first = page("");
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["result"]["currently_banned"], 2500);
    assert_eq!(
        first["result"]["banned"].as_array().map(Vec::len),
        Some(1000),
        "the default page is 1,000 bans"
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let v = match &cursor {
            None => page("?limit=700"),
            Some(c) => page(&format!("?limit=700&cursor={c}")),
        };
        for b in v["result"]["banned"].as_array().unwrap() {
            seen.push(b["addr"].as_str().unwrap().to_string());
        }
        cursor = v["result"]["next_cursor"].as_str().map(String::from);
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "the walk ends");
    let unique: std::collections::BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no ban twice");
    assert_eq!(unique, want, "every ban once");

    for bad in [
        "?limit=0",
        "?limit=100001",
        "?limit=x",
        "?cursor=nope",
        "?limt=5",
    ] {
        assert_eq!(
            http(port, "GET", &format!("/api/jails/fs{bad}"), None, None).0,
            400,
            "{bad}"
        );
    }

    // The control socket pages the same way.
    let mut s = std::os::unix::net::UnixStream::connect(dir.path("sipwarden.sock")).unwrap();
    s.write_all(b"{\"cmd\":\"status\",\"jail\":\"fs\",\"limit\":10}\n")
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["result"]["banned"].as_array().map(Vec::len), Some(10));
    assert!(v["result"]["next_cursor"].is_string());

    // The CLI fetches every page.
    let out = cli(&dir, &["status", "fs", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["banned"].as_array().map(Vec::len), Some(2500));
    let text = String::from_utf8_lossy(&cli(&dir, &["status", "fs"]).stdout).into_owned();
    assert_eq!(text.matches("198.18.").count(), 2 * 2500, "list and table");
    let text =
        String::from_utf8_lossy(&cli(&dir, &["status", "fs", "--limit", "10"]).stdout).into_owned();
    assert_eq!(text.matches("198.18.").count(), 2 * 10, "{text}");
    assert!(text.contains("add --cursor "), "{text}");
}

/// One raw request; returns the whole answer's head (lower case) and body.
fn raw(port: u16, req: &str) -> (String, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (String::new(), String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.write_all(req.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

/// Black-box pass N11: the dashboard could be framed (a CSP without
/// `frame-ancestors`, no `X-Frame-Options`), which opens its unban button to
/// clickjacking. Every answer (the page, the API, the metrics, refusals)
/// carries the security headers. N12: the bearer scheme is
/// case-insensitive (RFC 7235), `bearer` in lower case is accepted.
#[test]
fn every_answer_refuses_framing_and_bearer_is_case_insensitive() {
    let dir = TempDir::new("httphead");
    let port = free_port();
    let _d = start(&dir, port);
    let host = format!("127.0.0.1:{port}");
    let get = |path: &str, host: &str| {
        raw(
            port,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    for (path, h) in [
        ("/", host.as_str()),
        ("/api/status", host.as_str()),
        ("/metrics", host.as_str()),
        ("/api/jails/nope", host.as_str()),
        ("/", "evil.example"),
    ] {
        let (head, _) = get(path, h);
        assert!(head.starts_with("http/1.1 "), "{path}: {head}");
        for want in [
            "x-frame-options: deny",
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
        ] {
            assert!(
                head.contains(want),
                "{path} (Host {h}) lacks {want}: {head}"
            );
        }
        if path == "/" && h == host {
            let csp = head
                .lines()
                .find(|l| l.starts_with("content-security-policy:"))
                .unwrap_or("");
            assert!(csp.contains("frame-ancestors 'none'"), "{head}");
        }
    }
    let body = json!({"jail": "fs", "addr": "203.0.113.78", "for": "1h"}).to_string();
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let (head, text) = raw(
            port,
            &format!(
                "POST /api/ban HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: {scheme} {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(head.starts_with("http/1.1 200"), "{scheme}: {head}\n{text}");
    }
    // Still refused: another scheme, no space, a token with a different case.
    for auth in [
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
        format!("Bearer {}", TOKEN.to_uppercase()),
    ] {
        let (head, _) = raw(
            port,
            &format!(
                "POST /api/ban HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(head.starts_with("http/1.1 401"), "{auth}: {head}");
    }
}
