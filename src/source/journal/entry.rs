//! A journal entry as the line a filter reads, built as fail2ban's
//! `formatJournalEntry` builds it: `HOST IDENT[PID]: MESSAGE`, with the
//! entry's own time (`_SOURCE_REALTIME_TIMESTAMP`, else
//! `__REALTIME_TIMESTAMP`).
//!
//! * the host name (`_HOSTNAME`) when there is one;
//! * `SYSLOG_IDENTIFIER` (else `_COMM`), followed by `[SYSLOG_PID]` (else
//!   `[_PID]`) when there is one, then `:`; the kernel's lines get their
//!   monotonic time, `[%12.6f]` seconds, as fail2ban adds it;
//! * `MESSAGE`, its values joined by a space when it has several.
//!
//! The message's bytes are kept as they are (the filter reads them as it
//! reads a log line's); nothing in them is interpreted here. An entry whose
//! messages add up to more than [`MAX_LINE`] bytes is marked too long (its
//! values beyond that are not kept), as a log line that long is skipped.

use crate::source::file::MAX_LINE;

use crate::event::Time;

/// The fields of one entry the line is built from.
#[derive(Debug, Default)]
pub struct Fields {
    hostname: Option<Vec<u8>>,
    ident: Option<Vec<u8>>,
    comm: Option<Vec<u8>>,
    syslog_pid: Option<Vec<u8>>,
    pid: Option<Vec<u8>>,
    messages: Vec<Vec<u8>>,
    source_realtime: Option<Vec<u8>>,
    source_monotonic: Option<Vec<u8>>,
    /// The messages' bytes so far.
    message_bytes: usize,
    /// More message bytes than [`MAX_LINE`].
    overlong: bool,
}

/// Keeps the first value of a field seen more than once.
fn first(slot: &mut Option<Vec<u8>>, v: &[u8]) {
    if slot.is_none() {
        *slot = Some(v.to_vec());
    }
}

/// A field's value as a number of microseconds.
fn usec(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// A process id as fail2ban prints it: as a number when it reads as one
/// (`0123` is `[123]`, `0x1f` is `[31]`), else as it is.
fn pid_text(v: &[u8]) -> Vec<u8> {
    let Ok(s) = std::str::from_utf8(v) else {
        return v.to_vec();
    };
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let radix = |p: &str, r: u32| {
        digits
            .strip_prefix(p)
            .or_else(|| digits.strip_prefix(&p.to_ascii_uppercase()))
            .and_then(|d| i128::from_str_radix(d, r).ok())
    };
    let n = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i128>().ok()
    } else {
        radix("0x", 16)
            .or_else(|| radix("0o", 8))
            .or_else(|| radix("0b", 2))
    };
    match n {
        Some(n) => (if neg { -n } else { n }).to_string().into_bytes(),
        None => v.to_vec(),
    }
}

impl Fields {
    /// Takes one `FIELD=value` of the entry (others are ignored).
    pub fn take(&mut self, data: &[u8]) {
        let Some(eq) = data.iter().position(|&b| b == b'=') else {
            return;
        };
        let (name, v) = (&data[..eq], &data[eq + 1..]);
        match name {
            b"_HOSTNAME" => first(&mut self.hostname, v),
            b"SYSLOG_IDENTIFIER" => first(&mut self.ident, v),
            b"_COMM" => first(&mut self.comm, v),
            b"SYSLOG_PID" => first(&mut self.syslog_pid, v),
            b"_PID" => first(&mut self.pid, v),
            b"MESSAGE" => {
                // Up to 1024 fields of 64 KiB each: what is kept stays
                // bounded.
                self.message_bytes = self.message_bytes.saturating_add(v.len() + 1);
                if self.message_bytes > MAX_LINE {
                    self.overlong = true;
                } else {
                    self.messages.push(v.to_vec());
                }
            }
            b"_SOURCE_REALTIME_TIMESTAMP" => first(&mut self.source_realtime, v),
            b"_SOURCE_MONOTONIC_TIMESTAMP" => first(&mut self.source_monotonic, v),
            _ => {}
        }
    }

    /// Whether the messages were longer than [`MAX_LINE`] (the line is
    /// skipped).
    pub fn overlong(&self) -> bool {
        self.overlong
    }

    /// The entry's time: `_SOURCE_REALTIME_TIMESTAMP` when it reads as
    /// one, else the journal's own `__REALTIME_TIMESTAMP` (`realtime_usec`).
    pub fn time(&self, realtime_usec: u64) -> Time {
        let us = self
            .source_realtime
            .as_deref()
            .and_then(usec)
            .unwrap_or(realtime_usec);
        Time(i64::try_from(us / 1000).unwrap_or(i64::MAX))
    }

