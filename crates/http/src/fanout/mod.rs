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
//! growing memory: it missed messages and should reconnect and resynchronise.

mod bus;
pub mod ws;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::broadcast;

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

/// Topics and their subscribers, shared by a hub and the hub that replaces it on a reload.
type Topics = Arc<Mutex<HashMap<Arc<str>, broadcast::Sender<Bytes>>>>;

/// Topics and their subscribers on this instance, and the bus.
#[derive(Debug)]
pub struct Hub {
    spec: FanoutSpec,
    topics: Topics,
    bus: Option<Arc<bus::Bus>>,
    /// Replaced by a reload: its bus stops delivering (the new hub's delivers to the same
    /// subscribers).
    retired: AtomicBool,
    /// Messages published through this instance.
    pub published: AtomicU64,
    /// Messages handed to subscribers' queues (one per subscriber).
    pub delivered: AtomicU64,
    /// Subscribers disconnected for falling behind.
    pub dropped_slow: AtomicU64,
}

impl Hub {
    /// A hub with its bus connecting in the background.
    pub fn start(spec: FanoutSpec) -> Arc<Hub> {
        Self::with_topics(spec, Topics::default())
    }

    /// A hub with new settings for the subscribers of `old`: they hear what is published
    /// through it from now on. Call `old.retire()` once it is in force.
    pub fn take_over(spec: FanoutSpec, old: &Hub) -> Arc<Hub> {
        Self::with_topics(spec, old.topics.clone())
    }

    fn with_topics(spec: FanoutSpec, topics: Topics) -> Arc<Hub> {
        Arc::new_cyclic(|me| Hub {
            bus: spec.bus.clone().map(|b| bus::Bus::start(b, me.clone())),
            spec,
            topics,
            retired: AtomicBool::new(false),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped_slow: AtomicU64::new(0),
        })
    }

    /// The settings it runs with.
    pub fn spec(&self) -> &FanoutSpec {
        &self.spec
    }

    /// Stops this hub's bus from delivering: a hub that took it over delivers instead.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Whether a newer hub took over.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// The topic a request subscribes to, if its listener and path are the hub's.
    pub fn topic_of<'p>(&self, listener: &str, path: &'p str) -> Option<&'p str> {
        if self.spec.listener.as_deref().is_some_and(|l| l != listener) {
            return None;
        }
        path.strip_prefix(self.spec.path_prefix.as_str())
    }

    /// Subscribes to a topic; messages published from now on are queued for it.
    pub fn subscribe(self: &Arc<Self>, topic: &str) -> Result<Subscription, PublishError> {
        check_topic(topic)?;
        let mut topics = lock(&self.topics);
        let rx = match topics.get(topic) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(self.spec.buffer.max(1));
                topics.insert(Arc::from(topic), tx);
                rx
            }
        };
        Ok(Subscription {
            topic: Arc::from(topic),
            rx,
            hub: self.clone(),
        })
    }

    /// Publishes a message to a topic: on the bus when there is one, else to this instance's
    /// subscribers.
    pub async fn publish(&self, topic: &str, message: Bytes) -> Result<Published, PublishError> {
        check_topic(topic)?;
        if message.len() > self.spec.max_message_bytes {
            return Err(PublishError::TooLarge(self.spec.max_message_bytes));
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        let local_subscribers = self.subscribers_of(topic);
        match &self.bus {
            Some(bus) => {
                bus.publish(topic, message)
                    .await
                    .map_err(PublishError::Bus)?;
                Ok(Published {
                    via_bus: true,
                    local_subscribers,
                })
            }
            None => Ok(Published {
                via_bus: false,
                local_subscribers: self.deliver(topic, message),
            }),
        }
    }

    /// Hands a message to this instance's subscribers of `topic`; returns how many.
    pub(crate) fn deliver(&self, topic: &str, message: Bytes) -> usize {
        if message.len() > self.spec.max_message_bytes {
            tracing::debug!(
                topic,
                bytes = message.len(),
                "fan-out message over the limit; dropped"
            );
            return 0;
        }
        let topics = lock(&self.topics);
        let n = topics
            .get(topic)
            .and_then(|tx| tx.send(message).ok())
            .unwrap_or(0);
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Subscribers of a topic on this instance.
    pub fn subscribers_of(&self, topic: &str) -> usize {
        lock(&self.topics)
            .get(topic)
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// Every topic with subscribers here, with their counts.
    pub fn topics(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> = lock(&self.topics)
            .iter()
            .map(|(t, tx)| (t.to_string(), tx.receiver_count()))
            .collect();
        v.sort();
        v
    }

    /// Whether the bus is connected (None: no bus).
    pub fn bus_up(&self) -> Option<bool> {
        self.bus.as_ref().map(|b| b.is_up())
    }

    /// Forgets a topic once its last subscriber is gone.
    fn release(&self, topic: &str) {
        let mut topics = lock(&self.topics);
        if topics.get(topic).is_some_and(|tx| tx.receiver_count() == 0) {
            topics.remove(topic);
        }
    }
}

/// One subscriber's queue; leaving drops the topic when it was the last.
#[derive(Debug)]
pub struct Subscription {
    topic: Arc<str>,
    rx: broadcast::Receiver<Bytes>,
    hub: Arc<Hub>,
}

impl Subscription {
    /// The next message; `Err(())` when this subscriber fell more than `buffer` behind.
    pub async fn next(&mut self) -> Result<Bytes, Lagged> {
        loop {
            match self.rx.recv().await {
                Ok(m) => return Ok(m),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.hub.dropped_slow.fetch_add(1, Ordering::Relaxed);
                    return Err(Lagged);
                }
                // The hub holds the sender while any subscriber exists; wait forever.
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }

    /// The hub's settings.
    pub fn spec(&self) -> &FanoutSpec {
        &self.hub.spec
    }
}

/// A subscriber fell too far behind and missed messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagged;

impl Drop for Subscription {
    fn drop(&mut self) {
        // Our receiver still counts until this returns: replace it with a fresh one from a
        // dummy channel first, so the count the hub sees no longer includes us.
        let (_, dummy) = broadcast::channel(1);
        drop(std::mem::replace(&mut self.rx, dummy));
        self.hub.release(&self.topic);
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(buffer: usize) -> Arc<Hub> {
        Hub::start(FanoutSpec {
            path_prefix: "/live/".into(),
            listener: None,
            buffer,
            max_message_bytes: 16,
            bus: None,
            authorize: None,
        })
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
        assert_eq!(s.next().await, Err(Lagged));
        assert_eq!(h.dropped_slow.load(Ordering::Relaxed), 1);
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
