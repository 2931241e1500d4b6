//! Header rules of a proxy hop: hop-by-hop removal (RFC 9110 §7.6.1), the checks on a request
//! head that hyper does not make, X-Request-Id. (X-Forwarded-* and trust: `forwarded.rs`.)
//!
//! This runs twice per request (request and response), so it walks the map once instead of
//! looking up each hop-by-hop name.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::error::ProxyError;

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that never cross a hop, whatever Connection says. (`Trailer`, which RFC 2616 listed
/// by mistake, is end to end: it declares the trailer fields, and hyper sends HTTP/1.1 trailers
/// only when it is present.) `http2-settings` is only meaningful with an h2c upgrade, which
/// never crosses the gateway.
static HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &HTTP2_SETTINGS,
];

/// Removes hop-by-hop headers, including every header the Connection header names, except the
/// ones the gateway owns (`forwarded::gateway_owned`: X-Request-Id, X-Forwarded-*, Host,
/// Content-Length …), which a client must not be able to strip from the next hop.
///
/// `TE: trailers` is the one exception: it says the client accepts trailer fields, which the
/// gateway passes through, so the next hop gets it too. gRPC depends on it (servers reject calls
/// without it, and HTTP/2 allows no other TE value). Other transfer codings in TE are dropped.
///
/// One walk over the names finds which hop-by-hop ones are present; only those are looked up
/// again. Nothing is allocated unless Connection names a header of another kind. Returns
/// whether `TE: trailers` was kept (a response has no use for it: its caller removes it).
pub fn strip_hop_by_hop(h: &mut HeaderMap) -> bool {
    let mut present = [false; HOP_BY_HOP.len()];
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| *hop == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return false;
    }
    let trailers = present[1]
        && tokens(h, &header::TE).any(|t| {
            // A coding may carry parameters ("trailers;q=1" is not valid, but be lenient).
            let name = t.split(';').next().unwrap_or("").trim();
            name.eq_ignore_ascii_case("trailers")
        });
    // The names Connection lists, other than the hop-by-hop ones removed anyway.
    let named: Vec<HeaderName> = match present[0] {
        true => tokens(h, &header::CONNECTION)
            .map(str::trim)
            .filter(|t| {
                !HOP_BY_HOP
                    .iter()
                    .any(|hop| t.eq_ignore_ascii_case(hop.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !crate::forwarded::gateway_owned(n))
            .collect(),
        false => Vec::new(),
    };
    for (hop, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        h.remove(*hop);
    }
    for n in &named {
        h.remove(n);
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    trailers
}

/// gRPC's trailer fields, declared on a gRPC response that declares none: an HTTP/2 upstream
/// sends its trailers undeclared, and an HTTP/1.1 client that asked with `TE: trailers` gets
/// only the fields the response's `Trailer` header names (RFC 9110 §6.6.2; hyper drops the
/// rest), so it lost `grpc-status`. Harmless to HTTP/2 clients.
pub fn declare_grpc_trailers(h: &mut HeaderMap) {
    // `application/grpc`, `application/grpc+proto`, `application/grpc;…`; not gRPC-Web, whose
    // trailers travel in the body. A trailers-only answer has its status in the head already.
    let grpc = h.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.get(..16)
            .is_some_and(|t| t.eq_ignore_ascii_case(b"application/grpc"))
            && matches!(v.get(16), None | Some(b'+' | b';' | b' '))
    });
    if grpc && !h.contains_key(header::TRAILER) && !h.contains_key("grpc-status") {
        h.insert(
            header::TRAILER,
            HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
        );
    }
}

/// A response's Content-Length as one field, and none on a 1xx or 204 (RFC 9110 §8.6). hyper's
/// client accepts repeated fields and lists of one value (RFC 9112 §6.3 allows it; differing
/// values are refused), and a length on a 204; passed on as they came, each makes HTTP/2
/// clients refuse the response as malformed.
pub fn one_content_length(status: http::StatusCode, h: &mut HeaderMap) {
    if status.is_informational() || status == http::StatusCode::NO_CONTENT {
        h.remove(header::CONTENT_LENGTH);
        return;
    }
    // Most responses repeat no field at all: then one lookup tells.
    if h.len() == h.keys_len() {
        if h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().contains(&b','))
        {
            one_of_many(h);
        }
        return;
    }
    let mut all = h.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), None) = (all.next(), all.next()) else {
        return one_of_many(h);
    };
    if first.as_bytes().contains(&b',') {
        one_of_many(h);
    }
}

