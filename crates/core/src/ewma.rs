//! Peak-EWMA latency estimate: jumps up to a slow sample at once, decays towards fast ones.
//!
//! This is the cost signal of the `p2c_ewma` balancer (as in Finagle and linkerd): a slow
//! endpoint is avoided immediately, a recovered one wins traffic back over about `decay`.

use std::time::Duration;

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
    fn fast_samples_decay_towards_sample() {
        let d = Duration::from_millis(100);
        let v = update(10_000.0, 0, 1_000.0, 1_000_000_000, d);
        assert!(v < 1_100.0, "{v}");
        let v = update(10_000.0, 0, 1_000.0, 1, d);
        assert!(v > 9_900.0, "{v}");
    }
}
