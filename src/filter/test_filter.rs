//! The scan behind `sipwarden test-filter LOG FILTER` (the fail2ban-regex
//! equivalent): a log file through a filter, counted, on several threads
//! when the filter keeps no state across lines. Printing is the CLI's
//! (`crate::cli::test_filter`).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::f2b::prefilter::{Literals, searcher};
use super::f2b::{F2bError, F2bFilter, Outcome};
use super::{FilterContext, FilterOptions, builtin, date::parse_zone};
use crate::event::Time;

/// The counts `--json` prints.
#[derive(Debug, Default, Serialize)]
pub struct TestFilterReport {
    /// Lines read.
    pub lines: u64,
    /// Lines that gave a failure.
    pub matched: u64,
    /// Lines an ignoreregex matched.
    pub ignored: u64,
    /// Lines that matched nothing.
    pub missed: u64,
    /// Matches per failregex (fail2ban filters; one entry for built-ins).
    pub hits: Vec<u64>,
    /// Lines with a date.
    pub dated: u64,
    /// Seconds spent.
    pub seconds: f64,
    /// Lines per second.
    pub lines_per_second: f64,
    /// The file's last line has no newline (so it was not read).
    pub unterminated: bool,
    /// Every matched line (`--print-all-matched`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matched_lines: Vec<String>,
    /// The missed lines asked for (`--show-missed`, `--print-all-missed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missed_lines: Vec<String>,
}

/// How many matched and missed lines to keep for showing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Show {
    /// Missed lines kept at most.
    pub missed: usize,
    /// Matched lines kept at most.
    pub matched: usize,
}

