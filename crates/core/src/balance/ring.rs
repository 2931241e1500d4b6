//! Consistent hash ring (Karger) with virtual nodes: each endpoint owns `VNODES × weight` points;
//! a key goes to the first point clockwise whose endpoint is a candidate. Removing one of N
//! endpoints moves only the keys it owned, about 1/N of them.

use super::{Candidates, Member};
use crate::hash::mix;

/// Points per unit of weight. 160 keeps the spread within a few percent for small sets.
const VNODES: u64 = 160;

/// Sorted ring points: (point hash, member index).
#[derive(Clone, Debug, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// Builds the ring; an endpoint's points depend only on its identity, so they do not move
    /// when other endpoints come or go.
    pub fn new(members: &[Member]) -> Self {
        let mut points = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let n = VNODES * u64::from(m.weight.clamp(1, 100));
            for v in 0..n {
                points.push((mix(m.id_hash ^ mix(v)), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The member owning `key` among candidates.
    pub(super) fn pick(&self, c: &Candidates<'_>, key: u64) -> Option<usize> {
        self.owner(key, |i| c.ok(i))
    }

    /// The first member clockwise from `key` for which `ok` holds.
    pub fn owner(&self, key: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let start = self.points.partition_point(|p| p.0 < key);
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|&i| ok(i))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::EndpointState;
    use crate::hash::stable_hash;

    fn members(ids: &[u32]) -> Vec<Member> {
        ids.iter()
            .map(|id| Member {
                weight: 1,
                id_hash: stable_hash(format!("10.1.{}.{}:8080", id / 256, id % 256).as_bytes()),
                state: Arc::new(EndpointState::default()),
                local: false,
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Removing one of N endpoints remaps only its own keys, and those are about 1/N.
        #[test]
        fn removing_one_endpoint_moves_about_one_nth_of_keys(n in 3usize..12, removed_seed in 0usize..1000, salt in 0u64..1000) {
            let ids: Vec<u32> = (0..n as u32).map(|i| i * 7 + salt as u32).collect();
            let removed = removed_seed % n;
            let before = Ring::new(&members(&ids));
            let kept: Vec<u32> = ids.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, id)| *id).collect();
            let after = Ring::new(&members(&kept));
            let keys = 20_000u64;
            let mut moved = 0u64;
            for k in 0..keys {
                let key = mix(k ^ (salt << 32));
                let b = before.owner(key, |_| true).expect("owner");
                let a = after.owner(key, |_| true).expect("owner");
                let b_id = ids[b];
                let a_id = kept[a];
                if b_id != a_id {
                    prop_assert_eq!(b, removed, "a key not owned by the removed endpoint moved");
                    moved += 1;
                }
            }
            let frac = moved as f64 / keys as f64;
            let ideal = 1.0 / n as f64;
            prop_assert!(frac > ideal * 0.6 && frac < ideal * 1.5, "moved {frac:.3}, ideal {ideal:.3}");
        }
    }

    #[test]
    fn spread_is_roughly_even() {
        let ring = Ring::new(&members(&[1, 2, 3, 4]));
        let mut counts = [0usize; 4];
        for k in 0..40_000u64 {
            counts[ring.owner(mix(k), |_| true).expect("owner")] += 1;
        }
        for c in counts {
            assert!((7_000..13_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn unavailable_owner_falls_to_next_point() {
        let ring = Ring::new(&members(&[1, 2, 3]));
        for k in 0..1000u64 {
            let key = mix(k);
            let owner = ring.owner(key, |_| true).expect("owner");
            let next = ring.owner(key, |i| i != owner).expect("next");
            assert_ne!(owner, next);
        }
    }
}
