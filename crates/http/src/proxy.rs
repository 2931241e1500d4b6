//! The request path, phases in the order they run:
//!
//! 1. [`handle`]: load the snapshot, match a route (404 if none);
//! 2. [`forward`]: check the body limit (413), pick an endpoint (503 if none), rewrite the head;
//! 3. [`send`]: check out a pooled connection, send, wait for the head within the timeout
//!    (502/504), retry once on a fresh connection if a stale keep-alive one never took the request;
//! 4. [`respond`]: record passive health and latency, clean the response head, set the sticky
//!    cookie, and attach a [`Completion`] that returns the connection and writes metrics and the
//!    access log when the body ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use scalegate_core::admission::Priority;
use scalegate_core::balance::{Balance, PickRequest};
use scalegate_core::endpoint::{BreakerEvent, EndpointLoad};
use scalegate_core::hash::stable_hash;
use scalegate_core::retry::{AttemptOutcome, Decision, GiveUp};
use scalegate_core::{Pick, Tick};

use crate::access_log::AccessRecord;
use crate::admission;
use crate::body::{BodyTooLarge, ReqBody, RespBody};
use crate::clock;
use crate::error::ProxyError;
use crate::fallback;
use crate::gateway::{Gateway, GlobalSlot, Snapshot};
use crate::headers;
use crate::pool::{Lease, Sender};
use crate::retry;
use crate::router::{Route, RouteKey};
use crate::spec::{HashOn, UpstreamProtocol};
use crate::tunnel;
use crate::upstream::{HttpEndpoint, Upstream};

/// Per-connection context handed to every request on it.
#[derive(Debug)]
pub struct ConnCtx {
    /// The gateway.
    pub gateway: Arc<Gateway>,
    /// Listener the connection arrived on.
    pub listener: Arc<str>,
    /// Client address.
    pub peer: SocketAddr,
    /// The listener's `max_header_bytes`: the largest request line and headers accepted.
    pub max_head: usize,
    /// Worker serving the connection (selects the connection pool).
    pub worker: usize,
    /// "http" or "https".
    pub scheme: &'static str,
    /// Requests in flight on this connection and when the last ended (for idle parking).
    pub activity: crate::conn::Activity,
    /// The upstream side of a protocol upgrade the client was just told about (101).
    pub tunnel: crate::tunnel::Pending,
}

