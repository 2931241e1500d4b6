//! One attempt on the wire: a pooled connection (or one of its own for an upgrade), the request,
//! and the wait for the response head under the route timeout.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use pin_project_lite::pin_project;
use scalegate_core::Tick;

use crate::body::{BodyTimeout, BodyTooLarge, ReqBody, UpstreamBody};
use crate::error::ProxyError;
use crate::pool::{Lease, Sender};
use crate::router::Route;
use crate::tunnel;
use crate::upstream::HttpEndpoint;

use super::ConnCtx;
pub(super) use super::head_wait::HeadWait;

/// An attempt's request, and how long it waits for the response head.
pub(super) struct Outgoing {
    /// The request, rewritten for its endpoint.
    pub(super) req: Request<ReqBody>,
    /// The rule of the wait for its response head.
    pub(super) wait: HeadWait,
}

/// Sends an upgrade request on a connection of its own.
pub(super) async fn send_upgrade(
    ctx: &ConnCtx,
    route: &Route,
    endpoint: &HttpEndpoint,
    req: Request<ReqBody>,
    deadline: tokio::time::Instant,
) -> Result<(Response<UpstreamBody>, Lease), ProxyError> {
    let stream = crate::dial::dial(&endpoint.dial(), route.spec.connect_timeout).await?;
    let resp = tokio::time::timeout_at(deadline, tunnel::send(stream, req))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout)??;
    // An upgrade refused with an answer whose body breaks at once fails here too (see `Begin`).
    let (head, body) = resp.into_parts();
    let body = UpstreamBody::begun(body)
        .await
        .map_err(|e| outcome_of(&e, endpoint))?;
    Ok((
        Response::from_parts(head, body),
        endpoint.pool(ctx.worker).detached(),
    ))
}

/// A connection of the endpoint's pool for the next attempt. Until there is one, nothing of
/// the request has left: when this fails, its head and body can still go elsewhere.
pub(super) async fn connect(
    ctx: &ConnCtx,
    route: &Route,
    endpoint: &HttpEndpoint,
    now: Tick,
    fresh: bool,
    streaming: bool,
) -> Result<Lease, ProxyError> {
    let pool = endpoint.pool(ctx.worker);
    let dial = endpoint.dial();
    let timeout = route.spec.connect_timeout;
    let checkout = pool.checkout(&dial, timeout, now, fresh, streaming);
    if !pool.is_full() {
        return checkout.await;
    }
    // HTTP/2 streams whose clients stopped taking their responses give way (h2_stall.rs).
    let streams = &ctx.gateway.h2_streams;
    Box::pin(crate::h2_stall::reclaiming(
        streams,
        Some(ctx.worker),
        checkout,
    ))
    .await
}

/// Sends `out` on `lease` and waits for the response head, and for what of the body came with
/// it; a pooled connection that the upstream had closed is replaced by a new one once.
///
/// Not an `async fn`: one keeps a copy of each argument beside the argument itself, and every
/// request's future holds this one (bench/RESULTS.md, session 14).
#[allow(clippy::manual_async_fn)] // on purpose: an async fn would hold each argument twice
pub(super) fn send(
    ctx: &ConnCtx,
    route: &Route,
    endpoint: &HttpEndpoint,
    lease: Lease,
    mut out: Outgoing,
    streaming: bool,
) -> impl Future<Output = Result<(Response<UpstreamBody>, Lease), ProxyError>> {
    async move {
        let mut fresh = false;
        let mut next = Some(lease);
        loop {
            let mut lease = match next.take() {
                Some(lease) => lease,
                // A new connection: the pool's idle ones (which `now` would age) are not looked
                // at.
                None => connect(ctx, route, endpoint, crate::clock::now(), true, streaming).await?,
            };
            let reused = lease.reused;
            // On a connection that idled the upstream may close it (a keep-alive timeout it
            // does not announce) just as the request goes: a copy lets a request that may go
            // twice go again on a new connection. Not on one reused at once (under load): the
            // copy costs about 3% of a small request's work, and every server's keep-alive
            // timeout is far longer than RESEND_AFTER_IDLE.
            let mut spare = match reused && !fresh && lease.idled >= RESEND_AFTER_IDLE {
                true => resendable(&out.req),
                false => None,
            };
            let Some(sender) = lease.sender() else {
                return Err(ProxyError::UpstreamReset);
            };
            // Neither an async block over both nor a local: either would hold the request or
            // the future a second time.
            let head = out.wait.wait(Begin {
                sending: match sender {
                    Sender::H1(tx) => Either::Left(tx.try_send_request(out.req)),
                    Sender::H2(tx) => Either::Right(tx.try_send_request(out.req)),
                },
            });
            match head.await {
                Err(e) => return Err(e),
                // Dropping the lease closes the connection: its framing cannot be trusted.
                Ok(Ok(resp)) => return valid(&resp).map(|()| (resp, lease)),
                // A body that broke off before its first byte is the attempt's failure, as a
                // reset before the head would be: nothing has reached the client yet. Never a
                // refusal: a stream refused after its head was processed (a server that lies).
                Ok(Err(Failed::Body(e))) => {
                    return Err(match outcome_of(&e, endpoint) {
                        ProxyError::UpstreamRefused => ProxyError::UpstreamReset,
                        other => other,
                    });
                }
                Ok(Err(Failed::Send(mut e))) => {
                    let unsent = e.take_message();
                    let err = e.into_error();
                    match unsent {
                        // A pooled connection the upstream closed while it idled: the request
                        // never left, so it is safe to send on a new connection whatever its
                        // method.
                        Some(r) if reused && !fresh => {
                            tracing::debug!(error = %err, "stale pooled connection; retrying on a new one");
                            out.req = r;
                            fresh = true;
                        }
                        // Sent, and the connection closed with no answer: the close crossed
                        // the request. One that may go twice goes again.
                        None if spare.is_some()
                            && (closed_unanswered(&err) || refused_unprocessed(&err)) =>
                        {
                            tracing::debug!(error = %err, "pooled connection closed under the request; sending it again on a new one");
                            out.req = spare.take().ok_or(ProxyError::UpstreamReset)?;
                            fresh = true;
                        }
                        _ => return Err(outcome_of(&err, endpoint)),
                    }
                }
            }
        }
    }
}

