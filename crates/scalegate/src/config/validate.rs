//! From the file's shape to runtime specs: defaults filled in, cross-references checked, every
//! problem collected with its position rather than stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use http::Method;
use scalegate_core::admission::{Gcra, Priority};
use scalegate_core::balance::Balance;
use scalegate_core::retry::{Backoff, RetryPolicy};
use scalegate_core::{HealthPolicy, OutlierPolicy};
use scalegate_features::{FeatureSpec, RouteFeatures};
use scalegate_http::access::AccessRules;
use scalegate_http::bulkhead::BulkheadSpec;
use scalegate_http::dial::{TlsMaterial, UpstreamTls};
use scalegate_http::fallback::FallbackSource;
use scalegate_http::spec::{
    EndpointSpec, GatewaySpec, HashOn, ListenerSpec, MatchSpec, PoolSpec, RouteSpec,
    UpstreamProtocol, UpstreamSpec,
};
use scalegate_http::spec::{RateKey, RateLimitSpec, RetrySpec};
use scalegate_http::tls::TlsSpec;
use toml::Spanned;

use super::raw::{self, RawBalance, RawConfig, RawEndpoint, RawProtocol};
use super::{Config, LogFormat, Problem, RuntimeConfig, RuntimeMode};

/// Default admin address: loopback only.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

pub(super) struct Check {
    problems: Vec<Problem>,
}

impl Check {
    pub(super) fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            span: Some(span),
            message: message.into(),
        });
    }

    /// A positive duration, or the default.
    pub(super) fn dur(
        &mut self,
        v: &Option<Spanned<super::units::Dur>>,
        default: Duration,
        what: &str,
    ) -> Duration {
        match v {
            Some(d) if d.get_ref().0.is_zero() => {
                self.err(d.span(), format!("{what} must be greater than zero"));
                default
            }
            Some(d) => d.get_ref().0,
            None => default,
        }
    }

    /// An optional integer setting in `range`, or the default when absent or out of range.
    pub(super) fn opt_int(
        &mut self,
        v: &Option<Spanned<i64>>,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
        what: &str,
    ) -> i64 {
        match v {
            Some(n) => self.int(Some(*n.get_ref()), &n.span(), range, default, what),
            None => default,
        }
    }

    /// An integer in `range`, or the default.
    pub(super) fn int(
        &mut self,
        v: Option<i64>,
        span: &Range<usize>,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
        what: &str,
    ) -> i64 {
        match v {
            Some(n) if !range.contains(&n) => {
                self.err(
                    span.clone(),
                    format!(
                        "{what} must be between {} and {}, got {n}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
            Some(n) => n,
            None => default,
        }
    }
}

pub(super) fn validate(raw: RawConfig, base: &std::path::Path) -> Result<Config, Vec<Problem>> {
    let mut c = Check {
        problems: Vec::new(),
    };

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let worker_threads = match &raw.runtime.worker_threads {
        Some(w) => c.int(
            Some(*w.get_ref()),
            &w.span(),
            1..=1024,
            cores as i64,
            "runtime.worker_threads",
        ) as usize,
        None => cores,
    };
    let runtime = RuntimeConfig {
        worker_threads,
        mode: raw.runtime.mode.unwrap_or(RuntimeMode::ThreadPerCore),
        zone: super::zone::gateway_zone(&mut c, raw.runtime.zone.as_ref()),
    };

    let admin_listen = match &raw.admin.listen {
        Some(s) => parse_addr(&mut c, s, "admin.listen"),
        None => DEFAULT_ADMIN.parse().ok(),
    }
    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901)));

    let max_in_flight = raw.admission.max_in_flight.as_ref().map(|m| {
        c.int(
            Some(*m.get_ref()),
            &m.span(),
            1..=10_000_000,
            10_000,
            "admission.max_in_flight",
        ) as usize
    });
    let admin_token = raw.admin.token.as_ref().map(|t| {
        if t.get_ref().len() < 16 {
            c.err(t.span(), "admin.token must be at least 16 characters");
        }
        t.get_ref().clone()
    });
    super::refuse::serves_something(&mut c, &raw);
    super::refuse::admin_exposure(&mut c, &raw.admin, admin_listen);
    super::binds::clashes(&mut c, &raw, admin_listen);
    if let Some(pg) = &raw.postgres {
        super::refuse::admin_users_authenticate(&mut c, pg);
    }
    let drain_timeout = c.dur(
        &raw.lifecycle.drain_timeout,
        Duration::from_secs(30),
        "lifecycle.drain_timeout",
    );

    let cache = super::cache::store(&mut c, raw.cache.as_ref());
    let postgres = raw.postgres.as_ref().and_then(|p| {
        let mut spec = super::pg::postgres(&mut c, p, base)?;
        super::pg::fill_dbnames(&mut spec);
        Some(spec)
    });
    let listeners = listeners(&mut c, &raw.listeners, base);
    let upstreams = upstreams(&mut c, &raw.upstreams, runtime.zone.as_deref(), base);
    let listener_names: Vec<String> = raw
        .listeners
        .iter()
        .map(|l| l.get_ref().name.get_ref().clone())
        .collect();
    let (routes, route_features) = routes(&mut c, &raw.routes, &listener_names, &upstreams);
    let cluster = super::cluster::cluster(&mut c, raw.cluster.as_ref());
    super::cluster::check_shared_limits(&mut c, &raw.routes, cluster.as_ref());
    let jobs = super::queue::jobs(&mut c, raw.queue.as_ref());
    super::queue::check_names(&mut c, &raw.routes, jobs.is_some());
    let upstream_names: Vec<String> = upstreams.iter().map(|u| u.name.clone()).collect();
    let fanout = super::fanout::fanout(
        &mut c,
        raw.fanout.as_ref(),
        &listener_names,
        &upstream_names,
    );

    if !c.problems.is_empty() {
        c.problems
            .sort_by_key(|p| p.span.as_ref().map_or(0, |s| s.start));
        return Err(c.problems);
    }
    Ok(Config {
        runtime,
        admin_listen,
        admin_token,
        drain_timeout,
        watch_config: raw.lifecycle.watch_config.unwrap_or(true),
        log_format: raw.log.format.unwrap_or(LogFormat::Text),
        gateway: GatewaySpec {
            listeners,
            routes,
            upstreams,
            access_log: raw.log.access_log.unwrap_or(false),
            max_in_flight,
            cluster,
        },
        features: FeatureSpec {
            cache,
            fanout,
            jobs,
            routes: route_features,
        },
        postgres,
        warnings: Vec::new(),
        files: Vec::new(),
    })
}

