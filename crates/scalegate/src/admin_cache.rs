//! The admin API's cache endpoints: `POST /cache/purge?url=|prefix=|tag=[&soft=true]` (token
//! required, like switches) and `GET /cache` (tiers, sizes, the biggest and hottest objects).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Response, StatusCode, Uri};
use http_body_util::Full;
use scalegate_http::Gateway;
use scalegate_http::cache::Purge;
use serde_json::json;

use crate::admin::{JSON, TEXT, reply};

/// Purges here at once, then in Redis and on every instance through the bus.
pub fn purge(gw: &Arc<Gateway>, uri: &Uri) -> Response<Full<Bytes>> {
    let Some(store) = gw.snapshot().cache.clone() else {
        return reply(StatusCode::NOT_FOUND, TEXT, "404: no route caches\n");
    };
    let Some(p) = uri.query().and_then(Purge::from_query) else {
        return reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            "400: expected ?url=U, ?prefix=P or ?tag=T, optionally &soft=true\n",
        );
    };
    let purged = store.purge_local(&p);
    let (p2, store2) = (p.clone(), store.clone());
    // Redis and the buses in the background; this instance's memory is already purged.
    tokio::spawn(async move { scalegate_http::cache::purge(&store2, &p2).await });
    tracing::info!(purge = ?p, objects = purged, "cache purge");
    reply(
        StatusCode::OK,
        JSON,
        json!({ "purged": purged, "soft": p.soft }).to_string() + "\n",
    )
}

/// The cache at a glance.
pub fn view(gw: &Gateway) -> serde_json::Value {
    let Some(store) = gw.snapshot().cache.clone() else {
        return json!({ "enabled": false });
    };
    let (biggest, hottest) = store.top(20);
    let redis = store.l2.as_ref().map(|l2| {
        json!({
            "up": l2.link.up.load(Ordering::Relaxed),
            "errors": l2.link.errors.load(Ordering::Relaxed),
            "hits": l2.hits.load(Ordering::Relaxed),
            "writes": l2.writes.load(Ordering::Relaxed),
            "bytes": l2.bytes.load(Ordering::Relaxed),
        })
    });
    json!({
        "enabled": true,
        "memory": { "bytes": store.bytes(), "objects": store.objects(), "max_bytes": store.spec().max_bytes },
        "redis": redis,
        "biggest": biggest,
        "hottest": hottest,
    })
}

/// Refreshes the cache tier gauges before a scrape.
pub fn refresh_metrics(gw: &Gateway) {
    let Some(store) = gw.snapshot().cache.clone() else {
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
    if let Some(l2) = &store.l2 {
        gauge("redis", "up").set(i64::from(l2.link.up.load(Ordering::Relaxed)));
        gauge("redis", "bytes").set(i64::try_from(l2.bytes.load(Ordering::Relaxed)).unwrap_or(0));
        m.cache_tier_errors
            .get_or_create(&vec![("tier", "redis".to_string())])
            .set(i64::try_from(l2.link.errors.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    }
}
