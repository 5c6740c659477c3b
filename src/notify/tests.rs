//! Notifications against loopback HTTP and HTTPS servers made here: the
//! fields, the signature, the retries and their pauses (counted, never
//! slept), AbuseIPDB's form and limits (time passed in). Who is told is
//! tested with the action set (`src/action/set.rs`).

use std::sync::{Arc, Mutex};

use super::abuseipdb::{self, Limits, PER_ADDRESS_MS, Sent, Skip};
use super::config::{AbuseIpdb, CaPem, Secret, Webhook};
use super::report::Report;
use super::test_server::Server;
use super::webhook::{self, Delivered, signature};
use super::{NotifyTarget, parse_notify};
use crate::decision::{BanDecision, BanReason};
use crate::duration::{BanTime, Duration};
use crate::event::{JailId, Time};

fn ban(addr: &str, reason: BanReason) -> BanDecision {
    BanDecision {
        jail: JailId(0),
        jail_name: "sip".into(),
        addr: addr.parse().unwrap(),
        start: Time(1_795_621_254_000),
        end: Some(Time(1_795_624_854_000)),
        bantime: BanTime::For(Duration(3600)),
        failures: 3,
        reason,
    }
}

fn hook(url: String, secret: Option<&str>, retries: u32) -> Webhook {
    Webhook {
        url,
        secret: secret.map(|s| Secret(s.into())),
        retries,
        timeout: Duration(10),
        ca: None,
    }
}

fn report() -> Report {
    let seen = Some((Time(1_795_621_253_500), Time(1_795_621_254_000)));
    Report::new(&ban("198.51.100.7/32", BanReason::Burst), seen, "pbx-1")
}

/// The JSON arrives with every field, and its signature is the HMAC of
/// the body as received; without a secret there is no signature header.
#[test]
fn webhook_posts_the_report_signed() {
    let srv = Server::start(&["200", "204"], None);
    let w = hook(srv.url("http"), Some("s3cret"), 0);
    let body = report().to_json();
    let mut pauses = Vec::new();
    let agent = webhook::agent(w.timeout, None);
    let r = webhook::deliver(&agent, &w, &body, &mut |d| pauses.push(d));
    assert_eq!(r, Delivered::Ok { tries: 1 });
    let unsigned = hook(srv.url("http"), None, 0);
    assert_eq!(
        webhook::deliver(&agent, &unsigned, &body, &mut |d| pauses.push(d)),
        Delivered::Ok { tries: 1 }
    );
    let got = srv.finish();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].line, "POST /hook/T0K3N HTTP/1.1");
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "event": "ban", "jail": "sip", "address": "198.51.100.7",
            "failures": 3, "reason": "burst",
            "first_seen": "2026-11-25T15:40:53.500Z", "last_seen": "2026-11-25T15:40:54.000Z",
            "start": "2026-11-25T15:40:54.000Z", "end": "2026-11-25T16:40:54.000Z",
            "node": "pbx-1"
        })
    );
    assert_eq!(
        got[0].header("x-sipwarden-signature"),
        Some(signature("s3cret", &got[0].body).as_str())
    );
    assert!(
        got[0]
            .header("x-sipwarden-signature")
            .is_some_and(|s| s.len() == 7 + 64 && s.starts_with("sha256="))
    );
    assert_eq!(got[1].header("x-sipwarden-signature"), None);
    assert!(pauses.is_empty());
}

