//! Every way the gateway itself answers a request, and the one place each becomes a status.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use scalegate_core::retry::AttemptOutcome;

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
    /// The request uses a transfer coding other than chunked (client's side; RFC 9112 §6.1
    /// asks for 501): passing the body on re-framed would drop the coding silently.
    #[error("transfer coding not implemented")]
    UnknownTransferCoding,
    /// The request body is over the route's limit (client's side).
    #[error("request body over the route's limit")]
    BodyTooLarge,
    /// The request body did not arrive within the listener's `body_timeout` (client's side).
    #[error("request body not received in time")]
    BodyTimeout,
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
    /// The upstream refused the request unprocessed (HTTP/2 REFUSED_STREAM, or a stream above
    /// the last one its GOAWAY let through): it may go again, whatever its method.
    #[error("upstream refused the request unprocessed")]
    UpstreamRefused,
    /// The upstream's response breaks HTTP/1.1's rules in a way that cannot be passed on
    /// safely (upstream's side): both Content-Length and Transfer-Encoding (RFC 9112 §6.3), or
    /// 101 Switching Protocols to a request that asked for no upgrade.
    #[error("upstream sent an invalid response: {0}")]
    BadResponse(&'static str),
    /// No response head within the request timeout (upstream's side).
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream's response head is over the upstream's `max_response_headers` or
    /// `max_response_header_bytes` (a config matter, not the endpoint's health).
    #[error("upstream response head too large")]
    ResponseHeadTooLarge,
    /// The gateway is shutting down and refuses new work (ours; retry elsewhere).
    #[error("gateway draining")]
    Draining,
    /// An operator disabled the route (ours; retry later).
    #[error("route disabled by an operator")]
    RouteDisabled,
    /// A feature could not take the request now (a queue's store is full or away, the fan-out
    /// bus is down): ours; retry later.
    #[error("{0}")]
    Unavailable(&'static str),
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

/// gRPC status codes the gateway answers with.
mod grpc {
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
}

/// Everything the request path needs to know about one way a request can end. One row per
/// [`ProxyError`] variant in [`ProxyError::outcome`], whose `match` has no wildcard: a new
/// variant that is not classified does not compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The HTTP status answered.
    pub status: StatusCode,
    /// The gRPC status answered to a gRPC call (in a trailers-only response).
    pub grpc: u8,
    /// Whether clients are told when to come back (Retry-After, grpc-retry-pushback-ms).
    pub retry_after: bool,
    /// Whether it counts against the endpoint for passive ejection (the breaker).
    pub blames_endpoint: bool,
    /// What the retry policy sees of it; `None`: never retried.
    pub attempt: Option<AttemptOutcome>,
    /// Whether a route's fallback may answer in its place ("upstream unavailable" outcomes).
    pub fallback: bool,
    /// Whether the client connection is closed after the answer (its framing is in doubt).
    pub close: bool,
    /// The reason label of logs and metrics.
    pub label: &'static str,
}

impl Outcome {
    const fn new(status: StatusCode, grpc: u8, label: &'static str) -> Outcome {
        Outcome {
            status,
            grpc,
            retry_after: false,
            blames_endpoint: false,
            attempt: None,
            fallback: false,
            close: false,
            label,
        }
    }

    /// The client's fault: a 4xx, nothing counted against anyone.
    const fn client(status: StatusCode, grpc: u8, label: &'static str) -> Outcome {
        Outcome::new(status, grpc, label)
    }

    /// The client's request cannot be framed any more: answer, then close the connection.
    const fn closing(mut self) -> Outcome {
        self.close = true;
        self
    }

    /// The gateway could not serve it now (503 + Retry-After, UNAVAILABLE); a fallback may
    /// answer instead.
    const fn unavailable(label: &'static str) -> Outcome {
        let mut o = Outcome::new(StatusCode::SERVICE_UNAVAILABLE, grpc::UNAVAILABLE, label);
        o.retry_after = true;
        o.fallback = true;
        o
    }

    /// The upstream failed this request: it may count against the endpoint and be retried.
    const fn upstream(
        status: StatusCode,
        grpc: u8,
        attempt: AttemptOutcome,
        blames: bool,
        label: &'static str,
    ) -> Outcome {
        let mut o = Outcome::new(status, grpc, label);
        o.blames_endpoint = blames;
        o.attempt = Some(attempt);
        o.fallback = true;
        o
    }
}

impl From<crate::body::BodyFault> for ProxyError {
    fn from(fault: crate::body::BodyFault) -> Self {
        use crate::body::BodyFault;
        match fault {
            BodyFault::TooLarge => ProxyError::BodyTooLarge,
            BodyFault::Timeout => ProxyError::BodyTimeout,
            BodyFault::Broken => ProxyError::BadRequest("request body malformed or cut short"),
        }
    }
}

impl ProxyError {
    /// The outcome table: how each way of ending is answered, counted and retried.
    pub const fn outcome(&self) -> Outcome {
        use AttemptOutcome::{ConnectFailed, Refused, Reset, Timeout};
        use StatusCode as S;
        match self {
            ProxyError::NoRoute => Outcome::client(S::NOT_FOUND, grpc::UNIMPLEMENTED, "no_route"),
            ProxyError::Forbidden => {
                Outcome::client(S::FORBIDDEN, grpc::PERMISSION_DENIED, "forbidden")
            }
            ProxyError::BadRequest(_) => {
                Outcome::client(S::BAD_REQUEST, grpc::INTERNAL, "bad_request").closing()
            }
            ProxyError::UnknownTransferCoding => Outcome::client(
                S::NOT_IMPLEMENTED,
                grpc::UNIMPLEMENTED,
                "unknown_transfer_coding",
            )
            .closing(),
            ProxyError::BodyTooLarge => Outcome::client(
                S::PAYLOAD_TOO_LARGE,
                grpc::RESOURCE_EXHAUSTED,
                "body_too_large",
            )
            .closing(),
            ProxyError::BodyTimeout => {
                Outcome::client(S::REQUEST_TIMEOUT, grpc::DEADLINE_EXCEEDED, "body_timeout")
                    .closing()
            }
            ProxyError::HeadersTooLarge => Outcome::client(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                grpc::RESOURCE_EXHAUSTED,
                "headers_too_large",
            ),
            ProxyError::RateLimited { .. } => {
                let mut o = Outcome::client(
                    S::TOO_MANY_REQUESTS,
                    grpc::RESOURCE_EXHAUSTED,
                    "rate_limited",
                );
                o.retry_after = true;
                o
            }
            ProxyError::NoHealthyEndpoint => Outcome::unavailable("no_healthy_endpoint"),
            ProxyError::RouteDisabled => Outcome::unavailable("route_disabled"),
            ProxyError::Shed(reason) => Outcome::unavailable(reason),
            ProxyError::Unavailable(_) => Outcome::unavailable("feature_unavailable"),
            ProxyError::Draining => {
                let mut o = Outcome::unavailable("draining");
                o.fallback = false;
                o
            }
            ProxyError::PoolExhausted => {
                let mut o = Outcome::unavailable("pool_exhausted");
                o.attempt = Some(ConnectFailed);
                o
            }
            ProxyError::ConnectFailed => Outcome::upstream(
                S::BAD_GATEWAY,
                grpc::UNAVAILABLE,
                ConnectFailed,
                true,
                "connect_failed",
            ),
            ProxyError::ConnectTimeout => Outcome::upstream(
                S::GATEWAY_TIMEOUT,
                grpc::UNAVAILABLE,
                ConnectFailed,
                true,
                "connect_timeout",
            ),
            ProxyError::UpstreamReset => Outcome::upstream(
                S::BAD_GATEWAY,
                grpc::UNAVAILABLE,
                Reset,
                true,
                "upstream_reset",
            ),
            // Shedding or a graceful shutdown, not a broken endpoint: nothing counted against it.
            ProxyError::UpstreamRefused => Outcome::upstream(
                S::BAD_GATEWAY,
                grpc::UNAVAILABLE,
                Refused,
                false,
                "upstream_refused",
            ),
            ProxyError::BadResponse(_) => Outcome::upstream(
                S::BAD_GATEWAY,
                grpc::UNAVAILABLE,
                Reset,
                true,
                "bad_response",
            ),
            ProxyError::UpstreamTimeout => Outcome::upstream(
                S::GATEWAY_TIMEOUT,
                grpc::DEADLINE_EXCEEDED,
                Timeout,
                true,
                "upstream_timeout",
            ),
            // The endpoint answered, only more than the gateway takes: a config matter, not
            // the endpoint's health, and another endpoint would answer the same.
            ProxyError::ResponseHeadTooLarge => {
                let mut o = Outcome::new(S::BAD_GATEWAY, grpc::INTERNAL, "response_head_too_large");
                o.fallback = true;
                o
            }
        }
    }

    /// The status this outcome is answered with.
    pub fn status(&self) -> StatusCode {
        self.outcome().status
    }

    /// Retry-After for outcomes where coming back later helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::RateLimited { retry_after_secs } => {
                Some(Duration::from_secs(*retry_after_secs))
            }
            _ => self.outcome().retry_after.then_some(RETRY_AFTER),
        }
    }

    /// Whether this failure counts against the endpoint for passive ejection.
    pub fn blames_endpoint(&self) -> bool {
        self.outcome().blames_endpoint
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
        if self.outcome().close {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// The gRPC status code of this outcome, for a gRPC client (the mapping gRPC itself uses for
    /// HTTP statuses, made finer where the gateway knows more: an upstream that broke or could
    /// not be reached is UNAVAILABLE, which clients retry; a request timeout is
    /// DEADLINE_EXCEEDED, a rate limit or an oversized body RESOURCE_EXHAUSTED).
    pub fn grpc_status(&self) -> u8 {
        self.outcome().grpc
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

    const ALL: [ProxyError; 19] = [
        ProxyError::Unavailable("the queue is full"),
        ProxyError::BodyTimeout,
        ProxyError::ResponseHeadTooLarge,
        ProxyError::Forbidden,
        ProxyError::RouteDisabled,
        ProxyError::Shed("queue_full"),
        ProxyError::RateLimited {
            retry_after_secs: 2,
        },
        ProxyError::NoRoute,
        ProxyError::BadRequest("x"),
        ProxyError::BodyTooLarge,
        ProxyError::UnknownTransferCoding,
        ProxyError::NoHealthyEndpoint,
        ProxyError::PoolExhausted,
        ProxyError::ConnectFailed,
        ProxyError::ConnectTimeout,
        ProxyError::UpstreamReset,
        ProxyError::BadResponse("x"),
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
