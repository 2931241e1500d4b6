//! GCRA (generic cell rate algorithm), the token bucket in one number per key: the theoretical
//! arrival time (TAT) of the next request. A request is allowed when it would not put the TAT
//! more than the burst tolerance ahead of now.
//!
//! Keys live in sharded maps and a key whose TAT has passed carries no information (it equals a
//! fresh key), so [`RateLimiter::sweep`] drops it: memory is bounded by the keys active within one
//! burst window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::Tick;

/// Rate `requests` per `per`, bursts up to `burst` requests at once. Validated at config load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    /// Time between requests at the sustained rate.
    emission: u64,
    /// How far ahead of now the TAT may run (burst × emission).
    tolerance: u64,
    /// Burst size (the policy's quota).
    burst: u32,
}

/// The answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    /// Allowed; `remaining` more requests would be allowed right now, and the quota is whole
    /// again after `reset`.
    Allow {
        /// Requests still allowed at once.
        remaining: u32,
        /// Time until the full burst is available again.
        reset: Duration,
    },
    /// Denied; retrying after `retry_after` will be allowed.
    Deny {
        /// Wait before the next allowed request.
        retry_after: Duration,
    },
}

impl Gcra {
    /// `requests` per `per`, with bursts of `burst`.
    pub fn new(requests: u32, per: Duration, burst: u32) -> Result<Gcra, &'static str> {
        if requests == 0 || per.is_zero() {
            return Err("rate limit needs requests > 0 and a period > 0");
        }
        if burst == 0 {
            return Err("rate limit burst must be at least 1");
        }
        // Saturating: a period past u64::MAX nanoseconds (584 years) would wrap to a tiny one.
        let emission = u64::try_from(per.as_nanos() / u128::from(requests))
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(Gcra {
            emission,
            tolerance: emission.saturating_mul(u64::from(burst)),
            burst,
        })
    }

    /// The burst size.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The window over which the burst refills, in seconds (for RateLimit-Policy).
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.tolerance)
    }

    /// Decides for a key whose stored TAT is `tat` (0 for a fresh key); returns the decision and
    /// the TAT to store when allowed.
    pub fn decide(&self, tat: u64, now: Tick) -> (RateDecision, Option<u64>) {
        let start = tat.max(now.0);
        let next = start.saturating_add(self.emission);
        let decision = self.judge(next - now.0);
        let store = matches!(decision, RateDecision::Allow { .. }).then_some(next);
        (decision, store)
    }

    /// The decision for a request that would put the TAT `ahead` nanoseconds past now (the
    /// same rule wherever the TAT is kept: here, or in Redis for a shared limit).
    pub fn judge(&self, ahead: u64) -> RateDecision {
        if ahead > self.tolerance {
            let retry_after = Duration::from_nanos(ahead - self.tolerance);
            return RateDecision::Deny { retry_after };
        }
        RateDecision::Allow {
            remaining: ((self.tolerance - ahead) / self.emission) as u32,
            reset: Duration::from_nanos(ahead),
        }
    }

    /// Time between requests at the sustained rate.
    pub fn emission(&self) -> Duration {
        Duration::from_nanos(self.emission)
    }
}

const SHARDS: usize = 64;

/// A GCRA policy applied per key.
#[derive(Debug)]
pub struct RateLimiter {
    gcra: Gcra,
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
}

impl RateLimiter {
    /// A limiter enforcing `gcra` for every key.
    pub fn new(gcra: Gcra) -> RateLimiter {
        RateLimiter {
            gcra,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The policy.
    pub fn gcra(&self) -> &Gcra {
        &self.gcra
    }

    /// Checks (and, when allowed, counts) one request for `key` at `now`.
    pub fn check(&self, key: u64, now: Tick) -> RateDecision {
        let mut shard = match self.shards[(key % SHARDS as u64) as usize].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let tat = shard.get(&key).copied().unwrap_or(0);
        let (decision, store) = self.gcra.decide(tat, now);
        if let Some(t) = store {
            shard.insert(key, t);
        }
        decision
    }

    /// Forgets keys whose TAT has passed (they behave exactly like new keys). Returns how many
    /// keys remain.
    pub fn sweep(&self, now: Tick) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut m = match s.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                m.retain(|_, tat| *tat > now.0);
                m.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Tick {
        Tick(n * 1_000_000)
    }

    #[test]
    fn a_burst_is_allowed_then_the_sustained_rate() {
        // 10 per second, bursts of 5.
        let l = RateLimiter::new(Gcra::new(10, Duration::from_secs(1), 5).expect("valid"));
        let now = ms(1000);
        let allowed = (0..8)
            .filter(|_| matches!(l.check(1, now), RateDecision::Allow { .. }))
            .count();
        assert_eq!(allowed, 5);
        match l.check(1, now) {
            RateDecision::Deny { retry_after } => {
                assert_eq!(retry_after, Duration::from_millis(100))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            l.check(1, ms(1100)),
            RateDecision::Allow { remaining: 0, .. }
        ));
        assert!(
            matches!(l.check(2, now), RateDecision::Allow { remaining: 4, .. }),
            "keys are independent"
        );
    }

    #[test]
    fn idle_keys_are_swept() {
        let l = RateLimiter::new(Gcra::new(10, Duration::from_secs(1), 5).expect("valid"));
        for k in 0..1000 {
            l.check(k, ms(1000));
        }
        assert_eq!(l.sweep(ms(1050)), 1000);
        assert_eq!(
            l.sweep(ms(1200)),
            0,
            "all recovered after one emission interval"
        );
    }

    proptest! {
        /// Over any span, allowed requests never exceed burst + span × rate.
        #[test]
        fn never_allows_more_than_burst_plus_rate(gaps in proptest::collection::vec(0u64..50, 1..500)) {
            let g = Gcra::new(20, Duration::from_secs(1), 4).expect("valid");
            let l = RateLimiter::new(g);
            let mut now = ms(1);
            let start = now;
            let mut allowed = 0u64;
            for gap in gaps {
                now = Tick(now.0 + gap * 1_000_000);
                if matches!(l.check(7, now), RateDecision::Allow { .. }) {
                    allowed += 1;
                }
            }
            let span = now.since(start).as_secs_f64();
            prop_assert!(allowed as f64 <= 4.0 + span * 20.0 + 1e-9, "{allowed} allowed over {span}s");
        }
    }
}
