//! Notifications from the running daemon: a ban it decides reaches a
//! loopback webhook, signed, with its fields; a ban restored at the next
//! start is not told again.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Daemon, TempDir, append, cli, daemon_section, wait_until};

/// What the webhook received: each request's head and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A webhook on 127.0.0.1 that answers 200 to everything and keeps each
/// request (head and body), for at most `max` connections.
fn webhook(max: usize) -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let log = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(max) {
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
                match s.read(&mut chunk) {
                    Ok(n) if n > 0 && buf.len() < 65_536 => buf.extend_from_slice(&chunk[..n]),
                    _ => break None,
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let mut body = buf[head_end..].to_vec();
            while body.len() < len {
                match s.read(&mut chunk) {
                    Ok(n) if n > 0 => body.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            log.lock().unwrap().push((head, body));
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

#[test]
fn a_ban_decided_here_reaches_the_webhook_and_a_restored_one_does_not() {
    let (port, got) = webhook(20);
    let dir = TempDir::new("notify");
    let log = dir.path("fail2ban.log");
    std::fs::write(&log, "").unwrap();
    let secret = dir.path("secret");
    std::fs::write(&secret, "s3cret-from-a-file\n").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 5\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.sip]\nfilter = \"mod-fail2ban\"\nlogpath = \"{}\"\n\
             notify = [{{ type = \"webhook\", url = \"http://127.0.0.1:{port}/hook/T0K3N\", secret_file = \"{}\", retries = 0 }}]\n",
            daemon_section(&dir),
            log.display(),
            secret.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(d.wait_for(": following", Duration::from_secs(10)).is_some());
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6f+0000")
        .to_string();
    // Three failures at machine speed: the burst rule bans at the third.
    append(
        &log,
        &format!("A registration failed user[1001] ip[198.51.100.9] at[{now}]\n").repeat(3),
    );
    assert!(
        d.wait_for("[sip] Ban 198.51.100.9", Duration::from_secs(10))
            .is_some()
    );
    assert!(
        wait_until(Duration::from_secs(10), || got.lock().unwrap().len() == 1),
        "the webhook was told"
    );
    let (head, body) = got.lock().unwrap()[0].clone();
    assert!(head.starts_with("POST /hook/T0K3N HTTP/1.1\r\n"), "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["event"], "ban");
    assert_eq!(v["jail"], "sip");
    assert_eq!(v["address"], "198.51.100.9");
    assert_eq!(v["failures"], 3);
    assert_eq!(v["reason"], "burst");
    assert!(
        v["first_seen"].is_string() && v["last_seen"].is_string(),
        "{v}"
    );
    assert!(v["node"].as_str().is_some_and(|n| !n.is_empty()), "{v}");
    let sig = head
        .lines()
        .find_map(|l| l.strip_prefix("x-sipwarden-signature: "))
        .or_else(|| {
            head.lines()
                .find_map(|l| l.strip_prefix("X-Sipwarden-Signature: "))
        })
        .expect("signed");
    assert!(sig.starts_with("sha256=") && sig.len() == 71, "{sig}");
    // The secret and the URL's path are never logged.
    assert!(d.lines_with("s3cret").is_empty());
    assert!(d.lines_with("T0K3N").is_empty());
    // Status counts it.
    let s: serde_json::Value =
        serde_json::from_slice(&cli(&dir, &["status", "--json"]).stdout).unwrap();
    let n = &s["result"]["actions"]["notify"][0];
    assert_eq!(
        (n["kind"].as_str(), n["sent"].as_u64()),
        (Some("webhook"), Some(1)),
        "{s}"
    );
    assert!(d.stop().is_some_and(|s| s.success()));

    // Restarted: the ban is restored from the store, and not told again.
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for("restored 1 active ban", Duration::from_secs(10))
            .is_some()
    );
    assert!(d.wait_for(": following", Duration::from_secs(10)).is_some());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(got.lock().unwrap().len(), 1, "a restored ban is not told");
    assert!(d.stop().is_some_and(|s| s.success()));
}