fn parse_addr(c: &mut Check, s: &Spanned<String>, what: &str) -> Option<SocketAddr> {
    match s.get_ref().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            c.err(
                s.span(),
                format!(
                    r#"{what}: "{}" is not an IP address with a port, e.g. "127.0.0.1:8080""#,
                    s.get_ref()
                ),
            );
            None
        }
    }
}

fn listeners(
    c: &mut Check,
    raw: &[Spanned<raw::RawListener>],
    base: &std::path::Path,
) -> Vec<ListenerSpec> {
    let mut names = HashSet::new();
    let mut binds = HashSet::new();
    let mut out = Vec::new();
    for l in raw {
        let l = l.get_ref();
        if !names.insert(l.name.get_ref().clone()) {
            c.err(
                l.name.span(),
                format!("duplicate listener name {:?}", l.name.get_ref()),
            );
        }
        let Some(bind) = parse_addr(c, &l.bind, "bind") else {
            continue;
        };
        if bind.port() != 0 && !binds.insert(bind) {
            c.err(
                l.bind.span(),
                format!("another listener already binds {bind}"),
            );
        }
        let max_header_bytes = match &l.max_header_bytes {
            Some(s) if !(1024..=(16 << 20)).contains(&s.get_ref().0) => {
                c.err(s.span(), "max_header_bytes must be between 1KiB and 16MiB");
                64 << 10
            }
            Some(s) => s.get_ref().0 as usize,
            None => 64 << 10,
        };
        let tls = l.tls.as_ref().and_then(|t| {
            let read = |p: &str| {
                std::fs::read(base.join(p)).map_err(|e| format!("cannot read {p:?}: {e}"))
            };
            let built = read(&t.get_ref().cert)
                .and_then(|cert| read(&t.get_ref().key).map(|key| (cert, key)))
                .and_then(|(cert, key)| TlsSpec::from_pem(&cert, &key));
            built.map_err(|e| c.err(t.span(), format!("tls: {e}"))).ok()
        });
        out.push(ListenerSpec {
            tls,
            name: l.name.get_ref().clone(),
            bind,
            header_read_timeout: c.dur(
                &l.header_read_timeout,
                Duration::from_secs(10),
                "header_read_timeout",
            ),
            max_header_bytes,
            body_timeout: c.dur(&l.body_timeout, Duration::from_secs(60), "body_timeout"),
            idle_timeout: c.dur(&l.idle_timeout, Duration::from_secs(60), "idle_timeout"),
            max_connections: l.max_connections.as_ref().map(|m| {
                c.int(
                    Some(*m.get_ref()),
                    &m.span(),
                    1..=10_000_000,
                    1,
                    "max_connections",
                ) as usize
            }),
            edge: super::edge::listener_edge(c, l),
        });
    }
    out
}

