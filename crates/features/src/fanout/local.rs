//! This instance's subscribers: topics → bounded broadcast queues, and the counters. Shared by a
//! hub and every hub that takes it over on a reload, and by the bus that delivers into it.
//!
//! A subscriber's stream either holds every message delivered here since it subscribed, in
//! order, or it ends: [`Ended::Lagged`] when it fell more than `buffer` behind, [`Ended::Cut`]
//! when the bus may have lost messages on the way here ([`Local::cut_all`]). Both close the
//! WebSocket with 1013 so the client reconnects and resynchronises.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::broadcast;

/// Why a subscription's stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It fell more than `buffer` messages behind.
    Lagged,
    /// The bus may have lost messages on the way to this instance.
    Cut,
}

/// Counters since start (they survive reloads).
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages published through this instance and taken by the bus (or delivered here).
    pub published: AtomicU64,
    /// Publishes answered 503: the bus refused them or could not assure every instance.
    pub refused: AtomicU64,
    /// Messages handed to subscribers' queues (one per subscriber).
    pub delivered: AtomicU64,
    /// Subscribers disconnected for falling behind.
    pub dropped_slow: AtomicU64,
    /// Times the bus may have lost messages for this instance (connection lost, a sequence
    /// number or heartbeat showing a missed message).
    pub gaps: AtomicU64,
    /// Subscribers closed because of such a gap.
    pub cut: AtomicU64,
}

/// Topics and their subscribers on this instance.
#[derive(Debug)]
pub(crate) struct Local {
    topics: Mutex<HashMap<Arc<str>, broadcast::Sender<Bytes>>>,
    /// Queue length for topics created from now on.
    buffer: AtomicUsize,
    /// Largest message delivered.
    max_message_bytes: AtomicUsize,
    pub(crate) counters: Counters,
}

impl Local {
    pub(crate) fn new(buffer: usize, max_message_bytes: usize) -> Local {
        Local {
            topics: Mutex::default(),
            buffer: AtomicUsize::new(buffer.max(1)),
            max_message_bytes: AtomicUsize::new(max_message_bytes),
            counters: Counters::default(),
        }
    }

    /// New settings from a reload (queues already made keep their length).
    pub(crate) fn configure(&self, buffer: usize, max_message_bytes: usize) {
        self.buffer.store(buffer.max(1), Ordering::Relaxed);
        self.max_message_bytes
            .store(max_message_bytes, Ordering::Relaxed);
    }

    /// A receiver for `topic`, if `admit` (checked under the topics lock, so that a
    /// [`Local::cut_all`] is either before it — and `admit` sees why — or cuts it too).
    pub(crate) fn subscribe<E>(
        &self,
        topic: &str,
        admit: impl FnOnce() -> Result<(), E>,
    ) -> Result<broadcast::Receiver<Bytes>, E> {
        let mut topics = lock(&self.topics);
        admit()?;
        Ok(match topics.get(topic) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(self.buffer.load(Ordering::Relaxed));
                topics.insert(Arc::from(topic), tx);
                rx
            }
        })
    }

    /// Hands a message to the subscribers of `topic`; returns how many.
    pub(crate) fn deliver(&self, topic: &str, message: Bytes) -> usize {
        if message.len() > self.max_message_bytes.load(Ordering::Relaxed) {
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
        self.counters
            .delivered
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Ends every subscriber's stream after what it has already been handed ([`Ended::Cut`]):
    /// messages may have been lost on the way here. Later subscribers get new queues.
    pub(crate) fn cut_all(&self, why: &str) {
        let mut topics = lock(&self.topics);
        let cut: usize = topics.values().map(broadcast::Sender::receiver_count).sum();
        // Dropping a sender closes its receivers once they have drained.
        topics.clear();
        drop(topics);
        self.counters.gaps.fetch_add(1, Ordering::Relaxed);
        self.counters.cut.fetch_add(cut as u64, Ordering::Relaxed);
        if cut > 0 {
            tracing::warn!(
                subscribers = cut,
                why,
                "fan-out: subscribers closed with 1013, they may have missed messages"
            );
        }
    }

    /// Subscribers of a topic.
    pub(crate) fn subscribers_of(&self, topic: &str) -> usize {
        lock(&self.topics)
            .get(topic)
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// Every topic with subscribers, with their counts.
    pub(crate) fn topics(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> = lock(&self.topics)
            .iter()
            .map(|(t, tx)| (t.to_string(), tx.receiver_count()))
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort();
        v
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
    pub(crate) topic: Arc<str>,
    pub(crate) rx: broadcast::Receiver<Bytes>,
    pub(crate) local: Arc<Local>,
    /// Largest message, for the WebSocket's frame limit.
    pub(crate) max_message_bytes: usize,
}

impl Subscription {
    /// The next message, or why the stream ended.
    pub async fn next(&mut self) -> Result<Bytes, Ended> {
        match self.rx.recv().await {
            Ok(m) => Ok(m),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.local
                    .counters
                    .dropped_slow
                    .fetch_add(1, Ordering::Relaxed);
                Err(Ended::Lagged)
            }
            // Only `cut_all` drops a sender that still has receivers.
            Err(broadcast::error::RecvError::Closed) => Err(Ended::Cut),
        }
    }

    /// Counts this subscriber as dropped for being too slow (its socket stopped taking data).
    pub fn count_slow(&self) {
        self.local
            .counters
            .dropped_slow
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Largest message (`max_message_bytes`).
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Our receiver still counts until this returns: replace it with a fresh one from a
        // dummy channel first, so the count the topic sees no longer includes us.
        let (_, dummy) = broadcast::channel(1);
        drop(std::mem::replace(&mut self.rx, dummy));
        self.local.release(&self.topic);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(local: &Arc<Local>, topic: &str) -> Subscription {
        let rx = local.subscribe::<()>(topic, || Ok(())).expect("admitted");
        Subscription {
            topic: Arc::from(topic),
            rx,
            local: local.clone(),
            max_message_bytes: 16,
        }
    }

    #[tokio::test]
    async fn a_cut_ends_each_stream_after_what_it_already_holds() {
        let local = Arc::new(Local::new(8, 16));
        let mut a = sub(&local, "t");
        local.deliver("t", Bytes::from_static(b"1"));
        local.cut_all("test");
        let mut b = sub(&local, "t");
        local.deliver("t", Bytes::from_static(b"2"));
        assert_eq!(a.next().await, Ok(Bytes::from_static(b"1")));
        assert_eq!(a.next().await, Err(Ended::Cut));
        assert_eq!(b.next().await, Ok(Bytes::from_static(b"2")));
        assert_eq!(local.counters.cut.load(Ordering::Relaxed), 1);
        assert_eq!(local.topics(), vec![("t".to_string(), 1)]);
        drop(a);
        drop(b);
        assert!(local.topics().is_empty());
    }
}
