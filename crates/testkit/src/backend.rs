//! A real HTTP backend (HTTP/1.1 and h2c) that answers with its name, counts requests, records
//! the last request head, and misbehaves on command.
//!
//! Per request, without touching the shared knobs (so concurrent requests can each ask for
//! their own misbehaviour): `x-delay-ms: N` delays the response head by N ms; `/bytes/N` answers
//! N bytes; `/drip/CHUNKS/MS` streams CHUNKS chunks of 4 KiB, MS apart; `/reset/N` sends N body
//! bytes of a longer announced body, then breaks the connection (HTTP/1.1: closed; HTTP/2:
//! RST_STREAM), and `/reset/0` breaks it before the first body byte (over HTTP/1.1 that is
//! before the head too); `/stall` sends one chunk and then nothing ever again.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// What the backend does, changeable while it runs.
#[derive(Debug)]
pub struct Behaviour {
    /// Status for normal requests (default 200).
    pub status: AtomicU16,
    /// Delay before answering normal requests, in ms.
    pub delay_ms: AtomicU64,
    /// Whether `/health` answers 200 (else 503).
    pub healthy: AtomicBool,
    /// The next this-many normal requests fail with `fail_status` (then `status` again).
    pub fail_remaining: AtomicUsize,
    /// Status of those failures.
    pub fail_status: AtomicU16,
    /// Retry-After seconds sent with 429/503 answers (0: none).
    pub retry_after: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    name: String,
    behaviour: Behaviour,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    last_headers: Mutex<Option<HeaderMap>>,
    last_body_len: AtomicUsize,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A running backend; stops (closing every connection) on [`Backend::stop`] or drop.
#[derive(Debug)]
pub struct Backend {
    /// Address it listens on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Backend {
    /// Starts a backend on a free loopback port.
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        Self::serve(name, listener)
    }

