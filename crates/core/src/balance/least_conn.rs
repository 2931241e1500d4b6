//! Least connections: the candidate with the fewest in-flight requests per unit of (slow-start
//! adjusted) weight. Ties go to the next in turn, so an idle upstream is still spread evenly.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::Candidates;

pub(super) fn pick(c: &Candidates<'_>, cursor: &AtomicUsize) -> Option<usize> {
    let n = c.len();
    if n == 0 {
        return None;
    }
    let start = cursor.fetch_add(1, Relaxed);
    let mut best: Option<(usize, f64)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if !c.ok(i) {
            continue;
        }
        let load = f64::from(c.state(i).in_flight() + 1) / c.effective_weight(i);
        if best.is_none_or(|(_, b)| load < b) {
            best = Some((i, load));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{counts, set};
    use super::super::{Balance, PickRequest};

    #[test]
    fn busy_endpoint_is_avoided() {
        let s = set(3, Balance::LeastConn);
        let _loads: Vec<_> = (0..5)
            .map(|_| s.members()[0].state.start_request())
            .collect();
        let c = counts(&s, 100, PickRequest::default());
        assert_eq!(c[0], 0);
        assert_eq!(c[1] + c[2], 100);
    }

    #[test]
    fn idle_upstream_is_spread_evenly() {
        assert_eq!(
            counts(&set(4, Balance::LeastConn), 400, PickRequest::default()),
            [100; 4]
        );
    }
}
