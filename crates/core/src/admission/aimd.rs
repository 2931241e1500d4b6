//! An adaptive concurrency limit (AIMD on latency): while responses stay within `tolerance` ×
//! the best recent latency the limit grows by one per window of `limit` samples; a slower sample
//! cuts it by `backoff`. This finds the concurrency an upstream serves without queueing, like
//! Netflix's concurrency-limits AIMD and the idea behind Envoy's adaptive concurrency.

use std::time::Duration;

/// Controller state. Construct with [`Aimd::new`].
#[derive(Clone, Debug, PartialEq)]
pub struct Aimd {
    limit: f64,
    min: f64,
    max: f64,
    tolerance: f64,
    backoff: f64,
    best: Option<Duration>,
    samples: u64,
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
            best: None,
            samples: 0,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Feeds one latency sample; returns the new limit.
    pub fn on_sample(&mut self, latency: Duration) -> usize {
        self.samples += 1;
        // Forget the best latency now and then, so a permanently slower upstream is re-learned.
        if self.samples.is_multiple_of(1000) {
            self.best = None;
        }
        let best = *self.best.get_or_insert(latency);
        if latency < best {
            self.best = Some(latency);
        }
        if latency.as_secs_f64() > best.as_secs_f64() * self.tolerance {
            self.limit = (self.limit * self.backoff).max(self.min);
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
        a.on_sample(Duration::from_millis(10));
        for _ in 0..20 {
            a.on_sample(Duration::from_millis(50));
        }
        let low = a.limit();
        assert!(low < 20, "{low}");
        for _ in 0..2000 {
            a.on_sample(Duration::from_millis(10));
        }
        assert!(a.limit() > low);
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
