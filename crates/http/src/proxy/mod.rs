//! The request path. [`handle`] is its table of contents; each phase returns
//! `Result<_, ProxyError>` and the one exit, [`Exchange::respond`], answers every request and
//! records it (metrics and access log, through the [`Completion`]'s `Drop`), refusals before
//! routing included:
//!
//! 1. edge checks: the head rules of RFC 9112 §3.2 and the listener's size limit (400, 431);
//! 2. before routing: WebSocket fan-out handshakes, HTTP/2 WebSocket translation;
//! 3. route (404);
//! 4. admission (`admit`): allow/deny (403), operator switches (503), the rate limit (429);
//! 5. dispatch: the route's handler (a feature, `plug::RouteHandler`: a queue answering 202,
//!    the cache), compression, or straight to
//! 6. [`origin`]: the global in-flight cap, then [`forward`]: body limit (413), bulkheads,
//!    the body (408), the attempt loop — pick, rewrite, [`send`] (502/504), retry;
//! 7. [`respond`]: passive health and latency, the response head, and the [`Completion`] that
//!    rides in the response body and gives everything back when the body ends or is dropped.

mod admit;
mod completion;
mod exchange;
mod forward;
mod head_wait;
mod origin;
mod respond;
mod send;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use scalegate_core::admission::Priority;

use crate::body::RespBody;
use crate::error::ProxyError;
use crate::gateway::Gateway;
use crate::router::Route;
use crate::tunnel;

use crate::plug::Dispatch;
pub use completion::Completion;
pub(crate) use exchange::Exchange;
pub use origin::origin;
pub use respond::copy_head;

/// A request extension: the request already waited for another's response from this instant
/// (a cache's coalesced miss), and the route's timeout runs from then, not from when it goes
/// to the upstream itself.
#[derive(Clone, Copy, Debug)]
pub struct WaitedSince(pub tokio::time::Instant);

/// Per-connection context handed to every request on it.
#[derive(Debug)]
pub struct ConnCtx {
    /// The gateway.
    pub gateway: Arc<Gateway>,
    /// The name and edge rules of the listener the connection arrived on, read at each
    /// request: a reload that changes them reaches the connections already open.
    pub rules: LiveRules,
    /// Client address.
    pub peer: SocketAddr,
    /// The port the client connected to (the listener's).
    pub local_port: u16,
    /// The listener's `idle_timeout`: also how long a peer may refuse our writes.
    pub idle_timeout: Duration,
    /// The listener's `max_header_bytes`: the largest request line and headers accepted.
    pub max_head: usize,
    /// The listener's `body_timeout`: a request's whole body must arrive within it (408).
    pub body_timeout: Duration,
    /// Worker serving the connection (selects the connection pool).
    pub worker: usize,
    /// "http" or "https".
    pub scheme: &'static str,
    /// Requests in flight on this connection and when the last ended (for idle parking).
    pub activity: crate::conn::Activity,
    /// The upstream side of a protocol upgrade the client was just told about (101).
    pub tunnel: crate::tunnel::Pending,
    /// HTTP/2: the response bodies watched for a client that stops taking them
    /// (`h2_stall.rs`).
    pub h2_streams: Arc<crate::h2_stall::Streams>,
    /// The ends of the connection's requests, answered or cancelled (`h2_resets.rs`).
    pub h2_cancels: crate::h2_resets::Cancels,
    /// The gateway's stop signal, for tunnels that outlive their request's task (TLS and
    /// HTTP/2 upgrades): they close when the gateway shuts down, as plain HTTP/1.1 ones do.
    /// None where no client connection is behind the request (queued deliveries).
    pub shutdown: Option<crate::worker::Shutdown>,
}

/// A listener's name and edge rules as its connections see them (`ConnCtx::rules`).
#[derive(Debug, Default)]
pub struct ListenerRules {
    /// The listener's name (routes name the listener they serve).
    pub name: Arc<str>,
    /// Normalisation, trusted proxies, header count, upgrades.
    pub edge: crate::edge::EdgeSpec,
}

/// A listener's rules, shared by its connections and replaced by a reload: a keep-alive
/// connection of a renamed listener reaches the routes of its new name, and one of a listener
/// whose trusted proxies changed no longer believes the ones removed.
pub type LiveRules = Arc<arc_swap::ArcSwap<ListenerRules>>;

impl ListenerRules {
    /// Rules to share between a listener's connections.
    pub fn live(name: &str, edge: crate::edge::EdgeSpec) -> LiveRules {
        Arc::new(arc_swap::ArcSwap::from_pointee(ListenerRules {
            name: Arc::from(name),
            edge,
        }))
    }
}

/// Entry point: one client request in, one response out. Never fails; failures are responses.
///
/// The request's future is copied whole when hyper boxes it and each level of it as that level
/// starts, so its size is a per-request cost: the levels are not `async fn`s, which would keep
/// a copy of each argument beside the argument (bench/RESULTS.md, session 14).
pub fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> impl Future<Output = Response<RespBody>> + Send {
    let (mut parts, body) = req.into_parts();
    // The edge first (edge.rs): head checks, the one normalisation of path and host, the
    // upgrade filter and the client address behind trusted proxies, before anything else —
    // the access log included — reads the request.
    let edge = crate::edge::admit(&ctx, &mut parts);
    let mut x = Exchange::begin(ctx, &mut parts);
    async move {
        let outcome = match edge {
            Ok(()) => phases(&mut x, parts, body).await,
            Err(refused) => Err(refused),
        };
        x.respond(outcome)
    }
}

