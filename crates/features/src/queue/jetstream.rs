//! The durable store: one JetStream stream (work-queue retention) for every queued route, one
//! durable pull consumer per route shared by every instance. A job is acknowledged after its
//! delivery, negatively acknowledged with the backoff after a failed one, and terminated after
//! its last attempt. While a job is in hand (being delivered, or waiting for an unreachable
//! upstream) progress acknowledgements keep JetStream from handing it to anyone else; a drain
//! hands jobs back at once (negative acknowledgement); an instance that dies holding jobs lets
//! them be redelivered after `ack_wait` (15 s). The attempt number is JetStream's delivery
//! count, so it only grows. A pull that fails, or brings nothing while the route's consumer no
//! longer answers, sets the stream and the consumer up again (one deleted by an operator, a
//! NATS server restarted without its storage): pulling on would leave every job taken undelivered.
//! A job sent twice with the same Idempotency-Key within the stream's duplicate window is
//! stored once (`Nats-Msg-Id`).
//!
//! Dead letters go to a second stream, `{stream}_DEAD` on subjects `{prefix}_dead.{route}` (the
//! prefix without its trailing dot): the job as it was, with why and when it was given up in
//! the message's headers; the newest 10,000 per route, for 14 days.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::dead::{DeadJob, Reason};
use super::deliver::{Outcome, until_reached};
use super::{Held, Job, JobsSpec, Phase, QueueSpec, RouteQueue};
use scalegate_http::Gateway;

/// A route's share of the stream.
#[derive(Debug)]
pub(super) struct JetStreamQueue {
    spec: JobsSpec,
    subject: String,
    dead_subject: String,
    js: ArcSwapOption<jetstream::Context>,
}

/// Dead letters kept per route in the durable store.
const DEAD_MAX_PER_ROUTE: i64 = 10_000;
/// How long the durable store keeps a dead letter.
const DEAD_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);
/// The most dead letters one admin call reads or sends again.
pub(super) const DEAD_BATCH: usize = 1_000;

fn dead_stream(spec: &JobsSpec) -> String {
    format!("{}_DEAD", spec.stream)
}

fn dead_prefix(spec: &JobsSpec) -> String {
    format!("{}_dead.", spec.subject_prefix.trim_end_matches('.'))
}

impl JetStreamQueue {
    pub(super) fn start(
        spawner: &scalegate_shared::Spawner,
        route: &str,
        spec: &QueueSpec,
        jobs: JobsSpec,
        (queue, phase): (Weak<RouteQueue>, tokio::sync::watch::Receiver<Phase>),
        gateway: Weak<Gateway>,
    ) -> Arc<JetStreamQueue> {
        let me = Arc::new(JetStreamQueue {
            subject: format!("{}{route}", jobs.subject_prefix),
            dead_subject: format!("{}{route}", dead_prefix(&jobs)),
            spec: jobs,
            js: ArcSwapOption::empty(),
        });
        spawner.spawn(consume(
            Arc::downgrade(&me),
            route.to_string(),
            spec.clone(),
            (queue, phase),
            gateway,
        ));
        me
    }

    pub(super) fn spec(&self) -> &JobsSpec {
        &self.spec
    }

