//! FreeSWITCH Event Socket framing, written by hand (the protocol is small).
//!
//! A frame is a block of `Name: value` lines ended by an empty line; when the
//! block has `Content-Length: N`, N bytes of body follow. A `text/event-plain`
//! body is itself such a block, with percent-encoded values, and may carry an
//! inner body with its own `Content-Length`. Header names are
//! case-insensitive and may repeat (`profile-name` appears twice in
//! `register_failure`). Everything here borrows from the read buffer: no
//! allocation per frame or per header. [`FrameBuffer`] keeps what a
//! connection read until its frames are whole.

use std::borrow::Cow;

use memchr::memchr;

/// Largest header block accepted before its terminating empty line.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest body accepted (FreeSWITCH events are a few KiB).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// Why a byte stream is not Event Socket framing; the connection is dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No empty line within [`MAX_HEADER_BLOCK`] bytes.
    #[error("frame header block longer than {MAX_HEADER_BLOCK} bytes without an empty line")]
    HeaderTooLong,
    /// `Content-Length` is not a number or is too large.
    #[error("bad Content-Length {0:?} (a number up to {MAX_BODY} expected)")]
    BadLength(String),
}

/// One frame, borrowed from the buffer it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header block, without its terminating empty line.
    pub headers: &'a [u8],
    /// The body (empty without `Content-Length`).
    pub body: &'a [u8],
}

/// Finds the end of a header block: the offset of the empty line's end.
/// Tolerates `\r\n` line ends.
fn block_end(buf: &[u8]) -> Option<(usize, usize)> {
    // Line by line: the end is the first empty line, `\n\n` or `\r\n\r\n`.
    // (A whole-buffer substring search per frame was quadratic.)
    let mut from = 0;
    while let Some(p) = memchr(b'\n', &buf[from..]) {
        let nl = from + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some((nl, nl + 2)),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => {
                let start = if nl > 0 && buf[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                return Some((start, nl + 3));
            }
            _ => from = nl + 1,
        }
    }
    None
}

/// Iterates over `Name: value` lines of a header block.
pub fn header_lines(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = block;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let (line, next) = match memchr(b'\n', rest) {
                Some(p) => (&rest[..p], &rest[p + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = next;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = memchr(b':', line) else {
                continue;
            };
            let name = &line[..colon];
            let mut value = &line[colon + 1..];
            if value.first() == Some(&b' ') {
                value = &value[1..];
            }
            return Some((name, value));
        }
    })
}

/// The first value of header `name` (case-insensitive) in a block.
pub fn header<'a>(block: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header_lines(block)
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

/// Every value of header `name` (case-insensitive), in order.
pub fn header_all<'a>(block: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    header_lines(block)
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

fn content_length(block: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(v) = header(block, "Content-Length") else {
        return Ok(None);
    };
    let s = std::str::from_utf8(v).unwrap_or("").trim();
    match s.parse::<usize>() {
        Ok(n) if n <= MAX_BODY => Ok(Some(n)),
        _ => Err(FrameError::BadLength(
            String::from_utf8_lossy(&v[..v.len().min(32)]).into_owned(),
        )),
    }
}

/// Parses one frame at the start of `buf`. `Ok(None)` means more bytes are
/// needed; otherwise returns the frame and how many bytes it used.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    // Stray empty lines between frames are skipped.
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\n' || buf[start] == b'\r') {
        start += 1;
    }
    let rest = &buf[start..];
    let Some((hdr_end, body_start)) = block_end(rest) else {
        if rest.len() > MAX_HEADER_BLOCK {
            return Err(FrameError::HeaderTooLong);
        }
        return Ok(None);
    };
    if hdr_end > MAX_HEADER_BLOCK {
        return Err(FrameError::HeaderTooLong);
    }
    let headers = &rest[..hdr_end];
    let len = content_length(headers)?.unwrap_or(0);
    let end = body_start + len;
    if rest.len() < end {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            headers,
            body: &rest[body_start..end],
        },
        start + end,
    )))
}

