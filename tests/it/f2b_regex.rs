//! The differential with fail2ban itself: Debian's `fail2ban-regex
//! --usedns=no` (fail2ban 1.0.2) and `sipwarden test-filter` run every stock
//! filter of /etc/fail2ban/filter.d over its sample log from the corpus
//! (fail2ban 1.1's) and must report the same four counts: lines, ignored,
//! matched, missed, and the same lines matched and missed. Each filter runs
//! with its default options and with every option set its sample log names
//! (`# filterOptions`, e.g. `sshd[mode=aggressive]`). Where 1.0.2's filter
//! and the 1.1 sample disagree (a sample line the old filter misses, a mode
//! 1.0.2 does not have), both tools must still agree, refusing the same
//! filters.

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

/// What a tool made of a log: the four counts and the matched and missed
/// lines (sorted), or that it refused the filter.
#[derive(Debug, PartialEq, Eq)]
enum Run {
    Counted {
        lines: u64,
        ignored: u64,
        matched: u64,
        missed: u64,
        matched_lines: Vec<String>,
        missed_lines: Vec<String>,
    },
    Refused,
}

/// Runs `cmd`, stopping it after `RUN_TIMEOUT`: whether it exited 0, and
/// its standard output and error.
fn run_bounded(mut cmd: Command) -> Result<(bool, String, String), String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > RUN_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?}: still running after {RUN_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{cmd:?}: {e}")),
        }
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    Ok((status.success(), out, err))
}

/// Lines as compared: without trailing blanks (fail2ban-regex may keep a
/// carriage return), sorted (the order lines taken by a multi-line match
/// are listed in differs).
fn sorted(mut v: Vec<String>) -> Vec<String> {
    for l in &mut v {
        l.truncate(l.trim_end().len());
    }
    v.sort();
    v
}

/// fail2ban-regex's `Lines: N lines, I ignored, M matched, X missed` and
/// its `|- Matched line(s):` and `|- Missed line(s):` lists.
fn fail2ban_run(log: &Path, spec: &str) -> Result<Run, String> {
    let mut cmd = Command::new("fail2ban-regex");
    cmd.args(["--usedns=no", "--print-all-matched", "--print-all-missed"])
        .arg(log)
        .arg(spec);
    let (ok, out, err) = run_bounded(cmd)?;
    if !ok && out.contains("ERROR: ") {
        return Ok(Run::Refused);
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("Lines: "))
        .ok_or_else(|| format!("no Lines: in fail2ban-regex's output:\n{out}{err}"))?;
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let [lines, ignored, matched, missed] = n[..] else {
        return Err(format!("unexpected counts line {line:?}"));
    };
    // Only a newline ends a printed line (a log line may hold other
    // characters Python would split at).
    let mut lists: [Vec<String>; 2] = Default::default();
    let mut into = None;
    for l in out.split('\n') {
        if l.starts_with("|- Matched line") {
            into = Some(0);
        } else if l.starts_with("|- Missed line") {
            into = Some(1);
        } else if l.starts_with("|- ") || l.starts_with("`-") {
            into = None;
        } else if let (Some(i), Some(text)) = (into, l.strip_prefix("|  ")) {
            lists[i].push(text.to_string());
        }
    }
    let [matched_lines, missed_lines] = lists;
    Ok(Run::Counted {
        lines,
        ignored,
        matched,
        missed,
        matched_lines: sorted(matched_lines),
        missed_lines: sorted(missed_lines),
    })
}

fn sipwarden_run(log: &Path, spec: &str) -> Result<Run, String> {
    let mut cmd = Command::new(bin());
    cmd.arg("test-filter").arg(log).arg(spec).args([
        "--json",
        "--print-all-matched",
        "--print-all-missed",
    ]);
    let (ok, out, err) = run_bounded(cmd)?;
    if !ok {
        return if err.contains("error: ") {
            Ok(Run::Refused)
        } else {
            Err(format!("sipwarden test-filter failed: {err}"))
        };
    }
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    let n = |k: &str| v[k].as_u64().ok_or_else(|| format!("no {k} in {out}"));
    let list = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Run::Counted {
        lines: n("lines")?,
        ignored: n("ignored")?,
        matched: n("matched")?,
        missed: n("missed")?,
        matched_lines: sorted(list("matched_lines")),
        missed_lines: sorted(list("missed_lines")),
    })
}