    fn context(&self) -> Result<Arc<jetstream::Context>, &'static str> {
        self.js
            .load_full()
            .ok_or("the job store is not connected; retry later")
    }

    /// Stores a job; Ok once JetStream has acknowledged it. Never published while NATS is
    /// disconnected: the client library would buffer it and send it on reconnect, after its
    /// client was told 503. A job stored too late anyway (NATS paused past the wait for its
    /// acknowledgement) carries the time by which it had to be stored, and is dropped when it
    /// comes out of the stream ([`stored_too_late`]).
    pub(super) async fn put(&self, job: Job) -> Result<(), &'static str> {
        let js = self.context()?;
        if js.client().connection_state() != async_nats::connection::State::Connected {
            return Err("the job store is not connected; retry later");
        }
        let payload = job.encode().ok_or("cannot encode the job")?;
        let mut headers = async_nats::HeaderMap::new();
        // The route is part of the id: the same Idempotency-Key on two routes is two jobs.
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{}", self.subject, job.id).as_str(),
        );
        // A job with an Idempotency-Key is stored once whatever happens: its client's resend
        // after a 503 is that stored copy, which must then be delivered. Others are dropped
        // if stored too late.
        if !job.id.starts_with("ik-") {
            let by = unix_ms(std::time::SystemTime::now() + STORE_WAIT);
            headers.insert(STORE_BY, by.to_string().as_str());
        }
        // The wait for the acknowledgement ends just before a late copy would be dropped
        // (Store-By plus the leeway): a job acknowledged in time was stored in time, so a 202
        // is always delivered. A job stored in the last moment before that, whose
        // acknowledgement comes after the wait, is answered 503 and delivered: a duplicate at
        // worst (delivery is at least once), never a loss.
        let mut js = (*js).clone();
        let wait = (STORE_WAIT + leeway()).saturating_sub(ACK_GUARD);
        js.set_timeout(wait);
        publish(&js, self.subject.clone(), headers, payload, wait)
            .await
            .map_err(|_| "the job store did not take the job; retry later")
    }

    /// Keeps a dead letter in the dead stream.
    pub(super) async fn bury(&self, dead: &DeadJob) -> Result<(), &'static str> {
        let js = self.context()?;
        let payload = dead.job.encode().ok_or("cannot encode the job")?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Scalegate-Attempts", dead.attempts.to_string().as_str());
        if let Some(s) = dead.last_status {
            headers.insert("Scalegate-Last-Status", s.to_string().as_str());
        }
        if let Some(e) = &dead.last_error {
            headers.insert("Scalegate-Last-Error", e.as_str());
        }
        headers.insert("Scalegate-Reason", dead.reason.as_str());
        headers.insert(
            "Scalegate-Given-Up-At",
            dead.given_up_at.to_string().as_str(),
        );
        publish(&js, self.dead_subject.clone(), headers, payload, STORE_WAIT).await
    }

    /// The route's oldest dead letters (at most `limit`), with their stream sequences.
    pub(super) async fn dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<(u64, DeadJob)>, &'static str> {
        let js = self.context()?;
        let read = async {
            let stream = js.get_stream(dead_stream(&self.spec)).await.ok()?;
            let consumer: consumer::PullConsumer = stream
                .create_consumer(consumer::pull::Config {
                    filter_subject: self.dead_subject.clone(),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::None,
                    inactive_threshold: Duration::from_secs(10),
                    ..Default::default()
                })
                .await
                .ok()?;
            let mut out = Vec::new();
            if limit > 0 {
                let mut batch = consumer.fetch().max_messages(limit).messages().await.ok()?;
                while let Some(Ok(msg)) = batch.next().await {
                    let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
                        continue;
                    };
                    if let Some(dead) = dead_job(&msg) {
                        out.push((seq, dead));
                    }
                }
            }
            let _ = stream.delete_consumer(&consumer.cached_info().name).await;
            Some(out)
        };
        match tokio::time::timeout(Duration::from_secs(5), read).await {
            Ok(Some(out)) => Ok(out),
            _ => Err("the job store did not answer; retry later"),
        }
    }

    /// Sends up to `DEAD_BATCH` dead letters back to the route's queue as new jobs (same job
    /// ids, first attempt), removing each from the dead stream once the queue has it.
    pub(super) async fn retry_dead(&self) -> Result<usize, &'static str> {
        let js = self.context()?;
        let stream = js
            .get_stream(dead_stream(&self.spec))
            .await
            .map_err(|_| "the job store did not answer; retry later")?;
        let mut sent = 0;
        for (seq, dead) in self.dead_letters(DEAD_BATCH).await? {
            let Some(payload) = dead.job.encode() else {
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            // A new message id: the old one may still be in the duplicate window.
            headers.insert(
                "Nats-Msg-Id",
                format!("{}-retry-{seq}", dead.job.id).as_str(),
            );
            if publish(&js, self.subject.clone(), headers, payload, STORE_WAIT)
                .await
                .is_err()
            {
                break;
            }
            let _ = stream.delete_message(seq).await;
            sent += 1;
        }
        Ok(sent)
    }

    /// Drops every dead letter of the route; returns how many.
    pub(super) async fn discard_dead(&self) -> Result<u64, &'static str> {
        let js = self.context()?;
        let purge = async {
            let stream = js.get_stream(dead_stream(&self.spec)).await.ok()?;
            stream.purge().filter(self.dead_subject.clone()).await.ok()
        };
        match tokio::time::timeout(Duration::from_secs(5), purge).await {
            Ok(Some(r)) => Ok(r.purged),
            _ => Err("the job store did not answer; retry later"),
        }
    }
}

