//! Blocklist feeds against the real kernel: a local HTTP server (inside the
//! daemon's namespace, on its loopback) serves a plain list and APIBAN's
//! paged API; a file feed sits beside them. Feeds load into their own sets,
//! are replaced on refresh, keep their last good copy when the source
//! fails, and come back from that copy after a restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::common::{NetNs, TempDir, cli, daemon_section, need, start_in, wait_until};

const KEY: &str = "apiban-test-key";

/// What the list URL answers.
#[derive(Clone)]
enum List {
    Body(String),
    Fail,
}

/// Serves `/list.txt` and APIBAN's `POST /apiban/get` until the process ends.
fn serve(listener: TcpListener, list: Arc<Mutex<List>>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(s) = conn else { continue };
            let list = list.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line);
                }
                let len = head
                    .iter()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                let _ = r.read_exact(&mut body);
                let first = head.first().cloned().unwrap_or_default();
                let auth = head.iter().any(|l| {
                    l.trim().to_ascii_lowercase() == format!("authorization: bearer {KEY}")
                });
                let (code, text) = if first.starts_with("GET /list.txt") {
                    match &*list.lock().unwrap() {
                        List::Body(b) => (200, b.clone()),
                        List::Fail => (500, "oops".to_string()),
                    }
                } else if first.starts_with("POST /apiban/get") {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    if !auth {
                        (200, r#"{"ID":"unauthorized"}"#.to_string())
                    } else {
                        match v["id"].as_str() {
                            Some("100") => (
                                200,
                                r#"{"ID":"200","ipaddress":["198.18.0.1","198.18.0.5"]}"#
                                    .to_string(),
                            ),
                            Some("200") => (
                                200,
                                r#"{"ID":"300","ipaddress":["198.18.0.9"]}"#.to_string(),
                            ),
                            _ => (
                                400,
                                r#"{"ID":"none","ipaddress":["no new bans"]}"#.to_string(),
                            ),
                        }
                    }
                } else {
                    (404, "no".to_string())
                };
                let mut w = s;
                let _ = write!(
                    w,
                    "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            });
        }
    });
}

