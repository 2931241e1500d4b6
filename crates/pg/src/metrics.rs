//! The pooler's Prometheus metrics, read from its live state at each scrape (a collector, so
//! the data path keeps only its own counters): clients and waiting clients, server connections
//! by state, transactions, queries, wait timeouts and a wait-time histogram per pool; role,
//! replica lag and transactions per host (per shard for sharded databases).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::pooler::Pooler;
use crate::topology::Role;

/// Registers with `registry.register_collector(Box::new(PoolerMetrics(pooler)))`.
#[derive(Debug)]
pub struct PoolerMetrics(pub Arc<Pooler>);

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

fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for PoolerMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let pools = self.0.pools();
        let pool_labels = |p: &crate::pool::Pool| -> Labels {
            vec![("database", p.db.name.clone()), ("user", p.user.clone())]
        };
        let gauge_rows = |f: &dyn Fn(&crate::pool::Pool) -> i64| -> Vec<(Labels, i64)> {
            pools.iter().map(|p| (pool_labels(p), f(p))).collect()
        };
        let counter_rows = |f: &dyn Fn(&crate::pool::Pool) -> u64| -> Vec<(Labels, u64)> {
            pools.iter().map(|p| (pool_labels(p), f(p))).collect()
        };
        gauges(
            &mut e,
            "scalegate_pg_clients",
            "Client connections per pool",
            &gauge_rows(&|p| p.stats.clients.load(Relaxed) as i64),
        )?;
        gauges(
            &mut e,
            "scalegate_pg_clients_waiting",
            "Clients waiting for a server connection",
            &gauge_rows(&|p| p.stats.waiting.load(Relaxed) as i64),
        )?;
        let mut servers = Vec::new();
        for p in &pools {
            let mut active = pool_labels(p);
            active.push(("state", "active".into()));
            servers.push((active, p.stats.active.load(Relaxed) as i64));
            let mut idle = pool_labels(p);
            idle.push(("state", "idle".into()));
            servers.push((idle, p.idle_count() as i64));
        }
        gauges(
            &mut e,
            "scalegate_pg_server_connections",
            "Server connections by state",
            &servers,
        )?;
        counters(
            &mut e,
            "scalegate_pg_transactions",
            "Server hand-outs completed (transactions in transaction mode)",
            &counter_rows(&|p| p.stats.xacts.load(Relaxed)),
        )?;
        counters(
            &mut e,
            "scalegate_pg_queries",
            "Queries completed (ReadyForQuery)",
            &counter_rows(&|p| p.stats.queries.load(Relaxed)),
        )?;
        gauges(
            &mut e,
            "scalegate_pg_pinned_clients",
            "Clients holding a server connection because of session state (on_session_state = pin)",
            &gauge_rows(&|p| p.stats.pinned.load(Relaxed) as i64),
        )?;
        counters(
            &mut e,
            "scalegate_pg_pins",
            "Times a client was pinned to its server connection by session state",
            &counter_rows(&|p| p.stats.pins.load(Relaxed)),
        )?;
        counters(
            &mut e,
            "scalegate_pg_session_state_refusals",
            "Statements refused with 0A000 because they create session state (on_session_state = refuse)",
            &counter_rows(&|p| p.stats.refusals.load(Relaxed)),
        )?;
        counters(
            &mut e,
            "scalegate_pg_wait_timeouts",
            "Clients turned away after wait_timeout",
            &counter_rows(&|p| p.stats.wait_timeouts.load(Relaxed)),
        )?;
        {
            let mut m = e.encode_descriptor(
                "scalegate_pg_wait_seconds",
                "Time clients waited for a server connection",
                None,
                MetricType::Histogram,
            )?;
            for p in &pools {
                let labels = pool_labels(p);
                p.stats.wait.encode(m.encode_family(&labels)?)?;
            }
        }
        let mut roles = Vec::new();
        let mut lag_bytes = Vec::new();
        let mut lag_seconds = Vec::new();
        let mut host_xacts = Vec::new();
        for d in self.0.databases() {
            let Some(t) = self.0.topology(&d.name) else {
                continue;
            };
            for (i, h) in t.hosts.iter().enumerate() {
                let mut base: Labels = vec![
                    ("database", d.name.clone()),
                    ("host", format!("{}:{}", h.spec.host, h.spec.port)),
                ];
                // Two shards may live on one server (databases of their own): one series each.
                if t.sharded {
                    base.push(("shard", i.to_string()));
                }
                let mut role = base.clone();
                role.push(("role", h.role().name().into()));
                roles.push((role, 1));
                if h.role() == Role::Replica {
                    lag_bytes.push((base.clone(), h.lag_bytes.load(Relaxed) as i64));
                    lag_seconds.push((base.clone(), (h.lag_ms.load(Relaxed) / 1000) as i64));
                }
                host_xacts.push((base, h.xacts.load(Relaxed)));
            }
        }
        gauges(
            &mut e,
            "scalegate_pg_host_role",
            "Role of each host as last seen (1)",
            &roles,
        )?;
        gauges(
            &mut e,
            "scalegate_pg_replica_lag_bytes",
            "WAL bytes a replica has not replayed",
            &lag_bytes,
        )?;
        gauges(
            &mut e,
            "scalegate_pg_replica_lag_seconds",
            "Seconds a replica is behind its last replayed commit while WAL waits",
            &lag_seconds,
        )?;
        counters(
            &mut e,
            "scalegate_pg_host_transactions",
            "Transactions per host (per shard when sharded: hot shards show here)",
            &host_xacts,
        )?;
        Ok(())
    }
}
