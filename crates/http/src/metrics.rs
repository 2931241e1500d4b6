//! Every metric of the HTTP data path, named in one place. Handles for a route or endpoint are
//! resolved once when a snapshot is built, so the request path only bumps atomics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pool::PoolGauges;

/// Label set: ordered (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

fn queue_histogram() -> Histogram {
    // 10 µs … ~1.3 s
    Histogram::new(exponential_buckets(0.000_01, 2.0, 18))
}

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~16 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// All data-path metric families.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    in_flight: Family<Labels, Gauge>,
    tunnels: Family<Labels, Gauge>,
    endpoint_available: Family<Labels, Gauge>,
    pool: Family<Labels, Gauge>,
    ejections: Family<Labels, Counter>,
    ejections_held: Family<Labels, Counter>,
    breaker_closed: Family<Labels, Counter>,
    health_transitions: Family<Labels, Counter>,
    /// Config reloads by result ("ok", "error").
    pub reloads: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    retries_denied: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    shed: Family<Labels, Counter>,
    fallbacks: Family<Labels, Counter>,
    incomplete: Family<Labels, Counter>,
    queue_time: Family<Labels, Histogram, fn() -> Histogram>,
    cache: Family<Labels, Counter>,
    /// Cache tier gauges (bytes, objects, up), refreshed at scrape time.
    pub cache_tier: Family<Labels, Gauge>,
    /// Redis tier errors (mirrors the tier's own counter at scrape time).
    pub cache_tier_errors: Family<Labels, Counter>,
}

/// What the cache did with a request (one counter each per route).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    /// Fresh stored response served.
    Hit,
    /// Went to the origin.
    Miss,
    /// Stale response served while refreshed in the background.
    Stale,
    /// Stale response served because the origin failed.
    StaleIfError,
    /// Stored response revalidated with a 304.
    Revalidated,
    /// Served from a response another request fetched (request coalescing).
    Coalesced,
    /// Skipped the cache (bypass rules or a request body).
    Bypass,
    /// Sent straight to the origin because the key recently answered uncacheable.
    Pass,
    /// Origin response stored.
    Stored,
}

const CACHE_RESULTS: [&str; 9] = [
    "hit",
    "miss",
    "stale",
    "stale_if_error",
    "revalidated",
    "coalesced",
    "bypass",
    "pass",
    "stored",
];

/// Status classes counted per route.
/// Status classes, and `aborted`: the client went away before a response head was sent (the
/// access log's status 0; nginx logs these as 499).
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "aborted"];

/// Handles for one route × upstream.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    by_class: [Counter; 6],
    /// Request duration from arrival to end of response body.
    pub duration: Histogram,
    /// Requests in flight on the route.
    pub in_flight: Gauge,
    /// Upgraded connections open on the route.
    pub tunnels: Gauge,
    /// Retries made.
    pub retries: Counter,
    /// Retries the budget refused.
    pub retries_denied: Counter,
    /// Requests refused by the rate limit.
    pub rate_limited: Counter,
    /// Fallback responses served.
    pub fallbacks: Counter,
    /// Responses whose body broke off after the head was sent.
    pub incomplete: Counter,
    /// Time spent waiting for bulkhead slots.
    pub queue_time: Histogram,
    cache: [Counter; 9],
    route: String,
    shed_family: Family<Labels, Counter>,
}

impl RouteMetrics {
    /// Counts a request shed by a bulkhead, by reason and priority (the overload path only).
    pub fn shed(&self, reason: &str, priority: &str) {
        let l = vec![
            ("route", self.route.clone()),
            ("reason", reason.to_string()),
            ("priority", priority.to_string()),
        ];
        self.shed_family.get_or_create(&l).inc();
    }
}

impl RouteMetrics {
    /// Counts one cache decision.
    pub fn cache(&self, r: CacheResult) {
        self.cache[r as usize].inc();
    }

    /// Counts one finished request by status class (0: aborted).
    pub fn count(&self, status: u16) {
        let class = match status {
            0 => 5,
            s => usize::from(s / 100).clamp(1, 5) - 1,
        };
        self.by_class[class].inc();
    }
}

