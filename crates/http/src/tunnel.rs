//! Protocol upgrades (WebSocket and any other `Upgrade:` protocol) over HTTP/1.1.
//!
//! An upgrade request goes through routing, admission, bulkheads and endpoint choice like any
//! other, but keeps its `Connection: upgrade` and `Upgrade` headers and travels on a fresh
//! upstream connection of its own (an upgraded connection never returns to a pool). When the
//! upstream answers 101, the client gets the 101, and once hyper has written it the client
//! connection's task takes its socket back (`conn.rs`) and copies bytes both ways until either
//! side closes or the gateway shuts down. Any other answer (426, 400, a redirect) is passed back
//! as a normal response.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::ReqBody;
use crate::error::ProxyError;
use crate::stall::{Stall, Watched};

/// The protocol an HTTP/1.1 request asks to switch to (its `Upgrade` value) when its
/// Connection header carries the `upgrade` token.
pub fn requested(version: Version, method: &Method, h: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 || method == Method::CONNECT {
        return None;
    }
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    h.get(header::UPGRADE).cloned()
}

/// Marks a request (in its extensions) as asking for an upgrade to this protocol; set once
/// where the request arrives, read where it is sent.
#[derive(Clone, Debug)]
pub struct Requested(pub HeaderValue);

/// Puts back the two hop-by-hop headers an upgrade must carry to the next hop.
pub fn restore(h: &mut HeaderMap, protocol: HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, protocol);
}

/// Sends an upgrade request on a new connection over `stream`; the response's extensions
/// carry the upstream side of the upgrade when it is a 101.
pub async fn send<S>(
    stream: S,
    req: http::Request<ReqBody>,
) -> Result<Response<Incoming>, ProxyError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ProxyError::ConnectFailed)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    let asked = req.headers().get(http::header::UPGRADE).cloned();
    let resp = tx
        .send_request(req)
        .await
        .map_err(|_| ProxyError::UpstreamReset)?;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        && !switched_as_asked(asked.as_ref(), resp.headers().get(http::header::UPGRADE))
    {
        return Err(ProxyError::BadResponse(
            "upstream switched to a protocol the client did not ask for",
        ));
    }
    Ok(resp)
}

/// Whether a 101's Upgrade names only protocols the request offered (RFC 9110 §7.8): a client
/// that asked for `websocket` must not be handed a tunnel speaking something else.
fn switched_as_asked(asked: Option<&HeaderValue>, answered: Option<&HeaderValue>) -> bool {
    let tokens = |v: Option<&HeaderValue>| -> Vec<String> {
        v.and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let offered = tokens(asked);
    let chosen = tokens(answered);
    !chosen.is_empty() && chosen.iter().all(|c| offered.contains(c))
}

/// The upstream half of an accepted upgrade.
#[derive(Debug)]
pub struct Upstream {
    /// The upstream connection, once hyper hands it over.
    pub io: OnUpgrade,
    /// The route's gauge of open tunnels.
    pub open: Gauge,
    /// The upgrade is to WebSocket: the gateway's shutdown closes it with 1001 (ws_frames.rs).
    pub websocket: bool,
}

/// What a client connection becomes after a 101: a tunnel to an upstream, or a fan-out
/// subscription the gateway serves itself.
#[derive(Debug)]
pub enum Upgraded {
    /// Bytes copied both ways to the upstream's side.
    Tunnel(Upstream),
    /// A connection the gateway serves itself (a feature: fan-out subscriptions).
    Service(Box<dyn crate::plug::UpgradeService>),
}

/// The other half of an accepted upgrade, waiting for the client connection to take it.
#[derive(Debug, Default)]
pub struct Pending(Mutex<Option<Upgraded>>);

impl Pending {
    /// Keeps the other side of a 101 for the connection task.
    pub fn set(&self, up: Upgraded) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(up);
        }
    }

    /// The other side, if a 101 went out on this connection.
    pub fn take(&self) -> Option<Upgraded> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }
}

/// Serves an upgraded client connection until it ends or `stop` resolves (the gateway shuts
/// down); a tunnel one of whose peers stops reading ends after `stuck_after`.
pub async fn run<C>(
    client: C,
    up: Upgraded,
    stop: impl Future<Output = ()> + Send,
    stuck_after: Duration,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    match up {
        Upgraded::Tunnel(upstream) => copy(client, upstream, stop, stuck_after).await,
        Upgraded::Service(service) => service.serve(Box::new(client), Box::pin(stop)).await,
    }
}

