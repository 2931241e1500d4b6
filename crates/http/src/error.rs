//! Every way the gateway itself answers a request, and the one place each becomes a status.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::RespBody;

/// Who failed, which decides the status and whether a retry could help.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No route matches the request (client's side).
    #[error("no route matches")]
    NoRoute,
    /// The route's allow/deny rules refuse the client's address (client's side).
    #[error("client address not allowed on this route")]
    Forbidden,
    /// The request is malformed in a way hyper let through (client's side).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request body is over the route's limit (client's side).
    #[error("request body over the route's limit")]
    BodyTooLarge,
    /// The request line and headers are over the listener's `max_header_bytes` (client's side).
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// Every endpoint of the upstream is out of rotation (upstream's side; retry later).
    #[error("no healthy endpoint in upstream")]
    NoHealthyEndpoint,
    /// The endpoint's connection pool stayed full for the connect timeout (ours; retry later).
    #[error("connection pool exhausted")]
    PoolExhausted,
    /// TCP connect refused or failed (upstream's side; another endpoint may do).
    #[error("connect to upstream failed")]
    ConnectFailed,
    /// TCP connect did not finish in time (upstream's side).
    #[error("connect to upstream timed out")]
    ConnectTimeout,
    /// The connection broke before a response head arrived (upstream's side).
    #[error("upstream connection broke")]
    UpstreamReset,
    /// No response head within the request timeout (upstream's side).
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The gateway is shutting down and refuses new work (ours; retry elsewhere).
    #[error("gateway draining")]
    Draining,
    /// An operator disabled the route (ours; retry later).
    #[error("route disabled by an operator")]
    RouteDisabled,
    /// The upstream's bulkhead refused the request (ours; retry later).
    #[error("overloaded: request shed ({0})")]
    Shed(&'static str),
    /// The client is over the route's rate limit (client's side; retry after the given seconds).
    #[error("rate limit exceeded")]
    RateLimited {
        /// Seconds until a request would be allowed (at least 1).
        retry_after_secs: u64,
    },
}

/// How long clients are told to wait before retrying a 503.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl ProxyError {
    /// The status this outcome is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NoHealthyEndpoint
            | ProxyError::PoolExhausted
            | ProxyError::Draining
            | ProxyError::Shed(_)
            | ProxyError::RouteDisabled => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed | ProxyError::UpstreamReset => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Retry-After for outcomes where coming back later helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::RateLimited { retry_after_secs } => {
                Some(Duration::from_secs(*retry_after_secs))
            }
            _ => (self.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER),
        }
    }

    /// Whether this failure counts against the endpoint for passive ejection.
    pub fn blames_endpoint(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed
                | ProxyError::ConnectTimeout
                | ProxyError::UpstreamReset
                | ProxyError::UpstreamTimeout
        )
    }

    /// The synthetic response: status, Retry-After where useful, a one-line text body.
    pub fn to_response(&self) -> Response<RespBody> {
        let status = self.status();
        let body = format!("{}: {self}\n", status.as_u16());
        let mut resp = Response::new(RespBody::full(Bytes::from(body)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(after) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
        }
        if matches!(self, ProxyError::BadRequest(_) | ProxyError::BodyTooLarge) {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// The gRPC status code of this outcome, for a gRPC client (the mapping gRPC itself uses for
    /// HTTP statuses, made finer where the gateway knows more: a request timeout is
    /// DEADLINE_EXCEEDED, a rate limit or an oversized body RESOURCE_EXHAUSTED).
    pub fn grpc_status(&self) -> u8 {
        match self {
            ProxyError::NoRoute => 12,       // UNIMPLEMENTED
            ProxyError::Forbidden => 7,      // PERMISSION_DENIED
            ProxyError::BadRequest(_) => 13, // INTERNAL
            ProxyError::BodyTooLarge
            | ProxyError::HeadersTooLarge
            | ProxyError::RateLimited { .. } => 8, // RESOURCE_EXHAUSTED
            ProxyError::UpstreamTimeout => 4, // DEADLINE_EXCEEDED
            ProxyError::NoHealthyEndpoint
            | ProxyError::PoolExhausted
            | ProxyError::ConnectFailed
            | ProxyError::ConnectTimeout
            | ProxyError::UpstreamReset
            | ProxyError::Draining
            | ProxyError::RouteDisabled
            | ProxyError::Shed(_) => 14, // UNAVAILABLE
        }
    }

    /// The synthetic response for a gRPC call: a "trailers-only" answer (HTTP 200, no body,
    /// `grpc-status` and `grpc-message` in the head), which gRPC clients turn into a status
    /// instead of a protocol error. Where coming back later helps, `grpc-retry-pushback-ms`
    /// carries what Retry-After would.
    pub fn to_grpc_response(&self) -> Response<RespBody> {
        let mut resp = Response::new(RespBody::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        // Our messages are printable ASCII without '%', which grpc-message carries as is.
        if let Ok(v) = HeaderValue::from_str(&self.to_string()) {
            h.insert("grpc-message", v);
        }
        if let Some(after) = self.retry_after() {
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            h.insert("grpc-retry-pushback-ms", HeaderValue::from(ms));
        }
        resp
    }
}

/// Whether a request is a gRPC call (`content-type: application/grpc`, `+proto` etc.).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ProxyError; 14] = [
        ProxyError::Forbidden,
        ProxyError::RouteDisabled,
        ProxyError::Shed("queue_full"),
        ProxyError::RateLimited {
            retry_after_secs: 2,
        },
        ProxyError::NoRoute,
        ProxyError::BadRequest("x"),
        ProxyError::BodyTooLarge,
        ProxyError::NoHealthyEndpoint,
        ProxyError::PoolExhausted,
        ProxyError::ConnectFailed,
        ProxyError::ConnectTimeout,
        ProxyError::UpstreamReset,
        ProxyError::UpstreamTimeout,
        ProxyError::Draining,
    ];

    #[test]
    fn every_outcome_maps_to_one_status_and_503s_carry_retry_after() {
        for e in ALL {
            let r = e.to_response();
            assert_eq!(r.status(), e.status());
            let has = r.headers().contains_key(header::RETRY_AFTER);
            let wants = matches!(
                r.status(),
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
            );
            assert_eq!(has, wants, "{e:?}");
            assert!(r.status().is_client_error() || r.status().is_server_error());
        }
    }

    #[test]
    fn grpc_calls_get_trailers_only_answers_with_a_status() {
        for e in ALL {
            let r = e.to_grpc_response();
            assert_eq!(r.status(), StatusCode::OK, "{e:?}");
            let h = r.headers();
            assert_eq!(h["grpc-status"], e.grpc_status().to_string().as_str());
            assert!(h.contains_key("grpc-message"), "{e:?}");
            assert_eq!(
                h.contains_key("grpc-retry-pushback-ms"),
                e.retry_after().is_some(),
                "{e:?}"
            );
            assert!(http_body::Body::is_end_stream(r.body()), "no body: {e:?}");
        }
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_grpc(&h));
    }
}
