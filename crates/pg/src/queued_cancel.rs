//! A cancel request for a client that waits for a server connection (the pool is saturated,
//! or PAUSE is in force). Its statement has not reached any server, so there is nothing to
//! forward: the wait itself ends, and the client gets 57014 as PostgreSQL answers a statement
//! interrupted in a lock wait. Left unanswered, drivers that time statements out (asyncpg's
//! `timeout=`) close the connection waiting for the cancel's answer, and the cancelled
//! statement ran later anyway.
//!
//! A cancel that arrives while the client waits for nothing is ignored, as PostgreSQL ignores
//! one for an idle backend: it must not cancel the client's next statement.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// One client's waits, cancellable from the cancel request's connection.
#[derive(Debug, Default)]
pub struct QueuedCancel {
    waiting: AtomicBool,
    notify: Notify,
}

impl QueuedCancel {
    /// Completes when a cancel request arrives for this client while this future is being
    /// awaited (race it with the wait). Costs nothing until first polled.
    pub async fn cancelled(&self) {
        // Made before the flag is raised: `notify_waiters` wakes every Notified that exists
        // when it is called, polled or not, so a cancel that sees the flag is never missed.
        let notified = self.notify.notified();
        let _waiting = Raised::new(&self.waiting);
        notified.await;
    }

    /// Ends the client's wait if it is waiting; false when it waits for nothing.
    pub fn cancel(&self) -> bool {
        if self.waiting.load(Ordering::Acquire) {
            self.notify.notify_waiters();
            true
        } else {
            false
        }
    }
}

/// The flag raised for as long as the wait lasts, however it ends.
struct Raised<'a>(&'a AtomicBool);

impl<'a> Raised<'a> {
    fn new(flag: &'a AtomicBool) -> Raised<'a> {
        flag.store(true, Ordering::Release);
        Raised(flag)
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::QueuedCancel;
    use std::time::Duration;

    #[tokio::test]
    async fn a_cancel_ends_a_wait_and_one_while_idle_is_forgotten() {
        let q = QueuedCancel::default();
        assert!(!q.cancel(), "nobody waits");
        // The idle cancel left nothing behind: a later wait is not ended by it.
        let later = tokio::time::timeout(Duration::from_millis(50), q.cancelled()).await;
        assert!(later.is_err());
        let waiting = q.cancelled();
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        assert!(q.cancel());
        waiting.await;
        assert!(!q.cancel(), "the wait is over");
    }
}