/// Refuses a response head that cannot be passed on safely (nginx answers these with 502 too):
/// a transfer coding other than chunked, Content-Length beside Transfer-Encoding, which an intermediary that forwards it could frame
/// differently from its neighbours (RFC 9112 §6.3: smuggling, response splitting), and a 101
/// to a request that asked for no upgrade (upgrades go by `send_upgrade`), which would leave
/// the client a switched connection it never asked for.
fn valid<B>(resp: &Response<B>) -> Result<(), ProxyError> {
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::BadResponse("101 to a request without Upgrade"));
    }
    let h = resp.headers();
    if !h.contains_key(http::header::TRANSFER_ENCODING) {
        return Ok(());
    }
    if h.contains_key(http::header::CONTENT_LENGTH) {
        return Err(ProxyError::BadResponse(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if !crate::headers::only_chunked(h) {
        return Err(ProxyError::BadResponse(
            "a transfer coding other than chunked",
        ));
    }
    Ok(())
}

/// How long a pooled connection must have idled for a request on it to keep a copy to send
/// again (see `send`).
const RESEND_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// A copy of `req` to send again if the connection it goes on closes under it: only for a
/// request that may be sent twice (an idempotent method, or an `Idempotency-Key`, as for
/// retries) and whose body is kept whole or absent.
fn resendable(req: &Request<ReqBody>) -> Option<Request<ReqBody>> {
    let body = match req.body() {
        ReqBody::Empty => ReqBody::Empty,
        ReqBody::Replay(b) => ReqBody::Replay(b.clone()),
        ReqBody::Client(_) => return None,
    };
    let may_repeat = scalegate_core::retry::is_idempotent_method(req.method().as_str())
        || req.headers().contains_key(&crate::retry::IDEMPOTENCY_KEY);
    if !may_repeat {
        return None;
    }
    let (head, ()) = Request::new(()).into_parts();
    let mut copy = Request::from_parts(head, body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Whether the connection closed or was reset before the response head came.
fn closed_unanswered(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted);
        }
        source = e.source();
    }
    false
}

/// Why an attempt's send gave no response to pass on.
enum Failed<R> {
    /// No response head (the request may be given back, unsent).
    Send(TrySendError<R>),
    /// The head came, but its body broke off before the first byte.
    Body(hyper::Error),
}

pin_project! {
    /// The sending future, then, in the same poll, a look at the body that came with the head
    /// ([`UpstreamBody::begin`]). Not an `async` block: one would hold the head across the look
    /// and grow every request's future.
    struct Begin<F> {
        #[pin]
        sending: F,
    }
}

impl<F, R> Future for Begin<F>
where
    F: Future<Output = Result<Response<Incoming>, TrySendError<R>>>,
{
    type Output = Result<Response<UpstreamBody>, Failed<R>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (head, body) = match ready!(self.project().sending.poll(cx)) {
            Ok(resp) => resp.into_parts(),
            Err(e) => return Poll::Ready(Err(Failed::Send(e))),
        };
        Poll::Ready(match UpstreamBody::begin(body, cx) {
            Ok(body) => Ok(Response::from_parts(head, body)),
            Err(e) => Err(Failed::Body(e)),
        })
    }
}

/// What a failed send means, with a warning for a response head over the limits.
fn outcome_of(err: &hyper::Error, endpoint: &HttpEndpoint) -> ProxyError {
    let outcome = classify(err);
    if outcome == ProxyError::ResponseHeadTooLarge {
        tracing::warn!(
            endpoint = %endpoint.addr,
            "response head over upstreams.pool.max_response_headers or max_response_header_bytes: answered 502, endpoint not blamed"
        );
    }
    outcome
}

/// Maps a client-connection error to the outcome it means.
fn classify(err: &hyper::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<BodyTooLarge>() {
            return ProxyError::BodyTooLarge;
        }
        if e.is::<BodyTimeout>() {
            return ProxyError::BodyTimeout;
        }
        source = e.source();
    }
    // The request body the client sent failed (bad chunked framing, cut short): the client's
    // fault, not the upstream's, so no 502 and nothing counted against the endpoint.
    if err.is_user() {
        return ProxyError::BadRequest("request body malformed or cut short");
    }
    if err.is_parse_too_large() {
        return ProxyError::ResponseHeadTooLarge;
    }
    if err.is_timeout() {
        ProxyError::UpstreamTimeout
    } else if refused_unprocessed(err) {
        ProxyError::UpstreamRefused
    } else {
        ProxyError::UpstreamReset
    }
}

/// Whether an HTTP/2 upstream refused the stream before processing any of it (RFC 9113 §8.7):
/// reset with REFUSED_STREAM, or above the last stream its GOAWAY let through (h2 gives those
/// the GOAWAY's error; a stream at or below it that the connection's end cut gets a broken
/// pipe instead).
fn refused_unprocessed(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let refused = h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            return h2.is_remote() && (refused || h2.is_go_away());
        }
        source = e.source();
    }
    false
}