    /// Starts a backend on a given port (to bring a stopped one back).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(addr).await {
                Ok(l) => return Self::serve(name, l),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("rebind {addr}: {last:?}")
    }

    fn serve(name: &str, listener: TcpListener) -> Backend {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let shared = Arc::new(Shared {
            name: name.to_string(),
            behaviour: Behaviour {
                status: AtomicU16::new(200),
                delay_ms: AtomicU64::new(0),
                healthy: AtomicBool::new(true),
                fail_remaining: AtomicUsize::new(0),
                fail_status: AtomicU16::new(503),
                retry_after: AtomicU64::new(0),
            },
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            last_headers: Mutex::new(None),
            last_body_len: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s2 = s.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s3 = s2.clone();
                        async move { Ok::<_, Infallible>(answer(&s3, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                if let Ok(mut t) = s.tasks.lock() {
                    t.push(conn.abort_handle());
                }
            }
        });
        if let Ok(mut t) = shared.tasks.lock() {
            t.push(accept.abort_handle());
        }
        Backend { addr, shared }
    }

    /// The backend's name (its response body).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The behaviour knobs.
    pub fn behaviour(&self) -> &Behaviour {
        &self.shared.behaviour
    }

    /// Answer normal requests with `status`.
    pub fn set_status(&self, status: u16) {
        self.shared.behaviour.status.store(status, SeqCst);
    }

    /// Delay normal requests by `d`.
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .behaviour
            .delay_ms
            .store(d.as_millis() as u64, SeqCst);
    }

    /// Fail the next `n` normal requests with `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.behaviour.fail_status.store(status, SeqCst);
        self.shared.behaviour.fail_remaining.store(n, SeqCst);
    }

    /// Send `Retry-After: secs` with 429 and 503 answers (0: none).
    pub fn set_retry_after(&self, secs: u64) {
        self.shared.behaviour.retry_after.store(secs, SeqCst);
    }

    /// Make `/health` pass or fail.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.behaviour.healthy.store(healthy, SeqCst);
    }

    /// Normal (non-health) requests served so far.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(SeqCst)
    }

    /// Health probes served so far.
    pub fn health_hits(&self) -> usize {
        self.shared.health_hits.load(SeqCst)
    }

    /// Headers of the last normal request.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.shared.last_headers.lock().ok().and_then(|h| h.clone())
    }

    /// Body length of the last normal request.
    pub fn last_body_len(&self) -> usize {
        self.shared.last_body_len.load(SeqCst)
    }

    /// Stops listening and closes every connection.
    pub fn stop(&self) {
        if let Ok(mut t) = self.shared.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A response body: whole, or one chunk and then nothing ever again (a stalled upstream).
#[derive(Debug)]
pub enum TestBody {
    /// The whole body.
    Full(Full<Bytes>),
    /// Sends this chunk, then stays pending forever.
    Stall(Option<Bytes>),
    /// Sends the data, then the trailer fields (a gRPC-style answer).
    Trailed(Option<Bytes>, Option<HeaderMap>),
    /// Sends this many more 4 KiB chunks, one per tick of the interval.
    Drip(usize, tokio::time::Interval),
    /// Sends this chunk, waits (so it leaves with the head), then fails: the server breaks the
    /// connection (or resets the stream).
    Reset(Option<Bytes>, std::pin::Pin<Box<tokio::time::Sleep>>),
    /// Fails at once, before any byte (`/reset/0`): over HTTP/2 the stream's HEADERS go out
    /// and RST_STREAM follows right behind them; over HTTP/1.1 hyper sends nothing at all (the
    /// head is still in its buffer), a failure before the head.
    Broken,
}

/// A 4 KiB chunk of a dripping body.
const DRIP: Bytes = Bytes::from_static(&[b'd'; 4096]);

impl http_body::Body for TestBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        match self.get_mut() {
            TestBody::Full(f) => std::pin::Pin::new(f)
                .poll_frame(cx)
                .map_err(|e: Infallible| match e {}),
            TestBody::Stall(chunk) => match chunk.take() {
                Some(c) => Poll::Ready(Some(Ok(http_body::Frame::data(c)))),
                None => Poll::Pending,
            },
            TestBody::Drip(0, _) => Poll::Ready(None),
            TestBody::Drip(left, every) => match every.poll_tick(cx) {
                Poll::Ready(_) => {
                    *left -= 1;
                    Poll::Ready(Some(Ok(http_body::Frame::data(DRIP))))
                }
                Poll::Pending => Poll::Pending,
            },
            TestBody::Reset(chunk, pause) => match chunk.take() {
                Some(c) => Poll::Ready(Some(Ok(http_body::Frame::data(c)))),
                None => pause.as_mut().poll(cx).map(|()| {
                    Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "backend told to break the response (/reset)",
                    )))
                }),
            },
            TestBody::Broken => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "backend told to break the response before its body (/reset/0)",
            )))),
            TestBody::Trailed(data, trailers) => {
                let frame = match (data.take(), trailers.take()) {
                    (Some(d), t) => {
                        *trailers = t;
                        Some(Ok(http_body::Frame::data(d)))
                    }
                    (None, Some(t)) => Some(Ok(http_body::Frame::trailers(t))),
                    (None, None) => None,
                };
                std::task::Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TestBody::Full(f) => f.is_end_stream(),
            TestBody::Stall(_) | TestBody::Reset(..) | TestBody::Broken => false,
            TestBody::Trailed(d, t) => d.is_none() && t.is_none(),
            TestBody::Drip(left, _) => *left == 0,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            // Exact sizes keep Content-Length framing, as the tests reading raw sockets expect.
            TestBody::Full(f) => f.size_hint(),
            TestBody::Stall(_) | TestBody::Trailed(..) | TestBody::Drip(..) | TestBody::Broken => {
                http_body::SizeHint::default()
            }
            // Announces more than it sends: the client sees the body cut short.
            TestBody::Reset(chunk, _) => {
                http_body::SizeHint::with_exact(2 * chunk.as_ref().map_or(1, |c| c.len() as u64))
            }
        }
    }
}