/// Why a log could not be run through a filter.
#[derive(Debug, thiserror::Error)]
pub enum TestFilterError {
    /// The fail2ban filter file, or the bare regex, does not load.
    #[error(transparent)]
    Filter(#[from] F2bError),
    /// `--logtimezone` names no zone.
    #[error("{0}")]
    Zone(super::date::ZoneError),
    /// The log could not be read. The I/O error is part of the message,
    /// not its cause: the message says it once.
    #[error("{}: {error}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// What one run found: the counts `--json` prints, and the examples the
/// text form shows.
#[derive(Debug)]
pub struct TestFilterRun {
    /// The counts.
    pub report: TestFilterReport,
    /// The first few failures (at most five): host, and date if any.
    pub examples: Vec<(String, Option<Time>)>,
    /// The log's size in bytes.
    pub bytes: u64,
}

/// Told, as the log is read, how many bytes of how many were read (from one
/// of the reading threads).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

enum Which {
    /// A built-in filter, with the searcher for the literals one of which
    /// every line it matches holds (built once, not per buffer).
    Builtin(Box<dyn super::Filter>, Option<Literals>),
    F2b(Box<F2bFilter>),
}

impl Which {
    /// The searcher for the literals a matching line must hold, if any.
    fn prefilter(&self) -> Option<&Literals> {
        match self {
            Which::Builtin(_, pf) => pf.as_ref(),
            Which::F2b(f) => f.prefilter(),
        }
    }
}

fn load(spec: &str) -> Result<Which, F2bError> {
    // The user tried is never shown here.
    let opts = FilterOptions {
        without_users: true,
        ..FilterOptions::default()
    };
    if let Some(f) = builtin(spec, opts) {
        let lits = f.required_literals().iter().map(|l| l.to_vec()).collect();
        return Ok(Which::Builtin(f, searcher(lits)));
    }
    let (name, opts) = super::f2b::parse_filter_spec(spec);
    let p = Path::new(&name);
    if p.is_file() && (name.ends_with(".conf") || name.ends_with(".local")) {
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let dir = p.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        let base_dir_has_filter_d = p.parent().is_some_and(|d| d.ends_with("filter.d"));
        let f = if base_dir_has_filter_d {
            F2bFilter::load(dir, &stem, &opts)?
        } else {
            let ini = super::f2b::ini::Ini::load(&p.with_extension("")).map_err(F2bError::from)?;
            F2bFilter::from_ini(&ini, &stem, &opts, &name)?
        };
        return Ok(Which::F2b(Box::new(f)));
    }
    // A bare regex: one failregex, default dates.
    let mut ini = super::f2b::ini::Ini::default();
    ini.set("Definition", "failregex", spec);
    let f = F2bFilter::from_ini(&ini, "regex", &BTreeMap::new(), "<command line>")?;
    Ok(Which::F2b(Box::new(f)))
}

/// What one pass over part of the log found.
#[derive(Default)]
struct Part {
    lines: u64,
    matched: u64,
    ignored: u64,
    missed: u64,
    hits: Vec<u64>,
    dated: u64,
    /// The first few failures: host and date.
    fails: Vec<(String, Option<Time>)>,
    /// The missed lines kept for showing, with their text as a multi-line
    /// buffer holds it (a later match can take them).
    missed_lines: Vec<(String, String)>,
    /// The matched lines kept for showing.
    matched_lines: Vec<String>,
}

/// What fail2ban-regex makes of one line.
enum Verdict {
    Matched,
    Ignored,
    Missed,
}

/// Lines fail2ban-regex does not count: empty ones and comments.
fn uncounted(line: &[u8]) -> bool {
    line.is_empty() || line[0] == b'#'
}

impl Part {
    fn merge(&mut self, o: Part, show: Show) {
        self.lines += o.lines;
        self.matched += o.matched;
        self.ignored += o.ignored;
        self.missed += o.missed;
        if self.hits.len() < o.hits.len() {
            self.hits.resize(o.hits.len(), 0);
        }
        for (a, b) in self.hits.iter_mut().zip(o.hits) {
            *a += b;
        }
        self.dated += o.dated;
        let room = 5usize.saturating_sub(self.fails.len());
        self.fails.extend(o.fails.into_iter().take(room));
        let room = show.missed.saturating_sub(self.missed_lines.len());
        self.missed_lines
            .extend(o.missed_lines.into_iter().take(room));
        let room = show.matched.saturating_sub(self.matched_lines.len());
        self.matched_lines
            .extend(o.matched_lines.into_iter().take(room));
    }

    /// Lines no pattern can match (the prefilter said so), all missed.
    fn skip(&mut self, region: &[u8], show: Show) {
        if self.missed_lines.len() >= show.missed {
            // Only the count matters.
            let n = super::count::counted_lines(region);
            self.lines += n;
            self.missed += n;
            return;
        }
        let counted = region
            .split(|&b| b == b'\n')
            .map(trim_cr)
            .filter(|l| !uncounted(l));
        for l in counted {
            self.lines += 1;
            self.missed += 1;
            if self.missed_lines.len() < show.missed {
                let l = String::from_utf8_lossy(l).into_owned();
                self.missed_lines.push((l, String::new()));
            }
        }
    }

    /// `known`: the line holds a prefilter literal (no need to look again).
    fn line(&mut self, line: &[u8], filter: &Which, cx: &FilterContext, show: Show, known: bool) {
        let line = trim_cr(line);
        if uncounted(line) {
            return;
        }
        self.lines += 1;
        let mut buffered = String::new();
        let verdict = match filter {
            Which::Builtin(f, _) => match f.match_line(line, cx) {
                Some(m) => {
                    self.count_hit(0, 1);
                    if self.fails.len() < 5 {
                        self.fails.push((m.addr.to_string(), m.time));
                    }
                    self.dated += u64::from(m.time.is_some());
                    Verdict::Matched
                }
                None => Verdict::Missed,
            },
            Which::F2b(f) => {
                // Valid UTF-8 (nearly every line) is borrowed after the
                // fast check; only other bytes go through the lossy path.
                let text = match std::str::from_utf8(line) {
                    Ok(t) => std::borrow::Cow::Borrowed(t),
                    Err(_) => String::from_utf8_lossy(line),
                };
                if f.counts_in_full() {
                    self.full(f, &text, cx, show, &mut buffered)
                } else {
                    let outcome = if known {
                        // Instants are shown for the first few failures only.
                        f.process_prefiltered(&text, &cx.tz, cx.now, self.fails.len() < 5)
                    } else {
                        f.process(&text, &cx.tz, cx.now)
                    };
                    match outcome {
                        Outcome::Fail(fl) => {
                            self.count_hit(fl.regex, f.failregex_count());
                            self.dated += u64::from(fl.dated);
                            if self.fails.len() < 5 {
                                self.fails.push((fl.host, fl.time));
                            }
                            Verdict::Matched
                        }
                        Outcome::Ignored | Outcome::NoFail => Verdict::Ignored,
                        Outcome::Missed => Verdict::Missed,
                    }
                }
            }
        };
        match verdict {
            Verdict::Matched => {
                self.matched += 1;
                if self.matched_lines.len() < show.matched {
                    self.matched_lines
                        .push(String::from_utf8_lossy(line).into_owned());
                }
            }
            Verdict::Ignored => self.ignored += 1,
            Verdict::Missed => {
                self.missed += 1;
                if self.missed_lines.len() < show.missed {
                    let l = String::from_utf8_lossy(line).into_owned();
                    self.missed_lines.push((l, buffered));
                }
            }
        }
    }

    /// One line with fail2ban's full semantics, every failregex tried, as
    /// fail2ban-regex counts: ignored when an ignoreregex or a "no failure"
    /// hit matched, matched when a failregex gave a failure (one whose
    /// connection's host comes later counts), missed otherwise. Earlier
    /// lines a multi-line match took move from missed to matched.
    fn full(
        &mut self,
        f: &F2bFilter,
        text: &str,
        cx: &FilterContext,
        show: Show,
        buffered: &mut String,
    ) -> Verdict {
        let done = f.process_line(text, &cx.tz, cx.now, true, None);
        for hit in done.found.iter().filter(|h| !h.name) {
            self.count_hit(hit.regex, f.failregex_count());
        }
        for l in &done.released {
            self.matched += 1;
            self.missed = self.missed.saturating_sub(1);
            if let Some(i) = self.missed_lines.iter().position(|(_, b)| b == l) {
                let (line, _) = self.missed_lines.remove(i);
                if self.matched_lines.len() < show.matched {
                    self.matched_lines.push(line);
                }
            }
        }
        *buffered = done.text;
        if done.ignored || done.found.iter().any(|h| h.nofail) {
            return Verdict::Ignored;
        }
        let Some(fail) = done.found.iter().find(|h| h.is_failure()) else {
            return Verdict::Missed;
        };
        self.dated += u64::from(fail.time.is_some());
        if self.fails.len() < 5 {
            let host = fail.host.clone().unwrap_or_else(|| "(host later)".into());
            self.fails.push((host, fail.time));
        }
        Verdict::Matched
    }

    fn count_hit(&mut self, i: usize, n: usize) {
        if self.hits.len() < n.max(i + 1) {
            self.hits.resize(n.max(i + 1), 0);
        }
        self.hits[i] += 1;
    }
}

fn trim_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// Runs `data` (whole lines) through the filter.
fn scan(data: &[u8], filter: &Which, cx: &FilterContext, show: Show) -> Part {
    let mut part = Part::default();
    let Some(pf) = filter.prefilter() else {
        if !data.is_empty() {
            // A final newline ends the last line; it does not start one.
            let body = data.strip_suffix(b"\n").unwrap_or(data);
            for l in body.split(|&b| b == b'\n') {
                part.line(l, filter, cx, show, false);
            }
        }
        return part;
    };
    // Search the literals across the whole buffer, as grep does, and look
    // at the lines around their hits only: every other line is a miss.
    // When no missed line is to be shown, the lines are counted in one
    // pass over the whole buffer (a count per region between hits paid its
    // set-up 40,000 times on the benchmark's log), and the lines between
    // hits are what that count leaves over.
    let count_whole = show.missed == 0;
    let mut pos = 0;
    while pos < data.len() {
        let Some(m) = pf.find(&data[pos..]) else {
            break;
        };
        let hit = pos + m.0;
        let start = memchr::memrchr(b'\n', &data[pos..hit]).map_or(pos, |i| pos + i + 1);
        let end = memchr::memchr(b'\n', &data[hit..]).map_or(data.len(), |i| hit + i);
        if !count_whole {
            part.skip(&data[pos..start], show);
        }
        part.line(&data[start..end], filter, cx, show, true);
        pos = end + 1;
    }
    if count_whole {
        let between = super::count::counted_lines(data).saturating_sub(part.lines);
        part.lines += between;
        part.missed += between;
    } else if pos < data.len() {
        part.skip(&data[pos..], show);
    }
    part
}

/// Bytes read at a time: little enough that the kernel's copy and the
/// scan behind it stay in the core's cache (1 MiB did not).
const CHUNK: usize = 256 << 10;

/// Reads `range` of the file (whole lines) chunk by chunk through the
/// filter. Every thread has its own range, handle and buffer.
fn scan_range(
    log: &Path,
    range: std::ops::Range<u64>,
    filter: &Which,
    cx: &FilterContext,
    show: Show,
    progress: Option<(&AtomicU64, u64, Progress)>,
) -> std::io::Result<Part> {
    let mut file = std::fs::File::open(log)?;
    file.seek(SeekFrom::Start(range.start))?;
    let mut left = range.end - range.start;
    let mut part = Part::default();
    // One buffer, zeroed once: `carry` bytes of a partial line stay at its
    // front between reads.
    let mut buf = vec![0u8; CHUNK.min(left as usize) + 64 * 1024];
    let mut carry = 0;
    loop {
        if carry == buf.len() {
            // A line longer than the buffer: make room.
            buf.resize(buf.len() * 2, 0);
        }
        let want = (buf.len() - carry).min(left as usize);
        let n = read_full(&mut file, &mut buf[carry..carry + want])?;
        left -= n as u64;
        let filled = carry + n;
        let eof = n == 0 || left == 0;
        // Whole lines now; a partial last one waits for the next read.
        let cut = if eof {
            filled
        } else {
            memchr::memrchr(b'\n', &buf[..filled]).map_or(0, |i| i + 1)
        };
        part.merge(scan(&buf[..cut], filter, cx, show), show);
        buf.copy_within(cut..filled, 0);
        carry = filled - cut;
        if let Some((read, size, tell)) = progress {
            let total = read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            tell(total, size);
        }
        if eof {
            return Ok(part);
        }
    }
}

/// Cuts the file into `n` ranges that start at line starts.
fn ranges(log: &Path, size: u64, n: u64) -> std::io::Result<Vec<std::ops::Range<u64>>> {
    let mut file = std::fs::File::open(log)?;
    let mut cuts = vec![0];
    let mut probe = vec![0u8; 64 * 1024];
    for k in 1..n {
        let mut at = (size * k / n).max(*cuts.last().unwrap_or(&0));
        // The first line start after `at`.
        loop {
            file.seek(SeekFrom::Start(at))?;
            let got = read_full(&mut file, &mut probe)?;
            if got == 0 {
                at = size;
                break;
            }
            if let Some(i) = memchr::memchr(b'\n', &probe[..got]) {
                at += i as u64 + 1;
                break;
            }
            at += got as u64;
        }
        cuts.push(at.min(size));
    }
    cuts.push(size);
    Ok(cuts.windows(2).map(|w| w[0]..w[1]).collect())
}

/// Runs the log file `log` through the filter `spec` (a built-in name, a
/// fail2ban filter file `path/to/sshd.conf[mode=aggressive]`, or a regex
/// with `<HOST>`), zone-less dates read in `zone`, "now" being `now`;
/// keeps the missed and matched lines `show` asks for. Counts as
/// `fail2ban-regex --usedns=no` does (see [`Part::full`]).
pub fn scan_log(
    log: &Path,
    spec: &str,
    zone: &str,
    show: Show,
    now: Time,
    progress: Option<Progress>,
) -> Result<TestFilterRun, TestFilterError> {
    let filter = load(spec)?;
    let tz = parse_zone(zone).map_err(TestFilterError::Zone)?;
    let log_error = |error| TestFilterError::Log {
        path: log.to_path_buf(),
        error,
    };
    let size = std::fs::metadata(log).map_err(log_error)?.len();
    // A last line without its newline is still being written: not read, as
    // a follower waits for it and as fail2ban-regex leaves it out.
    let end = complete_end(log, size).map_err(log_error)?;
    let cx = FilterContext { tz, now };
    // Lines are independent unless the filter keeps state across them
    // (multi-line buffers, connection ids): then one thread, in order.
    let stateless = match &filter {
        Which::Builtin(..) => true,
        Which::F2b(f) => f.is_stateless(),
    };
    let threads = if stateless && end > 1 << 20 {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as u64)
    } else {
        1
    };
    let t0 = std::time::Instant::now();
    let read = AtomicU64::new(0);
    let parts = ranges(log, end, threads).map_err(log_error)?;
    let results: Vec<std::io::Result<Part>> = std::thread::scope(|s| {
        let (filter, cx, read) = (&filter, &cx, &read);
        let handles: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let r = r.clone();
                s.spawn(move || {
                    let p = progress.filter(|_| i == 0).map(|tell| (read, size, tell));
                    scan_range(log, r, filter, cx, show, p)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a reader thread failed")))
            })
            .collect()
    });
    let mut total = Part::default();
    for r in results {
        total.merge(r.map_err(log_error)?, show);
    }
    let mut r = TestFilterReport {
        lines: total.lines,
        matched: total.matched,
        ignored: total.ignored,
        missed: total.missed,
        hits: total.hits,
        dated: total.dated,
        unterminated: end < size,
        matched_lines: total.matched_lines,
        missed_lines: total.missed_lines.into_iter().map(|(l, _)| l).collect(),
        ..Default::default()
    };
    if let Which::F2b(f) = &filter {
        r.hits.resize(r.hits.len().max(f.failregex_count()), 0);
    }
    r.seconds = t0.elapsed().as_secs_f64();
    r.lines_per_second = if r.seconds > 0.0 {
        r.lines as f64 / r.seconds
    } else {
        0.0
    };
    Ok(TestFilterRun {
        report: r,
        examples: total.fails,
        bytes: size,
    })
}

/// Where the file's last whole line ends (after its newline; 0 when no
/// line is whole).
fn complete_end(log: &Path, size: u64) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(log)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut to = size;
    while to > 0 {
        let from = to.saturating_sub(buf.len() as u64);
        file.seek(SeekFrom::Start(from))?;
        let want = (to - from) as usize;
        let got = read_full(&mut file, &mut buf[..want])?;
        if let Some(i) = memchr::memrchr(b'\n', &buf[..got]) {
            return Ok(from + i as u64 + 1);
        }
        to = from;
    }
    Ok(0)
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The corpus's filter NAME, or `None` (after `need`) without the corpus.
    fn corpus_filter(name: &str) -> Option<PathBuf> {
        let p = crate::test_support::corpus_dir()
            .join("fail2ban-1.1.2.dev1/config/filter.d")
            .join(format!("{name}.conf"));
        if !p.is_file() {
            assert!(
                !crate::test_support::need("corpus"),
                "the reference corpus is missing {}",
                p.display()
            );
            return None;
        }
        Some(p)
    }

