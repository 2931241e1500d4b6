//! Passive health as a circuit breaker: live traffic opens an endpoint's breaker (ejects it) after
//! consecutive failures or a failure rate over a rolling window; after the open period it is
//! half-open and lets a few probe requests through; a success closes it, a failure reopens it for
//! twice as long. The state lives in [`crate::EndpointState`]; this is the policy.

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
    /// Open when at least this percentage of requests in the window failed (default 0: off).
    pub failure_rate_percent: u32,
    /// ... and the window held at least this many requests (default 20).
    pub min_requests: u32,
    /// The rolling window for the failure rate (default 10 s).
    pub window: Duration,
    /// Requests let through at once while half-open (default 1).
    pub half_open_probes: u32,
    /// Most endpoints of the upstream, in percent, whose breakers may be open at once (default
    /// 50). An ejection beyond it is held back and the endpoint stays in rotation: with one
    /// endpoint the breaker never takes it out (the protection must not cause the outage it
    /// guards against). 100 allows ejecting every endpoint.
    pub max_ejection_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            failure_rate_percent: 0,
            min_requests: 20,
            window: Duration::from_secs(10),
            half_open_probes: 1,
            max_ejection_percent: 50,
        }
    }
}

impl OutlierPolicy {
    /// Whether the breaker is on: by consecutive failures, by failure rate, or both.
    pub fn enabled(&self) -> bool {
        self.consecutive_failures > 0 || self.failure_rate_percent > 0
    }

    /// Whether one more endpoint may be ejected when `ejected` of `total` already are.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        (ejected + 1) * 100 <= total * self.max_ejection_percent as usize
    }

    /// Closes the breakers of the endpoints beyond the cap, the ones that would stay open the
    /// shortest first; returns how many. For a reload that keeps endpoints' breakers but
    /// removes others: the cap counts the upstream as it is now (an upstream cut down to its
    /// one ejected endpoint would otherwise answer 503 to everything until the breaker timed
    /// out, while that endpoint was fine).
    /// With the breaker turned off, every open or half-open breaker closes.
    pub fn release_over_cap(&self, endpoints: &[&crate::EndpointState], now: crate::Tick) -> usize {
        if !self.enabled() {
            return endpoints.iter().filter(|e| e.release_if_open(now)).count();
        }
        let mut open: Vec<(crate::Tick, &crate::EndpointState)> = endpoints
            .iter()
            .filter_map(|e| match e.availability(now) {
                crate::endpoint::Availability::Ejected(until) => Some((until, *e)),
                _ => None,
            })
            .collect();
        let allowed = (0..=open.len())
            .take_while(|&k| k == 0 || self.may_eject(k - 1, endpoints.len()))
            .last()
            .unwrap_or(0);
        if open.len() <= allowed {
            return 0;
        }
        open.sort_by_key(|(until, _)| *until);
        let extra = open.len() - allowed;
        for (_, e) in open.iter().take(extra) {
            e.release();
        }
        extra
    }

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
    fn a_reload_leaves_no_more_breakers_open_than_the_cap() {
        let now = crate::Tick(1_000);
        let states: Vec<crate::EndpointState> =
            (0..3).map(|_| crate::EndpointState::default()).collect();
        let p = OutlierPolicy {
            consecutive_failures: 1,
            max_ejection_percent: 100,
            ..OutlierPolicy::default()
        };
        for s in &states {
            s.record_outcome(false, &p, now);
        }
        let all: Vec<&crate::EndpointState> = states.iter().collect();
        assert_eq!(p.release_over_cap(&all, now), 0, "100% allows all three");
        let capped = OutlierPolicy::default();
        // One endpoint left of an upstream whose cap is 50%: its breaker closes.
        assert_eq!(capped.release_over_cap(&all[..1], now), 1);
        assert!(states[0].is_available(now));
        // Two left, both open: one stays open.
        assert_eq!(capped.release_over_cap(&all[1..], now), 1);
        assert_eq!(all[1..].iter().filter(|s| s.is_available(now)).count(), 1);
    }

    #[test]
    fn ejection_grows_and_caps() {
        let p = OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(5),
            ..OutlierPolicy::default()
        };
        assert_eq!(p.ejection_for(1), Duration::from_secs(1));
        assert_eq!(p.ejection_for(2), Duration::from_secs(2));
        assert_eq!(p.ejection_for(3), Duration::from_secs(4));
        assert_eq!(p.ejection_for(4), Duration::from_secs(5));
        assert_eq!(p.ejection_for(60), Duration::from_secs(5));
    }
}
