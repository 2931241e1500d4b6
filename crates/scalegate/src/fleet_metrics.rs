//! Metrics of the parts that span instances — shared rate limits' Redis, WebSocket fan-out and
//! queued routes — read from
//! their live state at each scrape (a collector): what only grows is a counter, what goes up
//! and down is a gauge, one name per thing counted.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use scalegate_http::Gateway;

/// Registers with `registry.register_collector(Box::new(FleetMetrics(gw)))`.
#[derive(Debug)]
pub struct FleetMetrics(pub Arc<Gateway>);

type Labels = Vec<(&'static str, String)>;

/// One metric family: its name (without `_total`), help, type and rows.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    rows: Vec<(Labels, u64)>,
}

impl Family {
    fn gauge(name: &'static str, help: &'static str, rows: Vec<(Labels, u64)>) -> Family {
        Family {
            name,
            help,
            counter: false,
            rows,
        }
    }

    fn counter(name: &'static str, help: &'static str, rows: Vec<(Labels, u64)>) -> Family {
        Family {
            name,
            help,
            counter: true,
            rows,
        }
    }

    fn encode(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let kind = if self.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut m = e.encode_descriptor(self.name, self.help, None, kind)?;
        let value = |m: MetricEncoder, v: u64| {
            if self.counter {
                ConstCounter::new(v).encode(m)
            } else {
                ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(m)
            }
        };
        if let [(labels, v)] = self.rows.as_slice()
            && labels.is_empty()
        {
            // One unlabelled sample: `name 1`, not `name{} 1`.
            return value(m, *v);
        }
        for (labels, v) in &self.rows {
            value(m.encode_family(labels)?, *v)?;
        }
        Ok(())
    }
}

impl Collector for FleetMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let families = shared_limits(&self.0)
            .into_iter()
            .chain(fanout(&self.0))
            .chain(queues(&self.0));
        for f in families {
            f.encode(&mut e)?;
        }
        Ok(())
    }
}

fn shared_limits(gw: &Gateway) -> Vec<Family> {
    let Some(shared) = scalegate_features::shared_limits(&gw.snapshot()) else {
        return Vec::new();
    };
    let link = shared.link();
    let one = |v: u64| vec![(Labels::new(), v)];
    vec![
        Family::gauge(
            "scalegate_rate_limit_redis_up",
            "1 while the last call to the shared rate limits' Redis succeeded",
            one(u64::from(link.up.load(Relaxed))),
        ),
        Family::counter(
            "scalegate_rate_limit_redis_errors",
            "Failed or timed-out calls to the shared rate limits' Redis",
            one(link.errors.load(Relaxed)),
        ),
        Family::counter(
            "scalegate_rate_limit_fallbacks",
            "Requests to shared rate limits judged by this instance's memory limiter while Redis was away",
            one(shared.fallbacks.load(Relaxed)),
        ),
    ]
}

