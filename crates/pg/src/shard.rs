//! Sharding arithmetic: a key → a virtual shard → a physical shard, and the plan for adding a
//! shard. Two functions: `modulus` (key mod virtual shards, as in `user_id % 4`) and `hash`, the
//! hash PostgreSQL's declarative HASH partitioning uses for integer keys, so `hash` with V virtual
//! shards puts a row in virtual shard r exactly when PostgreSQL would put it in the partition
//! `FOR VALUES WITH (MODULUS V, REMAINDER r)`. Data placement can be checked with PostgreSQL.

/// How keys map to virtual shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardFn {
    /// PostgreSQL's partition hash of an integer key.
    Hash,
    /// Non-negative remainder of the key.
    Modulus,
}

/// The seed PostgreSQL mixes into partition hashes (`HASH_PARTITION_SEED`).
const PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Bob Jenkins' lookup3 hash of one 32-bit word with a 64-bit seed, as PostgreSQL's
/// `hash_uint32_extended` computes it.
fn hash_u32_seeded(k: u32, seed: u64) -> u64 {
    let init = 0x9e37_79b9u32.wrapping_add(4).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    a = a.wrapping_add(k);
    finish(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// PostgreSQL's `hashint8extended`: int2/int4/int8 keys of equal value hash alike.
fn hash_int8(v: i64, seed: u64) -> u64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    let folded = if v >= 0 { lo ^ hi } else { lo ^ !hi };
    hash_u32_seeded(folded, seed)
}

/// Bob Jenkins' lookup3 hash of a byte string with a 64-bit seed, as PostgreSQL's
/// `hash_bytes_extended` computes it on a little-endian machine (what `hashtextextended` uses for
/// deterministic collations).
fn hash_bytes_seeded(k: &[u8], seed: u64) -> u64 {
    let init = 0x9e37_79b9u32
        .wrapping_add(k.len() as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    let word = |w: &[u8]| u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    let mut rest = k;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The last 0..11 bytes, little-endian into a, b, then c above its lowest byte.
    let mut tail = [0u8; 12];
    tail[..rest.len()].copy_from_slice(rest);
    if !rest.is_empty() {
        a = a.wrapping_add(word(&tail[0..4]));
    }
    if rest.len() > 4 {
        b = b.wrapping_add(word(&tail[4..8]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(word(&tail[8..12]) << 8);
    }
    finish(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// The row hash PostgreSQL computes for a one-column text partition key (deterministic
/// collation).
pub fn partition_hash_text(key: &str) -> u64 {
    combine(0, hash_bytes_seeded(key.as_bytes(), PARTITION_SEED))
}

/// PostgreSQL's `hash_combine64`.
fn combine(a: u64, b: u64) -> u64 {
    a ^ b
        .wrapping_add(0x49a0_f4dd_15e5_a8e3)
        .wrapping_add(a << 54)
        .wrapping_add(a >> 7)
}

/// The row hash PostgreSQL computes for a one-column integer partition key.
pub fn partition_hash(key: i64) -> u64 {
    combine(0, hash_int8(key, PARTITION_SEED))
}

/// The virtual shard of `key` out of `virtual_shards`.
pub fn virtual_shard(f: ShardFn, key: i64, virtual_shards: u32) -> u32 {
    let v = u64::from(virtual_shards.max(1));
    match f {
        ShardFn::Hash => (partition_hash(key) % v) as u32,
        ShardFn::Modulus => key.rem_euclid(v as i64) as u32,
    }
}

/// The default placement of `virtual_shards` over `shards`: virtual shard v on shard v mod N.
/// With V a multiple of N, `hash` then agrees with PostgreSQL's `MODULUS N` partitions and
/// `modulus` with `key % N`.
pub fn default_map(virtual_shards: u32, shards: usize) -> Vec<usize> {
    (0..virtual_shards as usize)
        .map(|v| v % shards.max(1))
        .collect()
}

/// One virtual shard that changes hands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    /// The virtual shard.
    pub vshard: usize,
    /// Its shard now.
    pub from: usize,
    /// Its shard after.
    pub to: usize,
}

/// The map after adding one shard, moving as few virtual shards as possible: the new shard
/// takes the highest-numbered virtual shards of the fullest shards until every shard holds
/// ⌊V/(N+1)⌋ or ⌈V/(N+1)⌉.
pub fn plan_add_shard(map: &[usize], shards: usize) -> (Vec<usize>, Vec<Move>) {
    let new = shards;
    let total = map.len();
    let want_new = total / (shards + 1);
    let mut next = map.to_vec();
    let mut moves = Vec::new();
    let mut counts = vec![0usize; shards + 1];
    for &s in map {
        if s < counts.len() {
            counts[s] += 1;
        }
    }
    while counts[new] < want_new {
        let Some(fullest) = (0..shards).max_by_key(|&s| (counts[s], std::cmp::Reverse(s))) else {
            break;
        };
        let Some(v) = (0..total).rev().find(|&v| next[v] == fullest) else {
            break;
        };
        next[v] = new;
        counts[fullest] -= 1;
        counts[new] += 1;
        moves.push(Move {
            vshard: v,
            from: fullest,
            to: new,
        });
    }
    moves.sort_by_key(|m| m.vshard);
    (next, moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_is_the_remainder() {
        assert_eq!(virtual_shard(ShardFn::Modulus, 10, 4), 2);
        assert_eq!(virtual_shard(ShardFn::Modulus, -1, 4), 3);
    }

    #[test]
    fn hash_equals_postgres_for_known_values() {
        // SELECT hashint8extended(k, 8816678312871386365) in PostgreSQL 15 (the partition seed).
        let known: &[(i64, i64)] = &[
            (0, -4_403_592_609_991_167_795),
            (1, 5_968_994_663_651_403_477),
            (-1, -5_017_072_347_659_237_694),
            (42, 7_363_975_540_656_877_951),
            (5_000_000_000, -2_799_505_259_769_899_283),
            (-5_000_000_000, -4_482_100_988_868_492_312),
        ];
        for &(k, h) in known {
            assert_eq!(hash_int8(k, PARTITION_SEED) as i64, h, "key {k}");
        }
    }

    #[test]
    fn text_hash_equals_postgres_for_known_values() {
        // SELECT hashtextextended(s, 8816678312871386365) in PostgreSQL 15, C.UTF-8.
        let known: &[(&str, i64)] = &[
            ("", -5_700_645_584_453_517_373),
            ("a", -6_705_225_459_120_232_837),
            ("ab", 596_009_030_900_183_869),
            ("abc", 3_628_778_498_291_917_250),
            ("abcd", 4_029_384_952_263_848_046),
            ("abcde", 4_809_259_092_934_399_961),
            ("héllo", 3_506_307_356_728_073_920),
            ("user-42", 646_029_547_852_301_266),
        ];
        for &(k, h) in known {
            assert_eq!(
                hash_bytes_seeded(k.as_bytes(), PARTITION_SEED) as i64,
                h,
                "key {k:?}"
            );
        }
        // Every tail length: repeat('x', l) || the alphabet.
        let by_len: [i64; 15] = [
            -7_171_292_135_076_916_904,
            7_463_645_456_721_058_576,
            -1_608_917_847_008_985_037,
            7_773_007_231_522_931_716,
            4_098_000_491_074_111_437,
            158_908_500_369_115_701,
            3_832_653_125_025_064_012,
            -6_184_189_752_687_797_800,
            5_126_741_214_961_487_042,
            -1_076_466_212_039_697_386,
            7_214_362_736_443_349_987,
            1_801_617_821_410_624_375,
            6_652_055_397_819_286_339,
            -8_427_609_591_037_358_131,
            -8_460_781_044_753_787_769,
        ];
        for (l, h) in by_len.iter().enumerate() {
            let k = format!("{}abcdefghijklmnopqrstuvwxyz", "x".repeat(l));
            assert_eq!(
                hash_bytes_seeded(k.as_bytes(), PARTITION_SEED) as i64,
                *h,
                "length {l}"
            );
        }
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n_plus_one() {
        let map = default_map(256, 4);
        let (next, moves) = plan_add_shard(&map, 4);
        assert_eq!(moves.len(), 256 / 5);
        for s in 0..5 {
            let n = next.iter().filter(|&&x| x == s).count();
            assert!((51..=52).contains(&n), "shard {s} holds {n}");
        }
        for m in &moves {
            assert_eq!(map[m.vshard], m.from);
            assert_eq!(m.to, 4);
        }
    }

    proptest::proptest! {
        #[test]
        fn virtual_shards_are_in_range(k in proptest::num::i64::ANY, v in 1u32..4096) {
            proptest::prop_assert!(virtual_shard(ShardFn::Hash, k, v) < v);
            proptest::prop_assert!(virtual_shard(ShardFn::Modulus, k, v) < v);
        }
    }
}