/// 5xx and 429 are tried again after a doubling pause (or the server's
/// Retry-After), at most `retries` times; another 4xx is not; a server
/// that is gone is tried again too.
#[test]
fn webhook_retries_are_bounded_with_backoff() {
    let srv = Server::start(&["503", "429\r\nRetry-After: 5", "200"], None);
    let w = hook(srv.url("http"), None, 3);
    let agent = webhook::agent(w.timeout, None);
    let mut pauses = Vec::new();
    let r = webhook::deliver(&agent, &w, b"{}", &mut |d| pauses.push(d.as_secs()));
    assert_eq!(r, Delivered::Ok { tries: 3 });
    assert_eq!(pauses, [1, 5]);
    assert_eq!(srv.finish().len(), 3);

    let srv = Server::start(&["500", "502", "503", "200"], None);
    let w = hook(srv.url("http"), None, 2);
    let mut pauses = Vec::new();
    let r = webhook::deliver(&agent, &w, b"{}", &mut |d| pauses.push(d.as_secs()));
    assert_eq!(
        r,
        Delivered::Failed {
            tries: 3,
            why: "HTTP 503".into()
        }
    );
    assert_eq!(pauses, [1, 2]);
    assert_eq!(srv.finish().len(), 3, "no fourth try");

    let srv = Server::start(&["400"], None);
    let w = hook(srv.url("http"), None, 5);
    let mut pauses = Vec::new();
    let r = webhook::deliver(&agent, &w, b"{}", &mut |d| pauses.push(d.as_secs()));
    assert_eq!(
        r,
        Delivered::Failed {
            tries: 1,
            why: "HTTP 400".into()
        }
    );
    assert!(pauses.is_empty());
    let url = srv.url("http");
    srv.finish();
    // Nobody listens there any more.
    let w = hook(url, None, 2);
    let mut pauses = Vec::new();
    let r = webhook::deliver(&agent, &w, b"{}", &mut |d| pauses.push(d.as_secs()));
    assert!(matches!(r, Delivered::Failed { tries: 3, .. }), "{r:?}");
    assert_eq!(pauses, [1, 2]);
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl
/// CLI in `dir`; returns (CA PEM, server chain, server key).
fn certificates(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=sipwarden test CA",
    ]);
    run(&ca);
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&req);
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    (read("ca.crt"), read("srv.crt"), read("srv.key"))
}

fn tls_server_config(chain: &[u8], key: &[u8]) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let certs: Vec<CertificateDer<'static>> = ureq::tls::parse_pem(chain)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(CertificateDer::from(c.der().to_vec())),
            _ => None,
        })
        .collect();
    let key = ureq::tls::PrivateKey::from_pem(key).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.der().to_vec()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

/// Over HTTPS the server's certificate is checked: trusted through the
/// target's `ca_file` (the test's own CA, made here), refused without it
/// (the public roots do not know it).
#[test]
fn https_webhook_trusts_its_ca_file_only() {
    if !crate::test_support::need("openssl") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sipwarden-notify-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, chain, key) = certificates(&dir);
    // Read through the configuration, as an operator's ca_file is.
    let ca_path = dir.join("ca.crt");
    let v: toml::Table = toml::from_str(&format!(
        "notify = [{{ type = \"webhook\", url = \"https://127.0.0.1:1/\", ca_file = \"{}\" }}]",
        ca_path.display()
    ))
    .unwrap();
    let targets = parse_notify(&v["notify"]).unwrap();
    let [NotifyTarget::Webhook(parsed)] = targets.as_slice() else {
        panic!("one webhook")
    };
    assert_eq!(parsed.ca, Some(CaPem(ca.into())));

    let srv = Server::start(&["200", "200"], Some(tls_server_config(&chain, &key)));
    let mut w = hook(srv.url("https"), Some("k"), 0);
    w.ca = parsed.ca.clone();
    let body = report().to_json();
    let trusted = webhook::agent(w.timeout, w.ca.as_ref());
    assert_eq!(
        webhook::deliver(&trusted, &w, &body, &mut |_| {}),
        Delivered::Ok { tries: 1 }
    );
    let public = webhook::agent(w.timeout, None);
    let r = webhook::deliver(&public, &w, &body, &mut |_| {});
    assert!(
        matches!(&r, Delivered::Failed { tries: 1, why } if why.to_lowercase().contains("certificate") || why.to_lowercase().contains("issuer")),
        "{r:?}"
    );
    let got = srv.finish();
    assert_eq!(got.len(), 1, "only the trusted delivery was received");
    assert_eq!(
        got[0].header("x-sipwarden-signature"),
        Some(signature("k", &body).as_str())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn abuse(url: String) -> AbuseIpdb {
    AbuseIpdb {
        key: Secret("4bu53-k3y".into()),
        categories: vec![8, 18],
        url,
        timeout: Duration(10),
        ca: None,
    }
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.replace('+', " ");
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() + 1 {
                    if let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            (k.to_string(), String::from_utf8_lossy(&out).into_owned())
        })
        .collect()
}

