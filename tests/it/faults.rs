//! Faults: SIGTERM in the middle of a burst, kill -9 and restart, a full
//! state disk, a storm of log rotations. Each runs the real daemon with the
//! nftables backend in a namespace this test creates. Needs root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use sipwarden::event::Time;
use sipwarden::store::Store;

use crate::common::{NetNs, TempDir, append, cli, daemon_section, need, start_in, wait_until};

fn config(dir: &TempDir, extra: &str) -> std::path::PathBuf {
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nbantime = \"1h\"\nignoreself = false\n{extra}\n[jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}\"\n",
            daemon_section(dir),
            dir.path("freeswitch.log").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.path("freeswitch.log"), "").unwrap();
    cfg
}

/// `n` failure lines from `n` addresses counting up from `base`.
fn burst(base: u32, n: u32) -> String {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S");
    (0..n)
        .map(|i| {
            let a = Ipv4Addr::from(base + i);
            format!("{now} [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1@h] from ip {a}\n")
        })
        .collect()
}

fn kernel_set(ns: &NetNs) -> BTreeSet<String> {
    ns.addresses("banned_v4")
}

fn stored(dir: &TempDir) -> BTreeSet<String> {
    let s = Store::open(&dir.path("state"), Time::now()).unwrap();
    s.active(Time::now())
        .unwrap()
        .iter()
        .map(|b| b.addr.addr().to_string())
        .collect()
}

/// The addresses the daemon logged as banned.
fn logged(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l.split("] Ban ").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn sigterm_during_a_burst_loses_no_decided_ban() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("term");
    let dir = TempDir::new("term");
    let cfg = config(&dir, "maxretry = 1");
    let d = start_in(&ns, &cfg);
    append(&dir.path("freeswitch.log"), &burst(0x0a40_0000, 30_000));
    // Stop while the burst is being read and banned.
    assert!(wait_until(Duration::from_secs(20), || !d
        .lines_with("] Ban ")
        .is_empty()));
    let mut d = d;
    let status = d.terminate();
    assert!(status.is_some_and(|s| s.success()), "SIGTERM stops cleanly");
    // The daemon's last words are read to the end before they are counted.
    d.wait_for("SIGTERM", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let decided = logged(&d.lines_with("] Ban "));
    // Every ban decided before the exit, including those logged after the
    // signal, is in the store and (keep_on_exit) in the kernel.
    let store = stored(&dir);
    let kernel = kernel_set(&ns);
    println!(
        "SIGTERM mid-burst: {} banned in the store, {} in the kernel",
        store.len(),
        kernel.len()
    );
    assert!(!decided.is_empty());
    assert!(
        decided.is_subset(&store),
        "{} decided bans missing from the store",
        decided.difference(&store).count()
    );
    assert_eq!(store, kernel, "store and kernel agree after SIGTERM");
}

#[test]
fn kill_9_mid_burst_then_restart_leaves_store_and_kernel_equal() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("k9");
    let dir = TempDir::new("k9");
    let cfg = config(&dir, "maxretry = 1");
    let mut d = start_in(&ns, &cfg);
    append(&dir.path("freeswitch.log"), &burst(0x0a41_0000, 30_000));
    // Kill once the first bans are in the kernel and the store (a ban is
    // stored once the kernel accepted it), with more on the way.
    let stored_now = || {
        Store::open_read_only(&dir.path("state"))
            .and_then(|s| s.active(Time::now()))
            .is_ok_and(|a| !a.is_empty())
    };
    assert!(wait_until(Duration::from_secs(20), || !kernel_set(&ns)
        .is_empty()
        && stored_now()));
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    drop(d);
    let before = kernel_set(&ns);

    let d = start_in(&ns, &cfg);
    d.wait_for("restored ", Duration::from_secs(30))
        .expect("restore line");
    let store = stored(&dir);
    let kernel = kernel_set(&ns);
    println!(
        "kill -9 mid-burst: kernel held {} at the kill; after restart store {} = kernel {}",
        before.len(),
        store.len(),
        kernel.len()
    );
    assert!(!store.is_empty());
    assert_eq!(store, kernel, "after a restart the kernel holds the store");
    // Still working: the rest of the log is read on from where it stood,
    // and a new attacker is banned.
    append(&dir.path("freeswitch.log"), &burst(0x0a42_0000, 1));
    assert!(
        wait_until(Duration::from_secs(20), || kernel_set(&ns)
            .contains("10.66.0.0")),
        "a new attacker after the restart is banned"
    );
    drop(d);
}

