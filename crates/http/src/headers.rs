//! Header rules of a proxy hop: hop-by-hop removal (RFC 9110 §7.6.1), X-Forwarded-*,
//! X-Request-Id.
//!
//! This runs twice per request (request and response), so it walks the map once instead of
//! looking up each hop-by-hop name.

use std::io::Write;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::error::ProxyError;

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that never cross a hop, whatever Connection says. (`Trailer`, which RFC 2616 listed
/// by mistake, is end to end: it declares the trailer fields, and hyper sends HTTP/1.1 trailers
/// only when it is present.)
fn is_hop_by_hop(n: &HeaderName) -> bool {
    *n == header::CONNECTION
        || *n == header::TE
        || *n == header::TRANSFER_ENCODING
        || *n == header::UPGRADE
        || *n == header::PROXY_AUTHORIZATION
        || n.as_str() == "keep-alive"
        || n.as_str() == "proxy-connection"
}

/// Removes hop-by-hop headers, including every header the Connection header names.
///
/// `TE: trailers` is the one exception: it says the client accepts trailer fields, which the
/// gateway passes through, so the next hop gets it too. gRPC depends on it (servers reject calls
/// without it, and HTTP/2 allows no other TE value). Other transfer codings in TE are dropped.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    let trailers = h
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            // A coding may carry parameters ("trailers;q=1" is not valid, but be lenient).
            let name = t.split(';').next().unwrap_or("").trim();
            name.eq_ignore_ascii_case("trailers")
        });
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let doomed: Vec<HeaderName> = h.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    for n in doomed.iter().chain(&named) {
        h.remove(n);
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Adds X-Forwarded-For (appended), -Proto and -Host (kept if the client sent them).
pub fn add_forwarded(
    h: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut buf = [0u8; 512];
    let mut w = &mut buf[..];
    let prev = h.get(&X_FORWARDED_FOR).map(|v| v.as_bytes());
    let written = match prev {
        Some(p) if p.len() < 400 => w.write_all(p).and_then(|_| write!(w, ", {client}")),
        Some(_) => Err(std::io::ErrorKind::OutOfMemory.into()),
        None => write!(w, "{client}"),
    };
    let len = 512 - w.len();
    let value = match written {
        Ok(()) => HeaderValue::from_bytes(&buf[..len]).ok(),
        // A very long chain: fall back to an allocation.
        Err(_) => prev.and_then(|p| {
            let mut v = p.to_vec();
            v.extend_from_slice(format!(", {client}").as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }),
    };
    if let Some(v) = value {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if let Some(host) = host
        && !h.contains_key(&X_FORWARDED_HOST)
    {
        h.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
}

/// What hyper lets through but RFC 9112 §3.2 and the listener's limit do not: more than one
/// Host, a Host that is not an authority, an HTTP/1.1 request with no Host (400); a request line
/// and headers over `max_head` bytes (431: hyper's own limit is on its read buffer, which a
/// single large read can overshoot).
pub fn check_head(parts: &http::request::Parts, max_head: usize) -> Result<(), ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(ProxyError::BadRequest("more than one Host header")),
        (Some(h), None) => {
            // Empty is allowed: a client sends it when the target has no authority.
            if !h.is_empty() && http::uri::Authority::try_from(h.as_bytes()).is_err() {
                return Err(ProxyError::BadRequest("Host is not a valid authority"));
            }
        }
        (None, None) => {
            if parts.version == http::Version::HTTP_11 && parts.uri.authority().is_none() {
                return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"));
            }
        }
    }
    // Each field line costs its name, ": ", its value and CRLF on the wire.
    let mut size = parts.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 16;
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + 4;
    }
    if size > max_head {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// Returns the request's X-Request-Id, adding a fresh random one (32 hex digits) if it has none.
pub fn ensure_request_id(h: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID) {
        return v.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((id >> (4 * (31 - i))) & 0xf) as usize];
    }
    let v = HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"));
    h.insert(X_REQUEST_ID.clone(), v.clone());
    v
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn te_trailers_crosses_the_hop_and_other_codings_do_not() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("TE"));
        h.insert(header::TE, HeaderValue::from_static("deflate, Trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert!(h.contains_key(header::TRAILER), "Trailer is end to end");
        assert!(!h.contains_key(header::CONNECTION));

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip;q=0.5"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn forwarded_for_appends_and_request_id_is_kept() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        add_forwarded(
            &mut h,
            "10.0.0.1".parse().unwrap(),
            "http",
            Some(&HeaderValue::from_static("ex.com")),
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "ex.com");
        assert_eq!(ensure_request_id(&mut h), "abc");
        let mut fresh = HeaderMap::new();
        let id = ensure_request_id(&mut fresh);
        assert_eq!(id.len(), 32);
        assert!(id.to_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fresh["x-request-id"], id);
    }

    #[test]
    fn very_long_forwarded_chain_still_appends() {
        let mut h = HeaderMap::new();
        let long = vec!["10.0.0.1"; 60].join(", ");
        h.insert("x-forwarded-for", HeaderValue::from_str(&long).unwrap());
        add_forwarded(&mut h, "10.9.9.9".parse().unwrap(), "http", None);
        assert!(
            h["x-forwarded-for"]
                .to_str()
                .unwrap()
                .ends_with(", 10.9.9.9")
        );
    }
}