/// Latency-estimate decay of the p2c balancer.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// Entry point: one client request in, one response out. Never fails; failures are responses.
pub async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<RespBody> {
    let started = clock::now();
    let snap = ctx.gateway.snapshot();
    let (mut parts, body) = req.into_parts();
    let grpc = crate::error::is_grpc(&parts.headers);
    let head_error = headers::check_head(&parts, ctx.max_head).err();
    // One id for the whole request: every attempt, the access log and the client's copy.
    let request_id = headers::ensure_request_id(&mut parts.headers);
    if let Some(e) = head_error {
        let mut resp = local_reply(&e, grpc);
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), request_id);
        return resp;
    }
    if let Some(hub) = &snap.fanout
        && let Some(topic) = hub
            .topic_of(&ctx.listener, parts.uri.path())
            .map(str::to_owned)
    {
        // Boxed: the authorization call's future stays out of every other request's future.
        let mut resp = Box::pin(crate::fanout::ws::answer(
            &ctx, &snap, hub, &topic, &mut parts,
        ))
        .await;
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), request_id);
        return resp;
    }
    // WebSocket over HTTP/2 becomes the HTTP/1.1 handshake before routing (h2_websocket.rs).
    if let Err(e) = crate::h2_websocket::to_h1_upgrade(&mut parts) {
        let mut resp = local_reply(&e, grpc);
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), request_id);
        return resp;
    }
    let Some(route) = snap
        .routes
        .find(&ctx.listener, &RouteKey::of(&parts))
        .cloned()
    else {
        let mut resp = local_reply(&ProxyError::NoRoute, grpc);
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), request_id);
        return resp;
    };
    let log = snap
        .access_log
        .then(|| Box::new(AccessRecord::new(&parts, ctx.peer, &route.spec.name)));
    let done = Completion::start(&ctx, &route, started, log);
    // Admission: the route's rate limit, before any upstream work.
    // Access rules first: a refused client spends no rate-limit budget.
    let forbidden = !route.spec.access.permits(ctx.peer.ip());
    let rate = match (&route.limiter, &route.spec.rate_limit, &route.shared) {
        (Some(l), Some(spec), None) if !forbidden => {
            Some(admission::check(l, spec, &parts.headers, ctx.peer))
        }
        // Boxed: the Redis round trip's future stays out of every other request's future.
        (Some(l), Some(spec), Some(shared)) if !forbidden => Some(
            Box::pin(admission::check_shared(
                shared,
                &route.spec.name,
                l,
                spec,
                admission::key_of(spec, &parts.headers, ctx.peer),
            ))
            .await,
        ),
        _ => None,
    };
    let prio = priority(&route, &parts.headers);
    let switch = ctx.gateway.switches.route(&route.spec.name);
    let result = match &rate {
        _ if forbidden => Err((ProxyError::Forbidden, done)),
        _ if switch.as_ref().is_some_and(|s| s.disabled) => Err((ProxyError::RouteDisabled, done)),
        Some(Err((denied, _))) => {
            route.metrics.rate_limited.inc();
            Err((denied.clone(), done))
        }
        // A queued route stores the request and answers 202; workers deliver it later
        // (queue/). Boxed: the store's future stays out of every other request's future.
        _ if route.queue.is_some() => {
            let mut done = done;
            let resp = match &route.queue {
                Some(q) => Box::pin(q.enqueue(&ctx, parts, body)).await,
                None => local_reply(&ProxyError::NoRoute, grpc),
            };
            done.set_status(resp.status().as_u16());
            done.finish(true);
            Ok(resp)
        }
        _ => {
            let admitted = Admitted {
                prio,
                canary: switch.and_then(|s| s.canary),
            };
            // The cache and compression paths are boxed: their futures are large, and inline
            // they would size (and be copied with) every request's future, cached or not.
            // An upgrade is neither cached nor compressed: it leaves HTTP. The decision rides
            // along in the request's extensions for `forward`.
            let upgrade =
                tunnel::requested(parts.version, &parts.method, &parts.headers).or_else(|| {
                    parts
                        .extensions
                        .get::<crate::h2_websocket::Translated>()
                        .map(|_| HeaderValue::from_static("websocket"))
                });
            if let Some(protocol) = &upgrade {
                parts.extensions.insert(tunnel::Requested(protocol.clone()));
            }
            match (&route.cache, &route.spec.compression) {
                (Some(store), _) if upgrade.is_none() => {
                    Box::pin(crate::cache::serve::serve(
                        &ctx, &snap, &route, store, parts, body, admitted, done,
                    ))
                    .await
                }
                (None, Some(cs)) if upgrade.is_none() => {
                    let accept = accept_encoding(&parts.headers);
                    let method = parts.method.clone();
                    Box::pin(origin(
                        &ctx,
                        &snap,
                        &route,
                        parts,
                        Some(body),
                        admitted,
                        done,
                    ))
                    .await
                    .map(|r| {
                        let (mut head, body) = r.into_parts();
                        let body =
                            crate::cache::compress::apply(cs, &accept, &method, &mut head, body).0;
                        Response::from_parts(head, body)
                    })
                }
                _ => origin(&ctx, &snap, &route, parts, Some(body), admitted, done).await,
            }
        }
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err((e, mut done)) => {
            let (resp, status) = match &route.spec.fallback {
                Some(f) if fallback::applies(&e) => {
                    route.metrics.fallbacks.inc();
                    let resp = f.respond(&e);
                    let status = resp.status();
                    (resp, status)
                }
                // A gRPC answer is a 200 with the status inside: count what happened.
                _ => (local_reply(&e, grpc), e.status()),
            };
            done.status = status.as_u16();
            done.finish(false);
            resp
        }
    };
    if let Some(Ok(status) | Err((_, status))) = &rate {
        status.apply(resp.headers_mut());
    }
    // The client gets the id to quote (an upstream's own id on the response is kept).
    resp.headers_mut()
        .entry(headers::X_REQUEST_ID.clone())
        .or_insert(request_id);
    route.spec.response_headers.apply(resp.headers_mut());
    resp
}

