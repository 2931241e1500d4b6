//! Where features run their background tasks: a runtime named explicitly when the gateway
//! starts (its control runtime), not whichever runtime happens to be current when a feature is
//! built. A feature built off a runtime used to stay off silently ("no runtime: … stays off").

use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Spawns background tasks (Redis and NATS connections, queue workers, the fan-out bus) on one
/// runtime.
#[derive(Clone, Debug)]
pub struct Spawner(Handle);

impl Spawner {
    /// Tasks run on `runtime`.
    pub fn new(runtime: Handle) -> Spawner {
        Spawner(runtime)
    }

    /// Tasks run on the runtime of the calling task (tests, and the binary's control runtime).
    /// Outside a runtime this is a bug of the caller's: it panics with that message.
    pub fn current() -> Spawner {
        Spawner(Handle::current())
    }

    /// Runs `task` in the background.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.spawn(task)
    }
}
