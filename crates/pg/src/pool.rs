//! A pool of server connections for one (database, user), split by host (the primary and each
//! replica): at most `pool_size` in use per host, clients beyond it wait in FIFO order (tokio's
//! semaphore is fair) up to the wait timeout; idle connections are reused newest first, pinged
//! after a long idle, recycled after their lifetime and closed after the idle timeout. Which
//! host serves a transaction comes from the database's [`Topology`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clock::Coarse;
use crate::held::{Lent, Opened, Waiting};
use crate::server::{ServerConn, ServerError};
use crate::spec::{DatabaseSpec, PgSpec, PoolMode};
use crate::topology::Topology;
use crate::wait_timer::WaitTimer;

/// Counters for SHOW POOLS / SHOW STATS and metrics.
#[derive(Debug)]
pub struct PoolStats {
    /// Seconds clients waited for a server connection (0 when one was free).
    pub wait: crate::wait_histogram::WaitHistogram,
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
    /// Transactions sent to a replica.
    pub replica_xacts: AtomicU64,
    /// Queries (ReadyForQuery seen) completed.
    pub queries: AtomicU64,
    /// Microseconds clients spent waiting for a server, summed.
    pub wait_us: AtomicU64,
    /// The waits for a server in progress: how long the oldest has lasted (SHOW POOLS
    /// `maxwait_us`).
    pub oldest_wait: crate::oldest_wait::OldestWait,
    /// Bytes from clients.
    pub bytes_in: AtomicU64,
    /// Bytes to clients.
    pub bytes_out: AtomicU64,
    /// Clients turned away after the wait timeout.
    pub wait_timeouts: AtomicU64,
    /// Clients pinned to their server connection by session state now.
    pub pinned: AtomicUsize,
    /// Times a client was pinned.
    pub pins: AtomicU64,
    /// Statements refused because they create session state (`on_session_state = "refuse"`).
    pub refusals: AtomicU64,
}

impl PoolStats {
    pub(crate) fn new() -> PoolStats {
        PoolStats {
            wait: Default::default(),
            clients: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            xacts: AtomicU64::new(0),
            replica_xacts: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            wait_us: AtomicU64::new(0),
            oldest_wait: Default::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            wait_timeouts: AtomicU64::new(0),
            pinned: AtomicUsize::new(0),
            pins: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        }
    }
}

/// Where a transaction should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The primary (writes, and anything not known to be a read).
    Primary,
    /// A replica that has replayed `min_lsn`, else the primary.
    Read {
        /// The client's last commit LSN (read-your-writes).
        min_lsn: u64,
    },
    /// One shard of a sharded database (index into its shard list).
    Shard(usize),
    /// Work that needs a server but no particular one and is not one of the client's
    /// transactions (learning server parameters at login, statements that read nothing
    /// sharded): the primary, or for a sharded database the shard with the fewest
    /// transactions in flight. Not counted in the host's transactions.
    Any,
}

