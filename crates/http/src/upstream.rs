//! An upstream at runtime: its endpoint set (core's balancer) beside the HTTP side of each
//! endpoint (address, per-worker pools, metric handles), in the same order.

use std::net::SocketAddr;
use std::sync::Arc;

use scalegate_core::balance::{EndpointSet, Member, SetPolicy};
use scalegate_core::hash::stable_hash;
use scalegate_core::{EndpointState, Tick};

use crate::dial::{Dial, EndpointTls, UpstreamTls};
use crate::metrics::EndpointMetrics;
use crate::pool::{EndpointPool, Target};
use crate::spec::{PoolSpec, UpstreamProtocol, UpstreamSpec};

/// The worker index of the gateway's own background work (queued routes' deliveries on the
/// control thread): it has a pool of its own on every endpoint.
pub const BACKGROUND: usize = usize::MAX;

/// One endpoint's HTTP side. Survives reloads (matched by upstream name and address) as long as
/// its pool settings do not change; its [`EndpointState`] survives even then.
#[derive(Debug)]
pub struct HttpEndpoint {
    /// `host:port` as configured.
    pub addr: String,
    /// The address, when `addr` is an IP literal.
    pub socket: Option<SocketAddr>,
    /// Health, ejection, drain, load.
    pub state: Arc<EndpointState>,
    /// One pool per worker.
    pools: Box<[Arc<EndpointPool>]>,
    /// Pool settings the pools were built with.
    pub pool_spec: PoolSpec,
    /// Protocol the pools speak.
    pub protocol: UpstreamProtocol,
    /// TLS settings the endpoint was built with.
    pub tls: Option<UpstreamTls>,
    endpoint_tls: Option<EndpointTls>,
    /// Metric handles.
    pub metrics: EndpointMetrics,
}

impl HttpEndpoint {
    /// Builds an endpoint with `workers` pools sharing `max_per_endpoint` between them, plus one
    /// of the same size for the gateway's own background work on the control thread (queued
    /// routes' deliveries), so no connection is used by a thread other than its pool's.
    pub fn new(
        addr: &str,
        state: Arc<EndpointState>,
        pool_spec: &PoolSpec,
        protocol: UpstreamProtocol,
        tls: Option<&UpstreamTls>,
        workers: usize,
        metrics: EndpointMetrics,
    ) -> Self {
        let per_worker = pool_spec.max_per_endpoint.div_ceil(workers.max(1));
        let idle_per_worker = pool_spec.max_idle_per_endpoint.div_ceil(workers.max(1));
        let pools = (0..=workers.max(1))
            .map(|_| {
                Arc::new(EndpointPool::new(
                    pool_spec,
                    per_worker,
                    idle_per_worker,
                    protocol,
                    metrics.pool.clone(),
                ))
            })
            .collect();
        HttpEndpoint {
            addr: addr.to_string(),
            socket: addr.parse().ok(),
            state,
            pools,
            pool_spec: pool_spec.clone(),
            protocol,
            tls: tls.cloned(),
            endpoint_tls: tls.map(|t| t.for_endpoint(addr)),
            metrics,
        }
    }

    /// The pool of worker `worker`.
    pub fn pool(&self, worker: usize) -> &Arc<EndpointPool> {
        let workers = self.pools.len() - 1;
        match worker {
            BACKGROUND => &self.pools[workers],
            w => &self.pools[w % workers.max(1)],
        }
    }

    /// Where to connect.
    pub fn target(&self) -> Target<'_> {
        match self.socket {
            Some(a) => Target::Addr(a),
            None => Target::Name(&self.addr),
        }
    }

    /// How to connect: the address, and TLS when the upstream is marked so.
    pub fn dial(&self) -> Dial<'_> {
        Dial {
            target: self.target(),
            tls: self.endpoint_tls.as_ref(),
        }
    }

    /// Closes idle connections past their timeout, on every worker's pool.
    pub fn sweep(&self, now: Tick) {
        for p in self.pools.iter() {
            p.sweep(now);
        }
    }

    /// Closes all idle connections (the endpoint left the config).
    pub fn close_idle(&self) {
        for p in self.pools.iter() {
            p.close_idle();
        }
    }
}

/// An upstream ready to serve.
#[derive(Debug)]
pub struct Upstream {
    /// The validated spec.
    pub spec: UpstreamSpec,
    /// Balancer over the endpoints.
    pub set: EndpointSet,
    /// HTTP side of each endpoint, same order as `set.members()`.
    pub endpoints: Vec<Arc<HttpEndpoint>>,
    /// Concurrency cap, when configured (carried over reloads while its settings stay).
    pub bulkhead: Option<Arc<crate::bulkhead::Bulkhead>>,
}

impl Upstream {
    /// Pairs endpoints with a balancer built for them.
    pub fn new(
        spec: UpstreamSpec,
        endpoints: Vec<Arc<HttpEndpoint>>,
        bulkhead: Option<Arc<crate::bulkhead::Bulkhead>>,
    ) -> Self {
        let local_zone = spec.zone_affinity.as_ref().map(|z| z.zone.as_str());
        let members = spec
            .endpoints
            .iter()
            .zip(&endpoints)
            .map(|(e, h)| Member {
                weight: e.weight.max(1),
                id_hash: stable_hash(e.addr.as_bytes()),
                state: h.state.clone(),
                local: local_zone.is_some() && e.zone.as_deref() == local_zone,
            })
            .collect();
        let set = EndpointSet::new(
            members,
            SetPolicy {
                balance: spec.balance,
                slow_start: spec.slow_start,
                panic_threshold_percent: spec.panic_threshold_percent,
                zone_min_available_percent: spec
                    .zone_affinity
                    .as_ref()
                    .map(|z| z.min_available_percent),
            },
        );
        Upstream {
            spec,
            set,
            endpoints,
            bulkhead,
        }
    }
}
