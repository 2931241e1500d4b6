//! What a client holds while it waits for a server connection or has one, counted in the pool's
//! gauges and given back in `Drop`, so no path — a wait given up, a future dropped, a session
//! task that panicked — can leave a count behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::pool::PoolStats;
use crate::topology::Topology;

/// A lease's place in the counts: the pool's active server connections (SHOW POOLS
/// `sv_active`) and its host's outstanding hand-outs (what replica choice reads).
#[derive(Debug)]
pub(crate) struct Lent {
    stats: Arc<PoolStats>,
    topology: Arc<Topology>,
    host: usize,
    /// [`crate::pool::Pool::release`] has dealt with the connection (kept it idle, or closed it
    /// and counted it out of `open`); otherwise it is dropped with the lease, closing its socket.
    released: bool,
}

impl Lent {
    /// Counts one more connection handed out on `host`.
    pub(crate) fn new(stats: &Arc<PoolStats>, topology: &Arc<Topology>, host: usize) -> Lent {
        stats.active.fetch_add(1, Relaxed);
        topology.hosts[host].outstanding.fetch_add(1, Relaxed);
        Lent {
            stats: stats.clone(),
            topology: topology.clone(),
            host,
            released: false,
        }
    }

    /// Ends the loan through the pool, which keeps or closes the connection itself.
    pub(crate) fn released(mut self) {
        self.released = true;
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Relaxed);
        self.topology.hosts[self.host]
            .outstanding
            .fetch_sub(1, Relaxed);
        if !self.released {
            self.stats.open.fetch_sub(1, Relaxed);
        }
    }
}

/// Counts a client in its pool's waiting gauge (SHOW POOLS `cl_waiting`) while it lives.
pub(crate) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Counts one more waiting client until the value is dropped.
    pub(crate) fn new(gauge: &'a AtomicUsize) -> Waiting<'a> {
        gauge.fetch_add(1, Relaxed);
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
