//! The subscriber side: the WebSocket handshake (RFC 6455 §4.2) answered by the gateway itself,
//! and the loop that writes a subscription's messages to the socket.
//!
//! Subscribers only listen: text and binary frames they send are ignored, pings are answered
//! (tungstenite does that while reading), and a ping goes out every 30 s so a vanished peer
//! is noticed. Messages that are valid UTF-8 go out as text frames, others as binary.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use scalegate_http::error::ProxyError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use http_body_util::Empty;
use scalegate_core::PickRequest;

use super::{AuthorizeSpec, Ended, Hub, Subscription};
use scalegate_http::body::RespBody;
use scalegate_http::clock;
use scalegate_http::gateway::Snapshot;
use scalegate_http::proxy::ConnCtx;
use scalegate_http::tunnel::Upgraded;

/// How often an idle subscriber is pinged.
const PING_EVERY: Duration = Duration::from_secs(30);

/// How long one frame may wait for room in a subscriber's socket. A subscriber that stops
/// reading fills its socket and would otherwise hold its connection (and a drain) forever
/// without its lag ever being seen (nginx's send_timeout plays this part).
const SEND_WITHIN: Duration = Duration::from_secs(10);

/// Why a request cannot become a subscription, as the status and text to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 405 or 426.
    pub status: StatusCode,
    /// One line for the body.
    pub message: &'static str,
}

/// A valid opening handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// HTTP/1.1 (RFC 6455): answer 101 with this `Sec-WebSocket-Accept`.
    H1(HeaderValue),
    /// HTTP/2 extended CONNECT (RFC 8441): answer 200.
    H2,
}

/// Checks a WebSocket opening handshake. `protocol` is the `:protocol` of an HTTP/2 extended
/// CONNECT, if the request is one.
pub fn accept(
    version: Version,
    method: &Method,
    h: &HeaderMap,
    protocol: Option<&str>,
) -> Result<Handshake, Refusal> {
    let refuse = |status, message| Err(Refusal { status, message });
    if version == Version::HTTP_2 {
        return match protocol {
            Some(p) if p.eq_ignore_ascii_case("websocket") => {
                if h.get("sec-websocket-version")
                    .is_some_and(|v| v.as_bytes() != b"13")
                {
                    return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
                }
                Ok(Handshake::H2)
            }
            _ => refuse(
                StatusCode::BAD_REQUEST,
                "over HTTP/2, subscribe with an extended CONNECT for websocket (RFC 8441)",
            ),
        };
    }
    if version != Version::HTTP_11 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "fan-out subscriptions are WebSockets over HTTP/1.1 or HTTP/2",
        );
    }
    if method != Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "subscribe with a WebSocket GET; publish through the admin API or the bus",
        );
    }
    let upgrade_ok = scalegate_http::tunnel::requested(version, method, h)
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !upgrade_ok {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this path takes WebSocket subscriptions (Connection: Upgrade, Upgrade: websocket)",
        );
    }
    if h.get("sec-websocket-version").map(HeaderValue::as_bytes) != Some(b"13") {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "Sec-WebSocket-Version must be 13",
        );
    }
    let key = match h.get("sec-websocket-key") {
        Some(k) if k.len() == 24 => k,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key must be 16 bytes in base64",
            );
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    HeaderValue::try_from(accept)
        .map(Handshake::H1)
        .or(refuse(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key"))
}

/// Answers a request for a fan-out path: 101 and a subscription when it is a proper WebSocket
/// handshake the application authorizes (subscribed before the 101 goes out, so nothing
/// published after it is missed), otherwise the refusal.
pub async fn answer(
    ctx: &Arc<ConnCtx>,
    snap: &Snapshot,
    hub: &Hub,
    topic: &str,
    parts: &mut http::request::Parts,
) -> http::Response<RespBody> {
    let protocol = scalegate_http::h2_websocket::protocol(parts);
    let key = match accept(parts.version, &parts.method, &parts.headers, protocol) {
        Ok(key) => key,
        Err(r) => return refusal(r),
    };
    let bad_topic = Refusal {
        status: StatusCode::BAD_REQUEST,
        message: "topic must be 1-128 characters of A-Z a-z 0-9 _ - . (no leading, trailing or double .)",
    };
    if super::check_topic(topic).is_err() {
        return refusal(bad_topic);
    }
    if let Some(auth) = &hub.spec().authorize
        && let Err(r) = authorize(
            snap,
            auth,
            topic,
            parts,
            scalegate_http::edge::client_ip(ctx, parts),
        )
        .await
    {
        return refusal(r);
    }
    let sub = match hub.subscribe(topic) {
        Ok(sub) => sub,
        Err(super::PublishError::Bus(_)) => {
            return refusal(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "this gateway is not connected to the fan-out bus now; retry",
            });
        }
        Err(_) => return refusal(bad_topic),
    };
    match parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
        // TLS and HTTP/2 connections let hyper run the upgrade: the client side arrives here.
        Some(client) if ctx.scheme == "https" || key == Handshake::H2 => {
            scalegate_http::tunnel::spawn(client, Upgraded::Service(Box::new(sub)), ctx)
        }
        // Plain HTTP/1.1: the connection task takes its socket back (conn.rs).
        _ => ctx.tunnel.set(Upgraded::Service(Box::new(sub))),
    }
    let mut resp = http::Response::new(RespBody::empty());
    match key {
        Handshake::H1(key) => {
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert("sec-websocket-accept", key);
        }
        Handshake::H2 => *resp.status_mut() = StatusCode::OK,
    }
    resp
}

