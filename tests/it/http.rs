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

const TOKEN: &str = "test-token-0123456789abcdef";

/// A port free right now on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// One HTTP/1.1 request; returns status and body.
fn http(
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
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start() -> Option<Browser> {
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

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let (_, r) = http(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            None,
            (method != "GET").then_some(&body),
        );
        serde_json::from_str(&r).unwrap_or(Value::Null)
    }

    fn elements(&self, css: &str) -> Vec<String> {
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
