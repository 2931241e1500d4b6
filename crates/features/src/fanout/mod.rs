//! WebSocket fan-out: clients subscribe to a topic with a WebSocket at `{path_prefix}{topic}`,
//! and every message published to the topic reaches every subscriber on every gateway instance.
//!
//! Publishing is for the application, not for subscribers: through the admin API
//! (`POST /fanout/{topic}`, token required) or straight onto the bus (a Redis `PUBLISH` or a NATS
//! publish). With a bus configured, a message published on any instance goes out on the bus and
//! every instance (the publisher's too) delivers what arrives from it, so each subscriber gets
//! it exactly once; with no bus, delivery is to this process's subscribers.
//!
//! Each subscriber has a bounded queue (`buffer` messages). One that falls further behind is
//! disconnected with close code 1013 (try again later) rather than slowing the others or
//! growing memory: it missed messages and should reconnect and resynchronise. The same close
//! ends every subscriber of an instance whose bus may have lost messages (`bus.rs`), so a
//! subscriber's stream is always gap-free: every message, in order, or a 1013.

mod bus;
mod envelope;
mod local;
mod nats_bus;
mod peers;
mod redis_bus;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use scalegate_http::body::RespBody;
use scalegate_http::gateway::Snapshot;
use scalegate_http::plug::{BeforeRouting, BoxFut, Io, UpgradeService};
use scalegate_http::proxy::ConnCtx;

pub use bus::BusView;
use local::Local;
pub use local::{Counters, Ended, Subscription};

/// Where messages travel between instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusSpec {
    /// Redis pub/sub: channel `{channel_prefix}{topic}`.
    Redis {
        /// `redis://host:port[/db]`.
        url: String,
        /// Prefix of every channel (default "scalegate:fanout:").
        channel_prefix: String,
    },
    /// NATS: subject `{subject_prefix}{topic}`.
    Nats {
        /// `nats://host:port`.
        url: String,
        /// Prefix of every subject (default "scalegate.fanout.").
        subject_prefix: String,
    },
}

/// The `[fanout]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanoutSpec {
    /// Subscriptions are WebSockets to `{path_prefix}{topic}` (default "/live/").
    pub path_prefix: String,
    /// Only on this listener (None: every listener).
    pub listener: Option<String>,
    /// Messages queued per subscriber before it counts as too slow (default 256).
    pub buffer: usize,
    /// Largest message published or received (default 64 KiB).
    pub max_message_bytes: usize,
    /// The bus between instances (None: this process only).
    pub bus: Option<BusSpec>,
    /// Ask the application before accepting a subscription (None: anyone who reaches the
    /// listener may subscribe to any topic).
    pub authorize: Option<AuthorizeSpec>,
}

/// Subscription authorization: a GET to `{path}?topic={topic}` on an endpoint of `upstream`
/// with the client's Cookie and Authorization; 2xx admits, 401/403/404 refuse with that status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizeSpec {
    /// The upstream that answers.
    pub upstream: String,
    /// Its path.
    pub path: String,
    /// Longest wait for the answer (default 2 s); slower counts as unavailable (503).
    pub timeout: std::time::Duration,
}

/// Why a message was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The topic name is not allowed.
    #[error("topic must be 1-128 characters of A-Z a-z 0-9 _ - . (not starting or ending with .)")]
    BadTopic,
    /// The message is over `max_message_bytes`.
    #[error("message is larger than max_message_bytes ({0})")]
    TooLarge(usize),
    /// The bus did not take it.
    #[error("the fan-out bus is unavailable: {0}")]
    Bus(String),
}

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Sent on the bus (every instance delivers it) rather than delivered here directly.
    pub via_bus: bool,
    /// Subscribers of the topic on this instance.
    pub local_subscribers: usize,
}

/// Topics and their subscribers on this instance, and the bus.
#[derive(Debug)]
pub struct Hub {
    spec: FanoutSpec,
    local: Arc<Local>,
    bus: Option<Arc<bus::Bus>>,
    /// Set by a hub that took this one over with a different bus: retiring stops ours.
    bus_superseded: AtomicBool,
}

