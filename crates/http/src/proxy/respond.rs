//! The request head for the upstream hop, the balancer's view of a request, and what an answer
//! does to the endpoint (breaker, latency estimate) and to the response head.

use std::net::SocketAddr;
use std::time::Duration;

use crate::body::UpstreamBody;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use scalegate_core::balance::{Balance, PickRequest};
use scalegate_core::endpoint::BreakerEvent;
use scalegate_core::hash::stable_hash;
use scalegate_core::{Pick, Tick};

use crate::clock;
use crate::error::ProxyError;
use crate::headers;
use crate::pool::Lease;
use crate::spec::{HashOn, UpstreamProtocol};
use crate::tunnel;
use crate::upstream::{HttpEndpoint, Upstream};

use super::{Completion, ConnCtx};

/// Latency-estimate decay of the p2c balancer.
const EWMA_DECAY: Duration = scalegate_core::ewma::DECAY;

/// A copy of a request head for one attempt (extensions are not carried).
pub fn copy_head(t: &http::request::Parts) -> http::request::Parts {
    let (mut p, ()) = Request::new(()).into_parts();
    p.method = t.method.clone();
    p.uri = t.uri.clone();
    p.version = t.version;
    p.headers = t.headers.clone();
    p
}

pub(super) fn respond(
    upstream: &Upstream,
    endpoint: &HttpEndpoint,
    pick: Pick,
    sent_at: Tick,
    sent: Result<(Response<UpstreamBody>, Lease), ProxyError>,
    done: &mut Completion,
) -> Result<(http::response::Parts, UpstreamBody), ProxyError> {
    let now = clock::now();
    let (resp, lease) = match sent {
        Ok(ok) => ok,
        Err(e) => {
            if e.blames_endpoint() {
                record_outcome(upstream, pick.index, false, now);
            }
            return Err(e);
        }
    };
    let (mut head, body) = resp.into_parts();
    record_outcome(upstream, pick.index, !head.status.is_server_error(), now);
    endpoint
        .state
        .observe_latency(now.since(sent_at), now, EWMA_DECAY);
    done.hold_lease(lease);

    let switched = (head.status == http::StatusCode::SWITCHING_PROTOCOLS)
        .then(|| head.headers.get(header::UPGRADE).cloned())
        .flatten();
    // TE is a request's field (RFC 9110 §10.1.4): an upstream's is not passed on.
    if headers::strip_hop_by_hop(&mut head.headers) {
        head.headers.remove(header::TE);
    }
    headers::one_content_length(head.status, &mut head.headers);
    // HTTP/2 servers send trailers undeclared; HTTP/1.1 ones that send any declare them.
    if head.version == Version::HTTP_2 {
        headers::declare_grpc_trailers(&mut head.headers);
    }
    // RFC 9110 §6.2: an intermediary sends its own version. hyper frames a response by it: one
    // marked HTTP/1.0 went out close-delimited, where a body cut by a reset looked whole.
    // (hyper answers an HTTP/1.0 client as one itself.)
    head.version = Version::HTTP_11;
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

/// Feeds one outcome to the breaker of member `index`; logs and counts the change it makes.
pub(super) fn record_outcome(upstream: &Upstream, index: usize, ok: bool, now: Tick) {
    let Some(endpoint) = upstream.endpoints.get(index) else {
        return;
    };
    match upstream
        .set
        .record_outcome(index, ok, &upstream.spec.outlier, now)
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
        Some(BreakerEvent::Held) => {
            endpoint.metrics.ejections_held.inc();
            tracing::warn!(
                upstream = %upstream.spec.name,
                endpoint = %endpoint.addr,
                "endpoint failing but kept in rotation: ejecting it would pass passive.max_ejection_percent (panic)"
            );
        }
        None => {}
    }
}

/// Rewrites the request head for the upstream hop: origin-form URI (absolute for h2),
/// hop-by-hop headers out, Host kept, X-Forwarded-*, the route's path rewrite and header edits.
/// (X-Request-Id is already set, once per request, in [`handle`].)
pub(super) fn rewrite_request(
    parts: &mut http::request::Parts,
    ctx: &ConnCtx,
    client: std::net::IpAddr,
    route: &crate::spec::RouteSpec,
    protocol: UpstreamProtocol,
    endpoint: &HttpEndpoint,
) {
    // The target's authority when it has one (HTTP/2, or the absolute form, where RFC 9112
    // §3.2.2 says Host is ignored), as routing did; else Host (an empty one names nothing).
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned())
        .filter(|h| !h.is_empty());
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    // Replaced from an untrusted peer, extended from a trusted proxy (forwarded.rs).
    crate::forwarded::apply(
        &mut parts.headers,
        &ctx.rules.load().edge.trust,
        ctx.peer.ip(),
        client,
        ctx.scheme,
        host.as_ref(),
    );
    let original = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let rewritten = route.rewrite.as_ref().and_then(|r| r.apply(original));
    let path = rewritten.as_deref().unwrap_or(original);
    match protocol {
        UpstreamProtocol::Http1 => {
            // RFC 9112 §3.2: an HTTP/1.1 request always has Host. A client that named no host
            // (HTTP/1.0, HTTP/2 without :authority) leaves the endpoint's own, as nginx does.
            let named = host.or_else(|| endpoint_host(endpoint));
            if let Some(h) = named {
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

/// The endpoint as a Host: its TLS server name (the one SNI names) when it has one, with the
/// endpoint's port, else its `host:port`.
fn endpoint_host(endpoint: &HttpEndpoint) -> Option<HeaderValue> {
    let sni = endpoint.tls.as_ref().and_then(|t| t.server_name.as_deref());
    match (sni, endpoint.addr.rsplit_once(':')) {
        (Some(name), Some((_, port))) => HeaderValue::from_str(&format!("{name}:{port}")).ok(),
        _ => HeaderValue::from_str(&endpoint.addr).ok(),
    }
}

pub(super) fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// What a balancer may use of the request: the hash key and the sticky cookie.
pub(super) fn pick_request(
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