/// Copies bytes between the client and the upgraded upstream until either side closes, `stop`
/// resolves, or one side has refused writes for `stuck_after` (its peer stopped reading: the
/// copy would wait on it for ever).
async fn copy<C>(
    mut client: C,
    upstream: Upstream,
    stop: impl Future<Output = ()>,
    stuck_after: Duration,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Upstream {
        io: upstream,
        open,
        websocket,
    } = upstream;
    open.inc();
    let _open = OpenTunnel(open);
    let upstream = match upstream.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "upstream upgrade failed");
            let _ = client.shutdown().await;
            return;
        }
    };
    let (to_client, to_upstream) = (Arc::new(Stall::default()), Arc::new(Stall::default()));
    let mut client = Watched::new(client, to_client.clone()).following_frames(websocket, false);
    let upstream = Watched::new(TokioIo::new(upstream), to_upstream.clone());
    let mut upstream = upstream.following_frames(websocket, true);
    let mut watch = tokio::time::interval((stuck_after / 4).max(Duration::from_millis(100)));
    let stuck = || {
        [&to_client, &to_upstream]
            .iter()
            .any(|s| s.stalled_for().is_some_and(|d| d >= stuck_after))
    };
    tokio::pin!(stop);
    let ended = {
        let copying = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copying);
        loop {
            tokio::select! {
                r = &mut copying => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "tunnel ended");
                    }
                    return;
                }
                () = &mut stop => break Cut::Stopping,
                _ = watch.tick() => if stuck() {
                    tracing::debug!("a tunnel's peer stopped reading; closing both sides");
                    break Cut::Stuck;
                },
            }
        }
    };
    if ended == Cut::Stopping {
        // Bounded as the shutdowns below are.
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, client.say_going_away()).await;
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, upstream.say_going_away()).await;
    }
    // Bounded: a shutdown over TLS or HTTP/2 has to write (close_notify, END_STREAM), which a
    // peer that stopped reading never lets through; the tunnel then ends by being dropped.
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, client.shutdown()).await;
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, upstream.shutdown()).await;
}

/// Why the gateway cut a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// The gateway shuts down.
    Stopping,
    /// A peer stopped reading.
    Stuck,
}

/// How long a cut tunnel's side may take to shut down before it is dropped.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// Serves an upgrade on its own task once hyper hands over the client side (connections served
/// with hyper's upgrade support: TLS, and WebSockets over HTTP/2); it ends when the gateway
/// shuts down, as a plain HTTP/1.1 one does. It counts as in flight on `ctx`'s connection
/// while it lasts, so an HTTP/2 connection carrying it is not closed as idle.
pub fn spawn(client: OnUpgrade, upstream: Upgraded, ctx: &Arc<crate::proxy::ConnCtx>) {
    let busy = crate::conn::Busy::new(ctx);
    let stuck_after = ctx.idle_timeout;
    let shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        let _busy = busy;
        let stop = async move {
            match shutdown {
                Some(mut s) => s.wait().await,
                None => std::future::pending().await,
            }
        };
        match client.await {
            Ok(c) => run(TokioIo::new(c), upstream, stop, stuck_after).await,
            Err(e) => tracing::debug!(error = %e, "client upgrade failed"),
        }
    });
}

/// Decrements the gauge when dropped.
struct OpenTunnel(Gauge);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found from outside: a 101 with `Upgrade: foo` to a request for `websocket` was
    /// tunnelled.
    #[test]
    fn a_switch_must_name_what_was_asked() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(switched_as_asked(
            Some(&v("websocket")),
            Some(&v("WebSocket"))
        ));
        assert!(switched_as_asked(
            Some(&v("foo/2, websocket")),
            Some(&v("websocket"))
        ));
        assert!(!switched_as_asked(Some(&v("websocket")), Some(&v("foo"))));
        assert!(!switched_as_asked(Some(&v("websocket")), None));
        assert!(!switched_as_asked(None, Some(&v("websocket"))));
    }

    #[test]
    fn only_http11_requests_naming_upgrade_in_connection_ask_for_one() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(
            requested(Version::HTTP_11, &Method::GET, &h).is_none(),
            "no Connection token"
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(
            requested(Version::HTTP_11, &Method::GET, &h)
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert!(requested(Version::HTTP_2, &Method::GET, &h).is_none());
        assert!(requested(Version::HTTP_10, &Method::GET, &h).is_none());
        h.remove(header::UPGRADE);
        assert!(
            requested(Version::HTTP_11, &Method::GET, &h).is_none(),
            "no protocol named"
        );
    }
}
