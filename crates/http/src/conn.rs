//! Serving one client connection: protocol sniffing (HTTP/1.1 or h2c prior knowledge), idle
//! parking, and graceful close on shutdown.
//!
//! **Parking.** hyper keeps an 8 KiB read and an 8 KiB write buffer for the whole life of an
//! HTTP/1 connection. A gateway holding tens of thousands of idle keep-alive clients would spend
//! most of its memory on those buffers, so an HTTP/1 connection with no request in flight for
//! [`PARK_AFTER`] is handed back by hyper (`poll_without_shutdown` + `into_parts`) and waits for
//! readability holding no buffers; the next request builds a fresh hyper connection. Parked
//! connections close after the listener's idle timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::body::RespBody;
use crate::clock;
use crate::h2_resets::Cancels;
use crate::proxy::{self, ConnCtx};
use crate::spec::ListenerSpec;
use crate::worker::Shutdown;

/// An HTTP/1 connection idle this long gives its buffers back.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Per-connection activity, read by the park timer and the connections' checks.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicU32,
    last: AtomicU64,
    /// When the first bytes of a request head arrived on an idle connection (0: none since
    /// the last request began): a head still incomplete `header_read_timeout` later is a
    /// slowloris.
    head_since: AtomicU64,
    /// Reads and writes that moved bytes (a count: compared between two looks, it tells a
    /// quiet connection from one still sending or receiving).
    io: AtomicU64,
    /// Since when the client's socket has refused our writes.
    stall: crate::stall::Stall,
}

impl Activity {
    /// A request started on the connection (its head is complete).
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        self.io.fetch_add(1, Relaxed);
        if self.in_flight.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 {
            self.head_since.store(clock::now().0.max(1), Relaxed);
        }
    }

    /// A write to the client: counted when it moved bytes.
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.io.fetch_add(1, Relaxed);
        }
        self.stall.wrote(r);
    }

    /// How long a request head has been arriving, with nothing in flight.
    fn head_pending_for(&self) -> Option<Duration> {
        let since = self.head_since.load(Relaxed);
        (since != 0 && self.in_flight.load(Relaxed) == 0)
            .then(|| clock::now().since(scalegate_core::Tick(since)))
    }

    /// The connection started reading (accepted, or woken from parking).
    pub fn touch(&self) {
        self.last.store(clock::now().0, Relaxed);
    }

    /// A request on the connection finished.
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.last.store(clock::now().0, Relaxed);
    }

    fn idle_for(&self) -> Option<Duration> {
        (self.in_flight.load(Relaxed) == 0)
            .then(|| clock::now().since(scalegate_core::Tick(self.last.load(Relaxed))))
    }
}

/// Counts live connections of a worker so a drain can wait for them.
#[derive(Debug, Default)]
pub struct ConnTracker {
    live: AtomicUsize,
    zero: Notify,
}

/// Decrements the tracker when its connection ends.
#[derive(Debug)]
pub struct Tracked(Arc<ConnTracker>);

impl ConnTracker {
    /// Registers a connection.
    pub fn track(self: &Arc<Self>) -> Tracked {
        self.live.fetch_add(1, Relaxed);
        Tracked(self.clone())
    }

    /// Live connections.
    pub fn live(&self) -> usize {
        self.live.load(Relaxed)
    }

