//! The lines of a header block, their ends found 64 bytes at a time.
//!
//! A `register_failure` event is about 22 short lines (about 30 bytes
//! each). A search per line (`memchr`) pays its set-up 22 times; one pass
//! that compares 16 bytes at once (four times per 64-byte chunk) and walks
//! the bits of the result pays it once. On this path that is the difference between about 120 ns and 50 ns
//! per event, most of what reading an event costs.

/// The lines of `block` (without `\n` or a trailing `\r`), up to and not
/// including the first empty line. The last line need not end in `\n`.
#[inline]
pub fn lines(block: &[u8]) -> Lines<'_> {
    Lines {
        block,
        start: 0,
        chunk: 0,
        mask: 0,
        mask_base: 0,
        finished: false,
    }
}

/// Iterator of [`lines`].
pub struct Lines<'a> {
    block: &'a [u8],
    /// Where the next line starts.
    start: usize,
    /// Where the next chunk to examine starts.
    chunk: usize,
    /// Line ends found in the last chunk and not returned yet.
    mask: u64,
    /// Where that chunk starts.
    mask_base: usize,
    finished: bool,
}

impl Lines<'_> {
    /// The offset of the next `\n`, if any.
    #[inline(always)]
    fn next_end(&mut self) -> Option<usize> {
        loop {
            if self.mask != 0 {
                let end = self.mask_base + self.mask.trailing_zeros() as usize;
                self.mask &= self.mask - 1;
                return Some(end);
            }
            let len = self.block.len();
            if self.chunk >= len {
                return None;
            }
            // 64 bytes at a time: a register event's 23 lines are 12
            // chunks, not 46, and so are the refills (a branch each).
            let to = (self.chunk + 64).min(len);
            self.mask = newlines(&self.block[self.chunk..to]);
            self.mask_base = self.chunk;
            self.chunk = to;
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    #[inline(always)]
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.finished {
            return None;
        }
        let line = match self.next_end() {
            Some(end) => {
                let line = &self.block[self.start..end];
                self.start = end + 1;
                line
            }
            None => {
                self.finished = true;
                &self.block[self.start..]
            }
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.finished = true;
            return None;
        }
        Some(line)
    }
}

/// Bit `i` set where `bytes[i]` is `\n`; at most 64 bytes.
#[inline(always)]
fn newlines(bytes: &[u8]) -> u64 {
    debug_assert!(bytes.len() <= 64);
    let mut mask = 0u64;
    let mut chunks = bytes.chunks_exact(16);
    for (i, c) in chunks.by_ref().enumerate() {
        mask |= u64::from(newlines16(c)) << (16 * i);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        mask |= u64::from(newlines_tail(tail)) << (bytes.len() - tail.len());
    }
    mask
}

/// Bit `i` set where `bytes[i]` is `\n`; fewer than 16 bytes.
#[inline(always)]
fn newlines_tail(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .enumerate()
        .fold(0, |m, (i, &c)| m | (u32::from(c == b'\n') << i))
}

/// Bit `i` set where `chunk[i]` is `\n`; `chunk` is 16 bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn newlines16(chunk: &[u8]) -> u32 {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    debug_assert_eq!(chunk.len(), 16);
    // SAFETY: SSE2 is part of x86_64's baseline; `chunk` is 16 readable
    // bytes (from `chunks_exact(16)`) and the load is unaligned.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8))) as u32
    }
}

/// Bit `i` set where `chunk[i]` is `\n`; `chunk` is 16 bytes.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn newlines16(chunk: &[u8]) -> u32 {
    newlines_tail(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(b: &[u8]) -> Vec<Vec<u8>> {
        lines(b).map(<[u8]>::to_vec).collect()
    }

    /// The plain definition the fast one must agree with.
    fn reference(b: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for l in b.split(|&c| c == b'\n') {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            if l.is_empty() {
                break;
            }
            out.push(l.to_vec());
        }
        out
    }

    #[test]
    fn agrees_with_the_plain_definition_at_every_length_and_offset() {
        // Lines of every length around the 16- and 64-byte chunk edges, with and
        // without `\r`, ended by an empty line or by the end of the block.
        let mut seed = 7u32;
        for len in 0..300usize {
            let mut b = Vec::with_capacity(len);
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b.push(match (seed >> 16) % 11 {
                    0 => b'\n',
                    1 => b'\r',
                    _ => b'a' + ((seed >> 8) % 26) as u8,
                });
            }
            assert_eq!(all(&b), reference(&b), "block {b:?}");
        }
    }

    #[test]
    fn stops_at_the_empty_line() {
        assert_eq!(
            all(b"a: 1\r\nb: 2\r\n\r\nc: 3\n"),
            vec![b"a: 1".to_vec(), b"b: 2".to_vec()]
        );
        assert_eq!(all(b"x: 1"), vec![b"x: 1".to_vec()]);
        assert!(all(b"").is_empty());
        assert!(all(b"\nx: 1\n").is_empty());
        let long = [b"n".repeat(40), b"\n\nafter\n".to_vec()].concat();
        assert_eq!(all(&long), vec![b"n".repeat(40)]);
    }
}
