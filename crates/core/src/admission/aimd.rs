//! An adaptive concurrency limit (AIMD on latency). Latency is averaged over windows of at
//! least [`WINDOW`] and [`WINDOW_SAMPLES`] samples; while a window's average stays within
//! `tolerance` × the usual latency (the best window average, creeping up slowly) the limit grows by one
//! per `limit` samples, and a window above it cuts the limit by `backoff`. This finds the
//! concurrency an upstream serves without queueing, like Netflix's concurrency-limits (its
//! gradient compares the same two averages) and the idea behind Envoy's adaptive concurrency.
//!
//! Windows, not single samples against the best one seen: an upstream that serves requests of
//! different speeds (a fast path beside a 30 ms one) is not overloaded, yet every slow sample
//! was "slower than the best" and the limit sank to its minimum, shedding most traffic. A
//! window long enough to hold the traffic's mix averages the same whatever order the
//! responses come back in.

use std::time::Duration;

use crate::Tick;

/// A window lasts at least this long...
pub const WINDOW: Duration = Duration::from_millis(100);
/// ... and holds at least this many samples.
pub const WINDOW_SAMPLES: u32 = 10;
/// How fast the usual latency rises towards slower windows: 0.1% a window (it takes some
/// 1,600 windows, about 3 minutes, to learn an upstream five times slower).
const CREEP: f64 = 0.001;

/// Controller state. Construct with [`Aimd::new`].
#[derive(Clone, Debug, PartialEq)]
pub struct Aimd {
    limit: f64,
    min: f64,
    max: f64,
    tolerance: f64,
    backoff: f64,
    /// The usual latency in seconds (None before the first window).
    long: Option<f64>,
    /// The open window: when it started, its samples and their sum in seconds.
    started: Option<Tick>,
    count: u32,
    sum: f64,
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
            long: None,
            started: None,
            count: 0,
            sum: 0.0,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Feeds one latency sample, taken at `now`; returns the limit (changed only when a window
    /// closes).
    pub fn on_sample(&mut self, latency: Duration, now: Tick) -> usize {
        let started = *self.started.get_or_insert(now);
        self.count += 1;
        self.sum += latency.as_secs_f64();
        if self.count < WINDOW_SAMPLES || now.since(started) < WINDOW {
            return self.limit();
        }
        let (n, avg) = (f64::from(self.count), self.sum / f64::from(self.count));
        (self.started, self.count, self.sum) = (None, 0, 0.0);
        let long = self.long.unwrap_or(avg);
        let overloaded = avg > long * self.tolerance;
        // The usual latency is the best window average, creeping up by [`CREEP`] a window: an
        // overload that is there from the start, or lasts, is not learned as the usual (a
        // mean would learn it within seconds), and a permanently slower upstream is learned
        // again over a few minutes.
        self.long = Some(avg.min(long * (1.0 + CREEP)));
        self.limit = match overloaded {
            true => (self.limit * self.backoff).max(self.min),
            false => (self.limit + n / self.limit).min(self.max),
        };
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Feeds `n` samples of `ms`, `per_window` of them in each 100 ms window from `t`.
    fn feed(a: &mut Aimd, t: &mut Tick, n: usize, ms: f64, per_window: usize) {
        for i in 0..n {
            if i % per_window == 0 {
                *t = t.after(WINDOW);
            }
            a.on_sample(Duration::from_secs_f64(ms / 1000.0), *t);
        }
    }

    #[test]
    fn slow_windows_cut_the_limit_and_fast_ones_grow_it_back() {
        let (mut a, mut t) = (Aimd::new(2, 100, 2.0), Tick(1));
        feed(&mut a, &mut t, 5000, 10.0, 50);
        assert_eq!(a.limit(), 100);
        // Five times slower: cut window after window.
        feed(&mut a, &mut t, 1500, 50.0, 50);
        let low = a.limit();
        assert!(low < 20, "{low}");
        feed(&mut a, &mut t, 3000, 10.0, 50);
        assert!(a.limit() > low);
    }

    #[test]
    fn requests_of_different_speeds_are_not_an_overload() {
        // A probe's reproduction: 16 clients on a steady 30 ms path and one on a 0.5 ms path
        // drove the limit to its minimum, and most requests were shed. Here the 16 slow ones
        // come back together, as they do, among a stream of fast ones.
        let (mut a, mut t) = (Aimd::new(4, 50, 2.0), Tick(1));
        for round in 0..2000u64 {
            t = t.after(Duration::from_millis(30));
            for _ in 0..40 {
                a.on_sample(Duration::from_micros(500), t);
            }
            for _ in 0..16 {
                a.on_sample(Duration::from_millis(30 + round % 3), t);
            }
        }
        assert_eq!(a.limit(), 50);
    }

    #[test]
    fn a_lasting_overload_keeps_the_limit_down() {
        // A probe's reproduction: an upstream of 4 workers at 20 ms, 40 clients; latency ten
        // times the unloaded one for 20 s. A moving average learned it as the usual within
        // seconds and the limit climbed back while the upstream stayed overloaded.
        let (mut a, mut t) = (Aimd::new(4, 100, 2.0), Tick(1));
        feed(&mut a, &mut t, 40, 21.0, 20);
        feed(&mut a, &mut t, 4000, 200.0, 20);
        assert!(a.limit() < 10, "{}", a.limit());
    }

    #[test]
    fn a_permanently_slower_upstream_is_learned_again() {
        let (mut a, mut t) = (Aimd::new(2, 100, 2.0), Tick(1));
        feed(&mut a, &mut t, 5000, 10.0, 50);
        feed(&mut a, &mut t, 200_000, 50.0, 50);
        assert!(a.limit() > 50, "{}", a.limit());
    }

    proptest! {
        #[test]
        fn limit_stays_within_bounds(samples in proptest::collection::vec(1u64..1000, 1..500)) {
            let (mut a, mut t) = (Aimd::new(3, 50, 2.0), Tick(1));
            for s in samples {
                t = t.after(Duration::from_millis(s));
                let l = a.on_sample(Duration::from_millis(s), t);
                prop_assert!((3..=50).contains(&l));
            }
        }
    }
}
