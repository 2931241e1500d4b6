//! HTTP/2 clients that cancel the streams they open (CVE-2023-44487, "rapid reset", in the
//! variant that waits until each stream is accepted). h2 limits resets of streams not yet
//! handed to the gateway; a stream reset after it was accepted has already sent its request
//! upstream, and its slot is free again at once, so the connection's stream limit no longer
//! bounds the upstream work one client causes: a probe's single connection had 7,900 requests
//! reach the backend in 4 s, and other clients got 504s.
//!
//! Every request a connection carries is counted here when it ends: answered (a response head
//! went out) or cancelled by the client before that. Once a connection has cancelled
//! [`CANCELLED_LIMIT`] streams and more than it had answered, it is closed. A client cancelling
//! now and then (a gRPC deadline, a browser leaving a page) never comes near it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

use tokio::sync::Notify;

/// Streams a connection may cancel before its cancellations are weighed against its answers.
pub const CANCELLED_LIMIT: u32 = 100;

/// The ends of one connection's requests.
#[derive(Debug, Default)]
pub struct Cancels {
    cancelled: AtomicU32,
    answered: AtomicU32,
    tripped: AtomicBool,
    notify: Notify,
}

impl Cancels {
    /// A request ended; `answered`: a response head was sent, else the client went away first.
    pub fn ended(&self, answered: bool) {
        if answered {
            self.answered.fetch_add(1, Relaxed);
            return;
        }
        let n = self.cancelled.fetch_add(1, Relaxed) + 1;
        if n >= CANCELLED_LIMIT
            && n > self.answered.load(Relaxed)
            && !self.tripped.swap(true, Relaxed)
        {
            self.notify.notify_one();
        }
    }

    /// Completes once the connection's client has cancelled too many of its streams.
    pub async fn tripped(&self) {
        self.notify.notified().await;
    }

    /// Streams cancelled and answered so far.
    pub fn counts(&self) -> (u32, u32) {
        (self.cancelled.load(Relaxed), self.answered.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trips_once_cancellations_pass_the_limit_and_the_answers() {
        let c = Cancels::default();
        for _ in 0..CANCELLED_LIMIT * 2 {
            c.ended(true);
        }
        for _ in 0..CANCELLED_LIMIT * 2 {
            c.ended(false);
        }
        assert!(!c.tripped.load(Relaxed), "as many answered as cancelled");
        c.ended(false);
        assert!(c.tripped.load(Relaxed));
        // The permit waits for the connection's loop.
        tokio::time::timeout(std::time::Duration::from_secs(1), c.tripped())
            .await
            .expect("tripped");
    }
}
