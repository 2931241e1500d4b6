//! Bulkheads: a cap on requests in flight to one upstream, with a bounded wait queue served in
//! priority order, so a slow upstream holds at most its own share of connections, memory and
//! time. Over the cap and with the queue full, the lowest-priority waiter is shed to make room
//! for a higher one; otherwise the newcomer is refused at once (503 + Retry-After, before any
//! upstream work). With `adaptive`, the cap follows core's AIMD controller on response latency.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use scalegate_core::admission::{Aimd, Priority};
use tokio::sync::oneshot;

/// A bulkhead's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BulkheadSpec {
    /// Most requests in flight (the adaptive limit's ceiling).
    pub max_in_flight: usize,
    /// Most requests waiting for a slot.
    pub max_queue: usize,
    /// Longest wait for a slot.
    pub queue_timeout: Duration,
    /// Adaptive limit: (floor, latency tolerance) — None for a fixed cap.
    pub adaptive: Option<(usize, f64)>,
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// Queue full and nobody of lower priority to displace.
    QueueFull,
    /// Waited the whole queue timeout.
    QueueTimeout,
    /// Displaced from the queue by a higher-priority request.
    Displaced,
}

impl Shed {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueTimeout => "queue_timeout",
            Shed::Displaced => "displaced",
        }
    }
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<()>,
}

struct State {
    spec: BulkheadSpec,
    in_flight: usize,
    limit: usize,
    queues: [VecDeque<Waiter>; 3],
    aimd: Option<Aimd>,
}

/// One upstream's (or route's) bulkhead. A reload that changes its settings changes them in
/// place ([`Bulkhead::reconfigure`]): the requests in flight still count against the new cap.
pub struct Bulkhead {
    state: Mutex<State>,
    ids: AtomicU64,
}

impl std::fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulkhead")
            .field("spec", &self.spec())
            .finish_non_exhaustive()
    }
}

/// An admitted request's slot; released (waking the next waiter) when dropped.
pub struct Permit {
    bulkhead: Arc<Bulkhead>,
    started: tokio::time::Instant,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

impl Bulkhead {
    /// A bulkhead with these settings.
    pub fn new(spec: BulkheadSpec) -> Arc<Bulkhead> {
        Arc::new(Bulkhead {
            state: Mutex::new(State {
                in_flight: 0,
                limit: spec.max_in_flight.max(1),
                queues: Default::default(),
                aimd: aimd(&spec),
                spec,
            }),
            ids: AtomicU64::new(0),
        })
    }