/// The gateway's own answer to a failure: a gRPC status for a gRPC call, an HTTP one otherwise.
fn local_reply(e: &ProxyError, grpc: bool) -> Response<RespBody> {
    if grpc {
        e.to_grpc_response()
    } else {
        e.to_response()
    }
}

/// The Accept-Encoding lines of a request (all that compression needs of it).
fn accept_encoding(h: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for v in h.get_all(header::ACCEPT_ENCODING) {
        out.append(header::ACCEPT_ENCODING, v.clone());
    }
    out
}

/// Sends a request to the route's upstream under the global cap, bulkheads and retries; the
/// response body carries `done`. On failure `done` comes back with the error, unfinished.
pub(crate) async fn origin(
    ctx: &Arc<ConnCtx>,
    snap: &Snapshot,
    route: &Arc<Route>,
    mut parts: http::request::Parts,
    body: Option<Incoming>,
    admitted: Admitted,
    mut done: Completion,
) -> Result<Response<RespBody>, (ProxyError, Completion)> {
    let prio = admitted.prio;
    let Some(slot) = ctx.gateway.admit(snap.max_in_flight, prio) else {
        route.metrics.shed("global_limit", prio.as_str());
        return Err((ProxyError::Shed("global_limit"), done));
    };
    done.global = slot;
    let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let over_h2 = parts.extensions.remove::<crate::h2_websocket::Translated>();
    match forward(ctx, snap, route, parts, body, admitted, &mut done).await {
        Ok((mut head, upstream_body)) => {
            if head.status == http::StatusCode::SWITCHING_PROTOCOLS
                && let Some(up) = head.extensions.remove::<hyper::upgrade::OnUpgrade>()
            {
                if let Some(sent) = &over_h2
                    && let Err(e) = crate::h2_websocket::to_h2_response(&mut head, sent)
                {
                    done.status = e.status().as_u16();
                    return Err((e, done));
                }
                let up = tunnel::Upgraded::Tunnel((up, route.metrics.tunnels.clone()));
                match client_upgrade {
                    // TLS and HTTP/2 connections let hyper run the upgrade: the client side
                    // arrives here.
                    Some(client) if ctx.scheme == "https" || over_h2.is_some() => {
                        tunnel::spawn(client, up)
                    }
                    // Plain HTTP/1.1: the connection task takes its socket back (conn.rs).
                    _ => ctx.tunnel.set(up),
                }
            }
            done.status = head.status.as_u16();
            Ok(Response::from_parts(
                head,
                RespBody::upstream(upstream_body, done),
            ))
        }
        Err(e) => Err((e, done)),
    }
}

