//! HEP end to end: a real Kamailio (Debian's package) in a `pbx` namespace
//! with no log line for failures, mirroring every SIP message over HEPv3
//! (`siptrace`, `trace_mode=1`, `hep_mode_on=1`, `hep_version=3`, an auth
//! key) to sipwarden on loopback; sipwarden bans with nftables. Attackers
//! and a phone in an `atk` namespace: SIPVicious `svcrack` and SIPp over
//! UDP, and a small Python `ssl` client over SIP-TLS, which only HEP sees.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Daemon, NetNs, TempDir, bin, cli, daemon_section, need, sh};

const PBX: &str = "10.201.80.1";
const ATTACKER: &str = "10.201.80.2";
const PHONE: &str = "10.201.80.3";
const HEP_KEY: &str = "hep-test-key-7f3a";
const MAXRETRY: usize = 5;

/// Kamailio in the pbx namespace, mirroring over HEP; killed on drop.
struct HepLab {
    dir: TempDir,
    pbx: NetNs,
    atk: NetNs,
    pbx_if: String,
    run: std::path::PathBuf,
    kchild: std::process::Child,
}

impl Drop for HepLab {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path("kamailio.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.kchild.wait();
    }
}

impl HepLab {
    /// `tls`: also SIP over TLS on 5061, with a certificate made here.
    fn new(tag: &str, tls: bool) -> HepLab {
        let dir = TempDir::new(tag);
        let pbx = NetNs::new("h");
        let atk = NetNs::new("a");
        let (v1, v2) = (format!("{}v", pbx.name), format!("{}v", atk.name));
        sh(&[
            "ip", "link", "add", &v1, "netns", &pbx.name, "type", "veth", "peer", "name", &v2,
            "netns", &atk.name,
        ]);
        pbx.sh(&["ip", "addr", "add", &format!("{PBX}/24"), "dev", &v1]);
        atk.sh(&["ip", "addr", "add", &format!("{ATTACKER}/24"), "dev", &v2]);
        atk.sh(&["ip", "addr", "add", &format!("{PHONE}/24"), "dev", &v2]);
        pbx.sh(&["ip", "link", "set", &v1, "up"]);
        atk.sh(&["ip", "link", "set", &v2, "up"]);

        let run = dir.path("run");
        std::fs::create_dir_all(&run).unwrap();
        let mut args = Vec::new();
        if tls {
            let (key, cert) = (run.join("key.pem"), run.join("cert.pem"));
            let out = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .args(["-subj", &format!("/CN={PBX}")])
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl: {out:?}");
            std::fs::write(
                run.join("tls.cfg"),
                format!(
                    "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\nprivate_key = {}\ncertificate = {}\n\n[client:default]\nverify_certificate = no\nrequire_certificate = no\n",
                    key.display(),
                    cert.display()
                ),
            )
            .unwrap();
            args.extend(["-A", "WITH_TLS"]);
        }
        let cfg_text = include_str!("../fixtures/kamailio/kamailio-hep.cfg")
            .replace("@RUNDIR@", run.to_str().unwrap())
            .replace("@HEP_URI@", "sip:127.0.0.1:9060")
            .replace("@HEPKEY@", HEP_KEY);
        let kcfg = dir.path("kamailio.cfg");
        std::fs::write(&kcfg, cfg_text).unwrap();
        let klog = std::fs::File::create(dir.path("kamailio.log")).unwrap();
        let kchild = Command::new("ip")
            .args(["netns", "exec", &pbx.name, "kamailio", "-f"])
            .arg(&kcfg)
            .args(["-DD", "-E", "-P"])
            .arg(dir.path("kamailio.pid"))
            .arg("-Y")
            .arg(&run)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(klog)
            .spawn()
            .unwrap();
        let want = if tls { ":5061" } else { ":5060" };
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            pbx.sh(&["ss", "-Hlnu", "sport = :5060"]).contains(PBX)
                && (!tls || pbx.sh(&["ss", "-Hlnt", "sport = :5061"]).contains(want))
        });
        assert!(
            up,
            "kamailio did not come up: {}",
            std::fs::read_to_string(dir.path("kamailio.log")).unwrap_or_default()
        );
        HepLab {
            dir,
            pbx,
            atk,
            pbx_if: v1,
            run,
            kchild,
        }
    }

    /// sipwarden in the pbx namespace: a `hep` jail (Kamailio sends HEP
    /// from its SIP socket, 10.201.80.1, to 127.0.0.1:9060) and `extra`.
    /// Scanner user agents are off, so svcrack is caught by the answers
    /// it gets (403 to its credentials), not by its name.
    fn daemon(&self, jail: &str, extra: &str) -> Daemon {
        let cfg = self.dir.path("sipwarden.toml");
        std::fs::write(
            &cfg,
            format!(
                "{}[scanners]\nuser_agents = []\n\n[defaults]\nmaxretry = {MAXRETRY}\nfindtime = \"10m\"\nbantime = \"1h\"\n\n[jail.{jail}]\nhep = {{ listen = \"127.0.0.1:9060\", password = \"{HEP_KEY}\", allow = [\"{PBX}\", \"127.0.0.1\"] }}\nban_scanners = false\n{extra}",
                daemon_section(&self.dir)
            ),
        )
        .unwrap();
        let d = Daemon::start_with(Command::new("ip").args([
            "netns",
            "exec",
            &self.pbx.name,
            bin(),
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ]));
        for needle in ["hep: listening on", " started: "] {
            assert!(
                d.wait_for(needle, Duration::from_secs(30)).is_some(),
                "daemon did not start (no {needle:?})"
            );
        }
        d
    }

    /// One of Kamailio's reply counters (`sl` module statistics): how many
    /// 403s it sent is how many failures reached it.
    fn replies(&self, code: &str) -> usize {
        let sock = format!("unix:{}", self.run.join("kamailio_ctl").display());
        let out = Command::new("kamcmd")
            .args(["-s", &sock, "stats.get_statistics", "sl:"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let name = format!("sl:{code}_replies");
        text.lines()
            .filter_map(|l| l.split_once(" = "))
            .find(|(k, _)| k.trim() == name)
            .and_then(|(_, n)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("kamcmd answered {text:?} {out:?}"))
    }
}

/// Sends a SIP OPTIONS from `sock` and says whether Kamailio answered.
fn options_answered(sock: &UdpSocket) -> bool {
    let local = sock.local_addr().unwrap();
    let msg = format!(
        "OPTIONS sip:{PBX} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\nFrom: <sip:probe@{ip}>;tag=1\r\nTo: <sip:{PBX}>\r\nCall-ID: probe{}@{ip}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        std::process::id(),
        Instant::now().elapsed().as_nanos(),
        ip = local.ip()
    );
    let _ = sock.send_to(msg.as_bytes(), (PBX, 5060));
    sock.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 2048];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if buf[..n].starts_with(b"SIP/2.0 200"))
}