    /// (lines, ignored, matched, missed) of `log` through the corpus's
    /// filter `name`, as fail2ban-regex prints them.
    fn counts(name: &str, log: &str) -> Option<(u64, u64, u64, u64)> {
        let filter = corpus_filter(name)?;
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "sipwarden-test-filter-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, log).unwrap();
        let run = scan_log(
            &path,
            &filter.display().to_string(),
            "UTC",
            Show::default(),
            Time(1_124_013_600_000),
            None,
        );
        let _ = std::fs::remove_file(&path);
        let r = run.unwrap().report;
        Some((r.lines, r.ignored, r.matched, r.missed))
    }

    // The expected counts below are what Debian's fail2ban-regex 1.0.2
    // (`--usedns=no`) prints for the same lines and filter file.

    #[test]
    fn a_failure_whose_host_comes_on_a_later_line_counts_as_matched() {
        let locked =
            "Apr 24 01:39:19 host sshd[3719]: User root not allowed because account is locked\n";
        let Some(alone) = counts("sshd", locked) else {
            return;
        };
        assert_eq!(alone, (1, 0, 1, 0));
        let log = format!(
            "{locked}\
             Apr 24 01:39:19 host sshd[3719]: input_userauth_request: invalid user root [preauth]\n\
             Apr 24 01:39:19 host sshd[3719]: error: Received disconnect from 198.51.100.34: 11: Bye Bye [preauth]\n"
        );
        assert_eq!(counts("sshd", &log), Some((3, 0, 2, 1)));
        let log = "Nov 23 21:50:19 sshd[8148]: Disconnecting: Too many authentication failures for root [preauth]\n\
                   Nov 23 21:50:37 sshd[8148]: Connection closed by 61.0.0.1 [preauth]\n";
        assert_eq!(counts("sshd", log), Some((2, 0, 2, 0)));
    }

