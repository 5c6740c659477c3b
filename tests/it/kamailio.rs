//! A real attack end to end: Kamailio (Debian's package) as the registrar in
//! a `pbx` namespace, logging the recommended `AUTH FAILED` line; sipwarden
//! following that log with the nftables backend; SIPVicious `svcrack`
//! attacking from one address and a legitimate SIPp phone registering from
//! another.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Daemon, NetNs, TempDir, bin, cli, daemon_section, need, sh};

const PBX: &str = "10.201.80.1";
const ATTACKER: &str = "10.201.80.2";
const PHONE: &str = "10.201.80.3";

/// Kamailio in the `pbx` namespace; killed on drop.
struct Kamailio {
    pid_file: std::path::PathBuf,
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
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

/// Kamailio in a `pbx` namespace joined by a veth pair to an `atk`
/// namespace holding the attacker's and the phone's addresses.
struct Lab {
    dir: TempDir,
    pbx: NetNs,
    atk: NetNs,
    /// The pbx side of the veth pair.
    pbx_if: String,
    klog: std::path::PathBuf,
    kam: Option<Kamailio>,
    kchild: std::process::Child,
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.kam.take());
        let _ = self.kchild.wait();
    }
}

impl Lab {
    /// `None` (with the reason printed) when the tools or the corpus are
    /// missing.
    fn new(tag: &str, groups: &[&str]) -> Option<Lab> {
        if !need("netns") {
            return None;
        }
        for group in groups {
            if !need(group) {
                return None;
            }
        }
        let dir = TempDir::new(tag);
        let pbx = NetNs::new("k");
        let atk = NetNs::new("c");
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

        // Kamailio, from the verified fixture, with its files in the temp dir.
        let run = dir.path("run");
        std::fs::create_dir_all(&run).unwrap();
        let cfg_text = include_str!("../fixtures/kamailio/kamailio.cfg")
            .replace("@RUNDIR@", run.to_str().unwrap());
        let kcfg = dir.path("kamailio.cfg");
        std::fs::write(&kcfg, cfg_text).unwrap();
        let klog = dir.path("kamailio.log");
        std::fs::write(&klog, "").unwrap();
        let kam = Kamailio {
            pid_file: dir.path("kamailio.pid"),
        };
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&klog)
            .unwrap();
        let kchild = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pbx.name,
                "kamailio",
                "-f",
                kcfg.to_str().unwrap(),
                "-DD",
                "-E",
                "-P",
            ])
            .arg(&kam.pid_file)
            .arg("-Y")
            .arg(&run)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            pbx.sh(&["ss", "-Hlun", "sport = :5060"]).contains(PBX)
        });
        assert!(
            up,
            "kamailio did not come up: {}",
            std::fs::read_to_string(&klog).unwrap_or_default()
        );
        Some(Lab {
            dir,
            pbx,
            atk,
            pbx_if: v1,
            klog,
            kam: Some(kam),
            kchild,
        })
    }

    /// sipwarden inside the pbx namespace with `cfg`.
    fn daemon(&self, cfg: &std::path::Path, ready: &str) -> Daemon {
        let d = Daemon::start_with(Command::new("ip").args([
            "netns",
            "exec",
            &self.pbx.name,
            bin(),
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ]));
        assert!(d.wait_for(ready, Duration::from_secs(20)).is_some());
        d
    }

    /// svcrack with `n` wrong passwords for 1009, in the background.
    fn svcrack(&self, n: usize) -> std::process::Child {
        let words = self.dir.path("words.txt");
        std::fs::write(
            &words,
            (0..n).map(|i| format!("wrong{i}\n")).collect::<String>(),
        )
        .unwrap();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.atk.name,
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
            .unwrap()
    }

    /// Failures Kamailio logged for the attacker.
    fn reached(&self) -> usize {
        std::fs::read_to_string(&self.klog)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("AUTH FAILED") && l.contains(&format!("ip={ATTACKER} ")))
            .count()
    }
}

