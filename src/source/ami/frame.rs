//! Asterisk Manager Interface framing, written by hand (the protocol is
//! small).
//!
//! After a one-line banner (`Asterisk Call Manager/5.0.1`), the stream is a
//! series of messages: `Name: value` lines ended by CRLF (a bare LF is
//! taken too), each message ended by an empty line. Everything is bounded:
//! a line longer than [`MAX_LINE`], a message longer than [`MAX_MESSAGE`]
//! or of more than [`MAX_LINES`] lines ends the connection, so a hostile
//! or broken server cannot make the buffer grow. A message arriving a byte
//! at a time is scanned once, not again with every byte.

use std::ops::Range;

use memchr::memchr;

/// Longest line accepted (Asterisk's security events are a few hundred
/// bytes; an attacker's SIP user name is cut by Asterisk well below this).
pub const MAX_LINE: usize = 8 * 1024;
/// Longest message accepted, empty line excluded.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most lines in one message.
pub const MAX_LINES: usize = 256;
/// Longest banner line accepted.
pub const MAX_BANNER: usize = 256;

/// Why a byte stream is not AMI framing; the connection is dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A line without its end within [`MAX_LINE`] bytes.
    #[error("a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A message without its empty line within [`MAX_MESSAGE`] bytes.
    #[error("a message longer than {MAX_MESSAGE} bytes without its empty line")]
    MessageTooLong,
    /// A message of more than [`MAX_LINES`] lines.
    #[error("a message of more than {MAX_LINES} lines")]
    TooManyLines,
    /// No banner line within [`MAX_BANNER`] bytes.
    #[error("no banner line within the first {MAX_BANNER} bytes")]
    BannerTooLong,
}

/// One message, borrowed from the buffer it was read from: its lines,
/// without the empty line that ended it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The lines, as read (line ends included, except the last one's).
    pub block: &'a [u8],
}

/// Strips a trailing CR.
fn chomp(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

impl<'a> Message<'a> {
    /// Every line, its end removed.
    pub fn lines(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.block.split(|&c| c == b'\n').map(chomp)
    }

    /// Every `Name: value` line as (name, value); lines without a colon
    /// (command output) are skipped. One space after the colon is dropped.
    pub fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.lines().filter_map(|line| {
            let colon = memchr(b':', line)?;
            let value = &line[colon + 1..];
            Some((&line[..colon], value.strip_prefix(b" ").unwrap_or(value)))
        })
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// How many lines name `name` (case-insensitive).
    pub fn count(&self, name: &str) -> usize {
        self.fields()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .count()
    }

    /// The name of the first line (`Event`, `Response`), if it has one.
    pub fn first_name(&self) -> Option<&'a [u8]> {
        let line = self.lines().next()?;
        memchr(b':', line).map(|c| &line[..c])
    }
}

/// Accumulates bytes from the socket and yields whole messages.
#[derive(Debug, Default)]
pub struct MessageBuffer {
    buf: Vec<u8>,
    /// Where the message being read begins.
    start: usize,
    /// Where the first line not yet looked at begins.
    scan: usize,
    /// Lines of the message being read, so far.
    lines: usize,
}

impl MessageBuffer {
    /// Appends bytes read from the socket.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes the banner line (the first line of a connection): `Ok(None)`
    /// while it is not complete.
    pub fn banner(&mut self) -> Result<Option<String>, FrameError> {
        let rest = &self.buf[self.start..];
        let Some(p) = memchr(b'\n', rest) else {
            if rest.len() > MAX_BANNER {
                return Err(FrameError::BannerTooLong);
            }
            return Ok(None);
        };
        if p > MAX_BANNER {
            return Err(FrameError::BannerTooLong);
        }
        let line = String::from_utf8_lossy(chomp(&rest[..p])).into_owned();
        self.start += p + 1;
        self.scan = self.start;
        Ok(Some(line))
    }

    /// The byte range of the next whole message, if there is one.
    fn next_range(&mut self) -> Result<Option<Range<usize>>, FrameError> {
        loop {
            let rest = &self.buf[self.scan..];
            let Some(p) = memchr(b'\n', rest) else {
                if rest.len() > MAX_LINE {
                    return Err(FrameError::LineTooLong);
                }
                if self.buf.len() - self.start > MAX_MESSAGE {
                    return Err(FrameError::MessageTooLong);
                }
                return Ok(None);
            };
            let line = chomp(&rest[..p]);
            if line.len() > MAX_LINE {
                return Err(FrameError::LineTooLong);
            }
            let line_start = self.scan;
            self.scan += p + 1;
            if line.is_empty() {
                if self.lines == 0 {
                    // Stray empty lines between messages start none.
                    self.start = self.scan;
                    continue;
                }
                // The message ends before the empty line (and the line end
                // before it).
                let mut end = line_start;
                if end > self.start && self.buf[end - 1] == b'\n' {
                    end -= 1;
                }
                if end > self.start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                let r = self.start..end;
                self.start = self.scan;
                self.lines = 0;
                return Ok(Some(r));
            }
            self.lines += 1;
            if self.lines > MAX_LINES {
                return Err(FrameError::TooManyLines);
            }
            if self.scan - self.start > MAX_MESSAGE {
                return Err(FrameError::MessageTooLong);
            }
        }
    }

    /// Calls `f` for every whole message; keeps a partial one for later.
    /// Returns how many messages were handed out.
    pub fn drain(&mut self, mut f: impl FnMut(Message<'_>)) -> Result<usize, FrameError> {
        let mut n = 0;
        while let Some(r) = self.next_range()? {
            f(Message {
                block: &self.buf[r],
            });
            n += 1;
        }
        self.compact();
        Ok(n)
    }

    /// The next whole message, owned (for the handshake).
    pub fn next_owned(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let r = self.next_range()?;
        let out = r.map(|r| self.buf[r].to_vec());
        self.compact();
        Ok(out)
    }

    /// Drops what was handed out, so the buffer holds at most one partial
    /// message (and what the last read brought).
    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.scan = 0;
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
    }