    /// Waits until no connection is live.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.zero.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts as a request in flight on its client connection for as long as it lives: a tunnel
/// (a WebSocket) the connection carries keeps it from being closed as idle.
#[derive(Debug)]
pub struct Busy(Arc<ConnCtx>);

impl Busy {
    /// Counts one on `ctx`'s connection.
    pub fn new(ctx: &Arc<ConnCtx>) -> Busy {
        ctx.activity.begin();
        Busy(ctx.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.activity.end();
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Relaxed) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// Protocol settings of one listener's connections, built once per accept loop.
#[derive(Clone)]
pub struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    idle_timeout: Duration,
    header_read_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Protocols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocols")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Protocols {
    /// HTTP/1.1 and HTTP/2 settings for a listener.
    pub fn new(spec: &ListenerSpec) -> Self {
        let mut h1 = http1::Builder::new();
        // The header timeout is enforced by the connection's own tick (see `run_h1`).
        h1.header_read_timeout(None)
            .max_buf_size(spec.max_header_bytes.max(8192))
            .keep_alive(true);
        // hyper allocates the header array per request once a count is set: only when needed.
        if spec.edge.max_headers != crate::edge::DEFAULT_MAX_HEADERS {
            h1.max_headers(spec.edge.max_headers);
        }
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(spec.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            // WebSocket over HTTP/2 (RFC 8441): see h2_websocket.rs.
            .enable_connect_protocol();
        Protocols {
            h1,
            h2,
            idle_timeout: spec.idle_timeout,
            header_read_timeout: spec.header_read_timeout,
            tls: spec
                .tls
                .as_ref()
                .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone())),
        }
    }
}

type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

/// Serves one accepted connection to its end.
pub async fn serve(
    stream: TcpStream,
    ctx: Arc<ConnCtx>,
    protocols: Arc<Protocols>,
    mut shutdown: Shutdown,
    _t: Tracked,
) {
    if let Some(acceptor) = &protocols.tls {
        return Box::pin(serve_tls(acceptor, stream, ctx, &protocols, &mut shutdown)).await;
    }
    match sniff(&stream, protocols.header_read_timeout).await {
        Ok(Sniffed::H1(prefix)) => serve_h1(stream, prefix, ctx, &protocols, &mut shutdown).await,
        Ok(Sniffed::H2(prefix)) => {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let io = Prefixed {
                prefix,
                inner: stream,
                ctx: ctx.clone(),
            };
            Box::pin(serve_h2(io, fd, ctx, &protocols, &mut shutdown)).await;
        }
        Ok(Sniffed::Closed) | Err(_) => {}
    }
}

/// The protocol, with the bytes the sniff had to take off the socket (usually none).
enum Sniffed {
    H1(Bytes),
    H2(Bytes),
    Closed,
}

/// Tells HTTP/2 prior knowledge from HTTP/1 by the first bytes: a peek, which consumes nothing,
/// decides almost every connection. Only when the first bytes are a part of the preface does it
/// read them (a peek cannot see an EOF behind pending bytes, and would spin on them) and read on
/// until they differ, complete the preface, or the client closes.
async fn sniff(stream: &TcpStream, limit: Duration) -> io::Result<Sniffed> {
    let deadline = tokio::time::Instant::now() + limit;
    let timed_out = |_| io::Error::from(io::ErrorKind::TimedOut);
    let mut buf = [0u8; 24];
    let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
        .await
        .map_err(timed_out)??;
    if n == 0 {
        return Ok(Sniffed::Closed);
    }
    if buf[..n] != H2_PREFACE[..n] {
        return Ok(Sniffed::H1(Bytes::new()));
    }
    if n == H2_PREFACE.len() {
        return Ok(Sniffed::H2(Bytes::new()));
    }
    let mut got = 0;
    loop {
        // Never past the preface's length: what follows stays on the socket.
        let n = tokio::time::timeout_at(deadline, read_some(stream, &mut buf[got..]))
            .await
            .map_err(timed_out)??;
        if n == 0 {
            return Ok(Sniffed::Closed);
        }
        got += n;
        if buf[..got] != H2_PREFACE[..got] {
            return Ok(Sniffed::H1(Bytes::copy_from_slice(&buf[..got])));
        }
        if got == H2_PREFACE.len() {
            return Ok(Sniffed::H2(Bytes::copy_from_slice(&buf[..got])));
        }
    }
}

/// One read into `buf` from a shared socket.
async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// The service of one connection; on HTTP/2 (`h2`) response bodies are watched for a client
/// that stops taking them (`h2_stall.rs`).
fn service(
    ctx: &Arc<ConnCtx>,
    h2: bool,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<RespBody>,
    Error = Infallible,
    Future = BoxedResponse,
> + Unpin
+ use<> {
    let ctx = ctx.clone();
    service_fn(move |req| -> BoxedResponse {
        // A combinator, not `async { Ok(fut.await) }`: an async block would hold the handler's
        // future twice (as its captured value and as the awaited one), doubling what is
        // allocated and copied for every request.
        let handled = proxy::handle(ctx.clone(), req);
        if !h2 {
            return Box::pin(futures_util::FutureExt::map(handled, Ok::<_, Infallible>));
        }
        let watcher = ctx.clone();
        Box::pin(futures_util::FutureExt::map(handled, move |resp| {
            Ok::<_, Infallible>(resp.map(|b| watcher.h2_streams.watch(b)))
        }))
    })
}

async fn serve_h1(
    stream: TcpStream,
    prefix: Bytes,
    ctx: Arc<ConnCtx>,
    protocols: &Protocols,
    shutdown: &mut Shutdown,
) {
    let mut io = Prefixed {
        prefix,
        inner: stream,
        ctx: ctx.clone(),
    };
    loop {
        // The active phase is boxed: a parked connection's task then holds only its socket and
        // the wait below, not hyper's state and timers.
        io = match Box::pin(run_h1(io, &ctx, protocols, shutdown)).await {
            H1End::Close => return,
            H1End::Pipelined(io) => io,
            H1End::Parked(io) => io,
        };
        if !io.prefix.is_empty() {
            continue;
        }
        tracing::trace!(peer = %ctx.peer, "parked idle connection");
        tokio::select! {
            r = io.inner.readable() => if r.is_err() { return },
            _ = tokio::time::sleep(protocols.idle_timeout) => return,
            _ = shutdown.wait() => return,
        }
    }
}

enum H1End {
    /// Close the connection.
    Close,
    /// Idle: hyper handed the socket back.
    Parked(Prefixed),
    /// Bytes of a next request were already read: serve on at once.
    Pipelined(Prefixed),
}

/// Serves requests on `io` until it closes, errs, shuts down, or parks.
async fn run_h1(
    io: Prefixed,
    ctx: &Arc<ConnCtx>,
    protocols: &Protocols,
    shutdown: &mut Shutdown,
) -> H1End {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&io.inner);
    let mut conn = protocols
        .h1
        .serve_connection(TokioIo::new(io), service(ctx, false));
    // One coarse per-connection tick does both idle parking and the header timeout (instead of
    // hyper's timer, which allocates and arms a sleep for every request): with no request in
    // flight, the connection parks after `park_after`; one that still has not produced a request
    // by `header_read_timeout` is sending its head too slowly and is closed.
    let park_after = PARK_AFTER.min(protocols.header_read_timeout);
    let mut tick = tokio::time::interval((park_after / 2).max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    ctx.activity.touch();
    let mut closing = false;
    let mut parking = false;
    let done = loop {
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
            _ = shutdown.wait(), if !closing => {
                closing = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            _ = tick.tick(), if !closing => {
                // A client that stopped taking the response would hold its request (and the
                // upstream's bulkhead place and connection) for ever: nginx's send_timeout.
                let backlog = || crate::stall::unacked(fd);
                if ctx.activity.stall.stuck(protocols.idle_timeout, backlog) {
                    tracing::debug!(peer = %ctx.peer, "client stopped reading the response; closing");
                    return H1End::Close;
                }
                match ctx.activity.idle_for() {
                    Some(idle) if !parking && idle >= park_after => {
                        parking = true;
                        Pin::new(&mut conn).graceful_shutdown();
                    }
                    Some(idle) if parking && idle >= protocols.header_read_timeout => {
                        tracing::debug!(peer = %ctx.peer, "request head not received in time; closing");
                        return H1End::Close;
                    }
                    _ => {}
                }
            }
        }
    };
    if done.is_ok()
        && !closing
        && let Some(upstream) = ctx.tunnel.take()
    {
        // A 101 went out: the socket now carries the upgraded protocol.
        let hyper::server::conn::http1::Parts { io, read_buf, .. } = conn.into_parts();
        let mut client = io.into_inner();
        client.prefix = join(read_buf, std::mem::take(&mut client.prefix));
        crate::tunnel::run(client, upstream, shutdown.wait(), protocols.idle_timeout).await;
        return H1End::Close;
    }
    if done.is_err() || closing || !parking {
        // An error hyper already answered (400/431), a shutdown, or the client ended the
        // connection (EOF or Connection: close).
        return H1End::Close;
    }
    // Take the socket back. `read_buf` is a view of hyper's read buffer: even when empty it
    // keeps the whole allocation alive, so it must not outlive this function.
    let hyper::server::conn::http1::Parts {
        io: back, read_buf, ..
    } = conn.into_parts();
    let mut rest = back.into_inner();
    if !read_buf.is_empty() || !rest.prefix.is_empty() {
        rest.prefix = join(read_buf, std::mem::take(&mut rest.prefix));
        return H1End::Pipelined(rest);
    }
    rest.prefix = Bytes::new();
    H1End::Parked(rest)
}

fn join(a: Bytes, b: Bytes) -> Bytes {
    if b.is_empty() {
        return a;
    }
    let mut v = Vec::with_capacity(a.len() + b.len());
    v.extend_from_slice(&a);
    v.extend_from_slice(&b);
    Bytes::from(v)
}

async fn serve_h2<I>(
    stream: I,
    fd: std::os::fd::RawFd,
    ctx: Arc<ConnCtx>,
    protocols: &Protocols,
    shutdown: &mut Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = protocols
        .h2
        .serve_connection(TokioIo::new(stream), service(&ctx, true));
    ctx.activity.touch();
    ctx.gateway.h2_streams.register(ctx.worker, &ctx.h2_streams);
    // Every quarter of the idle timeout, bodies the client stopped taking are dropped, and a
    // connection with no stream open for the idle timeout is asked to go (GOAWAY), as nginx's
    // keepalive_timeout and Envoy's idle_timeout do for HTTP/2.
    let every =
        (protocols.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let check = || {
        let cut = ctx.h2_streams.sweep(protocols.idle_timeout);
        if cut > 0 {
            tracing::debug!(peer = %ctx.peer, streams = cut, "HTTP/2 streams the client stopped taking were cut");
        }
        match ctx.activity.idle_for() {
            Some(idle) if idle >= protocols.idle_timeout => Check::Finish,
            _ => Check::Fine,
        }
    };
    drive_with(
        conn,
        |c| c.graceful_shutdown(),
        (shutdown, &ctx.activity, fd, &ctx.h2_cancels),
        (every, check),
    )
    .await;
}

/// What a connection's periodic check decides.
enum Check {
    /// Nothing to do.
    Fine,
    /// Ask it to finish, as a shutdown does (HTTP/2: GOAWAY).
    Finish,
    /// Close it now.
    Close,
}

/// How long a connection asked to finish by a shutdown may stay quiet (no request in flight, no
/// byte read or written, nothing unacknowledged in its socket) before it is closed: an HTTP/2
/// client that does not answer the GOAWAY's PING (gone, suspended) would otherwise hold the
/// drain to its timeout. A request's in-flight count ends when hyper has taken its last body
/// frame, not when the client has it: a slow reader still taking a response moves bytes or
/// leaves some unacknowledged, and a few seconds cover the pauses of one reading steadily.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Runs a connection that is not parked (HTTP/2, TLS HTTP/1.1 with upgrades) to its end, with
/// `check` run every `period`. A check's `Finish` asks it to finish with `graceful` (HTTP/1.1:
/// close once the response in flight is written; HTTP/2: GOAWAY, close once its streams are
/// done). A shutdown does the same, and once the connection has stayed quiet for
/// [`CLOSE_GRACE`] after that it is closed. A client that cancels most of the streams it opens
/// (`h2_resets.rs`) has its connection closed at once.
async fn drive_with<C, G, T>(
    conn: C,
    mut graceful: G,
    (shutdown, activity, fd, cancels): (&mut Shutdown, &Activity, std::os::fd::RawFd, &Cancels),
    (period, mut check): (Duration, T),
) where
    C: Future<Output = Result<(), hyper::Error>>,
    G: FnMut(Pin<&mut C>),
    T: FnMut() -> Check,
{
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let (mut closing, mut finishing) = (false, false);
    // Polled only once closing: Delay, and reset then, so that the ticks missed meanwhile do
    // not come in a burst (each would count as a quarter of the grace with no time for a byte
    // to move).
    let mut grace = tokio::time::interval(CLOSE_GRACE / 4);
    grace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet_since: Option<tokio::time::Instant> = None;
    let mut last_io = activity.io.load(Relaxed);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = shutdown.wait(), if !closing => {
                closing = true;
                grace.reset();
                if !finishing {
                    graceful(conn.as_mut());
                }
            }
            () = cancels.tripped() => {
                let (cancelled, answered) = cancels.counts();
                tracing::warn!(cancelled, answered, "a client cancelled most of the HTTP/2 streams it opened (rapid reset); its connection is closed");
                return;
            }
            _ = tick.tick() => match check() {
                Check::Fine => {}
                Check::Finish if finishing || closing => {}
                Check::Finish => {
                    finishing = true;
                    graceful(conn.as_mut());
                }
                Check::Close => return,
            },
            _ = grace.tick(), if closing => {
                let now = tokio::time::Instant::now();
                let moved = activity.io.load(Relaxed);
                let quiet = activity.idle_for().is_some()
                    && moved == last_io
                    && crate::stall::unacked(fd).is_none_or(|n| n == 0);
                last_io = moved;
                if !quiet {
                    quiet_since = None;
                    continue;
                }
                let since = *quiet_since.get_or_insert(now);
                if now - since >= CLOSE_GRACE {
                    tracing::debug!("a closing connection stayed quiet with nothing in flight; closed");
                    return;
                }
            }
        }
    }
}

/// TLS: handshake within the header timeout, then HTTP/2 or HTTP/1.1 as ALPN chose. TLS
/// connections are not parked (rustls keeps its own buffers; parking would save little), so
/// the limits the plain HTTP/1.1 tick enforces are checked here: the header timeout, the idle
/// timeout, and a client that stopped reading (nginx's send_timeout).
async fn serve_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    mut stream: TcpStream,
    ctx: Arc<ConnCtx>,
    protocols: &Protocols,
    shutdown: &mut Shutdown,
) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    // The first byte and the whole handshake within one header_read_timeout; a shutdown ends
    // the wait at once (nothing has been asked of this connection yet).
    let deadline = tokio::time::Instant::now() + protocols.header_read_timeout;
    let handshake = async {
        if crate::plain_on_tls::refused(&mut stream, deadline).await {
            return None;
        }
        // Under TLS too, reads and writes are watched (a head arriving, a peer refusing writes).
        let stream = Prefixed {
            prefix: Bytes::new(),
            inner: stream,
            ctx: ctx.clone(),
        };
        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(peer = %ctx.peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => None,
        }
    };
    let tls = tokio::select! {
        tls = handshake => tls,
        () = shutdown.wait() => None,
    };
    let Some(tls) = tls else {
        return;
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        return Box::pin(serve_h2(tls, fd, ctx, protocols, shutdown)).await;
    }
    // Not parked, so hyper can run upgrades itself: the service spawns the tunnel.
    let conn = protocols
        .h1
        .serve_connection(TokioIo::new(tls), service(&ctx, false))
        .with_upgrades();
    ctx.activity.touch();
    let limit = protocols.header_read_timeout.min(protocols.idle_timeout);
    let every = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let check = || h1_limits(&ctx, protocols, fd);
    drive_with(
        conn,
        |c| c.graceful_shutdown(),
        (shutdown, &ctx.activity, fd, &ctx.h2_cancels),
        (every, check),
    )
    .await;
}

