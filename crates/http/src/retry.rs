//! What the request path needs to retry: a body that can be sent again, the outcome of an
//! attempt in core's terms, and Retry-After. The decision itself is core's
//! `RetryPolicy::decide`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use scalegate_core::retry::{AttemptOutcome, RequestFacts, is_idempotent_method};

use crate::body::{ClientBody, ReqBody};
use crate::error::ProxyError;
use crate::spec::RetrySpec;

pub(crate) static IDEMPOTENCY_KEY: http::HeaderName =
    http::HeaderName::from_static("idempotency-key");

/// Request bodies up to this size (with a Content-Length) are read whole before an upstream
/// connection is taken, so a client that sends them slowly holds no pooled connection.
pub const BUFFER_BYTES: u64 = 64 << 10;

/// Fires when a streamed body has passed whole to the upstream or failed (closed when it was
/// given up).
pub type BodySent = tokio::sync::oneshot::Receiver<crate::body::BodyEnd>;

/// When the client's body must have arrived: the listener's `body_timeout` after the request.
#[derive(Clone, Copy, Debug)]
pub struct BodyDeadline {
    /// The listener's `body_timeout`.
    pub timeout: Duration,
    /// The instant it runs out.
    pub at: tokio::time::Instant,
}

/// The request body across attempts.
#[derive(Debug)]
pub enum BodySource {
    /// Kept whole: every attempt gets a copy.
    Replay(Bytes),
    /// Streamed once; a retry is impossible after the first attempt took it.
    Stream(Option<(Box<ClientBody>, BodySent)>),
}

impl BodySource {
    /// The body for the next attempt (None once a streamed body was used), with the signal of a
    /// streamed body having passed whole.
    pub fn for_attempt(&mut self) -> Option<(ReqBody, Option<BodySent>)> {
        match self {
            BodySource::Replay(b) if b.is_empty() => Some((ReqBody::Empty, None)),
            BodySource::Replay(b) => Some((ReqBody::Replay(Some(b.clone())), None)),
            BodySource::Stream(s) => s
                .take()
                .map(|(body, sent)| (ReqBody::Client(body), Some(sent))),
        }
    }

    /// Whether the body is still arriving from the client while it is sent upstream.
    pub fn streams(&self) -> bool {
        matches!(self, BodySource::Stream(_))
    }

    /// Whether another attempt can carry the body.
    pub fn replayable(&self) -> bool {
        matches!(self, BodySource::Replay(_))
    }
}

/// Reads the body whole first when it has a known length within [`BUFFER_BYTES`], or within
/// the replay limit of a route that retries (it can then be sent again); otherwise it streams
/// to the upstream as it arrives. Either way the client must send it before `deadline` (408).
pub async fn prepare_body(
    method: &http::Method,
    headers: &HeaderMap,
    body: Option<Incoming>,
    retry: Option<&RetrySpec>,
    route_limit: u64,
    deadline: BodyDeadline,
) -> Result<(BodySource, RequestFacts), ProxyError> {
    // Only routes that retry need to know (the header lookup is not free).
    let idempotent = retry.is_some()
        && (is_idempotent_method(method.as_str()) || headers.contains_key(&IDEMPOTENCY_KEY));
    // No client body (a request the gateway makes itself): an empty, replayable one.
    let Some(body) = body else {
        let facts = RequestFacts {
            idempotent,
            replayable: true,
        };
        return Ok((BodySource::Replay(Bytes::new()), facts));
    };
    let length = if http_body::Body::is_end_stream(&body) {
        Some(0)
    } else {
        headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let keep_for_retry = retry.map_or(0, |r| r.max_body_bytes);
    let keep = length.is_some_and(|n| n <= BUFFER_BYTES.max(keep_for_retry).min(route_limit));
    if !keep {
        let facts = RequestFacts {
            idempotent,
            replayable: false,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let body = ClientBody::new(body, route_limit, deadline.timeout, deadline.at, tx);
        return Ok((BodySource::Stream(Some((Box::new(body), rx))), facts));
    }
    let limit = length.unwrap_or(0) as usize;
    let collected = tokio::time::timeout_at(deadline.at, Limited::new(body, limit).collect());
    let bytes = match collected.await {
        Err(_) => return Err(ProxyError::BodyTimeout),
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ProxyError::BodyTooLarge);
        }
        Ok(Err(_)) => return Err(ProxyError::BadRequest("request body ended early")),
    };
    Ok((
        BodySource::Replay(bytes),
        RequestFacts {
            idempotent,
            replayable: true,
        },
    ))
}

/// The body source for a body the gateway already holds whole (a queued job's).
pub fn stored_body(
    method: &http::Method,
    headers: &HeaderMap,
    body: Bytes,
    retry: Option<&RetrySpec>,
) -> (BodySource, RequestFacts) {
    let idempotent = retry.is_some()
        && (is_idempotent_method(method.as_str()) || headers.contains_key(&IDEMPOTENCY_KEY));
    let facts = RequestFacts {
        idempotent,
        replayable: true,
    };
    (BodySource::Replay(body), facts)
}

/// An attempt's outcome in the retry policy's terms.
pub fn outcome_of_error(e: &ProxyError) -> Option<AttemptOutcome> {
    e.outcome().attempt
}

/// Retry-After as a delay, when given in seconds (HTTP-dates are not honoured for retries).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
