//! Monotonic time as plain nanoseconds, so decisions can be tested without a clock.

use std::time::Duration;

/// A point on a monotonic clock, in nanoseconds since an origin chosen by the caller.
///
/// `Tick(0)` is the origin; callers start their clock a little after it so that 0 can mean
/// "never" in atomics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(pub u64);

impl Tick {
    /// The tick `d` after this one (saturating).
    pub fn after(self, d: Duration) -> Tick {
        Tick(
            self.0
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}
