//! Cancel requests in flight. A client's cancel goes to the server connection it holds at
//! that moment, on a connection of its own; meanwhile the client's query may end and its server
//! go back to the pool. Were that server leased again at once, the cancel could land on the
//! next client's query. So a server with a cancel in flight for its client is given back only
//! once the cancel has been delivered (PostgreSQL closes the cancel connection after it has
//! signalled the backend; a backend waiting for its next command ignores the signal). A cancel
//! whose delivery could not be confirmed (the server did not close the cancel connection in
//! time, or it could not be reached) leaves its fate unknown: that server connection is closed
//! instead of going back to the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The cancels in flight for one client's server connection.
#[derive(Debug, Default)]
pub struct CancelGate {
    in_flight: AtomicUsize,
    done: Notify,
    /// A cancel ended without a confirmed delivery: it may still land.
    unsure: AtomicBool,
}

impl CancelGate {
    /// Counts a cancel as in flight until the returned guard is dropped. Call it while the
    /// client is known to hold the server (under the lock that publishes which one).
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Whether a cancel ended unconfirmed since the last call (the flag is taken): its server
    /// connection must not be reused.
    pub fn take_unsure(&self) -> bool {
        // A load first: this is asked at every release, and is almost always false.
        self.unsure.load(Ordering::Acquire) && self.unsure.swap(false, Ordering::AcqRel)
    }

    /// Whether a cancel is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Returns once no cancel is in flight.
    pub async fn cleared(&self) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            // Registered before the count is read: a guard dropped after the read wakes us.
            done.as_mut().enable();
            if !self.busy() {
                return;
            }
            done.await;
        }
    }
}

/// A cancel in flight; dropping it (delivered, failed, or its task cancelled) ends it.
#[derive(Debug)]
pub struct InFlight(Arc<CancelGate>);

impl InFlight {
    /// The cancel's delivery was not confirmed.
    pub fn unsure(&self) {
        self.0.unsure.store(true, Ordering::Release);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_the_last_cancel_does() {
        let gate = Arc::new(CancelGate::default());
        gate.cleared().await;
        let (a, b) = (gate.enter(), gate.enter());
        assert!(gate.busy());
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.cleared().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(b);
        assert!(waiting.await.is_ok(), "the wait ends");
        assert!(!gate.busy());
    }
}
