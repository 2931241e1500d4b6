//! What the gateway is told to do: plain, validated structs built from the config file by the
//! binary. Nothing here knows serde or TOML; a reload hands over a whole new [`GatewaySpec`].

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use scalegate_core::balance::Balance;
use scalegate_core::{HealthPolicy, OutlierPolicy};

/// Everything the data path needs, validated.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    /// Sockets that accept client connections.
    pub listeners: Vec<ListenerSpec>,
    /// Routing rules, in config order.
    pub routes: Vec<RouteSpec>,
    /// Named groups of endpoints.
    pub upstreams: Vec<UpstreamSpec>,
    /// Write one JSON line per request to stdout.
    pub access_log: bool,
    /// Most requests in flight in the whole gateway (None: unlimited). Low priority is admitted
    /// below 80% of it, normal below 90%, critical up to the cap.
    pub max_in_flight: Option<usize>,
    /// State shared with other gateway instances (None: this process alone).
    pub cluster: Option<ClusterSpec>,
}

/// Where several gateway instances share state (today: rate limits with `shared = true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// Prefix of every key written (default "scalegate:").
    pub key_prefix: String,
    /// Time budget of one Redis call on the request path (default 50 ms); slower counts as down.
    pub timeout: Duration,
}

/// One listening socket.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerSpec {
    /// Name routes refer to.
    pub name: String,
    /// Address to bind (port 0 picks a free port).
    pub bind: SocketAddr,
    /// A client must send a request's headers within this time (default 10 s).
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger gets 431 (default 64 KiB).
    pub max_header_bytes: usize,
    /// A request's whole body must arrive within this time of its head; else 408, and nothing
    /// is counted against the upstream (default 60 s).
    pub body_timeout: Duration,
    /// Idle keep-alive client connections close after this (default 60 s).
    pub idle_timeout: Duration,
    /// TLS (None: plain TCP, HTTP/1.1 and h2c).
    pub tls: Option<crate::tls::TlsSpec>,
    /// Most client connections open at once, shared out over workers (None: no limit). At the
    /// limit the listener stops accepting; new connections wait in the kernel's backlog.
    pub max_connections: Option<usize>,
    /// Normalisation, trust, header count and upgrade rules (edge.rs).
    pub edge: crate::edge::EdgeSpec,
}

/// What a route matches; every present field must match. Empty matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MatchSpec {
    /// Exact host (without port), case-insensitive.
    pub host: Option<String>,
    /// Path prefix, matched on segment boundaries ("/api" matches "/api/x", not "/apix").
    pub path_prefix: Option<String>,
    /// Request method.
    pub method: Option<Method>,
    /// Headers that must be present with these exact values.
    pub headers: Vec<(String, String)>,
}

/// One routing rule.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// Name for metrics and logs (defaults to its position, "route0").
    pub name: String,
    /// Listener it applies to (None: every listener).
    pub listener: Option<String>,
    /// Match conditions.
    pub matcher: MatchSpec,
    /// Upstream name.
    pub upstream: String,
    /// Connect timeout per attempt (default 1 s).
    pub connect_timeout: Duration,
    /// Time from sending the request to the response head (default 5 s).
    pub request_timeout: Duration,
    /// Longest wait between two reads of the upstream's response body (default 60 s).
    pub read_timeout: Duration,
    /// Largest request body; larger gets 413 (default 10 MiB).
    pub max_body_bytes: u64,
    /// Retries (None: one attempt; a stale pooled connection is still re-sent once).
    pub retry: Option<RetrySpec>,
    /// Rate limit (None: off).
    pub rate_limit: Option<RateLimitSpec>,
    /// Priority class of the route's requests (default normal).
    pub priority: scalegate_core::admission::Priority,
    /// A request header that may set the priority ("critical", "normal", "low"); None: ignored.
    pub priority_header: Option<String>,
    /// Answer when the upstream is unavailable (None: the error status).
    pub fallback: Option<crate::fallback::FallbackSource>,
    /// Concurrency cap of the route itself, with a priority queue (None: unlimited).
    pub bulkhead: Option<crate::bulkhead::BulkheadSpec>,
    /// Response compression (None: off).
    pub compression: Option<crate::compress::CompressionSpec>,
    /// The path prefix the upstream sees instead of the matched one (None: unchanged).
    pub rewrite: Option<crate::rewrite::PathRewrite>,
    /// Header edits on the request sent upstream.
    pub request_headers: crate::rewrite::HeaderEdits,
    /// Header edits on every response of the route (the gateway's own answers included).
    pub response_headers: crate::rewrite::HeaderEdits,
    /// Which client addresses may use the route (empty: all).
    pub access: crate::access::AccessRules,
}

