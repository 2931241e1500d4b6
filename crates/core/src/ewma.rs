//! Peak-EWMA latency estimate: jumps up to a slow sample at once, decays towards fast ones.
//!
//! This is the cost signal of the `p2c_ewma` balancer (as in Finagle and linkerd): a slow
//! endpoint is avoided immediately. An estimate nobody refreshes goes stale: it is read
//! [`regress`]ed toward (just below) the fleet's typical latency, so an endpoint that stopped
//! being picked because it was slow is tried again after a few [`STALE`] windows; if it
//! recovered, its next answers bring it back into rotation, if not, the first slow answer
//! pushes it out again.

use std::time::Duration;

/// Weight of the past in the estimate: samples older than this count for 1/e.
pub const DECAY: Duration = Duration::from_secs(10);

/// How fast an estimate that is not refreshed moves: its ratio to where it heads shrinks to
/// the power 1/e every window.
pub const STALE: Duration = Duration::from_secs(2);

/// `estimate` (last refreshed at `at_ns`) as known at `now_ns`, moved in log space the longer
/// it went unrefreshed toward half the fleet's typical latency `typical_ns`: a stale estimate
/// is worth a new look, so it ends up below the typical rather than merely tying with it (an
/// endpoint whose estimate only approached the typical would lose every pair to one sitting
/// at it). A 50×-typical estimate is back to the typical after about two windows. Unknown
/// typical (≤ 0): unchanged.
pub fn regress(estimate: f64, at_ns: u64, now_ns: u64, typical_ns: f64) -> f64 {
    if typical_ns <= 0.0 || estimate <= 0.0 || !typical_ns.is_finite() {
        return estimate;
    }
    let target = typical_ns / 2.0;
    let elapsed = now_ns.saturating_sub(at_ns) as f64;
    let w = (-elapsed / STALE.as_nanos() as f64).exp();
    target * (estimate / target).powf(w)
}

/// Pure update rule; the caller stores the result (see [`crate::EndpointState::observe_latency`]).
pub fn update(prev_ns: f64, prev_at_ns: u64, sample_ns: f64, now_ns: u64, decay: Duration) -> f64 {
    if sample_ns > prev_ns {
        return sample_ns;
    }
    let elapsed = now_ns.saturating_sub(prev_at_ns) as f64;
    let tau = decay.as_nanos().max(1) as f64;
    let w = (-elapsed / tau).exp();
    prev_ns * w + sample_ns * (1.0 - w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_taken_at_once() {
        assert_eq!(
            update(1_000.0, 0, 5_000.0, 1, Duration::from_secs(10)),
            5_000.0
        );
    }

    #[test]
    fn a_stale_estimate_falls_below_the_typical_from_either_side() {
        let s = STALE.as_nanos() as u64;
        assert_eq!(regress(50.0, 0, 0, 1.0), 50.0);
        let back = regress(50.0, 0, s, 1.0);
        assert!(back > 1.0 && back < 5.0, "{back}");
        let later = regress(50.0, 0, 2 * s, 1.0);
        assert!(later < 1.0 && later > 0.5, "{later}");
        let low = regress(0.2, 0, 5 * s, 1.0);
        assert!(low > 0.2 && low < 0.5, "{low}");
        assert_eq!(regress(50.0, 0, 3 * s, 0.0), 50.0, "no typical known");
    }

    #[test]
    fn fast_samples_decay_towards_sample() {
        let d = Duration::from_millis(100);
        let v = update(10_000.0, 0, 1_000.0, 1_000_000_000, d);
        assert!(v < 1_100.0, "{v}");
        let v = update(10_000.0, 0, 1_000.0, 1, d);
        assert!(v > 9_900.0, "{v}");
    }
}
