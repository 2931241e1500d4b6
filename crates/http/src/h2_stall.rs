//! HTTP/2 streams a client holds open with flow control. A client that advertises a window of 0
//! (or stops opening it) takes no more of a response, yet its connection stays healthy: it
//! answers our PINGs, so neither the idle timeout nor the write-stall watch (`stall.rs`) sees
//! anything. Each such stream held its request's bulkhead place and upstream connection for as
//! long as the client liked: slowloris, one stream at a time, up to the connection's stream
//! limit.
//!
//! hyper asks a response body for its next frame only once the stream has window for it. So a
//! body that has handed hyper a frame and is not asked for the next within the listener's
//! `idle_timeout` belongs to a stream the client has stopped: the connection's sweep
//! ([`Streams::sweep`]) then drops the body, which gives back everything the request held; when
//! hyper asks again it gets an error and resets the stream. A body waiting for its upstream is
//! being asked (it answered "pending"), so a quiet upstream is never mistaken for a stalled
//! client: upstream silences are the route's read timeout's business.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, RespBody};
use crate::clock;

/// The client did not take a response's next frame within the listener's idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client took nothing of the response for {0:?} (flow control)")]
pub struct Stalled(pub Duration);

/// The most handed to hyper at once (HTTP/2's default frame size). hyper asks for the next
/// frame once the stream has window for more than it holds, so the time between two asks is
/// the time the client takes to open this much window: a slow but steady reader (a mobile
/// client downloading a large file) is not taken for a stopped one, however large the chunks
/// the upstream sends.
const PIECE: usize = 16 * 1024;

/// One watched response body.
#[derive(Debug)]
pub struct Watch {
    /// The body, until it ends or a sweep drops it.
    body: Mutex<Option<RespBody>>,
    /// The rest of a data frame larger than [`PIECE`], handed over piece by piece.
    rest: Mutex<Bytes>,
    /// When the body last handed hyper a frame it has not asked past yet (a clock tick; 0
    /// while hyper is asking or the body is done).
    handed: AtomicU64,
    /// How long the stall lasted when a sweep dropped the body (0: not dropped).
    stalled: AtomicU64,
}

