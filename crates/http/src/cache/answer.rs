//! Answering a request from a stored object: Age, Cache-Status, and the client's own
//! conditional request.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{HeaderMap, HeaderName, Response, StatusCode};

use super::conditional;
use super::object::Object;
use crate::body::RespBody;
use crate::proxy::Completion;

/// The Cache-Status header (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A response from a stored object, the request finished at once.
pub fn from_object(
    o: &Object,
    req: &HeaderMap,
    cs: HeaderValue,
    mut done: Completion,
) -> Response<RespBody> {
    let resp = build(o, req, cs);
    done.set_status(resp.status().as_u16());
    done.finish(true, o.body.len() as u64);
    resp
}

/// A response from a stored object while an upstream exchange (a 304 or a failed answer)
/// finishes its bookkeeping as it is dropped.
pub fn from_served(
    o: &Object,
    req: &HeaderMap,
    cs: HeaderValue,
    upstream: RespBody,
) -> Response<RespBody> {
    drop(upstream);
    build(o, req, cs)
}

fn build(o: &Object, req: &HeaderMap, cs: HeaderValue) -> Response<RespBody> {
    o.hits.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now();
    let mut headers = o.response_headers(now);
    headers.insert(CACHE_STATUS.clone(), cs);
    let (status, body) = if conditional::not_modified(o, req) {
        headers.remove(header::CONTENT_LENGTH);
        (StatusCode::NOT_MODIFIED, RespBody::Full(None))
    } else {
        (o.status, RespBody::full(o.body.clone()))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// The 504 of an `only-if-cached` request with nothing usable stored (RFC 9111 §5.2.1.7).
pub fn only_if_cached(mut done: Completion) -> Response<RespBody> {
    done.set_status(504);
    done.finish(true, 0);
    let mut r = Response::new(RespBody::full(bytes::Bytes::from_static(
        b"504: only-if-cached and nothing usable is stored\n",
    )));
    *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    let h = r.headers_mut();
    h.insert(
        CACHE_STATUS.clone(),
        HeaderValue::from_static("scalegate; detail=only-if-cached"),
    );
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}
