//! Queued routes (load leveling): a request to a route with `queue` is stored and answered
//! `202 Accepted` at once; workers deliver stored requests to the route's upstream at most
//! `max_in_flight` at a time per instance, retrying failures with exponential backoff up to
//! `attempts`. A spike becomes a backlog the upstream drains at its own pace instead of a wave
//! of timeouts.
//!
//! Jobs live in this process's memory by default (bounded by `max_queued`; a full queue
//! answers 503, and a restart loses what was queued). With `[queue] nats`, they live in a NATS
//! JetStream stream instead: durable across restarts, shared by every instance (each job is
//! delivered by one of them), with redelivery when an instance dies mid-delivery.
//!
//! A job given up after `attempts` is kept as a dead letter (`dead`): listed, sent again or
//! discarded through the admin API.
//!
//! Delivery goes through the normal request path (`proxy::origin`): balancing, health,
//! breakers, bulkheads and the route's own retries apply. The upstream sees the original
//! method, path, headers and body, plus `X-Scalegate-Job-Id` and `X-Scalegate-Attempt` (1 on the
//! first delivery) so it can deduplicate.

pub mod dead;
mod deliver;
mod jetstream;
pub mod job;
mod memory;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use scalegate_http::error::ProxyError;

pub use dead::DeadJob;
pub use job::Job;
use scalegate_http::body::RespBody;
use scalegate_http::plug::{BoxFut, Dispatch, RouteHandler, Served};
use scalegate_http::proxy::{Completion, ConnCtx};

/// A route's `queue` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// Deliveries in flight per instance (default 4).
    pub max_in_flight: usize,
    /// Jobs held in memory before new ones get 503 (default 10,000; memory store only).
    pub max_queued: usize,
    /// Deliveries tried per job, the first included (default 5).
    pub attempts: u32,
    /// Wait before the first redelivery, doubled each time (default 1 s).
    pub backoff: Duration,
    /// Longest wait between deliveries (default 60 s).
    pub max_backoff: Duration,
    /// Largest request body queued (default 1 MiB); larger gets 413.
    pub max_body_bytes: usize,
}

/// The durable store for every queued route: a JetStream stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobsSpec {
    /// `nats://host:port`.
    pub url: String,
    /// Stream name (default "SCALEGATE_JOBS").
    pub stream: String,
    /// Subject prefix; a route's jobs go to `{prefix}{route}` (default "scalegate.jobs.").
    pub subject_prefix: String,
}

pub use scalegate_http::body::StoredBody;

/// One route's queue: where its jobs are stored and how many went which way.
#[derive(Debug)]
pub struct RouteQueue {
    /// Its settings; a reload that changes only what can change in place swaps them
    /// ([`RouteQueue::adopt`]), keeping the store, its consumer and the jobs in hand.
    spec: arc_swap::ArcSwap<QueueSpec>,
    store: Store,
    /// How many jobs went which way since start: shared by every queue the route has had
    /// (a reload that starts a new queue hands them on, and the old one goes on counting
    /// the jobs it still delivers).
    pub counters: Arc<QueueCounters>,
    /// Jobs this instance holds and has not settled: being delivered, waiting for the upstream,
    /// or (memory) waiting out a backoff off the channel.
    in_hand: AtomicU64,
    /// Jobs waiting because the upstream cannot be reached now (the route is paused).
    paused: AtomicU64,
    /// Running, stopping (drain: take no more jobs, hand back those waiting), or abandoning
    /// (the drain ran out: hand back everything still held).
    phase: tokio::sync::watch::Sender<Phase>,
}

/// What a route's queues hand from one to the next when a reload replaces one: the counters,
/// and the memory store's dead letters (a job the old queue gives up is listed with the new).
#[derive(Debug, Default)]
pub struct Carried {
    counters: Arc<QueueCounters>,
    dead: Arc<dead::MemoryDead>,
}

/// A route's job counts since start.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Jobs accepted.
    pub queued: AtomicU64,
    /// Jobs delivered (the upstream answered other than 5xx, 408 or 429).
    pub delivered: AtomicU64,
    /// Deliveries that failed and will be tried again.
    pub retried: AtomicU64,
    /// Jobs given up after `attempts` (or whose route disappeared).
    pub dead: AtomicU64,
    /// Jobs JetStream stored after their client was told 503, not delivered.
    pub stored_late: AtomicU64,
}

/// Where an instance's delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Taking and delivering jobs.
    Running,
    /// Draining: no new jobs; the durable store gets waiting jobs back at once.
    Stopping,
    /// The drain is over: the durable store gets every job still held back.
    Abandoning,
}

/// Counts one job in hand while it lives (so a cancelled delivery still gives its count back).
struct Held(Arc<RouteQueue>);