/// The limits of an HTTP/1.1 connection that is not parked: a client that stopped taking the
/// response, a request head still arriving after `header_read_timeout`, nothing at all for
/// `idle_timeout`.
fn h1_limits(ctx: &ConnCtx, protocols: &Protocols, fd: std::os::fd::RawFd) -> Check {
    if ctx
        .activity
        .stall
        .stuck(protocols.idle_timeout, || crate::stall::unacked(fd))
    {
        tracing::debug!(peer = %ctx.peer, "client stopped reading the response; closing");
        return Check::Close;
    }
    match ctx.activity.head_pending_for() {
        Some(d) if d >= protocols.header_read_timeout => {
            tracing::debug!(peer = %ctx.peer, "request head not received in time; closing");
            Check::Close
        }
        Some(_) => Check::Fine,
        // Finish, not close: hyper's in-flight count ends when it has taken the response's
        // last body frame, and what it still has to write goes out first.
        None => match ctx.activity.idle_for() {
            Some(idle) if idle >= protocols.idle_timeout => Check::Finish,
            _ => Check::Fine,
        },
    }
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
    /// Where a write the client does not take is recorded (`Activity::wrote`).
    ctx: Arc<ConnCtx>,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Release the buffer the prefix was cut from.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.ctx.activity.read();
        }
        r
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        me.ctx.activity.wrote(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = crate::small_writes::poll_write_vectored(&mut me.inner, cx, bufs);
        me.ctx.activity.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parked connection costs its task: keep the serving future small.
    #[test]
    fn serving_future_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let s = TcpStream::connect(l.local_addr().expect("addr"))
                .await
                .expect("connect");
            let spec = ListenerSpec {
                name: "t".into(),
                bind: "127.0.0.1:0".parse().expect("addr"),
                header_read_timeout: Duration::from_secs(1),
                max_header_bytes: 65536,
                body_timeout: Duration::from_secs(60),
                idle_timeout: Duration::from_secs(1),
                tls: None,
                max_connections: None,
                edge: Default::default(),
            };
            let gw = crate::Gateway::new(
                &crate::GatewaySpec {
                    listeners: vec![],
                    routes: vec![],
                    upstreams: vec![],
                    access_log: false,
                    max_in_flight: None,
                    cluster: None,
                },
                1,
                &crate::plug::NoPlugins,
            )
            .expect("gateway");
            let ctx = Arc::new(ConnCtx {
                gateway: gw,
                rules: crate::proxy::ListenerRules::live("t", Default::default()),
                peer: "127.0.0.1:1".parse().expect("addr"),
                local_port: 0,
                idle_timeout: Duration::from_secs(60),
                max_head: 65536,
                body_timeout: Duration::from_secs(60),
                worker: 0,
                scheme: "http",
                activity: Activity::default(),
                tunnel: Default::default(),
                h2_streams: Default::default(),
                h2_cancels: Default::default(),
                shutdown: None,
            });
            let (_trigger, shutdown) = crate::worker::shutdown_channel();
            let tracker = Arc::new(ConnTracker::default());
            let fut = serve(
                s,
                ctx,
                Arc::new(Protocols::new(&spec)),
                shutdown,
                tracker.track(),
            );
            let size = std::mem::size_of_val(&fut);
            println!("serve future: {size} bytes");
            assert!(size < 1024, "serve future is {size} bytes");
        });
    }
}