async fn forward(
    ctx: &ConnCtx,
    snap: &Snapshot,
    route: &Route,
    mut parts: http::request::Parts,
    body: Option<Incoming>,
    admitted: Admitted,
    done: &mut Completion,
) -> Result<(http::response::Parts, Incoming), ProxyError> {
    let limit = route.spec.max_body_bytes;
    if content_length(&parts.headers).is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge);
    }
    let Admitted { prio, canary } = admitted;
    // A canary switch sends its share of the route's traffic to the second upstream.
    let canary_upstream = canary
        .filter(|(_, pct)| rand::random_range(0..100u8) < *pct)
        .and_then(|(name, _)| snap.upstream(&name).cloned());
    let upstream = match &canary_upstream {
        Some(u) => u,
        None => snap
            .upstreams
            .get(route.upstream)
            .ok_or(ProxyError::NoHealthyEndpoint)?,
    };
    // Bulkheads: the route's own cap first, then the upstream's.
    for (slot, bulkhead) in [(0, &route.bulkhead), (1, &upstream.bulkhead)] {
        let Some(bulkhead) = bulkhead else { continue };
        let waited = tokio::time::Instant::now();
        let admitted = bulkhead.acquire(prio).await;
        route
            .metrics
            .queue_time
            .observe(waited.elapsed().as_secs_f64());
        match admitted {
            Ok(permit) => done.permits[slot] = Some(permit),
            Err(shed) => {
                route.metrics.shed(shed.as_str(), prio.as_str());
                return Err(ProxyError::Shed(shed.as_str()));
            }
        }
    }
    let retry = route.spec.retry.as_ref();
    // Only a queued route's deliveries carry a stored body: other requests skip the lookup.
    let stored = match route.queue {
        Some(_) => parts.extensions.remove::<crate::queue::StoredBody>(),
        None => None,
    };
    let (mut body, facts) = match stored {
        // A queued job's body, kept whole by the queue: replayable like any kept body.
        Some(stored) => retry::stored_body(&parts.method, &parts.headers, stored.0, retry),
        None => retry::prepare_body(&parts.method, &parts.headers, body, retry, limit).await?,
    };
    let deadline = tokio::time::Instant::now() + route.spec.request_timeout;
    if let Some(b) = &route.budget {
        b.deposit(clock::now());
    }
    let upgrade = match upstream.spec.protocol {
        UpstreamProtocol::Http2 => None,
        _ => parts
            .extensions
            .get::<tunnel::Requested>()
            .map(|r| r.0.clone()),
    };
    let mut pick_req = pick_request(upstream, &parts, ctx.peer);
    let mut template = Some(parts);
    let mut attempt = 1;
    loop {
        let now = clock::now();
        let pick = upstream
            .set
            .pick(&pick_req, now, &mut rand::rng())
            .ok_or(ProxyError::NoHealthyEndpoint)?;
        let endpoint = upstream
            .endpoints
            .get(pick.index)
            .ok_or(ProxyError::NoHealthyEndpoint)?
            .clone();
        let Some(req_body) = body.for_attempt() else {
            return Err(ProxyError::UpstreamReset);
        };
        // The last possible attempt takes the head itself; earlier ones take a copy.
        let mut head = match &template {
            Some(t) if retry.is_some_and(|r| attempt < r.policy.attempts) && body.replayable() => {
                copy_head(t)
            }
            _ => template.take().ok_or(ProxyError::UpstreamReset)?,
        };
        rewrite_request(
            &mut head,
            ctx,
            &route.spec,
            upstream.spec.protocol,
            &endpoint,
        );
        if let Some(protocol) = &upgrade {
            tunnel::restore(&mut head.headers, protocol.clone());
        }
        if let Some(log) = done.log.as_mut() {
            log.upstream(&upstream.spec.name, &endpoint.addr);
            if let Some(id) = head
                .headers
                .get(&headers::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
            {
                log.request_id(id);
            }
            log.attempts(attempt);
        }
        let load = endpoint.state.start_request();
        let try_deadline = retry
            .and_then(|r| r.per_try_timeout)
            .map_or(deadline, |t| deadline.min(tokio::time::Instant::now() + t));
        let req = Request::from_parts(head, req_body);
        let sent = match upgrade {
            // Boxed: a rare path whose handshake future would otherwise size every request's.
            Some(_) => Box::pin(send_upgrade(ctx, route, &endpoint, req, try_deadline)).await,
            None => send(ctx, route, &endpoint, req, now, try_deadline).await,
        };

        let outcome = match &sent {
            Ok((resp, _)) => Some(AttemptOutcome::Status(
                resp.status().as_u16(),
                retry::retry_after(resp.headers()),
            )),
            Err(e) => retry::outcome_of_error(e),
        };
        let decision = match (retry, outcome) {
            (Some(r), Some(o)) if template.is_some() => {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                let d = r
                    .policy
                    .decide(attempt, o, facts, true, remaining, rand::random::<f64>());
                match (d, &route.budget) {
                    (Decision::Retry(_), Some(b)) if !b.try_withdraw(clock::now()) => {
                        route.metrics.retries_denied.inc();
                        Decision::GiveUp(GiveUp::Budget)
                    }
                    _ => d,
                }
            }
            _ => Decision::GiveUp(GiveUp::NotRetryable),
        };
        let Decision::Retry(wait) = decision else {
            done.endpoint = Some(load);
            return respond(upstream, &endpoint, pick, now, sent, done);
        };
        // Abandon this attempt: count its failure against the endpoint, then try another.
        let failed = match &sent {
            Ok(_) => true,
            Err(e) => e.blames_endpoint(),
        };
        if failed {
            record_outcome(upstream, &endpoint, false, clock::now());
        }
        drop(sent);
        drop(load);
        route.metrics.retries.inc();
        tracing::debug!(route = %route.spec.name, endpoint = %endpoint.addr, attempt, ?outcome, "retrying");
        pick_req.avoid = Some(pick.index);
        attempt += 1;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// What admission decided for a request that may go on.
#[derive(Clone, Debug)]
pub(crate) struct Admitted {
    /// Priority class (bulkhead order and shedding).
    pub(crate) prio: Priority,
    /// A canary switch on the route: (upstream, percent).
    pub(crate) canary: Option<(String, u8)>,
}

/// The request's priority class: the route's, or the priority header's when the route allows it.
fn priority(route: &Route, h: &http::HeaderMap) -> Priority {
    route
        .spec
        .priority_header
        .as_ref()
        .and_then(|name| h.get(name.as_str()))
        .and_then(|v| v.to_str().ok())
        .and_then(Priority::parse)
        .unwrap_or(route.spec.priority)
}

/// A copy of a request head for one attempt (extensions are not carried).
pub(crate) fn copy_head(t: &http::request::Parts) -> http::request::Parts {
    let (mut p, ()) = Request::new(()).into_parts();
    p.method = t.method.clone();
    p.uri = t.uri.clone();
    p.version = t.version;
    p.headers = t.headers.clone();
    p
}

/// Sends an upgrade request on a connection of its own.
async fn send_upgrade(
    ctx: &ConnCtx,
    route: &Route,
    endpoint: &HttpEndpoint,
    req: Request<ReqBody>,
    deadline: tokio::time::Instant,
) -> Result<(Response<Incoming>, Lease), ProxyError> {
    let stream = crate::dial::dial(&endpoint.dial(), route.spec.connect_timeout).await?;
    let resp = tokio::time::timeout_at(deadline, tunnel::send(stream, req))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout)??;
    Ok((resp, endpoint.pool(ctx.worker).detached()))
}

async fn send(
    ctx: &ConnCtx,
    route: &Route,
    endpoint: &HttpEndpoint,
    req: Request<ReqBody>,
    now: Tick,
    deadline: tokio::time::Instant,
) -> Result<(Response<Incoming>, Lease), ProxyError> {
    let pool = endpoint.pool(ctx.worker);
    let mut req = req;
    let mut fresh = false;
    loop {
        let mut lease = pool
            .checkout(&endpoint.dial(), route.spec.connect_timeout, now, fresh)
            .await?;
        let reused = lease.reused;
        let Some(sender) = lease.sender() else {
            return Err(ProxyError::UpstreamReset);
        };
        let sending = async {
            match sender {
                Sender::H1(tx) => tx.try_send_request(req).await,
                Sender::H2(tx) => tx.try_send_request(req).await,
            }
        };
        match tokio::time::timeout_at(deadline, sending).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Ok(resp)) => return Ok((resp, lease)),
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                let err = e.into_error();
                match unsent {
                    // A pooled connection the upstream closed while it idled: the request never
                    // left, so it is safe to send on a new connection whatever its method.
                    Some(r) if reused && !fresh => {
                        tracing::debug!(error = %err, "stale pooled connection; retrying on a new one");
                        req = r;
                        fresh = true;
                    }
                    _ => return Err(classify(&err)),
                }
            }
        }
    }
}

