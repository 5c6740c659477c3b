//! The scan behind `sipwarden test-filter LOG FILTER` (the fail2ban-regex
//! equivalent): a log file through a filter, counted, on several threads
//! when the filter keeps no state across lines. Printing is the CLI's
//! (`crate::cli::test_filter`).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

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
    /// The first missed lines, up to the number asked for.
    pub missed_lines: Vec<String>,
    /// The log's size in bytes.
    pub bytes: u64,
}

/// Told, as the log is read, how many bytes of how many were read (from one
/// of the reading threads).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

enum Which {
    Builtin(Box<dyn super::Filter>),
    F2b(Box<F2bFilter>),
}

fn load(spec: &str) -> Result<Which, F2bError> {
    if let Some(f) = builtin(spec, FilterOptions::default()) {
        return Ok(Which::Builtin(f));
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
    /// The first missed lines, up to the number asked for.
    missed_lines: Vec<String>,
}

impl Part {
    fn merge(&mut self, o: Part, show_missed: usize) {
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
        let room = show_missed.saturating_sub(self.missed_lines.len());
        self.missed_lines
            .extend(o.missed_lines.into_iter().take(room));
    }

    /// Lines no pattern can match (the prefilter said so), all missed.
    fn skip(&mut self, region: &[u8], show_missed: usize) {
        let mut n = memchr::memchr_iter(b'\n', region).count() as u64;
        if region.last().is_some_and(|&b| b != b'\n') {
            n += 1;
        }
        self.lines += n;
        self.missed += n;
        if self.missed_lines.len() < show_missed {
            for l in region.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                if self.missed_lines.len() >= show_missed {
                    break;
                }
                self.missed_lines
                    .push(String::from_utf8_lossy(trim_cr(l)).into_owned());
            }
        }
    }

    /// `known`: the line holds a prefilter literal (no need to look again).
    fn line(
        &mut self,
        line: &[u8],
        filter: &Which,
        cx: &FilterContext,
        show_missed: usize,
        known: bool,
    ) {
        let line = trim_cr(line);
        self.lines += 1;
        let (hit, ignored) = match filter {
            Which::Builtin(f) => match f.match_line(line, cx) {
                Some(m) => {
                    self.count_hit(0, 1);
                    if self.fails.len() < 5 {
                        self.fails.push((m.addr.to_string(), m.time));
                    }
                    self.dated += u64::from(m.time.is_some());
                    (true, false)
                }
                None => (false, false),
            },
            Which::F2b(f) => {
                let text = match std::str::from_utf8(line) {
                    Ok(t) => std::borrow::Cow::Borrowed(t),
                    Err(_) => String::from_utf8_lossy(line),
                };
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
                        (true, false)
                    }
                    Outcome::Ignored => (false, true),
                    _ => (false, false),
                }
            }
        };
        if hit {
            self.matched += 1;
        } else if ignored {
            self.ignored += 1;
        } else {
            self.missed += 1;
            if self.missed_lines.len() < show_missed {
                self.missed_lines
                    .push(String::from_utf8_lossy(line).into_owned());
            }
        }
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
fn scan(data: &[u8], filter: &Which, cx: &FilterContext, show_missed: usize) -> Part {
    let mut part = Part::default();
    let prefilter = match filter {
        Which::F2b(f) => f.prefilter(),
        Which::Builtin(_) => None,
    };
    let Some(pf) = prefilter else {
        if !data.is_empty() {
            // A final newline ends the last line; it does not start one.
            let body = data.strip_suffix(b"\n").unwrap_or(data);
            for l in body.split(|&b| b == b'\n') {
                part.line(l, filter, cx, show_missed, false);
            }
        }
        return part;
    };
    // Search the literals across the whole buffer, as grep does, and look
    // at the lines around their hits only: every other line is a miss.
    let mut pos = 0;
    while pos < data.len() {
        let Some(m) = pf.find(&data[pos..]) else {
            break;
        };
        let hit = pos + m.0;
        let start = memchr::memrchr(b'\n', &data[pos..hit]).map_or(pos, |i| pos + i + 1);
        let end = memchr::memchr(b'\n', &data[hit..]).map_or(data.len(), |i| hit + i);
        part.skip(&data[pos..start], show_missed);
        part.line(&data[start..end], filter, cx, show_missed, true);
        pos = end + 1;
    }
    if pos < data.len() {
        part.skip(&data[pos..], show_missed);
    }
    part
}

/// Bytes read at a time: little enough to stay in cache.
const CHUNK: usize = 1 << 20;

/// Reads `range` of the file (whole lines) chunk by chunk through the
/// filter. Every thread has its own range, handle and buffer.
fn scan_range(
    log: &Path,
    range: std::ops::Range<u64>,
    filter: &Which,
    cx: &FilterContext,
    show_missed: usize,
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
        part.merge(scan(&buf[..cut], filter, cx, show_missed), show_missed);
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
/// keeps up to `show_missed` missed lines.
pub fn scan_log(
    log: &Path,
    spec: &str,
    zone: &str,
    show_missed: usize,
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
    let cx = FilterContext { tz, now };
    // Lines are independent unless the filter keeps state across them
    // (multi-line buffers, connection ids): then one thread, in order.
    let stateless = match &filter {
        Which::Builtin(_) => true,
        Which::F2b(f) => f.is_stateless(),
    };
    let threads = if stateless && size > 1 << 20 {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as u64)
    } else {
        1
    };
    let t0 = std::time::Instant::now();
    let read = AtomicU64::new(0);
    let parts = ranges(log, size, threads).map_err(log_error)?;
    let results: Vec<std::io::Result<Part>> = std::thread::scope(|s| {
        let (filter, cx, read) = (&filter, &cx, &read);
        let handles: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let r = r.clone();
                s.spawn(move || {
                    let p = progress.filter(|_| i == 0).map(|tell| (read, size, tell));
                    scan_range(log, r, filter, cx, show_missed, p)
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
        total.merge(r.map_err(log_error)?, show_missed);
    }
    let mut r = TestFilterReport {
        lines: total.lines,
        matched: total.matched,
        ignored: total.ignored,
        missed: total.missed,
        hits: total.hits,
        dated: total.dated,
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
        missed_lines: total.missed_lines,
        bytes: size,
    })
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
