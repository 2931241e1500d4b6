//! Retry budget: over a sliding window, retries may be at most `percent` of requests plus a small
//! floor per second, so a failing upstream gets at most that much extra load (as Finagle and
//! linkerd do).

use std::sync::Mutex;
use std::time::Duration;

use crate::Tick;

/// Buckets the window is cut into.
const SLOTS: usize = 10;

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    epoch: u64,
    requests: u64,
    retries: u64,
}

/// A route's retry budget. Thread-safe; one short lock per request and per retry.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    min_per_second: u32,
    window: Duration,
    slots: Mutex<[Slot; SLOTS]>,
}

impl RetryBudget {
    /// Retries ≤ `percent`% of requests + `min_per_second` × window seconds, over `window`.
    pub fn new(percent: u32, min_per_second: u32, window: Duration) -> RetryBudget {
        RetryBudget {
            percent,
            min_per_second,
            window: window.max(Duration::from_millis(SLOTS as u64)),
            slots: Mutex::new([Slot::default(); SLOTS]),
        }
    }

    fn slot_len(&self) -> u64 {
        (self.window.as_nanos() as u64 / SLOTS as u64).max(1)
    }

    fn with<T>(&self, now: Tick, f: impl FnOnce(&mut [Slot; SLOTS], u64) -> T) -> T {
        let epoch = now.0 / self.slot_len();
        let mut slots = match self.slots.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut slots, epoch)
    }

    /// Counts a request (first attempts only).
    pub fn deposit(&self, now: Tick) {
        self.with(now, |slots, epoch| current(slots, epoch).requests += 1);
    }

    /// Takes one retry from the budget if it allows; returns whether it did.
    pub fn try_withdraw(&self, now: Tick) -> bool {
        let floor = u64::from(self.min_per_second) * self.window.as_secs().max(1);
        self.with(now, |slots, epoch| {
            let live = |s: &&Slot| epoch.saturating_sub(s.epoch) < SLOTS as u64;
            let requests: u64 = slots.iter().filter(live).map(|s| s.requests).sum();
            let retries: u64 = slots.iter().filter(live).map(|s| s.retries).sum();
            let allowed = requests * u64::from(self.percent) / 100 + floor;
            if retries < allowed {
                current(slots, epoch).retries += 1;
                true
            } else {
                false
            }
        })
    }
}

fn current(slots: &mut [Slot; SLOTS], epoch: u64) -> &mut Slot {
    let s = &mut slots[(epoch % SLOTS as u64) as usize];
    if s.epoch != epoch {
        *s = Slot {
            epoch,
            requests: 0,
            retries: 0,
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// However requests and retries interleave, granted retries never exceed the ratio plus
        /// the floor within one window.
        #[test]
        fn budget_never_exceeds_its_ratio(percent in 0u32..100, ops in proptest::collection::vec(any::<bool>(), 1..2000)) {
            let b = RetryBudget::new(percent, 0, Duration::from_secs(10));
            let now = Tick(1);
            let (mut requests, mut granted) = (0u64, 0u64);
            for deposit in ops {
                if deposit {
                    b.deposit(now);
                    requests += 1;
                } else if b.try_withdraw(now) {
                    granted += 1;
                }
            }
            prop_assert!(granted <= requests * u64::from(percent) / 100, "granted {granted} of {requests} at {percent}%");
        }
    }

    #[test]
    fn floor_allows_a_few_retries_with_no_traffic() {
        let b = RetryBudget::new(20, 1, Duration::from_secs(10));
        let granted = (0..100).filter(|_| b.try_withdraw(Tick(1))).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn old_traffic_leaves_the_window() {
        let b = RetryBudget::new(50, 0, Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit(Tick(1));
        }
        assert!(b.try_withdraw(Tick(1)));
        let later = Tick(1).after(Duration::from_secs(11));
        assert!(
            !b.try_withdraw(later),
            "requests from more than a window ago do not pay for retries"
        );
    }
}
