//! A pool of server connections for one (database, user): at most `pool_size` in use, clients
//! beyond it wait in FIFO order (tokio's semaphore is fair) up to the wait timeout; idle
//! connections are reused newest first, pinged after a long idle, recycled after their
//! lifetime and closed after the idle timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::server::{ServerConn, ServerError};
use crate::spec::{DatabaseSpec, PgSpec, PoolMode};

/// Counters for SHOW POOLS / SHOW STATS and metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Clients connected to this pool.
    pub clients: AtomicUsize,
    /// Clients waiting for a server connection.
    pub waiting: AtomicUsize,
    /// Server connections handed out.
    pub active: AtomicUsize,
    /// Server connections open (idle + active).
    pub open: AtomicUsize,
    /// Transactions (server hand-outs in transaction mode) completed.
    pub xacts: AtomicU64,
    /// Queries (ReadyForQuery seen) completed.
    pub queries: AtomicU64,
    /// Microseconds clients spent waiting for a server, summed.
    pub wait_us: AtomicU64,
    /// Longest wait so far in microseconds.
    pub max_wait_us: AtomicU64,
    /// Bytes from clients.
    pub bytes_in: AtomicU64,
    /// Bytes to clients.
    pub bytes_out: AtomicU64,
    /// Clients turned away after the wait timeout.
    pub wait_timeouts: AtomicU64,
}

/// Server connections for one (database, user).
#[derive(Debug)]
pub struct Pool {
    /// The virtual database.
    pub db: Arc<DatabaseSpec>,
    /// The client-facing user name.
    pub user: String,
    /// The user the pooler logs in as.
    pub server_user: String,
    /// Counters.
    pub stats: PoolStats,
    /// ParameterStatus values of the first server connection, for new clients.
    pub params: Mutex<Vec<(String, String)>>,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<ServerConn>>,
    statements: Mutex<HashMap<Bytes, u64>>,
    next_statement: AtomicU64,
    next_server: Arc<AtomicU64>,
    wait_timeout: Duration,
    lifetime: Duration,
    idle_timeout: Duration,
    check_after_idle: Duration,
}

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Every connection stayed busy for the whole wait timeout.
    #[error(
        "no server connection became free within {0:?} (pool_size {1}); the database is saturated"
    )]
    Timeout(Duration, usize),
    /// A new server connection failed.
    #[error("{0}")]
    Server(#[from] ServerError),
}

/// A server connection on loan to one client; give it back with [`Pool::release`].
#[derive(Debug)]
pub struct Lease {
    /// The connection.
    pub conn: ServerConn,
    /// When it was handed out.
    pub since: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// An empty pool.
    pub fn new(db: Arc<DatabaseSpec>, user: &str, spec: &PgSpec, ids: Arc<AtomicU64>) -> Pool {
        let server_user = db.primary.user.clone().unwrap_or_else(|| user.to_string());
        Pool {
            permits: Arc::new(Semaphore::new(db.pool_size)),
            db,
            user: user.to_string(),
            server_user,
            stats: PoolStats::default(),
            params: Mutex::new(Vec::new()),
            idle: Mutex::new(Vec::new()),
            statements: Mutex::new(HashMap::new()),
            next_statement: AtomicU64::new(1),
            next_server: ids,
            wait_timeout: spec.wait_timeout,
            lifetime: spec.server_lifetime,
            idle_timeout: spec.idle_timeout,
            check_after_idle: spec.check_after_idle,
        }
    }

    /// The pool mode.
    pub fn mode(&self) -> PoolMode {
        self.db.pool_mode
    }

    /// Idle server connections now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }

