//! Zone affinity: keep traffic in the gateway's own availability zone while that zone can take it.
//!
//! Cross-zone traffic costs money and latency, so an upstream with zone affinity balances over
//! its local-zone members only, as long as at least `min_available_percent` of them are
//! available. Below that the local zone is treated as degraded and every zone is used, so a
//! zone losing most of its endpoints does not pile its whole share onto the few left. Panic mode
//! (too few available across the whole set) overrides affinity: it already means "use all".

use super::Member;
use crate::Tick;

/// Whether balancing should stay in the local zone at `now`.
///
/// False when no member is local (nothing to prefer) or when too few local members are
/// available.
pub(super) fn local_only(members: &[Member], min_available_percent: u32, now: Tick) -> bool {
    let (mut local, mut available) = (0usize, 0usize);
    for m in members.iter().filter(|m| m.local) {
        local += 1;
        if m.state.is_available(now) {
            available += 1;
        }
    }
    available > 0 && available * 100 >= local * min_available_percent as usize
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use crate::balance::SetPolicy;
    use crate::balance::Tried;
    use crate::hash::stable_hash;
    use crate::{Balance, EndpointSet, PickRequest, Tick};

    use super::Member;

    /// Members 0..local are in the gateway's zone, the rest elsewhere.
    fn zoned(n: usize, local: usize, balance: Balance) -> EndpointSet {
        let base = crate::balance::tests::set(n, balance);
        let members = base
            .members()
            .iter()
            .enumerate()
            .map(|(i, m)| Member {
                local: i < local,
                ..m.clone()
            })
            .collect();
        let policy = SetPolicy {
            zone_min_available_percent: Some(70),
            ..base.policy().clone()
        };
        EndpointSet::new(members, policy)
    }

    fn counts(set: &EndpointSet, n: usize) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = vec![0; set.members().len()];
        for k in 0..n {
            let req = PickRequest {
                hash_key: Some(stable_hash(&k.to_le_bytes())),
                ..PickRequest::default()
            };
            let p = set.pick(&req, Tick(1), &mut rng).expect("pick");
            counts[p.index] += 1;
        }
        counts
    }

    #[test]
    fn healthy_local_zone_takes_everything_with_every_balancer() {
        for balance in [
            Balance::RoundRobin,
            Balance::Weighted,
            Balance::LeastConn,
            Balance::P2cEwma,
            Balance::ConsistentHash,
            Balance::Cookie,
        ] {
            let c = counts(&zoned(5, 2, balance), 1000);
            assert_eq!(c[2..].iter().sum::<usize>(), 0, "{balance:?}: {c:?}");
            assert!(c[0] > 0 && c[1] > 0, "{balance:?}: {c:?}");
        }
    }

    #[test]
    fn degraded_local_zone_spills_to_every_zone() {
        let s = zoned(6, 2, Balance::RoundRobin);
        crate::balance::tests::fail_probes(&s, 0);
        // 1 of 2 local members available is 50%, under 70%: balance over all available.
        assert_eq!(counts(&s, 500), [0, 100, 100, 100, 100, 100]);
    }

    #[test]
    fn no_local_members_means_no_preference() {
        assert_eq!(
            counts(&zoned(3, 0, Balance::RoundRobin), 300),
            [100, 100, 100]
        );
    }

    #[test]
    fn a_retry_leaves_the_zone_rather_than_repeat_the_failed_endpoint() {
        let s = zoned(3, 1, Balance::RoundRobin);
        let mut rng = StdRng::seed_from_u64(1);
        let mut tried = Tried::default();
        tried.insert(0);
        let req = PickRequest {
            tried,
            ..PickRequest::default()
        };
        let p = s.pick(&req, Tick(1), &mut rng).expect("pick");
        assert_ne!(p.index, 0);
    }

    #[test]
    fn retries_try_every_local_endpoint_once_then_another_zone() {
        // Two local endpoints (0, 1) both failing, still looking available: the third attempt
        // goes to the other zone instead of back to the first failed one.
        for balance in [Balance::RoundRobin, Balance::P2cEwma, Balance::LeastConn] {
            let s = zoned(4, 2, balance);
            let mut rng = StdRng::seed_from_u64(9);
            for _ in 0..50 {
                let mut req = PickRequest::default();
                let first = s.pick(&req, Tick(1), &mut rng).expect("pick").index;
                assert!(first < 2, "{balance:?} starts local");
                req.tried.insert(first);
                let second = s.pick(&req, Tick(1), &mut rng).expect("pick").index;
                assert_eq!(second, 1 - first, "{balance:?} tries the other local one");
                req.tried.insert(second);
                let third = s.pick(&req, Tick(1), &mut rng).expect("pick").index;
                assert!(third >= 2, "{balance:?} leaves the zone: {third}");
            }
        }
    }
}