/// Maps a client-connection error to the outcome it means.
fn classify(err: &hyper::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<BodyTooLarge>() {
            return ProxyError::BodyTooLarge;
        }
        source = e.source();
    }
    // The request body the client sent failed (bad chunked framing, cut short): the client's
    // fault, not the upstream's, so no 502 and nothing counted against the endpoint.
    if err.is_user() {
        return ProxyError::BadRequest("request body malformed or cut short");
    }
    if err.is_timeout() {
        ProxyError::UpstreamTimeout
    } else {
        ProxyError::UpstreamReset
    }
}

fn respond(
    upstream: &Upstream,
    endpoint: &HttpEndpoint,
    pick: Pick,
    sent_at: Tick,
    sent: Result<(Response<Incoming>, Lease), ProxyError>,
    done: &mut Completion,
) -> Result<(http::response::Parts, Incoming), ProxyError> {
    let now = clock::now();
    let (resp, lease) = match sent {
        Ok(ok) => ok,
        Err(e) => {
            if e.blames_endpoint() {
                record_outcome(upstream, endpoint, false, now);
            }
            return Err(e);
        }
    };
    let (mut head, body) = resp.into_parts();
    record_outcome(upstream, endpoint, !head.status.is_server_error(), now);
    endpoint
        .state
        .observe_latency(now.since(sent_at), now, EWMA_DECAY);
    done.lease = Some(lease);

    let switched = (head.status == http::StatusCode::SWITCHING_PROTOCOLS)
        .then(|| head.headers.get(header::UPGRADE).cloned())
        .flatten();
    headers::strip_hop_by_hop(&mut head.headers);
    if let Some(protocol) = switched {
        tunnel::restore(&mut head.headers, protocol);
    }
    if pick.set_sticky && upstream.spec.balance == Balance::Cookie {
        let id = stable_hash(endpoint.addr.as_bytes());
        let cookie = format!(
            "{}={id:016x}; Path=/; HttpOnly",
            upstream.spec.sticky_cookie
        );
        if let Ok(v) = HeaderValue::try_from(cookie) {
            head.headers.append(header::SET_COOKIE, v);
        }
    }
    Ok((head, body))
}

