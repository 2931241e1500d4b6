//! The config file as written: serde types that mirror the TOML, with spans on every value that
//! validation may complain about. Unknown keys are errors. Only this module and `validate` know
//! the file's shape.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::units::{ByteSize, Dur};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub lifecycle: RawLifecycle,
    #[serde(default)]
    pub admission: RawAdmission,
    #[serde(default)]
    pub log: RawLog,
    pub cache: Option<Spanned<RawStore>>,
    pub cluster: Option<Spanned<RawCluster>>,
    pub fanout: Option<Spanned<RawFanout>>,
    pub queue: Option<Spanned<RawJobs>>,
    pub postgres: Option<Spanned<super::pg::RawPostgres>>,
    #[serde(default)]
    pub listeners: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, Spanned<RawUpstream>>,
}

/// How the process uses its cores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<Spanned<i64>>,
    pub mode: Option<RuntimeMode>,
    pub zone: Option<Spanned<String>>,
}

/// Thread-per-core (default) or one work-stealing runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeMode {
    ThreadPerCore,
    WorkStealing,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
    pub expose_without_token: Option<bool>,
}

/// Gateway-wide admission.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmission {
    pub max_in_flight: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLifecycle {
    pub drain_timeout: Option<Spanned<Dur>>,
    pub watch_config: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access_log: Option<bool>,
    pub format: Option<LogFormat>,
}

/// Format of the process log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub bind: Spanned<String>,
    pub header_read_timeout: Option<Spanned<Dur>>,
    pub max_header_bytes: Option<Spanned<ByteSize>>,
    pub body_timeout: Option<Spanned<Dur>>,
    pub idle_timeout: Option<Spanned<Dur>>,
    pub tls: Option<Spanned<RawTls>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub merge_slashes: Option<bool>,
    pub escaped_slashes: Option<Spanned<String>>,
    pub trusted_proxies: Option<Spanned<Vec<String>>>,
    pub forwarded_header: Option<bool>,
    pub upgrades: Option<Spanned<Vec<String>>>,
}

/// PEM files of a TLS listener, relative to the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<Spanned<String>>,
    pub listener: Option<Spanned<String>>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub upstream: Spanned<String>,
    pub connect_timeout: Option<Spanned<Dur>>,
    pub timeout: Option<Spanned<Dur>>,
    pub read_timeout: Option<Spanned<Dur>>,
    pub max_body_bytes: Option<Spanned<ByteSize>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub priority: Option<Spanned<String>>,
    pub priority_header: Option<String>,
    pub fallback: Option<Spanned<RawFallback>>,
    pub concurrency: Option<Spanned<RawConcurrency>>,
    pub cache: Option<Spanned<RawCache>>,
    pub compression: Option<Spanned<RawCompression>>,
    pub rewrite: Option<Spanned<RawRewrite>>,
    pub request_headers: Option<Spanned<RawHeaderEdits>>,
    pub response_headers: Option<Spanned<RawHeaderEdits>>,
    pub allow: Option<Spanned<Vec<String>>>,
    pub deny: Option<Spanned<Vec<String>>>,
    pub queue: Option<Spanned<RawQueue>>,
}

/// `rewrite = { prefix = "/v2" }`: what replaces the matched path prefix upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    pub prefix: String,
}

/// `{ set = { name = "value" }, remove = ["name"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderEdits {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The gateway-wide cache store as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub max_bytes: Option<Spanned<ByteSize>>,
    pub redis: Option<Spanned<RawRedis>>,
    pub nats: Option<Spanned<RawNats>>,
}

/// The NATS purge bus as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNats {
    pub url: Spanned<String>,
    pub subject: Option<String>,
}

/// The Redis cache tier as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Spanned<String>,
    pub key_prefix: Option<String>,
    pub channel: Option<String>,
    pub timeout: Option<Spanned<Dur>>,
}

/// A route's cache as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    #[serde(default)]
    pub rules: Vec<Spanned<RawTtlRule>>,
    #[serde(default)]
    pub key: RawCacheKey,
    #[serde(default)]
    pub bypass: RawBypass,
    pub max_object_bytes: Option<Spanned<ByteSize>>,
    pub share_set_cookie: Option<bool>,
    pub stale_while_revalidate: Option<Dur>,
    pub stale_if_error: Option<Dur>,
    pub keep: Option<Dur>,
    pub targets: Option<Vec<Spanned<String>>>,
    pub strip_targets: Option<bool>,
}

/// A per-path freshness rule: `ttl` is a duration or "origin".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTtlRule {
    pub path_prefix: Spanned<String>,
    pub ttl: Spanned<String>,
}

/// Cache key settings as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheKey {
    pub host: Option<bool>,
    pub query: Option<Spanned<RawQuery>>,
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub cookies: Vec<String>,
}

/// `query = "keep" | "sort" | "ignore"` or a list of parameter names to keep.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawQuery {
    Mode(String),
    Allow(Vec<String>),
}

/// Cache bypass rules as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBypass {
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub cookies: Vec<String>,
}

/// A route's compression as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    pub min_bytes: Option<Spanned<ByteSize>>,
    pub encodings: Option<Vec<Spanned<String>>>,
    pub content_types: Option<Vec<String>>,
}

/// A route's static fallback as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFallback {
    pub status: Option<i64>,
    pub content_type: Option<String>,
    pub body: String,
}

