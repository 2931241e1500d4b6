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
use std::time::SystemTime;

use bytes::BytesMut;
use http::header;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::answer::{self, CACHE_STATUS, from_object, from_served};
use super::fill::{Fill, tee};
use super::flight::{self, FlightGuard, Join};
use super::key;
use super::object::{Object, Usable, Variants};
use super::revalidate::{NotModified, Revalidated};
use super::spec::CacheSpec;
use super::status::{self, Fwd};
use super::store::Store;
use super::verdict::Answer;
use scalegate_http::body::RespBody;
use scalegate_http::cache_control::Directives;
use scalegate_http::compress;
use scalegate_http::compress::Encoding;
use scalegate_http::error::ProxyError;
use scalegate_http::gateway::Snapshot;
use scalegate_http::metrics::CacheResult;
use scalegate_http::plug::{BoxFut, Dispatch, RouteHandler, Served};
use scalegate_http::proxy::{self, Admitted, Completion, ConnCtx, copy_head};
use scalegate_http::router::{Route, request_host};

/// Everything a cached request needs to reach the origin.
#[derive(Clone)]
struct Cx {
    ctx: Arc<ConnCtx>,
    snap: Arc<Snapshot>,
    route: Arc<Route>,
    spec: Arc<CacheSpec>,
    store: Arc<Store>,
    admitted: Admitted,
}

/// Times a follower waits for a leader and looks again before going to the origin itself.
const MAX_WAITS: usize = 3;

impl Cx {
    fn spec(&self) -> &CacheSpec {
        &self.spec
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

/// A caching route's handler: its cache settings and the store every caching route shares.
#[derive(Debug)]
pub struct CachedRoute {
    /// The route's cache settings.
    pub spec: Arc<CacheSpec>,
    /// The store.
    pub store: Arc<Store>,
}

impl RouteHandler for CachedRoute {
    fn serve<'a>(
        &'a self,
        d: Dispatch<'a>,
        parts: http::request::Parts,
        body: Incoming,
        done: Completion,
    ) -> BoxFut<'a, Served> {
        // Boxed: the cache's future is large, and inline it would size every request's.
        Box::pin(serve(d, self, parts, body, done))
    }

    fn takes_upgrades(&self) -> bool {
        false
    }
}

/// Serves a request on a caching route.
async fn serve(
    d: Dispatch<'_>,
    cached: &CachedRoute,
    parts: http::request::Parts,
    body: Incoming,
    done: Completion,
) -> Served {
    let route = d.route;
    let cx = Cx {
        ctx: d.ctx.clone(),
        snap: d.snap.clone(),
        route: route.clone(),
        spec: cached.spec.clone(),
        store: cached.store.clone(),
        admitted: d.admitted,
    };
    let method = parts.method.clone();
    let served = if method != Method::GET && method != Method::HEAD {
        pass_unsafe(&cx, parts, body, done).await
    } else if !body.is_end_stream()
        || key::bypassed(&cx.spec().bypass, parts.uri.path(), &parts.headers)
    {
        route.metrics.cache(CacheResult::Bypass);
        let r = cx.origin(parts.clone(), Some(body), done).await;
        r.map(|r| finish_forwarded(&cx, &parts, r, Fwd::Bypass))
    } else {
        lookup(&cx, parts, done).await
    };
    let spec = cx.spec();
    if !spec.strip_targets {
        return served;
    }
    // Targeted fields (RFC 9213) are for this cache; the stored copy keeps them, clients
    // do not see them.
    served.map(|mut r| {
        for t in &spec.targets {
            r.headers_mut().remove(t);
        }
        r
    })
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
    let resp = cx.origin(parts.clone(), Some(body), done).await?;
    let st = resp.status();
    if !safe && (st.is_success() || st.is_redirection()) {
        let rules = cx.ctx.rules.load_full();
        let normalize = &rules.edge.normalize;
        let mut urls = Vec::with_capacity(3);
        for h in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(v) = resp.headers().get(h).and_then(|v| v.to_str().ok())
                && let Some(p) = super::purge::same_host_target(host.as_deref(), &pq, v, normalize)
            {
                urls.push(p);
            }
        }
        urls.push(pq);
        for u in urls {
            let target = match &host {
                Some(h) => format!("{h}{u}"),
                None => u,
            };
            super::purger::invalidate_url(&cx.store, target);
        }
    }
    // Cache-Status on every response of a caching route (README), these too.
    Ok(finish_forwarded(cx, &parts, resp, Fwd::Bypass))
}

