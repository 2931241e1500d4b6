//! Admin API for queued routes: `GET /queue` (every queued route's state and counters since
//! start), and each route's
//! dead letters: `GET /queue/{route}/dead[?limit=N]` lists them, `POST /queue/{route}/dead/retry`
//! sends them back to the queue and `DELETE /queue/{route}/dead` drops them (both token
//! required).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Response, StatusCode, Uri};
use http_body_util::Full;
use scalegate_features::queue::RouteQueue;
use scalegate_http::Gateway;
use serde_json::json;

use crate::admin::{JSON, TEXT, reply};

/// Default and largest `limit` of a listing.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

/// What a `/queue/{route}/dead…` path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum DeadCall<'a> {
    /// `GET /queue/{route}/dead`.
    List(&'a str),
    /// `POST /queue/{route}/dead/retry`.
    Retry(&'a str),
    /// `DELETE /queue/{route}/dead`.
    Discard(&'a str),
}

impl<'a> DeadCall<'a> {
    /// Recognises a dead-letter call (None for any other path or method).
    pub fn parse(method: &Method, path: &'a str) -> Option<DeadCall<'a>> {
        let rest = path.strip_prefix("/queue/")?;
        if let Some(route) = rest.strip_suffix("/dead/retry") {
            return (method == Method::POST).then_some(DeadCall::Retry(route));
        }
        let route = rest.strip_suffix("/dead")?;
        match *method {
            Method::GET | Method::HEAD => Some(DeadCall::List(route)),
            Method::DELETE => Some(DeadCall::Discard(route)),
            _ => None,
        }
    }

    /// Whether it changes anything (and so needs the admin token).
    pub fn changes(&self) -> bool {
        !matches!(self, DeadCall::List(_))
    }
}

/// Answers a dead-letter call.
pub async fn dead(gw: &Gateway, call: DeadCall<'_>, uri: &Uri) -> Response<Full<Bytes>> {
    let route = match &call {
        DeadCall::List(r) | DeadCall::Retry(r) | DeadCall::Discard(r) => *r,
    };
    let Some(q) = queue_of(gw, route) else {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("404: no queued route named {route:?}\n"),
        );
    };
    let answer = match call {
        DeadCall::List(_) => q.dead_letters(limit(uri)).await.map(|jobs| {
            let jobs: Vec<_> = jobs.iter().map(|d| d.summary()).collect();
            json!({
                "route": route,
                "listed": jobs.len(),
                "given_up_since_start": q.counters.dead.load(Ordering::Relaxed),
                "stored_too_late_since_start": q.counters.stored_late.load(Ordering::Relaxed),
                "jobs": jobs,
            })
        }),
        DeadCall::Retry(_) => q.retry_dead().await.map(|n| {
            tracing::info!(route, jobs = n, "dead letters sent back to the queue");
            json!({ "route": route, "retried": n })
        }),
        DeadCall::Discard(_) => q.discard_dead().await.map(|n| {
            tracing::info!(route, jobs = n, "dead letters discarded");
            json!({ "route": route, "discarded": n })
        }),
    };
    match answer {
        Ok(body) => reply(StatusCode::OK, JSON, body.to_string() + "\n"),
        Err(why) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!("503: {why}\n"),
        ),
    }
}

/// Every queued route and its counters. A queue a reload replaced, still delivering what it
/// holds, is listed as `ROUTE (before reload)` without counters: it counts into its route's.
pub fn view(gw: &Gateway) -> serde_json::Value {
    let mut counted = Vec::new();
    let routes: Vec<_> = scalegate_features::queues(&gw.snapshot())
        .into_iter()
        .map(|(name, q)| {
            let mut v = json!({
                "route": name,
                "store": if q.durable().is_some() { "jetstream" } else { "memory" },
                "depth": q.depth(),
                "in_hand": q.in_hand(),
                "paused": q.paused() > 0,
                "attempts": q.spec().attempts,
                "max_in_flight": q.spec().max_in_flight,
                "dead_letters_kept": q.dead_kept(),
            });
            if first_of(&mut counted, &q.counters) {
                let c = &q.counters;
                for (key, n) in [
                    ("accepted_since_start", &c.queued),
                    ("delivered_since_start", &c.delivered),
                    ("failed_deliveries_since_start", &c.retried),
                    ("given_up_since_start", &c.dead),
                    ("stored_too_late_since_start", &c.stored_late),
                ] {
                    v[key] = n.load(Ordering::Relaxed).into();
                }
            }
            v
        })
        .collect();
    json!({ "routes": routes })
}

/// Whether `c` is not in `seen` yet (then it is now): each route's counters once.
pub(crate) fn first_of(
    seen: &mut Vec<*const scalegate_features::queue::QueueCounters>,
    c: &std::sync::Arc<scalegate_features::queue::QueueCounters>,
) -> bool {
    let p = std::sync::Arc::as_ptr(c);
    let first = !seen.contains(&p);
    if first {
        seen.push(p);
    }
    first
}

fn queue_of(gw: &Gateway, route: &str) -> Option<Arc<RouteQueue>> {
    scalegate_features::queue(&gw.snapshot(), route)
}

fn limit(uri: &Uri) -> usize {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("limit="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_LIMIT)
        .min(MAX_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_calls_are_recognised_by_method_and_path() {
        let p = |m: Method, path| DeadCall::parse(&m, path);
        assert_eq!(
            p(Method::GET, "/queue/hooks/dead"),
            Some(DeadCall::List("hooks"))
        );
        assert_eq!(
            p(Method::POST, "/queue/a.b/dead/retry"),
            Some(DeadCall::Retry("a.b"))
        );
        assert_eq!(
            p(Method::DELETE, "/queue/x/dead"),
            Some(DeadCall::Discard("x"))
        );
        assert_eq!(p(Method::POST, "/queue/x/dead"), None);
        assert_eq!(p(Method::GET, "/queue"), None);
        assert!(DeadCall::Retry("x").changes() && !DeadCall::List("x").changes());
        let uri: Uri = "/queue/x/dead?limit=5000".parse().expect("uri");
        assert_eq!(limit(&uri), MAX_LIMIT);
    }
}
