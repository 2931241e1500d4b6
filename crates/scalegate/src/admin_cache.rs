//! The admin API's cache endpoints: `POST /cache/purge?url=|prefix=|tag=[&soft=true]` (token
//! required, like switches; 200 once applied everywhere it can be, 503 with what failed) and
//! `GET /cache` (tiers, sizes, the biggest and hottest objects, purges being retried).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Response, StatusCode, Uri};
use http_body_util::Full;
use scalegate_features::cache::Purge;
use scalegate_http::Gateway;
use serde_json::json;

use crate::admin::{JSON, TEXT, reply};

/// Purges here, in Redis and on every instance through the buses, and says how it went:
/// 200 when every step was done, 503 with the steps that failed (which are retried) otherwise.
pub async fn purge(gw: &Arc<Gateway>, uri: &Uri) -> Response<Full<Bytes>> {
    let Some(store) = scalegate_features::cache(&gw.snapshot()) else {
        return reply(StatusCode::NOT_FOUND, TEXT, "404: no route caches\n");
    };
    // Named as a request on each listener would be (their path rules may differ).
    let snap = gw.snapshot();
    let specs: Vec<_> = snap
        .listeners
        .iter()
        .map(|l| l.spec.edge.normalize)
        .collect();
    let purges = match Purge::from_query_on(uri.query().unwrap_or(""), &specs) {
        Ok(p) => p,
        Err(why) => {
            return reply(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!(
                    "400: {why}: expected one of ?url=U, ?prefix=P or ?tag=T, optionally &soft=true|false\n"
                ),
            );
        }
    };
    let Some((p, others)) = purges.split_first() else {
        return reply(StatusCode::BAD_REQUEST, TEXT, "400: nothing to purge\n");
    };
    let mut r = scalegate_features::cache::purge(&store, p).await;
    for other in others {
        r.merge(scalegate_features::cache::purge(&store, other).await);
    }
    let body = json!({
        "purged": r.purged,
        "soft": p.soft,
        "redis_keys": r.redis_keys,
        "subscribers": r.subscribers,
        "nats": r.nats,
        "failed": r.failed,
        "retrying": r.retrying,
    });
    if r.failed.is_empty() {
        tracing::info!(purge = ?p, objects = r.purged, redis_keys = ?r.redis_keys, subscribers = ?r.subscribers, "cache purge");
        reply(StatusCode::OK, JSON, body.to_string() + "\n")
    } else {
        tracing::warn!(purge = ?p, failed = ?r.failed, retrying = r.retrying, "cache purge incomplete");
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            body.to_string() + "\n",
        )
    }
}

/// The cache at a glance.
pub fn view(gw: &Gateway) -> serde_json::Value {
    let Some(store) = scalegate_features::cache(&gw.snapshot()) else {
        return json!({ "enabled": false });
    };
    let (biggest, hottest) = store.top(20);
    let redis = store.l2.as_ref().map(|l2| {
        json!({
            "up": l2.link.up.load(Ordering::Relaxed),
            "errors": l2.link.errors.load(Ordering::Relaxed),
            "hits": l2.hits.load(Ordering::Relaxed),
            "writes": l2.writes.load(Ordering::Relaxed),
            "dropped_fills": l2.dropped.load(Ordering::Relaxed),
            "bytes": l2.bytes.load(Ordering::Relaxed),
        })
    });
    json!({
        "enabled": true,
        "memory": { "bytes": store.bytes(), "objects": store.objects(), "max_bytes": store.spec().max_bytes },
        "redis": redis,
        "purges_retrying": store.retries.pending(),
        "biggest": biggest,
        "hottest": hottest,
    })
}

/// Refreshes the cache tier gauges before a scrape.
pub fn refresh_metrics(gw: &Gateway) {
    let Some(store) = scalegate_features::cache(&gw.snapshot()) else {
        return;
    };
    let m = &gw.metrics;
    let gauge = |tier: &str, what: &str| {
        m.cache_tier
            .get_or_create(&vec![
                ("tier", tier.to_string()),
                ("what", what.to_string()),
            ])
            .clone()
    };
    gauge("memory", "bytes").set(i64::try_from(store.bytes()).unwrap_or(i64::MAX));
    gauge("memory", "objects").set(i64::try_from(store.objects()).unwrap_or(i64::MAX));
    gauge("memory", "purges_retrying").set(i64::try_from(store.retries.pending()).unwrap_or(0));
    if let Some(l2) = &store.l2 {
        gauge("redis", "up").set(i64::from(l2.link.up.load(Ordering::Relaxed)));
        gauge("redis", "bytes").set(i64::try_from(l2.bytes.load(Ordering::Relaxed)).unwrap_or(0));
        gauge("redis", "dropped_fills")
            .set(i64::try_from(l2.dropped.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        // A counter (it only grows): brought up to the link's own count at each scrape.
        let errors = m
            .cache_tier_errors
            .get_or_create(&vec![("tier", "redis".to_string())]);
        let total = l2.link.errors.load(Ordering::Relaxed);
        errors.inc_by(total.saturating_sub(errors.get()));
    }
}