fn routes(
    c: &mut Check,
    raw: &[Spanned<raw::RawRoute>],
    listeners: &[String],
    upstreams: &[UpstreamSpec],
) -> (Vec<RouteSpec>, HashMap<String, RouteFeatures>) {
    let mut out = Vec::new();
    let mut features = HashMap::new();
    let mut names = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let r = r.get_ref();
        let name = r
            .name
            .as_ref()
            .map_or_else(|| format!("route{i}"), |n| n.get_ref().clone());
        if !names.insert(name.clone()) {
            let span = r
                .name
                .as_ref()
                .map_or_else(|| r.upstream.span(), |n| n.span());
            c.err(span, format!("duplicate route name {name:?}"));
        }
        if let Some(l) = &r.listener
            && !listeners.contains(l.get_ref())
        {
            let known = listeners;
            c.err(
                l.span(),
                format!("unknown listener {:?}; defined: {known:?}", l.get_ref()),
            );
        }
        if !upstreams.iter().any(|u| &u.name == r.upstream.get_ref()) {
            let known: Vec<&str> = upstreams.iter().map(|x| x.name.as_str()).collect();
            c.err(
                r.upstream.span(),
                format!(
                    "unknown upstream {:?}; defined: {known:?}",
                    r.upstream.get_ref()
                ),
            );
        }
        let m = &r.matcher;
        if let Some(p) = &m.path_prefix
            && !p.get_ref().starts_with('/')
        {
            c.err(p.span(), r#"path_prefix must start with "/""#);
        }
        let method = m.method.as_ref().and_then(|s| {
            match Method::from_bytes(s.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    c.err(s.span(), format!("invalid HTTP method {:?}", s.get_ref()));
                    None
                }
            }
        });
        let mut headers = Vec::new();
        for (k, v) in &m.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                c.err(v.span(), format!("invalid header name {k:?}"));
            }
            headers.push((k.to_ascii_lowercase(), v.get_ref().clone()));
        }
        let max_body_bytes = r
            .max_body_bytes
            .as_ref()
            .map_or(10 << 20, |s| s.get_ref().0);
        let retry = r.retry.as_ref().map(|rt| retry_spec(c, rt));
        let rate_limit = r.rate_limit.as_ref().and_then(|rl| rate_limit_spec(c, rl));
        let priority = match &r.priority {
            Some(p) => Priority::parse(p.get_ref()).unwrap_or_else(|| {
                c.err(
                    p.span(),
                    format!(
                        r#"priority {:?}: expected "critical", "normal" or "low""#,
                        p.get_ref()
                    ),
                );
                Priority::Normal
            }),
            None => Priority::Normal,
        };
        let rf = RouteFeatures {
            cache: r.cache.as_ref().map(|cs| super::cache::route_cache(c, cs)),
            queue: r.queue.as_ref().map(|q| super::queue::route_queue(c, q)),
        };
        if rf != RouteFeatures::default() {
            features.insert(name.clone(), rf);
        }
        out.push(RouteSpec {
            retry,
            rate_limit,
            priority,
            priority_header: r.priority_header.as_ref().map(|h| h.to_ascii_lowercase()),
            bulkhead: r.concurrency.as_ref().map(|cc| bulkhead_spec(c, cc)),
            rewrite: r
                .rewrite
                .as_ref()
                .and_then(|rw| super::edits::rewrite(c, rw, m.path_prefix.as_ref())),
            request_headers: super::edits::headers(
                c,
                r.request_headers.as_ref(),
                "request_headers",
            ),
            response_headers: super::edits::headers(
                c,
                r.response_headers.as_ref(),
                "response_headers",
            ),
            access: AccessRules {
                allow: super::edits::cidrs(c, r.allow.as_ref(), "allow"),
                deny: super::edits::cidrs(c, r.deny.as_ref(), "deny"),
            },
            compression: r
                .compression
                .as_ref()
                .map(|cs| super::cache::route_compression(c, cs)),
            fallback: r.fallback.as_ref().map(|f| {
                let s = f.span();
                let f = f.get_ref();
                let code = c.int(f.status, &s, 200..=599, 200, "fallback.status") as u16;
                FallbackSource::Static {
                    status: http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK),
                    content_type: f
                        .content_type
                        .clone()
                        .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
                    body: bytes::Bytes::from(f.body.clone()),
                }
            }),
            name,
            listener: r.listener.as_ref().map(|l| l.get_ref().clone()),
            matcher: MatchSpec {
                host: m.host.as_ref().map(|h| super::edge::match_host(c, h)),
                path_prefix: m
                    .path_prefix
                    .as_ref()
                    .map(|p| super::edge::match_path(c, p)),
                method,
                headers,
            },
            upstream: r.upstream.get_ref().clone(),
            connect_timeout: c.dur(
                &r.connect_timeout,
                Duration::from_secs(1),
                "connect_timeout",
            ),
            request_timeout: c.dur(&r.timeout, Duration::from_secs(5), "timeout"),
            read_timeout: c.dur(&r.read_timeout, Duration::from_secs(60), "read_timeout"),
            max_body_bytes,
        });
    }
    (out, features)
}

