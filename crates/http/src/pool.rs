//! Upstream connections of one endpoint on one worker: keep-alive HTTP/1.1 connections reused
//! LIFO (the warmest first) under a connection cap, or one multiplexed HTTP/2 connection.
//!
//! Each worker has its own pool per endpoint, so checkout and release never contend across
//! threads and a connection's I/O stays on the worker that uses it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use scalegate_core::Tick;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::ReqBody;
use crate::dial::{Dial, dial};
use crate::error::ProxyError;
use crate::spec::{PoolSpec, UpstreamProtocol};

/// Gauges of one endpoint's connections, summed over workers.
#[derive(Clone, Debug, Default)]
pub struct PoolGauges {
    /// Requests holding a connection: an HTTP/1.1 connection each, or a stream of the shared
    /// HTTP/2 connection. Zero whenever no request is in flight.
    pub active: Gauge,
    /// Keep-alive HTTP/1.1 connections waiting for a request, plus the open HTTP/2 connection.
    pub idle: Gauge,
}

struct Idle {
    tx: http1::SendRequest<ReqBody>,
    since: Tick,
}

/// One endpoint's connections on one worker.
pub struct EndpointPool {
    idle: Mutex<Vec<Idle>>,
    permits: Arc<Semaphore>,
    /// Requests whose body is still arriving from the client hold a connection while it does;
    /// they may take at most half of the pool, so slow uploads cannot starve everyone else.
    streaming: Arc<Semaphore>,
    h2: Mutex<Option<http2::SendRequest<ReqBody>>>,
    idle_timeout: Duration,
    max_idle: usize,
    /// Response head limits: (header fields, bytes).
    head_limits: (usize, usize),
    protocol: UpstreamProtocol,
    gauges: PoolGauges,
    /// Its endpoint was removed by a reload: released connections close instead of idling.
    retired: AtomicBool,
}

impl std::fmt::Debug for EndpointPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPool")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// The sending half of an upstream connection.
pub enum Sender {
    /// An HTTP/1.1 connection, exclusively ours until released.
    H1(http1::SendRequest<ReqBody>),
    /// A handle on the shared HTTP/2 connection.
    H2(http2::SendRequest<ReqBody>),
}

/// A connection checked out for one request; [`Lease::release`] returns it for reuse, dropping
/// it closes it.
pub struct Lease {
    sender: Option<Sender>,
    /// Whether it served an earlier request (a stale keep-alive connection may have been closed
    /// by the upstream, so an unsent request on it can be retried).
    pub reused: bool,
    /// How long it sat idle in the pool before this checkout (zero for a new connection and
    /// for the shared HTTP/2 one).
    pub idled: Duration,
    pool: Arc<EndpointPool>,
    _permit: Option<OwnedSemaphorePermit>,
    /// Boxed: only requests whose body streams have one, and a lease is in every request.
    _stream_permit: Option<Box<OwnedSemaphorePermit>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl EndpointPool {
    /// A pool allowing `max_conns` connections, `max_idle` of them idle, on this worker.
    pub fn new(
        spec: &PoolSpec,
        max_conns: usize,
        max_idle: usize,
        protocol: UpstreamProtocol,
        gauges: PoolGauges,
    ) -> Self {
        EndpointPool {
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max_conns.max(1))),
            streaming: Arc::new(Semaphore::new((max_conns / 2).max(1))),
            h2: Mutex::new(None),
            idle_timeout: spec.idle_timeout,
            max_idle,
            head_limits: (spec.max_response_headers, spec.max_response_header_bytes),
            protocol,
            gauges,
            retired: AtomicBool::new(false),
        }
    }

    /// Whether every HTTP/1.1 connection this pool may have is in use (a checkout would wait).
    pub fn is_full(&self) -> bool {
        self.protocol != UpstreamProtocol::Http2 && self.permits.available_permits() == 0
    }

    /// A connection for one request: a live idle one if any, else a new one. Waits at most
    /// `connect_timeout` for a free slot and for the connect itself. `streaming`: the request's
    /// body is still arriving from the client (such requests share half of the pool).
    pub async fn checkout(
        self: &Arc<Self>,
        addr: &Dial<'_>,
        connect_timeout: Duration,
        now: Tick,
        fresh: bool,
        streaming: bool,
    ) -> Result<Lease, ProxyError> {
        // The connect and handshake paths are boxed: they are rare next to reusing a pooled
        // connection, and inline their futures would size every request's future.
        if self.protocol == UpstreamProtocol::Http2 {
            return Box::pin(self.checkout_h2(addr, connect_timeout)).await;
        }
        let stream_permit = match streaming {
            true => Some(Box::new(
                Box::pin(slot(&self.streaming, connect_timeout)).await?,
            )),
            false => None,
        };
        let permit = slot(&self.permits, connect_timeout).await?;
        if !fresh {
            while let Some(mut idle) = self.pop_idle() {
                if now.since(idle.since) >= self.idle_timeout || idle.tx.is_closed() {
                    continue;
                }
                if !idle.tx.is_ready() {
                    // The previous response just ended; the connection is about to be ready.
                    let ready = tokio::time::timeout(connect_timeout, idle.tx.ready()).await;
                    if !matches!(ready, Ok(Ok(()))) {
                        continue;
                    }
                }
                let mut lease = self.lease(Sender::H1(idle.tx), true, Some(permit));
                lease._stream_permit = stream_permit;
                lease.idled = now.since(idle.since);
                return Ok(lease);
            }
        }
        let tx = Box::pin(open_h1(addr, connect_timeout, self.head_limits)).await?;
        let mut lease = self.lease(Sender::H1(tx), false, Some(permit));
        lease._stream_permit = stream_permit;
        Ok(lease)
    }

    async fn checkout_h2(
        self: &Arc<Self>,
        addr: &Dial<'_>,
        connect_timeout: Duration,
    ) -> Result<Lease, ProxyError> {
        if let Some(tx) = lock(&self.h2).as_ref().filter(|tx| !tx.is_closed()) {
            return Ok(self.lease(Sender::H2(tx.clone()), true, None));
        }
        let stream = dial(addr, connect_timeout).await?;
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .max_header_list_size(u32::try_from(self.head_limits.1).unwrap_or(u32::MAX));
        let (tx, conn) = b
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ProxyError::ConnectFailed)?;
        spawn_connection(conn);
        if lock(&self.h2).replace(tx.clone()).is_none() {
            self.gauges.idle.inc();
        }
        Ok(self.lease(Sender::H2(tx), false, None))
    }

    fn lease(
        self: &Arc<Self>,
        sender: Sender,
        reused: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Lease {
        self.gauges.active.inc();
        Lease {
            sender: Some(sender),
            reused,
            idled: Duration::ZERO,
            pool: self.clone(),
            _permit: permit,
            _stream_permit: None,
        }
    }

    /// A lease for a connection of its own that never returns to the pool (an upgrade).
    pub fn detached(self: &Arc<Self>) -> Lease {
        Lease {
            sender: None,
            reused: false,
            idled: Duration::ZERO,
            pool: self.clone(),
            _permit: None,
            _stream_permit: None,
        }
    }

    fn pop_idle(&self) -> Option<Idle> {
        let idle = lock(&self.idle).pop();
        if idle.is_some() {
            self.gauges.idle.dec();
        }
        idle
    }

    /// Closes idle connections older than the idle timeout.
    pub fn sweep(&self, now: Tick) {
        let mut idle = lock(&self.idle);
        let before = idle.len();
        idle.retain(|c| now.since(c.since) < self.idle_timeout && !c.tx.is_closed());
        let closed = before - idle.len();
        if closed > 0 {
            self.gauges.idle.dec_by(closed as i64);
        }
    }

    /// Closes every idle connection (endpoint removed); connections released later are closed
    /// too rather than kept.
    pub fn close_idle(&self) {
        self.retired.store(true, Relaxed);
        let n = lock(&self.idle).drain(..).count();
        self.gauges.idle.dec_by(n as i64);
        if lock(&self.h2).take().is_some() {
            self.gauges.idle.dec();
        }
    }
}

