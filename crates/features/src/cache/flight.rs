//! Request coalescing: of concurrent misses for one key, one (the leader) goes to the origin;
//! the others wait until the leader's response is stored (or abandoned), then look again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The coalescing key of one variant of a URL.
pub fn key(url: &str, variant: &str) -> String {
    format!("{url}\u{0}{variant}")
}

/// The keys being fetched right now.
#[derive(Debug, Default)]
pub struct Flights {
    running: Mutex<HashMap<String, watch::Receiver<()>>>,
}

/// What a request becomes for a key.
#[derive(Debug)]
pub enum Join {
    /// Fetch it; others wait until the guard is dropped.
    Leader(FlightGuard),
    /// Someone is fetching it; wait with [`wait`].
    Follower(watch::Receiver<()>),
}

/// Held by the leader until its response is stored or abandoned.
#[derive(Debug)]
pub struct FlightGuard {
    flights: Arc<Flights>,
    key: String,
    /// Whether the key is in the table (a detached guard's is not: nobody waits on it).
    led: bool,
    _done: watch::Sender<()>,
}

impl FlightGuard {
    /// The coalescing key it holds.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether others wait on it (it leads its key's flight); not a detached guard's.
    pub fn leads(&self) -> bool {
        self.led
    }
}

impl Flights {
    /// Joins the flight for `key`, leading it when none runs.
    pub fn join(self: &Arc<Self>, key: String) -> Join {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = running.get(&key) {
            return Join::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        running.insert(key.clone(), rx);
        Join::Leader(FlightGuard {
            flights: self.clone(),
            key,
            led: true,
            _done: tx,
        })
    }

    /// A guard for a fetch of `key` that nobody waits on (a key that answered uncacheable
    /// lately: its requests go to the origin side by side), which may still store what it gets.
    pub fn detached(self: &Arc<Self>, key: String) -> FlightGuard {
        let (tx, _) = watch::channel(());
        FlightGuard {
            flights: self.clone(),
            key,
            led: false,
            _done: tx,
        }
    }

    /// Keys in flight.
    pub fn len(&self) -> usize {
        self.running.lock().map_or(0, |r| r.len())
    }

    /// Whether no key is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.led {
            return;
        }
        if let Ok(mut running) = self.flights.running.lock() {
            running.remove(&self.key);
        }
        // `_done` drops after this, which wakes every follower.
    }
}

/// Waits until the leader is done (its guard dropped).
pub async fn wait(mut rx: watch::Receiver<()>) {
    while rx.changed().await.is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_wake_when_the_leader_is_done() {
        let f = Arc::new(Flights::default());
        let Join::Leader(guard) = f.join("k".into()) else {
            panic!("first is leader")
        };
        let Join::Follower(rx) = f.join("k".into()) else {
            panic!("second follows")
        };
        let waiter = tokio::spawn(wait(rx));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        waiter.await.unwrap();
        assert!(f.is_empty());
        assert!(matches!(f.join("k".into()), Join::Leader(_)));
    }
}
