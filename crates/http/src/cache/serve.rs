//! The cache on the request path, between admission and the origin:
//!
//! 1. requests the cache does not answer (other methods, a body, bypass rules) go straight to
//!    the origin; unsafe methods that succeed invalidate their URL, Location and
//!    Content-Location;
//! 2. lookup: memory, then Redis; a fresh variant is served (a conditional request may get
//!    304); one within stale-while-revalidate is served and refreshed in the background;
//! 3. otherwise one request per key goes to the origin (coalescing), conditional when a stale
//!    copy has validators; the others wait and look again;
//! 4. the answer: 304 refreshes the stored copy; an origin failure serves stale when
//!    stale-if-error (or a soft purge) allows; a storable response is compressed if the route
//!    says so, then streamed to the client while it is copied into the store.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use http_cache_semantics::{CacheOptions, CachePolicy};
use hyper::body::Incoming;

use super::compress;
use super::flight::{self, FlightGuard, Join};
use super::key;
use super::object::{Object, Usable, merge_not_modified};
use super::spec::{CacheSpec, Encoding};
use super::status::{self, Fwd};
use super::store::Store;
use crate::body::{RespBody, Sink, Tee};
use crate::error::ProxyError;
use crate::gateway::Snapshot;
use crate::metrics::CacheResult;
use crate::proxy::{self, Admitted, Completion, ConnCtx, copy_head};
use crate::router::{Route, request_host};

/// Everything a cached request needs to reach the origin.
#[derive(Clone)]
struct Cx {
    ctx: Arc<ConnCtx>,
    snap: Arc<Snapshot>,
    route: Arc<Route>,
    store: Arc<Store>,
    admitted: Admitted,
}

type Served = Result<Response<RespBody>, (ProxyError, Completion)>;

/// Times a follower waits for a leader and looks again before going to the origin itself.
const MAX_WAITS: usize = 3;

impl Cx {
    fn spec(&self) -> &CacheSpec {
        // Only routes with a cache spec reach this module.
        static NONE: std::sync::OnceLock<CacheSpec> = std::sync::OnceLock::new();
        self.route
            .spec
            .cache
            .as_ref()
            .unwrap_or_else(|| NONE.get_or_init(CacheSpec::default))
    }

    fn encodings(&self) -> &[Encoding] {
        self.route
            .spec
            .compression
            .as_ref()
            .map_or(&[Encoding::Br, Encoding::Zstd, Encoding::Gzip], |c| {
                c.encodings.as_slice()
            })
    }

    async fn origin(
        &self,
        parts: http::request::Parts,
        body: Option<Incoming>,
        done: Completion,
    ) -> Served {
        proxy::origin(
            &self.ctx,
            &self.snap,
            &self.route,
            parts,
            body,
            self.admitted.clone(),
            done,
        )
        .await
    }
}

/// Serves a request on a caching route.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    ctx: &Arc<ConnCtx>,
    snap: &Arc<Snapshot>,
    route: &Arc<Route>,
    store: &Arc<Store>,
    parts: http::request::Parts,
    body: Incoming,
    admitted: Admitted,
    done: Completion,
) -> Served {
    let cx = Cx {
        ctx: ctx.clone(),
        snap: snap.clone(),
        route: route.clone(),
        store: store.clone(),
        admitted,
    };
    let method = parts.method.clone();
    if method != Method::GET && method != Method::HEAD {
        return pass_unsafe(&cx, parts, body, done).await;
    }
    if !body.is_end_stream() || key::bypassed(&cx.spec().bypass, parts.uri.path(), &parts.headers) {
        route.metrics.cache(CacheResult::Bypass);
        let r = cx.origin(parts.clone(), Some(body), done).await;
        return r.map(|r| finish_forwarded(&cx, &parts, r, Fwd::Bypass));
    }
    lookup(&cx, parts, done).await
}

