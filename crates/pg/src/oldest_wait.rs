//! How long the client that has waited longest for a server is waiting now: SHOW POOLS
//! `maxwait_us`, PgBouncer's `maxwait` (it grows while the pool does not keep up, and is 0
//! once nobody waits, so an alert on it clears). A running maximum would never come down.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The start of every wait in progress.
#[derive(Debug, Default)]
pub struct OldestWait {
    started: Mutex<BTreeSet<(Instant, u64)>>,
    next: AtomicU64,
}

/// One wait in progress, until dropped (however the wait ends).
pub(crate) struct InProgress<'a> {
    of: &'a OldestWait,
    key: (Instant, u64),
}

impl OldestWait {
    /// Records a wait that began at `since` until the returned value is dropped.
    pub(crate) fn begin(&self, since: Instant) -> InProgress<'_> {
        let key = (since, self.next.fetch_add(1, Relaxed));
        self.set().insert(key);
        InProgress { of: self, key }
    }

    /// How long the oldest wait in progress has lasted at `now` (zero when nobody waits).
    pub fn oldest(&self, now: Instant) -> Duration {
        self.set().first().map_or(Duration::ZERO, |(since, _)| {
            now.saturating_duration_since(*since)
        })
    }

    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<(Instant, u64)>> {
        self.started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.of.set().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_wait_in_progress_counts_and_an_ended_one_does_not() {
        let w = OldestWait::default();
        let now = Instant::now();
        assert_eq!(w.oldest(now), Duration::ZERO);
        let first = w.begin(now - Duration::from_secs(3));
        let second = w.begin(now - Duration::from_secs(1));
        assert_eq!(w.oldest(now), Duration::from_secs(3));
        drop(first);
        assert_eq!(w.oldest(now), Duration::from_secs(1));
        drop(second);
        assert_eq!(w.oldest(now), Duration::ZERO);
    }
}