impl Held {
    fn new(queue: &std::sync::Weak<RouteQueue>) -> Option<Held> {
        let q = queue.upgrade()?;
        q.in_hand.fetch_add(1, Ordering::Relaxed);
        Some(Held(q))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.in_hand.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one job waiting for the upstream while it lives.
struct Paused(Arc<RouteQueue>);

impl Drop for Paused {
    fn drop(&mut self) {
        if self.0.paused.fetch_sub(1, Ordering::Relaxed) == 1 {
            tracing::info!("queued route: the upstream is reachable again; delivery resumed");
        }
    }
}

#[derive(Debug)]
enum Store {
    Memory(memory::MemoryQueue),
    JetStream(Arc<jetstream::JetStreamQueue>),
}

impl RouteHandler for RouteQueue {
    /// Stores the request (202), answered by the queue itself: the request is complete.
    fn serve<'a>(
        &'a self,
        d: Dispatch<'a>,
        parts: http::request::Parts,
        body: Incoming,
        mut done: Completion,
    ) -> BoxFut<'a, Served> {
        // Boxed: the store's future stays out of every other request's future.
        Box::pin(async move {
            let resp = self.enqueue(d.ctx, parts, body).await;
            done.set_status(resp.status().as_u16());
            done.count_bytes(resp.body().whole_len());
            done.finish(true);
            Ok(resp)
        })
    }

    fn takes_upgrades(&self) -> bool {
        true
    }
}

impl RouteQueue {
    /// Starts the route's queue and its delivery workers. `gateway` is how workers reach the
    /// current snapshot; they find the route by name for every job, so reloads apply.
    pub fn start(
        spawner: &scalegate_shared::Spawner,
        route: &str,
        (spec, carried): (QueueSpec, Carried),
        jobs: Option<&JobsSpec>,
        gateway: std::sync::Weak<scalegate_http::Gateway>,
    ) -> Arc<RouteQueue> {
        let phase = tokio::sync::watch::channel(Phase::Running).0;
        let watching = phase.subscribe();
        Arc::new_cyclic(|me| {
            let store = match jobs {
                None => Store::Memory(memory::MemoryQueue::start(
                    spawner,
                    route,
                    (&spec, carried.dead.clone()),
                    me.clone(),
                    gateway,
                )),
                Some(j) => Store::JetStream(jetstream::JetStreamQueue::start(
                    spawner,
                    route,
                    &spec,
                    j.clone(),
                    (me.clone(), watching),
                    gateway,
                )),
            };
            RouteQueue {
                spec: arc_swap::ArcSwap::from_pointee(spec),
                store,
                counters: carried.counters,
                in_hand: AtomicU64::new(0),
                paused: AtomicU64::new(0),
                phase,
            }
        })
    }

    /// What a queue that replaces it takes over.
    pub fn carried(&self) -> Carried {
        Carried {
            counters: self.counters.clone(),
            dead: match &self.store {
                Store::Memory(m) => m.dead.clone(),
                Store::JetStream(_) => Arc::default(),
            },
        }
    }

    /// The settings it runs with.
    pub fn spec(&self) -> Arc<QueueSpec> {
        self.spec.load_full()
    }

    /// Takes a reload's settings in place when the store's running parts allow it: the
    /// deliveries in flight (the durable store's pull size, the memory store's workers) and
    /// the memory store's capacity stay as they are. Attempts, backoff and the body limit
    /// apply to the next job. Returns whether it did; if not, the reload starts a new queue.
    /// Kept in place, a durable queue's consumer goes on: a replaced one would hand back the
    /// jobs its last pull brings, and each hand-back spends one of the job's attempts.
    pub fn adopt(&self, new: &QueueSpec) -> bool {
        let now = self.spec.load();
        let fixed = now.max_in_flight == new.max_in_flight
            && (matches!(self.store, Store::JetStream(_)) || now.max_queued == new.max_queued);
        if fixed && **now != *new {
            self.spec.store(Arc::new(new.clone()));
        }
        fixed
    }

    /// Which store it uses, for reuse across reloads.
    pub fn durable(&self) -> Option<&JobsSpec> {
        match &self.store {
            Store::Memory(_) => None,
            Store::JetStream(j) => Some(j.spec()),
        }
    }