/// A route's rate limit as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests: i64,
    pub per: Option<Dur>,
    pub burst: Option<i64>,
    pub key: Option<String>,
    pub name: Option<String>,
    pub shared: Option<bool>,
}

/// A route's `queue` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub max_in_flight: Option<i64>,
    pub max_queued: Option<i64>,
    pub attempts: Option<i64>,
    pub backoff: Option<Spanned<Dur>>,
    pub max_backoff: Option<Spanned<Dur>>,
    pub max_body_bytes: Option<Spanned<ByteSize>>,
}

/// `[queue]`: the durable job store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJobs {
    pub nats: Spanned<RawJobsNats>,
}

/// `[queue] nats = { url, stream, prefix }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJobsNats {
    pub url: Spanned<String>,
    pub stream: Option<String>,
    pub prefix: Option<String>,
}

/// `[fanout]`: WebSocket subscriptions to topics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFanout {
    pub path_prefix: Option<Spanned<String>>,
    pub listener: Option<Spanned<String>>,
    pub buffer: Option<Spanned<i64>>,
    pub max_message_bytes: Option<Spanned<ByteSize>>,
    pub redis: Option<Spanned<RawFanoutBus>>,
    pub nats: Option<Spanned<RawFanoutBus>>,
    pub authorize: Option<Spanned<RawFanoutAuthorize>>,
}

/// `authorize = { upstream, path, timeout }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFanoutAuthorize {
    pub upstream: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub timeout: Option<Spanned<Dur>>,
}

/// The fan-out bus: `{ url, prefix }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFanoutBus {
    pub url: Spanned<String>,
    pub prefix: Option<String>,
}

/// `[cluster]`: state shared with other gateway instances.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis: Option<Spanned<RawClusterRedis>>,
}

/// `cluster.redis = { url, key_prefix, timeout }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusterRedis {
    pub url: Spanned<String>,
    pub key_prefix: Option<String>,
    pub timeout: Option<Spanned<Dur>>,
}

/// A route's retry settings as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<i64>,
    pub per_try_timeout: Option<Dur>,
    pub backoff: Option<Dur>,
    pub max_backoff: Option<Dur>,
    pub budget_percent: Option<i64>,
    pub min_retries_per_second: Option<i64>,
    pub max_retry_after: Option<Dur>,
    pub max_body_bytes: Option<ByteSize>,
    pub statuses: Option<Vec<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
}

/// Balancing algorithms as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    RoundRobin,
    Weighted,
    LeastConn,
    P2cEwma,
    IpHash,
    Cookie,
    ConsistentHash,
}

/// Upstream protocols as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawProtocol {
    Http1,
    /// HTTP/2 with prior knowledge in clear text, or by ALPN with `tls`.
    H2c,
    /// The same as `h2c`; reads better beside `tls`.
    H2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub balance: Option<RawBalance>,
    #[serde(default)]
    pub endpoints: Vec<Spanned<RawEndpoint>>,
    pub dns: Option<Spanned<RawDns>>,
    pub hash_on: Option<Spanned<String>>,
    pub cookie: Option<Spanned<String>>,
    pub health: Option<Spanned<RawHealth>>,
    pub passive: Option<Spanned<RawPassive>>,
    pub slow_start: Option<Spanned<Dur>>,
    pub panic_threshold: Option<Spanned<i64>>,
    pub pool: Option<Spanned<RawPool>>,
    pub protocol: Option<RawProtocol>,
    pub concurrency: Option<Spanned<RawConcurrency>>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub zone_affinity: Option<Spanned<RawZoneAffinity>>,
}

/// `dns = { name = "host:port", interval, weight, zone }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub name: Spanned<String>,
    pub interval: Option<Spanned<Dur>>,
    pub weight: Option<i64>,
    pub zone: Option<String>,
}

/// `zone_affinity = true` or `{ min_available_percent = 70 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "true, false or { min_available_percent = 70 }")]
pub enum RawZoneAffinity {
    On(bool),
    Table(RawZoneAffinityTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZoneAffinityTable {
    pub min_available_percent: Option<i64>,
}

/// TLS towards an upstream's endpoints; PEM paths relative to the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// An upstream's bulkhead as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrency {
    pub max_in_flight: i64,
    pub queue: Option<i64>,
    pub queue_timeout: Option<Dur>,
    pub adaptive: Option<bool>,
    pub min_limit: Option<i64>,
    pub latency_tolerance: Option<f64>,
}

/// An endpoint: "host:port" or `{ addr = "host:port", weight = 2, zone = "a" }`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = r#"an endpoint: "host:port" or { addr = "host:port", weight = 1, zone = "..." }"#
)]
pub enum RawEndpoint {
    Addr(String),
    Full(RawEndpointTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointTable {
    pub addr: String,
    pub weight: Option<i64>,
    pub zone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub healthy_after: Option<i64>,
    pub unhealthy_after: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_failures: Option<i64>,
    pub base_ejection: Option<Dur>,
    pub max_ejection: Option<Dur>,
    pub failure_rate_percent: Option<i64>,
    pub min_requests: Option<i64>,
    pub window: Option<Dur>,
    pub half_open_probes: Option<i64>,
    pub max_ejection_percent: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub max_per_endpoint: Option<i64>,
    pub max_idle_per_endpoint: Option<i64>,
    pub idle_timeout: Option<Dur>,
    pub max_response_headers: Option<i64>,
    pub max_response_header_bytes: Option<ByteSize>,
}