/// How long a publish waits for JetStream's acknowledgement.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// Header of a job: the time (Unix ms) by which JetStream had to store it for its client to
/// be told 202.
const STORE_BY: &str = "Scalegate-Store-By";

/// Leeway for the clocks of the gateway that took a job and the NATS server that stored it.
const CLOCK_LEEWAY_MS: u64 = 2_000;

/// How much earlier than the last moment a job may be stored (its Store-By plus the leeway) a
/// publish stops waiting for its acknowledgement: a job acknowledged is then never one that is
/// dropped as stored too late.
const ACK_GUARD: Duration = Duration::from_millis(100);

/// The leeway now: [`CLOCK_LEEWAY_MS`], widened by a NATS clock seen to run ahead.
fn leeway() -> Duration {
    Duration::from_millis(CLOCK_LEEWAY_MS.saturating_add(NATS_AHEAD_MS.load(Ordering::Relaxed)))
}

/// Milliseconds since the Unix epoch.
fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How far ahead of this host's clock the NATS server's has been seen to be (ms): a job stored
/// "later" than this host's now shows it.
static NATS_AHEAD_MS: AtomicU64 = AtomicU64::new(0);

/// Whether JetStream stored a job after the gateway that took it had given up waiting (its
/// client was told 503, and may have sent it again): such a job is not delivered. A NATS clock
/// seen to run ahead of this host's widens the leeway by as much (a gateway whose clock runs
/// behind would otherwise drop every job it took).
fn stored_too_late(msg: &jetstream::Message) -> bool {
    let by = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(STORE_BY))
        .and_then(|v| v.as_str().parse::<u64>().ok());
    let stored = msg
        .info()
        .ok()
        .map(|i| u64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0));
    let (Some(by), Some(stored)) = (by, stored) else {
        return false;
    };
    let now = unix_ms(std::time::SystemTime::now());
    if stored > now {
        let ahead = stored - now;
        let before = NATS_AHEAD_MS.fetch_max(ahead, Ordering::Relaxed);
        if ahead > 1_000 && before <= 1_000 {
            tracing::warn!(
                ahead_ms = ahead,
                "job queue: the NATS server's clock runs ahead of this host's; synchronise them"
            );
        }
    }
    let leeway = u64::try_from(leeway().as_millis()).unwrap_or(u64::MAX);
    stored > by.saturating_add(leeway)
}

/// Publishes and waits (up to `wait`) for JetStream to acknowledge.
async fn publish(
    js: &jetstream::Context,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
    wait: Duration,
) -> Result<(), &'static str> {
    let stored = async {
        js.publish_with_headers(subject, headers, payload)
            .await
            .ok()?
            .await
            .ok()
    };
    match tokio::time::timeout(wait, stored).await {
        Ok(Some(_)) => Ok(()),
        _ => Err("the job store did not acknowledge"),
    }
}

