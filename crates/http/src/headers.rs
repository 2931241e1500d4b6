//! Header rules of a proxy hop: hop-by-hop removal (RFC 9110 §7.6.1), X-Forwarded-*,
//! X-Request-Id.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that never cross a hop, whatever Connection says.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, including every header the Connection header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        if h.contains_key(n) {
            h.remove(n);
        }
    }
}

/// Adds X-Forwarded-For (appended), -Proto and -Host (kept if the client sent them).
pub fn add_forwarded(
    h: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let ip = client.to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::try_from(format!("{prev}, {ip}")),
        None => HeaderValue::try_from(ip),
    };
    if let Ok(v) = xff {
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

/// Returns the request's X-Request-Id, adding a fresh random one if it has none.
pub fn ensure_request_id(h: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID) {
        return v.clone();
    }
    let id: u128 = rand::random();
    let v = HeaderValue::try_from(format!("{id:032x}")).unwrap_or(HeaderValue::from_static("0"));
    h.insert(X_REQUEST_ID.clone(), v.clone());
    v
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
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
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
        assert_eq!(fresh["x-request-id"], id);
    }
}