/// Reads the URL's variants from the Redis tier into memory; whether any was added. With
/// `held` (what memory has), only the variants memory lacks are taken, and only under the same
/// Vary list (another list would replace what memory holds).
async fn from_l2(cx: &Cx, url: &Arc<str>, now: SystemTime, held: Option<&Variants>) -> bool {
    let Some(l2) = &cx.store.l2 else {
        return false;
    };
    let Some((vary, objects)) = l2.get(url, url).await else {
        return false;
    };
    if held.is_some_and(|h| h.vary != vary) {
        return false;
    }
    let mut added = false;
    for o in objects.into_iter().rev() {
        if held.is_some_and(|h| h.find(&o.variant).is_some()) {
            continue;
        }
        // A purge applied while Redis answered: the copy read may predate it.
        if !cx.store.purged_since(now, &o) {
            cx.store.put(vary.clone(), Arc::new(o));
            added = true;
        }
    }
    added
}

/// This request's variant key among `variants`, and the stored object for it. The key knows
/// only the coding the gateway would choose: a coding the origin chose for another client's
/// Accept-Encoding is not served to one that cannot decode it.
fn pick(
    cx: &Cx,
    parts: &http::request::Parts,
    variants: Option<&Variants>,
) -> (String, Option<Arc<Object>>) {
    let vary = variants.map(|v| v.vary.clone()).unwrap_or_default();
    let variant = key::variant(
        &cx.spec().key,
        &vary,
        (parts, cx.ctx.local_port, &cx.route.spec.name),
        cx.encodings(),
    );
    let found = variants
        .and_then(|v| v.find(&variant).cloned())
        .filter(|o| {
            o.headers
                .get(header::CONTENT_ENCODING)
                .is_none_or(|c| compress::accepts(&parts.headers, c))
        });
    (variant, found)
}

