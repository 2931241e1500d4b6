//! Runtime state of one endpoint that outlives config reloads: probe health, the live-traffic
//! circuit breaker (passive ejection), admin drain, in-flight count and latency estimate.
//!
//! The three ways out of rotation are separate fields (probe health, breaker, admin drain); an
//! endpoint is available only when all three allow it. Everything the request path reads is an
//! atomic, so picking an endpoint takes no lock.
//!
//! Breaker states: **closed** (`ejected_until` in the past, not half-open) → **open** (`now <
//! ejected_until`) → **half-open** (`ejected_until` passed, `half_open` set: at most
//! `half_open_probes` requests at once) → closed on a success, or open again for longer on a
//! failure. Closed, an endpoint that serves well for as long as its last ejection lasted
//! starts again from `base_ejection`; one that fails before then is ejected for longer.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::health::{HealthCounter, HealthPolicy, Transition};
use crate::outlier::OutlierPolicy;
use crate::window::FailureWindow;
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
    half_open: AtomicBool,
    probe_limit: AtomicU32,
    /// Half-open probe slots taken (low 32 bits) in the current breaker period (high 32 bits),
    /// so a slot taken before the breaker moved on is never given back twice.
    probes: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// When the breaker last closed (its half-open probe succeeded, or the ejection cap held
    /// it): how long the endpoint has served since decides whether its ejections start over.
    closed_at: AtomicU64,
    window: FailureWindow,
    draining: AtomicBool,
    weight_override: AtomicU32,
    in_flight: AtomicU32,
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
    /// The fleet's typical latency last seen by the balancer (f64 bits; 0: unknown).
    typical_ns: AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        EndpointState {
            probe_healthy: AtomicBool::new(true),
            probe: Mutex::new(HealthCounter::default()),
            returned_at: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            half_open: AtomicBool::new(false),
            probe_limit: AtomicU32::new(1),
            probes: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            closed_at: AtomicU64::new(0),
            window: FailureWindow::default(),
            draining: AtomicBool::new(false),
            weight_override: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(DEFAULT_EWMA_NS.to_bits()),
            ewma_at: AtomicU64::new(0),
            typical_ns: AtomicU64::new(0),
        }
    }
}

/// Why an endpoint is out of rotation, for the admin view and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// In rotation.
    Available,
    /// Breaker half-open: only probe requests go through.
    HalfOpen,
    /// Active probes failed.
    Unhealthy,
    /// Breaker open (ejected by live-traffic failures) until the given tick.
    Ejected(Tick),
    /// Drained by an operator or removed by a reload.
    Draining,
}

/// A breaker state change, reported so the caller can log and count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerEvent {
    /// Opened (ejected) for this long.
    Opened(Duration),
    /// A half-open probe succeeded: closed again.
    Closed,
    /// The failures called for an ejection, but the upstream's `max_ejection_percent` held it
    /// back: the endpoint stays in rotation (the upstream is in panic).
    Held,
}

impl EndpointState {
    /// Whether the breaker lets a request through at `now` (closed, or half-open with a free
    /// probe slot).
    pub fn breaker_allows(&self, now: Tick) -> bool {
        self.ejected_until.load(Relaxed) <= now.0
            && (!self.half_open.load(Relaxed)
                || probe_count(self.probes.load(Relaxed)) < self.probe_limit.load(Relaxed))
    }