/// A set's elements as text: `a.b.c.d` or `a.b.c.d/len`.
fn elements(ns: &NetNs, set: &str) -> Vec<String> {
    let mut v: Vec<String> = ns
        .set_elements(set)
        .iter()
        .filter_map(|e| match e {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("prefix").map(|p| {
                format!(
                    "{}/{}",
                    p["addr"].as_str().unwrap_or(""),
                    p["len"].as_u64().unwrap_or(0)
                )
            }),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn feeds_load_refresh_and_fail_safely() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("feed");
    let dir = TempDir::new("feeds");
    let list = Arc::new(Mutex::new(List::Body(
        "# test list\n203.0.113.0/24\n192.0.2.77\nnonsense\n".into(),
    )));
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    serve(listener, list.clone());
    std::fs::write(dir.path("local.txt"), "100.64.0.0/10 ; carrier-grade NAT\n").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nignoreself = false\n\
             [[feed]]\nname = \"list\"\nurl = \"http://127.0.0.1:{port}/list.txt\"\nrefresh = \"1s\"\n\
             [[feed]]\nname = \"api\"\nurl = \"http://127.0.0.1:{port}/apiban\"\nformat = \"apiban\"\nkey = \"{KEY}\"\nrefresh = \"1h\"\n\
             [[feed]]\nname = \"badkey\"\nurl = \"http://127.0.0.1:{port}/apiban\"\nformat = \"apiban\"\nkey = \"wrong\"\n\
             [[feed]]\nname = \"local\"\npath = \"{}\"\n\
             [jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            daemon_section(&dir),
            dir.path("local.txt").display(),
            dir.path("fs.log").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.path("fs.log"), "").unwrap();
    let d = start_in(&ns, &cfg);

    assert!(
        wait_until(Duration::from_secs(20), || elements(&ns, "feed_list_v4")
            == ["192.0.2.77", "203.0.113.0/24"]),
        "list feed loaded: {:?}",
        elements(&ns, "feed_list_v4")
    );
    assert!(
        wait_until(Duration::from_secs(20), || elements(&ns, "feed_api_v4")
            == ["198.18.0.1", "198.18.0.5", "198.18.0.9"]),
        "every APIBAN page loaded: {:?}",
        elements(&ns, "feed_api_v4")
    );
    assert!(wait_until(Duration::from_secs(20), || elements(
        &ns,
        "feed_local_v4"
    ) == [
        "100.64.0.0/10"
    ]));
    assert!(
        d.wait_for("unauthorized", Duration::from_secs(20))
            .is_some()
    );
    assert!(elements(&ns, "feed_badkey_v4").is_empty());
    assert!(
        d.wait_for("line(s) skipped", Duration::from_secs(5))
            .is_some()
    );
    // Their state in `status` and the metrics' source.
    let st: Value = serde_json::from_slice(&cli(&dir, &["status", "--json"]).stdout).unwrap();
    let feeds = st["result"]["feeds"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let feed = |n: &str| {
        feeds
            .iter()
            .find(|f| f["name"] == n)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(feed("api")["entries"], 3, "{st}");
    assert!(feed("api")["error"].is_null());
    assert!(
        feed("badkey")["error"]
            .as_str()
            .is_some_and(|e| e.contains("unauthorized")),
        "{st}"
    );
    let text = String::from_utf8_lossy(&cli(&dir, &["status"]).stdout).into_owned();
    assert!(
        text.contains("feed badkey: 0 entries, last fetch FAILED"),
        "{text}"
    );

    // Refresh replaces the set whole.
    *list.lock().unwrap() = List::Body("198.51.100.0/25\n198.51.100.128/25\n".into());
    assert!(
        wait_until(Duration::from_secs(20), || elements(&ns, "feed_list_v4")
            == ["198.51.100.0/24"]),
        "refreshed (and merged): {:?}",
        elements(&ns, "feed_list_v4")
    );

    // A failing source keeps the last good copy.
    *list.lock().unwrap() = List::Fail;
    assert!(d.wait_for("HTTP 500", Duration::from_secs(20)).is_some());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(elements(&ns, "feed_list_v4"), ["198.51.100.0/24"]);

    // Restarted while the source still fails: the saved copy is loaded.
    drop(d);
    let d = start_in(&ns, &cfg);
    assert!(
        wait_until(Duration::from_secs(20), || elements(&ns, "feed_list_v4")
            == ["198.51.100.0/24"]),
        "last good copy after a restart: {:?}",
        elements(&ns, "feed_list_v4")
    );
    drop(d);
}

/// Whether `addr` is in set `set` of table inet sipwarden (an interval set
/// answers for any address inside one of its ranges).
fn in_set(ns: &NetNs, set: &str, addr: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "nft",
            "get",
            "element",
            "inet",
            "sipwarden",
            set,
        ])
        .arg(format!("{{ {addr} }}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether a TCP connection to `port` on 127.0.0.1 inside `ns` completes.
fn loopback_answers(ns: &NetNs, port: u16) -> bool {
    ns.run(move || {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )
        .is_ok()
    })
}

/// Black-box pass N1: `0.0.0.0/1` and `128.0.0.0/1` in a feed file were
/// merged into `0.0.0.0/0` and loaded, and a TCP connection to 127.0.0.1
/// then timed out. A feed whose entries together cover every address is
/// refused whole, saying why (the last good copy stays).
#[test]
fn a_feed_that_covers_everything_is_refused() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("fall");
    let dir = TempDir::new("fall");
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in listener.incoming().take(1000) {
            drop(c);
        }
    });
    assert!(
        loopback_answers(&ns, port),
        "loopback answers before the daemon"
    );
    std::fs::write(dir.path("all.txt"), "0.0.0.0/1\n128.0.0.0/1\n").unwrap();
    std::fs::write(dir.path("ok.txt"), "198.51.100.0/24\n").unwrap();
    std::fs::write(dir.path("fs.log"), "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[[feed]]\nname = \"all\"\npath = \"{}\"\nrefresh = \"1s\"\n\
             [[feed]]\nname = \"ok\"\npath = \"{}\"\nrefresh = \"1s\"\n\
             [jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n",
            daemon_section(&dir),
            dir.path("all.txt").display(),
            dir.path("ok.txt").display(),
            dir.path("fs.log").display()
        ),
    )
    .unwrap();
    let d = start_in(&ns, &cfg);
    assert!(
        wait_until(Duration::from_secs(20), || in_set(
            &ns,
            "feed_ok_v4",
            "198.51.100.1"
        )),
        "the other feed loads"
    );
    // Two refresh periods: the refused feed had its chances.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        elements(&ns, "feed_all_v4").is_empty(),
        "{:?}",
        elements(&ns, "feed_all_v4")
    );
    assert!(loopback_answers(&ns, port), "loopback still answers");
    assert!(
        d.wait_for("cover every IPv4 address", Duration::from_secs(20))
            .is_some(),
        "the refusal says why"
    );
    let st: Value = serde_json::from_slice(&cli(&dir, &["status", "--json"]).stdout).unwrap();
    let all = st["result"]["feeds"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == "all").cloned())
        .unwrap_or_default();
    assert!(
        all["error"]
            .as_str()
            .is_some_and(|e| e.contains("every IPv4")),
        "{st}"
    );
    drop(d);
}

