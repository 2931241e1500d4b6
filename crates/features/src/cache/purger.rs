//! A purge everywhere, confirmed or reported, never silently lost.
//!
//! Steps, in order: this instance's memory; Redis (the URL index makes it cost what it
//! matches); memory again (a miss in between may have refilled from Redis); the Redis channel
//! (only once Redis is purged, so an instance that purges on the message cannot refill from a
//! stale Redis copy); NATS. Redis calls here ignore the link's hold-off and have a budget of
//! their own ([`BACKGROUND`]): a hiccup on the request path never skips a purge. A step that
//! fails is reported (the admin API answers 503 with it) and retried in the background until
//! it succeeds or [`GIVE_UP_AFTER`] passes.
//!
//! [`BACKGROUND`]: super::l2::BACKGROUND

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::purge::Purge;
use super::store::Store;

/// How long a failed purge is retried (longer than what it could purge is kept, in practice).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Most purges waiting for a retry; beyond, a failed purge is reported as not retried.
const MOST_PENDING: usize = 10_000;
/// Waits between retries.
const RETRY_EVERY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// What one purge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Objects purged in this instance's memory.
    pub purged: usize,
    /// URL keys deleted from Redis (None: no Redis tier, or it failed).
    pub redis_keys: Option<usize>,
    /// Redis subscribers (instances) the purge message reached.
    pub subscribers: Option<usize>,
    /// Whether it was published on NATS (None: no NATS bus).
    pub nats: Option<bool>,
    /// The steps that failed, and why.
    pub failed: Vec<String>,
    /// Whether the failed steps are being retried.
    pub retrying: bool,
}

impl Report {
    /// Adds another purge's report (one admin request that named several URLs).
    pub fn merge(&mut self, other: Report) {
        let sum = |a: Option<usize>, b: Option<usize>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.purged += other.purged;
        self.redis_keys = sum(self.redis_keys, other.redis_keys);
        self.subscribers = self.subscribers.min(other.subscribers);
        self.nats = self.nats.zip(other.nats).map(|(a, b)| a && b);
        self.failed.extend(other.failed);
        self.retrying |= other.retrying;
    }
}

/// The steps of a purge still to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Steps {
    redis: bool,
    publish: bool,
    nats: bool,
}

impl Steps {
    fn done(self) -> bool {
        !(self.redis || self.publish || self.nats)
    }
}

/// A purge waiting for a retry: the steps left, and when to give up.
type Waiting = (Purge, Steps, Instant);

/// Purges waiting for a retry, and whether the retry task runs.
#[derive(Debug, Default)]
pub struct Retries {
    pending: Mutex<(VecDeque<Waiting>, bool)>,
}

/// Purges everywhere: memory, Redis, every other instance through the buses. The work runs
/// in a task of its own: a caller that goes away (an admin client hanging up) does not stop a
/// purge halfway, and its failed steps are still queued for a retry.
pub async fn purge(store: &Arc<Store>, p: &Purge) -> Report {
    let (store, p) = (store.clone(), p.clone());
    match tokio::spawn(async move { purge_now(&store, &p).await }).await {
        Ok(report) => report,
        Err(e) => Report {
            failed: vec![format!("the purge task failed: {e}")],
            ..Report::default()
        },
    }
}

async fn purge_now(store: &Arc<Store>, p: &Purge) -> Report {
    let mut report = Report {
        purged: store.purge_local(p),
        ..Report::default()
    };
    let steps = Steps {
        redis: store.l2.is_some(),
        publish: store.l2.is_some(),
        nats: store.nats.is_some(),
    };
    let left = run(store, p, steps, &mut report).await;
    if !left.done() {
        report.retrying = retry(store, p, left);
        if !report.retrying {
            report
                .failed
                .push("too many purges wait for a retry: this one is not retried".into());
        }
    }
    report
}

/// A purge that arrived on a bus: memory, Redis (an application may publish directly, and a
/// fill of this instance may have reached Redis just before), memory again; memory only for an
/// invalidation whose sender purged Redis. Nothing is published. Returns the objects purged in
/// memory.
pub async fn from_bus(store: &Arc<Store>, p: &Purge) -> usize {
    let n = store.purge_local(p);
    if p.memory_only {
        // The sender purged Redis before it sent this.
        return n;
    }
    let steps = Steps {
        redis: store.l2.is_some(),
        publish: false,
        nats: false,
    };
    let left = run(store, p, steps, &mut Report::default()).await;
    if !left.done() && !retry(store, p, left) {
        tracing::warn!(purge = ?p, "a purge from the bus could not be applied to redis nor queued");
    }
    n
}

/// [`invalidate`] of one URL key (`host/path?query`, or `/path?query`).
pub fn invalidate_url(store: &Arc<Store>, url: String) {
    let p = Purge {
        target: super::purge::Target::Url(url),
        ..Default::default()
    };
    invalidate(store, p);
}