/// Replaces several Content-Length values that agree with one field.
fn one_of_many(h: &mut HeaderMap) {
    let agreed = {
        let mut values = tokens(h, &header::CONTENT_LENGTH).map(|v| v.trim().parse::<u64>().ok());
        let first = values.next().flatten();
        first.filter(|_| values.all(|v| v == first))
    };
    if let Some(n) = agreed {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// The comma-separated items of every `name` line that is text.
fn tokens<'a>(h: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    h.get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
}

/// Whether every transfer coding the message names is `chunked` (or it names none). hyper
/// decodes the chunked coding (it must be last) and the body goes on re-framed, so any other
/// coding (`gzip, chunked`) would reach the next hop undeclared: requests with one are 501,
/// responses 502.
pub fn only_chunked(h: &http::HeaderMap) -> bool {
    h.get_all(header::TRANSFER_ENCODING).iter().all(|te| {
        te.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|c| c.trim().eq_ignore_ascii_case("chunked"))
        })
    })
}

/// What hyper lets through but RFC 9112 §3.2 and the listener's limits do not: more than one
/// Host, a Host that is not an authority, an HTTP/1.1 request with no Host, even in absolute
/// form, a Host that differs from HTTP/2's `:authority`, an authority-form target on another
/// method than CONNECT (400); a request line and headers over `max_head` bytes or more than `max_headers`
/// field lines (431: hyper's own size limit is on its read buffer, which a single large read
/// can overshoot, and HTTP/2 has no count limit of its own). The limits are the same for
/// HTTP/1.1 and HTTP/2. A transfer coding other than chunked is 501 ([`only_chunked`]).
pub fn check_head(
    parts: &http::request::Parts,
    max_head: usize,
    max_headers: usize,
) -> Result<(), ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(ProxyError::BadRequest("more than one Host header")),
        (Some(h), None) => {
            // Empty only where the target has no authority (RFC 9112 §3.2), which an
            // `http` origin-form target of HTTP/1.1 always has (nginx: 400 as well).
            if h.is_empty()
                && parts.version == http::Version::HTTP_11
                && parts.uri.authority().is_none()
            {
                return Err(ProxyError::BadRequest("empty Host"));
            }
            if !h.is_empty() && http::uri::Authority::try_from(h.as_bytes()).is_err() {
                return Err(ProxyError::BadRequest("Host is not a valid authority"));
            }
        }
        (None, None) => {
            // RFC 9112 §3.2: every HTTP/1.1 request has Host, the absolute form included.
            if parts.version == http::Version::HTTP_11 {
                return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"));
            }
        }
    }
    // RFC 9113 §8.3.1: a Host naming another authority than :authority is malformed.
    if parts.version == http::Version::HTTP_2
        && let (Some(a), Some(h)) = (parts.uri.authority(), parts.headers.get(header::HOST))
        && !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes())
    {
        return Err(ProxyError::BadRequest("Host differs from :authority"));
    }
    // RFC 9112 §3.2.3: the authority form (`GET host:80`) is for CONNECT only.
    if parts.version <= http::Version::HTTP_11
        && parts.method != http::Method::CONNECT
        && parts.uri.scheme().is_none()
        && parts.uri.authority().is_some()
    {
        return Err(ProxyError::BadRequest(
            "authority-form target without CONNECT",
        ));
    }
    if parts.headers.len() > max_headers {
        return Err(ProxyError::HeadersTooLarge);
    }
    if !only_chunked(&parts.headers) {
        return Err(ProxyError::UnknownTransferCoding);
    }
    // Each field line costs its name, ": ", its value and CRLF on the wire.
    let mut size = parts.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 16;
    let h2 = parts.version == http::Version::HTTP_2;
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + 4;
        if h2 && padded(value.as_bytes()) {
            // RFC 9113 §8.2.1: malformed. An HTTP/1.1 parser trims the padding, so a route or
            // a rate-limit key matched on the padded value would be bypassed by a client and
            // read as the plain one by the backend.
            return Err(ProxyError::BadRequest(
                "a header value begins or ends with whitespace",
            ));
        }
    }
    if size > max_head {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// Whether a field value starts or ends with a space or a tab (malformed in HTTP/2, RFC 9113
/// §8.2.1, where no parser trims it).
pub(crate) fn padded(v: &[u8]) -> bool {
    matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'))
}

/// Keeps a body that hyper's HTTP/1.1 client would drop: it sends a GET or HEAD whose body has
/// no known length (chunked from an HTTP/1.1 client, DATA without content-length from an HTTP/2
/// one) as bodiless. Such a body goes upstream chunked; one with a known length keeps its
/// Content-Length, and other methods are framed by hyper already.
pub fn frame_body(
    head: &mut http::request::Parts,
    protocol: crate::spec::UpstreamProtocol,
    body: &impl http_body::Body,
) {
    if protocol == crate::spec::UpstreamProtocol::Http1
        && (head.method == http::Method::GET || head.method == http::Method::HEAD)
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
    {
        head.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
}

/// Returns the request's X-Request-Id, adding a fresh random one (32 hex digits) if it has none.
///
/// The value is marked never to be indexed by HPACK (RFC 7541 §6.2.3): it differs on every
/// request, so a table entry for it could never be used again, and adding one per response would
/// evict the entries that the headers which do repeat are sent as (and cost a table search and
/// insert per response: 4% of the gateway's CPU per HTTP/2 request, bench/RESULTS.md session 14).
pub fn ensure_request_id(h: &mut HeaderMap) -> HeaderValue {
    // A client's own id is kept when it can be the same everywhere (header, upstream, log): 1
    // to 200 visible ASCII characters. An empty one, a huge one, or bytes the log cannot
    // show (a client blanking its id in the log) are replaced by the gateway's.
    if let Some(v) = h.get(&X_REQUEST_ID)
        && (1..=MAX_REQUEST_ID).contains(&v.len())
        && v.as_bytes().iter().all(u8::is_ascii_graphic)
    {
        let mut v = v.clone();
        v.set_sensitive(true);
        // The one id, alone: other X-Request-Id lines are not passed on.
        h.insert(X_REQUEST_ID.clone(), v.clone());
        return v;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((id >> (4 * (31 - i))) & 0xf) as usize];
    }
    let mut v = HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"));
    v.set_sensitive(true);
    h.insert(X_REQUEST_ID.clone(), v.clone());
    v
}

/// The longest X-Request-Id taken from a client.
const MAX_REQUEST_ID: usize = 200;

/// The value of cookie `name` in the request's Cookie headers. Pairs are split at `;` and at
/// `,` (neither may appear in a cookie, RFC 6265 §4.1.1; old clients join with commas), and
/// names and values are trimmed, as the frameworks behind the gateway read them: a bypass
/// on `session` must see `session =abc` too.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([';', ',']))
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_never_indexed_by_hpack() {
        let mut generated = HeaderMap::new();
        let id = ensure_request_id(&mut generated);
        assert!(id.is_sensitive());
        assert!(
            generated
                .get(&X_REQUEST_ID)
                .is_some_and(|v| v.is_sensitive())
        );
        let mut supplied = HeaderMap::new();
        supplied.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("client-7"));
        supplied.append(X_REQUEST_ID.clone(), HeaderValue::from_static("bad one"));
        let id = ensure_request_id(&mut supplied);
        assert_eq!(id, "client-7");
        assert_eq!(supplied.get_all(&X_REQUEST_ID).iter().count(), 1);
        // Found from outside (session 20): ids the log could not carry as they are.
        for bad in [&b""[..], b"\xff\xfe\"x", &[b'a'; 201], b"a b"] {
            let mut h = HeaderMap::new();
            h.insert(
                X_REQUEST_ID.clone(),
                HeaderValue::from_bytes(bad).expect("value"),
            );
            let id = ensure_request_id(&mut h);
            assert_eq!(id.len(), 32, "{bad:?} replaced");
            assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
        }
        assert!(id.is_sensitive());
        assert!(
            supplied
                .get(&X_REQUEST_ID)
                .is_some_and(|v| v.is_sensitive())
        );
    }

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

    /// Found from outside: repeated or listed Content-Length values (one value) and a length
    /// on a 204 reached HTTP/2 clients, which refused the response as malformed.
    #[test]
    fn a_response_gets_one_content_length_or_none() {
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static(" 3"));
        one_content_length(http::StatusCode::OK, &mut h);
        let all: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
        assert_eq!(all, ["3"]);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3,3"));
        one_content_length(http::StatusCode::OK, &mut h);
        assert_eq!(h[header::CONTENT_LENGTH], "3");
        one_content_length(http::StatusCode::NO_CONTENT, &mut h);
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        // Values that disagree are left for hyper, which refuses them (502).
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3, 4"));
        one_content_length(http::StatusCode::OK, &mut h);
        assert_eq!(h[header::CONTENT_LENGTH], "3, 4");
    }

    #[test]
    fn connection_names_match_in_any_case() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" X-Secret ,UPGRADE"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn te_trailers_crosses_the_hop_and_other_codings_do_not() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("TE"));
        h.insert(header::TE, HeaderValue::from_static("deflate, Trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        assert!(strip_hop_by_hop(&mut h), "kept TE is told");
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

    fn head(uri: &str, version: http::Version, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri).version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn head_checks_refuse_what_hyper_lets_through() {
        use http::Version;
        let ok = |p: &http::request::Parts| check_head(p, 65536, 100).is_ok();
        assert!(ok(&head("/x", Version::HTTP_11, &[("host", "a")])));
        assert!(
            !ok(&head("http://a/x", Version::HTTP_11, &[])),
            "absolute form without Host"
        );
        assert!(
            ok(&head("/x", Version::HTTP_10, &[])),
            "HTTP/1.0 needs no Host"
        );
        assert!(
            !ok(&head("a:80", Version::HTTP_11, &[("host", "a")])),
            "authority form"
        );
        assert!(ok(&head("http://a/x", Version::HTTP_2, &[("host", "A")])));
        assert!(
            !ok(&head("http://a/x", Version::HTTP_2, &[("host", "b")])),
            "Host ≠ :authority"
        );
        let many: Vec<(String, &str)> = (0..100).map(|i| (format!("x-{i}"), "v")).collect();
        let mut fields: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert!(ok(&head("http://a/x", Version::HTTP_2, &fields)));
        fields.push(("x-one-more", "v"));
        assert_eq!(
            check_head(&head("http://a/x", Version::HTTP_2, &fields), 65536, 100),
            Err(ProxyError::HeadersTooLarge)
        );
    }

    #[test]
    fn request_id_is_kept_or_made() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        assert_eq!(ensure_request_id(&mut h), "abc");
        let mut fresh = HeaderMap::new();
        let id = ensure_request_id(&mut fresh);
        assert_eq!(id.len(), 32);
        assert!(id.to_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fresh["x-request-id"], id);
    }

    #[test]
    fn gateway_owned_headers_survive_a_connection_nomination() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-request-id, X-Forwarded-For, forwarded, host, x-other"),
        );
        for n in [
            "x-request-id",
            "x-forwarded-for",
            "forwarded",
            "host",
            "x-other",
        ] {
            h.insert(n, HeaderValue::from_static("v"));
        }
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["forwarded", "host", "x-forwarded-for", "x-request-id"]
        );
    }

    #[test]
    fn grpc_trailers_are_declared_only_where_grpc_sends_them() {
        let declared = |ct: &str, status_in_head: bool| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            if status_in_head {
                h.insert("grpc-status", HeaderValue::from_static("5"));
            }
            declare_grpc_trailers(&mut h);
            h.contains_key(header::TRAILER)
        };
        assert!(declared("application/grpc", false));
        assert!(declared("application/grpc+proto", false));
        assert!(declared("Application/GRPC", false));
        assert!(!declared("application/grpc", true), "trailers-only");
        assert!(!declared("application/grpc-web+proto", false));
        assert!(!declared("application/grpcx", false));
        assert!(!declared("text/plain", false));
    }
}