    /// Takes new settings (a reload), keeping the requests in flight and waiting: a lowered
    /// cap admits nobody until enough of those in flight have finished (a fresh bulkhead let
    /// the upstream take the old and the new cap's worth at once, just when an operator
    /// lowered it against an overload), a shorter queue sheds its newest lowest-priority
    /// waiters, a raised cap admits waiters at once.
    pub fn reconfigure(&self, spec: BulkheadSpec) {
        let mut s = self.lock();
        if s.spec == spec {
            return;
        }
        if s.spec.max_in_flight != spec.max_in_flight || s.spec.adaptive != spec.adaptive {
            s.limit = spec.max_in_flight.max(1);
            s.aimd = aimd(&spec);
        }
        let mut queued: usize = s.queues.iter().map(VecDeque::len).sum();
        while queued > spec.max_queue {
            let Some(p) = (0..3).rev().find(|&p| !s.queues[p].is_empty()) else {
                break;
            };
            drop(s.queues[p].pop_back());
            queued -= 1;
        }
        s.spec = spec;
        grant(&mut s);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The settings in force.
    pub fn spec(&self) -> BulkheadSpec {
        self.lock().spec.clone()
    }

    /// Whether every place is taken (a request would wait or be shed).
    pub fn is_full(&self) -> bool {
        let s = self.lock();
        s.in_flight >= s.limit
    }

    /// (in flight, current limit, waiting) for the admin view and metrics.
    pub fn snapshot(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (
            s.in_flight,
            s.limit,
            s.queues.iter().map(VecDeque::len).sum(),
        )
    }

    /// Admits a request of priority `prio`, waiting in the queue if need be.
    pub async fn acquire(self: &Arc<Self>, prio: Priority) -> Result<Permit, Shed> {
        let id = self.ids.fetch_add(1, Relaxed);
        let (rx, queue_timeout) = {
            let mut s = self.lock();
            let queued: usize = s.queues.iter().map(VecDeque::len).sum();
            if s.in_flight < s.limit && queued == 0 {
                s.in_flight += 1;
                return Ok(self.permit());
            }
            if queued >= s.spec.max_queue {
                // Displace the newest waiter of the lowest priority below ours, if any.
                let victim = (prio as usize + 1..3)
                    .rev()
                    .find(|&p| !s.queues[p].is_empty());
                match victim {
                    Some(p) => drop(s.queues[p].pop_back()),
                    None => return Err(Shed::QueueFull),
                }
            }
            let (tx, rx) = oneshot::channel();
            s.queues[prio as usize].push_back(Waiter { id, tx });
            (rx, s.spec.queue_timeout)
        };
        // From here the wait may be abandoned at any await (the client went away): the ticket
        // takes the waiter out of the queue, or gives back a slot granted too late, on drop.
        let mut ticket = Ticket {
            bulkhead: self,
            prio,
            id,
            rx,
            settled: false,
        };
        let granted = tokio::time::timeout(queue_timeout, &mut ticket.rx).await;
        ticket.settled = true;
        match granted {
            Ok(Ok(())) => Ok(self.permit()),
            Ok(Err(_)) => Err(Shed::Displaced),
            Err(_) => {
                if ticket.leave_queue() {
                    return Err(Shed::QueueTimeout);
                }
                // Granted (or displaced) just as the wait ended.
                match ticket.rx.try_recv() {
                    Ok(()) => Ok(self.permit()),
                    Err(_) => Err(Shed::QueueTimeout),
                }
            }
        }
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit {
            bulkhead: self.clone(),
            started: tokio::time::Instant::now(),
        }
    }

    /// Frees a slot (feeding the adaptive limit the request's latency, when it ran) and grants
    /// it to the next waiter.
    fn release(&self, latency: Option<(Duration, tokio::time::Instant)>) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if let Some((latency, now)) = latency
            && let Some(a) = s.aimd.as_mut()
        {
            s.limit = a.on_sample(latency, crate::clock::tick_at(now)).max(1);
        }
        grant(&mut s);
    }
}

/// The adaptive controller `spec` asks for.
fn aimd(spec: &BulkheadSpec) -> Option<Aimd> {
    spec.adaptive
        .map(|(min, tol)| Aimd::new(min, spec.max_in_flight, tol))
}

/// Grants free slots to waiters, highest priority first.
fn grant(s: &mut State) {
    while s.in_flight < s.limit {
        let Some(next) = s.queues.iter_mut().find_map(VecDeque::pop_front) else {
            break;
        };
        if next.tx.send(()).is_ok() {
            s.in_flight += 1;
        }
    }
}

/// A request waiting in a bulkhead's queue. Dropped before it settled (the request was
/// abandoned mid-wait), it leaves the queue, or returns the slot if one was granted meanwhile.
struct Ticket<'a> {
    bulkhead: &'a Arc<Bulkhead>,
    prio: Priority,
    id: u64,
    rx: oneshot::Receiver<()>,
    settled: bool,
}

