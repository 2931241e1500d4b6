//! Body types of the data path: request bodies streamed to upstreams under the route's size
//! limit, and response bodies that hand the upstream connection back when they end.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use crate::proxy::Completion;

/// Boxed error of a body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client sent more body than the route allows.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A body the gateway already holds whole (a queued job's), handed to `forward` in the
/// request's extensions in place of the client's stream.
#[derive(Clone, Debug)]
pub struct StoredBody(pub Bytes);

/// The client did not send its whole body within the listener's `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Why the client's streamed body failed, told to the attempt waiting for the response head
/// (see `proxy/head_wait.rs`): however the upstream's protocol reports a body that broke off
/// (HTTP/2 as a stream reset), the answer is the client's fault, never the endpoint's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFault {
    /// Over the route's `max_body_bytes`.
    TooLarge,
    /// Not whole within the listener's `body_timeout`.
    Timeout,
    /// Malformed (bad chunked framing) or cut short.
    Broken,
}

/// Told once by a streamed body: it passed whole, or why it failed.
pub type BodyEnd = Result<(), BodyFault>;

/// A request body on its way to an upstream.
#[derive(Debug)]
pub enum ReqBody {
    /// No body (health probes, bodiless requests).
    Empty,
    /// A body kept whole so it can be sent again on a retry.
    Replay(Option<Bytes>),
    /// The client's body, streamed while it arrives.
    Client(Box<ClientBody>),
}

/// The client's body streamed to the upstream: cut off with [`BodyTooLarge`] past `limit`
/// bytes and with [`BodyTimeout`] at the client's deadline; tells `sent` when it has passed
/// whole (the route timeout starts then: the client's time is not the upstream's).
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    seen: u64,
    limit: u64,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    sent: Option<tokio::sync::oneshot::Sender<BodyEnd>>,
}

impl ClientBody {
    /// The client's `inner` body, at most `limit` bytes, all of it before `deadline` (which is
    /// `timeout` after the request arrived); `sent` fires once it has passed whole.
    pub fn new(
        inner: Incoming,
        limit: u64,
        timeout: Duration,
        deadline: tokio::time::Instant,
        sent: tokio::sync::oneshot::Sender<BodyEnd>,
    ) -> Self {
        ClientBody {
            inner,
            seen: 0,
            limit,
            timeout,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            sent: Some(sent),
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                ready!(self.deadline.as_mut().poll(cx));
                self.ended(Err(BodyFault::Timeout));
                return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout)))));
            }
        };
        Poll::Ready(match frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.seen += d.len() as u64;
                    if self.seen > self.limit {
                        self.ended(Err(BodyFault::TooLarge));
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(self.limit)))));
                    }
                }
                if let Some(t) = f.trailers_ref()
                    && t.values().any(|v| crate::headers::padded(v.as_bytes()))
                {
                    // Malformed, as the same value in the head is (`headers::check_head`).
                    self.ended(Err(BodyFault::Broken));
                    let why = "a trailer value begins or ends with whitespace";
                    return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        why,
                    )))));
                }
                if self.inner.is_end_stream() {
                    self.ended(Ok(()));
                }
                Some(Ok(f))
            }
            Some(Err(e)) => {
                self.ended(Err(BodyFault::Broken));
                Some(Err(Box::new(e)))
            }
            None => {
                self.ended(Ok(()));
                None
            }
        })
    }

    /// Tells the waiting attempt how the body ended (once).
    fn ended(&mut self, end: BodyEnd) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(end);
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Replay(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Client(c) => c.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Replay(b) => b.is_none(),
            ReqBody::Client(c) => c.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Replay(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Client(c) => c.inner.size_hint(),
        }
    }
}

/// The upstream's response body once the gateway has looked at its start: the frame that
/// had already arrived then, if any, and the rest of the stream.
///
/// The look is what lets a body that fails before its first byte (the upstream closed or
/// reset right after the head) be answered 502: once the head is passed on, an HTTP/1.1 client
/// would get only a closed connection, which it may take for a stale keep-alive and send the
/// request again.
#[derive(Debug)]
pub struct UpstreamBody {
    /// Boxed: hyper's HTTP/1.1 client hands a body chunk over only once it is asked for one, so
    /// the look finds nothing there; over HTTP/2 a DATA frame may have come with the HEADERS.
    /// Held inline, it cost more in moves of every response than the box does when it is used
    /// (callgrind, session 15).
    first: Option<Box<Frame<Bytes>>>,
    rest: Incoming,
}