/// A dead letter read back from the dead stream.
fn dead_job(msg: &jetstream::Message) -> Option<DeadJob> {
    let job = Job::decode(&msg.payload)?;
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    Some(DeadJob {
        job,
        attempts: header("Scalegate-Attempts").and_then(|v| v.parse().ok())?,
        last_status: header("Scalegate-Last-Status").and_then(|v| v.parse().ok()),
        last_error: header("Scalegate-Last-Error"),
        reason: Reason::parse(&header("Scalegate-Reason").unwrap_or_default()),
        given_up_at: header("Scalegate-Given-Up-At")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

/// How long JetStream waits for an acknowledgement before it gives a job to another puller;
/// a job in hand is kept alive with progress acknowledgements every [`PROGRESS_EVERY`], so this
/// only matters when an instance dies holding jobs (they are redelivered after it).
const ACK_WAIT: Duration = Duration::from_secs(15);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long one pull waits for jobs before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Connects, makes sure the stream and the route's consumer exist, then pulls jobs — never more
/// than free delivery slots, so none waits in a buffer with its acknowledgement timer running —
/// and delivers each in a task of its own, reconnecting after errors, until the drain.
async fn consume(
    me: Weak<JetStreamQueue>,
    route: String,
    spec: QueueSpec,
    (queue, mut phase): (Weak<RouteQueue>, tokio::sync::watch::Receiver<Phase>),
    gateway: Weak<Gateway>,
) {
    let slots = Arc::new(Semaphore::new(spec.max_in_flight.max(1)));
    let in_hand = Arc::new(InHand::default());
    loop {
        let Some(this) = me.upgrade() else { return };
        let set_up = tokio::time::timeout(Duration::from_secs(5), setup(&this, &route)).await;
        let (js, mut consumer) = match set_up {
            Ok(Ok(ready)) => ready,
            failed => {
                drop(this);
                let why = match failed {
                    Ok(Err(why)) => why,
                    _ => "no answer within 5 s".to_string(),
                };
                tracing::warn!(route, why, "job queue: JetStream not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        this.js.store(Some(Arc::new(js)));
        drop(this);
        tracing::info!(route, "job queue consuming from JetStream");
        loop {
            // Wait for a free slot (or the drain), then take as many as are free.
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => p,
                () = stopping(&mut phase) => return,
            };
            let Ok(first) = first else { return };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            let batch = consumer
                .batch()
                .max_messages(permits.len())
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let Ok(mut batch) = batch else { break };
            let (mut got, mut failed) = (0, false);
            while let Some(next) = batch.next().await {
                let Ok(msg) = next else {
                    failed = true;
                    break;
                };
                got += 1;
                if me.strong_count() == 0 || *phase.borrow() != Phase::Running {
                    // A reload replaced this route's queue, or the drain began: hand it back.
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    continue;
                }
                let Some(permit) = permits.pop() else {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    continue;
                };
                let (route, queue, gateway) = (route.clone(), queue.clone(), gateway.clone());
                let (phase, in_hand) = (phase.clone(), in_hand.clone());
                tokio::spawn(async move {
                    handle(msg, &route, &queue, &gateway, phase, &in_hand).await;
                    drop(permit);
                });
            }
            // A pull that failed, or brought nothing, may be one to a consumer or a stream
            // that is gone (deleted by an operator, or a NATS server restarted without its
            // storage): JetStream answers those pulls with nothing or a bare status, and pulling
            // on would leave every job taken with a 202 undelivered. Set up again then.
            if failed || (got == 0 && !exists(&mut consumer).await) {
                break;
            }
        }
        tracing::warn!(route, "job queue: JetStream pull failed; reconnecting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the route's consumer (and so its stream) still exists; a NATS server that does not
/// answer within 5 s counts as not.
async fn exists(consumer: &mut consumer::PullConsumer) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), consumer.info()).await,
        Ok(Ok(_))
    )
}

/// `what` failed because of `e`.
fn failed(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The stream, the dead-letter stream and the route's durable consumer.
async fn setup(
    this: &JetStreamQueue,
    route: &str,
) -> Result<(jetstream::Context, consumer::PullConsumer), String> {
    let client = async_nats::connect(this.spec.url.as_str())
        .await
        .map_err(|e| failed("cannot connect to NATS", e))?;
    let js = jetstream::new(client);
    let subjects = format!("{}>", this.spec.subject_prefix);
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: this.spec.stream.clone(),
            subjects: vec![subjects.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .map_err(|e| failed("cannot create or open the stream", e))?;
    // A stream made earlier with another prefix takes none of this config's subjects: say so
    // (queue.nats.stream or .prefix must change, or the stream be deleted) rather than fail
    // at the consumer as if JetStream were unreachable.
    let info = stream
        .info()
        .await
        .map_err(|e| failed("cannot read the stream", e))?;
    if !info.config.subjects.contains(&subjects) {
        return Err(format!(
            "stream {:?} exists with subjects {:?}, not {subjects:?} (queue.nats.prefix): use another queue.nats.stream, the prefix it was made with, or delete the stream",
            this.spec.stream, info.config.subjects
        ));
    }
    js.get_or_create_stream(stream::Config {
        name: dead_stream(&this.spec),
        subjects: vec![format!("{}>", dead_prefix(&this.spec))],
        max_messages_per_subject: DEAD_MAX_PER_ROUTE,
        max_age: DEAD_MAX_AGE,
        ..Default::default()
    })
    .await
    .map_err(|e| failed("cannot create or open the dead-letter stream", e))?;
    // Created, or updated to this config when it exists. The gateway counts attempts and gives
    // jobs up itself, so JetStream redelivers without limit (a limit there would leave a job
    // stored but never delivered again, silently).
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(format!("sg-{route}")),
            filter_subject: this.subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .map_err(|e| failed("cannot create the route's consumer", e))?;
    Ok((js, consumer))
}

/// Job ids being delivered by this instance: JetStream may hand out a job again while it is
/// in hand (after a server restart lost its acknowledgement state, say); that copy is left
/// alone, and the first one's acknowledgement settles it.
#[derive(Debug, Default)]
struct InHand(std::sync::Mutex<std::collections::HashSet<String>>);

/// A job id in hand until dropped.
struct Claim<'a>(&'a InHand, String);

impl InHand {
    fn claim(&self, id: &str) -> Option<Claim<'_>> {
        let mut ids = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.insert(id.to_string())
            .then(|| Claim(self, id.to_string()))
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut ids = (self.0)
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.remove(&self.1);
    }
}

async fn handle(
    msg: jetstream::Message,
    route: &str,
    queue: &Weak<RouteQueue>,
    gateway: &Weak<Gateway>,
    mut phase: tokio::sync::watch::Receiver<Phase>,
    in_hand: &InHand,
) {
    // JetStream's delivery count: it only grows, so attempt numbers do too.
    let attempt = msg
        .info()
        .map_or(1, |i| u32::try_from(i.delivered).unwrap_or(u32::MAX));
    let Some(job) = Job::decode(&msg.payload) else {
        tracing::warn!(route, "job queue: a message that is not a job; dropped");
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    if stored_too_late(&msg) {
        tracing::warn!(route, job = %job.id, "job queue: a job stored after its client was told 503 (NATS answered too late); not delivered");
        if let Some(q) = queue.upgrade() {
            q.counters.stored_late.fetch_add(1, Ordering::Relaxed);
        }
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    }
    let Some(_claim) = in_hand.claim(&job.id) else {
        tracing::warn!(route, job = %job.id, attempt, "job queue: JetStream handed out a job already in hand here; left to the first copy");
        return;
    };
    let Some(_held) = Held::new(queue) else {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
        return;
    };
    let outcome = {
        let mut abandon = phase.clone();
        let work = until_reached(gateway, queue, route, &job, attempt, Some(&mut phase));
        tokio::pin!(work);
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.reset();
        loop {
            tokio::select! {
                o = &mut work => break o,
                _ = progress.tick() => {
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
                () = abandoned(&mut abandon) => break None,
            }
        }
    };
    let Some(outcome) = outcome else {
        // The drain: hand it back for another instance to deliver at once.
        if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
            tracing::warn!(route, job = %job.id, error = %e, "job queue: could not hand a job back");
        }
        return;
    };
    let Some(q) = queue.upgrade() else {
        // The route's queue was replaced: leave the job for redelivery.
        let _ = msg.ack_with(AckKind::Nak(None)).await;
        return;
    };
    let ack = match outcome {
        Outcome::Delivered => {
            q.counters.delivered.fetch_add(1, Ordering::Relaxed);
            AckKind::Ack
        }
        Outcome::Failed(why) if attempt < q.spec.load().attempts => {
            q.counters.retried.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(route, job = %job.id, attempt, ?why, "delivery failed; will retry");
            AckKind::Nak(Some(q.backoff(attempt)))
        }
        Outcome::Failed(why) => {
            tracing::warn!(route, job = %job.id, attempt, ?why, "job given up after its last delivery attempt");
            let last = Some((why.status(), why.describe()));
            q.bury(DeadJob::now(
                job.clone(),
                attempt,
                last,
                Reason::AttemptsExhausted,
            ))
            .await;
            AckKind::Term
        }
        Outcome::Gone | Outcome::Unreached(_) => {
            tracing::warn!(route, job = %job.id, "job given up: its route is gone");
            q.bury(DeadJob::now(
                job.clone(),
                attempt.saturating_sub(1),
                None,
                Reason::RouteGone,
            ))
            .await;
            AckKind::Term
        }
    };
    if let Err(e) = msg.ack_with(ack).await {
        tracing::warn!(route, job = %job.id, error = %e, "job queue: acknowledgement failed");
    }
}

/// Resolves once the drain is over (or the queue is gone).
async fn abandoned(phase: &mut tokio::sync::watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Abandoning).await;
}

/// Resolves once the drain begins (or the queue is gone).
async fn stopping(phase: &mut tokio::sync::watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p != Phase::Running).await;
}
