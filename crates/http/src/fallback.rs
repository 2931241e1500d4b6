//! Fallbacks: what a route answers when its upstream is unavailable (no endpoint available or
//! every breaker open, shed, connect failure, reset, timeout) or an operator disabled the route,
//! instead of the error.
//!
//! The source is a static response from config. On caching routes the cache answers first:
//! `cache::serve` serves the last good stored response for the request's key when the origin
//! fails and stale-if-error (or a soft purge) allows it, and only then does the route's
//! fallback (or the error) apply.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::RespBody;
use crate::error::ProxyError;

/// A route's fallback.
#[derive(Clone, Debug, PartialEq)]
pub enum FallbackSource {
    /// A fixed response.
    Static {
        /// Status (default 200).
        status: StatusCode,
        /// Content-Type (default text/plain).
        content_type: String,
        /// Body.
        body: Bytes,
    },
}

/// Whether this failure means the upstream is unavailable, so a fallback applies. Client errors
/// (413, 429, 404) keep their status.
pub fn applies(e: &ProxyError) -> bool {
    e.outcome().fallback
}

impl FallbackSource {
    /// The response to send instead of `e`. Marked with `x-scalegate-fallback` so clients and
    /// logs can tell it from the upstream's own answer.
    pub fn respond(&self, e: &ProxyError) -> Response<RespBody> {
        match self {
            FallbackSource::Static {
                status,
                content_type,
                body,
            } => {
                let mut r = Response::new(RespBody::full(body.clone()));
                *r.status_mut() = *status;
                let h = r.headers_mut();
                if let Ok(v) = HeaderValue::try_from(content_type.as_str()) {
                    h.insert(header::CONTENT_TYPE, v);
                }
                h.insert("x-scalegate-fallback", HeaderValue::from_static("static"));
                // A fallback that itself says "unavailable" keeps the wait hint.
                if matches!(
                    *status,
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
                ) && let Some(after) = e.retry_after()
                {
                    h.insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
                }
                r
            }
        }
    }
}
