//! Admin API for WebSocket fan-out: `POST /fanout/{topic}` publishes its body (token required),
//! `GET /fanout` shows topics, the bus and the counters (metrics: `fleet_metrics.rs`).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use scalegate_features::fanout::PublishError;
use scalegate_http::Gateway;
use serde_json::json;

use crate::admin::{JSON, TEXT, reply};

/// Publishes the request body to the topic named in the path.
pub async fn publish(gw: &Gateway, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(hub) = scalegate_features::fanout(&gw.snapshot()) else {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "404: [fanout] is not configured\n",
        );
    };
    let topic = req
        .uri()
        .path()
        .strip_prefix("/fanout/")
        .unwrap_or_default()
        .to_string();
    let limit = hub.spec().max_message_bytes;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                TEXT,
                format!("413: message larger than fanout.max_message_bytes ({limit})\n"),
            );
        }
    };
    match hub.publish(&topic, body).await {
        Ok(p) => reply(
            StatusCode::OK,
            JSON,
            json!({
                "topic": topic,
                "via_bus": p.via_bus,
                "local_subscribers": p.local_subscribers,
            })
            .to_string()
                + "\n",
        ),
        Err(e) => {
            let status = match e {
                PublishError::BadTopic => StatusCode::BAD_REQUEST,
                PublishError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                PublishError::Bus(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            reply(status, TEXT, format!("{}: {e}\n", status.as_u16()))
        }
    }
}

/// Topics, subscriber counts, the bus and the counters.
pub fn view(gw: &Gateway) -> serde_json::Value {
    let Some(hub) = scalegate_features::fanout(&gw.snapshot()) else {
        return json!({ "enabled": false });
    };
    let topics: Vec<_> = hub
        .topics()
        .into_iter()
        .map(|(t, n)| json!({ "topic": t, "subscribers": n }))
        .collect();
    let c = hub.counters();
    json!({
        "enabled": true,
        "path_prefix": hub.spec().path_prefix,
        "bus_up": hub.bus_up(),
        "bus_members": hub.bus_view().map(|b| b.members),
        "published": c.published.load(Ordering::Relaxed),
        "refused": c.refused.load(Ordering::Relaxed),
        "delivered": c.delivered.load(Ordering::Relaxed),
        "dropped_slow": c.dropped_slow.load(Ordering::Relaxed),
        "gaps": c.gaps.load(Ordering::Relaxed),
        "cut": c.cut.load(Ordering::Relaxed),
        "topics": topics,
    })
}
