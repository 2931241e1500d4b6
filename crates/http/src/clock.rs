//! The gateway's monotonic clock, as core [`Tick`]s. Reads tokio's clock so tests with a paused
//! runtime see paused time.

use std::sync::OnceLock;

use scalegate_core::Tick;
use tokio::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Now, as nanoseconds since the first call (plus one, so that 0 can mean "never").
pub fn now() -> Tick {
    let origin = *ORIGIN.get_or_init(Instant::now);
    Tick(Instant::now().saturating_duration_since(origin).as_nanos() as u64 + 1)
}
