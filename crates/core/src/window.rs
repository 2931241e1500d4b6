//! A rolling count of requests and failures over a short window, lock-free and approximate, for
//! the breaker's failure-rate trip.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::Tick;

const BUCKETS: usize = 10;

#[derive(Debug, Default)]
struct Bucket {
    epoch: AtomicU64,
    total: AtomicU32,
    failures: AtomicU32,
}

/// Requests and failures over the last `window` (in ten buckets).
#[derive(Debug, Default)]
pub struct FailureWindow {
    buckets: [Bucket; BUCKETS],
}

impl FailureWindow {
    fn bucket_len(window: Duration) -> u64 {
        (window.as_nanos() as u64 / BUCKETS as u64).max(1)
    }

    /// Counts one outcome at `now`.
    pub fn record(&self, failed: bool, now: Tick, window: Duration) {
        let epoch = now.0 / Self::bucket_len(window) + 1;
        let b = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let seen = b.epoch.load(Relaxed);
        if seen != epoch
            && b.epoch
                .compare_exchange(seen, epoch, Relaxed, Relaxed)
                .is_ok()
        {
            b.total.store(0, Relaxed);
            b.failures.store(0, Relaxed);
        }
        b.total.fetch_add(1, Relaxed);
        if failed {
            b.failures.fetch_add(1, Relaxed);
        }
    }

    /// (requests, failures) within the window ending at `now`.
    pub fn counts(&self, now: Tick, window: Duration) -> (u32, u32) {
        let epoch = now.0 / Self::bucket_len(window) + 1;
        self.buckets
            .iter()
            .filter(|b| epoch.saturating_sub(b.epoch.load(Relaxed)) < BUCKETS as u64)
            .fold((0, 0), |(t, f), b| {
                (t + b.total.load(Relaxed), f + b.failures.load(Relaxed))
            })
    }

    /// Forgets everything (the breaker closed).
    pub fn clear(&self) {
        for b in &self.buckets {
            b.total.store(0, Relaxed);
            b.failures.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_only() {
        let w = FailureWindow::default();
        let win = Duration::from_secs(10);
        for i in 0..10 {
            w.record(i % 2 == 0, Tick(1), win);
        }
        assert_eq!(w.counts(Tick(1), win), (10, 5));
        let later = Tick(1).after(Duration::from_secs(11));
        assert_eq!(w.counts(later, win), (0, 0));
    }
}