    /// The line: `monotonic_usec` is asked for only for the kernel's
    /// entries without `_SOURCE_MONOTONIC_TIMESTAMP`.
    pub fn line(&self, monotonic_usec: impl FnOnce() -> u64) -> Vec<u8> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        if let Some(h) = self.hostname.as_ref().filter(|h| !h.is_empty()) {
            parts.push(h.clone());
        }
        let ident = self
            .ident
            .as_ref()
            .filter(|v| !v.is_empty())
            .or(self.comm.as_ref().filter(|v| !v.is_empty()));
        if let Some(id) = ident {
            let mut p = id.clone();
            let pid = self
                .syslog_pid
                .as_ref()
                .filter(|v| !v.is_empty())
                .or(self.pid.as_ref().filter(|v| !v.is_empty()));
            if let Some(pid) = pid {
                p.push(b'[');
                p.extend_from_slice(&pid_text(pid));
                p.push(b']');
            }
            p.push(b':');
            let kernel = p == b"kernel:";
            parts.push(p);
            if kernel {
                let us = self
                    .source_monotonic
                    .as_deref()
                    .and_then(usec)
                    .unwrap_or_else(monotonic_usec);
                parts.push(format!("[{:12.6}]", us as f64 / 1e6).into_bytes());
            }
        }
        parts.push(self.messages.join(&b' '));
        parts.join(&b' ')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[&str]) -> Fields {
        let mut f = Fields::default();
        for d in list {
            f.take(d.as_bytes());
        }
        f
    }

    fn line(f: &Fields) -> String {
        String::from_utf8(f.line(|| 2_500_000)).unwrap()
    }

    #[test]
    fn sshd_entry_reads_like_syslog() {
        let f = fields(&[
            "_HOSTNAME=belka",
            "_COMM=sshd",
            "SYSLOG_IDENTIFIER=sshd",
            "_PID=31602",
            "MESSAGE=Failed password for invalid user ROOT from 194.117.26.69 port 50273 ssh2",
        ]);
        assert_eq!(
            line(&f),
            "belka sshd[31602]: Failed password for invalid user ROOT from 194.117.26.69 port 50273 ssh2"
        );
    }

    #[test]
    fn syslog_fields_are_preferred() {
        let f = fields(&[
            "SYSLOG_PID=7",
            "_PID=8",
            "_COMM=sshd-session",
            "SYSLOG_IDENTIFIER=sshd",
            "MESSAGE=x",
        ]);
        assert_eq!(line(&f), "sshd[7]: x");
        // Without an identifier, the command; without a host, none.
        let f = fields(&["_COMM=sshd", "MESSAGE=x"]);
        assert_eq!(line(&f), "sshd: x");
        // Nothing but a message.
        assert_eq!(line(&fields(&["MESSAGE=only"])), "only");
        // No message at all: fail2ban's empty one.
        assert_eq!(line(&fields(&["_HOSTNAME=h", "_COMM=c"])), "h c: ");
    }

    #[test]
    fn pids_print_as_numbers_when_they_are() {
        assert_eq!(
            line(&fields(&["_COMM=a", "_PID=0123", "MESSAGE=m"])),
            "a[123]: m"
        );
        assert_eq!(
            line(&fields(&["_COMM=a", "_PID=0x1f", "MESSAGE=m"])),
            "a[31]: m"
        );
        assert_eq!(
            line(&fields(&["_COMM=a", "_PID=abc", "MESSAGE=m"])),
            "a[abc]: m"
        );
    }

    #[test]
    fn several_messages_are_joined() {
        let f = fields(&["_COMM=a", "MESSAGE=one", "MESSAGE=two"]);
        assert_eq!(line(&f), "a: one two");
    }

    #[test]
    fn kernel_lines_carry_their_monotonic_time() {
        let f = fields(&["_HOSTNAME=h", "SYSLOG_IDENTIFIER=kernel", "MESSAGE=m"]);
        assert_eq!(line(&f), "h kernel: [    2.500000] m");
        let f = fields(&[
            "SYSLOG_IDENTIFIER=kernel",
            "_SOURCE_MONOTONIC_TIMESTAMP=12345678",
            "MESSAGE=m",
        ]);
        assert_eq!(line(&f), "kernel: [   12.345678] m");
    }

    #[test]
    fn the_source_time_is_preferred() {
        let f = fields(&["_SOURCE_REALTIME_TIMESTAMP=1700000000123456", "MESSAGE=m"]);
        assert_eq!(f.time(1_800_000_000_000_000), Time(1_700_000_000_123));
        let f = fields(&["_SOURCE_REALTIME_TIMESTAMP=garbage", "MESSAGE=m"]);
        assert_eq!(f.time(1_800_000_000_000_000), Time(1_800_000_000_000));
    }

    #[test]
    fn overlong_messages_are_marked_and_not_kept() {
        let mut f = Fields::default();
        let big = format!("MESSAGE={}", "x".repeat(40 * 1024));
        f.take(big.as_bytes());
        assert!(!f.overlong());
        for _ in 0..100 {
            f.take(big.as_bytes());
        }
        assert!(f.overlong());
        assert!(f.line(|| 0).len() <= MAX_LINE);
    }

    #[test]
    fn message_bytes_are_kept() {
        let mut f = Fields::default();
        f.take(b"MESSAGE=user \xff\n from 192.0.2.1");
        f.take(b"no equals sign");
        assert_eq!(f.line(|| 0), b"user \xff\n from 192.0.2.1".to_vec());
    }
}