/// Non-GET/HEAD: forwarded; a success of an unsafe method invalidates the URLs it names
/// (RFC 9111 §4.4).
async fn pass_unsafe(
    cx: &Cx,
    parts: http::request::Parts,
    body: Incoming,
    done: Completion,
) -> Served {
    let safe = matches!(parts.method, Method::OPTIONS | Method::TRACE);
    let host = request_host(&parts.uri, &parts.headers).map(str::to_string);
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let resp = cx.origin(parts, Some(body), done).await?;
    let st = resp.status();
    if !safe && (st.is_success() || st.is_redirection()) {
        let mut urls = vec![pq];
        for h in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(v) = resp.headers().get(h).and_then(|v| v.to_str().ok()) {
                let (h2, p) = super::purge::split_url(v);
                // Only URLs on the same host may be invalidated.
                if h2.is_none() || h2 == host.as_deref().map(str::to_ascii_lowercase) {
                    urls.push(p);
                }
            }
        }
        for u in urls {
            let target = match &host {
                Some(h) => format!("{h}{u}"),
                None => u,
            };
            let p = super::purge::Purge {
                target: super::purge::Target::Url(target),
                soft: false,
            };
            cx.store.purge_local(&p);
            if let Some(l2) = cx.store.l2.clone() {
                tokio::spawn(async move { l2.purge(&p).await });
            }
        }
    }
    Ok(resp)
}

async fn lookup(cx: &Cx, parts: http::request::Parts, done: Completion) -> Served {
    let spec = cx.spec();
    let host = request_host(&parts.uri, &parts.headers);
    let url: Arc<str> = key::url_key(&spec.key, host, parts.uri.path(), parts.uri.query()).into();
    let mut waited = 0;
    loop {
        let now = SystemTime::now();
        let mut variants = cx.store.get(&url);
        if variants.is_none()
            && let Some(l2) = &cx.store.l2
            && let Some((vary, objects)) = l2.get(&url, &url).await
        {
            for o in objects.into_iter().rev() {
                cx.store.put(vary.clone(), Arc::new(o));
            }
            variants = cx.store.get(&url);
        }
        let vary = variants
            .as_ref()
            .map(|v| v.vary.clone())
            .unwrap_or_default();
        let variant = key::variant(&spec.key, &vary, &parts.headers, cx.encodings());
        let found = variants.as_ref().and_then(|v| v.find(&variant).cloned());
        let usable = found.as_ref().map(|o| o.usable(&parts.headers, now));
        let detail = (waited > 0).then_some("coalesced");
        match (&found, usable) {
            (Some(o), Some(Usable::Fresh)) => {
                cx.route.metrics.cache(if waited > 0 {
                    CacheResult::Coalesced
                } else {
                    CacheResult::Hit
                });
                let cs = status::hit(o.ttl_secs(now), detail);
                return Ok(from_object(o, &parts.headers, cs, done));
            }
            (Some(o), Some(Usable::StaleWhileRevalidate)) => {
                cx.route.metrics.cache(CacheResult::Stale);
                if let Join::Leader(guard) = cx.store.join(flight_key(&url, &variant)) {
                    refresh_in_background(cx, &parts, o.clone(), guard);
                }
                let cs = status::hit(o.ttl_secs(now), Some("stale-while-revalidate"));
                return Ok(from_object(o, &parts.headers, cs, done));
            }
            _ => {}
        }
        let fwd = match (&found, &variants) {
            (Some(o), _) if o.usable(&HeaderMap::new(), now) == Usable::Fresh => Fwd::Request,
            (Some(_), _) => Fwd::Stale,
            (None, Some(_)) => Fwd::VaryMiss,
            (None, None) => Fwd::UriMiss,
        };
        // HEAD is answered from a stored GET, but a HEAD miss never fills the store.
        if parts.method == Method::HEAD {
            cx.route.metrics.cache(CacheResult::Miss);
            let r = cx.origin(parts.clone(), None, done).await;
            return r.map(|r| finish_forwarded(cx, &parts, r, fwd));
        }
        let fkey = flight_key(&url, &variant);
        if cx.store.is_pass(&fkey) {
            cx.route.metrics.cache(CacheResult::Pass);
            return fetch(cx, parts, url, found, None, fwd, done).await;
        }
        match cx.store.join(fkey) {
            Join::Leader(guard) => {
                return fetch(cx, parts, url, found, Some(guard), fwd, done).await;
            }
            Join::Follower(rx) if waited < MAX_WAITS => {
                waited += 1;
                let limit = cx.route.spec.request_timeout;
                if tokio::time::timeout(limit, flight::wait(rx)).await.is_err() {
                    waited = MAX_WAITS;
                }
            }
            Join::Follower(_) => return fetch(cx, parts, url, found, None, fwd, done).await,
        }
    }
}

