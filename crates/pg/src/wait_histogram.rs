//! The histogram of how long clients waited for a server connection, one per pool, recorded
//! without a lock: every transaction records its wait (none, when a connection was free), and a
//! general-purpose histogram takes a lock per record.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::{MetricEncoder, NoLabelSet};

/// Upper bounds of the buckets in microseconds: 100 µs × 4ⁱ (100 µs to 26 s); one more bucket
/// holds the rest.
const BOUNDS_US: [u64; 10] = {
    let mut b = [100u64; 10];
    let mut i = 1;
    while i < b.len() {
        b[i] = b[i - 1] * 4;
        i += 1;
    }
    b
};

/// Wait times by bucket, and their sum.
#[derive(Debug, Default)]
pub struct WaitHistogram {
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl WaitHistogram {
    /// Records a transaction that found a connection free.
    pub fn record_none(&self) {
        self.counts[0].fetch_add(1, Relaxed);
    }

    /// Records a wait of `waited`.
    pub fn record(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BOUNDS_US.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Writes the histogram as Prometheus' `_sum`, `_count` and `_bucket` series (seconds).
    pub fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.counts)
            .map(|(bound, n)| (bound, n.load(Relaxed)))
            .collect();
        // The count is the buckets' total, so the two always agree.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    struct One(WaitHistogram);

    impl std::fmt::Debug for One {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("One")
        }
    }

    impl prometheus_client::encoding::EncodeMetric for One {
        fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
            self.0.encode(encoder)
        }
        fn metric_type(&self) -> prometheus_client::metrics::MetricType {
            prometheus_client::metrics::MetricType::Histogram
        }
    }

    #[test]
    fn waits_land_in_their_buckets_and_add_up() {
        let h = WaitHistogram::default();
        h.record_none();
        h.record(Duration::from_micros(100));
        h.record(Duration::from_micros(101));
        h.record(Duration::from_secs(60));
        let mut registry = Registry::default();
        registry.register("wait_seconds", "waits", One(h));
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        for line in [
            "wait_seconds_count 4",
            "wait_seconds_bucket{le=\"0.0001\"} 2",
            "wait_seconds_bucket{le=\"0.0004\"} 3",
            "wait_seconds_bucket{le=\"26.2144\"} 3",
            "wait_seconds_bucket{le=\"+Inf\"} 4",
            "wait_seconds_sum 60.000201",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
