//! One delivery of a job through the normal request path.

use std::sync::{Arc, Weak};

use http::StatusCode;
use http_body_util::BodyExt;

use super::{Job, StoredBody};
use crate::Gateway;
use crate::proxy::{Admitted, Completion, ConnCtx, origin};

/// What a delivery came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The upstream took it (any answer but 5xx, 408 or 429).
    Delivered,
    /// Try again later.
    Failed(Option<StatusCode>),
    /// The route or the gateway is gone: nothing to deliver to.
    Gone,
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
    let ctx = Arc::new(ConnCtx {
        gateway: gw.clone(),
        listener: Arc::from(route.spec.listener.as_deref().unwrap_or("queue")),
        peer: job.peer(),
        // A stored job's head was checked when it was queued.
        max_head: usize::MAX,
        body_timeout: std::time::Duration::from_secs(60),
        worker: 0,
        scheme: "http",
        activity: Default::default(),
        tunnel: Default::default(),
    });
    let done = Completion::background(&ctx, &route);
    let admitted = Admitted {
        prio: route.spec.priority,
        canary: None,
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
                Outcome::Failed(Some(status))
            } else {
                Outcome::Delivered
            }
        }
        Err((e, mut done)) => {
            done.set_status(e.status().as_u16());
            done.finish(false);
            Outcome::Failed(None)
        }
    }
}