fn flight_key(url: &str, variant: &str) -> String {
    format!("{url}\u{0}{variant}")
}

/// Goes to the origin for a key (as its leader, or alone), and handles the answer.
async fn fetch(
    cx: &Cx,
    parts: http::request::Parts,
    url: Arc<str>,
    stale: Option<Arc<Object>>,
    guard: Option<FlightGuard>,
    fwd: Fwd,
    done: Completion,
) -> Served {
    let spec = cx.spec();
    let mut up = copy_head(&parts);
    up.method = Method::GET;
    let h = &mut up.headers;
    // The store wants a full response; the client's own conditionals are answered from it.
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        h.remove(name);
    }
    if let Some(o) = &stale {
        if let Some(etag) = o.headers.get(header::ETAG) {
            h.insert(header::IF_NONE_MATCH, etag.clone());
        } else if let Some(lm) = o.headers.get(header::LAST_MODIFIED) {
            h.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let now = SystemTime::now();
    let resp = match cx.origin(up, None, done).await {
        Ok(r) => r,
        Err((e, done)) => {
            return match stale.filter(|o| o.serves_on_error(now)) {
                Some(o) => {
                    cx.route.metrics.cache(CacheResult::StaleIfError);
                    let cs = status::hit(o.ttl_secs(now), Some("stale-if-error"));
                    Ok(from_object(&o, &parts.headers, cs, done))
                }
                None => Err((e, done)),
            };
        }
    };
    let (mut head, mut body) = resp.into_parts();
    let now = SystemTime::now();
    if let Some(o) = &stale {
        if head.status == StatusCode::NOT_MODIFIED {
            cx.route.metrics.cache(CacheResult::Revalidated);
            let headers = merge_not_modified(&o.headers, &head.headers);
            let policy = policy_for(&parts, o.status, &headers, now);
            let fresh = Arc::new(o.refreshed(policy, headers, ttl_override(spec, &parts)));
            let vary = key::vary_names(&fresh.headers).unwrap_or_default();
            put(cx, vary, fresh.clone());
            body.set_status(fresh.status.as_u16());
            let cs = status::forward(Fwd::Stale, Some(304), true, None);
            return Ok(from_served(&fresh, &parts.headers, cs, body));
        }
        if head.status.is_server_error() && o.serves_on_error(now) {
            cx.route.metrics.cache(CacheResult::StaleIfError);
            body.set_status(o.status.as_u16());
            let cs = status::hit(o.ttl_secs(now), Some("stale-if-error"));
            return Ok(from_served(o, &parts.headers, cs, body));
        }
    }
    cx.route.metrics.cache(CacheResult::Miss);
    if let Some(cs) = cx.route.spec.compression.as_ref() {
        body = compress::apply(cs, &parts.headers, &parts.method, &mut head, body).0;
    }
    let status_code = head.status.as_u16();
    let stored = match (guard, storable(spec, &parts, &head, now)) {
        (Some(guard), Ok((vary, policy))) => {
            cx.route.metrics.cache(CacheResult::Stored);
            let variant = key::variant(&spec.key, &vary, &parts.headers, cx.encodings());
            let mut headers = head.headers.clone();
            headers.remove(header::SET_COOKIE);
            let fill = Fill {
                store: cx.store.clone(),
                vary,
                status: head.status,
                headers,
                policy: Some(policy),
                ttl: ttl_override(spec, &parts),
                defaults: (spec.stale_while_revalidate, spec.stale_if_error, spec.keep),
                url,
                variant,
                chunks: BytesMut::new(),
                limit: spec.max_object_bytes as usize,
                _guard: guard,
            };
            body = tee(body, Box::new(fill));
            true
        }
        (Some(guard), Err(Uncacheable::Response)) => {
            // Hit-for-pass: for a while, requests for this key go straight to the origin
            // instead of queueing behind one another.
            cx.store.mark_pass(flight_key(
                &url,
                &key::variant(&spec.key, &[], &parts.headers, cx.encodings()),
            ));
            drop(guard);
            false
        }
        _ => false,
    };
    head.headers.insert(
        CACHE_STATUS.clone(),
        status::forward(fwd, Some(status_code), stored, None),
    );
    Ok(Response::from_parts(head, body))
}

static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a response is not stored.
enum Uncacheable {
    /// The response's own headers forbid it (hit-for-pass applies).
    Response,
    /// Too big to store.
    Size,
}

/// Whether the response may be stored; its Vary list and policy when so.
fn storable(
    spec: &CacheSpec,
    req: &http::request::Parts,
    head: &http::response::Parts,
    now: SystemTime,
) -> Result<(Vec<HeaderName>, CachePolicy), Uncacheable> {
    let h = &head.headers;
    if h.contains_key(header::SET_COOKIE) && !spec.share_set_cookie {
        return Err(Uncacheable::Response);
    }
    // The store keeps body bytes only: a hit would lose the trailer fields (a gRPC status, a
    // checksum) the response declares.
    if h.contains_key(header::TRAILER) {
        return Err(Uncacheable::Response);
    }
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > spec.max_object_bytes) {
        return Err(Uncacheable::Size);
    }
    let vary = key::vary_names(h).ok_or(Uncacheable::Response)?;
    let policy = policy_for(req, head.status, h, now);
    if !policy.is_storable() {
        return Err(Uncacheable::Response);
    }
    let lifetime = ttl_override(spec, req).unwrap_or_else(|| policy.time_to_live(now));
    let validators = h.contains_key(header::ETAG) || h.contains_key(header::LAST_MODIFIED);
    if lifetime.is_zero() && !validators {
        return Err(Uncacheable::Response);
    }
    Ok((vary, policy))
}

