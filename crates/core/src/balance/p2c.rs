//! Power of two choices over peak-EWMA cost: draw two distinct candidates at random and take the
//! cheaper, where cost = latency estimate × (in-flight + 1) ÷ effective weight.

use rand::{Rng, RngExt};

use super::Candidates;

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
    s.latency_estimate_ns() * f64::from(s.in_flight() + 1) / c.effective_weight(i)
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
}
