//! The durable store: one JetStream stream (work-queue retention) for every queued route, one
//! durable pull consumer per route shared by every instance. A job is acknowledged after its
//! delivery, negatively acknowledged with the backoff after a failed one, and terminated after
//! its last attempt; an instance that dies mid-delivery lets it be redelivered after `ack_wait`.
//! A job sent twice with the same Idempotency-Key within the stream's duplicate window is
//! stored once (`Nats-Msg-Id`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::deliver::{Outcome, deliver};
use super::{Job, JobsSpec, QueueSpec, RouteQueue};
use crate::Gateway;

/// A route's share of the stream.
#[derive(Debug)]
pub(super) struct JetStreamQueue {
    spec: JobsSpec,
    subject: String,
    js: ArcSwapOption<jetstream::Context>,
}

impl JetStreamQueue {
    pub(super) fn start(
        route: &str,
        spec: &QueueSpec,
        jobs: JobsSpec,
        queue: Weak<RouteQueue>,
        gateway: Weak<Gateway>,
    ) -> Arc<JetStreamQueue> {
        let me = Arc::new(JetStreamQueue {
            subject: format!("{}{route}", jobs.subject_prefix),
            spec: jobs,
            js: ArcSwapOption::empty(),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(consume(
                    Arc::downgrade(&me),
                    route.to_string(),
                    spec.clone(),
                    queue,
                    gateway,
                ));
            }
            Err(_) => tracing::warn!(route, "no runtime: the job queue stays off"),
        }
        me
    }

    pub(super) fn spec(&self) -> &JobsSpec {
        &self.spec
    }

    /// Stores a job; Ok once JetStream has acknowledged it.
    pub(super) async fn put(&self, job: Job) -> Result<(), &'static str> {
        let js = self
            .js
            .load_full()
            .ok_or("the job store is not connected; retry later")?;
        let payload = job.encode().ok_or("cannot encode the job")?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", job.id.as_str());
        let stored = async {
            js.publish_with_headers(self.subject.clone(), headers, payload)
                .await
                .ok()?
                .await
                .ok()
        };
        match tokio::time::timeout(Duration::from_secs(5), stored).await {
            Ok(Some(_)) => Ok(()),
            _ => Err("the job store did not take the job; retry later"),
        }
    }
}

/// Connects, makes sure the stream and the route's consumer exist, then delivers jobs with at
/// most `max_in_flight` at once, reconnecting after errors.
async fn consume(
    me: Weak<JetStreamQueue>,
    route: String,
    spec: QueueSpec,
    queue: Weak<RouteQueue>,
    gateway: Weak<Gateway>,
) {
    let slots = Arc::new(Semaphore::new(spec.max_in_flight.max(1)));
    loop {
        let Some(this) = me.upgrade() else { return };
        let setup = async {
            let client = async_nats::connect(this.spec.url.as_str()).await.ok()?;
            let js = jetstream::new(client);
            let stream = js
                .get_or_create_stream(stream::Config {
                    name: this.spec.stream.clone(),
                    subjects: vec![format!("{}>", this.spec.subject_prefix)],
                    retention: stream::RetentionPolicy::WorkQueue,
                    ..Default::default()
                })
                .await
                .ok()?;
            let name = format!("sg-{route}");
            let consumer: consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &name,
                    consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: this.subject.clone(),
                        ack_policy: consumer::AckPolicy::Explicit,
                        // Long enough for a delivery under the route's own timeouts.
                        ack_wait: Duration::from_secs(60),
                        max_deliver: i64::from(spec.attempts),
                        ..Default::default()
                    },
                )
                .await
                .ok()?;
            Some((js, consumer))
        };
        let Ok(Some((js, consumer))) = tokio::time::timeout(Duration::from_secs(5), setup).await
        else {
            drop(this);
            tracing::warn!(route, "job queue: cannot reach JetStream; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        this.js.store(Some(Arc::new(js)));
        drop(this);
        tracing::info!(route, "job queue consuming from JetStream");
        let Ok(mut messages) = consumer
            .stream()
            .max_messages_per_batch(spec.max_in_flight.max(1))
            .messages()
            .await
        else {
            continue;
        };
        while let Some(next) = messages.next().await {
            let Ok(msg) = next else { break };
            if me.strong_count() == 0 {
                // A reload replaced this route's queue: hand the job to the new consumer loop.
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                return;
            }
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (route, queue, gateway) = (route.clone(), queue.clone(), gateway.clone());
            tokio::spawn(async move {
                handle(msg, &route, &queue, &gateway).await;
                drop(permit);
            });
        }
        tracing::warn!(
            route,
            "job queue: JetStream subscription ended; reconnecting"
        );
    }
}

async fn handle(
    msg: jetstream::Message,
    route: &str,
    queue: &Weak<RouteQueue>,
    gateway: &Weak<Gateway>,
) {
    let attempt = msg
        .info()
        .map_or(1, |i| u32::try_from(i.delivered).unwrap_or(1));
    let Some(job) = Job::decode(&msg.payload) else {
        tracing::warn!(route, "job queue: a message that is not a job; dropped");
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    let outcome = deliver(gateway, route, &job, attempt).await;
    let Some(q) = queue.upgrade() else {
        // The route's queue was replaced: leave the job for redelivery.
        let _ = msg.ack_with(AckKind::Nak(None)).await;
        return;
    };
    let ack = match outcome {
        Outcome::Delivered => {
            q.delivered.fetch_add(1, Ordering::Relaxed);
            AckKind::Ack
        }
        Outcome::Failed(status) if attempt < q.spec.attempts => {
            q.retried.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(route, job = %job.id, attempt, ?status, "delivery failed; will retry");
            AckKind::Nak(Some(q.backoff(attempt)))
        }
        Outcome::Failed(status) => {
            q.dead.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(route, job = %job.id, attempt, ?status, "job given up after its last delivery attempt");
            AckKind::Term
        }
        Outcome::Gone => {
            q.dead.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(route, job = %job.id, "job dropped: its route is gone");
            AckKind::Term
        }
    };
    if let Err(e) = msg.ack_with(ack).await {
        tracing::warn!(route, job = %job.id, error = %e, "job queue: acknowledgement failed");
    }
}
