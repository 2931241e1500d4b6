//! Answering a request from a stored object: Age, Cache-Status, the client's own conditional
//! request, and its Range.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderName, Method, Response, StatusCode};

use super::conditional;
use super::object::Object;
use super::range::{self, Ranged};
use scalegate_http::body::RespBody;
use scalegate_http::proxy::Completion;

/// The Cache-Status header (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A response from a stored object, the request finished at once.
pub fn from_object(
    o: &Object,
    req: &Parts,
    cs: HeaderValue,
    mut done: Completion,
) -> Response<RespBody> {
    let resp = build(o, req, cs);
    done.set_status(resp.status().as_u16());
    done.count_bytes(sent(&resp, req));
    done.finish(true);
    resp
}

/// A response from a stored object while an upstream exchange (a 304 or a failed answer)
/// finishes its bookkeeping as it is dropped: the status and bytes recorded are the answer's.
pub fn from_served(
    o: &Object,
    req: &Parts,
    cs: HeaderValue,
    mut upstream: RespBody,
) -> Response<RespBody> {
    let resp = build(o, req, cs);
    upstream.set_status(resp.status().as_u16());
    upstream.set_aside(sent(&resp, req));
    resp
}

/// The body bytes an answer sends: none to HEAD or for a 304, the part a Range asked for.
fn sent(resp: &Response<RespBody>, req: &Parts) -> u64 {
    if req.method == Method::HEAD {
        0
    } else {
        resp.body().whole_len()
    }
}

fn build(o: &Object, req: &Parts, cs: HeaderValue) -> Response<RespBody> {
    o.hits.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now();
    let mut headers = o.response_headers(now);
    headers.insert(CACHE_STATUS.clone(), cs);
    // Preconditions before Range (RFC 9110 §13.2.2).
    let ranged = if conditional::not_modified(o, &req.headers) {
        headers.remove(header::CONTENT_LENGTH);
        let mut r = Response::new(RespBody::Full(None));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = headers;
        return r;
    } else if req.method == Method::GET {
        range::evaluate(&req.headers, o)
    } else {
        Ranged::Full
    };
    let len = o.body.len();
    let (status, body) = match ranged {
        Ranged::Full => (o.status, RespBody::full(o.body.clone())),
        Ranged::Partial(r) => {
            let content_range = format!("bytes {}-{}/{len}", r.start, r.end - 1);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len()));
            if let Ok(v) = HeaderValue::try_from(content_range) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, RespBody::full(o.body.slice(r)))
        }
        Ranged::Unsatisfiable => {
            if let Ok(v) = HeaderValue::try_from(format!("bytes */{len}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            (StatusCode::RANGE_NOT_SATISFIABLE, RespBody::Full(None))
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// The 504 of an `only-if-cached` request with nothing usable stored (RFC 9111 §5.2.1.7).
pub fn only_if_cached(mut done: Completion) -> Response<RespBody> {
    done.set_status(504);
    done.finish(true);
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
