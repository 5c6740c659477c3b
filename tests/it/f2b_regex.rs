//! The differential with fail2ban itself: Debian's `fail2ban-regex
//! --usedns=no` (fail2ban 1.0.2) and `sipwarden test-filter` run every stock
//! filter of /etc/fail2ban/filter.d over its sample log from the corpus
//! (fail2ban 1.1's) and must report the same four counts: lines, ignored,
//! matched, missed. Where 1.0.2's filter and the 1.1 sample disagree (a
//! sample line the old filter misses), both tools must still agree.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::{TempDir, bin, corpus, need};

/// Filters the corpus has sample logs for that Debian 12's fail2ban 1.0.2
/// does not ship: nothing to compare with.
const NOT_IN_DEBIAN: &[(&str, &str)] = &[
    ("cowrie", "added in fail2ban 1.1"),
    ("dante", "added in fail2ban 1.1"),
    ("nginx-forbidden", "added in fail2ban 1.1"),
    ("openvpn", "added in fail2ban 1.1"),
    ("proxmox", "added in fail2ban 1.1"),
    ("routeros-auth", "added in fail2ban 1.1"),
    ("vaultwarden", "added in fail2ban 1.1"),
    ("xrdp", "added in fail2ban 1.1"),
    (
        "zzz-generic-example",
        "a test filter of fail2ban's own test folder, not a stock filter",
    ),
    (
        "zzz-sshd-obsolete-multiline",
        "a test filter of fail2ban's own test folder, not a stock filter",
    ),
];

/// Sample lines left out of the comparison (filter, text the line
/// contains, why): fail2ban-regex does not finish them.
const LINES_LEFT_OUT: &[(&str, &str, &str)] = &[(
    "domino-smtp",
    "smtp: A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A A 192.0.2.5\n",
    "1.0.2's second failregex backtracks exponentially on this line (the \
     case fail2ban 1.1 fixed its regex for): fail2ban-regex does not finish",
)];

/// Threads running the two tools at once (two cores here).
const THREADS: usize = 2;
/// A fail2ban-regex run that takes longer is stopped and reported.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The four counts, as both tools print them.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    lines: u64,
    ignored: u64,
    matched: u64,
    missed: u64,
}

/// Runs `cmd`, stopping it after `RUN_TIMEOUT`; its standard output.
fn run_bounded(mut cmd: Command) -> Result<String, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let out = reader.join().unwrap_or_default();
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    return Err(format!("{cmd:?}: {status}: {err}{out}"));
                }
                return Ok(out);
            }
            Ok(None) if start.elapsed() > RUN_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?}: still running after {RUN_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{cmd:?}: {e}")),
        }
    }
}

/// fail2ban-regex's `Lines: N lines, I ignored, M matched, X missed`.
fn fail2ban_counts(log: &Path, filter: &Path) -> Result<Counts, String> {
    let mut cmd = Command::new("fail2ban-regex");
    cmd.arg("--usedns=no").arg(log).arg(filter);
    let out = run_bounded(cmd)?;
    let line = out
        .lines()
        .find(|l| l.starts_with("Lines: "))
        .ok_or_else(|| format!("no Lines: in fail2ban-regex's output:\n{out}"))?;
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match n[..] {
        [lines, ignored, matched, missed] => Ok(Counts {
            lines,
            ignored,
            matched,
            missed,
        }),
        _ => Err(format!("unexpected counts line {line:?}")),
    }
}

fn sipwarden_counts(log: &Path, filter: &Path) -> Result<Counts, String> {
    let mut cmd = Command::new(bin());
    cmd.arg("test-filter").arg(log).arg(filter).arg("--json");
    let out = run_bounded(cmd)?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    let n = |k: &str| v[k].as_u64().ok_or_else(|| format!("no {k} in {out}"));
    Ok(Counts {
        lines: n("lines")?,
        ignored: n("ignored")?,
        matched: n("matched")?,
        missed: n("missed")?,
    })
}

/// The sample log to compare on: the corpus's, or a copy without the
/// lines left out.
fn sample_log(name: &str, logs: &Path, tmp: &Path) -> PathBuf {
    let log = logs.join(name);
    let drop: Vec<&str> = LINES_LEFT_OUT
        .iter()
        .filter(|(f, _, _)| *f == name)
        .map(|(_, text, _)| *text)
        .collect();
    if drop.is_empty() {
        return log;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| !drop.iter().any(|d| l.ends_with(d)))
        .collect();
    assert!(kept.len() < text.len(), "{name}: no line left out");
    let copy = tmp.join(name);
    std::fs::write(&copy, kept).unwrap();
    copy
}

#[test]
fn test_filter_counts_as_fail2ban_regex_on_every_stock_filter() {
    if !need("fail2ban") {
        return;
    }
    let Some(base) = corpus("fail2ban-1.1.2.dev1") else {
        return;
    };
    let logs = base.join("tests/files/logs");
    let debian = Path::new("/etc/fail2ban/filter.d");
    let mut jobs = Vec::new();
    for e in std::fs::read_dir(debian).unwrap().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".conf") else {
            continue;
        };
        // Included by filters, not filters themselves.
        if name.ends_with("common") {
            continue;
        }
        if logs.join(name).is_file() {
            jobs.push(name.to_string());
        }
    }
    jobs.sort();
    // Every sample log is compared or excluded by name.
    for e in std::fs::read_dir(base.join("config/filter.d"))
        .unwrap()
        .flatten()
    {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".conf") else {
            continue;
        };
        if !logs.join(name).is_file() || jobs.iter().any(|j| j == name) {
            continue;
        }
        assert!(
            NOT_IN_DEBIAN.iter().any(|(n, _)| *n == name),
            "{name}: a sample log without its filter in {}: list it in NOT_IN_DEBIAN",
            debian.display()
        );
    }
    for (n, why) in NOT_IN_DEBIAN {
        assert!(
            !jobs.iter().any(|j| j == n),
            "{n} is listed as missing from Debian ({why}) but is there: compare it"
        );
    }
    assert!(jobs.len() >= 80, "only {} filters to compare", jobs.len());
    let tmp = TempDir::new("f2b-regex");
    let t0 = Instant::now();
    let queue = Mutex::new(jobs.clone());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                loop {
                    let Some(name) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let log = sample_log(&name, &logs, &tmp.0);
                    let filter = debian.join(format!("{name}.conf"));
                    let theirs = fail2ban_counts(&log, &filter);
                    let ours = sipwarden_counts(&log, &filter);
                    results.lock().unwrap().push((name, theirs, ours));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut wrong = Vec::new();
    for (name, theirs, ours) in &results {
        match (theirs, ours) {
            (Ok(t), Ok(o)) if t == o => {}
            _ => wrong.push(format!(
                "{name}: fail2ban-regex {theirs:?}, sipwarden {ours:?}"
            )),
        }
    }
    eprintln!(
        "f2b_regex: {} filters compared in {:.1} s on {THREADS} threads",
        results.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(results.len(), jobs.len());
    assert!(wrong.is_empty(), "counts differ:\n{}", wrong.join("\n"));
}