/// Black-box pass N1: a feed holding `127.0.0.1` or an `ignoreip` network
/// was loaded as it was, dropping loopback, ignored networks and Event
/// Socket peers. Every feed is cut around what sipwarden never bans
/// (`ignoreip` of every jail, this host, the Event Socket peers, loopback),
/// and cut again when that changes (a reload here).
#[test]
fn feeds_never_drop_what_sipwarden_never_bans() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("fprot");
    let dir = TempDir::new("fprot");
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in listener.incoming().take(1000) {
            drop(c);
        }
    });
    std::fs::write(
        dir.path("cut.txt"),
        "127.0.0.1\n10.0.0.0/8\n198.51.100.0/24\n203.0.113.0/24\n2001:db8::/32\n",
    )
    .unwrap();
    std::fs::write(dir.path("fs.log"), "").unwrap();
    let cfg = dir.path("sipwarden.toml");
    let write_cfg = |ignore: &str| {
        std::fs::write(
            &cfg,
            format!(
                "{}[defaults]\nignoreself = false\nignoreip = [{ignore}]\n\
                 [[feed]]\nname = \"cut\"\npath = \"{}\"\nrefresh = \"1s\"\n\
                 [jail.fs]\nfilter = \"freeswitch\"\nlogpath = \"{}\"\n\
                 [jail.pbx]\nignoreip = [\"2001:db8:1::/48\"]\n\
                 esl = {{ host = \"198.51.100.20\", port = 8021, password = \"ClueCon\" }}\n",
                daemon_section(&dir),
                dir.path("cut.txt").display(),
                dir.path("fs.log").display()
            ),
        )
        .unwrap();
    };
    write_cfg("\"10.1.2.3\"");
    let d = start_in(&ns, &cfg);
    assert!(
        wait_until(Duration::from_secs(20), || in_set(
            &ns,
            "feed_cut_v4",
            "198.51.100.1"
        )),
        "the feed loads"
    );
    assert!(loopback_answers(&ns, port), "loopback still answers");

    // Cut around loopback, ignoreip (of any jail) and the Event Socket peer.
    for (addr, held) in [
        ("127.0.0.1", false),
        ("10.1.2.3", false),
        ("10.1.2.2", true),
        ("10.1.2.4", true),
        ("10.255.0.1", true),
        ("198.51.100.20", false),
        ("198.51.100.19", true),
        ("198.51.100.21", true),
        ("203.0.113.9", true),
    ] {
        assert_eq!(in_set(&ns, "feed_cut_v4", addr), held, "{addr}");
    }
    for (addr, held) in [("2001:db8:1::5", false), ("2001:db8:2::5", true)] {
        assert_eq!(in_set(&ns, "feed_cut_v6", addr), held, "{addr}");
    }
    assert!(
        d.wait_for(
            "cut around addresses sipwarden never blocks",
            Duration::from_secs(5)
        )
        .is_some()
    );
    let st: Value = serde_json::from_slice(&cli(&dir, &["status", "--json"]).stdout).unwrap();
    let cut = st["result"]["feeds"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == "cut").cloned())
        .unwrap_or_default();
    assert_eq!(cut["cut"], 4, "{st}");

    // What is protected changes (a reload): the feed is cut again.
    write_cfg("\"10.1.2.3\", \"203.0.113.0/24\"");
    let out = cli(&dir, &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(20), || !in_set(
            &ns,
            "feed_cut_v4",
            "203.0.113.9"
        )),
        "a network protected by a reload leaves the feed"
    );
    assert!(in_set(&ns, "feed_cut_v4", "198.51.100.1"));
    assert!(loopback_answers(&ns, port));
    drop(d);
}