fn rate_limit_spec(c: &mut Check, rl: &Spanned<raw::RawRateLimit>) -> Option<RateLimitSpec> {
    let s = rl.span();
    let rl = rl.get_ref();
    let requests = c.int(
        Some(rl.requests),
        &s,
        1..=10_000_000,
        1,
        "rate_limit.requests",
    ) as u32;
    let burst = c.int(
        rl.burst,
        &s,
        1..=10_000_000,
        i64::from(requests),
        "rate_limit.burst",
    ) as u32;
    let per = rl.per.map_or(Duration::from_secs(1), |d| d.0);
    let mut key = Vec::new();
    for part in rl.key.as_deref().unwrap_or("ip").split('+') {
        match part.trim().split_once(':') {
            _ if part.trim() == "ip" => key.push(RateKey::Ip),
            _ if part.trim() == "route" => key.push(RateKey::Route),
            Some(("header", name)) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                key.push(RateKey::Header(name.to_ascii_lowercase()))
            }
            _ => c.err(
                s.clone(),
                format!(r#"rate_limit.key: {part:?} is not "ip", "route" or "header:NAME" (combine with +)"#),
            ),
        }
    }
    match Gcra::new(requests, per, burst) {
        Ok(gcra) => Some(RateLimitSpec {
            name: rl.name.clone().unwrap_or_else(|| "default".into()),
            gcra,
            key,
            shared: rl.shared.unwrap_or(false),
        }),
        Err(e) => {
            c.err(s, format!("rate_limit: {e}"));
            None
        }
    }
}