    /// Whether the endpoint may take new requests at `now`.
    pub fn is_available(&self, now: Tick) -> bool {
        self.probe_healthy.load(Relaxed) && !self.draining.load(Relaxed) && self.breaker_allows(now)
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
        } else if self.half_open.load(Relaxed) {
            Availability::HalfOpen
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

    /// The operator's weight for this endpoint, replacing the configured one (None: config).
    pub fn weight_override(&self) -> Option<u32> {
        Some(self.weight_override.load(Relaxed)).filter(|w| *w > 0)
    }

    /// Sets (Some) or clears (None) the operator's weight.
    pub fn set_weight_override(&self, weight: Option<u32>) {
        self.weight_override.store(weight.unwrap_or(0), Relaxed);
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

    fn lock_probe(&self) -> std::sync::MutexGuard<'_, HealthCounter> {
        match self.probe.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Forgets probe results and puts the endpoint back in rotation (checks were turned off).
    pub fn reset_probe(&self) {
        *self.lock_probe() = HealthCounter::default();
        self.probe_healthy.store(true, Relaxed);
    }

    /// Records an active probe result; returns the flip, if any.
    pub fn record_probe(
        &self,
        success: bool,
        policy: &HealthPolicy,
        now: Tick,
    ) -> Option<Transition> {
        let flip = self.lock_probe().record(success, policy);
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

    /// Closes an open breaker held back by the upstream's ejection cap (see
    /// [`crate::OutlierPolicy::release_over_cap`]): the endpoint is back in rotation at once, and
    /// its next failures are counted afresh.
    pub fn release(&self) {
        self.ejected_until.store(0, Relaxed);
        self.half_open.store(false, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        self.new_probe_period();
    }

    /// Whether the breaker is open or half-open at `now`.
    fn breaker_open(&self, now: Tick) -> bool {
        self.ejected_until.load(Relaxed) > now.0 || self.half_open.load(Relaxed)
    }

    /// Closes the breaker if it is open or half-open (its policy was turned off); whether it was.
    pub fn release_if_open(&self, now: Tick) -> bool {
        let open = self.breaker_open(now);
        self.release();
        self.window.clear();
        // Turned off, the breaker forgets its earlier ejections: turned on again, the next
        // one lasts base_ejection, not twice the last.
        self.ejections.store(0, Relaxed);
        open
    }

    /// Records the outcome of one live request and moves the breaker; returns the change, if any.
    pub fn record_outcome(
        &self,
        success: bool,
        policy: &OutlierPolicy,
        now: Tick,
    ) -> Option<BreakerEvent> {
        self.record_outcome_capped(success, policy, now, || true)
    }

    /// [`Self::record_outcome`], asking `may_open` (the upstream's ejection cap) before the
    /// breaker opens; when it says no, the endpoint stays in rotation and the event is `Held`.
    pub fn record_outcome_capped(
        &self,
        success: bool,
        policy: &OutlierPolicy,
        now: Tick,
        may_open: impl FnOnce() -> bool,
    ) -> Option<BreakerEvent> {
        if !policy.enabled() {
            // Off (perhaps turned off by a reload while open): nothing is counted, and a
            // breaker still open or half-open closes at the endpoint's first answer.
            return (self.breaker_open(now) && self.release_if_open(now))
                .then_some(BreakerEvent::Closed);
        }
        if policy.failure_rate_percent > 0 {
            self.window.record(!success, now, policy.window);
        }
        let half_open = self.half_open.load(Relaxed) && self.ejected_until.load(Relaxed) <= now.0;
        if success {
            if self.consecutive_failures.load(Relaxed) != 0 {
                self.consecutive_failures.store(0, Relaxed);
            }
            if half_open {
                self.half_open.store(false, Relaxed);
                self.closed_at.store(now.0.max(1), Relaxed);
                self.new_probe_period();
                self.window.clear();
                return Some(BreakerEvent::Closed);
            }
            // Served for as long as it was last out, since its breaker closed: its next
            // ejection starts again from base_ejection (a probe's finding: each ejection
            // doubled for max_ejection, five minutes by default, however long the endpoint ran
            // well in between). Time out of traffic before the probe does not count.
            let nth = self.ejections.load(Relaxed);
            let closed = self.closed_at.load(Relaxed);
            if nth != 0
                && closed > self.ejected_until.load(Relaxed)
                && now.since(Tick(closed)) >= policy.ejection_for(nth)
            {
                self.ejections.store(0, Relaxed);
            }
            return None;
        }
        if half_open {
            if !may_open() {
                self.half_open.store(false, Relaxed);
                self.closed_at.store(now.0.max(1), Relaxed);
                self.new_probe_period();
                return Some(BreakerEvent::Held);
            }
            return self.open(policy, now, self.ejected_until.load(Relaxed));
        }
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        let by_run = policy.consecutive_failures > 0 && failures >= policy.consecutive_failures;
        let by_rate = policy.failure_rate_percent > 0 && {
            let (total, failed) = self.window.counts(now, policy.window);
            total >= policy.min_requests.max(1)
                && u64::from(failed) * 100
                    >= u64::from(total) * u64::from(policy.failure_rate_percent)
        };
        if !(by_run || by_rate) {
            return None;
        }
        let old = self.ejected_until.load(Relaxed);
        if old > now.0 {
            return None; // already open; failures from requests that were in flight
        }
        if !may_open() {
            self.consecutive_failures.store(0, Relaxed);
            self.window.clear();
            return Some(BreakerEvent::Held);
        }
        self.open(policy, now, old)
    }

    /// Opens the breaker for the next (longer) period, unless another thread just did.
    fn open(&self, policy: &OutlierPolicy, now: Tick, seen: u64) -> Option<BreakerEvent> {
        let nth = self.ejections.load(Relaxed) + 1;
        let period = policy.ejection_for(nth);
        let until = now.after(period).0.max(1);
        if self
            .ejected_until
            .compare_exchange(seen, until, Relaxed, Relaxed)
            .is_err()
        {
            return None;
        }
        self.ejections.store(nth, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        self.probe_limit
            .store(policy.half_open_probes.max(1), Relaxed);
        self.new_probe_period();
        self.half_open.store(true, Relaxed);
        Some(BreakerEvent::Opened(period))
    }

    /// Requests currently in flight to this endpoint.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Half-open probe slots taken now.
    pub fn probes_in_flight(&self) -> u32 {
        probe_count(self.probes.load(Relaxed))
    }

    /// Forgets every probe slot: the breaker entered a new period (opened or closed).
    fn new_probe_period(&self) {
        let period = (self.probes.load(Relaxed) >> 32) as u32;
        self.probes
            .store(u64::from(period.wrapping_add(1)) << 32, Relaxed);
    }

    /// Counts a request starting on this endpoint: in flight, and a half-open probe slot while
    /// the breaker is half-open. Both are given back when the returned guard is dropped, on
    /// every path (a response read to its end, an error, a client that went away).
    pub fn start_request(self: &Arc<Self>) -> EndpointLoad {
        self.in_flight.fetch_add(1, Relaxed);
        // Kept as period + 1 so the guard stays two words.
        let probe_period = self
            .half_open
            .load(Relaxed)
            .then(|| ((self.probes.fetch_add(1, Relaxed) >> 32) as u32).wrapping_add(1))
            .and_then(NonZeroU32::new);
        EndpointLoad {
            state: self.clone(),
            probe_period,
        }
    }

    /// Feeds a latency sample into the peak-EWMA estimate (the estimate as known now, see
    /// [`EndpointState::latency_estimate_at`], is what the sample is averaged with).
    pub fn observe_latency(&self, sample: Duration, now: Tick, decay: Duration) {
        let prev_at = self.ewma_at.load(Relaxed);
        let prev = self.estimate_now(prev_at, now);
        let next = ewma::update(prev, prev_at, sample.as_nanos() as f64, now.0, decay);
        self.ewma_ns.store(next.to_bits(), Relaxed);
        self.ewma_at.store(now.0, Relaxed);
    }

    /// Feeds a successful health probe's round trip: it opened a fresh connection, so it is an
    /// upper bound of what a request would take, and counts only when it is below the estimate
    /// (the endpoint is faster than believed); it never raises it.
    pub fn observe_probe_latency(&self, rtt: Duration, now: Tick, decay: Duration) {
        let estimate = self.estimate_now(self.ewma_at.load(Relaxed), now);
        if (rtt.as_nanos() as f64) < estimate {
            self.observe_latency(rtt, now, decay);
        }
    }

    /// The latency estimate at `now`, given the fleet's typical latency: the last estimate,
    /// moved toward `typical_ns` the longer it went unrefreshed (see [`ewma::regress`]), so an
    /// endpoint left alone for being slow is tried again once the estimate is stale.
    pub fn latency_estimate_at(&self, now: Tick, typical_ns: f64) -> f64 {
        self.typical_ns.store(typical_ns.to_bits(), Relaxed);
        self.estimate_now(self.ewma_at.load(Relaxed), now)
    }

    fn estimate_now(&self, at: u64, now: Tick) -> f64 {
        let stored = f64::from_bits(self.ewma_ns.load(Relaxed));
        let typical = f64::from_bits(self.typical_ns.load(Relaxed));
        ewma::regress(stored, at, now.0, typical)
    }

    /// The latency estimate at `now` as the balancer last saw the fleet's typical latency:
    /// what [`EndpointState::latency_estimate_at`] gives, without setting the typical (for
    /// displays, which must show what the balancer reads, not only the last sample's value).
    pub fn latency_estimate_now(&self, now: Tick) -> f64 {
        self.estimate_now(self.ewma_at.load(Relaxed), now)
    }

    /// The latency estimate in nanoseconds as last refreshed (by a sample, not by time).
    pub fn latency_estimate_ns(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Relaxed))
    }

    /// Consecutive passive failures counted so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }
}

fn probe_count(probes: u64) -> u32 {
    (probes & u64::from(u32::MAX)) as u32
}

/// A request counted on an endpoint (see [`EndpointState::start_request`]); dropping it ends
/// the count and frees the probe slot it took, if the breaker is still in that period.
#[derive(Debug)]
pub struct EndpointLoad {
    state: Arc<EndpointState>,
    /// The breaker period (+1) whose probe slot this request took, if it took one.
    probe_period: Option<NonZeroU32>,
}

impl EndpointLoad {
    /// The endpoint's state.
    pub fn state(&self) -> &EndpointState {
        &self.state
    }
}

impl Drop for EndpointLoad {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Relaxed);
        if let Some(period) = self.probe_period {
            let period = u64::from(period.get().wrapping_sub(1));
            let _ = self.state.probes.fetch_update(Relaxed, Relaxed, |p| {
                ((p >> 32) as u32 as u64 == period && probe_count(p) > 0).then(|| p - 1)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn secs(s: u64) -> Tick {
        Tick(s * 1_000_000_000)
    }

    fn policy(run: u32) -> OutlierPolicy {
        OutlierPolicy {
            max_ejection_percent: 100,
            consecutive_failures: run,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(100),
            ..OutlierPolicy::default()
        }
    }

    /// Found by a regression hunt (session 20): after the breaker was turned off and on by
    /// reloads, its next ejection was twice the last one before, not base_ejection.
    #[test]
    fn a_breaker_turned_off_forgets_its_earlier_ejections() {
        let p = policy(1);
        let off = policy(0);
        let s = Arc::new(EndpointState::default());
        assert_eq!(
            s.record_outcome(false, &p, secs(1)),
            Some(BreakerEvent::Opened(Duration::from_secs(10)))
        );
        // Half-open at 11 s; a failure reopens for twice as long.
        assert_eq!(
            s.record_outcome(false, &p, secs(12)),
            Some(BreakerEvent::Opened(Duration::from_secs(20)))
        );
        assert!(s.release_if_open(secs(13)));
        assert_eq!(s.record_outcome(false, &off, secs(14)), None);
        assert_eq!(
            s.record_outcome(false, &p, secs(15)),
            Some(BreakerEvent::Opened(Duration::from_secs(10)))
        );
    }

    #[test]
    fn opens_after_consecutive_failures_then_half_open_probe_closes_it() {
        let p = policy(2);
        let s = Arc::new(EndpointState::default());
        assert_eq!(s.record_outcome(false, &p, secs(1)), None);
        assert_eq!(
            s.record_outcome(false, &p, secs(1)),
            Some(BreakerEvent::Opened(Duration::from_secs(10)))
        );
        assert_eq!(s.availability(secs(5)), Availability::Ejected(secs(11)));
        assert!(!s.is_available(secs(5)));
        // Half-open: one probe at a time.
        assert_eq!(s.availability(secs(11)), Availability::HalfOpen);
        assert!(s.is_available(secs(11)));
        let load = s.start_request();
        assert!(!s.is_available(secs(11)), "the probe slot is taken");
        assert_eq!(
            s.record_outcome(true, &p, secs(12)),
            Some(BreakerEvent::Closed)
        );
        drop(load);
        assert_eq!(s.availability(secs(12)), Availability::Available);
    }

    #[test]
    fn a_failed_half_open_probe_reopens_for_longer() {
        let p = policy(1);
        let s = Arc::new(EndpointState::default());
        assert_eq!(
            s.record_outcome(false, &p, secs(1)),
            Some(BreakerEvent::Opened(Duration::from_secs(10)))
        );
        let load = s.start_request();
        assert_eq!(
            s.record_outcome(false, &p, secs(12)),
            Some(BreakerEvent::Opened(Duration::from_secs(20)))
        );
        drop(load);
        assert!(!s.is_available(secs(31)));
        assert!(s.is_available(secs(32)));
    }

    /// A probe's finding: every ejection doubled the last one, however long the endpoint had
    /// served well in between, until `max_ejection` (5 minutes by default) had passed.
    #[test]
    fn an_endpoint_that_served_as_long_as_it_was_out_starts_again_from_base() {
        let p = policy(1);
        let s = EndpointState::default();
        let ten = Some(BreakerEvent::Opened(Duration::from_secs(10)));
        assert_eq!(s.record_outcome(false, &p, secs(1)), ten);
        assert_eq!(
            s.record_outcome(true, &p, secs(12)),
            Some(BreakerEvent::Closed)
        );
        // Back in rotation, it fails again 5 s later: out for twice as long.
        assert_eq!(s.record_outcome(true, &p, secs(15)), None);
        let twenty = Some(BreakerEvent::Opened(Duration::from_secs(20)));
        assert_eq!(s.record_outcome(false, &p, secs(16)), twenty);
        assert_eq!(
            s.record_outcome(true, &p, secs(37)),
            Some(BreakerEvent::Closed)
        );
        // Then it serves 20 s and more: the next ejection is base_ejection again.
        assert_eq!(s.record_outcome(true, &p, secs(58)), None);
        assert_eq!(s.record_outcome(false, &p, secs(60)), ten);
        // A regression hunt's finding: time out of traffic before the probe is not service.
        // Out 10 s (until 70 s), idle until 90 s, probed and closed, failing at once: twice
        // as long.
        assert_eq!(
            s.record_outcome(true, &p, secs(90)),
            Some(BreakerEvent::Closed)
        );
        assert_eq!(s.record_outcome(true, &p, secs(91)), None);
        assert_eq!(s.record_outcome(false, &p, secs(92)), twenty);
    }

    #[test]
    fn a_probe_slot_taken_before_the_breaker_moved_on_is_not_given_back_twice() {
        let p = policy(1);
        let s = Arc::new(EndpointState::default());
        s.record_outcome(false, &p, secs(1));
        let early = s.start_request(); // half-open at 11 s: takes the slot
        assert_eq!(s.probes_in_flight(), 1);
        // The probe fails: open again; at 32 s half-open again and a new probe takes the slot.
        s.record_outcome(false, &p, secs(12));
        let late = s.start_request();
        assert_eq!(s.probes_in_flight(), 1);
        drop(early); // belongs to the earlier period: must not free the new probe's slot
        assert_eq!(s.probes_in_flight(), 1);
        assert!(!s.is_available(secs(32)));
        drop(late);
        assert_eq!(s.probes_in_flight(), 0);
        assert_eq!(s.in_flight(), 0);
        assert!(s.is_available(secs(32)));
    }

    #[test]
    fn opens_on_failure_rate_with_minimum_volume() {
        let p = OutlierPolicy {
            consecutive_failures: 0,
            failure_rate_percent: 50,
            min_requests: 10,
            ..policy(0)
        };
        let s = EndpointState::default();
        // Alternating failures never make a run, but half of the traffic fails.
        let mut opened = None;
        for i in 0..20 {
            if let Some(e) = s.record_outcome(i % 2 == 0, &p, secs(1)) {
                opened = Some((i, e));
                break;
            }
        }
        let (at, event) = opened.expect("opened on rate");
        assert!(
            at >= 9,
            "not before the minimum volume: opened at request {at}"
        );
        assert_eq!(event, BreakerEvent::Opened(Duration::from_secs(10)));
    }

    #[test]
    fn success_resets_failure_run() {
        let p = policy(2);
        let s = EndpointState::default();
        s.record_outcome(false, &p, secs(1));
        s.record_outcome(true, &p, secs(1));
        assert_eq!(s.record_outcome(false, &p, secs(1)), None);
        assert!(s.is_available(secs(1)));
    }

    #[test]
    fn a_successful_probe_only_ever_lowers_the_latency_estimate() {
        let s = EndpointState::default();
        let d = crate::ewma::DECAY;
        let ms = Duration::from_millis;
        s.observe_latency(ms(50), secs(1), d);
        s.observe_probe_latency(ms(200), secs(2), d);
        assert_eq!(
            s.latency_estimate_ns(),
            50e6,
            "a slower probe is not a request"
        );
        s.observe_probe_latency(ms(1), secs(12), d);
        let after = s.latency_estimate_ns();
        assert!(after < 25e6 && after > 1e6, "{after}");
        // Stale and unrefreshed, the estimate heads below the fleet's typical latency.
        let stale = s.latency_estimate_at(secs(30), 2e6);
        assert!(stale < 2e6, "{stale}");
        // A display reads the same value the balancer does, and the last sample's separately.
        assert_eq!(s.latency_estimate_now(secs(30)), stale);
        assert_eq!(s.latency_estimate_ns(), after);
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

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Ok,
        Fail,
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![Just(Op::Ok), Just(Op::Fail), (0u64..40).prop_map(Op::Wait)]
    }

    proptest! {
        /// Every transition is one the state machine allows: closed→open on failures, open never
        /// changes by outcomes, half-open→closed on success, half-open→open (longer) on failure.
        #[test]
        fn breaker_transitions_follow_the_state_machine(ops in proptest::collection::vec(op(), 1..200)) {
            let p = policy(3);
            let s = EndpointState::default();
            let mut now = secs(1);
            let mut last_period = Duration::ZERO;
            for o in ops {
                let before = s.availability(now);
                match o {
                    Op::Wait(sec) => { now = now.after(Duration::from_secs(sec)); continue; }
                    Op::Ok | Op::Fail => {}
                }
                let event = s.record_outcome(matches!(o, Op::Ok), &p, now);
                let after = s.availability(now);
                match (before, event) {
                    (Availability::Available, Some(BreakerEvent::Opened(_))) => prop_assert!(matches!(o, Op::Fail)),
                    (Availability::Available, Some(BreakerEvent::Closed)) => prop_assert!(false, "closed while closed"),
                    (Availability::Ejected(_), Some(e)) => prop_assert!(false, "outcome changed an open breaker: {e:?}"),
                    (Availability::HalfOpen, Some(BreakerEvent::Closed)) => {
                        prop_assert!(matches!(o, Op::Ok));
                        prop_assert_eq!(after, Availability::Available);
                    }
                    (Availability::HalfOpen, Some(BreakerEvent::Opened(d))) => {
                        prop_assert!(matches!(o, Op::Fail));
                        prop_assert!(d >= last_period.min(p.max_ejection), "reopened for less: {d:?} < {last_period:?}");
                    }
                    (Availability::HalfOpen, None) => prop_assert!(false, "a half-open outcome must decide"),
                    _ => {}
                }
                if let Some(BreakerEvent::Opened(d)) = event {
                    prop_assert!(matches!(after, Availability::Ejected(_)));
                    last_period = d;
                }
            }
        }
    }
}