/// Issue 20: Kamailio with no failure log line, HEP only: svcrack is
/// banned after maxretry failures (at most maxretry + 1 reached Kamailio),
/// the SIPp phone with the right password never is.
#[test]
fn kamailio_hep_bans_svcrack_and_never_the_phone() {
    let Some(scenario) = crate::common::corpus("freeswitch-1.10.12/reg_auth.xml") else {
        return;
    };
    for g in ["netns", "kamailio", "sipvicious", "sipp"] {
        if !need(g) {
            return;
        }
    }
    let lab = HepLab::new("hepudp", false);
    // The burst rule off: this test is about maxretry (the default burst
    // rule, 3 failures within 2 s, bans svcrack earlier: the TLS test).
    let d = lab.daemon("kamailio-hep", "burst = false\n");
    let probe = Arc::new(lab.atk.run(|| UdpSocket::bind((ATTACKER, 5099)).unwrap()));
    assert!(options_answered(&probe), "Kamailio answers before the ban");

    // The phone registers with the right password (challenge, then 200).
    let users = lab.dir.path("users_ok.csv");
    std::fs::write(
        &users,
        "SEQUENTIAL\n1001;[authentication username=1001 password=goodpass1001];3600\n",
    )
    .unwrap();
    let sipp = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.atk.name,
            "timeout",
            "30",
            "sipp",
            "-sf",
        ])
        .arg(&scenario)
        .arg("-inf")
        .arg(&users)
        .args([
            "-i", PHONE, "-p", "5070", "-m", "1", "-timeout", "10", "-nostdin",
        ])
        .arg(format!("{PBX}:5060"))
        .current_dir(&lab.dir.0)
        .output()
        .unwrap();
    assert!(sipp.status.success(), "sipp: {sipp:?}");
    assert_eq!(lab.replies("403"), 0, "the phone's password was right");
    assert!(
        lab.replies("200") >= 2,
        "the phone registered (and OPTIONS)"
    );

    // svcrack: 60 wrong passwords for 1009.
    let words = lab.dir.path("words.txt");
    std::fs::write(
        &words,
        (0..60).map(|i| format!("wrong{i}\n")).collect::<String>(),
    )
    .unwrap();
    let crack = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.atk.name,
            "timeout",
            "60",
            "svcrack",
            "-u",
            "1009",
            "-d",
        ])
        .arg(&words)
        .args(["-b", ATTACKER, PBX])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ban = d
        .wait_for(
            &format!("[kamailio-hep] Ban {ATTACKER}"),
            Duration::from_secs(30),
        )
        .expect("svcrack banned through HEP");
    assert!(ban.contains(&format!("({MAXRETRY} failures, 1h)")), "{ban}");
    let _ = crack.wait_with_output();
    let reached = lab.replies("403");
    println!(
        "hep: {reached} of 60 svcrack failures reached Kamailio before the ban (maxretry {MAXRETRY})"
    );
    assert!(
        (MAXRETRY..=MAXRETRY + 1).contains(&reached),
        "{reached} failures reached Kamailio"
    );
    assert!(!options_answered(&probe), "banned: no answer");
    assert!(
        d.lines_with(&format!("Ban {PHONE}")).is_empty(),
        "the phone is never banned"
    );
    assert!(
        d.lines_with("Ban 127.0.0.1").is_empty() && d.lines_with(&format!("Ban {PBX}")).is_empty()
    );
    assert!(
        d.wait_for(
            &format!("hep: sender {PBX} seen; never banned"),
            Duration::from_secs(1)
        )
        .is_some(),
        "the HEP sender is protected"
    );
    let s: serde_json::Value =
        serde_json::from_slice(&cli(&lab.dir, &["status", "kamailio-hep", "--json"]).stdout)
            .unwrap();
    let src = &s["result"]["sources"][0];
    assert_eq!(src["kind"], "hep", "{s}");
    assert!(src["lines"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(src.get("dropped_auth").is_none(), "{s}");
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// The TLS attacker: REGISTERs with wrong passwords over one TLS
/// connection from ATTACKER (a challenge answered with a wrong digest,
/// `n` times). Returns how many answers it read before the link died.
const TLS_CLIENT: &str = r#"
import socket, ssl, sys, re
pbx, src, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
raw = socket.socket()
raw.settimeout(3)
raw.bind((src, 0))
raw.connect((pbx, 5061))
port = raw.getsockname()[1]
tls = ctx.wrap_socket(raw, server_hostname=pbx)
def ask(cseq, auth):
    msg = ("REGISTER sip:%s SIP/2.0\r\nVia: SIP/2.0/TLS %s:%d;branch=z9hG4bK%d\r\nMax-Forwards: 70\r\n"
           "From: <sip:1009@%s>;tag=t%d\r\nTo: <sip:1009@%s>\r\nCall-ID: tls-attack@%s\r\nCSeq: %d REGISTER\r\n"
           "Contact: <sip:1009@%s:%d;transport=tls>\r\n%sUser-Agent: tls-attacker\r\nContent-Length: 0\r\n\r\n"
           % (pbx, src, port, cseq, pbx, cseq, pbx, src, cseq, src, port, auth))
    tls.sendall(msg.encode())
    return tls.recv(65535).decode(errors="replace")
answers = 0
try:
    for i in range(n):
        r = ask(2 * i + 1, "")
        answers += 1
        nonce = re.search(r'nonce="([^"]+)"', r).group(1)
        auth = ('Authorization: Digest username="1009", realm="%s", nonce="%s", uri="sip:%s", '
                'response="%032x", qop=auth, nc=00000001, cnonce="c%d"\r\n' % (pbx, nonce, pbx, i, i))
        ask(2 * i + 2, auth)
        answers += 1
except Exception as e:
    print("stopped:", e, file=sys.stderr)
print(answers)
"#;

/// Issue 20: an attack over SIP-TLS, invisible to the wire sensor, is
/// banned through HEP; the HEP protocol chunk says TLS.
#[test]
fn kamailio_hep_bans_a_tls_attacker_the_wire_cannot_see() {
    for g in ["netns", "kamailio", "kamailio-tls", "openssl"] {
        if !need(g) {
            return;
        }
    }
    let lab = HepLab::new("heptls", true);
    // A wire sensor beside it, on the same link and both SIP ports.
    let wire = format!(
        "\n[jail.wire]\nwire = {{ interface = \"{}\", ports = [5060, 5061] }}\n",
        lab.pbx_if
    );
    // The SIP jails' default burst rule (3 failures within 2 s) bans here.
    let d = lab.daemon("kamailio-tls", &wire);
    let script = lab.dir.path("tls_attack.py");
    std::fs::write(&script, TLS_CLIENT).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.atk.name, "timeout", "60", "python3"])
        .arg(&script)
        // More attempts than it needs: on a loaded machine the ban may come
        // late, and the attack must still be going on when it does.
        .args([PBX, ATTACKER, "200"])
        .output()
        .unwrap();
    let ban = d
        .wait_for(
            &format!("[kamailio-tls] Ban {ATTACKER}"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| panic!("TLS attacker banned through HEP; client: {out:?}"));
    assert!(ban.contains("(3 failures in a burst, 1h)"), "{ban}");
    assert!(
        d.wait_for(
            "hep: first SIP over TLS (protocol 22)",
            Duration::from_secs(1)
        )
        .is_some(),
        "the HEP protocol chunk says TLS"
    );
    let reached = lab.replies("403");
    println!(
        "hep tls: {reached} of 200 wrong passwords over TLS reached Kamailio before the ban (burst: 3 within 2 s); client: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!((3..200).contains(&reached), "{reached}");
    // The wire sensor saw the TLS bytes and no SIP in them.
    let s: serde_json::Value =
        serde_json::from_slice(&cli(&lab.dir, &["status", "wire", "--json"]).stdout).unwrap();
    assert_eq!(s["result"]["sources"][0]["matched"], 0, "{s}");
    assert!(d.lines_with("[wire] Ban").is_empty());
    assert!(d.stop().is_some_and(|s| s.success()));
}

/// A port free for both UDP and TCP on loopback right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// A REGISTER with credentials from `client` and its 403, as HEPv3 with
/// `key` (the server 10.0.0.1 mirroring them).
fn rejected(client: &str, call: u32, key: &[u8]) -> [Vec<u8>; 2] {
    use sipwarden::source::hep::decode::encode_sip;
    let c = (client.parse().unwrap(), 5062);
    let s = ("10.0.0.1".parse().unwrap(), 5060);
    let reg = format!(
        "REGISTER sip:10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.99:5062;branch=z9hG4bK{call}\r\nTo: <sip:1009@10.0.0.1>\r\nCall-ID: {call}@x\r\nCSeq: 2 REGISTER\r\nAuthorization: Digest username=\"1009\"\r\nContent-Length: 0\r\n\r\n"
    );
    let ans = format!(
        "SIP/2.0 403 Forbidden\r\nTo: <sip:1009@10.0.0.1>;tag=s\r\nCall-ID: {call}@x\r\nCSeq: 2 REGISTER\r\nContent-Length: 0\r\n\r\n"
    );
    [
        encode_sip(c, s, 17, Some(key), reg.as_bytes()),
        encode_sip(s, c, 17, Some(key), ans.as_bytes()),
    ]
}

/// Issue 20: the HEP sender is never banned, even for failures the HEP
/// packets say it made (no ignoreip, no ignoreself here: only the sender
/// record protects it), while the address it reports is; packets from
/// outside `allow` or with a wrong key are dropped and counted in status.
#[test]
fn hep_senders_are_never_banned_and_outsiders_are_dropped() {
    let dir = TempDir::new("hepsend");
    let port = free_port();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 2\nignoreip = []\nignoreself = false\n[firewall]\nbackend = \"none\"\n\n[jail.hep]\nhep = {{ listen = \"127.0.0.1:{port}\", password = \"k\", allow = [\"127.0.0.2\"] }}\nburst = false\n",
            daemon_section(&dir)
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        d.wait_for("hep: listening on", Duration::from_secs(30))
            .is_some()
    );
    let to = ("127.0.0.1", port);
    let sender = UdpSocket::bind("127.0.0.2:0").unwrap();
    let outsider = UdpSocket::bind("127.0.0.3:0").unwrap();
    let send = |s: &UdpSocket, pkts: [Vec<u8>; 2]| {
        for p in pkts {
            s.send_to(&p, to).unwrap();
        }
    };
    for i in 0..3 {
        // From outside allow, with the right key; from the sender with a
        // wrong key: dropped.
        send(&outsider, rejected("198.51.100.9", 100 + i, b"k"));
        send(&sender, rejected("198.51.100.10", 200 + i, b"wrong"));
        // The sender's own address as the client: never banned.
        send(&sender, rejected("127.0.0.2", 300 + i, b"k"));
    }
    for i in 0..3 {
        send(&sender, rejected("192.0.2.7", 400 + i, b"k"));
    }
    let ban = d.wait_for("[hep] Ban 192.0.2.7", Duration::from_secs(20));
    assert!(
        ban.is_some_and(|b| b.contains("(2 failures")),
        "the reported address is banned"
    );
    for addr in ["127.0.0.2", "198.51.100.9", "198.51.100.10"] {
        assert!(
            d.lines_with(&format!("Ban {addr}")).is_empty(),
            "{addr} banned"
        );
    }
    let s: serde_json::Value =
        serde_json::from_slice(&cli(&dir, &["status", "hep", "--json"]).stdout).unwrap();
    let src = &s["result"]["sources"][0];
    assert_eq!(src["kind"], "hep", "{s}");
    assert_eq!(src["dropped_sender"], 6, "{s}");
    assert_eq!(src["dropped_auth"], 6, "{s}");
    assert_eq!(src["lines"], 12, "{s}");
    let text = String::from_utf8_lossy(&cli(&dir, &["status", "hep"]).stdout).into_owned();
    assert!(
        text.contains("6 dropped from senders outside allow"),
        "{text}"
    );
    assert!(d.stop().is_some_and(|s| s.success()));
}