/// How two runs differ, briefly: the counts, and the lines one side has
/// in a list and the other not.
fn difference(theirs: &Run, ours: &Run) -> String {
    let (
        Run::Counted {
            lines,
            ignored,
            matched,
            missed,
            matched_lines: tm,
            missed_lines: tx,
        },
        Run::Counted {
            lines: l2,
            ignored: i2,
            matched: m2,
            missed: x2,
            matched_lines: om,
            missed_lines: ox,
        },
    ) = (theirs, ours)
    else {
        return format!("fail2ban-regex {theirs:?}, sipwarden {ours:?}");
    };
    let only = |a: &Vec<String>, b: &Vec<String>| -> Vec<String> {
        a.iter()
            .filter(|l| !b.contains(l))
            .take(5)
            .cloned()
            .collect()
    };
    format!(
        "fail2ban-regex {lines} lines, {ignored} ignored, {matched} matched, {missed} missed; \
         sipwarden {l2}, {i2}, {m2}, {x2}; matched only by fail2ban-regex {:?}, only by sipwarden \
         {:?}; missed only by fail2ban-regex {:?}, only by sipwarden {:?}",
        only(tm, om),
        only(om, tm),
        only(tx, ox),
        only(ox, tx)
    )
}

/// The option sets a sample log runs its filter with (`# filterOptions:`
/// lines; the harness's own `test.*` keys left out), as `[k=v, ...]`.
fn option_sets(log: &Path) -> Vec<String> {
    let text = String::from_utf8_lossy(&std::fs::read(log).unwrap()).into_owned();
    let mut sets = Vec::new();
    for l in text.lines() {
        let Some(json) = l
            .trim_start_matches('#')
            .trim_start()
            .strip_prefix("filterOptions:")
        else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(json.trim())
            .unwrap_or_else(|e| panic!("{}: {l}: {e}", log.display()));
        let all = match v {
            serde_json::Value::Array(a) => a,
            o => vec![o],
        };
        for o in all {
            let Some(o) = o.as_object() else { continue };
            let kv: Vec<String> = o
                .iter()
                .filter(|(k, _)| !k.starts_with("test."))
                .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), String::from)))
                .collect();
            let set = format!("[{}]", kv.join(", "));
            if !kv.is_empty() && !sets.contains(&set) {
                sets.push(set);
            }
        }
    }
    sets
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
            jobs.push((name.to_string(), String::new()));
            for set in option_sets(&logs.join(name)) {
                jobs.push((name.to_string(), set));
            }
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
        if !logs.join(name).is_file() || jobs.iter().any(|(j, _)| j == name) {
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
            !jobs.iter().any(|(j, _)| j == n),
            "{n} is listed as missing from Debian ({why}) but is there: compare it"
        );
    }
    let filters = jobs.iter().filter(|(_, set)| set.is_empty()).count();
    assert!(filters >= 80, "only {filters} filters to compare");
    let tmp = TempDir::new("f2b-regex");
    let t0 = Instant::now();
    let queue = Mutex::new(jobs.clone());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                loop {
                    let Some((name, set)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let log = sample_log(&name, &logs, &tmp.0);
                    let spec = format!("{}{set}", debian.join(format!("{name}.conf")).display());
                    let theirs = fail2ban_run(&log, &spec);
                    let ours = sipwarden_run(&log, &spec);
                    results
                        .lock()
                        .unwrap()
                        .push((format!("{name}{set}"), theirs, ours));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut wrong = Vec::new();
    for (name, theirs, ours) in &results {
        // Every matched and missed line is listed (so the lists were read).
        if let Ok(Run::Counted {
            matched,
            missed,
            matched_lines,
            missed_lines,
            ..
        }) = theirs
        {
            if matched_lines.len() as u64 != *matched || missed_lines.len() as u64 != *missed {
                wrong.push(format!(
                    "{name}: fail2ban-regex listed other lines than it counted"
                ));
            }
        }
        match (theirs, ours) {
            (Ok(t), Ok(o)) if t == o => {}
            (Ok(t), Ok(o)) => wrong.push(format!("{name}: {}", difference(t, o))),
            _ => wrong.push(format!(
                "{name}: fail2ban-regex {theirs:?}, sipwarden {ours:?}"
            )),
        }
    }
    let refused = results
        .iter()
        .filter(|(_, t, _)| matches!(t, Ok(Run::Refused)))
        .count();
    eprintln!(
        "f2b_regex: {filters} filters, {} runs with options, {refused} refused by both, in {:.1} s on {THREADS} threads",
        results.len() - filters,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(results.len(), jobs.len());
    assert!(wrong.is_empty(), "counts differ:\n{}", wrong.join("\n"));
}