    #[test]
    fn a_host_name_is_missed_without_dns() {
        let log = "May 29 20:56:52 imago sshd[28732]: error: PAM: Authentication failure for stefanor from example.com\n\
                   May 29 20:56:56 imago sshd[28732]: error: PAM: Authentication failure for test-ipv6 from 2606:2800:220:1:248:1893:25c8:1946\n";
        assert_eq!(counts("sshd", log), Some((2, 0, 1, 1)));
    }

    #[test]
    fn no_failure_helpers_are_ignored_and_comments_and_empty_lines_not_counted() {
        let log = "Apr 24 01:39:19 host sshd[3719]: Connection from 192.0.2.9 port 1\n\
                   Apr 24 01:39:19 host sshd[3719]: User root not allowed because account is locked\n\
                   Apr 24 01:39:19 host sshd[3719]: Connection closed by 192.0.2.9 port 1\n\
                   \n\
                   \x20\x20\n\
                   # comment\n\
                   \x20# not a comment\n\
                   \r\n";
        assert_eq!(counts("sshd", log), Some((5, 2, 1, 2)));
    }

    #[test]
    fn lines_a_multi_line_match_takes_count_as_matched() {
        let log = "apr 15, 2013 8:34:08 PM org.slf4j.impl.JCLLoggerAdapter warn\n\
                   WARNING: Authentication attempt from 192.0.2.0 for user \"null\" failed.\n\
                   apr 16, 2013 8:32:13 AM org.slf4j.impl.JCLLoggerAdapter warn\n\
                   WARNING: Authentication attempt from 192.0.2.0 for user \"null\" failed.\n\
                   apr 16, 2013 8:32:28 AM org.slf4j.impl.JCLLoggerAdapter warn\n\
                   WARNING: Authentication attempt from 192.0.2.0 for user \"pippo\" failed.\n\
                   12:57:32.907 [http-nio-8080-exec-10] WARN  o.a.g.r.auth.AuthenticationService - Authentication attempt from 182.23.72.36 for user \"guacadmin\" failed.\n";
        assert_eq!(counts("guacamole", log), Some((7, 0, 6, 1)));
    }