async fn answer(s: &Shared, req: Request<Incoming>) -> Response<TestBody> {
    if req.uri().path() == "/stall" {
        s.hits.fetch_add(1, SeqCst);
        return Response::new(TestBody::Stall(Some(Bytes::from_static(b"partial"))));
    }
    if req.uri().path().starts_with("/grpc/") {
        return trailed_answer(s, req).await;
    }
    if let Some(body) = misbehaving_body(req.uri().path()) {
        s.hits.fetch_add(1, SeqCst);
        let delay = requested_delay(s, req.headers());
        // The request body is read whole first, like a normal answer.
        let _ = req.into_body().collect().await;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return Response::new(body);
    }
    let (parts, body) = full_answer(s, req).await.into_parts();
    Response::from_parts(parts, TestBody::Full(body))
}

/// The body of `/drip/CHUNKS/MS` and `/reset/N` requests.
fn misbehaving_body(path: &str) -> Option<TestBody> {
    if let Some(rest) = path.strip_prefix("/drip/") {
        let (chunks, ms) = rest.split_once('/')?;
        let every = Duration::from_millis(ms.parse::<u64>().ok()?.max(1));
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        return Some(TestBody::Drip(chunks.parse().ok()?, interval));
    }
    let n: usize = path.strip_prefix("/reset/")?.parse().ok()?;
    if n == 0 {
        return Some(TestBody::Broken);
    }
    let pause = Box::pin(tokio::time::sleep(Duration::from_millis(20)));
    Some(TestBody::Reset(
        Some(Bytes::from(vec![b'r'; n.max(1)])),
        pause,
    ))
}

/// The shared delay plus the request's own `x-delay-ms`.
fn requested_delay(s: &Shared, h: &HeaderMap) -> Duration {
    let own = h
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(s.behaviour.delay_ms.load(SeqCst) + own)
}

/// A gRPC-style answer: the body, then `grpc-status` in the trailers, and `x-saw-te` saying what
/// TE header arrived (gRPC servers refuse calls without `te: trailers`).
async fn trailed_answer(s: &Shared, req: Request<Incoming>) -> Response<TestBody> {
    s.hits.fetch_add(1, SeqCst);
    if let Ok(mut h) = s.last_headers.lock() {
        *h = Some(req.headers().clone());
    }
    let te = req
        .headers()
        .get(http::header::TE)
        .cloned()
        .unwrap_or(http::HeaderValue::from_static("none"));
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers.insert("x-saw-te", te);
    let mut r = Response::new(TestBody::Trailed(
        Some(body.unwrap_or_default()),
        Some(trailers),
    ));
    let h = r.headers_mut();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "trailer",
        http::HeaderValue::from_static("grpc-status, x-saw-te"),
    );
    r
}

async fn full_answer(s: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/health" {
        s.health_hits.fetch_add(1, SeqCst);
        let ok = s.behaviour.healthy.load(SeqCst);
        let mut r = Response::new(Full::new(Bytes::from_static(b"health")));
        *r.status_mut() = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return r;
    }
    s.hits.fetch_add(1, SeqCst);
    if let Ok(mut h) = s.last_headers.lock() {
        *h = Some(req.headers().clone());
    }
    let path = req.uri().path().to_string();
    let delay = requested_delay(s, req.headers());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    s.last_body_len.store(body.len(), SeqCst);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = if let Some(n) = path.strip_prefix("/bytes/") {
        Bytes::from(vec![b'x'; n.parse().unwrap_or(0)])
    } else {
        Bytes::from(s.name.clone())
    };
    let failing = s
        .behaviour
        .fail_remaining
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if failing {
        s.behaviour.fail_status.load(SeqCst)
    } else {
        s.behaviour.status.load(SeqCst)
    };
    let mut r = Response::new(Full::new(reply));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let after = s.behaviour.retry_after.load(SeqCst);
    if after > 0 && (status == 429 || status == 503) {
        r.headers_mut()
            .insert("retry-after", http::HeaderValue::from(after));
    }
    r.headers_mut().insert(
        "x-backend",
        s.name
            .parse()
            .unwrap_or(http::HeaderValue::from_static("?")),
    );
    r.headers_mut()
        .insert("connection", http::HeaderValue::from_static("keep-alive"));
    r.headers_mut()
        .insert("keep-alive", http::HeaderValue::from_static("timeout=60"));
    r
}