impl BeforeRouting for Hub {
    fn claims(&self, listener: &str, path: &str) -> Option<String> {
        self.topic_of(listener, path).map(str::to_owned)
    }

    fn answer<'a>(
        &'a self,
        ctx: &'a Arc<ConnCtx>,
        snap: &'a Snapshot,
        topic: String,
        parts: &'a mut http::request::Parts,
    ) -> BoxFut<'a, http::Response<RespBody>> {
        // Boxed: the authorization call's future stays out of every other request's future.
        Box::pin(async move { ws::answer(ctx, snap, self, &topic, parts).await })
    }
}

impl UpgradeService for Subscription {
    fn serve<'a>(
        self: Box<Self>,
        client: Box<dyn Io + 'a>,
        stop: BoxFut<'a, ()>,
    ) -> BoxFut<'a, ()> {
        Box::pin(ws::serve(client, *self, stop))
    }
}

impl Hub {
    /// A hub with its bus connecting in the background.
    pub fn start(spawner: &scalegate_shared::Spawner, spec: FanoutSpec) -> Arc<Hub> {
        let local = Arc::new(Local::new(spec.buffer, spec.max_message_bytes));
        let bus = spec
            .bus
            .clone()
            .map(|b| bus::Bus::start(spawner, b, local.clone()));
        Arc::new(Hub {
            spec,
            local,
            bus,
            bus_superseded: AtomicBool::new(false),
        })
    }

    /// A hub with new settings for the subscribers of `old`: they hear what is published
    /// through it from now on. The bus is kept when its settings are unchanged. Call
    /// `old.retire()` once the new hub is in force.
    pub fn take_over(spawner: &scalegate_shared::Spawner, spec: FanoutSpec, old: &Hub) -> Arc<Hub> {
        old.local.configure(spec.buffer, spec.max_message_bytes);
        let bus = match (&old.bus, &spec.bus) {
            (Some(b), Some(s)) if b.spec() == s => Some(b.clone()),
            (was, s) => {
                old.bus_superseded.store(was.is_some(), Ordering::Relaxed);
                s.clone()
                    .map(|s| bus::Bus::start(spawner, s, old.local.clone()))
            }
        };
        Arc::new(Hub {
            spec,
            local: old.local.clone(),
            bus,
            bus_superseded: AtomicBool::new(false),
        })
    }

    /// The settings it runs with.
    pub fn spec(&self) -> &FanoutSpec {
        &self.spec
    }

    /// Called once a hub that took this one over is in force: a bus it did not keep stops
    /// (leaving the fleet), and subscribers are cut off, since messages between the two buses
    /// may be missed.
    pub fn retire(&self) {
        if self.bus_superseded.load(Ordering::Relaxed) {
            if let Some(b) = &self.bus {
                b.stop();
            }
            self.local.cut_all("the fan-out bus changed");
        }
    }

    /// Leaves the bus (the process is stopping): a last heartbeat tells the other instances
    /// not to wait for this one.
    pub fn leave(&self) {
        if let Some(b) = &self.bus {
            b.stop();
        }
    }

