//! What a route's cache and compression are told to do, and the gateway-wide store settings.

use std::time::Duration;

use http::HeaderName;

/// A route's cache settings (the route opts in by having one).
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSpec {
    /// Freshness overrides by path prefix, first match wins; no match honours the origin.
    pub rules: Vec<TtlRule>,
    /// What the cache key is made of.
    pub key: KeySpec,
    /// Requests that skip the cache entirely.
    pub bypass: BypassSpec,
    /// Largest body stored; bigger responses stream through unstored (default 8 MiB).
    pub max_object_bytes: u64,
    /// Store responses that carry Set-Cookie (the cookie itself is never stored; default false).
    pub share_set_cookie: bool,
    /// Serve stale while refreshing in the background for this long past expiry when the origin
    /// does not say (`stale-while-revalidate` wins when present; default 0).
    pub stale_while_revalidate: Duration,
    /// Serve stale when the origin fails for this long past expiry when the origin does not
    /// say (`stale-if-error` wins when present; default 0).
    pub stale_if_error: Duration,
    /// Keep expired objects that have validators this long for conditional revalidation
    /// (default 10 min).
    pub keep: Duration,
    /// Targeted cache-control fields (RFC 9213) this cache obeys, first present wins over
    /// Cache-Control and Expires (default `CDN-Cache-Control`).
    pub targets: Vec<HeaderName>,
    /// Remove the targeted fields from responses sent to clients (default false).
    pub strip_targets: bool,
}

/// A freshness override for paths under a prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct TtlRule {
    /// Path prefix ("/static/").
    pub path_prefix: String,
    /// Fixed freshness lifetime; None honours the origin's Cache-Control.
    pub ttl: Option<Duration>,
}

/// The parts of a request that make up its cache key.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySpec {
    /// Include the Host (default true).
    pub host: bool,
    /// How the query string enters the key.
    pub query: QueryKey,
    /// Request headers whose values are part of the key.
    pub headers: Vec<HeaderName>,
    /// Cookies whose values are part of the key.
    pub cookies: Vec<String>,
}

/// How the query string enters the cache key.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryKey {
    /// As sent.
    Keep,
    /// Parameters sorted, so `?b=1&a=2` and `?a=2&b=1` share an entry (default).
    Sort,
    /// Not at all.
    Ignore,
    /// Only these parameters, sorted.
    Allow(Vec<String>),
}

/// Requests that bypass the cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BypassSpec {
    /// Paths under these prefixes.
    pub path_prefixes: Vec<String>,
    /// Requests that carry any of these headers.
    pub headers: Vec<HeaderName>,
    /// Requests that carry any of these cookies.
    pub cookies: Vec<String>,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            rules: Vec::new(),
            key: KeySpec {
                host: true,
                query: QueryKey::Sort,
                headers: Vec::new(),
                cookies: Vec::new(),
            },
            bypass: BypassSpec::default(),
            max_object_bytes: 8 << 20,
            share_set_cookie: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            keep: Duration::from_secs(600),
            targets: vec![HeaderName::from_static("cdn-cache-control")],
            strip_targets: false,
        }
    }
}

/// The gateway-wide object store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreSpec {
    /// Memory tier size in bytes (default 256 MiB).
    pub max_bytes: u64,
    /// Shared tier and invalidation bus (None: memory only).
    pub redis: Option<RedisSpec>,
    /// Invalidation bus over NATS (None: off).
    pub nats: Option<NatsSpec>,
}

/// The NATS invalidation bus.
#[derive(Clone, Debug, PartialEq)]
pub struct NatsSpec {
    /// `nats://host:port`.
    pub url: String,
    /// Subject carrying purges (default "scalegate.purge").
    pub subject: String,
}

impl Default for StoreSpec {
    fn default() -> Self {
        StoreSpec {
            max_bytes: 256 << 20,
            redis: None,
            nats: None,
        }
    }
}

/// The Redis tier: where objects are shared and where purges are published.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisSpec {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key scalegate writes (default "scalegate:cache:").
    pub key_prefix: String,
    /// Pub/sub channel carrying purges (default "scalegate:purge").
    pub channel: String,
    /// Time budget of one Redis call on the request path (default 50 ms); slower counts as down.
    pub timeout: Duration,
}
