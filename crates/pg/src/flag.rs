//! A process-wide on/off state (PAUSE, shutdown) that every transaction reads and a few tasks
//! wait on: reading it is one atomic load (a watch channel's borrow takes a read lock), and
//! waiting for a value goes through the watch channel.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// An on/off state with waiters.
#[derive(Debug)]
pub struct Flag {
    now: AtomicBool,
    changes: watch::Sender<bool>,
}

impl Default for Flag {
    fn default() -> Flag {
        Flag {
            now: AtomicBool::new(false),
            changes: watch::channel(false).0,
        }
    }
}

impl Flag {
    /// Sets the state and wakes those waiting for it.
    pub fn set(&self, on: bool) {
        self.now.store(on, Ordering::Release);
        self.changes.send_replace(on);
    }

    /// The state now.
    pub fn get(&self) -> bool {
        self.now.load(Ordering::Acquire)
    }

    /// Resolves once the state is `on` (at once if it is).
    pub async fn wait_for(&self, on: bool) {
        let mut rx = self.changes.subscribe();
        let _ = rx.wait_for(|v| *v == on).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Flag;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_waiter_sees_the_change_and_readers_see_it_at_once() {
        let flag = Arc::new(Flag::default());
        assert!(!flag.get());
        flag.wait_for(false).await;
        let waiter = tokio::spawn({
            let flag = flag.clone();
            async move { flag.wait_for(true).await }
        });
        tokio::task::yield_now().await;
        flag.set(true);
        assert!(flag.get());
        waiter.await.expect("the waiter ends");
    }
}