/// Asks the application whether this client may subscribe to `topic`.
async fn authorize(
    snap: &Snapshot,
    auth: &AuthorizeSpec,
    topic: &str,
    parts: &http::request::Parts,
    client: std::net::IpAddr,
) -> Result<(), Refusal> {
    let unavailable = Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "cannot authorize the subscription now; retry",
    };
    let upstream = snap.upstream(&auth.upstream).ok_or(unavailable)?;
    let pick = upstream
        .set
        .pick(&PickRequest::default(), clock::now(), &mut rand::rng())
        .ok_or(unavailable)?;
    let ep = upstream.endpoints.get(pick.index).ok_or(unavailable)?;
    let mut req = http::Request::get(format!("{}?topic={topic}", auth.path))
        .body(Empty::<Bytes>::new())
        .map_err(|_| unavailable)?;
    let h = req.headers_mut();
    for name in [header::COOKIE, header::AUTHORIZATION, header::ORIGIN] {
        for v in parts.headers.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
    if let Some(id) = parts.headers.get(&scalegate_http::headers::X_REQUEST_ID) {
        h.insert(scalegate_http::headers::X_REQUEST_ID.clone(), id.clone());
    }
    // The client address (behind the listener's trusted proxies: the one they forwarded for).
    if let Ok(ip) = HeaderValue::try_from(client.to_string()) {
        h.insert("x-forwarded-for", ip);
    }
    if let Ok(t) = HeaderValue::try_from(topic) {
        h.insert("x-scalegate-topic", t);
    }
    let status = tokio::time::timeout(
        auth.timeout,
        scalegate_http::oneshot::status(ep, req, auth.timeout),
    )
    .await
    .ok()
    .flatten()
    .ok_or(unavailable)?;
    match status.as_u16() {
        200..=299 => Ok(()),
        401 | 403 | 404 => Err(Refusal {
            status,
            message: "not allowed to subscribe to this topic",
        }),
        _ => Err(unavailable),
    }
}

fn refusal(r: Refusal) -> http::Response<RespBody> {
    // "Come back later" is the outcome table's to write (503 + Retry-After).
    if r.status == StatusCode::SERVICE_UNAVAILABLE {
        return ProxyError::Unavailable(r.message).to_response();
    }
    let body = format!("{}: {}\n", r.status.as_u16(), r.message);
    let mut resp = http::Response::new(RespBody::full(Bytes::from(body)));
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match r.status {
        StatusCode::UPGRADE_REQUIRED => {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert("sec-websocket-version", HeaderValue::from_static("13"));
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            h.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        _ => {}
    }
    resp
}

/// Writes the subscription's messages to the client until it closes, falls behind, or `stop`
/// resolves (the gateway shuts down: close 1001).
pub async fn serve<C>(client: C, mut sub: Subscription, stop: impl Future<Output = ()>)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let max = sub.max_message_bytes();
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut ws = WebSocketStream::from_raw_socket(client, Role::Server, Some(config)).await;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    tokio::pin!(stop);
    let close = loop {
        let out = tokio::select! {
            m = sub.next() => match m {
                Ok(m) => frame(m),
                Err(Ended::Lagged) => break (CloseCode::Again, "too slow: messages were dropped; reconnect"),
                Err(Ended::Cut) => break (CloseCode::Again, "the fan-out bus was interrupted: messages may be missing; reconnect"),
            },
            incoming = ws.next() => match incoming {
                // Pings are answered inside tungstenite; what subscribers send is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
            () = &mut stop => break (CloseCode::Away, "gateway shutting down"),
        };
        // Its socket is full when a send waits: give up after a while, or at shutdown. Either
        // way the socket cannot take a Close frame, so the connection is just dropped.
        tokio::select! {
            sent = ws.send(out) => if sent.is_err() {
                return;
            },
            () = tokio::time::sleep(SEND_WITHIN) => {
                sub.count_slow();
                tracing::info!("a fan-out subscriber stopped reading; disconnected");
                return;
            }
            () = &mut stop => return,
        }
    };
    let bye = async {
        let frame = CloseFrame {
            code: close.0,
            reason: close.1.into(),
        };
        let _ = ws.send(Message::Close(Some(frame))).await;
        let _ = ws.close(None).await;
    };
    let _ = tokio::time::timeout(SEND_WITHIN, bye).await;
}

fn frame(m: Bytes) -> Message {
    match tokio_tungstenite::tungstenite::Utf8Bytes::try_from(m.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("sec-websocket-version", HeaderValue::from_static("13"));
        h.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    #[test]
    fn the_rfc_example_key_gets_the_rfc_accept_value() {
        let a = accept(Version::HTTP_11, &Method::GET, &handshake(), None).expect("accept");
        assert_eq!(
            a,
            Handshake::H1(HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
        );
        assert_eq!(
            accept(
                Version::HTTP_2,
                &Method::CONNECT,
                &HeaderMap::new(),
                Some("websocket")
            ),
            Ok(Handshake::H2)
        );
    }

    #[test]
    fn what_is_not_a_websocket_handshake_gets_a_clear_status() {
        let status = |v, m: &Method, h: &HeaderMap| accept(v, m, h, None).err().map(|r| r.status);
        let h = handshake();
        assert_eq!(
            status(Version::HTTP_2, &Method::GET, &h),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status(Version::HTTP_11, &Method::POST, &h),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            status(Version::HTTP_11, &Method::GET, &HeaderMap::new()),
            Some(StatusCode::UPGRADE_REQUIRED)
        );
        let mut old = handshake();
        old.insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(
            status(Version::HTTP_11, &Method::GET, &old),
            Some(StatusCode::UPGRADE_REQUIRED)
        );
        let mut no_key = handshake();
        no_key.remove("sec-websocket-key");
        assert_eq!(
            status(Version::HTTP_11, &Method::GET, &no_key),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