/// One host's connections.
#[derive(Debug)]
struct HostPool {
    permits: Arc<Semaphore>,
    // Boxed on purpose: a connection moves out of this list and back in for every transaction;
    // the box makes that a pointer move instead of a copy of the whole struct.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
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
    /// The database's hosts and their roles.
    pub topology: Arc<Topology>,
    /// Counters (shared with the leases, which give their counts back when they end).
    pub stats: Arc<PoolStats>,
    /// ParameterStatus values of the first server connection, for new clients.
    pub params: Mutex<Vec<(String, String)>>,
    hosts: Vec<HostPool>,
    /// Server password for hosts whose URL has none: the configured user's own.
    password: Option<String>,
    statements: Mutex<HashMap<Bytes, u64>>,
    next_statement: AtomicU64,
    retired_statements: Mutex<HashSet<u64>>,
    shapes: Mutex<HashMap<u64, u64>>,
    /// Statements some server prepared without error.
    parsed: Mutex<HashSet<u64>>,
    next_server: Arc<AtomicU64>,
    wait_timeout: Duration,
    lifetime: Duration,
    idle_timeout: Duration,
    check_after_idle: Duration,
    max_prepared: usize,
    /// A reload replaced this pool: its connections are closed as they come back, and
    /// sessions move to the new pool between transactions.
    retired: AtomicBool,
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
    /// No host accepts writes (failover in progress).
    #[error("no primary is reachable (failover in progress?); waited {0:?}")]
    NoPrimary(Duration),
    /// The client closed its connection while it waited (nothing is sent to it).
    #[error("the client closed its connection while waiting for a server")]
    ClientGone,
    /// A reload replaced the pool while the client waited for it: the client waits again in
    /// the new pool (whose `pool_size` may be larger) or, where it cannot, is told to retry.
    #[error("a reload replaced the database's pool while this statement waited; run it again")]
    Retired,
    /// A cancel request for the client ended its wait (`queued_cancel.rs`).
    #[error("canceling statement due to user request")]
    Cancelled,
    /// The server refused the client's settings (from its startup parameters or a SET) when
    /// they were applied to the connection it got: the client cannot be served as it asked.
    #[error("this client's settings cannot be applied: {message}")]
    Settings {
        /// The server's SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
}

impl AcquireError {
    /// The SQLSTATE to report.
    pub fn sqlstate(&self) -> &str {
        match self {
            AcquireError::Timeout(..) => "53300",
            AcquireError::Server(s) => s.sqlstate(),
            AcquireError::NoPrimary(_) => "57P03",
            AcquireError::ClientGone => "08006",
            AcquireError::Retired => "57P03",
            AcquireError::Cancelled => "57014",
            AcquireError::Settings { code, .. } => code,
        }
    }
}

/// A server connection on loan to one client; give it back with [`Pool::release`]. A lease
/// dropped on any other path (a session task that panicked, a future dropped while it held one)
/// still gives back its permit and its counts, and its connection is closed.
#[derive(Debug)]
pub struct Lease {
    /// The connection (boxed: it moves on every hand-out and hand-back).
    pub conn: Box<ServerConn>,
    /// Which host (index into the topology).
    pub host: usize,
    _permit: OwnedSemaphorePermit,
    _lent: Lent,
}

impl Pool {
    /// An empty pool.
    pub fn new(
        db: Arc<DatabaseSpec>,
        user: &str,
        spec: &PgSpec,
        ids: Arc<AtomicU64>,
        topology: Arc<Topology>,
    ) -> Pool {
        // Pass-through (no users configured): the server sees the client's own user.
        let server_user = if spec.users.is_empty() {
            user.to_string()
        } else {
            db.primary.user.clone().unwrap_or_else(|| user.to_string())
        };
        let hosts = topology
            .hosts
            .iter()
            .map(|_| HostPool {
                permits: Arc::new(Semaphore::new(db.pool_size)),
                idle: Mutex::new(Vec::new()),
            })
            .collect();
        let password = spec
            .users
            .iter()
            .find(|u| u.name == server_user)
            .map(|u| u.password.clone());
        Pool {
            password,
            topology,
            hosts,
            db,
            user: user.to_string(),
            server_user,
            stats: Arc::new(PoolStats::new()),
            params: Mutex::new(Vec::new()),
            statements: Mutex::new(HashMap::new()),
            next_statement: AtomicU64::new(1),
            retired_statements: Mutex::default(),
            shapes: Mutex::default(),
            parsed: Mutex::default(),
            next_server: ids,
            wait_timeout: spec.wait_timeout,
            lifetime: spec.server_lifetime,
            idle_timeout: spec.idle_timeout,
            check_after_idle: spec.check_after_idle,
            max_prepared: spec.max_prepared_statements,
            retired: AtomicBool::new(false),
        }
    }

    /// The pool mode.
    pub fn mode(&self) -> PoolMode {
        self.db.pool_mode
    }

