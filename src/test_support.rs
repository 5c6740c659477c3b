//! What a test needs from the machine, checked the same way by unit tests
//! (`crate::test_support`) and integration tests (`tests/it/common.rs`
//! includes this file).
//!
//! A test that cannot run fails and says what is missing; it never returns
//! green. The one way out is explicit: `SIPWARDEN_TEST_SKIP=netns,chromium`
//! names groups to skip, and each skip is written straight to the terminal
//! (past the test harness's capture) so the run's output lists it. CI never
//! sets it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The groups a test may need, with what each checks.
pub const GROUPS: &[(&str, &str)] = &[
    ("netns", "root, with `ip` (iproute2) and `nft` (nftables)"),
    ("conntrack", "the `conntrack` command (conntrack)"),
    ("redis", "`redis-server` and `redis-cli` (redis-server)"),
    ("openssl", "the `openssl` command (openssl)"),
    ("curl", "the `curl` command (curl)"),
    (
        "chromium",
        "`chromium` and `chromedriver` (chromium, chromium-driver)",
    ),
    ("kamailio", "`kamailio` and `kamcmd` (kamailio)"),
    (
        "kamailio-tls",
        "Kamailio's tls module (kamailio-tls-modules)",
    ),
    ("sipp", "`sipp` (sip-tester)"),
    ("sipvicious", "`svcrack` and `svmap` (sipvicious)"),
    ("strace", "`strace` (strace)"),
    ("faketime", "libfaketime's libfaketimeMT.so.1 (faketime)"),
    (
        "journal",
        "`/lib/systemd/systemd-journal-remote` (systemd-journal-remote) and libsystemd.so.0 (libsystemd0)",
    ),
    (
        "fail2ban",
        "Debian's `fail2ban-regex` and /etc/fail2ban/filter.d (fail2ban; its service not running)",
    ),
    (
        "corpus",
        "the reference data in ../shared/corpus beside the checkout",
    ),
];

/// Writes journal files from the journal export format (the `journal`
/// group).
pub const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

#[cfg(test)]
pub(crate) use journal_files::{export_entry, write_journal};

/// The reference corpus beside the checkout.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
}

/// The path of `rel` in the reference corpus: `None` only when the run
/// opted out of the `corpus` group; a missing corpus or file fails the
/// test, naming the path.
pub fn corpus_path(rel: &str) -> Option<PathBuf> {
    if !need("corpus") {
        return None;
    }
    let path = corpus_dir().join(rel);
    assert!(path.exists(), "{} is missing", path.display());
    Some(path)
}

/// The bytes of `rel` in the reference corpus, as [`corpus_path`] finds it.
#[allow(
    dead_code,
    reason = "the unit tests read corpus files whole; tests/it, which includes this file too, passes paths"
)]
pub fn corpus_file(rel: &str) -> Option<Vec<u8>> {
    let path = corpus_path(rel)?;
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn runs(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty())
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// What is missing for `group`, or `None` when the machine has it.
pub fn missing(group: &str) -> Option<String> {
    let what = GROUPS
        .iter()
        .find(|(g, _)| *g == group)
        .map(|(_, w)| *w)
        .unwrap_or_else(|| panic!("unknown test group {group:?}"));
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = match group {
        "netns" => root && runs("ip", "-V") && runs("nft", "-v"),
        "conntrack" => on_path("conntrack"),
        "redis" => on_path("redis-server") && on_path("redis-cli"),
        "openssl" => on_path("openssl"),
        "curl" => on_path("curl"),
        "chromium" => on_path("chromium") && on_path("chromedriver"),
        "kamailio" => on_path("kamailio") && on_path("kamcmd"),
        "kamailio-tls" => Path::new("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so").exists(),
        "sipp" => on_path("sipp"),
        "sipvicious" => on_path("svcrack") && on_path("svmap"),
        "strace" => on_path("strace"),
        "faketime" => Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1").exists(),
        "journal" => {
            Path::new(JOURNAL_REMOTE).is_file()
                && [
                    "/usr/lib/x86_64-linux-gnu",
                    "/lib/x86_64-linux-gnu",
                    "/usr/lib64",
                    "/usr/lib",
                ]
                .iter()
                .any(|d| Path::new(d).join("libsystemd.so.0").exists())
        }
        "fail2ban" => on_path("fail2ban-regex") && Path::new("/etc/fail2ban/filter.d").is_dir(),
        "corpus" => corpus_dir().join("freeswitch-1.10.12").is_dir(),
        _ => false,
    };
    (!ok).then(|| format!("needs {what}"))
}

/// Whether the run opted out of `group` (`SIPWARDEN_TEST_SKIP`).
pub fn opted_out(group: &str) -> bool {
    std::env::var("SIPWARDEN_TEST_SKIP")
        .is_ok_and(|v| v.split(',').any(|g| g.trim() == group || g.trim() == "all"))
}

/// Checks that the machine has what `group` needs. Returns `true` when the
/// test can run; panics saying what is missing otherwise, unless the run
/// opted out of the group, in which case it says so on the terminal and
/// returns `false` (the test then returns).
pub fn need(group: &str) -> bool {
    let Some(why) = missing(group) else {
        return true;
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if opted_out(group) {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {why} (SIPWARDEN_TEST_SKIP lists {group})"
        );
        return false;
    }
    panic!(
        "{test} cannot run: it {why}. Install it (bash .ci/run installs everything), \
         or opt out explicitly with SIPWARDEN_TEST_SKIP={group}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_is_checked_and_unknown_groups_are_refused() {
        for (g, _) in GROUPS {
            // Present or missing, each group answers without panicking.
            let _ = missing(g);
        }
        assert!(std::panic::catch_unwind(|| missing("no-such-group")).is_err());
    }
}

/// Journal files for tests, made with `systemd-journal-remote`.
#[cfg(test)]
pub(crate) mod journal_files {
    use std::io::Write;
    use std::path::Path;
    use std::process::Command;

    use super::JOURNAL_REMOTE;

    /// Makes the journal file `out` (which must end in `.journal`) from
    /// `export`, text in the journal export format, with `systemd-journal-remote`
    /// (appending when `out` exists).
    pub fn write_journal(out: &Path, export: &str) {
        let mut child = Command::new(JOURNAL_REMOTE)
            .arg(format!("--output={}", out.display()))
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{JOURNAL_REMOTE}: {e}"));
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(export.as_bytes())
            .expect("writing the export");
        let o = child.wait_with_output().expect("systemd-journal-remote");
        assert!(
            o.status.success(),
            "{JOURNAL_REMOTE} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// One journal entry in the export format: `fields` as `NAME=value`, with
    /// `__REALTIME_TIMESTAMP` (`usec`), a monotonic time and a boot id.
    pub fn export_entry(usec: u64, fields: &[&str]) -> String {
        let mut s = format!(
            "__REALTIME_TIMESTAMP={usec}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=5e1ec7ed5e1ec7ed5e1ec7ed5e1ec7ed\n",
            usec % 1_000_000_000_000
        );
        for f in fields {
            s.push_str(f);
            s.push('\n');
        }
        s.push('\n');
        s
    }
}
