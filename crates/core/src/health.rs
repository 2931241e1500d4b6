//! Active health: consecutive probe results against thresholds decide healthy or unhealthy.

use std::time::Duration;

/// When probes flip an endpoint's state. Validated at config load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// HTTP path probed, e.g. `/health`.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// A probe slower than this fails.
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy endpoint back (default 2).
    pub healthy_after: u32,
    /// Consecutive failures that take a healthy endpoint out (default 3).
    pub unhealthy_after: u32,
}

/// A flip of health state, reported so the caller can log and count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The endpoint just became healthy.
    Healthy,
    /// The endpoint just became unhealthy.
    Unhealthy,
}

/// Consecutive-result counter of one endpoint's probes. Starts healthy so that a fresh gateway
/// serves at once; the first `unhealthy_after` failures take a dead endpoint out.
#[derive(Clone, Debug)]
pub struct HealthCounter {
    healthy: bool,
    run: u32,
}

impl Default for HealthCounter {
    fn default() -> Self {
        HealthCounter {
            healthy: true,
            run: 0,
        }
    }
}

impl HealthCounter {
    /// Whether the last transition left the endpoint healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe result; returns the transition if the state flipped.
    pub fn record(&mut self, success: bool, policy: &HealthPolicy) -> Option<Transition> {
        if success == self.healthy {
            self.run = 0;
            return None;
        }
        self.run += 1;
        let needed = if success {
            policy.healthy_after
        } else {
            policy.unhealthy_after
        };
        if self.run < needed.max(1) {
            return None;
        }
        self.healthy = success;
        self.run = 0;
        Some(if success {
            Transition::Healthy
        } else {
            Transition::Unhealthy
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            path: "/h".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
        }
    }

    #[test]
    fn needs_consecutive_failures_to_go_unhealthy() {
        let p = policy();
        let mut c = HealthCounter::default();
        assert_eq!(c.record(false, &p), None);
        assert_eq!(c.record(false, &p), None);
        assert_eq!(c.record(true, &p), None, "a success resets the run");
        assert_eq!(c.record(false, &p), None);
        assert_eq!(c.record(false, &p), None);
        assert_eq!(c.record(false, &p), Some(Transition::Unhealthy));
        assert!(!c.is_healthy());
    }

    #[test]
    fn needs_consecutive_successes_to_return() {
        let p = policy();
        let mut c = HealthCounter {
            healthy: false,
            run: 0,
        };
        assert_eq!(c.record(true, &p), None);
        assert_eq!(c.record(true, &p), Some(Transition::Healthy));
        assert_eq!(c.record(true, &p), None);
    }
}
