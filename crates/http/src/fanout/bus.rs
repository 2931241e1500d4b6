//! The fan-out bus: Redis pub/sub or NATS. Every instance subscribes to all topics under the
//! prefix and delivers what arrives to its own subscribers; publishing sends on the bus only,
//! so the publishing instance gets its copy back from the bus like every other.
//!
//! The subscription reconnects by itself (Redis: this loop; NATS: the client). Publishing while
//! the bus is away fails at once with an error (the admin API answers 503), never silently.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{BusSpec, Hub};
use crate::redis_link::RedisLink;

/// A connected (or connecting) bus.
#[derive(Debug)]
pub(super) struct Bus {
    spec: BusSpec,
    /// Redis: the command connection for PUBLISH.
    redis: Option<Arc<RedisLink>>,
    /// NATS: the client, once connected.
    nats: ArcSwapOption<async_nats::Client>,
    /// Whether the subscription is live.
    subscribed: AtomicBool,
}

impl Bus {
    pub(super) fn start(spec: BusSpec, hub: Weak<Hub>) -> Arc<Bus> {
        let redis = match &spec {
            BusSpec::Redis { url, .. } => {
                Some(RedisLink::start(url, Duration::from_secs(1), "fan-out bus"))
            }
            BusSpec::Nats { .. } => None,
        };
        let bus = Arc::new(Bus {
            spec,
            redis,
            nats: ArcSwapOption::empty(),
            subscribed: AtomicBool::new(false),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let me = Arc::downgrade(&bus);
                match &bus.spec {
                    BusSpec::Redis { .. } => rt.spawn(redis_subscribe(me, hub)),
                    BusSpec::Nats { .. } => rt.spawn(nats_subscribe(me, hub)),
                };
            }
            Err(_) => tracing::warn!("no runtime: the fan-out bus stays off"),
        }
        bus
    }

    pub(super) fn is_up(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    pub(super) async fn publish(&self, topic: &str, message: Bytes) -> Result<(), String> {
        match &self.spec {
            BusSpec::Redis { channel_prefix, .. } => {
                let link = self.redis.as_ref().ok_or("no redis link")?;
                let channel = format!("{channel_prefix}{topic}");
                let payload = message.to_vec();
                link.call("fan-out publish", |mut c| async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await
                .map(|_| ())
                .ok_or_else(|| "redis is not answering".to_string())
            }
            BusSpec::Nats { subject_prefix, .. } => {
                let client = self.nats.load_full().ok_or("nats is not connected")?;
                client
                    .publish(format!("{subject_prefix}{topic}"), message)
                    .await
                    .map_err(|e| e.to_string())?;
                // Publishes are buffered; a flush makes "accepted" mean "sent".
                client.flush().await.map_err(|e| e.to_string())
            }
        }
    }
}

async fn redis_subscribe(bus: Weak<Bus>, hub: Weak<Hub>) {
    loop {
        let Some(me) = bus.upgrade() else { return };
        let BusSpec::Redis {
            url,
            channel_prefix,
        } = me.spec.clone()
        else {
            return;
        };
        drop(me);
        let sub = async {
            let client = redis::Client::open(url.as_str())?;
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(format!("{channel_prefix}*")).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        if let Ok(Ok(ps)) = tokio::time::timeout(Duration::from_secs(2), sub).await {
            tracing::info!(prefix = channel_prefix, "fan-out bus subscribed on redis");
            set_up(&bus, true);
            let mut messages = ps.into_on_message();
            while let Some(msg) = messages.next().await {
                let channel = msg.get_channel_name().to_string();
                let Some(topic) = channel.strip_prefix(channel_prefix.as_str()) else {
                    continue;
                };
                let Some(hub) = hub.upgrade().filter(|h| !h.is_retired()) else {
                    return;
                };
                hub.deliver(topic, Bytes::copy_from_slice(msg.get_payload_bytes()));
            }
            set_up(&bus, false);
            tracing::warn!("fan-out bus: redis subscription lost; reconnecting");
        }
        if hub.upgrade().is_none_or(|h| h.is_retired()) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn nats_subscribe(bus: Weak<Bus>, hub: Weak<Hub>) {
    let Some(me) = bus.upgrade() else { return };
    let BusSpec::Nats {
        url,
        subject_prefix,
    } = me.spec.clone()
    else {
        return;
    };
    drop(me);
    let Some((client, mut sub)) =
        crate::nats_link::subscribe(&url, format!("{subject_prefix}>"), "fan-out bus").await
    else {
        return;
    };
    match bus.upgrade() {
        Some(me) => me.nats.store(Some(Arc::new(client))),
        None => return,
    }
    set_up(&bus, true);
    while let Some(msg) = sub.next().await {
        let Some(topic) = msg.subject.as_str().strip_prefix(subject_prefix.as_str()) else {
            continue;
        };
        let Some(hub) = hub.upgrade().filter(|h| !h.is_retired()) else {
            return;
        };
        hub.deliver(topic, msg.payload);
    }
    set_up(&bus, false);
}

fn set_up(bus: &Weak<Bus>, up: bool) {
    if let Some(b) = bus.upgrade() {
        b.subscribed.store(up, Ordering::Relaxed);
    }
}
