//! Gauges read from live state at each scrape: what requests hold right now (the global
//! in-flight slots, each endpoint's in-flight count and half-open probe slots, bulkhead slots
//! and waiters). Every one of them returns to zero when no request is in flight, which is what
//! a test (or an operator) checks to see that nothing leaked.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::gateway::Gateway;

/// Registers with `registry.register_collector(Box::new(LiveMetrics(gateway)))`.
#[derive(Debug)]
pub struct LiveMetrics(pub Arc<Gateway>);

type Labels = Vec<(&'static str, String)>;

fn gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for LiveMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let snap = self.0.snapshot();
        let none: Labels = Vec::new();
        gauges(
            &mut e,
            "scalegate_gateway_in_flight",
            "Requests holding a slot under admission.max_in_flight",
            &[(none, self.0.in_flight() as i64)],
        )?;
        let (mut loads, mut probes) = (Vec::new(), Vec::new());
        let (mut bh_in_flight, mut bh_waiting) = (Vec::new(), Vec::new());
        for u in &snap.upstreams {
            for ep in &u.endpoints {
                let l: Labels = vec![
                    ("upstream", u.spec.name.clone()),
                    ("endpoint", ep.addr.clone()),
                ];
                loads.push((l.clone(), i64::from(ep.state.in_flight())));
                probes.push((l, i64::from(ep.state.probes_in_flight())));
            }
            if let Some(b) = &u.bulkhead {
                let (in_flight, _, waiting) = b.snapshot();
                let l: Labels = vec![("upstream", u.spec.name.clone())];
                bh_in_flight.push((l.clone(), in_flight as i64));
                bh_waiting.push((l, waiting as i64));
            }
        }
        for r in snap.routes.iter() {
            if let Some(b) = &r.bulkhead {
                let (in_flight, _, waiting) = b.snapshot();
                let l: Labels = vec![("route", r.spec.name.clone())];
                bh_in_flight.push((l.clone(), in_flight as i64));
                bh_waiting.push((l, waiting as i64));
            }
        }
        gauges(
            &mut e,
            "scalegate_upstream_endpoint_in_flight",
            "Requests in flight to each endpoint (what least_conn and p2c read)",
            &loads,
        )?;
        gauges(
            &mut e,
            "scalegate_upstream_endpoint_probes",
            "Half-open breaker probe slots taken on each endpoint",
            &probes,
        )?;
        gauges(
            &mut e,
            "scalegate_bulkhead_in_flight",
            "Requests holding a bulkhead slot (per upstream, or per route)",
            &bh_in_flight,
        )?;
        gauges(
            &mut e,
            "scalegate_bulkhead_waiting",
            "Requests waiting in a bulkhead's queue",
            &bh_waiting,
        )?;
        Ok(())
    }
}
