//! Counting the lines no pattern can match, as fail2ban-regex counts them,
//! 64 bytes at a time.
//!
//! `test-filter` searches a log for its filter's literals and reads only
//! the lines around a hit; the lines in between are misses, and only their
//! number matters. fail2ban-regex leaves out empty lines (a lone `\r`
//! included) and comments (`#` first), so the count needs each line's
//! first byte, not just its end. A `memchr` per line paid its set-up for
//! every line (a quarter of the command's time); this pass looks at 64
//! bytes at once and turns the three bytes that matter into bit masks.

/// The lines of `region` split at `\n` that fail2ban-regex counts: not
/// empty once a trailing `\r` is cut, and not starting with `#`. A piece
/// after a final `\n` is empty, so not counted.
pub fn counted_lines(region: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::counted_lines(region) };
    }
    Counter::new().run(region, masks_portable)
}

/// Bits `i` set where byte `i` of a 64-byte block is `\n`, `#`, `\r`.
#[derive(Clone, Copy)]
struct Masks {
    nl: u64,
    hash: u64,
    cr: u64,
}

/// The pass over the blocks, whichever way their masks are found.
struct Counter {
    newlines: u64,
    uncounted: u64,
}

impl Counter {
    fn new() -> Counter {
        Counter {
            newlines: 0,
            uncounted: 0,
        }
    }

    #[inline(always)]
    fn run(mut self, region: &[u8], masks: impl Fn(&[u8; 64]) -> Masks) -> u64 {
        // Bit 0 of `carry`: the block's first byte starts a line (the
        // region's first byte does).
        let mut carry = 1u64;
        let mut blocks = region.chunks_exact(64);
        let mut base = 0;
        for b in blocks.by_ref() {
            let Ok(block) = <&[u8; 64]>::try_from(b) else {
                break;
            };
            // What follows the block: a `\n` or the region's end ends a
            // line that is a lone `\r`.
            let after = region.get(base + 64).is_none_or(|&c| c == b'\n');
            carry = self.block(masks(block), !0, carry, after);
            base += 64;
        }
        let tail = blocks.remainder();
        if !tail.is_empty() {
            let mut block = [0u8; 64];
            block[..tail.len()].copy_from_slice(tail);
            // Zero bytes are none of the three; the region's end acts as a
            // `\n` for a lone `\r` just before it.
            let valid = (1u64 << tail.len()) - 1;
            let mut m = masks(&block);
            m.nl &= valid;
            let end = 1u64 << tail.len();
            self.block_with_end(m, valid, carry, end);
        }
        // The piece after the last `\n` (or the whole region when it has
        // none) starts at the end when the region ends in `\n` or is empty:
        // it is empty, so not counted.
        if region.last().is_none_or(|&c| c == b'\n') {
            self.uncounted += 1;
        }
        self.newlines + 1 - self.uncounted
    }

    /// One whole block; returns the carry into the next.
    #[inline(always)]
    fn block(&mut self, m: Masks, valid: u64, carry: u64, after: bool) -> u64 {
        let next = (m.nl >> 1) | (u64::from(after) << 63);
        self.tally(m, valid, carry, next);
        m.nl >> 63
    }

    /// The last, partial block: the region ends at bit `end`.
    #[inline(always)]
    fn block_with_end(&mut self, m: Masks, valid: u64, carry: u64, end: u64) {
        let next = (m.nl | end) >> 1;
        self.tally(m, valid, carry, next);
    }

    /// `next`: bit `i` set where byte `i + 1` ends a line.
    #[inline(always)]
    fn tally(&mut self, m: Masks, valid: u64, carry: u64, next: u64) {
        let starts = ((m.nl << 1) | carry) & valid;
        let empty_or_comment = m.nl | m.hash | (m.cr & next);
        self.uncounted += u64::from((starts & empty_or_comment).count_ones());
        self.newlines += u64::from(m.nl.count_ones());
    }
}

/// The masks a byte at a time (any target; the reference in tests).
fn masks_portable(block: &[u8; 64]) -> Masks {
    let mut m = Masks {
        nl: 0,
        hash: 0,
        cr: 0,
    };
    for (i, &c) in block.iter().enumerate() {
        m.nl |= u64::from(c == b'\n') << i;
        m.hash |= u64::from(c == b'#') << i;
        m.cr |= u64::from(c == b'\r') << i;
    }
    m
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_set1_epi8,
    };

    use super::{Counter, Masks};

    /// [`super::counted_lines`] with two 32-byte loads per block.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn counted_lines(region: &[u8]) -> u64 {
        Counter::new().run(region, |block| {
            // SAFETY: AVX2 is enabled on this function; `block` is 64
            // readable bytes and the loads are unaligned.
            unsafe { masks(block) }
        })
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn masks(block: &[u8; 64]) -> Masks {
        let p = block.as_ptr().cast::<__m256i>();
        // SAFETY: two unaligned 32-byte loads inside the 64-byte block.
        let (lo, hi) = unsafe { (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))) };
        let bits = |c: u8| {
            let c = _mm256_set1_epi8(c as i8);
            let l = _mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, c)) as u32;
            let h = _mm256_movemask_epi8(_mm256_cmpeq_epi8(hi, c)) as u32;
            u64::from(l) | (u64::from(h) << 32)
        };
        Masks {
            nl: bits(b'\n'),
            hash: bits(b'#'),
            cr: bits(b'\r'),
        }
    }

    #[cfg(test)]
    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx2")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition: split, cut a `\r`, count what is neither
    /// empty nor a comment.
    fn reference(region: &[u8]) -> u64 {
        region
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty() && l[0] != b'#')
            .count() as u64
    }

    fn portable(region: &[u8]) -> u64 {
        Counter::new().run(region, masks_portable)
    }

    #[test]
    fn agrees_with_the_plain_definition_at_every_length_and_offset() {
        // Every length around the 64-byte block edges, the three bytes
        // that matter dense enough to meet each other at every edge.
        let mut seed = 11u32;
        let mut buf = Vec::new();
        for len in 0..400usize {
            buf.clear();
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                buf.push(match (seed >> 16) % 9 {
                    0 | 1 => b'\n',
                    2 => b'\r',
                    3 => b'#',
                    _ => b'a',
                });
            }
            let want = reference(&buf);
            assert_eq!(portable(&buf), want, "portable, {buf:?}");
            assert_eq!(counted_lines(&buf), want, "{buf:?}");
            #[cfg(target_arch = "x86_64")]
            if avx2::available() {
                // SAFETY: checked just above.
                assert_eq!(unsafe { avx2::counted_lines(&buf) }, want, "avx2, {buf:?}");
            }
        }
    }

    #[test]
    fn the_edges_of_a_block_and_of_the_region() {
        let cases: [&[u8]; 9] = [
            b"",
            b"\n",
            b"\r",
            b"\r\n",
            b"#x\nx",
            b"x\r\n\r\n#\n",
            &[b'a'; 63],
            &[[b'a'; 63].as_slice(), b"\r\n\rb"].concat(),
            &[[b'a'; 64].as_slice(), b"\n\r"].concat(),
        ];
        for c in cases {
            assert_eq!(counted_lines(c), reference(c), "{c:?}");
            assert_eq!(portable(c), reference(c), "portable, {c:?}");
        }
    }

    #[test]
    fn counts_the_lines_of_a_real_log() {
        let Some(log) = crate::test_support::corpus_file("freeswitch-1.10.12/freeswitch.log")
        else {
            return;
        };
        assert_eq!(counted_lines(&log), reference(&log));
    }
}
