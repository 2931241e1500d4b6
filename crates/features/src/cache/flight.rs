//! Request coalescing: of concurrent misses for one key, one (the leader) goes to the origin;
//! the others wait until the leader's response is stored (or abandoned), then look again. A
//! follower waits for the leader's response head no longer than its own route deadline; once
//! the head is in and being stored, the body's own timeouts bound the rest.

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
    running: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

/// What a request becomes for a key.
#[derive(Debug)]
pub enum Join {
    /// Fetch it; others wait until the guard is dropped.
    Leader(FlightGuard),
    /// Someone is fetching it; wait with [`wait`].
    Follower(watch::Receiver<bool>),
}

/// Held by the leader until its response is stored or abandoned.
#[derive(Debug)]
pub struct FlightGuard {
    flights: Arc<Flights>,
    key: String,
    /// Whether the key is in the table (a detached guard's is not: nobody waits on it).
    led: bool,
    /// True once the response head is in and its body is being stored; dropped when done.
    head: watch::Sender<bool>,
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

    /// The response head is in and its body is being stored: followers wait for the body.
    pub fn head_arrived(&self) {
        self.head.send_replace(true);
    }
}

impl Flights {
    /// Joins the flight for `key`, leading it when none runs.
    pub fn join(self: &Arc<Self>, key: String) -> Join {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = running.get(&key) {
            return Join::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(false);
        running.insert(key.clone(), rx);
        Join::Leader(FlightGuard {
            flights: self.clone(),
            key,
            led: true,
            head: tx,
        })
    }

    /// A guard for a fetch of `key` that nobody waits on (a key that answered uncacheable
    /// lately: its requests go to the origin side by side), which may still store what it gets.
    pub fn detached(self: &Arc<Self>, key: String) -> FlightGuard {
        let (tx, _) = watch::channel(false);
        FlightGuard {
            flights: self.clone(),
            key,
            led: false,
            head: tx,
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
        // `head` drops after this, which wakes every follower.
    }
}

/// Waits until the leader is done (its guard dropped), and tells whether it had a response
/// head by then; `Err` when `deadline` passes before the leader has one.
pub async fn wait(
    mut rx: watch::Receiver<bool>,
    deadline: tokio::time::Instant,
) -> Result<bool, tokio::time::error::Elapsed> {
    loop {
        let head = *rx.borrow_and_update();
        let changed = match head {
            true => rx.changed().await,
            false => tokio::time::timeout_at(deadline, rx.changed()).await?,
        };
        if changed.is_err() {
            return Ok(head || *rx.borrow());
        }
    }
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
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let waiter = tokio::spawn(wait(rx, far));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        assert_eq!(waiter.await.unwrap(), Ok(false), "no head");
        assert!(f.is_empty());
        assert!(matches!(f.join("k".into()), Join::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_waits_for_a_head_until_its_deadline_and_for_a_body_past_it() {
        let f = Arc::new(Flights::default());
        let Join::Leader(guard) = f.join("k".into()) else {
            panic!("first is leader")
        };
        let follow = || match f.join("k".into()) {
            Join::Follower(rx) => rx,
            Join::Leader(_) => panic!("follows"),
        };
        let soon = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        assert!(
            wait(follow(), soon).await.is_err(),
            "no head by the deadline"
        );
        let waiter = tokio::spawn(wait(follow(), soon + std::time::Duration::from_secs(1)));
        guard.head_arrived();
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        assert!(!waiter.is_finished(), "the body is on its way");
        drop(guard);
        assert_eq!(waiter.await.unwrap(), Ok(true), "it had a head");
    }
}