    /// Bytes of a message begun but not complete, if any (empty lines
    /// between messages begin none).
    pub fn pending(&self) -> Option<usize> {
        let rest = &self.buf[self.start..];
        let begun = self.lines > 0 || rest.iter().any(|&c| c != b'\r' && c != b'\n');
        begun.then_some(rest.len())
    }

    /// Bytes held right now (for tests of the bounds).
    pub fn held(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8], step: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut mb = MessageBuffer::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            mb.extend(chunk);
            mb.drain(|m| out.push(m.block.to_vec()))?;
        }
        Ok(out)
    }

    #[test]
    fn banner_then_messages_in_any_pieces() {
        let stream = b"Asterisk Call Manager/5.0.1\r\nResponse: Success\r\nMessage: Authentication accepted\r\n\r\n\r\nEvent: InvalidPassword\r\nService: SIP\r\n\r\n";
        for step in [1, 2, 3, 7, 64, stream.len()] {
            let mut mb = MessageBuffer::default();
            let mut banner = None;
            let mut out = Vec::new();
            for chunk in stream.chunks(step) {
                mb.extend(chunk);
                if banner.is_none() {
                    banner = mb.banner().unwrap();
                    if banner.is_none() {
                        continue;
                    }
                }
                mb.drain(|m| out.push(m.block.to_vec())).unwrap();
            }
            assert_eq!(banner.as_deref(), Some("Asterisk Call Manager/5.0.1"));
            assert_eq!(
                out,
                vec![
                    b"Response: Success\r\nMessage: Authentication accepted".to_vec(),
                    b"Event: InvalidPassword\r\nService: SIP".to_vec()
                ],
                "step {step}"
            );
            assert_eq!(mb.pending(), None);
        }
    }

    #[test]
    fn fields_names_and_values() {
        let m = Message {
            block: b"Event: FailedACL\r\nprivilege: security,all\r\nNoColon\r\nAccountID:\r\nX:  two spaces\r\nRemoteAddress: a\r\nremoteaddress: b",
        };
        assert_eq!(m.first_name(), Some(&b"Event"[..]));
        assert_eq!(m.get("PRIVILEGE"), Some(&b"security,all"[..]));
        assert_eq!(m.get("AccountID"), Some(&b""[..]));
        assert_eq!(m.get("x"), Some(&b" two spaces"[..]));
        assert_eq!(m.count("RemoteAddress"), 2);
        assert_eq!(m.get("RemoteAddress"), Some(&b"a"[..]));
        assert_eq!(m.get("Missing"), None);
        assert_eq!(Message { block: b"NoColon" }.first_name(), None);
    }

    #[test]
    fn bare_line_feeds_are_taken() {
        assert_eq!(
            all(b"Event: A\nK: v\n\nEvent: B\n\n", 1).unwrap(),
            vec![b"Event: A\nK: v".to_vec(), b"Event: B".to_vec()]
        );
    }

    /// A hostile server: an endless line, an endless message, a message of
    /// endless short lines. Each ends the connection with the buffer
    /// bounded, whatever the piece size.
    #[test]
    fn bounds_end_the_connection_before_memory_grows() {
        let line = vec![b'a'; MAX_LINE * 4];
        for step in [1000, 65_536] {
            let mut mb = MessageBuffer::default();
            let mut r = Ok(0);
            for chunk in line.chunks(step) {
                mb.extend(chunk);
                r = mb.drain(|_| {});
                if r.is_err() {
                    break;
                }
            }
            assert_eq!(r, Err(FrameError::LineTooLong));
            assert!(mb.held() <= MAX_LINE + step, "{}", mb.held());
        }
        let mut long = Vec::new();
        while long.len() < MAX_MESSAGE * 2 {
            long.extend_from_slice(&[b'k'; 4000]);
            long.extend_from_slice(b": v\r\n");
        }
        assert_eq!(all(&long, 4096), Err(FrameError::MessageTooLong));
        let many = b"A: b\r\n".repeat(MAX_LINES + 1);
        assert_eq!(all(&many, 64), Err(FrameError::TooManyLines));
        let mut mb = MessageBuffer::default();
        mb.extend(&[b'x'; MAX_BANNER + 1]);
        assert_eq!(mb.banner(), Err(FrameError::BannerTooLong));
    }

    #[test]
    fn partial_messages_are_noted() {
        let mut mb = MessageBuffer::default();
        mb.extend(b"\r\n\r\n");
        assert_eq!(mb.drain(|_| {}), Ok(0));
        assert_eq!(mb.pending(), None, "empty lines begin no message");
        mb.extend(b"Event: X\r\nA");
        assert_eq!(mb.drain(|_| {}), Ok(0));
        assert!(mb.pending().is_some());
        mb.extend(b": b\r\n\r\n");
        assert_eq!(mb.drain(|_| {}), Ok(1));
        assert_eq!(mb.pending(), None);
        assert_eq!(mb.held(), 0);
    }

    #[test]
    fn non_utf8_is_carried_as_bytes() {
        let out = all(
            b"Event: InvalidAccountID\r\nAccountID: \xff\xfe\xc3\r\n\r\n",
            3,
        )
        .unwrap();
        let m = Message { block: &out[0] };
        assert_eq!(m.get("AccountID"), Some(&b"\xff\xfe\xc3"[..]));
    }
}
