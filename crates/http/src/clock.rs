//! The gateway's monotonic clock, as core [`Tick`]s. Reads tokio's clock so tests with a paused
//! runtime see paused time.

use std::sync::OnceLock;

use scalegate_core::Tick;
use tokio::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Now, as nanoseconds since the first call (plus one, so that 0 can mean "never").
pub fn now() -> Tick {
    tick_at(Instant::now())
}

/// `at` as a [`Tick`], for a caller that has just read the clock and needs both forms (one
/// read instead of two).
pub fn tick_at(at: Instant) -> Tick {
    let origin = *ORIGIN.get_or_init(|| at);
    Tick(at.saturating_duration_since(origin).as_nanos() as u64 + 1)
}
