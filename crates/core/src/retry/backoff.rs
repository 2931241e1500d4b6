//! Exponential backoff with full jitter: wait uniformly in [0, min(cap, base × 2^(n−1))], which
//! spreads retries of many clients apart (AWS architecture blog, "Exponential Backoff And
//! Jitter").

use std::time::Duration;

/// Backoff settings. Construct with [`Backoff::new`], which rejects a zero base or a cap below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    /// 25 ms doubling up to 1 s.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            cap: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// A backoff starting at `base`, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Result<Backoff, &'static str> {
        if base.is_zero() {
            return Err("backoff base must be greater than zero");
        }
        if cap < base {
            return Err("backoff cap must be at least the base");
        }
        Ok(Backoff { base, cap })
    }

    /// The wait after attempt `n` (1-based), for a uniform `jitter` in [0, 1).
    pub fn delay(&self, n: u32, jitter: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(30))
            .min(self.cap);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn delay_stays_within_zero_and_cap(base_ms in 1u64..1000, extra_ms in 0u64..10_000, n in 0u32..100, jitter in 0.0f64..1.0) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(base_ms + extra_ms)).expect("valid");
            let d = b.delay(n, jitter);
            prop_assert!(d <= Duration::from_millis(base_ms + extra_ms));
        }

        #[test]
        fn ceiling_grows_with_attempts_until_the_cap(base_ms in 1u64..100, n in 1u32..10) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_secs(3600)).expect("valid");
            prop_assert!(b.delay(n + 1, 0.999_999) >= b.delay(n, 0.999_999));
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }
}