    /// The topic a request subscribes to, if its listener and path are the hub's.
    pub fn topic_of<'p>(&self, listener: &str, path: &'p str) -> Option<&'p str> {
        if self.spec.listener.as_deref().is_some_and(|l| l != listener) {
            return None;
        }
        path.strip_prefix(self.spec.path_prefix.as_str())
    }

    /// Subscribes to a topic; messages published from now on are queued for it. Refused while
    /// the bus is down: the subscriber would miss what other instances publish.
    pub fn subscribe(&self, topic: &str) -> Result<Subscription, PublishError> {
        check_topic(topic)?;
        let rx = self.local.subscribe(topic, || match &self.bus {
            Some(b) if !b.is_up() => Err(PublishError::Bus(
                "this instance is not connected to the bus".into(),
            )),
            _ => Ok(()),
        })?;
        Ok(Subscription {
            topic: Arc::from(topic),
            rx,
            local: self.local.clone(),
            max_message_bytes: self.spec.max_message_bytes,
        })
    }

    /// Publishes a message to a topic: on the bus when there is one, else to this instance's
    /// subscribers. With a bus, Ok means every instance on it took the message (Redis) or
    /// the bus did and an instance that misses it will notice (NATS); see `bus.rs`.
    pub async fn publish(&self, topic: &str, message: Bytes) -> Result<Published, PublishError> {
        check_topic(topic)?;
        if message.len() > self.spec.max_message_bytes {
            return Err(PublishError::TooLarge(self.spec.max_message_bytes));
        }
        let c = &self.local.counters;
        let local_subscribers = self.subscribers_of(topic);
        let published = match &self.bus {
            Some(bus) => {
                if let Err(why) = bus.publish(topic, message).await {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(PublishError::Bus(why));
                }
                Published {
                    via_bus: true,
                    local_subscribers,
                }
            }
            None => Published {
                via_bus: false,
                local_subscribers: self.local.deliver(topic, message),
            },
        };
        c.published.fetch_add(1, Ordering::Relaxed);
        Ok(published)
    }

    /// Subscribers of a topic on this instance.
    pub fn subscribers_of(&self, topic: &str) -> usize {
        self.local.subscribers_of(topic)
    }

    /// Every topic with subscribers here, with their counts.
    pub fn topics(&self) -> Vec<(String, usize)> {
        self.local.topics()
    }

    /// Counters since start.
    pub fn counters(&self) -> &Counters {
        &self.local.counters
    }

    /// The bus as this instance sees it (None: no bus).
    pub fn bus_view(&self) -> Option<BusView> {
        self.bus.as_ref().map(|b| b.view())
    }

    /// Whether the bus is connected (None: no bus).
    pub fn bus_up(&self) -> Option<bool> {
        self.bus.as_ref().map(|b| b.is_up())
    }
}

/// Topic names: safe as a path segment, a Redis channel suffix and a NATS subject suffix.
pub fn check_topic(t: &str) -> Result<(), PublishError> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && !t.starts_with('.')
        && !t.ends_with('.')
        && !t.contains("..")
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(PublishError::BadTopic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(buffer: usize) -> Arc<Hub> {
        let spawner = scalegate_shared::Spawner::current();
        Hub::start(
            &spawner,
            FanoutSpec {
                path_prefix: "/live/".into(),
                listener: None,
                buffer,
                max_message_bytes: 16,
                bus: None,
                authorize: None,
            },
        )
    }

    #[tokio::test]
    async fn every_subscriber_gets_each_message_and_topics_go_with_their_last_subscriber() {
        let h = hub(8);
        let mut a = h.subscribe("news").expect("sub");
        let mut b = h.subscribe("news").expect("sub");
        let _other = h.subscribe("sport").expect("sub");
        let p = h
            .publish("news", Bytes::from_static(b"hi"))
            .await
            .expect("publish");
        assert_eq!(
            p,
            Published {
                via_bus: false,
                local_subscribers: 2
            }
        );
        assert_eq!(a.next().await, Ok(Bytes::from_static(b"hi")));
        assert_eq!(b.next().await, Ok(Bytes::from_static(b"hi")));
        drop(a);
        assert_eq!(h.subscribers_of("news"), 1);
        drop(b);
        assert_eq!(h.topics(), vec![("sport".to_string(), 1)]);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged() {
        let h = hub(2);
        let mut s = h.subscribe("t").expect("sub");
        for i in 0..5u8 {
            h.publish("t", Bytes::from(vec![i])).await.expect("publish");
        }
        assert_eq!(s.next().await, Err(Ended::Lagged));
        assert_eq!(h.counters().dropped_slow.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn bad_topics_and_big_messages_are_refused() {
        let h = hub(2);
        for t in ["", "a b", "a/b", ".a", "a.", "a..b", "x>", "*"] {
            assert!(h.subscribe(t).is_err(), "{t:?}");
        }
        assert!(check_topic("orders.eu-1_x").is_ok());
        assert!(matches!(
            h.publish("t", Bytes::from(vec![0; 17])).await,
            Err(PublishError::TooLarge(16))
        ));
        assert_eq!(h.topic_of("any", "/live/news"), Some("news"));
        assert_eq!(h.topic_of("any", "/api/news"), None);
    }
}
