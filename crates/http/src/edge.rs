//! The edge of the request path: what a listener refuses or rewrites before anything else looks
//! at a request. [`admit`] runs first in `proxy::handle`, once per request: the head checks
//! (`headers::check_head`: Host rules, size and count limits), the one normalisation of path and
//! host (`normalize.rs`), CONNECT refused, the upgrade filter, and the client address behind
//! trusted proxies
//! (`forwarded.rs`). Routing, access rules, rate limits, the cache, the access log and the
//! upstream request all see what it leaves.

use std::net::IpAddr;

use http::header::{self, HeaderMap};
use http::request::Parts;

use crate::error::ProxyError;
use crate::forwarded::TrustSpec;
use crate::normalize::NormalizeSpec;
use crate::proxy::ConnCtx;

/// hyper's own HTTP/1.1 header count limit, which is also the default here (raising or lowering
/// it makes hyper allocate the header array per request, so it is only set when it differs).
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// A listener's edge rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeSpec {
    /// Path and host normalisation.
    pub normalize: NormalizeSpec,
    /// Whose forwarded headers are believed.
    pub trust: TrustSpec,
    /// Most request header field lines (default 100), HTTP/1.1 and HTTP/2 alike; more is 431.
    pub max_headers: usize,
    /// Protocols an HTTP/1.1 `Upgrade` may ask for, lower case (default `["websocket"]`); an
    /// `Upgrade` naming anything else is removed and the request served as plain HTTP. `h2c` is
    /// never allowed: its streams would not pass routing or access rules.
    pub upgrades: Vec<String>,
}

impl Default for EdgeSpec {
    fn default() -> Self {
        EdgeSpec {
            normalize: NormalizeSpec::default(),
            trust: TrustSpec::default(),
            max_headers: DEFAULT_MAX_HEADERS,
            upgrades: vec!["websocket".into()],
        }
    }
}

/// The client's address found behind trusted proxies, kept in the request's extensions when it
/// differs from the peer's (see [`client_ip`]).
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

/// Checks and normalises a request head in place; an Err is the client's fault (400 or 431).
pub fn admit(ctx: &ConnCtx, parts: &mut Parts) -> Result<(), ProxyError> {
    let rules = ctx.rules.load();
    let edge = &rules.edge;
    crate::headers::check_head(parts, ctx.max_head, edge.max_headers)?;
    crate::normalize::normalize(parts, &edge.normalize)?;
    // A tunnel to wherever the client names would pass no route's rules: only RFC 8441's
    // extended CONNECT (a WebSocket, h2_websocket.rs) is taken.
    if parts.method == http::Method::CONNECT
        && parts.extensions.get::<hyper::ext::Protocol>().is_none()
    {
        return Err(ProxyError::BadRequest("CONNECT tunnels are not offered"));
    }
    filter_upgrade(&mut parts.headers, &edge.upgrades);
    join_cookies(&mut parts.headers);
    if let Some(ip) = edge
        .trust
        .client_behind_proxies(ctx.peer.ip(), &parts.headers)
    {
        parts.extensions.insert(ClientIp(ip));
    }
    Ok(())
}

/// Joins the Cookie fields of a request into one with "; ": HTTP/2 clients send each cookie as
/// its own field, which must be joined before an HTTP/1.1 hop (RFC 9113 §8.2.3); many servers
/// read only the first Cookie line, and would render a page for other cookies than the cache
/// keyed it on.
fn join_cookies(h: &mut HeaderMap) {
    let mut all = h.get_all(header::COOKIE).iter();
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in h.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = header::HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// The client's address: the peer's, or the one found behind trusted proxies by [`admit`].
pub fn client_ip(ctx: &ConnCtx, parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ClientIp>()
        .map_or(ctx.peer.ip(), |c| c.0)
}

/// Removes an `Upgrade` that names a protocol the listener does not pass (and `HTTP2-Settings`
/// with it), so the request is served as an ordinary one.
fn filter_upgrade(h: &mut HeaderMap, allowed: &[String]) {
    let Some(up) = h.get(header::UPGRADE) else {
        return;
    };
    let passes = up.to_str().is_ok_and(|v| {
        v.split(',').all(|p| {
            // A protocol may carry a version: "websocket", "foo/2".
            let name = p.split('/').next().unwrap_or("").trim();
            !name.eq_ignore_ascii_case("h2c")
                && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
    });
    if !passes || h.get_all(header::UPGRADE).iter().count() > 1 {
        h.remove(header::UPGRADE);
        h.remove("http2-settings");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_allowed_upgrades_stay() {
        let allowed = vec!["websocket".to_string()];
        for (offer, kept) in [
            ("websocket", true),
            ("WebSocket", true),
            ("h2c", false),
            ("websocket, h2c", false),
            ("foo/2", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, HeaderValue::from_static(offer));
            h.insert("http2-settings", HeaderValue::from_static("AAMAAABk"));
            filter_upgrade(&mut h, &allowed);
            assert_eq!(h.contains_key(header::UPGRADE), kept, "{offer}");
            assert_eq!(h.contains_key("http2-settings"), kept, "{offer}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        filter_upgrade(&mut h, &["h2c".to_string()]);
        assert!(!h.contains_key(header::UPGRADE), "h2c is never passed");
    }
}