/// Feeds one outcome to the endpoint's breaker; logs and counts the change it makes.
fn record_outcome(upstream: &Upstream, endpoint: &HttpEndpoint, ok: bool, now: Tick) {
    match endpoint
        .state
        .record_outcome(ok, &upstream.spec.outlier, now)
    {
        Some(BreakerEvent::Opened(period)) => {
            endpoint.metrics.ejections.inc();
            tracing::warn!(
                upstream = %upstream.spec.name,
                endpoint = %endpoint.addr,
                seconds = period.as_secs_f64(),
                "breaker opened: endpoint ejected after failures"
            );
        }
        Some(BreakerEvent::Closed) => {
            endpoint.metrics.breaker_closed.inc();
            tracing::info!(upstream = %upstream.spec.name, endpoint = %endpoint.addr, "breaker closed: half-open probe succeeded");
        }
        None => {}
    }
}

/// Rewrites the request head for the upstream hop: origin-form URI (absolute for h2),
/// hop-by-hop headers out, Host kept, X-Forwarded-*, the route's path rewrite and header edits.
/// (X-Request-Id is already set, once per request, in [`handle`].)
fn rewrite_request(
    parts: &mut http::request::Parts,
    ctx: &ConnCtx,
    route: &crate::spec::RouteSpec,
    protocol: UpstreamProtocol,
    endpoint: &HttpEndpoint,
) {
    // The target's authority when it has one (HTTP/2, or the absolute form, where RFC 9112
    // §3.2.2 says Host is ignored), as routing did; else Host.
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    headers::add_forwarded(&mut parts.headers, ctx.peer.ip(), ctx.scheme, host.as_ref());
    let original = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let rewritten = route.rewrite.as_ref().and_then(|r| r.apply(original));
    let path = rewritten.as_deref().unwrap_or(original);
    match protocol {
        UpstreamProtocol::Http1 => {
            if let Some(h) = host {
                parts.headers.insert(header::HOST, h);
            }
            if (rewritten.is_some() || parts.uri.authority().is_some())
                && let Ok(u) = Uri::try_from(path)
            {
                parts.uri = u;
            }
            parts.version = Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            let authority = host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .unwrap_or(&endpoint.addr);
            let scheme = if endpoint.tls.is_some() {
                "https"
            } else {
                "http"
            };
            if let Ok(u) = Uri::try_from(format!("{scheme}://{authority}{path}")) {
                parts.uri = u;
            }
            parts.headers.remove(header::HOST);
            parts.version = Version::HTTP_2;
        }
    }
    route.request_headers.apply(&mut parts.headers);
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// What a balancer may use of the request: the hash key and the sticky cookie.
fn pick_request(
    upstream: &Upstream,
    parts: &http::request::Parts,
    peer: SocketAddr,
) -> PickRequest {
    let mut req = PickRequest::default();
    match upstream.spec.balance {
        Balance::IpHash => {
            req.hash_key = Some(match peer.ip() {
                std::net::IpAddr::V4(v4) => stable_hash(&v4.octets()),
                std::net::IpAddr::V6(v6) => stable_hash(&v6.octets()),
            })
        }
        Balance::ConsistentHash => {
            req.hash_key = match &upstream.spec.hash_on {
                Some(HashOn::Header(name)) => parts
                    .headers
                    .get(name.as_str())
                    .map(|v| stable_hash(v.as_bytes())),
                Some(HashOn::Cookie(name)) => {
                    headers::cookie(&parts.headers, name).map(|v| stable_hash(v.as_bytes()))
                }
                Some(HashOn::Path) | None => Some(stable_hash(parts.uri.path().as_bytes())),
            }
        }
        Balance::Cookie => {
            req.sticky = headers::cookie(&parts.headers, &upstream.spec.sticky_cookie)
                .and_then(|v| u64::from_str_radix(v, 16).ok());
        }
        _ => {}
    }
    req
}

/// Bookkeeping of one request: everything it holds (the global slot, bulkhead permits, the
/// upstream connection, the endpoint's load) and the outcome to record. Dropping it ends the
/// request exactly once, whatever the path: the response body ended, the gateway answered by
/// itself, or the client went away and hyper dropped the request's future.
#[derive(Debug)]
pub struct Completion {
    conn: Arc<ConnCtx>,
    global: GlobalSlot,
    permits: [Option<crate::bulkhead::Permit>; 2],
    route: Arc<Route>,
    started: Tick,
    status: u16,
    /// Whether the upstream body was read to its end (the connection may carry another request).
    complete: bool,
    bytes: u64,
    lease: Option<Lease>,
    endpoint: Option<EndpointLoad>,
    log: Option<Box<AccessRecord>>,
}

impl Completion {
    /// Starts the bookkeeping of a request on `route`: counts it in flight on the route and on
    /// the client connection until the completion drops.
    pub(crate) fn start(
        conn: &Arc<ConnCtx>,
        route: &Arc<Route>,
        started: Tick,
        log: Option<Box<AccessRecord>>,
    ) -> Completion {
        route.metrics.in_flight.inc();
        conn.activity.begin();
        Completion {
            conn: conn.clone(),
            global: GlobalSlot::default(),
            permits: [None, None],
            route: route.clone(),
            started,
            status: 0,
            complete: false,
            bytes: 0,
            lease: None,
            endpoint: None,
            log,
        }
    }

    /// Bookkeeping for a request the gateway makes on its own (a background cache refresh, a
    /// queued job's delivery): metrics count it, no access log line.
    pub(crate) fn background(conn: &Arc<ConnCtx>, route: &Arc<Route>) -> Completion {
        Completion::start(conn, route, clock::now(), None)
    }

    /// Sets the status recorded when the request ends.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// The longest wait between two reads of the upstream body (the route's `read_timeout`).
    pub fn read_timeout(&self) -> Duration {
        self.route.spec.read_timeout
    }

    /// Counts body bytes sent to the client.
    pub fn count_bytes(&mut self, n: u64) {
        self.bytes += n;
    }

    /// Ends the request; `complete` says whether the upstream body was read to its end, so the
    /// connection can carry another request. Dropping the completion without calling this
    /// records an abandoned request (the connection is closed).
    pub fn finish(mut self, complete: bool) {
        self.complete = complete;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let now = clock::now();
        if let Some(lease) = self.lease.take()
            && self.complete
        {
            lease.release(now);
        }
        self.endpoint = None;
        self.permits = [None, None];
        self.global = GlobalSlot::default();
        self.conn.activity.end();
        let m = &self.route.metrics;
        m.in_flight.dec();
        m.count(self.status);
        let elapsed = now.since(self.started);
        m.duration.observe(elapsed.as_secs_f64());
        if let Some(log) = self.log.take() {
            log.write(self.status, self.bytes, elapsed);
        }
    }
}
