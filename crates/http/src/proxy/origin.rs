//! The upstream side of a request: the global in-flight cap, then [`super::forward`], and the
//! hand-over of an upgraded connection.

use std::sync::Arc;

use http::Response;
use hyper::body::Incoming;

use crate::body::RespBody;
use crate::error::ProxyError;
use crate::gateway::Snapshot;
use crate::router::Route;
use crate::tunnel;

use super::forward::forward;
use super::{Admitted, Completion, ConnCtx};

/// Sends a request to the route's upstream under the global cap, bulkheads and retries; the
/// response body carries `done`. On failure `done` comes back with the error, unfinished.
/// (Not an `async fn`, which would keep a copy of each argument beside the argument.)
#[allow(clippy::manual_async_fn)] // on purpose: an async fn would hold each argument twice
pub fn origin(
    ctx: &Arc<ConnCtx>,
    snap: &Snapshot,
    route: &Arc<Route>,
    mut parts: http::request::Parts,
    body: Option<Incoming>,
    admitted: Admitted,
    mut done: Completion,
) -> impl Future<Output = Result<Response<RespBody>, (ProxyError, Completion)>> {
    async move {
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
                // Any 2xx to an extended CONNECT tells the client its tunnel is open (RFC 9113
                // §8.5): an upstream that answered without switching protocols opened none.
                if over_h2.is_some() && head.status.is_success() {
                    let e = ProxyError::BadResponse("a 2xx, not 101, to a WebSocket handshake");
                    done.set_status(e.status().as_u16());
                    return Err((e, done));
                }
                if head.status == http::StatusCode::SWITCHING_PROTOCOLS
                    && let Some(io) = head.extensions.remove::<hyper::upgrade::OnUpgrade>()
                {
                    let websocket = head
                        .headers
                        .get(http::header::UPGRADE)
                        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
                    if let Some(sent) = &over_h2
                        && let Err(e) = crate::h2_websocket::to_h2_response(&mut head, sent)
                    {
                        done.set_status(e.status().as_u16());
                        return Err((e, done));
                    }
                    let up = tunnel::Upgraded::Tunnel(tunnel::Upstream {
                        io,
                        open: route.metrics.tunnels.clone(),
                        websocket,
                    });
                    match client_upgrade {
                        // TLS and HTTP/2 connections let hyper run the upgrade: the client side
                        // arrives here.
                        Some(client) if ctx.scheme == "https" || over_h2.is_some() => {
                            tunnel::spawn(client, up, ctx)
                        }
                        // Plain HTTP/1.1: the connection task takes its socket back (conn.rs).
                        _ => ctx.tunnel.set(up),
                    }
                }
                done.set_status(head.status.as_u16());
                Ok(Response::from_parts(
                    head,
                    RespBody::upstream(upstream_body, done),
                ))
            }
            Err(e) => Err((e, done)),
        }
    }
}
