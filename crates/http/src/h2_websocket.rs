//! WebSocket over HTTP/2 (RFC 8441): an HTTP/2 client opens a WebSocket with an extended
//! CONNECT (`:method CONNECT`, `:protocol websocket`) on one stream of its connection. The
//! gateway advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, and turns such a request into the
//! HTTP/1.1 opening handshake upstreams speak (RFC 6455 §4.1: GET, `Upgrade: websocket`, a fresh
//! `Sec-WebSocket-Key`) before routing, so routes, limits and balancing treat it like any
//! WebSocket. When the upstream answers 101 with the right `Sec-WebSocket-Accept`, the client
//! gets 200 and the frames flow between its stream and the upstream's upgraded connection
//! (WebSocket frames are the same on both). A 2xx that is not a 101 is a 502 (it would tell the
//! client its tunnel is open); any other answer comes back as it is.

use http::header::{self, HeaderValue};
use http::{Method, StatusCode, request, response};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::error::ProxyError;

/// Marks a request that arrived as an RFC 8441 extended CONNECT; holds the key the gateway
/// sent upstream, to check the upstream's answer.
#[derive(Clone, Debug)]
pub struct Translated {
    key: String,
}

/// The `:protocol` of an extended CONNECT, if the request is one.
pub fn protocol(parts: &request::Parts) -> Option<&str> {
    if parts.method != Method::CONNECT {
        return None;
    }
    parts
        .extensions
        .get::<hyper::ext::Protocol>()
        .map(hyper::ext::Protocol::as_str)
}

/// Rewrites an extended CONNECT for `websocket` into an HTTP/1.1 upgrade request in place.
/// Ok(false) for any other request; an extended CONNECT for another protocol, or without
/// WebSocket version 13, is refused.
pub fn to_h1_upgrade(parts: &mut request::Parts) -> Result<bool, ProxyError> {
    let Some(p) = protocol(parts) else {
        return Ok(false);
    };
    if !p.eq_ignore_ascii_case("websocket") {
        return Err(ProxyError::BadRequest(
            "only the websocket protocol can be bootstrapped over HTTP/2",
        ));
    }
    if parts
        .headers
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() != b"13")
    {
        return Err(ProxyError::BadRequest("Sec-WebSocket-Version must be 13"));
    }
    let key = generate_key();
    let value = HeaderValue::try_from(key.as_str())
        .map_err(|_| ProxyError::BadRequest("cannot make a WebSocket key"))?;
    parts.method = Method::GET;
    let h = &mut parts.headers;
    h.insert("sec-websocket-key", value);
    h.insert("sec-websocket-version", HeaderValue::from_static("13"));
    parts.extensions.insert(Translated { key });
    Ok(true)
}

/// Turns the upstream's 101 into the HTTP/2 client's 200, after checking that the upstream
/// accepted the key the gateway sent (a wrong answer is a broken upstream: 502).
pub fn to_h2_response(head: &mut response::Parts, sent: &Translated) -> Result<(), ProxyError> {
    let expected = derive_accept_key(sent.key.as_bytes());
    let accepted = head
        .headers
        .get("sec-websocket-accept")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !accepted {
        return Err(ProxyError::UpstreamReset);
    }
    head.status = StatusCode::OK;
    for name in [header::CONNECTION, header::UPGRADE, header::CONTENT_LENGTH] {
        head.headers.remove(name);
    }
    head.headers.remove("sec-websocket-accept");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(protocol: &'static str) -> request::Parts {
        let mut req = http::Request::connect("https://example.com/chat")
            .body(())
            .expect("request");
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static(protocol));
        req.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        req.into_parts().0
    }

    #[test]
    fn an_extended_connect_becomes_an_upgrade_and_the_101_a_200() {
        let mut p = connect("websocket");
        assert!(to_h1_upgrade(&mut p).expect("translated"));
        assert_eq!(p.method, Method::GET);
        let key = p.headers["sec-websocket-key"].clone();
        let sent = p.extensions.get::<Translated>().cloned().expect("marked");

        let mut ok = http::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header(
                "sec-websocket-accept",
                derive_accept_key(key.as_bytes()).as_str(),
            )
            .header("sec-websocket-protocol", "chat")
            .body(())
            .expect("response")
            .into_parts()
            .0;
        to_h2_response(&mut ok, &sent).expect("accepted");
        assert_eq!(ok.status, StatusCode::OK);
        assert!(ok.headers.get("upgrade").is_none());
        assert_eq!(ok.headers["sec-websocket-protocol"], "chat");

        let mut wrong = http::Response::builder()
            .status(101)
            .header("sec-websocket-accept", "nope")
            .body(())
            .expect("response")
            .into_parts()
            .0;
        assert!(to_h2_response(&mut wrong, &sent).is_err());
    }

    #[test]
    fn other_requests_and_protocols() {
        let mut get = http::Request::get("/")
            .body(())
            .expect("req")
            .into_parts()
            .0;
        assert!(!to_h1_upgrade(&mut get).expect("plain"));
        assert!(to_h1_upgrade(&mut connect("connect-udp")).is_err());
    }
}
