//! The gateway's shared state: the current [`Snapshot`] (swapped atomically on reload) and what
//! must outlive snapshots: endpoint state and pools, bound sockets, metrics, the drain flag.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use scalegate_core::EndpointState;
use tokio::sync::watch;

use crate::clock;
use crate::listener::{BoundSockets, Listener};
use crate::metrics::Metrics;
use crate::router::{Route, RouteTable};
use crate::spec::GatewaySpec;
use crate::upstream::{HttpEndpoint, Upstream};

/// An immutable view of the config in force. Requests load it once and use it to the end.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every applied config.
    pub version: u64,
    /// Listeners with their sockets.
    pub listeners: Vec<Listener>,
    /// Routes, most specific first.
    pub routes: RouteTable,
    /// Upstreams, in config order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Write JSON access log lines.
    pub access_log: bool,
    /// Global in-flight cap.
    pub max_in_flight: Option<usize>,
    /// What answers some requests before routing (a feature: fan-out), if anything does.
    pub before_routing: Option<Arc<dyn crate::plug::BeforeRouting>>,
    /// The features' own state for this config (see `plug::Built::state`).
    pub features: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Snapshot {
    /// The upstream with this name.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.spec.name == name)
    }
}

/// Why a config could not be applied; the old one stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A listener could not bind.
    #[error("listener {name:?}: cannot bind {addr}: {source}{held}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
        /// What to do when a listener of the running config holds the port at another address
        /// (empty otherwise).
        held: &'static str,
    },
    /// A route names an upstream that does not exist (validation should have caught it).
    #[error("route {route:?}: unknown upstream {upstream:?}")]
    UnknownUpstream {
        /// Route name.
        route: String,
        /// Upstream name.
        upstream: String,
    },
}

type EndpointKey = (String, String);

/// Shared state of a running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Itself, for tasks started while applying a config (queue workers).
    me: std::sync::Weak<Gateway>,
    current: ArcSwap<Snapshot>,
    endpoints: Mutex<HashMap<EndpointKey, Arc<HttpEndpoint>>>,
    apply_lock: Mutex<()>,
    version_tx: watch::Sender<u64>,
    draining: AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
    workers: usize,
    /// Data-path metrics.
    pub metrics: Metrics,
    /// The metrics of requests answered before a route was found (400, 404, 431, fan-out
    /// handshakes), under `route="-"`.
    pub unrouted: crate::metrics::RouteMetrics,
    /// Runtime switches from the admin API.
    pub switches: crate::switches::Switches,
    /// Every HTTP/2 connection's watched streams, for a full pool to reclaim stalled ones.
    pub h2_streams: crate::h2_stall::Registry,
}

impl Gateway {
    /// Builds the gateway from its first config, binding every listener; `plugins` makes the
    /// config's features.
    pub fn new(
        spec: &GatewaySpec,
        workers: usize,
        plugins: &dyn crate::plug::Plugins,
    ) -> Result<Arc<Self>, ApplyError> {
        let empty = Snapshot {
            version: 0,
            listeners: Vec::new(),
            routes: RouteTable::default(),
            upstreams: Vec::new(),
            access_log: false,
            max_in_flight: None,
            before_routing: None,
            features: None,
        };
        let (version_tx, _) = watch::channel(0);
        let metrics = Metrics::default();
        let unrouted = metrics.route("-", "-");
        let gw = Arc::new_cyclic(|me| Gateway {
            me: me.clone(),
            current: ArcSwap::from_pointee(empty),
            endpoints: Mutex::new(HashMap::new()),
            apply_lock: Mutex::new(()),
            version_tx,
            draining: AtomicBool::new(false),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            workers: workers.max(1),
            metrics,
            unrouted,
            switches: crate::switches::Switches::default(),
            h2_streams: crate::h2_stall::Registry::default(),
        });
        gw.apply(spec, plugins)?;
        Ok(gw)
    }

