//! Round robin: each candidate in turn, counted over candidates only, so an unavailable endpoint's
//! share spreads over all the others rather than landing on its neighbour. An endpoint in slow
//! start is skipped with probability (1 − ramp), so it still warms up without weights.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rand::{Rng, RngExt};

use super::Candidates;

pub(super) fn pick<R: Rng + ?Sized>(
    c: &Candidates<'_>,
    cursor: &AtomicUsize,
    rng: &mut R,
) -> Option<usize> {
    let n = c.len();
    let count = (0..n).filter(|&i| c.ok(i)).count();
    if count == 0 {
        return None;
    }
    let start = cursor.fetch_add(1, Relaxed) % count;
    let ranked = || (0..n).filter(|&i| c.ok(i)).cycle().skip(start).take(count);
    ranked()
        .find(|&i| {
            let ramp = c.ramp(i);
            ramp >= 1.0 || rng.random::<f64>() < ramp
        })
        .or_else(|| ranked().next())
}
