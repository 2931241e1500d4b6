//! One delivery of a job through the normal request path.

use std::sync::{Arc, Weak};

use http::StatusCode;
use http_body_util::BodyExt;

use super::{Job, StoredBody};
use scalegate_http::Gateway;
use scalegate_http::error::ProxyError;
use scalegate_http::proxy::{Admitted, Completion, ConnCtx, ListenerRules, origin};

/// What a delivery came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The upstream took it (any answer but 5xx, 408 or 429).
    Delivered,
    /// The upstream had it and failed (a status worth another try, or no answer): an attempt
    /// spent; try again after the backoff.
    Failed(Failure),
    /// The gateway could not send it — no endpoint in rotation (probes failing, breaker open),
    /// connection refused or timed out, shed, draining, the route disabled: no attempt spent;
    /// the job waits and is tried again shortly (a paused route).
    Unreached(&'static str),
    /// The route or the gateway is gone: nothing to deliver to.
    Gone,
}

/// How an attempt failed, for the dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// The upstream answered this.
    Status(StatusCode),
    /// No answer: why.
    Error(&'static str),
}

impl Failure {
    /// The status, if the upstream answered.
    pub(super) fn status(self) -> Option<u16> {
        match self {
            Failure::Status(s) => Some(s.as_u16()),
            Failure::Error(_) => None,
        }
    }

    /// What happened, in words.
    pub(super) fn describe(self) -> String {
        match self {
            Failure::Status(s) => format!("the upstream answered {}", s.as_u16()),
            Failure::Error(e) => e.to_string(),
        }
    }
}

/// Whether an outcome of the request path means the request never reached the upstream.
fn unreached(e: &ProxyError) -> Option<&'static str> {
    Some(match e {
        ProxyError::NoHealthyEndpoint => "no endpoint of the upstream is in rotation",
        ProxyError::PoolExhausted => "the upstream's connection pool is full",
        ProxyError::ConnectFailed => "cannot connect to the upstream",
        ProxyError::ConnectTimeout => "connecting to the upstream timed out",
        ProxyError::Draining => "the gateway is draining",
        ProxyError::RouteDisabled => "the route is disabled",
        ProxyError::Shed(_) | ProxyError::RateLimited { .. } => "the gateway shed the delivery",
        _ => return None,
    })
}

/// Sends delivery number `attempt` of `job` on the current snapshot's route `route`.
pub(super) async fn deliver(
    gateway: &Weak<Gateway>,
    route: &str,
    job: &Job,
    attempt: u32,
) -> Outcome {
    let Some(gw) = gateway.upgrade() else {
        return Outcome::Gone;
    };
    let snap = gw.snapshot();
    let Some(route) = snap.routes.iter().find(|r| r.spec.name == route).cloned() else {
        return Outcome::Gone;
    };
    let Some(mut parts) = job.head(attempt) else {
        return Outcome::Gone;
    };
    parts.extensions.insert(StoredBody(job.body.clone()));
    // The listener's trust rules, so a proxy chain it believed is kept on delivery.
    let edge = snap
        .listeners
        .iter()
        .find(|l| route.spec.listener.as_deref() == Some(l.spec.name.as_str()))
        .map(|l| l.spec.edge.clone())
        .unwrap_or_default();
    let ctx = Arc::new(ConnCtx {
        gateway: gw.clone(),
        rules: ListenerRules::live(route.spec.listener.as_deref().unwrap_or("queue"), edge),
        peer: job.peer(),
        local_port: 0,
        idle_timeout: std::time::Duration::from_secs(60),
        // A stored job's head was checked when it was queued.
        max_head: usize::MAX,
        body_timeout: std::time::Duration::from_secs(60),
        // Deliveries run on the control thread: its own pool, not a worker's.
        worker: scalegate_http::upstream::BACKGROUND,
        scheme: "http",
        activity: Default::default(),
        tunnel: Default::default(),
        h2_streams: Default::default(),
        h2_cancels: Default::default(),
        shutdown: None,
    });
    let done = Completion::background(&ctx, &route);
    let admitted = Admitted {
        prio: route.spec.priority,
        canary: None,
        client: ctx.peer,
    };
    match origin(&ctx, &snap, &route, parts, None, admitted, done).await {
        Ok(resp) => {
            let status = resp.status();
            // Read the answer to its end so the connection goes back to the pool.
            let _ = resp.into_body().collect().await;
            let retry = status.is_server_error()
                || status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS;
            if retry {
                Outcome::Failed(Failure::Status(status))
            } else {
                Outcome::Delivered
            }
        }
        Err((e, mut done)) => {
            done.set_status(e.status().as_u16());
            done.finish(false);
            match unreached(&e) {
                Some(why) => Outcome::Unreached(why),
                None => Outcome::Failed(Failure::Error(error_text(&e))),
            }
        }
    }
}

/// A failed attempt's error, in words.
fn error_text(e: &ProxyError) -> &'static str {
    match e {
        ProxyError::UpstreamReset => "the upstream connection broke before an answer",
        ProxyError::UpstreamTimeout => "the upstream did not answer in time",
        _ => "the request path refused the job",
    }
}

/// How long a job waits before the gateway tries again to reach a route's upstream.
pub(super) const PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Delivers attempt `attempt`, and while the upstream cannot be reached waits and tries again
/// without spending an attempt (the route is paused: with every slot holding a waiting job, no
/// other job starts). Returns None when `stop` says to hand the job back instead of waiting.
pub(super) async fn until_reached(
    gateway: &Weak<Gateway>,
    queue: &Weak<super::RouteQueue>,
    route: &str,
    job: &Job,
    attempt: u32,
    stop: Option<&mut tokio::sync::watch::Receiver<super::Phase>>,
) -> Option<Outcome> {
    let mut stop = stop;
    let mut waiting = None;
    loop {
        let outcome = deliver(gateway, route, job, attempt).await;
        let Outcome::Unreached(why) = outcome else {
            return Some(outcome);
        };
        if waiting.is_none() {
            let Some(q) = queue.upgrade() else {
                return Some(Outcome::Gone);
            };
            waiting = Some(q.pause(route, why));
        }
        let stopped = match stop.as_deref_mut() {
            Some(rx) => {
                tokio::select! {
                    () = tokio::time::sleep(PAUSE) => false,
                    r = async { rx.wait_for(|p| *p != super::Phase::Running).await.is_ok() } => r,
                }
            }
            None => {
                tokio::time::sleep(PAUSE).await;
                false
            }
        };
        if stopped {
            return None;
        }
    }
}