/// The phases in order; the first refusal ends the request.
#[allow(clippy::manual_async_fn)] // on purpose: an async fn would hold each argument twice
fn phases(
    x: &mut Exchange,
    mut parts: http::request::Parts,
    body: Incoming,
) -> impl Future<Output = Result<Response<RespBody>, ProxyError>> {
    async move {
        if let Some(answered) = before_routing(x, &mut parts).await? {
            return Ok(answered);
        }
        let route = x.route(&parts)?;
        let admitted = admit::admit(x, &route, &parts).await?;
        dispatch(x, &route, parts, body, admitted).await
    }
}

/// What is answered before routing: a fan-out subscription's handshake (the gateway serves
/// it), and the HTTP/2 WebSocket handshake, which becomes HTTP/1.1's (h2_websocket.rs).
async fn before_routing(
    x: &mut Exchange,
    parts: &mut http::request::Parts,
) -> Result<Option<Response<RespBody>>, ProxyError> {
    let claim = x
        .snap
        .before_routing
        .as_ref()
        .and_then(|b| b.claims(&x.ctx.rules.load().name, parts.uri.path()));
    if let Some(claim) = claim {
        x.log_as("fanout");
        if let Some(b) = &x.snap.before_routing {
            // Boxed by the feature: its future stays out of every other request's future.
            return Ok(Some(b.answer(&x.ctx, &x.snap, claim, parts).await));
        }
    }
    crate::h2_websocket::to_h1_upgrade(parts)?;
    Ok(None)
}

/// Hands a routed, admitted request to what serves it: the route's handler (a feature: the
/// cache, a queue answering 202), or the upstream (compressed when the route says so).
#[allow(clippy::manual_async_fn)] // on purpose: an async fn would hold each argument twice
fn dispatch(
    x: &mut Exchange,
    route: &Arc<Route>,
    mut parts: http::request::Parts,
    body: Incoming,
    admitted: Admitted,
) -> impl Future<Output = Result<Response<RespBody>, ProxyError>> {
    async move {
        // An upgrade leaves HTTP: nothing to cache or compress. The decision rides along in the
        // request's extensions for `forward`.
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
        let done = x.take_completion();
        let (ctx, snap) = (&x.ctx, &x.snap);
        let handler = route
            .handler
            .as_ref()
            .filter(|h| upgrade.is_none() || h.takes_upgrades());
        // A feature's handler (the cache, a queue) is boxed by the feature; compression is boxed:
        // inline, its future would size (and be copied with) every request's future.
        let served = match (handler, &route.spec.compression) {
            (Some(h), _) => {
                let d = Dispatch {
                    ctx,
                    snap,
                    route,
                    admitted,
                };
                h.serve(d, parts, body, done).await
            }
            (None, Some(cs)) if upgrade.is_none() => {
                let accept = accept_encoding(&parts.headers);
                let method = parts.method.clone();
                let sent = Box::pin(origin(ctx, snap, route, parts, Some(body), admitted, done));
                sent.await.map(|r| {
                    let (mut head, body) = r.into_parts();
                    let body = crate::compress::apply(cs, &accept, &method, &mut head, body).0;
                    Response::from_parts(head, body)
                })
            }
            _ => origin(ctx, snap, route, parts, Some(body), admitted, done).await,
        };
        served.map_err(|(e, done)| {
            x.give_back(done);
            e
        })
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

/// What admission decided for a request that may go on.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// Priority class (bulkhead order and shedding).
    pub prio: Priority,
    /// A canary switch on the route: (upstream, percent).
    pub canary: Option<(String, u8)>,
    /// The client's address: the peer's, or the one trusted proxies forwarded (edge.rs).
    pub client: SocketAddr,
}

#[cfg(test)]
mod future_size {
    //! Every request's future is boxed and moved whole (its full size copied) when hyper takes
    //! it, and its pages are touched per request: its size is a per-request cost. Rare paths are
    //! boxed where they start so that they stay out of it, and the levels are not `async fn`s
    //! (bench/RESULTS.md, sessions 13 and 14).
    use super::*;
    use crate::gateway::Snapshot;
    use crate::router::Route;

    /// The size of what `make` returns, without calling it.
    fn size_of_output<F>(_: &dyn Fn() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    #[allow(unreachable_code, unused_variables, clippy::diverging_sub_expression)]
    fn the_per_request_future_stays_under_5_kib() {
        let handle = size_of_output(&|| handle(todo!(), todo!()));
        let forward = size_of_output(&|| {
            let ctx: &'static ConnCtx = todo!();
            let snap: &'static Snapshot = todo!();
            let route: &'static Route = todo!();
            let done: &'static mut Completion = todo!();
            forward::forward(ctx, snap, route, todo!(), todo!(), todo!(), done)
        });
        let send = size_of_output(&|| {
            let ctx: &'static ConnCtx = todo!();
            let route: &'static Route = todo!();
            let endpoint: &'static crate::upstream::HttpEndpoint = todo!();
            send::send(ctx, route, endpoint, todo!(), todo!(), todo!())
        });
        println!("futures: handle {handle} bytes, forward {forward}, send {send}");
        // 7,616 bytes before session 14's changes, 4,248 after.
        assert!(
            handle <= 5120,
            "the per-request future grew to {handle} bytes"
        );
    }
}