impl Lease {
    /// The connection to send on.
    pub fn sender(&mut self) -> Option<&mut Sender> {
        self.sender.as_mut()
    }

    /// Returns the connection for reuse; called once the response has been read to its end.
    pub fn release(mut self, now: Tick) {
        if self.sender.is_some() {
            self.pool.gauges.active.dec();
        }
        if let Some(Sender::H1(tx)) = self.sender.take()
            && !tx.is_closed()
            && !self.pool.retired.load(Relaxed)
        {
            let mut idle = lock(&self.pool.idle);
            if idle.len() < self.pool.max_idle {
                idle.push(Idle { tx, since: now });
                self.pool.gauges.idle.inc();
            }
        }
    }
}

impl Drop for EndpointPool {
    /// The idle connections close with the pool: their count leaves the gauge with them.
    fn drop(&mut self) {
        let idle = lock(&self.idle).len() + usize::from(lock(&self.h2).is_some());
        self.gauges.idle.dec_by(idle as i64);
    }
}

impl Drop for Lease {
    /// A lease dropped without [`Lease::release`] closes its HTTP/1.1 connection: the response
    /// was not read to its end, so the connection cannot carry another request.
    fn drop(&mut self) {
        if self.sender.take().is_some() {
            self.pool.gauges.active.dec();
        }
    }
}

/// A permit of `permits`, waiting at most `wait` (503 pool exhausted after that).
async fn slot(
    permits: &Arc<Semaphore>,
    wait: Duration,
) -> Result<OwnedSemaphorePermit, ProxyError> {
    if let Ok(p) = permits.clone().try_acquire_owned() {
        return Ok(p);
    }
    tokio::time::timeout(wait, permits.clone().acquire_owned())
        .await
        .map_err(|_| ProxyError::PoolExhausted)?
        .map_err(|_| ProxyError::PoolExhausted)
}

/// A new HTTP/1.1 connection to `addr`, its I/O running on this worker.
async fn open_h1(
    addr: &Dial<'_>,
    connect_timeout: Duration,
    (max_headers, max_head_bytes): (usize, usize),
) -> Result<http1::SendRequest<ReqBody>, ProxyError> {
    let stream = dial(addr, connect_timeout).await?;
    let mut b = http1::Builder::new();
    b.max_buf_size((1 << 20).max(max_head_bytes))
        .max_header_size(max_head_bytes);
    // hyper parses up to 100 fields on the stack; another count costs a heap buffer per response.
    if max_headers != 100 {
        b.max_headers(max_headers);
    }
    let (tx, conn) = b
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ProxyError::ConnectFailed)?;
    spawn_connection(conn);
    Ok(tx)
}

/// Runs an upstream connection's I/O on this worker until it closes.
fn spawn_connection<F>(conn: F)
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
}

/// Where to connect: a resolved socket address, or a `host:port` to resolve per connect.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// Already an IP address.
    Addr(SocketAddr),
    /// A name to resolve.
    Name(&'a str),
}