    /// Idle server connections now.
    pub fn idle_count(&self) -> usize {
        self.hosts
            .iter()
            .map(|h| h.idle.lock().map_or(0, |i| i.len()))
            .sum()
    }

    /// The host for `route`, waiting (up to the wait timeout from `start`) while no primary is
    /// known.
    async fn host_for(&self, route: Route, start: Coarse) -> Result<usize, AcquireError> {
        loop {
            let picked = match route {
                Route::Read { min_lsn } => self
                    .topology
                    .replica_for(min_lsn)
                    .or_else(|| self.topology.primary()),
                Route::Primary => self.topology.primary(),
                Route::Shard(i) => Some(i.min(self.hosts.len().saturating_sub(1))),
                Route::Any if self.db.sharding.is_some() => self.least_busy_host(),
                // Login (learning the server's parameters, checking a password): any host that
                // answers, a replica while no primary is known, as reads are served then too.
                Route::Any => self
                    .topology
                    .primary()
                    .or_else(|| self.topology.replica_for(0)),
            };
            if let Some(i) = picked {
                return Ok(i);
            }
            if start.elapsed() >= self.wait_timeout {
                return Err(AcquireError::NoPrimary(self.wait_timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A server connection on the host `route` picks: an idle one if any (pinged when it sat
    /// long), else a new one. A login that fails for a passing reason (the server restarting,
    /// unreachable, out of slots) is retried with backoff until the wait timeout; a read whose
    /// replica refuses falls back at once to another host (the replica is marked down).
    /// The wait races `timer` (a client's own, kept across its waits).
    pub async fn acquire(
        &self,
        route: Route,
        timer: &mut WaitTimer,
    ) -> Result<Lease, AcquireError> {
        let start = Coarse::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let host = self.host_for(route, start).await?;
            let permit = self.permit(host, start, timer).await?;
            let transaction = route != Route::Any;
            if let Some(conn) = self.idle_conn(host).await {
                return Ok(self.lend(conn, host, permit, transaction));
            }
            // Boxed: opening a server connection is rare next to reusing one, and inline its
            // future (2.4 KB) would size every session's and be copied with it per transaction.
            let e = match Box::pin(self.open(host)).await {
                Ok(conn) => return Ok(self.lend(conn, host, permit, transaction)),
                Err(e) => e,
            };
            drop(permit);
            let replica =
                matches!(route, Route::Read { .. }) && Some(host) != self.topology.primary();
            if replica {
                tracing::warn!(error = %e, "a replica refused a connection; reads fall back");
                self.topology.mark_down(host);
                continue;
            }
            if !e.is_transient() || start.elapsed() + backoff >= self.wait_timeout {
                return Err(e.into());
            }
            tracing::info!(error = %e, "server login failed; retrying within wait_timeout");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// A permit for `host`, waiting in FIFO order for what is left of the wait timeout.
    async fn permit(
        &self,
        host: usize,
        start: Coarse,
        timer: &mut WaitTimer,
    ) -> Result<OwnedSemaphorePermit, AcquireError> {
        let hp = &self.hosts[host];
        // Looked at before the semaphore's Arc is cloned: when clients outnumber connections
        // nearly every acquire waits, and a failed try would clone and drop it for nothing.
        if hp.permits.available_permits() > 0
            && let Ok(p) = hp.permits.clone().try_acquire_owned()
        {
            // Had at once: no wait (and no clock read on the path every transaction takes).
            self.stats.wait.record_none();
            return Ok(p);
        }
        // Waits are reported in microseconds: timed on the precise clock (only here, off the
        // path of a transaction that finds a connection free).
        let before = start.elapsed();
        let waiting = tokio::time::Instant::now();
        let deadline = waiting + self.wait_timeout.saturating_sub(before);
        let got = {
            // Counted as waiting until the wait ends, however it ends.
            let _waiting = Waiting::new(&self.stats.waiting);
            let _oldest = self
                .stats
                .oldest_wait
                .begin(std::time::Instant::now() - before);
            let expired = timer.arm(deadline);
            tokio::select! {
                biased;
                // Closed: the pool was retired (see `retire`).
                p = hp.permits.clone().acquire_owned() => Some(p.map_err(|_| AcquireError::Retired)),
                () = expired => None,
            }
        };
        let waited = waiting.elapsed();
        let waited_us = waited.as_micros() as u64;
        self.stats.wait_us.fetch_add(waited_us, Relaxed);
        self.stats.wait.record(before + waited);
        match got {
            Some(p) => p,
            None => {
                self.stats.wait_timeouts.fetch_add(1, Relaxed);
                Err(AcquireError::Timeout(self.wait_timeout, self.db.pool_size))
            }
        }
    }

    /// An idle connection of `host` that is still open (pinged when it sat long).
    async fn idle_conn(&self, host: usize) -> Option<Box<ServerConn>> {
        loop {
            let candidate = self.hosts[host].idle.lock().ok().and_then(|mut i| i.pop());
            let mut conn = candidate?;
            if conn.looks_closed() {
                tracing::info!(
                    server = conn.id,
                    "server closed an idle connection; dropped"
                );
                continue;
            }
            if conn.last_used.elapsed() >= self.check_after_idle
                && !conn.ping(Duration::from_secs(2)).await
            {
                tracing::info!(
                    server = conn.id,
                    "idle server connection failed its check; closed"
                );
                continue;
            }
            return Some(conn);
        }
    }

    /// A new connection to `host`.
    async fn open(&self, host: usize) -> Result<Box<ServerConn>, ServerError> {
        let id = self.next_server.fetch_add(1, Relaxed);
        let mut spec = self.topology.hosts[host].spec.clone();
        if spec.password.is_none() {
            spec.password.clone_from(&self.password);
        }
        // Boxed once here: a connection moves between the idle list, a lease and a session for
        // every transaction, and a pointer moves cheaper than the struct.
        let mut conn = Box::new(
            ServerConn::connect(&spec, &self.server_user, Duration::from_secs(5), id).await?,
        );
        conn.prepared.set_cap(self.max_prepared);
        conn.counted = Some(Opened::new(&self.stats));
        // A replica's (learned while no primary was known) are not kept: see `client_params`.
        if !self.is_replica(host)
            && let Ok(mut p) = self.params.lock()
            && p.is_empty()
        {
            p.clone_from(&conn.params);
        }
        Ok(conn)
    }

    /// Whether `host` is a replica of a database split between a primary and replicas (not
    /// its primary, nor a shard, nor the one host of a database).
    fn is_replica(&self, host: usize) -> bool {
        self.topology.has_replicas() && self.topology.primary() != Some(host)
    }

    /// The server parameters a logging-in client is told, from the connection the pooler
    /// logged in with. A replica's (no primary was known) are reported as a primary's, since
    /// the pooler takes writes (`in_hot_standby` off: libpq's `target_session_attrs=read-write`
    /// checks it), and are not kept for later logins: once a primary is back, its own are.
    pub fn client_params(&self, lease: &Lease) -> Vec<(String, String)> {
        if !self.is_replica(lease.host) {
            return lease.conn.params.clone();
        }
        lease
            .conn
            .params
            .iter()
            .map(|(k, v)| match k.as_str() {
                "in_hot_standby" => (k.clone(), "off".to_string()),
                _ => (k.clone(), v.clone()),
            })
            .collect()
    }

    /// The host with the fewest leases out (the lowest index among equals).
    fn least_busy_host(&self) -> Option<usize> {
        (0..self.hosts.len()).min_by_key(|&i| self.topology.hosts[i].outstanding.load(Relaxed))
    }

    /// This pool's connections on `host`: (lent out, idle).
    pub fn host_usage(&self, host: usize) -> (usize, usize) {
        let Some(h) = self.hosts.get(host) else {
            return (0, 0);
        };
        let lent = self
            .db
            .pool_size
            .saturating_sub(h.permits.available_permits());
        (lent, h.idle.lock().map_or(0, |i| i.len()))
    }

    fn lend(
        &self,
        conn: Box<ServerConn>,
        host: usize,
        permit: OwnedSemaphorePermit,
        transaction: bool,
    ) -> Lease {
        let lent = Lent::new(&self.stats, &self.topology, host);
        let h = &self.topology.hosts[host];
        if transaction {
            h.xacts.fetch_add(1, Relaxed);
        }
        if self.topology.has_replicas() && Some(host) != self.topology.primary() {
            self.stats.replica_xacts.fetch_add(1, Relaxed);
        }
        Lease {
            conn,
            host,
            _permit: permit,
            _lent: lent,
        }
    }

    /// Hands a connection back: kept for reuse when `reusable` and within its lifetime,
    /// otherwise closed.
    pub fn release(&self, lease: Lease, reusable: bool) {
        let Lease { mut conn, host, .. } = lease;
        // The lease's counts come back here; the connection is kept or closed below.
        let now = Coarse::now();
        if reusable && now.since(conn.born) < self.lifetime && !self.is_retired() {
            conn.last_used = now;
            conn.shrink_idle_buffer();
            if let Ok(mut idle) = self.hosts[host].idle.lock() {
                idle.push(conn);
                return;
            }
        }
        tokio::spawn(conn.terminate());
    }

    /// Opens server connections until each host that takes traffic has `min_idle` open (so the
    /// first clients after a quiet spell or a restart do not pay for logins); called
    /// periodically. Connections are made under the pool's permits, never beyond pool_size.
    pub async fn top_up(&self) {
        if self.db.min_idle == 0 {
            return;
        }
        for (host, hp) in self.hosts.iter().enumerate() {
            let role = self.topology.hosts[host].role();
            if matches!(
                role,
                crate::topology::Role::Down | crate::topology::Role::Unknown
            ) {
                continue;
            }
            loop {
                let idle = hp.idle.lock().map_or(0, |i| i.len());
                if idle >= self.db.min_idle {
                    break;
                }
                let Ok(_permit) = hp.permits.clone().try_acquire_owned() else {
                    break;
                };
                match self.open(host).await {
                    Ok(conn) => {
                        if let Ok(mut i) = hp.idle.lock() {
                            i.insert(0, conn);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "opening a min_idle server connection failed");
                        break;
                    }
                }
            }
        }
    }

    /// Closes connections idle past the idle timeout (keeping `min_idle` per host) or past
    /// their lifetime; called periodically.
    pub fn reap(&self) {
        let mut closed = Vec::new();
        for hp in &self.hosts {
            let Ok(mut idle) = hp.idle.lock() else {
                continue;
            };
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
            tokio::spawn(c.terminate());
        }
    }

    /// The idle connections: (server id, backend key, host index).
    pub fn idle_servers(&self) -> Vec<(u64, crate::server::ServerKey, usize)> {
        let mut v = Vec::new();
        for (host, hp) in self.hosts.iter().enumerate() {
            if let Ok(idle) = hp.idle.lock() {
                v.extend(idle.iter().map(|c| (c.id, c.key, host)));
            }
        }
        v
    }

    /// Takes over the counts of the pool it replaces (`stats`, when a reload replaced one):
    /// that pool's clients and connections are still counted while they last, and the
    /// counters go on from where they were.
    pub(crate) fn carrying(mut self, stats: Option<Arc<PoolStats>>) -> Pool {
        if let Some(stats) = stats {
            self.stats = stats;
        }
        self
    }

    /// Marks the pool replaced by a reload and closes its idle connections; the connections
    /// still lent out are closed when they come back. Its permits are closed too: the clients
    /// waiting in it are woken (`AcquireError::Retired`) to wait in the new pool, so a reload
    /// that raises `pool_size` serves the clients already queued, not only those who come
    /// after it.
    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
        for h in &self.hosts {
            h.permits.close();
        }
        self.close_idle();
    }

    /// Whether a reload replaced this pool.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    /// Closes every idle connection (RELOAD, shutdown).
    pub fn close_idle(&self) {
        let drained: Vec<Box<ServerConn>> = self
            .hosts
            .iter()
            .flat_map(|h| {
                h.idle
                    .lock()
                    .map(|mut i| i.drain(..).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        for c in drained {
            tokio::spawn(c.terminate());
        }
    }

    /// Gives every statement text a new id from now on: connections prepare them afresh
    /// under new names (after a schema change made some of their plans stale).
    pub fn renew_statements(&self) {
        if let Ok(mut m) = self.statements.lock() {
            m.clear();
        }
    }

    /// Statement `id` met a stale plan: it is never prepared afresh again (see
    /// `session/stale_plans.rs`). Ids are never reused; the set is bounded all the same.
    pub fn retire_statement(&self, id: u64) {
        if let Ok(mut r) = self.retired_statements.lock() {
            if r.len() >= 10_000 {
                r.clear();
            }
            r.insert(id);
        }
    }

    /// Records the result type `hash` a server described for statement `id`; false when another
    /// was recorded for it before (a schema change: clients holding it were told the old one).
    pub fn same_shape(&self, id: u64, hash: u64) -> bool {
        let Ok(mut m) = self.shapes.lock() else {
            return true;
        };
        if m.len() >= 100_000 {
            m.clear();
        }
        *m.entry(id).or_insert(hash) == hash
    }

    /// A server prepared statement `id` without error.
    pub fn statement_parsed(&self, id: u64) {
        if let Ok(mut m) = self.parsed.lock() {
            if m.len() >= 100_000 {
                m.clear();
            }
            m.insert(id);
        }
    }

    /// Whether a client's Parse of statement `id` can be answered without a server: some server
    /// prepared it without error, and no stale plan retired it since.
    pub fn parses_without_server(&self, id: u64) -> bool {
        self.parsed.lock().is_ok_and(|m| m.contains(&id)) && !self.statement_retired(id)
    }

    /// What becomes of statement `id` where a server lacks it: retired after a stale plan,
    /// checked first when clients were told its result type, else prepared there.
    pub fn lazy(&self, id: u64, check: bool) -> crate::stmt::Lazy {
        use crate::stmt::Lazy;
        if self.statement_retired(id) {
            Lazy::Retired
        } else if check && self.shapes.lock().is_ok_and(|m| m.contains_key(&id)) {
            Lazy::Check
        } else {
            Lazy::Fresh
        }
    }

    /// Whether statement `id` met a stale plan ([`Self::retire_statement`]).
    pub fn statement_retired(&self, id: u64) -> bool {
        self.retired_statements
            .lock()
            .is_ok_and(|r| r.contains(&id))
    }

    /// The pool-wide id of a statement (query text and parameter types) prepared under
    /// `scope` (the client's own search_path and role, if it set them): equal texts share an
    /// id, so a statement prepared by one client is reused by every other in the same scope.
    /// Tenants with a schema each (by search_path, or by role through the default `"$user"`)
    /// get their own statements: one tenant's tables need not have another's columns, and a
    /// shared statement would fail with a stale plan for one of them.
    pub fn statement_id(&self, body: &[u8], scope: Option<&str>) -> u64 {
        let scoped;
        let key = match scope {
            None => body,
            Some(scope) => {
                scoped = [body, b"\0scope\0", scope.as_bytes()].concat();
                &scoped[..]
            }
        };
        let Ok(mut m) = self.statements.lock() else {
            return self.next_statement.fetch_add(1, Relaxed);
        };
        if let Some(id) = m.get(key) {
            return *id;
        }
        // Ids are never reused, so forgetting texts only costs re-preparing them under new ids.
        if m.len() >= 100_000 {
            m.clear();
        }
        let id = self.next_statement.fetch_add(1, Relaxed);
        m.insert(Bytes::copy_from_slice(key), id);
        id
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