    /// Number of data-path workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Notifies on every applied config (the value is the snapshot version).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    /// Applies a new config: binds new listeners, carries endpoint state over by identity,
    /// publishes the new snapshot with one swap. On error nothing changes.
    pub fn apply(
        &self,
        spec: &GatewaySpec,
        plugins: &dyn crate::plug::Plugins,
    ) -> Result<Arc<Snapshot>, ApplyError> {
        let _serial = lock(&self.apply_lock);
        let old = self.snapshot();
        // Bulkheads kept with new settings, changed once nothing can refuse the config.
        let mut resized = Vec::new();

        let mut listeners = Vec::with_capacity(spec.listeners.len());
        for l in &spec.listeners {
            let reused = old
                .listeners
                .iter()
                .find(|o| crate::worker::same_socket(&o.spec, l));
            let sockets = match reused {
                Some(o) => o.sockets.clone(),
                None => BoundSockets::bind(l.bind, self.workers).map_err(|source| {
                    let port = l.bind.port();
                    let held = old.listeners.iter().any(|o| o.spec.bind.port() == port);
                    ApplyError::Bind {
                        name: l.name.clone(),
                        addr: l.bind,
                        source,
                        held: if held && port != 0 {
                            " (the running config listens on this port at another address: \
                                 move it in two reloads through another port, or restart)"
                        } else {
                            ""
                        },
                    }
                })?,
            };
            listeners.push(Listener {
                spec: l.clone(),
                sockets,
            });
        }

        let mut registry = lock(&self.endpoints);
        let mut next: HashMap<EndpointKey, Arc<HttpEndpoint>> = HashMap::new();
        let mut upstreams = Vec::with_capacity(spec.upstreams.len());
        for u in &spec.upstreams {
            let mut eps = Vec::with_capacity(u.endpoints.len());
            for e in &u.endpoints {
                let key = (u.name.clone(), e.addr.clone());
                let ep = match registry.get(&key) {
                    Some(prev)
                        if prev.pool_spec == u.pool
                            && prev.protocol == u.protocol
                            && prev.tls == u.tls =>
                    {
                        prev.clone()
                    }
                    prev => {
                        let state = prev.map_or_else(
                            || Arc::new(EndpointState::default()),
                            |p| p.state.clone(),
                        );
                        let metrics = self.metrics.endpoint(&u.name, &e.addr);
                        Arc::new(HttpEndpoint::new(
                            &e.addr,
                            state,
                            &u.pool,
                            u.protocol,
                            u.tls.as_ref(),
                            self.workers,
                            metrics,
                        ))
                    }
                };
                next.insert(key, ep.clone());
                eps.push(ep);
            }
            let states: Vec<&EndpointState> = eps.iter().map(|e| &*e.state).collect();
            let released = u.outlier.release_over_cap(&states, clock::now());
            if released > 0 {
                tracing::info!(
                    upstream = %u.name,
                    released,
                    "reload: endpoints' breakers closed (beyond the ejection cap, or the breaker turned off)"
                );
            }
            let before = old.upstream(&u.name).and_then(|o| o.bulkhead.clone());
            let bulkhead = kept_bulkhead(before, u.bulkhead.as_ref(), &mut resized);
            upstreams.push(Arc::new(Upstream::new(u.clone(), eps, bulkhead)));
        }

        // The features (cache, queues, fan-out, shared rate limits) for this config, built
        // from the old snapshot's so that what must survive a reload does.
        let built = plugins.build(&self.me, spec, &old);
        let mut routes = Vec::with_capacity(spec.routes.len());
        for r in &spec.routes {
            let Some(idx) = upstreams.iter().position(|u| u.spec.name == r.upstream) else {
                return Err(ApplyError::UnknownUpstream {
                    route: r.name.clone(),
                    upstream: r.upstream.clone(),
                });
            };
            routes.push(Arc::new(Route {
                spec: r.clone(),
                upstream: idx,
                metrics: self.metrics.route(&r.name, &r.upstream),
                handler: built.handlers.get(&r.name).cloned(),
                bulkhead: kept_bulkhead(
                    old.routes
                        .iter()
                        .find(|o| o.spec.name == r.name)
                        .and_then(|o| o.bulkhead.clone()),
                    r.bulkhead.as_ref(),
                    &mut resized,
                ),
                limiter: r.rate_limit.as_ref().map(|rl| {
                    old.routes
                        .iter()
                        .find(|o| o.spec.name == r.name && o.spec.rate_limit.as_ref() == Some(rl))
                        .and_then(|o| o.limiter.clone())
                        .unwrap_or_else(|| {
                            Arc::new(scalegate_core::admission::RateLimiter::new(rl.gcra))
                        })
                }),
                shared: built
                    .shared
                    .clone()
                    .filter(|_| r.rate_limit.as_ref().is_some_and(|l| l.shared)),
                budget: r.retry.as_ref().map(|rt| {
                    scalegate_core::retry::RetryBudget::new(
                        rt.budget_percent,
                        rt.min_retries_per_second,
                        std::time::Duration::from_secs(10),
                    )
                }),
            }));
        }

        let gone: Vec<(EndpointKey, Arc<HttpEndpoint>)> = registry
            .iter()
            .filter(|(key, _)| !next.contains_key(*key))
            .map(|(key, ep)| (key.clone(), ep.clone()))
            .collect();
        *registry = next;
        drop(registry);

        let snap = Arc::new(Snapshot {
            version: old.version + 1,
            listeners,
            routes: RouteTable::new(routes),
            upstreams,
            access_log: spec.access_log,
            max_in_flight: spec.max_in_flight,
            before_routing: built.before_routing,
            features: built.state,
        });
        // Only now, with nothing left to refuse the config: the old snapshot's bulkheads stay
        // as they were when a reload fails.
        for (b, spec) in resized {
            b.reconfigure(spec);
        }
        self.current.store(snap.clone());
        // A removed endpoint is not marked draining: a request that loaded the old snapshot
        // an instant before the swap may still pick it (and must not get a 503 for an
        // endpoint that is up). Nothing new reaches it, so closing its idle connections
        // after the swap is all it needs; the rest close when the last old snapshot goes.
        // Its series go too: a gauge frozen at its last value (an `endpoint_available` of 0)
        // would keep an alert firing for an endpoint that no longer exists.
        for ((upstream, addr), ep) in gone {
            ep.close_idle();
            self.metrics.forget_endpoint(&upstream, &addr);
        }
        plugins.applied(&old, &snap);
        self.version_tx.send_replace(snap.version);
        Ok(snap)
    }

