//! The effects prefilter's scan, sixteen bytes at a time: where in a statement a word the
//! pooler looks for may start (its first two letters are `a`, `s` or `t` then `d` or `e`, in
//! any case: `advisory`, `set_config`, `temp`) or a `;` stands. Every statement a client sends
//! goes through it, so on x86_64 it is one SSE2 pass (part of the baseline, always there);
//! elsewhere, and as the reference the SIMD pass is tested against, byte by byte.

/// Bit `i` is set when a candidate starts at `s[at + i]` (i < 16); bytes past the end of `s`
/// are none.
pub fn candidates(s: &[u8], at: usize) -> u32 {
    let mut padded = [0u8; WINDOW];
    let window: &[u8; WINDOW] = match s.get(at..at + WINDOW).and_then(|w| w.try_into().ok()) {
        Some(w) => w,
        None => {
            // Fewer than seventeen bytes are left: zeros are no candidate, nor before one.
            let tail = s.get(at..).unwrap_or_default();
            padded[..tail.len()].copy_from_slice(tail);
            &padded
        }
    };
    scan(window)
}

/// Sixteen positions and the byte after the last (the second letter of a pair).
const WINDOW: usize = 17;

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn scan(w: &[u8; WINDOW]) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: compiled only where SSE2 is enabled (every x86_64 target but the bare-metal
    // ones); the two unaligned loads read bytes 0..16 and 1..17 of a 17-byte array.
    unsafe {
        let raw = _mm_loadu_si128(w.as_ptr().cast());
        let next = _mm_loadu_si128(w.as_ptr().add(1).cast());
        let this = _mm_or_si128(raw, _mm_set1_epi8(0x20));
        let is = |c: u8| _mm_cmpeq_epi8(this, _mm_set1_epi8(c as i8));
        let first = _mm_or_si128(_mm_or_si128(is(b'a'), is(b's')), is(b't'));
        // `d`, `e`, `D` and `E` are exactly the bytes that become `e` with bits 0 and 5 set.
        let second = _mm_cmpeq_epi8(_mm_or_si128(next, _mm_set1_epi8(0x21)), _mm_set1_epi8(0x65));
        // `;` is compared before any case bit is set (ESC would become one).
        let semi = _mm_cmpeq_epi8(raw, _mm_set1_epi8(b';' as i8));
        let hits = _mm_or_si128(_mm_and_si128(first, second), semi);
        _mm_movemask_epi8(hits) as u32
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn scan(w: &[u8; WINDOW]) -> u32 {
    scan_bytes(w)
}

/// [`scan`] one byte at a time.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
fn scan_bytes(w: &[u8; WINDOW]) -> u32 {
    let mut hits = 0;
    for i in 0..WINDOW - 1 {
        let first = matches!(w[i] | 0x20, b'a' | b's' | b't');
        let second = matches!(w[i + 1].to_ascii_lowercase(), b'd' | b'e');
        if (first && second) || w[i] == b';' {
            hits |= 1 << i;
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_semicolons_are_found_and_nothing_past_the_end() {
        let s = b"SELECT 1; tEmp aD xse";
        let found: Vec<usize> = (0..s.len())
            .step_by(16)
            .flat_map(|at| {
                let m = candidates(s, at);
                (0..16)
                    .filter(move |i| m & (1 << i) != 0)
                    .map(move |i| at + i)
            })
            .collect();
        // "SE"LECT, ";", "tE"mp, "aD", "se" (in "xse").
        assert_eq!(found, vec![0, 8, 10, 15, 19]);
        assert_eq!(candidates(b"s", 0), 0);
        assert_eq!(candidates(b"", 0), 0);
    }

    #[test]
    fn every_byte_pair_scans_alike_at_the_first_and_last_position() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let mut w = [b; WINDOW];
                w[0] = a;
                w[WINDOW - 2] = a;
                assert_eq!(scan(&w), scan_bytes(&w), "{a:#04x} {b:#04x}");
            }
        }
    }

    proptest::proptest! {
        /// The SIMD pass and the byte-by-byte one agree on every window, whatever its bytes.
        #[test]
        fn the_simd_scan_matches_the_byte_scan(bytes in proptest::collection::vec(
            proptest::sample::select(b"aAsStTdDeE;\x1b{[ \0\xffxyz".to_vec()), WINDOW)) {
            let w: [u8; WINDOW] = bytes.try_into().expect("WINDOW bytes");
            proptest::prop_assert_eq!(scan(&w), scan_bytes(&w));
        }
    }
}