/// What a buffer holds of a frame that has begun but is not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partial {
    /// Part of a header block, before its empty line.
    Headers {
        /// Bytes of the block so far.
        have: usize,
    },
    /// A whole header block and part of its `Content-Length` body.
    Body {
        /// Body bytes so far.
        have: usize,
        /// Body bytes announced.
        need: usize,
    },
}

impl std::fmt::Display for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partial::Headers { have } => {
                write!(f, "{have} byte(s) of a header block without its empty line")
            }
            Partial::Body { have, need } => {
                write!(f, "{have} of {need} body byte(s) (Content-Length)")
            }
        }
    }
}

/// The frame begun at the start of `buf`, when `buf` holds some of one but
/// not all of it; `None` when it holds nothing of a frame (empty lines
/// between frames start none) or a whole frame.
pub fn partial(buf: &[u8]) -> Option<Partial> {
    let start = buf
        .iter()
        .position(|&c| c != b'\n' && c != b'\r')
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    if rest.is_empty() {
        return None;
    }
    match block_end(rest) {
        None => Some(Partial::Headers { have: rest.len() }),
        Some((hdr_end, body_start)) => {
            let need = content_length(&rest[..hdr_end]).ok().flatten().unwrap_or(0);
            let have = rest.len() - body_start;
            (have < need).then_some(Partial::Body { have, need })
        }
    }
}