#[test]
fn a_full_state_disk_keeps_enforcing_and_catches_up() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("full");
    let dir = TempDir::new("full");
    let state = dir.path("state");
    std::fs::create_dir_all(&state).unwrap();
    // A 4 MiB file system of our own for the state directory.
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "swtest",
            state.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "cannot mount a tmpfs at {} (needs root)",
        state.display()
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(state.clone());
    let cfg = config(&dir, "maxretry = 1");
    let d = start_in(&ns, &cfg);
    append(&dir.path("freeswitch.log"), &burst(0x0a43_0000, 10));
    assert!(wait_until(Duration::from_secs(20), || kernel_set(&ns)
        .len()
        == 10));

    // Fill the disk.
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    append(&dir.path("freeswitch.log"), &burst(0x0a43_1000, 2_000));
    assert!(
        wait_until(Duration::from_secs(30), || kernel_set(&ns).len() == 2_010),
        "bans are enforced while the disk is full"
    );
    let err = d
        .wait_for("bans are still enforced", Duration::from_secs(20))
        .expect("the store error is logged");
    println!("disk full: {err}");

    // Space again: the waiting records are written.
    std::fs::remove_file(&filler).unwrap();
    let ok = d
        .wait_for("state store writable again", Duration::from_secs(20))
        .expect("the store catches up");
    println!("disk freed: {ok}");
    let status = d.stop();
    assert!(status.is_some_and(|s| s.success()));
    let store = stored(&dir);
    assert_eq!(store.len(), 2_010, "every ban was recorded after all");
}

/// Failures the jail has counted so far, from `status --json`.
fn counted(dir: &TempDir) -> u64 {
    let out = cli(dir, &["status", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["result"]["jails"][0]["total_failed"].as_u64())
        .unwrap_or(0)
}

#[test]
fn rotations_lose_no_line_and_a_storm_does_not_derail_the_follower() {
    if !need("netns") {
        return;
    }
    let ns = NetNs::new("rot");
    let dir = TempDir::new("rot");
    // Count only: nobody reaches maxretry, so a line read twice would show
    // as an extra count.
    let cfg = config(&dir, "maxretry = 1000000");
    let d = start_in(&ns, &cfg);
    let log = dir.path("freeswitch.log");
    let mut written = 0u64;
    // 100 rotations, each with a line written just before the rename (read
    // through the old handle) and one in the new file (read from its start).
    for i in 0..100u32 {
        append(&log, &burst(0x0a44_0000 + 2 * i, 1));
        std::fs::rename(&log, dir.path(&format!("freeswitch.log.{i}"))).unwrap();
        std::fs::write(&log, burst(0x0a44_0000 + 2 * i + 1, 1)).unwrap();
        written += 2;
        assert!(
            wait_until(Duration::from_secs(10), || counted(&dir) >= written),
            "rotation {i}: {} of {written} lines counted",
            counted(&dir)
        );
    }
    assert_eq!(counted(&dir), written, "no line counted twice");
    // A storm: 300 rotations as fast as they go, older generations
    // overwritten (`.0` .. `.2`). Generations renamed away before the
    // follower woke up are read where they went, unless a later rename
    // overwrote them first (those are gone); what holds is that it stays on
    // the newest file and counts nothing twice.
    let t0 = Instant::now();
    for i in 0..300u32 {
        append(&log, &burst(0x0a45_0000 + i, 1));
        std::fs::rename(&log, dir.path(&format!("storm.{}", i % 3))).unwrap();
        std::fs::write(&log, "").unwrap();
    }
    let storm = written + 300;
    println!("300 rotations in {:?}", t0.elapsed());
    append(&log, &burst(0x0a46_0000, 5));
    assert!(
        wait_until(Duration::from_secs(20), || counted(&dir) >= written + 5),
        "the follower is on the newest file after the storm"
    );
    std::thread::sleep(Duration::from_millis(500));
    let n = counted(&dir);
    println!("storm: {} of 300 storm lines seen", n - written - 5);
    assert!(n <= storm + 5, "no line counted twice: {n} > {}", storm + 5);
    drop(d);
}