/// The report's form and key; one report per address per 15 minutes (the
/// clock passed in: 14:59 later nothing is sent, 15:00 later it is); a
/// 429 with the quota spent pauses every report until its Retry-After.
#[test]
fn abuseipdb_reports_with_its_limits() {
    let srv = Server::start(
        &[
            "200\r\nX-RateLimit-Limit: 1000\r\nX-RateLimit-Remaining: 999",
            "200",
            "429\r\nX-RateLimit-Remaining: 0\r\nRetry-After: 3600",
        ],
        None,
    );
    let cfg = abuse(srv.url("http"));
    let agent = webhook::agent(cfg.timeout, None);
    let limits = Mutex::new(Limits::default());
    let r = report();
    let ip = "198.51.100.7".parse().unwrap();
    let t0 = 1_795_621_254_000;
    let send = |now: i64| -> Result<Sent, Skip> {
        limits.lock().unwrap().admit(ip, now)?;
        Ok(abuseipdb::send(&agent, &cfg, &r, ip, now, &limits))
    };
    assert_eq!(send(t0), Ok(Sent::Ok));
    assert_eq!(send(t0 + PER_ADDRESS_MS - 1_000), Err(Skip::Recent));
    assert_eq!(send(t0 + PER_ADDRESS_MS), Ok(Sent::Ok));
    let t2 = t0 + 2 * PER_ADDRESS_MS;
    assert_eq!(
        send(t2),
        Ok(Sent::RateLimited(Some(t2 + 3_600_000))),
        "the quota is spent"
    );
    // Paused: another address is not even tried.
    let other = "198.51.100.8".parse().unwrap();
    assert_eq!(
        limits.lock().unwrap().admit(other, t2 + 60_000),
        Err(Skip::Paused(t2 + 3_600_000))
    );
    let got = srv.finish();
    assert_eq!(got.len(), 3, "3 requests: the skipped ones never left");
    assert_eq!(got[0].line, "POST /hook/T0K3N HTTP/1.1");
    assert_eq!(got[0].header("key"), Some("4bu53-k3y"));
    assert_eq!(got[0].header("accept"), Some("application/json"));
    assert_eq!(
        got[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let f = form(&got[0].body);
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("ip"), Some("198.51.100.7"));
    assert_eq!(get("categories"), Some("8,18"));
    assert_eq!(get("timestamp"), Some("2026-11-25T15:40:53.500Z"));
    assert_eq!(
        get("comment"),
        Some("sipwarden: 3 SIP authentication failure(s) at machine speed, banned by jail sip")
    );
}

/// A webhook that fails is left alone for a while: the bans of an attack
/// that follow are counted as skipped instead of each holding the jail's
/// action lane (shared with its commands) for its timeout and retries.
/// (Before, every ban tried the dead server again: 5 bans, 5 requests.)
#[test]
fn a_failed_target_is_left_alone_for_a_while() {
    let srv = Server::start(&["503", "503", "503", "503", "503"], None);
    let v: toml::Value = toml::from_str::<toml::Table>(&format!(
        "notify = [{{ type = \"webhook\", url = \"{}\", retries = 0 }}]",
        srv.url("http")
    ))
    .unwrap()["notify"]
        .clone();
    let targets = parse_notify(&v).unwrap();
    let mut n = super::Notifier::default();
    n.configure([(JailId(0), targets.as_slice())], "pbx-1");
    for i in 1..=5 {
        let b = ban(&format!("198.51.100.{i}/32"), BanReason::Failures);
        for d in n.deliveries(&b, None) {
            (d.run)();
        }
    }
    let s = n.stats().view();
    let got = srv.finish();
    assert_eq!(got.len(), 1, "one request, then the target is left alone");
    assert_eq!((s[0].failed, s[0].skipped, s[0].sent), (1, 4, 0), "{s:?}");
}

/// A report that never reached AbuseIPDB (nobody listens) does not count
/// toward the address's 15 minutes, as a refused one does not. (Before,
/// a connection error left the address counted as reported.)
#[test]
fn an_abuseipdb_report_that_never_left_does_not_count() {
    let srv = Server::start(&[], None);
    let url = srv.url("http");
    srv.finish();
    let cfg = abuse(url);
    let agent = webhook::agent(cfg.timeout, None);
    let limits = Mutex::new(Limits::default());
    let ip = "198.51.100.7".parse().unwrap();
    let t0 = 1_795_621_254_000;
    assert_eq!(limits.lock().unwrap().admit(ip, t0), Ok(()));
    let sent = abuseipdb::send(&agent, &cfg, &report(), ip, t0, &limits);
    assert!(matches!(sent, Sent::Failed(_)), "{sent:?}");
    assert_eq!(limits.lock().unwrap().admit(ip, t0 + 1_000), Ok(()));
}