/// What a rate limit counts by; several parts combine into one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateKey {
    /// The client's IP address.
    Ip,
    /// A request header's value (missing counts as empty).
    Header(String),
    /// The route itself: one shared budget.
    Route,
}

/// A route's rate limit.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitSpec {
    /// Policy name in RateLimit headers (default "default").
    pub name: String,
    /// Rate and burst.
    pub gcra: scalegate_core::admission::Gcra,
    /// Key parts.
    pub key: Vec<RateKey>,
    /// Counted in Redis for every gateway instance together (needs `cluster.redis`).
    pub shared: bool,
}

/// A route's retry settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrySpec {
    /// The decision rules.
    pub policy: scalegate_core::retry::RetryPolicy,
    /// Retries allowed as a percentage of requests over a 10 s window (default 20).
    pub budget_percent: u32,
    /// Retries allowed per second regardless of traffic (default 5).
    pub min_retries_per_second: u32,
    /// Bodies up to this size (with a known length) are kept for replay (default 64 KiB).
    pub max_body_bytes: u64,
    /// Timeout of each attempt, inside the route's timeout (None: the route's timeout).
    pub per_try_timeout: Option<Duration>,
}

/// Where the consistent-hash key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The request path.
    Path,
}

/// Wire protocol towards an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), one multiplexed connection per endpoint and worker.
    Http2,
}

/// One endpoint of an upstream.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSpec {
    /// `host:port`; its identity across reloads.
    pub addr: String,
    /// Balancing weight (default 1).
    pub weight: u32,
    /// Availability zone label.
    pub zone: Option<String>,
}

/// Connection pool limits per endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSpec {
    /// Most connections to one endpoint (default 256), shared out over workers.
    pub max_per_endpoint: usize,
    /// Idle connections older than this are closed (default 60 s).
    pub idle_timeout: Duration,
    /// Most idle connections kept per endpoint (default 128); more are closed when released.
    pub max_idle_per_endpoint: usize,
    /// Most header fields in a response head (default 100); more is a 502 that does not count
    /// against the endpoint's health.
    pub max_response_headers: usize,
    /// Largest response head, status line included (default 64 KiB); larger is such a 502 too.
    pub max_response_header_bytes: usize,
}

/// A named group of endpoints and how to balance over them.
#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    /// Name routes refer to.
    pub name: String,
    /// Balancing algorithm.
    pub balance: Balance,
    /// Key for `consistent_hash`.
    pub hash_on: Option<HashOn>,
    /// Cookie name for `cookie` balancing (default "sg_sticky").
    pub sticky_cookie: String,
    /// The endpoints.
    pub endpoints: Vec<EndpointSpec>,
    /// Active checks (None: off).
    pub health: Option<HealthPolicy>,
    /// Passive ejection.
    pub outlier: OutlierPolicy,
    /// Slow-start window (None: off).
    pub slow_start: Option<Duration>,
    /// Panic threshold in percent (default 50; 0 off).
    pub panic_threshold_percent: u32,
    /// Pool limits.
    pub pool: PoolSpec,
    /// Protocol to the endpoints.
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints (None: clear text).
    pub tls: Option<crate::dial::UpstreamTls>,
    /// Concurrency cap with a priority queue (None: unlimited).
    pub bulkhead: Option<crate::bulkhead::BulkheadSpec>,
    /// Prefer endpoints in the gateway's own zone (None: every zone alike).
    pub zone_affinity: Option<ZoneAffinity>,
    /// Endpoints found in DNS, re-resolved periodically (None: the listed endpoints only).
    pub dns: Option<DnsSpec>,
}

/// DNS discovery: every address `name` resolves to is an endpoint (a headless Kubernetes
/// Service, a round-robin DNS name), refreshed every `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSpec {
    /// `host:port`.
    pub name: String,
    /// Time between resolutions (default 5 s).
    pub interval: Duration,
    /// Weight of each discovered endpoint (default 1).
    pub weight: u32,
    /// Zone of the discovered endpoints (default none).
    pub zone: Option<String>,
}

/// Zone affinity of an upstream: balance over the endpoints in the gateway's own zone while at
/// least `min_available_percent` of them are available, over every zone otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneAffinity {
    /// The gateway's zone (`runtime.zone` or `SCALEGATE_ZONE`).
    pub zone: String,
    /// Share of local endpoints that must be available to stay local (default 70).
    pub min_available_percent: u32,
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            max_per_endpoint: 256,
            idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 128,
            max_response_headers: 100,
            max_response_header_bytes: 64 << 10,
        }
    }
}
