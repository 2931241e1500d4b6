//! What a client holds while it waits for a server connection or has one, counted in the pool's
//! gauges and given back in `Drop`, so no path — a wait given up, a future dropped, a session
//! task that panicked — can leave a count behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::pool::PoolStats;
use crate::topology::Topology;

/// A server connection's place in its pool's `open` count, held by the connection itself
/// ([`crate::server::ServerConn::counted`]): however the connection ends — closed by the
/// reaper, dropped with a lease, lost in a ping or a login that was given up — it is counted
/// out when it is dropped.
#[derive(Debug)]
pub struct Opened(Arc<PoolStats>);

impl Opened {
    /// Counts one more open connection in `stats` until the value is dropped.
    pub(crate) fn new(stats: &Arc<PoolStats>) -> Opened {
        stats.open.fetch_add(1, Relaxed);
        Opened(stats.clone())
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// A lease's place in the counts: the pool's active server connections (SHOW POOLS
/// `sv_active`) and its host's outstanding hand-outs (what replica choice reads).
#[derive(Debug)]
pub(crate) struct Lent {
    stats: Arc<PoolStats>,
    topology: Arc<Topology>,
    host: usize,
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
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Relaxed);
        self.topology.hosts[self.host]
            .outstanding
            .fetch_sub(1, Relaxed);
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
