//! The timer a client's waits for a server connection race, kept for the whole session.
//!
//! Nearly every transaction waits when clients outnumber the pool. A new timer per wait is
//! inserted into the runtime's timer wheel when first polled and taken out again when the wait
//! ends, each under the driver's lock; re-arming a timer that is still registered for a later
//! deadline is one atomic exchange (the wheel moves it when its old slot comes up).

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// One client's wait timer (none until its first wait).
#[derive(Debug, Default)]
pub struct WaitTimer(Option<Pin<Box<Sleep>>>);

impl WaitTimer {
    /// The timer, set to fire at `deadline`; await it (by `&mut`) beside the wait.
    pub fn arm(&mut self, deadline: Instant) -> Pin<&mut Sleep> {
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        sleep.as_mut().reset(deadline);
        sleep.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::WaitTimer;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_rearmed_timer_fires_at_its_new_deadline_and_again_after_firing() {
        let mut timer = WaitTimer::default();
        let start = Instant::now();
        // Armed, then re-armed later before it fires: it fires at the later deadline.
        assert!(!timer.arm(start + Duration::from_secs(1)).is_elapsed());
        timer.arm(start + Duration::from_secs(3)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        // Fired timers can be armed again.
        timer.arm(Instant::now() + Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