/// Handles for one endpoint of one upstream.
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    /// 1 when available, 0 when out of rotation; refreshed at scrape time.
    pub available: Gauge,
    /// Active/idle connections.
    pub pool: PoolGauges,
    /// Breaker openings (passive ejections).
    pub ejections: Counter,
    /// Ejections held back by `passive.max_ejection_percent` (the endpoint stayed in rotation).
    pub ejections_held: Counter,
    /// Breaker closings after a successful half-open probe.
    pub breaker_closed: Counter,
    /// Probe flips to healthy.
    pub became_healthy: Counter,
    /// Probe flips to unhealthy.
    pub became_unhealthy: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            in_flight: Family::default(),
            tunnels: Family::default(),
            endpoint_available: Family::default(),
            pool: Family::default(),
            ejections: Family::default(),
            ejections_held: Family::default(),
            breaker_closed: Family::default(),
            health_transitions: Family::default(),
            reloads: Family::default(),
            retries: Family::default(),
            retries_denied: Family::default(),
            rate_limited: Family::default(),
            shed: Family::default(),
            fallbacks: Family::default(),
            incomplete: Family::default(),
            queue_time: Family::new_with_constructor(queue_histogram as fn() -> Histogram),
            cache: Family::default(),
            cache_tier: Family::default(),
            cache_tier_errors: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every family under the `scalegate_` prefix.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "scalegate_http_requests",
            "Requests by route, upstream and status class",
            self.requests.clone(),
        );
        r.register(
            "scalegate_http_request_duration_seconds",
            "Request duration from arrival to the end of the response body",
            self.duration.clone(),
        );
        r.register(
            "scalegate_http_in_flight",
            "Requests in flight by route",
            self.in_flight.clone(),
        );
        r.register(
            "scalegate_http_tunnels_open",
            "Upgraded connections (WebSocket and the like) open, by route",
            self.tunnels.clone(),
        );
        r.register(
            "scalegate_upstream_endpoint_available",
            "1 when an endpoint is in rotation (healthy, not ejected, not drained)",
            self.endpoint_available.clone(),
        );
        r.register(
            "scalegate_upstream_connections",
            "Upstream connections by state",
            self.pool.clone(),
        );
        r.register(
            "scalegate_upstream_ejections",
            "Passive ejections of endpoints",
            self.ejections.clone(),
        );
        r.register(
            "scalegate_upstream_ejections_held",
            "Ejections held back by passive.max_ejection_percent (the endpoint stayed in rotation: panic)",
            self.ejections_held.clone(),
        );
        r.register(
            "scalegate_upstream_breaker_closed",
            "Endpoint breakers closed by a successful half-open probe",
            self.breaker_closed.clone(),
        );
        r.register(
            "scalegate_upstream_health_transitions",
            "Active health check state flips",
            self.health_transitions.clone(),
        );
        r.register(
            "scalegate_config_reloads",
            "Config reloads by result",
            self.reloads.clone(),
        );
        r.register(
            "scalegate_http_retries",
            "Retries by route",
            self.retries.clone(),
        );
        r.register(
            "scalegate_http_queue_seconds",
            "Time requests waited for bulkhead slots",
            self.queue_time.clone(),
        );
        r.register(
            "scalegate_http_fallbacks",
            "Fallback responses served because the upstream was unavailable",
            self.fallbacks.clone(),
        );
        r.register(
            "scalegate_http_responses_incomplete",
            "Responses whose body broke off after the head was sent (the upstream broke or went silent past read_timeout); their status class is counted too",
            self.incomplete.clone(),
        );
        r.register(
            "scalegate_http_shed",
            "Requests shed by an upstream's bulkhead, by reason and priority",
            self.shed.clone(),
        );
        r.register(
            "scalegate_http_rate_limited",
            "Requests answered 429 by the route's rate limit",
            self.rate_limited.clone(),
        );
        r.register(
            "scalegate_cache_requests",
            "Cache decisions by route and result (hit, miss, stale, stale_if_error, revalidated, coalesced, bypass, pass, stored)",
            self.cache.clone(),
        );
        r.register(
            "scalegate_cache_tier",
            "Cache tiers: bytes and objects held (memory), up (redis)",
            self.cache_tier.clone(),
        );
        r.register(
            "scalegate_cache_tier_errors",
            "Failed or timed-out calls to the Redis cache tier",
            self.cache_tier_errors.clone(),
        );
        r.register(
            "scalegate_http_retries_budget_exhausted",
            "Retries refused by the route's retry budget",
            self.retries_denied.clone(),
        );
    }

    /// Handles for a route towards an upstream.
    pub fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
        let base = || {
            vec![
                ("route", route.to_string()),
                ("upstream", upstream.to_string()),
            ]
        };
        let by_class = CLASSES.map(|c| {
            let mut l = base();
            l.push(("class", c.to_string()));
            self.requests.get_or_create_owned(&l)
        });
        RouteMetrics {
            by_class,
            duration: self.duration.get_or_create_owned(&base()),
            in_flight: self
                .in_flight
                .get_or_create_owned(&vec![("route", route.to_string())]),
            tunnels: self
                .tunnels
                .get_or_create_owned(&vec![("route", route.to_string())]),
            retries: self
                .retries
                .get_or_create_owned(&vec![("route", route.to_string())]),
            retries_denied: self
                .retries_denied
                .get_or_create_owned(&vec![("route", route.to_string())]),
            rate_limited: self
                .rate_limited
                .get_or_create_owned(&vec![("route", route.to_string())]),
            queue_time: self
                .queue_time
                .get_or_create_owned(&vec![("route", route.to_string())]),
            fallbacks: self
                .fallbacks
                .get_or_create_owned(&vec![("route", route.to_string())]),
            incomplete: self
                .incomplete
                .get_or_create_owned(&vec![("route", route.to_string())]),
            cache: CACHE_RESULTS.map(|r| {
                self.cache.get_or_create_owned(&vec![
                    ("route", route.to_string()),
                    ("result", r.to_string()),
                ])
            }),
            route: route.to_string(),
            shed_family: self.shed.clone(),
        }
    }

    /// Removes an endpoint's series (a reload removed it); handles still held by requests in
    /// flight on it keep working but are no longer exported.
    pub fn forget_endpoint(&self, upstream: &str, addr: &str) {
        let base = vec![
            ("upstream", upstream.to_string()),
            ("endpoint", addr.to_string()),
        ];
        let with = |k: &'static str, v: &str| {
            let mut l = base.clone();
            l.push((k, v.to_string()));
            l
        };
        self.endpoint_available.remove(&base);
        self.ejections.remove(&base);
        self.ejections_held.remove(&base);
        self.breaker_closed.remove(&base);
        for state in ["active", "idle"] {
            self.pool.remove(&with("state", state));
        }
        for to in ["healthy", "unhealthy"] {
            self.health_transitions.remove(&with("to", to));
        }
    }

    /// Handles for an endpoint.
    pub fn endpoint(&self, upstream: &str, addr: &str) -> EndpointMetrics {
        let base = || {
            vec![
                ("upstream", upstream.to_string()),
                ("endpoint", addr.to_string()),
            ]
        };
        let with = |k: &'static str, v: &str| {
            let mut l = base();
            l.push((k, v.to_string()));
            l
        };
        EndpointMetrics {
            available: self.endpoint_available.get_or_create_owned(&base()),
            pool: PoolGauges {
                active: self.pool.get_or_create_owned(&with("state", "active")),
                idle: self.pool.get_or_create_owned(&with("state", "idle")),
            },
            ejections: self.ejections.get_or_create_owned(&base()),
            ejections_held: self.ejections_held.get_or_create_owned(&base()),
            breaker_closed: self.breaker_closed.get_or_create_owned(&base()),
            became_healthy: self
                .health_transitions
                .get_or_create_owned(&with("to", "healthy")),
            became_unhealthy: self
                .health_transitions
                .get_or_create_owned(&with("to", "unhealthy")),
        }
    }
}