fn retry_spec(c: &mut Check, rt: &Spanned<raw::RawRetry>) -> RetrySpec {
    let s = rt.span();
    let rt = rt.get_ref();
    let base = rt.backoff.map_or(Duration::from_millis(25), |d| d.0);
    let cap = rt
        .max_backoff
        .map_or(Duration::from_secs(1).max(base), |d| d.0);
    let backoff = Backoff::new(base, cap).unwrap_or_else(|e| {
        c.err(s.clone(), format!("retry: {e}"));
        Backoff::default()
    });
    let statuses = match &rt.statuses {
        Some(v) => v
            .iter()
            .filter_map(|n| match u16::try_from(*n) {
                Ok(code) if (100..=599).contains(&code) => Some(code),
                _ => {
                    c.err(
                        s.clone(),
                        format!("retry.statuses: {n} is not an HTTP status"),
                    );
                    None
                }
            })
            .collect(),
        None => vec![502, 503, 504],
    };
    RetrySpec {
        policy: RetryPolicy {
            attempts: c.int(rt.attempts, &s, 1..=10, 3, "retry.attempts") as u32,
            backoff,
            max_retry_after: rt.max_retry_after.map_or(Duration::from_secs(2), |d| d.0),
            retry_statuses: statuses,
        },
        budget_percent: c.int(rt.budget_percent, &s, 0..=100, 20, "retry.budget_percent") as u32,
        min_retries_per_second: c.int(
            rt.min_retries_per_second,
            &s,
            0..=10_000,
            5,
            "retry.min_retries_per_second",
        ) as u32,
        max_body_bytes: rt.max_body_bytes.map_or(64 << 10, |b| b.0),
        per_try_timeout: rt.per_try_timeout.map(|d| d.0).filter(|d| !d.is_zero()),
    }
}

/// A bulkhead (route or upstream `concurrency`), validated.
fn bulkhead_spec(c: &mut Check, cc: &Spanned<raw::RawConcurrency>) -> BulkheadSpec {
    let s = cc.span();
    let cc = cc.get_ref();
    let max = c.int(
        Some(cc.max_in_flight),
        &s,
        1..=1_000_000,
        100,
        "concurrency.max_in_flight",
    ) as usize;
    let min = c.int(
        cc.min_limit,
        &s,
        1..=1_000_000,
        (max as i64 / 10).max(1),
        "concurrency.min_limit",
    ) as usize;
    let tolerance = cc.latency_tolerance.unwrap_or(2.0);
    if !(tolerance > 1.0 && tolerance.is_finite()) {
        c.err(
            s.clone(),
            "concurrency.latency_tolerance must be greater than 1.0",
        );
    }
    BulkheadSpec {
        max_in_flight: max,
        max_queue: c.int(cc.queue, &s, 0..=1_000_000, max as i64, "concurrency.queue") as usize,
        queue_timeout: cc.queue_timeout.map_or(Duration::from_millis(500), |d| d.0),
        adaptive: cc
            .adaptive
            .unwrap_or(false)
            .then_some((min.min(max), tolerance)),
    }
}

