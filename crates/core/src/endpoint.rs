//! Runtime state of one endpoint that outlives config reloads: probe health, passive ejection,
//! admin drain, in-flight count and latency estimate.
//!
//! The three ways out of rotation are separate fields (probe health, live-traffic ejection,
//! admin drain); an endpoint is available only when all three allow it. Everything the request
//! path reads is an atomic, so picking an endpoint takes no lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::health::{HealthCounter, HealthPolicy, Transition};
use crate::outlier::OutlierPolicy;
use crate::{Tick, ewma};

/// Default latency estimate of an endpoint that has not answered yet (1 ms).
const DEFAULT_EWMA_NS: f64 = 1_000_000.0;

/// Shared, reload-surviving state of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    probe_healthy: AtomicBool,
    probe: Mutex<HealthCounter>,
    returned_at: AtomicU64,
    ejected_until: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    draining: AtomicBool,
    in_flight: AtomicU32,
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        EndpointState {
            probe_healthy: AtomicBool::new(true),
            probe: Mutex::new(HealthCounter::default()),
            returned_at: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(DEFAULT_EWMA_NS.to_bits()),
            ewma_at: AtomicU64::new(0),
        }
    }
}

/// Why an endpoint is out of rotation, for the admin view and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// In rotation.
    Available,
    /// Active probes failed.
    Unhealthy,
    /// Ejected by live-traffic failures until the given tick.
    Ejected(Tick),
    /// Drained by an operator or removed by a reload.
    Draining,
}

impl EndpointState {
    /// Whether the endpoint may take new requests at `now`.
    pub fn is_available(&self, now: Tick) -> bool {
        self.probe_healthy.load(Relaxed)
            && !self.draining.load(Relaxed)
            && self.ejected_until.load(Relaxed) <= now.0
    }

    /// The reason, if any, the endpoint is out of rotation at `now`.
    pub fn availability(&self, now: Tick) -> Availability {
        let until = self.ejected_until.load(Relaxed);
        if self.draining.load(Relaxed) {
            Availability::Draining
        } else if !self.probe_healthy.load(Relaxed) {
            Availability::Unhealthy
        } else if until > now.0 {
            Availability::Ejected(Tick(until))
        } else {
            Availability::Available
        }
    }