    /// The endpoint `addr` of upstream `upstream` in the current snapshot.
    pub fn endpoint(&self, upstream: &str, addr: &str) -> Option<Arc<HttpEndpoint>> {
        self.snapshot()
            .upstream(upstream)?
            .endpoints
            .iter()
            .find(|e| e.addr == addr)
            .cloned()
    }

    /// The bound address of a listener.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.snapshot()
            .listeners
            .iter()
            .find(|l| l.spec.name == name)
            .map(|l| l.sockets.local_addr)
    }

    /// Admits a request under the global cap for its priority; `None` means shed it. The slot
    /// is given back when the returned guard drops; without a cap nothing is counted (no shared
    /// counter touched per request) and the guard holds nothing.
    pub fn admit(
        self: &Arc<Self>,
        cap: Option<usize>,
        prio: scalegate_core::admission::Priority,
    ) -> Option<GlobalSlot> {
        use scalegate_core::admission::Priority;
        let Some(cap) = cap else {
            return Some(GlobalSlot(None));
        };
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let allowed = match prio {
            Priority::Critical => cap,
            Priority::Normal => cap * 9 / 10,
            Priority::Low => cap * 8 / 10,
        };
        let slot = GlobalSlot(Some(self.clone()));
        (n < allowed.max(1)).then_some(slot)
    }

    /// Requests in flight in the whole gateway.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Starts draining: /ready turns false.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the gateway is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Ready: not draining, and every upstream has an available endpoint or is in panic mode.
    /// Returns the names of upstreams that are not ready.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        if self.is_draining() {
            return Err(vec!["draining".to_string()]);
        }
        let now = clock::now();
        let not_ready: Vec<String> = self
            .snapshot()
            .upstreams
            .iter()
            .filter(|u| u.set.pickable_count(now) == 0)
            .map(|u| u.spec.name.clone())
            .collect();
        if not_ready.is_empty() {
            Ok(())
        } else {
            Err(not_ready)
        }
    }

    /// Closes idle upstream connections past their idle timeout and forgets rate-limit keys
    /// that have recovered.
    pub fn sweep_idle(&self) {
        let now = clock::now();
        let snap = self.snapshot();
        for r in snap.routes.iter() {
            if let Some(l) = &r.limiter {
                l.sweep(now);
            }
        }
        for u in &snap.upstreams {
            for e in &u.endpoints {
                e.sweep(now);
            }
        }
    }
}

/// A request's place under the global in-flight cap ([`Gateway::admit`]), given back on drop.
#[derive(Debug, Default)]
pub struct GlobalSlot(Option<Arc<Gateway>>);

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        if let Some(gw) = &self.0 {
            gw.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The bulkhead a reloaded upstream or route keeps: the old one when there is one (its requests
/// in flight and waiting count on), noted in `resized` when its settings change; else a new one.
/// A bulkhead the new config removes is noted to be opened without a cap, so that requests
/// still waiting in it go at once, as new ones do.
fn kept_bulkhead(
    old: Option<Arc<crate::bulkhead::Bulkhead>>,
    spec: Option<&crate::bulkhead::BulkheadSpec>,
    resized: &mut Vec<(
        Arc<crate::bulkhead::Bulkhead>,
        crate::bulkhead::BulkheadSpec,
    )>,
) -> Option<Arc<crate::bulkhead::Bulkhead>> {
    match (old, spec) {
        (Some(b), Some(spec)) => {
            if b.spec() != *spec {
                resized.push((b.clone(), spec.clone()));
            }
            Some(b)
        }
        (None, Some(spec)) => Some(crate::bulkhead::Bulkhead::new(spec.clone())),
        (Some(b), None) => {
            let open = crate::bulkhead::BulkheadSpec {
                max_in_flight: usize::MAX,
                adaptive: None,
                ..b.spec()
            };
            resized.push((b, open));
            None
        }
        (None, None) => None,
    }
}
