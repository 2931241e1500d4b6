//! Passive health: live traffic ejects an endpoint after consecutive failures, for a period that
//! doubles each time it is ejected again soon after returning.

use std::time::Duration;

/// Passive-ejection thresholds. Validated at config load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive failures (connect errors, resets, 5xx) that eject (default 5; 0 disables).
    pub consecutive_failures: u32,
    /// First ejection period (default 10 s); doubles on each repeat.
    pub base_ejection: Duration,
    /// Longest ejection period (default 5 min).
    pub max_ejection: Duration,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

impl OutlierPolicy {
    /// Ejection period for the `nth` consecutive ejection (1-based): base × 2^(n-1), capped.
    pub fn ejection_for(&self, nth: u32) -> Duration {
        let shift = nth.saturating_sub(1).min(20);
        self.base_ejection
            .saturating_mul(1u32 << shift)
            .min(self.max_ejection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_grows_and_caps() {
        let p = OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(5),
        };
        assert_eq!(p.ejection_for(1), Duration::from_secs(1));
        assert_eq!(p.ejection_for(2), Duration::from_secs(2));
        assert_eq!(p.ejection_for(3), Duration::from_secs(4));
        assert_eq!(p.ejection_for(4), Duration::from_secs(5));
        assert_eq!(p.ejection_for(60), Duration::from_secs(5));
    }
}