    /// Stores a request as a job and answers 202, or refuses it (413 too large, 503 full or
    /// store unavailable).
    pub async fn enqueue(
        &self,
        ctx: &ConnCtx,
        parts: http::request::Parts,
        body: Incoming,
    ) -> Response<RespBody> {
        let limit = self.spec.load().max_body_bytes;
        let body = match Limited::new(body, limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body over the queue's max_body_bytes",
                );
            }
            Err(_) => return reply(StatusCode::BAD_REQUEST, "request body ended early"),
        };
        let job = Job::new(&parts, ctx.peer, body);
        let id = job.id.clone();
        let stored = match &self.store {
            Store::Memory(m) => m.put(job),
            Store::JetStream(j) => j.put(job).await,
        };
        match stored {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                let mut r = reply_json(
                    StatusCode::ACCEPTED,
                    format!("{{\"job_id\":\"{id}\",\"queued\":true}}\n"),
                );
                if let Ok(v) = HeaderValue::try_from(id) {
                    r.headers_mut().insert("x-scalegate-job-id", v);
                }
                r
            }
            // 503 with Retry-After, as the outcome table writes every "come back later".
            Err(why) => ProxyError::Unavailable(why).to_response(),
        }
    }

    /// Jobs waiting in memory (None for the durable store).
    pub fn depth(&self) -> Option<usize> {
        match &self.store {
            Store::Memory(m) => Some(m.depth()),
            Store::JetStream(_) => None,
        }
    }

    /// Memory jobs waiting on the channel (never sent yet).
    pub fn waiting_in_memory(&self) -> u64 {
        match &self.store {
            Store::Memory(m) => m.depth() as u64,
            Store::JetStream(_) => 0,
        }
    }

    /// Memory jobs being delivered or waiting out a retry's backoff.
    pub fn held_in_memory(&self) -> u64 {
        match &self.store {
            Store::Memory(_) => self.in_hand.load(Ordering::Relaxed),
            Store::JetStream(_) => 0,
        }
    }

    /// Jobs held and not yet settled (delivered, handed back or given up), in either store,
    /// plus those waiting in memory.
    pub fn unsettled(&self) -> u64 {
        let waiting = match &self.store {
            Store::Memory(m) => m.depth() as u64,
            Store::JetStream(_) => 0,
        };
        waiting + self.in_hand.load(Ordering::Relaxed)
    }

    /// Jobs being delivered or waiting for the upstream on this instance now.
    pub fn in_hand(&self) -> u64 {
        self.in_hand.load(Ordering::Relaxed)
    }

    /// Jobs waiting because the upstream cannot be reached now (0: not paused).
    pub fn paused(&self) -> u64 {
        self.paused.load(Ordering::Relaxed)
    }

    /// The drain begins: take no new jobs from the durable store and hand back at once the
    /// ones waiting for the upstream (memory jobs go on being delivered until the drain ends).
    pub fn stop(&self) {
        self.phase.send_if_modified(|p| {
            let was = *p;
            *p = was.max(Phase::Stopping);
            *p != was
        });
    }

    /// The drain is over: hand every job still held back to the durable store.
    pub fn abandon(&self) {
        self.phase.send_replace(Phase::Abandoning);
    }

    /// Marks one job as waiting for the upstream until the guard drops.
    fn pause(self: Arc<Self>, route: &str, why: &str) -> Paused {
        if self.paused.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                route,
                why,
                "queued route paused: jobs wait, without spending attempts, until the upstream can be reached"
            );
        }
        Paused(self)
    }

    /// Counts and keeps a job given up.
    async fn bury(&self, dead: DeadJob) {
        self.counters.dead.fetch_add(1, Ordering::Relaxed);
        match &self.store {
            Store::Memory(m) => m.dead.keep(dead),
            Store::JetStream(j) => {
                if let Err(why) = j.bury(&dead).await {
                    tracing::error!(job = %dead.job.id, why, "dead letter not kept");
                }
            }
        }
    }

    /// The oldest `limit` dead letters (at most 1,000 from the durable store per call).
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadJob>, &'static str> {
        match &self.store {
            Store::Memory(m) => Ok(m.dead.list(limit)),
            Store::JetStream(j) => Ok(j
                .dead_letters(limit.min(jetstream::DEAD_BATCH))
                .await?
                .into_iter()
                .map(|(_, d)| d)
                .collect()),
        }
    }

    /// Sends dead letters back to the queue as new jobs (same ids, first attempt), as many as
    /// the queue takes (up to 1,000 per call from the durable store). Returns how many.
    pub async fn retry_dead(&self) -> Result<usize, &'static str> {
        match &self.store {
            Store::Memory(m) => Ok(m.retry_dead()),
            Store::JetStream(j) => j.retry_dead().await,
        }
    }

    /// Drops every dead letter; returns how many.
    pub async fn discard_dead(&self) -> Result<u64, &'static str> {
        match &self.store {
            Store::Memory(m) => Ok(m.dead.take_all().len() as u64),
            Store::JetStream(j) => j.discard_dead().await,
        }
    }

    /// Dead letters kept in memory (None for the durable store, which may hold more).
    pub fn dead_kept(&self) -> Option<usize> {
        match &self.store {
            Store::Memory(m) => Some(m.dead.len()),
            Store::JetStream(_) => None,
        }
    }

    /// Wait before delivery number `attempt + 1` (attempt ≥ 1).
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        let spec = self.spec.load();
        spec.backoff.saturating_mul(factor).min(spec.max_backoff)
    }
}

fn reply(status: StatusCode, message: &str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(Bytes::from(format!(
        "{}: {message}\n",
        status.as_u16()
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn reply_json(status: StatusCode, body: String) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