impl Ticket<'_> {
    /// Takes the waiter out of its queue; false when it was no longer there (granted or
    /// displaced).
    fn leave_queue(&self) -> bool {
        let mut s = self.bulkhead.lock();
        let q = &mut s.queues[self.prio as usize];
        match q.iter().position(|w| w.id == self.id) {
            Some(pos) => {
                q.remove(pos);
                true
            }
            None => false,
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.settled || self.leave_queue() {
            return;
        }
        if self.rx.try_recv().is_ok() {
            self.bulkhead.release(None);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = tokio::time::Instant::now();
        self.bulkhead.release(Some((now - self.started, now)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max: usize, queue: usize) -> BulkheadSpec {
        BulkheadSpec {
            max_in_flight: max,
            max_queue: queue,
            queue_timeout: Duration::from_secs(5),
            adaptive: None,
        }
    }

    #[tokio::test]
    async fn an_abandoned_wait_leaves_the_queue_and_a_late_grant_is_given_back() {
        let b = Bulkhead::new(spec(1, 1));
        let first = b.acquire(Priority::Normal).await.expect("free slot");
        // Abandoned while queued (a client hang-up drops the request's future).
        let waiting = tokio::time::timeout(Duration::from_millis(20), b.acquire(Priority::Normal));
        assert!(waiting.await.is_err(), "still queued when abandoned");
        assert_eq!(
            b.snapshot(),
            (1, 1, 0),
            "the abandoned waiter left the queue"
        );
        // Granted, then abandoned before it was polled again: the slot comes back.
        let mut late = Box::pin(b.acquire(Priority::Normal));
        assert!(futures_util::poll!(late.as_mut()).is_pending());
        drop(first);
        assert_eq!(b.snapshot(), (1, 1, 0), "granted to the waiter");
        drop(late);
        assert_eq!(b.snapshot(), (0, 1, 0), "the late grant was given back");
        let again = b.acquire(Priority::Normal).await.expect("free again");
        drop(again);
    }

    /// A probe's finding: a reload that lowered `max_in_flight` built a fresh bulkhead at zero,
    /// so the upstream took the old cap's requests and the new cap's at once (3 to 5 in flight
    /// against a new cap of 1).
    #[tokio::test]
    async fn a_lowered_cap_counts_the_requests_already_in_flight() {
        let b = Bulkhead::new(spec(2, 4));
        let first = b.acquire(Priority::Normal).await.expect("free slot");
        let second = b.acquire(Priority::Normal).await.expect("free slot");
        b.reconfigure(spec(1, 4));
        let mut third = Box::pin(b.acquire(Priority::Normal));
        assert!(futures_util::poll!(third.as_mut()).is_pending());
        assert_eq!(b.snapshot(), (2, 1, 1), "two in flight, one waiting");
        drop(first);
        assert_eq!(b.snapshot(), (1, 1, 1), "still at the new cap");
        drop(second);
        assert_eq!(b.snapshot(), (1, 1, 0), "granted once under it");
        let third = third.await.expect("granted");
        // A raised cap admits at once; a shorter queue sheds its newest waiter.
        b.reconfigure(spec(3, 0));
        let more = b
            .acquire(Priority::Normal)
            .await
            .expect("under the raised cap");
        assert_eq!(b.snapshot(), (2, 3, 0));
        drop((third, more));
        assert_eq!(b.snapshot(), (0, 3, 0));
    }

    #[tokio::test]
    async fn waiters_are_served_in_priority_order() {
        let b = Bulkhead::new(spec(1, 10));
        let first = b.acquire(Priority::Normal).await.expect("free slot");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for p in [Priority::Low, Priority::Normal, Priority::Critical] {
            let (b, order) = (b.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = b.acquire(p).await;
                if let Ok(mut o) = order.lock() {
                    o.push(p);
                }
                drop(permit);
            }));
            tokio::task::yield_now().await;
        }
        drop(first);
        for t in tasks {
            let _ = t.await;
        }
        let order = order.lock().map(|o| o.clone()).unwrap_or_default();
        assert_eq!(order, [Priority::Critical, Priority::Normal, Priority::Low]);
    }

    #[tokio::test]
    async fn a_full_queue_sheds_low_priority_first() {
        let b = Bulkhead::new(spec(1, 1));
        let _busy = b.acquire(Priority::Normal).await.expect("slot");
        let low = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(Priority::Low).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(
            b.acquire(Priority::Low).await.map(|_| ()),
            Err(Shed::QueueFull),
            "no one lower to displace"
        );
        let critical = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(Priority::Critical).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(low.await.ok(), Some(Err(Shed::Displaced)));
        drop(_busy);
        assert_eq!(critical.await.ok(), Some(Ok(())));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_at_the_queue_timeout() {
        let b = Bulkhead::new(BulkheadSpec {
            queue_timeout: Duration::from_millis(100),
            ..spec(1, 5)
        });
        let _busy = b.acquire(Priority::Normal).await.expect("slot");
        assert_eq!(
            b.acquire(Priority::Critical).await.map(|_| ()),
            Err(Shed::QueueTimeout)
        );
        assert_eq!(
            b.snapshot(),
            (1, 1, 0),
            "the timed-out waiter left the queue"
        );
    }
}