    /// Whether the endpoint is drained (excluded even in panic mode).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Marks the endpoint drained or back in service.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Relaxed);
    }

    /// Slow-start weight factor in (0, 1]: ramps linearly from 10% over `window` after the
    /// endpoint came back from probe failure or ejection. 1.0 when no window is set.
    pub fn slow_start_factor(&self, now: Tick, window: Option<Duration>) -> f64 {
        let Some(window) = window.filter(|w| !w.is_zero()) else {
            return 1.0;
        };
        let back = self
            .returned_at
            .load(Relaxed)
            .max(self.ejected_until.load(Relaxed));
        if back == 0 {
            return 1.0;
        }
        let elapsed = now.since(Tick(back)).as_secs_f64();
        (elapsed / window.as_secs_f64()).clamp(0.1, 1.0)
    }

    /// Forgets probe results and puts the endpoint back in rotation (checks were turned off).
    pub fn reset_probe(&self) {
        let mut counter = match self.probe.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        *counter = HealthCounter::default();
        self.probe_healthy.store(true, Relaxed);
    }

    /// Records an active probe result; returns the flip, if any.
    pub fn record_probe(
        &self,
        success: bool,
        policy: &HealthPolicy,
        now: Tick,
    ) -> Option<Transition> {
        let mut counter = match self.probe.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let flip = counter.record(success, policy);
        match flip {
            Some(Transition::Healthy) => {
                self.returned_at.store(now.0.max(1), Relaxed);
                self.probe_healthy.store(true, Relaxed);
            }
            Some(Transition::Unhealthy) => self.probe_healthy.store(false, Relaxed),
            None => {}
        }
        flip
    }

    /// Records the outcome of one live request. Returns the ejection period when this failure
    /// ejected the endpoint.
    pub fn record_outcome(
        &self,
        success: bool,
        policy: &OutlierPolicy,
        now: Tick,
    ) -> Option<Duration> {
        if success {
            if self.consecutive_failures.load(Relaxed) != 0 {
                self.consecutive_failures.store(0, Relaxed);
            }
            if self.ejections.load(Relaxed) != 0 {
                let until = Tick(self.ejected_until.load(Relaxed));
                if now.since(until) >= policy.max_ejection {
                    self.ejections.store(0, Relaxed);
                }
            }
            return None;
        }
        if policy.consecutive_failures == 0 {
            return None;
        }
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures < policy.consecutive_failures {
            return None;
        }
        let old = self.ejected_until.load(Relaxed);
        if old > now.0 {
            return None; // already out; failures from requests that were in flight
        }
        let nth = self.ejections.load(Relaxed) + 1;
        let period = policy.ejection_for(nth);
        let until = now.after(period).0.max(1);
        if self
            .ejected_until
            .compare_exchange(old, until, Relaxed, Relaxed)
            .is_err()
        {
            return None; // another thread ejected it first
        }
        self.ejections.store(nth, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        Some(period)
    }

    /// Requests currently in flight to this endpoint.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Counts a request starting.
    pub fn start_request(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// Counts a request finishing (pairs with [`Self::start_request`]).
    pub fn end_request(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Feeds a latency sample into the peak-EWMA estimate.
    pub fn observe_latency(&self, sample: Duration, now: Tick, decay: Duration) {
        let prev = f64::from_bits(self.ewma_ns.load(Relaxed));
        let prev_at = self.ewma_at.load(Relaxed);
        let next = ewma::update(prev, prev_at, sample.as_nanos() as f64, now.0, decay);
        self.ewma_ns.store(next.to_bits(), Relaxed);
        self.ewma_at.store(now.0, Relaxed);
    }

    /// Current latency estimate in nanoseconds.
    pub fn latency_estimate_ns(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Relaxed))
    }

    /// Consecutive passive failures counted so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Tick {
        Tick(s * 1_000_000_000)
    }

    #[test]
    fn passive_ejection_after_consecutive_failures_and_backoff_grows() {
        let p = OutlierPolicy {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(100),
        };
        let s = EndpointState::default();
        let t = secs(1);
        assert_eq!(s.record_outcome(false, &p, t), None);
        assert_eq!(
            s.record_outcome(false, &p, t),
            Some(Duration::from_secs(10))
        );
        assert!(!s.is_available(t));
        assert!(s.is_available(secs(11)));
        assert_eq!(s.record_outcome(false, &p, secs(12)), None);
        assert_eq!(
            s.record_outcome(false, &p, secs(12)),
            Some(Duration::from_secs(20))
        );
        assert!(!s.is_available(secs(31)));
        assert!(s.is_available(secs(32)));
    }

    #[test]
    fn success_resets_failure_run() {
        let p = OutlierPolicy {
            consecutive_failures: 2,
            ..OutlierPolicy::default()
        };
        let s = EndpointState::default();
        s.record_outcome(false, &p, secs(1));
        s.record_outcome(true, &p, secs(1));
        assert_eq!(s.record_outcome(false, &p, secs(1)), None);
        assert!(s.is_available(secs(1)));
    }

    #[test]
    fn slow_start_ramps_after_return() {
        let s = EndpointState::default();
        let w = Some(Duration::from_secs(10));
        assert_eq!(
            s.slow_start_factor(secs(5), w),
            1.0,
            "never out: full weight"
        );
        let p = HealthPolicy {
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_after: 1,
            unhealthy_after: 1,
        };
        s.record_probe(false, &p, secs(1));
        assert!(!s.is_available(secs(1)));
        s.record_probe(true, &p, secs(100));
        assert!((s.slow_start_factor(secs(100), w) - 0.1).abs() < 1e-9);
        assert!((s.slow_start_factor(secs(105), w) - 0.5).abs() < 1e-9);
        assert_eq!(s.slow_start_factor(secs(200), w), 1.0);
    }
}