fn fanout(gw: &Gateway) -> Vec<Family> {
    let Some(hub) = scalegate_features::fanout(&gw.snapshot()) else {
        return Vec::new();
    };
    let topics = hub.topics();
    let subscribers: usize = topics.iter().map(|(_, n)| n).sum();
    let c = hub.counters();
    let one = |v: u64| vec![(Labels::new(), v)];
    let mut families = vec![
        Family::gauge(
            "scalegate_fanout_topics",
            "Fan-out topics with subscribers on this instance",
            one(topics.len() as u64),
        ),
        Family::gauge(
            "scalegate_fanout_subscribers",
            "Fan-out subscribers on this instance",
            one(subscribers as u64),
        ),
        Family::counter(
            "scalegate_fanout_published",
            "Messages published through this instance and answered 200",
            one(c.published.load(Relaxed)),
        ),
        Family::counter(
            "scalegate_fanout_publish_refused",
            "Publishes answered 503: the bus refused them or could not assure every instance",
            one(c.refused.load(Relaxed)),
        ),
        Family::counter(
            "scalegate_fanout_delivered",
            "Messages handed to subscribers' queues on this instance (one per subscriber)",
            one(c.delivered.load(Relaxed)),
        ),
        Family::counter(
            "scalegate_fanout_gaps",
            "Times the bus may have lost messages for this instance (connection lost, a skipped sequence number)",
            one(c.gaps.load(Relaxed)),
        ),
        Family::counter(
            "scalegate_fanout_closed",
            "Subscribers closed with 1013, by reason: slow (fell buffer messages behind) or gap (the bus may have lost messages)",
            vec![
                (
                    vec![("reason", "slow".into())],
                    c.dropped_slow.load(Relaxed),
                ),
                (vec![("reason", "gap".into())], c.cut.load(Relaxed)),
            ],
        ),
    ];
    if let Some(bus) = hub.bus_view() {
        families.push(Family::gauge(
            "scalegate_fanout_bus_up",
            "1 while this instance's bus subscription is live",
            one(u64::from(bus.up)),
        ));
        families.push(Family::gauge(
            "scalegate_fanout_bus_members",
            "Instances heard on the bus within the last 3.5 s, this one included",
            one(bus.members as u64),
        ));
    }
    families
}

fn queues(gw: &Gateway) -> Vec<Family> {
    let snap = gw.snapshot();
    let routes = scalegate_features::queues(&snap);
    if routes.is_empty() {
        return Vec::new();
    }
    // One series per name: two queues a route had before two reloads, both still delivering,
    // are both "ROUTE (before reload)" and are summed (found by a regression hunt: duplicate
    // series, which Prometheus rejects).
    let rows = |f: &dyn Fn(&scalegate_features::queue::RouteQueue) -> u64| -> Vec<(Labels, u64)> {
        let mut out: Vec<(Labels, u64)> = Vec::new();
        for (name, q) in &routes {
            match out.iter_mut().find(|(l, _)| l[0].1 == *name) {
                Some((_, v)) => *v += f(q),
                None => out.push((vec![("route", name.clone())], f(q))),
            }
        }
        out
    };
    // A route's counters once, under its own name: a queue a reload replaced counts into them.
    let counts =
        |f: &dyn Fn(&scalegate_features::queue::QueueCounters) -> u64| -> Vec<(Labels, u64)> {
            let mut seen = Vec::new();
            routes
                .iter()
                .filter(|(_, q)| crate::admin_queue::first_of(&mut seen, &q.counters))
                .map(|(name, q)| (vec![("route", name.clone())], f(&q.counters)))
                .collect()
        };
    vec![
        Family::counter(
            "scalegate_queue_jobs_accepted",
            "Jobs accepted (answered 202) by this instance",
            counts(&|c| c.queued.load(Relaxed)),
        ),
        Family::counter(
            "scalegate_queue_jobs_delivered",
            "Jobs the upstream took (any answer but 5xx, 408, 429), once per job",
            counts(&|c| c.delivered.load(Relaxed)),
        ),
        Family::counter(
            "scalegate_queue_delivery_failures",
            "Deliveries that failed and will be tried again",
            counts(&|c| c.retried.load(Relaxed)),
        ),
        Family::counter(
            "scalegate_queue_jobs_dead",
            "Jobs given up (kept as dead letters) by this instance",
            counts(&|c| c.dead.load(Relaxed)),
        ),
        Family::gauge(
            "scalegate_queue_depth",
            "Jobs waiting in this instance's memory (0 for the JetStream store)",
            rows(&|q| q.depth().unwrap_or(0) as u64),
        ),
        Family::gauge(
            "scalegate_queue_in_hand",
            "Jobs this instance is delivering or holding now",
            rows(&|q| q.in_hand()),
        ),
        Family::gauge(
            "scalegate_queue_paused",
            "Jobs waiting, without spending attempts, for an upstream that cannot be reached now",
            rows(&|q| q.paused()),
        ),
    ]
}