fn upstreams(
    c: &mut Check,
    raw: &std::collections::BTreeMap<Spanned<String>, Spanned<raw::RawUpstream>>,
    zone: Option<&str>,
    base: &std::path::Path,
) -> Vec<UpstreamSpec> {
    let mut out = Vec::new();
    for (name, u) in raw {
        let span = u.span();
        let u = u.get_ref();
        let balance = match u.balance.unwrap_or(RawBalance::RoundRobin) {
            RawBalance::RoundRobin => Balance::RoundRobin,
            RawBalance::Weighted => Balance::Weighted,
            RawBalance::LeastConn => Balance::LeastConn,
            RawBalance::P2cEwma => Balance::P2cEwma,
            RawBalance::IpHash => Balance::IpHash,
            RawBalance::Cookie => Balance::Cookie,
            RawBalance::ConsistentHash => Balance::ConsistentHash,
        };
        let hash_on = u.hash_on.as_ref().and_then(|h| {
            let v = h.get_ref();
            match v.split_once(':') {
                _ if v == "path" => Some(HashOn::Path),
                Some(("header", n)) if http::HeaderName::from_bytes(n.as_bytes()).is_ok() => Some(HashOn::Header(n.to_ascii_lowercase())),
                Some(("cookie", n)) if !n.is_empty() => Some(HashOn::Cookie(n.to_string())),
                _ => {
                    c.err(h.span(), format!(r#"invalid hash_on {v:?}: expected "path", "header:NAME" or "cookie:NAME""#));
                    None
                }
            }
        });
        if hash_on.is_some() && balance != Balance::ConsistentHash {
            c.err(
                u.hash_on.as_ref().map_or(span.clone(), |h| h.span()),
                r#"hash_on only applies with balance = "consistent_hash""#,
            );
        }
        if u.endpoints.is_empty() && u.dns.is_none() {
            c.err(
                span.clone(),
                format!(
                    "upstream {:?} has no endpoints (list them, or find them with dns = {{ name = \"host:port\" }})",
                    name.get_ref()
                ),
            );
        }
        let mut seen = HashSet::new();
        let mut endpoints = Vec::new();
        for e in &u.endpoints {
            let (addr, weight, zone) = match e.get_ref() {
                RawEndpoint::Addr(a) => (a.clone(), None, None),
                RawEndpoint::Full(t) => (t.addr.clone(), t.weight, t.zone.clone()),
            };
            let port_ok = addr.rsplit_once(':').is_some_and(|(h, p)| {
                super::edge::valid_host(h) && p.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                let scheme = match addr.contains("://") {
                    true => " (no scheme: TLS to endpoints is upstreams.tls)",
                    false => "",
                };
                c.err(
                    e.span(),
                    format!(
                        r#"endpoint {addr:?} must be "host:port", e.g. "10.0.0.1:8000"{scheme}"#
                    ),
                );
            }
            if !seen.insert(addr.clone()) {
                c.err(e.span(), format!("duplicate endpoint {addr:?}"));
            }
            let weight = c.int(weight, &e.span(), 1..=1000, 1, "weight") as u32;
            endpoints.push(EndpointSpec { addr, weight, zone });
        }
        let health = u.health.as_ref().map(|h| {
            let s = h.span();
            let h = h.get_ref();
            let path = h.path.clone().unwrap_or_else(|| "/health".into());
            if !path.starts_with('/') {
                c.err(s.clone(), r#"health.path must start with "/""#);
            }
            let interval = h.interval.map_or(Duration::from_secs(2), |d| d.0);
            let timeout = h.timeout.map_or(Duration::from_secs(1), |d| d.0);
            if interval.is_zero() || timeout.is_zero() {
                c.err(
                    s.clone(),
                    "health.interval and health.timeout must be greater than zero",
                );
            }
            HealthPolicy {
                path,
                interval,
                timeout,
                healthy_after: c.int(h.healthy_after, &s, 1..=100, 2, "health.healthy_after")
                    as u32,
                unhealthy_after: c.int(h.unhealthy_after, &s, 1..=100, 3, "health.unhealthy_after")
                    as u32,
            }
        });
        let outlier = u.passive.as_ref().map_or_else(OutlierPolicy::default, |p| {
            let s = p.span();
            let p = p.get_ref();
            let d = OutlierPolicy::default();
            let o = OutlierPolicy {
                consecutive_failures: c.int(
                    p.consecutive_failures,
                    &s,
                    0..=1000,
                    5,
                    "passive.consecutive_failures",
                ) as u32,
                base_ejection: p.base_ejection.map_or(d.base_ejection, |x| x.0),
                max_ejection: p.max_ejection.map_or(d.max_ejection, |x| x.0),
                failure_rate_percent: c.int(
                    p.failure_rate_percent,
                    &s,
                    0..=100,
                    0,
                    "passive.failure_rate_percent",
                ) as u32,
                min_requests: c.int(
                    p.min_requests,
                    &s,
                    1..=1_000_000,
                    i64::from(d.min_requests),
                    "passive.min_requests",
                ) as u32,
                window: p.window.map_or(d.window, |x| x.0),
                half_open_probes: c.int(
                    p.half_open_probes,
                    &s,
                    1..=1000,
                    1,
                    "passive.half_open_probes",
                ) as u32,
                max_ejection_percent: c.int(
                    p.max_ejection_percent,
                    &s,
                    0..=100,
                    i64::from(d.max_ejection_percent),
                    "passive.max_ejection_percent",
                ) as u32,
            };
            if o.max_ejection < o.base_ejection {
                c.err(
                    s,
                    "passive.max_ejection must be at least passive.base_ejection",
                );
            }
            o
        });
        let pool = u.pool.as_ref().map_or_else(PoolSpec::default, |p| {
            let s = p.span();
            let p = p.get_ref();
            let d = PoolSpec::default();
            PoolSpec {
                max_per_endpoint: c.int(
                    p.max_per_endpoint,
                    &s,
                    1..=100_000,
                    d.max_per_endpoint as i64,
                    "pool.max_per_endpoint",
                ) as usize,
                idle_timeout: p.idle_timeout.map_or(d.idle_timeout, |x| x.0),
                max_idle_per_endpoint: c.int(
                    p.max_idle_per_endpoint,
                    &s,
                    0..=100_000,
                    d.max_idle_per_endpoint as i64,
                    "pool.max_idle_per_endpoint",
                ) as usize,
                max_response_headers: c.int(
                    p.max_response_headers,
                    &s,
                    8..=10_000,
                    d.max_response_headers as i64,
                    "pool.max_response_headers",
                ) as usize,
                max_response_header_bytes: match p.max_response_header_bytes {
                    Some(b) if !(1024..=(16 << 20)).contains(&b.0) => {
                        c.err(
                            s,
                            "pool.max_response_header_bytes must be between 1KiB and 16MiB",
                        );
                        d.max_response_header_bytes
                    }
                    Some(b) => b.0 as usize,
                    None => d.max_response_header_bytes,
                },
            }
        });
        let panic_threshold_percent = match &u.panic_threshold {
            Some(p) => c.int(
                Some(*p.get_ref()),
                &p.span(),
                0..=100,
                50,
                "panic_threshold",
            ) as u32,
            None => 50,
        };
        let dns = u.dns.as_ref().map(|d| super::dns::dns(c, d));
        let protocol = match u.protocol {
            Some(RawProtocol::H2c | RawProtocol::H2) => UpstreamProtocol::Http2,
            _ => UpstreamProtocol::Http1,
        };
        out.push(UpstreamSpec {
            name: name.get_ref().clone(),
            balance,
            hash_on,
            sticky_cookie: u.cookie.as_ref().map_or_else(
                || "sg_sticky".into(),
                |s| {
                    if !cookie_name(s.get_ref()) {
                        c.err(
                            s.span(),
                            format!(
                                "cookie {:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                                s.get_ref()
                            ),
                        );
                    }
                    s.get_ref().clone()
                },
            ),
            health,
            outlier,
            slow_start: u.slow_start.as_ref().map(|s| s.get_ref().0),
            panic_threshold_percent,
            pool,
            protocol,
            tls: u
                .tls
                .as_ref()
                .and_then(|t| upstream_tls(c, t, protocol, &endpoints, base)),
            zone_affinity: super::zone::affinity(
                c,
                u.zone_affinity.as_ref(),
                zone,
                &endpoints,
                dns.as_ref().and_then(|d| d.zone.as_deref()),
            ),
            dns,
            endpoints,
            bulkhead: u.concurrency.as_ref().map(|cc| bulkhead_spec(c, cc)),
        });
    }
    out
}

/// An upstream's `tls` table: files read and the client config built now, so a bad file is a
/// config error with its line, not a failure on the first request.
/// Whether `n` is a cookie name (an RFC 9110 token, as RFC 6265 asks).
fn cookie_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn upstream_tls(
    c: &mut Check,
    t: &Spanned<raw::RawUpstreamTls>,
    protocol: UpstreamProtocol,
    endpoints: &[EndpointSpec],
    base: &std::path::Path,
) -> Option<UpstreamTls> {
    let span = t.span();
    let t = t.get_ref();
    let read = |p: &str| std::fs::read(base.join(p)).map_err(|e| format!("cannot read {p:?}: {e}"));
    let built = (|| {
        let ca = t.ca.as_deref().map(read).transpose()?;
        let client = match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => {
                return Err(
                    "cert and key go together (a client certificate for mutual TLS)".into(),
                );
            }
        };
        if t.server_name.is_none()
            && let Some(bad) = endpoints.iter().find(|e| {
                rustls_pki_types::ServerName::try_from(scalegate_http::dial::host_of(&e.addr))
                    .is_err()
            })
        {
            return Err(format!(
                "endpoint {:?} has no host name to verify; set tls.server_name",
                bad.addr
            ));
        }
        UpstreamTls::new(&TlsMaterial { ca, client }, t.server_name.clone(), protocol)
    })();
    built.map_err(|e| c.err(span, format!("tls: {e}"))).ok()
}