/// An invalidation by an unsafe method (RFC 9111 §4.4): this instance's memory at once, then
/// Redis (retried like a purge), then the other instances' memory through the buses. That last
/// step is a plain message, best effort: unlike an admin purge it is neither kept in the stream
/// nor replayed (an API taking writes would flood the stream and push admin purges out of it),
/// and the instances that get it touch only their memory. It is sent only once Redis no longer
/// holds the old copy, so none of them can refill from it; if Redis could not be purged yet,
/// the others keep their copy until it expires.
pub fn invalidate(store: &Arc<Store>, p: Purge) {
    store.purge_local(&p);
    if store.l2.is_none() && store.nats.is_none() {
        return;
    }
    let store = store.clone();
    tokio::spawn(async move {
        let steps = Steps {
            redis: store.l2.is_some(),
            publish: false,
            nats: false,
        };
        let left = run(&store, &p, steps, &mut Report::default()).await;
        if !left.done() {
            retry(&store, &p, left);
            return;
        }
        notify(&store, &p).await;
    });
}

/// Tells the instances listening now to drop `p` from their memory.
async fn notify(store: &Store, p: &Purge) {
    let p = Purge {
        memory_only: true,
        ..p.clone()
    };
    if let Some(l2) = &store.l2
        && let Err(e) = l2.notify(&p).await
    {
        tracing::debug!(purge = ?p, error = %e, "invalidation not sent on the redis channel");
    }
    if let Some(nats) = &store.nats
        && let Err(e) = nats.publish(&p).await
    {
        tracing::debug!(purge = ?p, error = %e, "invalidation not sent on nats");
    }
}

/// Does the steps it can; returns those that failed.
async fn run(store: &Store, p: &Purge, mut steps: Steps, report: &mut Report) -> Steps {
    if let Some(l2) = &store.l2 {
        if steps.redis {
            match l2.purge(p).await {
                Ok(n) => {
                    report.redis_keys = Some(n);
                    steps.redis = false;
                    store.purge_local(p);
                }
                Err(e) => report.failed.push(format!("redis: {e}")),
            }
        }
        if steps.publish && !steps.redis {
            match l2.publish(p).await {
                Ok(n) => {
                    report.subscribers = Some(n);
                    steps.publish = false;
                }
                Err(e) => report.failed.push(format!("redis channel: {e}")),
            }
        }
    }
    if let Some(nats) = &store.nats
        && steps.nats
    {
        match nats.publish(p).await {
            Ok(()) => {
                report.nats = Some(true);
                steps.nats = false;
            }
            Err(e) => {
                report.nats = Some(false);
                report.failed.push(format!("nats: {e}"));
            }
        }
    }
    steps
}

/// Queues the steps left for a retry (starting the retry task if needed); false when full.
fn retry(store: &Arc<Store>, p: &Purge, steps: Steps) -> bool {
    let mut pending = store
        .retries
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if pending.0.len() >= MOST_PENDING {
        return false;
    }
    pending
        .0
        .push_back((p.clone(), steps, Instant::now() + GIVE_UP_AFTER));
    if !pending.1 {
        pending.1 = true;
        tokio::spawn(retry_loop(Arc::downgrade(store)));
    }
    true
}

/// Retries the queued purges, in order, until none is left.
async fn retry_loop(store: Weak<Store>) {
    let mut wait = RETRY_EVERY.0;
    loop {
        tokio::time::sleep(wait).await;
        let Some(s) = store.upgrade() else { return };
        let batch: Vec<_> = {
            let mut pending = s.retries.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.0.drain(..).collect()
        };
        let mut left = VecDeque::new();
        for (p, steps, deadline) in batch {
            let still = run(&s, &p, steps, &mut Report::default()).await;
            if still.done() {
                tracing::info!(purge = ?p, "a purge that had failed has now gone through (memory, Redis and the buses)");
            } else if Instant::now() < deadline {
                left.push_back((p, still, deadline));
            } else {
                tracing::error!(purge = ?p, "gave up retrying a purge");
            }
        }
        let mut pending = s.retries.pending.lock().unwrap_or_else(|e| e.into_inner());
        let failed = !left.is_empty();
        // Purges queued meanwhile go after the ones retried.
        left.append(&mut pending.0);
        pending.0 = left;
        if pending.0.is_empty() {
            pending.1 = false;
            return;
        }
        wait = if failed {
            (wait * 2).min(RETRY_EVERY.1)
        } else {
            RETRY_EVERY.0
        };
    }
}

/// Hands the purges `old` still had to retry to `new` (a reload that replaced the store):
/// their failed steps are retried against the new store's Redis and buses.
pub fn take_over(new: &Arc<Store>, old: &Store) {
    let waiting: Vec<Waiting> = {
        let mut pending = old
            .retries
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.0.drain(..).collect()
    };
    for (p, steps, _) in waiting {
        if !retry(new, &p, steps) {
            tracing::error!(purge = ?p, "a purge waiting for a retry was dropped: the queue is full");
        }
    }
}

impl Drop for Retries {
    fn drop(&mut self) {
        let left = self.pending.get_mut().map_or(0, |p| p.0.len());
        if left > 0 {
            tracing::error!(
                purges = left,
                "cache purges that had failed were never applied everywhere and are abandoned \
                 (shutdown): stale copies may remain in Redis or on other instances"
            );
        }
    }
}

impl Retries {
    /// Purges waiting for a retry.
    pub fn pending(&self) -> usize {
        self.pending.lock().map_or(0, |p| p.0.len())
    }
}