/// Decodes `%XX` escapes (either case of hex). A `%` not followed by two hex
/// digits stays as it is. Borrows when there is nothing to decode.
pub fn percent_decode(v: &[u8]) -> Cow<'_, [u8]> {
    // Values are short: a plain scan costs less than memchr's set-up.
    if !v.contains(&b'%') {
        return Cow::Borrowed(v);
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            if let (Some(h), Some(l)) = (hex(v[i + 1]), hex(v[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// Text of a decoded value (invalid UTF-8 replaced).
pub fn text(v: &[u8]) -> Cow<'_, str> {
    utf8_text(percent_decode(v))
}

/// Decoded bytes as text, invalid UTF-8 replaced; borrows when it can.
pub fn utf8_text(v: Cow<'_, [u8]>) -> Cow<'_, str> {
    // `from_utf8` first: most values are valid, and its check is faster
    // than the lossy decoder's.
    match v {
        Cow::Borrowed(b) => match std::str::from_utf8(b) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(b),
        },
        Cow::Owned(o) => match String::from_utf8(o) {
            Ok(s) => Cow::Owned(s),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        },
    }
}

/// A `text/event-plain` body: its header block and its inner body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainEvent<'a> {
    /// The event's `Name: value` lines (values percent-encoded).
    pub headers: &'a [u8],
    /// The inner body, when the event has one (`log/data`, `_body`).
    pub body: &'a [u8],
}

impl<'a> PlainEvent<'a> {
    /// Splits an event body into its header block and inner body.
    pub fn parse(body: &'a [u8]) -> PlainEvent<'a> {
        match block_end(body) {
            Some((hdr_end, body_start)) => {
                let headers = &body[..hdr_end];
                let inner = content_length(headers)
                    .ok()
                    .flatten()
                    .map_or(&body[body.len()..], |n| {
                        &body[body_start..(body_start + n).min(body.len())]
                    });
                PlainEvent {
                    headers,
                    body: inner,
                }
            }
            None => PlainEvent {
                headers: body.strip_suffix(b"\n").unwrap_or(body),
                body: &body[body.len()..],
            },
        }
    }

    /// The first value of `name` (case-insensitive), percent-decoded.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        header(self.headers, name).map(text)
    }
}

/// A frame's header block and body, copied out of the buffer.
pub type OwnedFrame = (Vec<u8>, Vec<u8>);

/// Accumulates bytes from the socket and yields whole frames.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
}

impl FrameBuffer {
    /// Appends bytes read from the socket.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Calls `f` for every complete frame; keeps a partial one for later.
    /// Returns how many frames were handed out.
    pub fn drain(&mut self, mut f: impl FnMut(Frame<'_>)) -> Result<usize, FrameError> {
        let mut n = 0;
        while let Some((frame, used)) = parse_frame(&self.buf[self.start..])? {
            f(frame);
            self.start += used;
            n += 1;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(n)
    }

    /// What is buffered of a frame begun but not complete, if anything.
    pub fn pending(&self) -> Option<Partial> {
        partial(&self.buf[self.start..])
    }

    /// The next complete frame, owned (for the handshake).
    pub fn next_owned(&mut self) -> Result<Option<OwnedFrame>, FrameError> {
        match parse_frame(&self.buf[self.start..])? {
            Some((f, used)) => {
                let out = (f.headers.to_vec(), f.body.to_vec());
                self.start += used;
                Ok(Some(out))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_with_and_without_body() {
        let buf = b"Content-Type: auth/request\n\nContent-Length: 5\nContent-Type: x\n\nhelloContent-Type: command/reply\nReply-Text: +OK accepted\n\nrest";
        let (f, n) = parse_frame(buf).unwrap().unwrap();
        assert_eq!(
            header(f.headers, "content-type"),
            Some(&b"auth/request"[..])
        );
        assert!(f.body.is_empty());
        let (f, m) = parse_frame(&buf[n..]).unwrap().unwrap();
        assert_eq!(f.body, b"hello");
        let (f, k) = parse_frame(&buf[n + m..]).unwrap().unwrap();
        assert_eq!(header(f.headers, "Reply-Text"), Some(&b"+OK accepted"[..]));
        assert_eq!(&buf[n + m + k..], b"rest");
        assert_eq!(parse_frame(b"rest").unwrap(), None);
    }

    #[test]
    fn needs_more_until_body_complete() {
        let buf = b"Content-Length: 10\n\n12345";
        assert_eq!(parse_frame(buf).unwrap(), None);
        assert_eq!(parse_frame(b"Content-Type: x\n").unwrap(), None);
    }

    #[test]
    fn rejects_bad_lengths_and_endless_headers() {
        assert!(matches!(
            parse_frame(b"Content-Length: abc\n\n"),
            Err(FrameError::BadLength(_))
        ));
        assert!(matches!(
            parse_frame(b"Content-Length: 99999999999\n\n"),
            Err(FrameError::BadLength(_))
        ));
        assert!(matches!(
            parse_frame(b"Content-Length: -1\n\n"),
            Err(FrameError::BadLength(_))
        ));
        let long = vec![b'a'; MAX_HEADER_BLOCK + 2];
        assert_eq!(parse_frame(&long), Err(FrameError::HeaderTooLong));
    }

    #[test]
    fn partial_frames_are_described() {
        assert_eq!(partial(b""), None);
        assert_eq!(partial(b"\n\r\n"), None, "empty lines start no frame");
        assert_eq!(
            partial(b"\nContent-Ty"),
            Some(Partial::Headers { have: 10 })
        );
        let p = partial(b"Content-Length: 10\n\n1234").unwrap();
        assert_eq!(p, Partial::Body { have: 4, need: 10 });
        assert_eq!(p.to_string(), "4 of 10 body byte(s) (Content-Length)");
        assert_eq!(partial(b"Content-Length: 2\n\n12"), None, "whole");
        assert_eq!(partial(b"A: b\n\n"), None, "whole, no body");
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(
            &*percent_decode(b"sofia%3A%3Aregister_failure"),
            b"sofia::register_failure"
        );
        assert_eq!(&*percent_decode(b"a%20b%2fc"), b"a b/c");
        assert_eq!(&*percent_decode(b"100%"), b"100%");
        assert_eq!(&*percent_decode(b"%zz%4"), b"%zz%4");
        assert_eq!(&*percent_decode(b"x%0Ay"), b"x\ny");
        assert!(matches!(percent_decode(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn plain_event_duplicates_case_and_inner_body() {
        let body = b"Event-Name: CUSTOM\nprofile-name: internal\nProfile-Name: external\nContent-Length: 3\n\nabc";
        let e = PlainEvent::parse(body);
        assert_eq!(e.get("event-name").as_deref(), Some("CUSTOM"));
        let all: Vec<&[u8]> = header_all(e.headers, "PROFILE-NAME").collect();
        assert_eq!(all, vec![&b"internal"[..], &b"external"[..]]);
        assert_eq!(e.body, b"abc");
        let e = PlainEvent::parse(b"A: 1\nB: 2\n");
        assert_eq!(e.get("b").as_deref(), Some("2"));
    }
}
