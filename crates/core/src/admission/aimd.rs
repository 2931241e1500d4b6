//! An adaptive concurrency limit (AIMD on latency): while the recent latency (a short moving
//! average) stays within `tolerance` × the usual latency (a long moving average) the limit
//! grows by one per window of `limit` samples; when it rises above, the limit is cut by
//! `backoff`, at most once per window. This finds the concurrency an upstream serves without
//! queueing, like Netflix's concurrency-limits (its gradient compares the same two averages)
//! and the idea behind Envoy's adaptive concurrency.
//!
//! Averages, not single samples against the best one seen: an upstream that serves requests of
//! different speeds (a fast path beside a 30 ms one) is not overloaded, yet every slow sample
//! was "slower than the best" and the limit sank to its minimum, shedding most traffic.

use std::time::Duration;

/// Weight of a new sample in the short average (about the last 10 samples).
const SHORT: f64 = 0.1;
/// Weight of a new sample in the long average (about the last 500 samples).
const LONG: f64 = 0.002;

/// Controller state. Construct with [`Aimd::new`].
#[derive(Clone, Debug, PartialEq)]
pub struct Aimd {
    limit: f64,
    min: f64,
    max: f64,
    tolerance: f64,
    backoff: f64,
    /// Moving averages of latency in seconds (None before the first sample).
    short: Option<f64>,
    long: Option<f64>,
    /// Samples since the last cut, and in all.
    since_cut: f64,
    samples: f64,
}

impl Aimd {
    /// Starts at `max` and stays within [`min`, `max`]; `tolerance` > 1 (e.g. 2.0).
    pub fn new(min: usize, max: usize, tolerance: f64) -> Aimd {
        let min = min.max(1) as f64;
        Aimd {
            limit: (max as f64).max(min),
            min,
            max: (max as f64).max(min),
            tolerance: tolerance.max(1.01),
            backoff: 0.9,
            short: None,
            long: None,
            since_cut: 0.0,
            samples: 0.0,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Feeds one latency sample; returns the new limit.
    pub fn on_sample(&mut self, latency: Duration) -> usize {
        let x = latency.as_secs_f64();
        self.samples += 1.0;
        // The long average is a plain mean over the first samples, so it starts from the
        // upstream's real mix rather than from whichever request came first.
        let short = self.short.map_or(x, |s| s + SHORT * (x - s));
        self.short = Some(short);
        let long = self.long.unwrap_or(x);
        let overloaded = short > long * self.tolerance;
        // The long average learns little from an overload it is reacting to (a lasting one
        // keeps the limit down rather than becoming the usual at once), yet re-learns a
        // permanently slower upstream over a few thousand samples.
        let weight = match overloaded {
            false => LONG.max(1.0 / self.samples),
            true if self.samples <= 1.0 / LONG => 1.0 / self.samples,
            true => LONG / 10.0,
        };
        self.long = Some(long + weight * (x - long));
        self.since_cut += 1.0;
        if overloaded {
            if self.since_cut >= self.limit {
                self.limit = (self.limit * self.backoff).max(self.min);
                self.since_cut = 0.0;
            }
        } else {
            self.limit = (self.limit + 1.0 / self.limit).min(self.max);
        }
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn slow_samples_cut_the_limit_and_fast_ones_grow_it_back() {
        let mut a = Aimd::new(2, 100, 2.0);
        for _ in 0..1000 {
            a.on_sample(Duration::from_millis(10));
        }
        assert_eq!(a.limit(), 100);
        // Five times slower: cut window after window.
        for _ in 0..1500 {
            a.on_sample(Duration::from_millis(50));
        }
        let low = a.limit();
        assert!(low < 20, "{low}");
        for _ in 0..3000 {
            a.on_sample(Duration::from_millis(10));
        }
        assert!(a.limit() > low);
    }

    #[test]
    fn requests_of_different_speeds_are_not_an_overload() {
        // A probe's reproduction: 16 clients on a steady 30 ms path and one on a 0.5 ms path
        // drove the limit to its minimum, and most requests were shed.
        let mut a = Aimd::new(4, 50, 2.0);
        for i in 0..20_000u32 {
            let ms = if i % 17 == 0 { 0.5 } else { 30.0 };
            a.on_sample(Duration::from_secs_f64(ms / 1000.0));
        }
        assert_eq!(a.limit(), 50);
    }

    #[test]
    fn a_permanently_slower_upstream_is_learned_again() {
        let mut a = Aimd::new(2, 100, 2.0);
        for _ in 0..1000 {
            a.on_sample(Duration::from_millis(10));
        }
        for _ in 0..20_000 {
            a.on_sample(Duration::from_millis(50));
        }
        assert!(a.limit() > 50, "{}", a.limit());
    }

    proptest! {
        #[test]
        fn limit_stays_within_bounds(samples in proptest::collection::vec(1u64..1000, 1..500)) {
            let mut a = Aimd::new(3, 50, 2.0);
            for s in samples {
                let l = a.on_sample(Duration::from_millis(s));
                prop_assert!((3..=50).contains(&l));
            }
        }
    }
}
