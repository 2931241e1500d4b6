//! A route's `queue` and the `[queue]` store, checked.

use std::time::Duration;

use scalegate_features::queue::{JobsSpec, QueueSpec};
use toml::Spanned;

use super::raw::{RawJobs, RawQueue};
use super::validate::Check;

/// A route's queue settings.
pub(super) fn route_queue(c: &mut Check, raw: &Spanned<RawQueue>) -> QueueSpec {
    let span = raw.span();
    let q = raw.get_ref();
    let backoff = c.dur(&q.backoff, Duration::from_secs(1), "queue.backoff");
    let max_backoff = c.dur(&q.max_backoff, Duration::from_secs(60), "queue.max_backoff");
    if max_backoff < backoff {
        c.err(
            span.clone(),
            "queue.max_backoff must be at least queue.backoff",
        );
    }
    let max_body_bytes = match &q.max_body_bytes {
        Some(m) if !(1..=64 << 20).contains(&m.get_ref().0) => {
            c.err(m.span(), "queue.max_body_bytes must be between 1 and 64MiB");
            1 << 20
        }
        Some(m) => m.get_ref().0 as usize,
        None => 1 << 20,
    };
    QueueSpec {
        max_in_flight: c.int(q.max_in_flight, &span, 1..=10_000, 4, "queue.max_in_flight") as usize,
        max_queued: c.int(
            q.max_queued,
            &span,
            1..=10_000_000,
            10_000,
            "queue.max_queued",
        ) as usize,
        attempts: c.int(q.attempts, &span, 1..=100, 5, "queue.attempts") as u32,
        backoff,
        max_backoff,
        max_body_bytes,
    }
}

/// With the durable store a queued route's name is part of a NATS subject and consumer name.
pub(super) fn check_names(c: &mut Check, routes: &[Spanned<super::raw::RawRoute>], durable: bool) {
    if !durable {
        return;
    }
    for r in routes {
        let r = r.get_ref();
        if let (Some(_), Some(name)) = (&r.queue, &r.name) {
            let n = name.get_ref();
            if !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                c.err(
                    name.span(),
                    format!("route {n:?} queues in NATS: its name must be letters, digits, _ or - (it names the subject and consumer)"),
                );
            }
        }
    }
}

/// The durable store, if configured.
pub(super) fn jobs(c: &mut Check, raw: Option<&Spanned<RawJobs>>) -> Option<JobsSpec> {
    let n = raw?.get_ref().nats.get_ref();
    let url = n.url.get_ref();
    super::nats::url(c, &n.url, "queue.nats.url");
    let stream = n.stream.clone().unwrap_or_else(|| "SCALEGATE_JOBS".into());
    if stream.is_empty()
        || !stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        c.err(
            n.url.span(),
            "queue.nats.stream must be letters, digits, _ or -",
        );
    }
    let subject_prefix = n.prefix.clone().unwrap_or_else(|| "scalegate.jobs.".into());
    let key = "queue.nats.prefix";
    super::nats::subject(c, n.url.span(), &subject_prefix, key, true);
    Some(JobsSpec {
        url: url.clone(),
        stream,
        subject_prefix,
    })
}