async fn lookup(cx: &Cx, mut parts: http::request::Parts, done: Completion) -> Served {
    let spec = cx.spec();
    let host = request_host(&parts.uri, &parts.headers);
    let url: Arc<str> = key::url_key(&spec.key, host, parts.uri.path(), parts.uri.query()).into();
    let mut waited = 0;
    // The route's timeout covers every wait behind another request and the client's own trip
    // to the origin after it: a probe's clients waited up to four timeouts.
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        let now = SystemTime::now();
        let mut variants = cx.store.get(&url);
        if variants.is_none() && from_l2(cx, &url, now, None).await {
            variants = cx.store.get(&url);
        }
        let (mut variant, mut found) = pick(cx, &parts, variants.as_deref());
        // Memory has the URL but not this variant: another instance may have stored it (a
        // probe's finding: a second variant went to the origin although Redis had it).
        if found.is_none()
            && let Some(held) = variants.as_deref()
            && from_l2(cx, &url, now, Some(held)).await
        {
            variants = cx.store.get(&url);
            (variant, found) = pick(cx, &parts, variants.as_deref());
        }
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
                return Ok(from_object(o, &parts, cs, done));
            }
            (Some(o), Some(Usable::StaleWhileRevalidate)) => {
                cx.route.metrics.cache(CacheResult::Stale);
                if let Join::Leader(guard) = cx.store.join(flight::key(&url, &variant)) {
                    refresh_in_background(cx, &parts, o.clone(), guard);
                }
                let cs = status::hit(o.ttl_secs(now), Some("stale-while-revalidate"));
                return Ok(from_object(o, &parts, cs, done));
            }
            _ => {}
        }
        if Directives::of(&parts.headers).only_if_cached {
            // Nothing usable, and the client forbids going to the origin (RFC 9111 §5.2.1.7).
            cx.route.metrics.cache(CacheResult::Miss);
            return Ok(answer::only_if_cached(done));
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
        let fkey = flight::key(&url, &variant);
        if cx.store.is_pass(&fkey) {
            // Hit-for-miss: no queue behind one another, but a response that may be stored
            // now is (it was stored only once the mark ran out, 10 s after one uncacheable
            // answer, a 5xx during a deploy say).
            cx.route.metrics.cache(CacheResult::Pass);
            let lone = cx.store.detached(fkey);
            return fetch(cx, parts, url, found, Some(lone), fwd, done).await;
        }
        match cx.store.join(fkey) {
            Join::Leader(guard) => {
                return fetch(cx, parts, url, found, Some(guard), fwd, done).await;
            }
            Join::Follower(rx) if waited < MAX_WAITS => {
                waited += 1;
                let from = *since.get_or_insert_with(|| {
                    let now = tokio::time::Instant::now();
                    parts.extensions.insert(proxy::WaitedSince(now));
                    now
                });
                let deadline = from + cx.route.spec.request_timeout;
                match flight::wait(rx, deadline).await {
                    Err(_) => {
                        cx.route.metrics.cache(CacheResult::Miss);
                        return Err((ProxyError::UpstreamTimeout, done));
                    }
                    // The origin answered the leader, whose body then broke off (a regression
                    // hunt's finding: its followers got 504 at once): this request starts
                    // over, its deadline from now.
                    Ok(true) => {
                        since = None;
                        parts.extensions.remove::<proxy::WaitedSince>();
                    }
                    Ok(false) => {}
                }
            }
            Join::Follower(_) => return fetch(cx, parts, url, found, None, fwd, done).await,
        }
    }
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
    h.remove(header::IF_RANGE);
    // Revalidating a stored response: our validators, not the client's (its conditionals are
    // then answered from the refreshed response). With nothing stored, the client's own are
    // forwarded: a 304 goes back to it as it is, a 200 is stored.
    if let Some(o) = &stale {
        h.remove(header::IF_NONE_MATCH);
        h.remove(header::IF_MODIFIED_SINCE);
        if let Some(etag) = o.headers.get(header::ETAG) {
            h.insert(header::IF_NONE_MATCH, etag.clone());
        } else if let Some(lm) = o.headers.get(header::LAST_MODIFIED) {
            h.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let sent = SystemTime::now();
    let resp = match cx.origin(up, None, done).await {
        Ok(r) => r,
        Err((e, done)) => {
            let now = SystemTime::now();
            return match stale.filter(|o| o.serves_on_error(now)) {
                Some(o) => {
                    cx.route.metrics.cache(CacheResult::StaleIfError);
                    let cs = status::hit(o.ttl_secs(now), Some("stale-if-error"));
                    Ok(from_object(&o, &parts, cs, done))
                }
                None => Err((e, done)),
            };
        }
    };
    let (mut head, body) = resp.into_parts();
    let now = SystemTime::now();
    if let Some(o) = &stale {
        if head.status == StatusCode::NOT_MODIFIED {
            let not_modified = NotModified {
                spec,
                store: &cx.store,
                request: &parts,
                stored: o,
                sent,
                received: now,
            };
            let mut outdated = match not_modified.answer(&head.headers, body) {
                Revalidated::Answer(r) => {
                    cx.route.metrics.cache(CacheResult::Revalidated);
                    return Ok(r);
                }
                Revalidated::Outdated(body) => body,
            };
            // The stored copy is not the origin's current one: asked again, without our
            // conditions, as if nothing were stored (boxed: a rare path).
            return match outdated.take_completion() {
                Some(done) => Box::pin(fetch(cx, parts, url, None, guard, fwd, done)).await,
                None => Ok(NotModified::outdated(outdated)),
            };
        }
        if head.status.is_server_error() && o.serves_on_error(now) {
            cx.route.metrics.cache(CacheResult::StaleIfError);
            let cs = status::hit(o.ttl_secs(now), Some("stale-if-error"));
            return Ok(from_served(o, &parts, cs, body));
        }
    }
    cx.route.metrics.cache(CacheResult::Miss);
    // A range miss answered 206: passed on, and if the whole object fits the store it is
    // fetched in the background, so later ranges of it are hits.
    let guard = match guard {
        // Not for a key that answered uncacheable lately (its guard is detached): every range
        // request would fetch the whole object again.
        Some(g)
            if g.leads()
                && head.status == StatusCode::PARTIAL_CONTENT
                && stale.is_none()
                // Not with a user's credentials: what they fetch is rarely storable.
                && !parts.headers.contains_key(header::AUTHORIZATION)
                && complete_length(&head.headers).is_some_and(|n| n <= spec.max_object_bytes) =>
        {
            fill_whole(cx, &parts, url.clone(), g);
            None
        }
        g => g,
    };
    let status_code = head.status.as_u16();
    let (body, stored, detail) = keep(cx, &parts, url, &mut head, body, guard, sent, now);
    if let Some(o) = &stale
        && detail.is_some_and(|d| !matches!(d, "authorization" | "request-no-store"))
        && !head.status.is_server_error()
    {
        // The origin's current answer may not be stored (it turned private, no-store, a 404
        // that forbids storing): the stale copy is no longer the URL's either.
        super::purger::invalidate_url(&cx.store, o.url.to_string());
    }
    head.headers.insert(
        CACHE_STATUS.clone(),
        status::forward(fwd, Some(status_code), stored, detail),
    );
    Ok(Response::from_parts(head, body))
}

/// Compresses a response from the origin if the route says so and, when it may be stored and
/// `guard` leads its key, tees its body into the store. Returns the body to send, whether it
/// is being stored, and why not.
#[allow(clippy::too_many_arguments)]
fn keep(
    cx: &Cx,
    parts: &http::request::Parts,
    url: Arc<str>,
    head: &mut http::response::Parts,
    mut body: RespBody,
    guard: Option<FlightGuard>,
    sent: SystemTime,
    now: SystemTime,
) -> (RespBody, bool, Option<&'static str>) {
    let spec = cx.spec();
    if let Some(cs) = cx.route.spec.compression.as_ref() {
        body = compress::apply(cs, &parts.headers, &parts.method, head, body).0;
    }
    let verdict = Answer {
        request: &parts.headers,
        path: parts.uri.path(),
        status: head.status,
        headers: &head.headers,
        sent,
        received: now,
    }
    .storable(spec);
    let detail = verdict.as_ref().err().map(|why| why.token());
    let stored = match (guard, verdict) {
        (Some(guard), Ok((vary, timing))) => {
            cx.route.metrics.cache(CacheResult::Stored);
            cx.store.clear_pass(guard.key());
            let variant = key::variant(
                &spec.key,
                &vary,
                (parts, cx.ctx.local_port, &cx.route.spec.name),
                cx.encodings(),
            );
            let mut headers = head.headers.clone();
            headers.remove(header::SET_COOKIE);
            let fill = Fill {
                store: cx.store.clone(),
                vary,
                status: head.status,
                headers,
                timing,
                url,
                variant,
                chunks: BytesMut::new(),
                limit: spec.max_object_bytes as usize,
                fetched: sent,
                guard,
            };
            fill.guard.head_arrived();
            body = tee(body, Box::new(fill));
            true
        }
        (Some(guard), Err(why)) => {
            if why.from_response() {
                // Hit-for-pass: for a while, requests for this key go straight to the origin
                // instead of queueing behind one another.
                cx.store.mark_pass(flight::key(
                    &url,
                    &key::variant(
                        &spec.key,
                        &[],
                        (parts, cx.ctx.local_port, &cx.route.spec.name),
                        cx.encodings(),
                    ),
                ));
            }
            drop(guard);
            false
        }
        (None, _) => false,
    };
    (body, stored, detail)
}

/// The complete length of a 206 (`Content-Range: bytes a-b/len`), when known.
fn complete_length(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.trim()
        .strip_prefix("bytes ")?
        .rsplit_once('/')?
        .1
        .trim()
        .parse()
        .ok()
}

/// Fetches a whole response in the background after a range miss, and stores it (its
/// followers wait for it, then find it).
fn fill_whole(cx: &Cx, parts: &http::request::Parts, url: Arc<str>, guard: FlightGuard) {
    let cx = cx.clone();
    let mut parts = copy_head(parts);
    for h in [
        header::RANGE,
        header::IF_RANGE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
    ] {
        parts.headers.remove(h);
    }
    tokio::spawn(async move {
        let done = Completion::cache_refresh(&cx.ctx, &cx.route);
        let sent = SystemTime::now();
        let Ok(resp) = cx.origin(copy_head(&parts), None, done).await else {
            return;
        };
        let (mut head, body) = resp.into_parts();
        let now = SystemTime::now();
        let (body, ..) = keep(&cx, &parts, url, &mut head, body, Some(guard), sent, now);
        // Reading the body to its end is what stores it.
        let _ = body.collect().await;
    });
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
        let done = Completion::cache_refresh(&cx.ctx, &cx.route);
        let url = stale.url.clone();
        if let Ok(resp) = fetch(&cx, parts, url, Some(stale), Some(guard), Fwd::Stale, done).await {
            // Reading the body to its end is what stores it.
            let _ = resp.into_body().collect().await;
        }
    });
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
