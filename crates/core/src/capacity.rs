//! Capacity math for `scalegate plan`: Little's law for concurrency, how many gateway instances
//! a peak needs with headroom, a spare and zones, and the PostgreSQL connection budget.
//!
//! Pure arithmetic on the operator's numbers; nothing here measures anything.

use std::time::Duration;

/// Requests in flight at `rps` when each takes `latency` (Little's law: L = λ × W).
pub fn in_flight(rps: f64, latency: Duration) -> f64 {
    rps.max(0.0) * latency.as_secs_f64()
}

/// A fleet size for a peak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fleet {
    /// Instances that carry the peak at the target utilisation, no spare.
    pub needed: u32,
    /// Instances to run at the peak: `needed` plus one spare (a crash or a rolling update keeps
    /// the rest at the target), enough to lose a whole zone when there are several, and a
    /// multiple of the zone count so every zone runs the same number.
    pub planned: u32,
}

/// Instances for `peak_rps` when one instance serves `per_instance_rps` at 100% and should run
/// at `target_utilization` (0–1) at most.
pub fn fleet(peak_rps: f64, per_instance_rps: f64, target_utilization: f64, zones: u32) -> Fleet {
    let zones = zones.max(1);
    let usable = (per_instance_rps * target_utilization.clamp(0.05, 1.0)).max(1.0);
    let needed = ceil_u32(peak_rps / usable).max(1);
    let mut planned = needed + 1;
    if zones > 1 {
        // Losing one zone of z leaves (z − 1)/z of the fleet, which may then run at 100%.
        let z = f64::from(zones);
        let survive_zone = ceil_u32(peak_rps * z / ((z - 1.0) * per_instance_rps.max(1.0)));
        planned = planned.max(survive_zone);
    }
    planned = planned.div_ceil(zones) * zones;
    Fleet { needed, planned }
}

/// Server connections a PostgreSQL server uses well: cores × 2 + effective spindles (the
/// PostgreSQL wiki's rule; more connections than that queue inside the server instead).
pub fn pg_connections(cores: u32, spindles: u32) -> u32 {
    cores.max(1) * 2 + spindles
}

/// The pool size per instance and pool that keeps `instances × pools × size` within `budget`
/// (at least 1).
pub fn pool_share(budget: u32, instances: u32, pools: u32) -> u32 {
    (budget / (instances.max(1) * pools.max(1))).max(1)
}

fn ceil_u32(x: f64) -> u32 {
    if x.is_finite() && x > 0.0 {
        x.ceil().min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn littles_law() {
        assert_eq!(in_flight(2000.0, Duration::from_millis(50)), 100.0);
    }

    #[test]
    fn one_zone_gets_one_spare() {
        // 20k at 70% of 10k per instance: 3 needed, 4 planned.
        assert_eq!(
            fleet(20_000.0, 10_000.0, 0.7, 1),
            Fleet {
                needed: 3,
                planned: 4
            }
        );
        assert_eq!(fleet(10.0, 10_000.0, 0.7, 1).planned, 2);
    }

    #[test]
    fn zones_get_equal_counts_and_survive_losing_one() {
        // 3 needed; 4 with a spare; losing 1 of 3 zones needs 20k·3/(2·10k) = 3; round to 6.
        assert_eq!(fleet(20_000.0, 10_000.0, 0.7, 3).planned, 6);
        // Two zones: losing one leaves half, which must carry the whole peak.
        let f = fleet(30_000.0, 10_000.0, 0.9, 2);
        assert_eq!(f.planned, 6);
        assert!(f64::from(f.planned / 2) * 10_000.0 >= 30_000.0);
    }

    #[test]
    fn postgres_budget_is_shared_out() {
        assert_eq!(pg_connections(8, 1), 17);
        assert_eq!(pool_share(17, 3, 1), 5);
        assert_eq!(pool_share(17, 30, 2), 1, "never below one");
    }
}