    /// A server connection: an idle one if any (pinged when it sat long), else a new one.
    pub async fn acquire(&self) -> Result<Lease, AcquireError> {
        let start = Instant::now();
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.stats.waiting.fetch_add(1, Relaxed);
                let got =
                    tokio::time::timeout(self.wait_timeout, self.permits.clone().acquire_owned())
                        .await;
                self.stats.waiting.fetch_sub(1, Relaxed);
                let waited = start.elapsed().as_micros() as u64;
                self.stats.wait_us.fetch_add(waited, Relaxed);
                self.stats.max_wait_us.fetch_max(waited, Relaxed);
                match got {
                    Ok(Ok(p)) => p,
                    _ => {
                        self.stats.wait_timeouts.fetch_add(1, Relaxed);
                        return Err(AcquireError::Timeout(self.wait_timeout, self.db.pool_size));
                    }
                }
            }
        };
        loop {
            let candidate = self.idle.lock().ok().and_then(|mut i| i.pop());
            let Some(mut conn) = candidate else { break };
            if conn.last_used.elapsed() >= self.check_after_idle
                && !conn.ping(Duration::from_secs(2)).await
            {
                self.stats.open.fetch_sub(1, Relaxed);
                tracing::info!(
                    server = conn.id,
                    "idle server connection failed its check; closed"
                );
                continue;
            }
            self.stats.active.fetch_add(1, Relaxed);
            return Ok(Lease {
                conn,
                since: Instant::now(),
                _permit: permit,
            });
        }
        let id = self.next_server.fetch_add(1, Relaxed);
        let conn = ServerConn::connect(
            &self.db.primary,
            &self.server_user,
            Duration::from_secs(5),
            id,
        )
        .await?;
        self.stats.open.fetch_add(1, Relaxed);
        self.stats.active.fetch_add(1, Relaxed);
        if let Ok(mut p) = self.params.lock()
            && p.is_empty()
        {
            p.clone_from(&conn.params);
        }
        Ok(Lease {
            conn,
            since: Instant::now(),
            _permit: permit,
        })
    }

    /// Hands a connection back: kept for reuse when `reusable` and within its lifetime,
    /// otherwise closed.
    pub fn release(&self, lease: Lease, reusable: bool) {
        self.stats.active.fetch_sub(1, Relaxed);
        let mut conn = lease.conn;
        if reusable && conn.born.elapsed() < self.lifetime {
            conn.last_used = Instant::now();
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(conn);
                return;
            }
        }
        self.stats.open.fetch_sub(1, Relaxed);
        tokio::spawn(conn.terminate());
    }

    /// Closes connections idle past the idle timeout (keeping `min_idle`) or past their
    /// lifetime; called periodically.
    pub fn reap(&self) {
        let mut closed = Vec::new();
        if let Ok(mut idle) = self.idle.lock() {
            let mut keep = Vec::with_capacity(idle.len());
            // Oldest first in the vector: the newest are reused first and kept longest.
            for c in idle.drain(..).rev() {
                let stale =
                    c.last_used.elapsed() >= self.idle_timeout && keep.len() >= self.db.min_idle;
                if stale || c.born.elapsed() >= self.lifetime {
                    closed.push(c);
                } else {
                    keep.push(c);
                }
            }
            keep.reverse();
            *idle = keep;
        }
        for c in closed {
            self.stats.open.fetch_sub(1, Relaxed);
            tokio::spawn(c.terminate());
        }
    }

    /// Closes every idle connection (RELOAD, shutdown).
    pub fn close_idle(&self) {
        let drained: Vec<ServerConn> = self
            .idle
            .lock()
            .map(|mut i| i.drain(..).collect())
            .unwrap_or_default();
        for c in drained {
            self.stats.open.fetch_sub(1, Relaxed);
            tokio::spawn(c.terminate());
        }
    }

    /// The pool-wide id of a statement (query text and parameter types): equal texts share an
    /// id, so a statement prepared by one client is reused by every other.
    pub fn statement_id(&self, body: &[u8]) -> u64 {
        let Ok(mut m) = self.statements.lock() else {
            return self.next_statement.fetch_add(1, Relaxed);
        };
        if let Some(id) = m.get(body) {
            return *id;
        }
        let id = self.next_statement.fetch_add(1, Relaxed);
        m.insert(Bytes::copy_from_slice(body), id);
        id
    }
}
