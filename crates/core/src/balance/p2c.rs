//! Power of two choices over peak-EWMA cost: draw two distinct candidates at random and take the
//! cheaper, where cost = latency estimate × (in-flight + 1) ÷ effective weight. The estimate of
//! an endpoint nobody picks drifts toward the fleet's typical latency (the lower median of the
//! members' estimates, refreshed at most every [`TYPICAL_EVERY`]), so a recovered endpoint is
//! tried again and wins its share back.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rand::{Rng, RngExt};

use super::{Candidates, Member};
use crate::Tick;

/// How often the fleet's typical latency is recomputed.
pub(super) const TYPICAL_EVERY: Duration = Duration::from_millis(100);

/// The fleet's typical latency, cached.
#[derive(Debug, Default)]
pub(super) struct Typical {
    ns: AtomicU64,
    at: AtomicU64,
}

impl Typical {
    /// The lower median of the members' latency estimates (as last refreshed).
    pub(super) fn get(&self, members: &[Member], now: Tick) -> f64 {
        let at = self.at.load(Relaxed);
        if at != 0 && now.0.saturating_sub(at) < TYPICAL_EVERY.as_nanos() as u64 {
            return f64::from_bits(self.ns.load(Relaxed));
        }
        let mut all: Vec<f64> = members
            .iter()
            .map(|m| m.state.latency_estimate_ns())
            .collect();
        all.sort_by(f64::total_cmp);
        let typical = all
            .get(all.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0.0);
        self.ns.store(typical.to_bits(), Relaxed);
        self.at.store(now.0.max(1), Relaxed);
        typical
    }
}

pub(super) fn pick<R: Rng + ?Sized>(c: &Candidates<'_>, rng: &mut R) -> Option<usize> {
    let n = c.len();
    let count = (0..n).filter(|&i| c.ok(i)).count();
    let nth = |k: usize| (0..n).filter(|&i| c.ok(i)).nth(k);
    match count {
        0 => None,
        1 => nth(0),
        _ => {
            let a = rng.random_range(0..count);
            let mut b = rng.random_range(0..count - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if cost(c, a) <= cost(c, b) { a } else { b })
        }
    }
}

fn cost(c: &Candidates<'_>, i: usize) -> f64 {
    let s = c.state(i);
    s.latency_estimate_at(c.now, c.typical) * f64::from(s.in_flight() + 1) / c.effective_weight(i)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{counts, set};
    use super::super::{Balance, PickRequest};
    use crate::Tick;

    #[test]
    fn slow_endpoint_gets_less_traffic() {
        let s = set(3, Balance::P2cEwma);
        let decay = Duration::from_secs(10);
        s.members()[0]
            .state
            .observe_latency(Duration::from_millis(50), Tick(1), decay);
        s.members()[1]
            .state
            .observe_latency(Duration::from_millis(1), Tick(1), decay);
        s.members()[2]
            .state
            .observe_latency(Duration::from_millis(1), Tick(1), decay);
        let c = counts(&s, 3000, PickRequest::default());
        assert_eq!(c[0], 0, "the slowest never wins a pair: {c:?}");
        assert!(c[1] > 1000 && c[2] > 1000, "{c:?}");
    }

    /// Picks `n` times at `now`, each pick answered at once with `latency(index)`.
    fn run(
        s: &crate::EndpointSet,
        now: Tick,
        n: usize,
        rng: &mut rand::rngs::StdRng,
        latency: impl Fn(usize) -> Duration,
    ) -> Vec<usize> {
        let mut c = vec![0; s.members().len()];
        for _ in 0..n {
            let p = s.pick(&PickRequest::default(), now, rng).expect("pick");
            c[p.index] += 1;
            s.members()[p.index]
                .state
                .observe_latency(latency(p.index), now, crate::ewma::DECAY);
        }
        c
    }

    #[test]
    fn a_recovered_endpoint_wins_its_share_back() {
        use rand::SeedableRng;
        let s = set(3, Balance::P2cEwma);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let ms = Duration::from_millis;
        let at = |secs_x10: u64| Tick(1).after(ms(100 * secs_x10));
        // Endpoint 0 answers in 50 ms, the others in 1 ms: 100 requests every 100 ms for 10 s.
        let mut slow = 0;
        for t in 1..=100 {
            let slowed = |i: usize| if i == 0 { ms(51) } else { ms(1) };
            slow += run(&s, at(t), 100, &mut rng, slowed)[0];
        }
        assert!(
            slow > 0 && slow < 100,
            "re-tried now and then, not fed: {slow} of 10000"
        );
        // It recovers: within 15 s it takes a fair share again.
        let mut late = vec![0; 3];
        for t in 101..=250 {
            let c = run(&s, at(t), 100, &mut rng, |_| ms(1));
            if t > 200 {
                for (l, n) in late.iter_mut().zip(c) {
                    *l += n;
                }
            }
        }
        let total: usize = late.iter().sum();
        assert!(late[0] * 5 >= total, "{late:?}");
    }
}