/// The RFC 9111 policy of a response, as a shared cache (Set-Cookie is never stored, so it is
/// left out of the evaluation when the route shares such responses).
fn policy_for(
    req: &http::request::Parts,
    status: StatusCode,
    h: &HeaderMap,
    now: SystemTime,
) -> CachePolicy {
    let mut r = Response::new(());
    *r.status_mut() = status;
    *r.headers_mut() = h.clone();
    r.headers_mut().remove(header::SET_COOKIE);
    let mut q = Request::new(());
    *q.method_mut() = Method::GET;
    *q.uri_mut() = req.uri.clone();
    *q.headers_mut() = req.headers.clone();
    CachePolicy::new_options(&q, &r, now, CacheOptions::default())
}

/// The route's fixed TTL for this path, if a rule sets one.
fn ttl_override(spec: &CacheSpec, req: &http::request::Parts) -> Option<Duration> {
    let path = req.uri.path();
    spec.rules
        .iter()
        .find(|r| path.starts_with(r.path_prefix.as_str()))
        .and_then(|r| r.ttl)
}

fn put(cx: &Cx, vary: Vec<HeaderName>, obj: Arc<Object>) {
    if let Some(l2) = &cx.store.l2 {
        l2.put(&vary, &obj);
    }
    cx.store.put(vary, obj);
}

/// Refreshes a stale-while-revalidate object without making the client wait.
fn refresh_in_background(
    cx: &Cx,
    parts: &http::request::Parts,
    stale: Arc<Object>,
    guard: FlightGuard,
) {
    let cx = cx.clone();
    let parts = copy_head(parts);
    tokio::spawn(async move {
        let done = Completion::background(&cx.ctx, &cx.route);
        let url = stale.url.clone();
        if let Ok(resp) = fetch(&cx, parts, url, Some(stale), Some(guard), Fwd::Stale, done).await {
            // Reading the body to its end is what stores it.
            let _ = resp.into_body().collect().await;
        }
    });
}

