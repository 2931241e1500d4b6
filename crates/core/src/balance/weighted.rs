//! Smooth weighted round robin (as in nginx): each pick adds every candidate's weight to its
//! running score, takes the highest, and subtracts the total from it. Spreads a 5:1:1 split as
//! a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.

use std::sync::Mutex;

use super::Candidates;

#[derive(Debug)]
pub(super) struct SmoothState {
    current: Mutex<Vec<f64>>,
}

impl SmoothState {
    pub(super) fn new(n: usize) -> Self {
        SmoothState {
            current: Mutex::new(vec![0.0; n]),
        }
    }

    pub(super) fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        let mut current = match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for i in 0..c.len().min(current.len()) {
            if !c.ok(i) {
                continue;
            }
            let w = c.effective_weight(i);
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{counts, set_weighted};
    use super::super::{Balance, PickRequest};

    #[test]
    fn weights_split_traffic_proportionally() {
        let s = set_weighted(&[5, 1, 1], Balance::Weighted);
        assert_eq!(counts(&s, 700, PickRequest::default()), [500, 100, 100]);
    }

    #[test]
    fn sequence_is_smooth() {
        let s = set_weighted(&[5, 1, 1], Balance::Weighted);
        let mut rng = rand::rng();
        let seq: Vec<usize> = (0..7)
            .map(|_| {
                s.pick(&PickRequest::default(), crate::Tick(1), &mut rng)
                    .map_or(9, |p| p.index)
            })
            .collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }
}