impl UpstreamBody {
    /// Takes what of `rest` has already arrived, without waiting for more (`cx` is told when
    /// more comes); an error there is returned, and means the upstream broke off before the
    /// body began.
    pub fn begin(mut rest: Incoming, cx: &mut Context<'_>) -> Result<Self, hyper::Error> {
        let first = Self::peek(&mut rest, cx)?;
        Ok(UpstreamBody { first, rest })
    }

    /// [`Self::begin`] as a future, where no poll is at hand.
    pub async fn begun(mut rest: Incoming) -> Result<Self, hyper::Error> {
        let first = std::future::poll_fn(|cx| Poll::Ready(Self::peek(&mut rest, cx))).await?;
        Ok(UpstreamBody { first, rest })
    }

    fn peek(
        rest: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Result<Option<Box<Frame<Bytes>>>, hyper::Error> {
        match Pin::new(rest).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => Err(e),
            Poll::Ready(Some(Ok(frame))) => Ok(Some(Box::new(frame))),
            Poll::Ready(None) | Poll::Pending => Ok(None),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.first.take() {
            Some(frame) => Poll::Ready(Some(Ok(*frame))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        let held = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint.set_lower(hint.lower().saturating_add(held));
        hint
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
// `Upstream` is the large variant and also the usual one: boxing it would allocate for nearly
// every response to save room in the few the gateway makes itself.
#[allow(clippy::large_enum_variant)]
pub enum RespBody {
    /// A body the gateway made itself, sent in one frame.
    Full(Option<Bytes>),
    /// The upstream's body, streamed; `done` runs once when it ends or is dropped.
    Upstream {
        /// The upstream's stream.
        inner: UpstreamBody,
        /// Bookkeeping for when the stream ends (returns the connection to the pool); its
        /// route gives the longest wait between two reads of the body.
        done: Option<Completion>,
        /// Armed only while a read is waiting, so bodies that flow never pay for a timer.
        idle: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// A transformed body (compression).
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
    /// A body copied into a [`Sink`] as it streams (a cache fill).
    Tee(Box<Tee>),
    /// A body on an HTTP/2 stream, watched for a client that stops taking it
    /// (`h2_stall.rs`).
    Watched(std::sync::Arc<crate::h2_stall::Watch>),
}

/// Where a teed body's bytes go. `end` runs only when the whole body passed; a sink dropped
/// without `end` saw a body that failed or was abandoned.
pub trait Sink: Send {
    /// One chunk; return false to stop copying (the sink is then dropped).
    fn data(&mut self, chunk: &Bytes) -> bool;
    /// The body ended cleanly.
    fn end(self: Box<Self>);
}

/// A body and the sink that copies it.
pub struct Tee {
    /// The body sent on to the client.
    pub inner: RespBody,
    /// The copy, while it is wanted.
    pub sink: Option<Box<dyn Sink>>,
}

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee")
            .field("inner", &self.inner)
            .field("copying", &self.sink.is_some())
            .finish()
    }
}

/// The upstream sent nothing for the route's read timeout in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("upstream body stalled for {0:?}")]
pub struct ReadTimeout(pub Duration);

impl RespBody {
    /// A body of the given bytes.
    pub fn full(b: Bytes) -> Self {
        RespBody::Full(Some(b))
    }

    /// The length of a body held whole (the gateway's own answers); 0 for a streamed one.
    pub fn whole_len(&self) -> u64 {
        match self {
            RespBody::Full(Some(b)) => b.len() as u64,
            _ => 0,
        }
    }

    /// No body at all: over HTTP/2 the head ends the stream.
    pub fn empty() -> Self {
        RespBody::Full(None)
    }

    /// Sets the status the request's bookkeeping records (when the cache answers in place of
    /// the upstream's own status).
    pub fn set_status(&mut self, status: u16) {
        match self {
            RespBody::Upstream { done: Some(c), .. } => c.set_status(status),
            RespBody::Tee(t) => t.inner.set_status(status),
            _ => {}
        }
    }

    /// Takes the bookkeeping of an upstream body the gateway will not send (a 304 that names
    /// another representation than the cache's), its exchange ended, so the request can be
    /// sent again; None when it is not an upstream's body.
    pub fn take_completion(&mut self) -> Option<Completion> {
        let RespBody::Upstream { inner, done, .. } = self else {
            return None;
        };
        let mut c = done.take()?;
        c.end_exchange(inner.is_end_stream());
        Some(c)
    }

    /// Drops an upstream body the gateway answers without (a stored copy of `sent` bytes served
    /// in its place): the request is not cut short by it, as it would be by a body dropped
    /// unsent, and the access log counts what was sent.
    pub fn set_aside(mut self, sent: u64) {
        if let RespBody::Upstream { inner, done, .. } = &mut self
            && let Some(mut c) = done.take()
        {
            c.count_bytes(sent);
            c.finish(inner.is_end_stream());
        }
    }

    /// The upstream's body, with its completion bookkeeping.
    pub fn upstream(inner: UpstreamBody, done: Completion) -> Self {
        RespBody::Upstream {
            inner,
            done: Some(done),
            idle: None,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Upstream { inner, done, idle } => {
                let frame = match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        let Some(limit) = done.as_ref().map(Completion::read_timeout) else {
                            return Poll::Pending;
                        };
                        let timer = idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                        if timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        if let Some(c) = done.take() {
                            let grpc = c.grpc();
                            c.cut_short();
                            // The gateway's own timer, not a broken upstream: DEADLINE_EXCEEDED,
                            // as for a response head that does not come in time.
                            if grpc {
                                return Poll::Ready(Some(Ok(grpc_end(
                                    "4",
                                    "upstream sent nothing within the route's read_timeout",
                                ))));
                            }
                        }
                        return Poll::Ready(Some(Err(Box::new(ReadTimeout(limit)))));
                    }
                };
                *idle = None;
                match &frame {
                    Some(Ok(f)) => {
                        if let (Some(d), Some(c)) = (f.data_ref(), done.as_mut()) {
                            c.count_bytes(d.len() as u64);
                        }
                        // Trailers are the last frame (hyper reads no further, and a chunked
                        // body never reports its end otherwise).
                        if (f.is_trailers() || inner.is_end_stream())
                            && let Some(c) = done.take()
                        {
                            c.finish(true);
                        }
                    }
                    Some(Err(_)) | None => {
                        if let Some(c) = done.take() {
                            let grpc = c.grpc() && frame.is_some();
                            match frame {
                                None => c.finish(true),
                                Some(_) => c.cut_short(),
                            }
                            // The upstream broke off mid-stream: a gRPC client gets UNAVAILABLE
                            // (which it may retry), as it would from the server directly, not
                            // the INTERNAL a stream reset means to it.
                            if grpc {
                                return Poll::Ready(Some(Ok(grpc_end(
                                    "14",
                                    "upstream connection broke",
                                ))));
                            }
                        }
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(e) as BoxError)))
            }
            RespBody::Boxed(b) => Pin::new(b).poll_frame(cx),
            RespBody::Watched(w) => w.poll_frame(cx),
            RespBody::Tee(t) => {
                let frame = ready!(Pin::new(&mut t.inner).poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref()
                            && let Some(sink) = t.sink.as_mut()
                            && !sink.data(d)
                        {
                            t.sink = None;
                        }
                        if t.inner.is_end_stream()
                            && let Some(sink) = t.sink.take()
                        {
                            sink.end();
                        }
                    }
                    None => {
                        if let Some(sink) = t.sink.take() {
                            sink.end();
                        }
                    }
                    Some(Err(_)) => t.sink = None,
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Upstream { inner, .. } => inner.is_end_stream(),
            RespBody::Boxed(b) => b.is_end_stream(),
            RespBody::Tee(t) => t.inner.is_end_stream(),
            RespBody::Watched(w) => w.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RespBody::Full(None) => SizeHint::with_exact(0),
            RespBody::Upstream { inner, .. } => inner.size_hint(),
            RespBody::Boxed(b) => b.size_hint(),
            RespBody::Tee(t) => t.inner.size_hint(),
            RespBody::Watched(w) => w.size_hint(),
        }
    }
}

/// The trailers ending a gRPC response the gateway cut short: `status` (14 UNAVAILABLE for an
/// upstream that broke off, 4 DEADLINE_EXCEEDED for the route's read timeout) and why.
fn grpc_end(status: &'static str, message: &'static str) -> Frame<Bytes> {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from_static(status));
    t.insert("grpc-message", http::HeaderValue::from_static(message));
    Frame::trailers(t)
}

impl Drop for RespBody {
    /// An upstream body dropped before its end (the client left, or the drain timeout closed
    /// its connection) was not delivered whole: its access log line and the route's count say
    /// so, as for an upstream that broke off (a probe's finding: a response cut by the drain
    /// was logged as a whole 200). A body with nothing left (HEAD, 204, 304, which hyper never
    /// reads) is whole.
    fn drop(&mut self) {
        if let RespBody::Upstream { inner, done, .. } = self
            && let Some(c) = done.take()
        {
            if inner.is_end_stream() {
                c.finish(true);
            } else {
                c.cut_short();
            }
        }
    }
}