/// A response from a stored object, the request finished at once.
fn from_object(
    o: &Object,
    req: &HeaderMap,
    cs: HeaderValue,
    mut done: Completion,
) -> Response<RespBody> {
    let resp = build(o, req, cs);
    done.set_status(resp.status().as_u16());
    done.count_bytes(o.body.len() as u64);
    done.finish(true);
    resp
}

/// A response from a stored object while an upstream exchange (a 304 or a failed answer)
/// finishes its bookkeeping as it is dropped.
fn from_served(
    o: &Object,
    req: &HeaderMap,
    cs: HeaderValue,
    upstream: RespBody,
) -> Response<RespBody> {
    drop(upstream);
    build(o, req, cs)
}

fn build(o: &Object, req: &HeaderMap, cs: HeaderValue) -> Response<RespBody> {
    o.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = SystemTime::now();
    let mut headers = o.response_headers(now);
    headers.insert(CACHE_STATUS.clone(), cs);
    let (status, body) = if o.not_modified_for(req) && o.status == StatusCode::OK {
        headers.remove(header::CONTENT_LENGTH);
        (StatusCode::NOT_MODIFIED, RespBody::Full(None))
    } else {
        (o.status, RespBody::full(o.body.clone()))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// Adds Cache-Status (and compression) to a response the cache did not touch.
fn finish_forwarded(
    cx: &Cx,
    req: &http::request::Parts,
    r: Response<RespBody>,
    fwd: Fwd,
) -> Response<RespBody> {
    let (mut head, mut body) = r.into_parts();
    if let Some(cs) = cx.route.spec.compression.as_ref() {
        body = compress::apply(cs, &req.headers, &req.method, &mut head, body).0;
    }
    let st = head.status.as_u16();
    head.headers.insert(
        CACHE_STATUS.clone(),
        status::forward(fwd, Some(st), false, None),
    );
    Response::from_parts(head, body)
}

/// Copies a body into the store as it streams to the client.
struct Fill {
    store: Arc<Store>,
    vary: Vec<HeaderName>,
    status: StatusCode,
    headers: HeaderMap,
    policy: Option<CachePolicy>,
    ttl: Option<Duration>,
    defaults: (Duration, Duration, Duration),
    url: Arc<str>,
    variant: String,
    chunks: BytesMut,
    limit: usize,
    _guard: FlightGuard,
}

impl Sink for Fill {
    fn data(&mut self, chunk: &Bytes) -> bool {
        if self.chunks.len() + chunk.len() > self.limit {
            // Too big: pass it through; the next request for the key goes forward alone.
            self.store.mark_pass(flight_key(&self.url, &self.variant));
            return false;
        }
        self.chunks.extend_from_slice(chunk);
        true
    }

    fn end(mut self: Box<Self>) {
        let Some(policy) = self.policy.take() else {
            return;
        };
        let obj = Arc::new(Object::new(
            self.status,
            std::mem::take(&mut self.headers),
            std::mem::take(&mut self.chunks).freeze(),
            policy,
            self.ttl,
            self.defaults,
            self.url.clone(),
            std::mem::take(&mut self.variant),
        ));
        let vary = std::mem::take(&mut self.vary);
        if let Some(l2) = &self.store.l2 {
            l2.put(&vary, &obj);
        }
        self.store.put(vary, obj);
        // The guard drops with `self`, after the object is in: followers find it.
    }
}

/// Tees `body` into `sink`; an empty body is stored at once (it will never be polled).
fn tee(body: RespBody, sink: Box<dyn Sink>) -> RespBody {
    if body.is_end_stream() {
        sink.end();
        return body;
    }
    RespBody::Tee(Box::new(Tee {
        inner: body,
        sink: Some(sink),
    }))
}