impl Watch {
    /// The next frame of the body, or [`Stalled`] once a sweep has dropped it.
    pub fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.handed.store(0, Relaxed);
        let stalled = Duration::from_nanos(self.stalled.load(Relaxed));
        if !stalled.is_zero() {
            return Poll::Ready(Some(Err(Stalled(stalled).into())));
        }
        let mut rest = self.rest.lock().unwrap_or_else(|e| e.into_inner());
        if !rest.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(self.piece(&mut rest)))));
        }
        let mut body = self.body.lock().unwrap_or_else(|e| e.into_inner());
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                *body = None;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                *body = None;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let more = !inner.is_end_stream();
        let frame = match frame.into_data() {
            Ok(mut data) if data.len() > PIECE => {
                let piece = data.split_to(PIECE);
                *rest = data;
                self.handed.store(clock::now().0, Relaxed);
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            Ok(data) => Frame::data(data),
            Err(other) => other,
        };
        if more {
            self.handed.store(clock::now().0, Relaxed);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    /// The next piece of `rest`; the hand-over is timed unless it was the last of the body.
    fn piece(&self, rest: &mut Bytes) -> Bytes {
        let piece = rest.split_to(rest.len().min(PIECE));
        let body_left = self
            .body
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|b| !b.is_end_stream());
        if !rest.is_empty() || body_left {
            self.handed.store(clock::now().0, Relaxed);
        }
        piece
    }

    /// Whether the body is over.
    pub fn is_end_stream(&self) -> bool {
        if !self
            .rest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            return false;
        }
        match self.body.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(b) => b.is_end_stream(),
            // Dropped by a sweep: not an end; the next poll says why.
            None => self.stalled.load(Relaxed) == 0,
        }
    }

    /// What is known of the body's length.
    pub fn size_hint(&self) -> SizeHint {
        self.body
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

/// The watched bodies of one HTTP/2 connection.
#[derive(Debug, Default)]
pub struct Streams {
    list: Mutex<Vec<Weak<Watch>>>,
}

impl Streams {
    /// `body`, watched when it can hold anything (a body the gateway made whole holds nothing
    /// and goes in one frame).
    pub fn watch(&self, body: RespBody) -> RespBody {
        if matches!(body, RespBody::Full(_)) {
            return body;
        }
        let watch = Arc::new(Watch {
            body: Mutex::new(Some(body)),
            rest: Mutex::new(Bytes::new()),
            // Handed to hyper: it asks for the first frame once the stream has window.
            handed: AtomicU64::new(clock::now().0),
            stalled: AtomicU64::new(0),
        });
        if let Ok(mut list) = self.list.lock() {
            list.push(Arc::downgrade(&watch));
        }
        RespBody::Watched(watch)
    }

    /// Drops the bodies whose stream took nothing for `limit`; forgets the ended ones. Returns
    /// how many were dropped.
    pub fn sweep(&self, limit: Duration) -> usize {
        let now = clock::now();
        let mut stalled = Vec::new();
        if let Ok(mut list) = self.list.lock() {
            list.retain(|w| {
                let Some(watch) = w.upgrade() else {
                    return false;
                };
                let handed = watch.handed.load(Relaxed);
                if handed != 0 && now.since(scalegate_core::Tick(handed)) >= limit {
                    stalled.push(watch);
                    return false;
                }
                true
            });
        }
        for watch in &stalled {
            // Marked first: a body found gone must never read as one that ended whole.
            watch.stalled.store(limit.as_nanos().max(1) as u64, Relaxed);
            watch.handed.store(0, Relaxed);
            // Dropped outside the list's lock: dropping a body runs its completion.
            let body = watch.body.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(body);
        }
        stalled.len()
    }
}

/// How long a stream may have taken nothing of its response before it gives back what it holds
/// to a request that finds its upstream's pool full (the listener's `idle_timeout` otherwise).
pub const UNDER_PRESSURE: Duration = Duration::from_secs(2);

/// The most often a full pool makes a worker look for stalled streams.
const RECLAIM_EVERY: Duration = Duration::from_millis(100);

/// How often a request waiting for a full pool looks again.
const RECLAIM_WHILE_WAITING: Duration = Duration::from_millis(500);

/// The watched streams of every HTTP/2 connection, by the worker serving it. One client
/// connection may open many streams: one that gives them no window held an upstream connection
/// with each until `idle_timeout` (a session-25 probe: 256 streams held a worker's whole share
/// of an upstream's pool for 60 s, and other clients got 503). A request that finds its pool
/// full now first has this worker's streams that have taken nothing for [`UNDER_PRESSURE`]
/// give back what they hold: a stalled reader keeps its streams only while nobody else needs
/// the connections they hold.
#[derive(Debug, Default)]
pub struct Registry {
    conns: Mutex<Vec<(usize, Weak<Streams>)>>,
    /// Forgetting closed connections when the list reaches this length.
    prune_at: std::sync::atomic::AtomicUsize,
    /// When the last reclaim ran (a clock tick).
    last: AtomicU64,
}

impl Registry {
    /// Watches `streams`, of a connection served by `worker`.
    pub fn register(&self, worker: usize, streams: &Arc<Streams>) {
        let Ok(mut conns) = self.conns.lock() else {
            return;
        };
        if conns.len() >= self.prune_at.load(Relaxed) {
            conns.retain(|(_, s)| s.strong_count() > 0);
            self.prune_at.store((conns.len() * 2).max(64), Relaxed);
        }
        conns.push((worker, Arc::downgrade(streams)));
    }

    /// Drops the bodies of `worker`'s streams (every worker's: None) that have taken nothing
    /// for [`UNDER_PRESSURE`] (at most every [`RECLAIM_EVERY`]); returns how many.
    pub fn reclaim(&self, worker: Option<usize>) -> usize {
        let now = clock::now();
        let last = self.last.load(Relaxed);
        if last != 0 && now.since(scalegate_core::Tick(last)) < RECLAIM_EVERY {
            return 0;
        }
        self.last.store(now.0.max(1), Relaxed);
        let mine: Vec<Arc<Streams>> = match self.conns.lock() {
            Ok(conns) => conns
                .iter()
                .filter(|(w, _)| worker.is_none_or(|mine| *w == mine))
                .filter_map(|(_, s)| s.upgrade())
                .collect(),
            Err(_) => return 0,
        };
        // Swept outside the list's lock: dropping a body runs its completion.
        let cut: usize = mine.iter().map(|s| s.sweep(UNDER_PRESSURE)).sum();
        if cut > 0 {
            tracing::info!(
                ?worker,
                streams = cut,
                "HTTP/2 streams whose client took nothing for 2s gave back their upstream connections to waiting requests"
            );
        }
        cut
    }
}

/// `wait` for a place (a pooled connection, a bulkhead's) that stalled streams may hold: the
/// streams of `worker` (every worker's: None) that have taken nothing for [`UNDER_PRESSURE`]
/// give way now, and those that pass it while this waits give way then (a regression hunt's
/// finding: a request that came 1.5 s into a stall got its 503 although the stall passed 2 s
/// during its wait).
pub async fn reclaiming<T>(
    streams: &Registry,
    worker: Option<usize>,
    wait: impl Future<Output = T>,
) -> T {
    let mut wait = std::pin::pin!(wait);
    loop {
        streams.reclaim(worker);
        if let Ok(done) = tokio::time::timeout(RECLAIM_WHILE_WAITING, &mut wait).await {
            return done;
        }
    }
}
