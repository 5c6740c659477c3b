//! Splitting a byte stream into lines, as read from a followed file.

/// Lines longer than this are skipped (with a counted warning).
pub const MAX_LINE: usize = 64 * 1024;

/// Splits a byte stream into lines, keeping a partial last line for later and
/// dropping lines over [`MAX_LINE`].
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    discarding: bool,
    /// Reading starts inside a line: its rest is no line (see
    /// [`LineSplitter::start_mid_line`]).
    mid_line: bool,
}

impl LineSplitter {
    /// Feeds `data`; calls `emit` for each whole line (without `\n`). Returns
    /// how many overlong lines were dropped.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8])) -> u64 {
        if self.mid_line {
            match memchr::memchr(b'\n', data) {
                Some(nl) => {
                    self.mid_line = false;
                    data = &data[nl + 1..];
                }
                None => return 0,
            }
        }
        let mut dropped = 0;
        while let Some(nl) = memchr::memchr(b'\n', data) {
            let (head, rest) = (&data[..nl], &data[nl + 1..]);
            if self.discarding {
                self.discarding = false;
                dropped += 1;
            } else if self.buf.is_empty() {
                if head.len() <= MAX_LINE {
                    emit(head);
                } else {
                    dropped += 1;
                }
            } else if self.buf.len() + head.len() <= MAX_LINE {
                self.buf.extend_from_slice(head);
                emit(&self.buf);
            } else {
                dropped += 1;
            }
            if !self.buf.is_empty() {
                self.buf.clear();
            }
            data = rest;
        }
        if !data.is_empty() && !self.discarding {
            if self.buf.len() + data.len() > MAX_LINE {
                self.buf.clear();
                self.discarding = true;
            } else {
                self.buf.extend_from_slice(data);
            }
        }
        dropped
    }

    /// Emits a pending partial line (the file it came from is gone for good).
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.buf.is_empty() && !self.discarding {
            emit(&self.buf);
        }
        self.clear();
    }

    /// Forgets any pending partial line.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
        self.mid_line = false;
    }

    /// The stream starts inside a line (a file followed from an offset
    /// that is not a line start): everything up to the first newline is
    /// dropped, uncounted. Read as a line, that rest would start with
    /// whatever the line held there (attacker text, say), in place of the
    /// writer's own timestamp and level a filter anchors on.
    pub fn start_mid_line(&mut self) {
        self.buf.clear();
        self.mid_line = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Started inside a line: its rest is dropped (however it arrives), the
    /// lines after it are whole.
    #[test]
    fn a_stream_started_mid_line_drops_the_rest_of_that_line() {
        let mut s = LineSplitter::default();
        s.start_mid_line();
        let mut out = Vec::new();
        let mut emit = |l: &[u8]| out.push(String::from_utf8_lossy(l).into_owned());
        assert_eq!(s.push(b"[WARNING] forged from 1.2", &mut emit), 0);
        assert_eq!(s.push(b".3.4\nwhole one\npart", &mut emit), 0);
        assert_eq!(s.push(b"ial\n", &mut emit), 0);
        assert_eq!(out, ["whole one", "partial"]);
    }

    fn split(chunks: &[&[u8]]) -> (Vec<String>, u64) {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let mut dropped = 0;
        for c in chunks {
            dropped += s.push(c, &mut |l| {
                out.push(String::from_utf8_lossy(l).into_owned())
            });
        }
        (out, dropped)
    }

    #[test]
    fn splits_and_keeps_partial_lines() {
        let (l, d) = split(&[b"a\nb", b"c\n", b"d"]);
        assert_eq!(l, vec!["a", "bc"]);
        assert_eq!(d, 0);
    }

    #[test]
    fn drops_overlong_lines() {
        let long = vec![b'x'; MAX_LINE + 1];
        let (l, d) = split(&[b"ok\n", &long, b"\nafter\n"]);
        assert_eq!(l, vec!["ok", "after"]);
        assert_eq!(d, 1);
        // Over the limit only once the pieces are joined.
        let half = vec![b'y'; MAX_LINE / 2 + 1];
        let (l, d) = split(&[&half, &half, b"\nnext\n"]);
        assert_eq!(l, vec!["next"]);
        assert_eq!(d, 1);
    }
}