#[test]
fn svcrack_is_banned_at_its_third_failure_and_a_real_phone_is_not() {
    let Some(scenario) = crate::common::corpus("freeswitch-1.10.12/reg_auth.xml") else {
        return;
    };
    let Some(lab) = Lab::new("kam", &["kamailio", "sipvicious", "sipp"]) else {
        return;
    };
    let (dir, atk, klog) = (&lab.dir, &lab.atk, &lab.klog);

    // sipwarden following Kamailio's log, nftables backend.
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 5\nfindtime = \"10m\"\nbantime = \"1h\"\n\n[jail.kamailio]\nfilter = \"kamailio\"\nlogpath = \"{}\"\n",
            daemon_section(dir),
            klog.display()
        ),
    )
    .unwrap();
    let d = lab.daemon(&cfg, ": following");

    // A probe socket on the attacker's address: Kamailio answers OPTIONS.
    let probe = Arc::new(atk.run(|| UdpSocket::bind((ATTACKER, 5099)).unwrap()));
    assert!(
        options_answered(&probe),
        "Kamailio must answer before the ban"
    );

    // A legitimate phone registers with the right password from a third address.
    let users = dir.path("users_ok.csv");
    std::fs::write(
        &users,
        "SEQUENTIAL\n1001;[authentication username=1001 password=goodpass1001];3600\n",
    )
    .unwrap();
    let sipp = Command::new("ip")
        .args(["netns", "exec", &atk.name, "timeout", "30", "sipp", "-sf"])
        .arg(&scenario)
        .arg("-inf")
        .arg(&users)
        .args([
            "-i",
            PHONE,
            "-p",
            "5070",
            "-m",
            "1",
            "-timeout",
            "10",
            "-nostdin",
            &format!("{PBX}:5060"),
        ])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        sipp.status.success(),
        "sipp: {}",
        String::from_utf8_lossy(&sipp.stderr)
    );

    // svcrack: 60 wrong passwords for 1009 at full speed.
    let t0 = Instant::now();
    let crack = lab.svcrack(60);
    let ban = d
        .wait_for(
            &format!("[kamailio] Ban {ATTACKER}"),
            Duration::from_secs(30),
        )
        .expect("svcrack banned");
    println!("ban {:?} after svcrack started: {ban}", t0.elapsed());
    // svcrack fails many times a second: the SIP jail's default burst rule
    // (3 within 2 s) bans before maxretry (5), in the real kernel.
    assert!(ban.contains("(3 failures in a burst, 1h)"), "{ban}");
    // svcrack gives up after its own 10 s of silence.
    let _ = crack.wait_with_output();

    // What reached Kamailio before the ban took effect (the W0 figure).
    let log = std::fs::read_to_string(klog).unwrap();
    let reached = lab.reached();
    println!(
        "W0: {reached} of 60 svcrack failures reached Kamailio before the ban (burst: 3 within 2 s)"
    );
    assert!(
        (3..60).contains(&reached),
        "the ban must stop svcrack: {reached} failures reached Kamailio"
    );
    // After the ban the attacker gets no answer.
    assert!(!options_answered(&probe), "banned address still answered");
    // The phone was never banned, and registered.
    assert!(d.lines_with(&format!("Ban {PHONE}")).is_empty());
    assert!(
        log.contains(&format!("AUTH OK: user=1001 ip={PHONE}")),
        "the phone registered"
    );
    let s: serde_json::Value =
        serde_json::from_slice(&cli(dir, &["status", "kamailio", "--json"]).stdout).unwrap();
    assert_eq!(
        s["result"]["banned"].as_array().map(Vec::len),
        Some(1),
        "{s}"
    );

    // Unban restores service.
    assert!(cli(dir, &["unban", ATTACKER]).status.success());
    let back = (0..20).any(|_| options_answered(&probe));
    assert!(back, "service restored after unban");
    assert!(d.stop().is_some_and(|s| s.success()));
}

#[test]
fn wire_only_detection_bans_svcrack_and_svmap() {
    let Some(lab) = Lab::new("wire", &["kamailio", "sipvicious"]) else {
        return;
    };
    // No log at all: the sensor watches SIP on the pbx side of the link.
    // Scanner user agents off first, so svcrack is caught by the answers
    // it gets (401 to its credentials), not by its name.
    let write_cfg = |scanners: &str| {
        let cfg = lab.dir.path("sipwarden.toml");
        std::fs::write(
            &cfg,
            format!(
                "{}[defaults]\nmaxretry = 5\nbantime = \"1h\"\nignoreself = false\n{scanners}\n[jail.wire]\nwire = {{ interface = \"{}\", ports = [5060] }}\nban_scanners = true\n",
                daemon_section(&lab.dir),
                lab.pbx_if
            ),
        )
        .unwrap();
        cfg
    };
    let cfg = write_cfg("[scanners]\nuser_agents = []");
    let d = lab.daemon(&cfg, "wire: capturing SIP");
    let probe = Arc::new(lab.atk.run(|| UdpSocket::bind((ATTACKER, 5099)).unwrap()));
    assert!(options_answered(&probe), "Kamailio answers before the ban");
    let crack = lab.svcrack(60);
    let ban = d
        .wait_for(&format!("[wire] Ban {ATTACKER}"), Duration::from_secs(30))
        .expect("svcrack banned from wire traffic alone");
    assert!(ban.contains("(3 failures in a burst, 1h)"), "{ban}");
    let _ = crack.wait_with_output();
    let reached = lab.reached();
    println!(
        "wire: {reached} of 60 svcrack failures reached Kamailio before the ban (burst: 3 within 2 s)"
    );
    assert!((3..60).contains(&reached), "{reached}");
    assert!(!options_answered(&probe), "banned from the wire");
    assert!(cli(&lab.dir, &["unban", ATTACKER]).status.success());
    assert!(d.stop().is_some_and(|s| s.success()));

    // svmap's OPTIONS scan: its user agent gives it away at once.
    let cfg = write_cfg("");
    let d = lab.daemon(&cfg, "wire: capturing SIP");
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.atk.name,
            "timeout",
            "30",
            "svmap",
            PBX,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let ban = d
        .wait_for(&format!("[wire] Ban {ATTACKER}"), Duration::from_secs(20))
        .expect("svmap banned from wire traffic alone");
    println!("svmap: {ban}");
    assert!(d.stop().is_some_and(|s| s.success()));
}