    #[test]
    fn a_last_line_without_its_newline_is_not_read() {
        let log = "Mar  7 18:53:20 bar sshd[1556]: Invalid user ftp from 192.0.2.1\n\
                   Mar  7 18:53:21 bar sshd[1557]: Invalid user ftp from 192.0.2.2";
        assert_eq!(counts("sshd", log), Some((1, 0, 1, 0)));
    }

    #[test]
    fn lines_are_counted_alike_whether_missed_lines_are_shown_or_not() {
        // Without missed lines to show, the lines between hits are what a
        // count of the whole buffer leaves over; with them, each region is
        // split. Both must agree, on the real capture and on comments,
        // empty lines, lone `\r`s and hits next to each other.
        let Some(capture) = crate::test_support::corpus_file("freeswitch-1.10.12/freeswitch.log")
        else {
            return;
        };
        let hit = "2025-03-01 00:00:00.331 [WARNING] sofia_reg.c:1792 SIP auth failure (REGISTER) on sofia profile 'internal' for [1000@h] from ip 192.0.2.7\n";
        let odd = format!("#x\n\n\r\n{hit}{hit}\r\n# {hit}plain\r\n\n{hit}last");
        for log in [capture, odd.into_bytes()] {
            let path = std::env::temp_dir().join(format!(
                "sipwarden-test-filter-count-{}",
                std::process::id()
            ));
            std::fs::write(&path, &log).unwrap();
            let run = |missed| {
                let show = Show { missed, matched: 0 };
                let r = scan_log(&path, "freeswitch", "UTC", show, Time(0), None)
                    .unwrap()
                    .report;
                (
                    r.lines,
                    r.matched,
                    r.ignored,
                    r.missed,
                    r.missed_lines.len() as u64,
                )
            };
            let (quiet, shown) = (run(0), run(usize::MAX));
            let _ = std::fs::remove_file(&path);
            let counts = |r: (u64, u64, u64, u64, u64)| (r.0, r.1, r.2, r.3);
            assert_eq!(counts(quiet), counts(shown));
            assert_eq!(shown.4, shown.3, "every missed line shown");
            assert!(quiet.1 > 0 && quiet.3 > 0);
        }
    }
}
