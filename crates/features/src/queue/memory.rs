//! The in-memory store: a bounded channel per route and `max_in_flight` delivery tasks. Failed
//! deliveries wait out their backoff off the channel, then go back on it. Jobs given up are kept
//! as dead letters (`MemoryDead`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::{Mutex, mpsc};

use super::dead::{DeadJob, MemoryDead, Reason};
use super::deliver::{Outcome, until_reached};
use super::{Held, Job, Phase, QueueSpec, RouteQueue};
use scalegate_http::Gateway;

/// A job and the number of deliveries it has had.
type Entry = (Job, u32);

/// The route's channel.
#[derive(Debug)]
pub(super) struct MemoryQueue {
    tx: mpsc::Sender<Entry>,
    /// Jobs given up (shared with the queues that replace this one).
    pub(super) dead: Arc<MemoryDead>,
}

impl MemoryQueue {
    pub(super) fn start(
        spawner: &scalegate_shared::Spawner,
        route: &str,
        (spec, dead): (&QueueSpec, Arc<MemoryDead>),
        queue: Weak<RouteQueue>,
        gateway: Weak<Gateway>,
    ) -> MemoryQueue {
        let (tx, rx) = mpsc::channel(spec.max_queued.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..spec.max_in_flight.max(1) {
            spawner.spawn(worker(
                route.to_string(),
                rx.clone(),
                tx.downgrade(),
                queue.clone(),
                gateway.clone(),
            ));
        }
        MemoryQueue { tx, dead }
    }

    /// Queues a job; Err when the queue is full.
    pub(super) fn put(&self, job: Job) -> Result<(), &'static str> {
        self.tx
            .try_send((job, 0))
            .map_err(|_| "the route's queue is full; retry later")
    }

    /// Puts dead letters back on the queue as new jobs (first attempt), as many as fit; the
    /// rest stay dead. Returns how many went back.
    pub(super) fn retry_dead(&self) -> usize {
        let mut dead = self.dead.take_all().into_iter();
        let mut sent = 0;
        for d in dead.by_ref() {
            match self.tx.try_send((d.job, 0)) {
                Ok(()) => sent += 1,
                Err(e) => {
                    let (job, _) = e.into_inner();
                    let mut rest = vec![DeadJob { job, ..d }];
                    rest.extend(dead);
                    self.dead.put_back(rest);
                    break;
                }
            }
        }
        sent
    }

    /// Jobs waiting.
    pub(super) fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

async fn worker(
    route: String,
    rx: Arc<Mutex<mpsc::Receiver<Entry>>>,
    tx: mpsc::WeakSender<Entry>,
    queue: Weak<RouteQueue>,
    gateway: Weak<Gateway>,
) {
    let Some(mut phase) = queue.upgrade().map(|q| q.phase.subscribe()) else {
        return;
    };
    loop {
        // One worker waits on the channel at a time; the others wait for the lock.
        let next = rx.lock().await.recv().await;
        let Some((job, tried)) = next else { return };
        if *phase.borrow() == Phase::Abandoning {
            // The drain is over: nothing new starts (the job is among those logged as lost).
            return;
        }
        let attempt = tried + 1;
        let Some(held) = Held::new(&queue) else {
            return;
        };
        // Memory jobs are delivered until the drain ends; a delivery still running then is
        // cut off, so the process exits on time (it is logged as lost: the upstream may or may
        // not have it).
        let delivery = until_reached(&gateway, &queue, &route, &job, attempt, None);
        let outcome = tokio::select! {
            o = delivery => o.unwrap_or(Outcome::Gone),
            _ = phase.wait_for(|p| *p == Phase::Abandoning) => return,
        };
        let Some(q) = queue.upgrade() else { return };
        match outcome {
            Outcome::Delivered => {
                q.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(why) if attempt < q.spec.load().attempts => {
                q.counters.retried.fetch_add(1, Ordering::Relaxed);
                let wait = q.backoff(attempt);
                tracing::debug!(route, job = %job.id, attempt, ?why, ?wait, "delivery failed; will retry");
                let (tx, mut phase) = (tx.clone(), phase.clone());
                tokio::spawn(async move {
                    // Still in hand until it is back on the channel (or the drain is over).
                    let _held = held;
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = phase.wait_for(|p| *p == Phase::Abandoning) => return,
                    }
                    if let Some(tx) = tx.upgrade() {
                        let _ = tx.send((job, attempt)).await;
                    }
                });
            }
            Outcome::Failed(why) => {
                tracing::warn!(route, job = %job.id, attempt, ?why, "job given up after its last delivery attempt");
                let last = Some((why.status(), why.describe()));
                q.bury(DeadJob::now(job, attempt, last, Reason::AttemptsExhausted))
                    .await;
            }
            Outcome::Gone | Outcome::Unreached(_) => {
                tracing::warn!(route, job = %job.id, "job given up: its route is gone");
                q.bury(DeadJob::now(job, tried, None, Reason::RouteGone))
                    .await;
            }
        }
    }
}
