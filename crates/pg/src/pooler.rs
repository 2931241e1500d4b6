//! The pooler as a whole: listener, pools by (database, user), connected clients (for cancel
//! requests and SHOW CLIENTS), pause state, and the periodic reaper.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::auth::ScramSecret;
use crate::cancel::{CancelGate, InFlight};
use crate::classify::Classifier;
use crate::pool::Pool;
use crate::server::ServerKey;
use crate::spec::{DatabaseSpec, PgSpec, UserSpec};
use crate::topology::Topology;

/// A connected client, as SHOW CLIENTS and cancel requests see it.
#[derive(Debug)]
pub struct ClientSlot {
    /// Client-facing user.
    pub user: String,
    /// Virtual database.
    pub database: String,
    /// Client address.
    pub addr: SocketAddr,
    /// Connected since.
    pub since: Instant,
    /// The server connection it holds now, if any.
    pub server: Mutex<Option<(u64, ServerKey)>>,
    /// Cancel requests on their way to that server (see `cancel.rs`).
    pub cancels: Arc<CancelGate>,
    /// Cancel requests for a statement still waiting for a server.
    pub queued: crate::queued_cancel::QueuedCancel,
    /// Session state pinning it to that connection (`effects::state` bits; 0: not pinned).
    pub pinned: std::sync::atomic::AtomicU8,
    /// The session's task while it waits between transactions, woken when shutdown begins
    /// (one registration per wait, instead of a queued waiter on a shared channel).
    pub on_close: futures_util::task::AtomicWaker,
}

impl ClientSlot {
    /// Ready once the drain's deadline has passed (`Pooler::stop_now`); until then registers
    /// the caller to be woken then.
    pub fn poll_stopping(&self, pooler: &Pooler, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.poll_flag(|| pooler.is_stopping(), cx)
    }

    /// Ready once `pooler` is shutting down; until then registers the caller to be woken then.
    pub fn poll_closing(&self, pooler: &Pooler, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.poll_flag(|| pooler.is_closing(), cx)
    }

    fn poll_flag(&self, set: impl Fn() -> bool, cx: &mut std::task::Context<'_>) -> Poll<()> {
        // Registered before the flag is read: a shutdown that sets it after this read wakes us.
        // (What orders the two sides is the waker's own atomic state, which registration and
        // wake both update: the flag's Release/Acquire alone would not be enough.)
        self.on_close.register(cx.waker());
        if set() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Where the console's RELOAD requests wait, each with the channel its outcome goes back on.
pub type ReloadReceiver =
    tokio::sync::mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<Result<(), String>>>;

#[derive(Debug)]
struct ReloadRequests {
    tx: tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<Result<(), String>>>,
    rx: Mutex<Option<ReloadReceiver>>,
}

impl Default for ReloadRequests {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        ReloadRequests {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

/// The settings in force: replaced whole by a reload.
#[derive(Debug)]
pub struct State {
    /// Settings.
    pub spec: PgSpec,
    databases: HashMap<String, Arc<DatabaseSpec>>,
    topologies: HashMap<String, Arc<Topology>>,
    users: HashMap<String, (UserSpec, Option<ScramSecret>)>,
}

impl State {
    /// Builds the state for `spec`, keeping `old`'s topology (roles, lag, counters, monitor)
    /// for every database whose settings did not change.
    fn new(spec: PgSpec, old: Option<&State>) -> State {
        let databases: HashMap<String, Arc<DatabaseSpec>> = spec
            .databases
            .iter()
            .map(|d| (d.name.clone(), Arc::new(d.clone())))
            .collect();
        let topologies = spec
            .databases
            .iter()
            .map(|d| {
                let kept = old.and_then(|o| {
                    let same = o.databases.get(&d.name).is_some_and(|od| **od == *d);
                    same.then(|| o.topologies.get(&d.name).cloned()).flatten()
                });
                let topo = kept.unwrap_or_else(|| {
                    let monitor_user = d.primary.user.as_deref().unwrap_or("postgres");
                    let password = spec
                        .users
                        .iter()
                        .find(|u| u.name == monitor_user)
                        .map(|u| u.password.clone());
                    Arc::new(Topology::new(d, password))
                });
                (d.name.clone(), topo)
            })
            .collect();
        // A user whose password a reload leaves alone keeps its verifier: a salt that changed
        // at each reload (a mock verifier's does not) would tell real users from unknown names.
        let users = spec
            .users
            .iter()
            .map(|u| {
                let kept = old
                    .and_then(|o| o.users.get(&u.name))
                    .filter(|(was, _)| was.password == u.password)
                    .and_then(|(_, secret)| secret.clone());
                let secret = kept.or_else(|| ScramSecret::new(&u.password));
                (u.name.clone(), (u.clone(), secret))
            })
            .collect();
        State {
            spec,
            databases,
            topologies,
            users,
        }
    }
}

/// Shared state of the running pooler.
#[derive(Debug)]
pub struct Pooler {
    state: arc_swap::ArcSwap<State>,
    /// Read/write classification cache.
    pub classifier: Classifier,
    /// Session-effect analysis cache (state to pin or refuse, DEALLOCATE, SET).
    pub analyzer: crate::effects::Analyzer,
    pools: Mutex<HashMap<(String, String), Arc<Pool>>>,
    /// The counts of pools a reload replaced, for the pools that replace them: the clients and
    /// server connections of the old pool stay counted (SHOW POOLS, metrics) until they end.
    carried_stats: Mutex<HashMap<(String, String), Arc<crate::pool::PoolStats>>>,
    /// Monitor tasks by database, and the runtime they run on.
    monitors: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    runtime: Mutex<Option<tokio::runtime::Handle>>,
    clients: Mutex<HashMap<(i32, i32), Arc<ClientSlot>>>,
    /// Clients connected now.
    pub client_count: AtomicUsize,
    /// Console logins in progress (console.rs bounds them).
    pub(crate) console_logins: AtomicUsize,
    server_ids: Arc<AtomicU64>,
    paused: crate::flag::Flag,
    /// The console's RELOAD requests: the process reloads its config file and answers each
    /// with the outcome.
    reloads: ReloadRequests,
    closing: crate::flag::Flag,
    /// The drain's deadline has passed: sessions still in a transaction end now.
    stopping: crate::flag::Flag,
}

impl Pooler {
    /// A pooler for `spec` (no listener yet).
    pub fn new(spec: PgSpec) -> Arc<Pooler> {
        Arc::new(Pooler {
            state: arc_swap::ArcSwap::from_pointee(State::new(spec, None)),
            classifier: Classifier::default(),
            analyzer: Default::default(),
            pools: Mutex::new(HashMap::new()),
            carried_stats: Mutex::new(HashMap::new()),
            monitors: Mutex::new(HashMap::new()),
            runtime: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
            client_count: AtomicUsize::new(0),
            console_logins: AtomicUsize::new(0),
            server_ids: Arc::new(AtomicU64::new(1)),
            paused: Default::default(),
            reloads: ReloadRequests::default(),
            closing: Default::default(),
            stopping: Default::default(),
        })
    }

    /// The settings in force.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// The pooler settings in force.
    pub fn spec(&self) -> PgSpec {
        self.state.load().spec.clone()
    }

    /// A virtual database by name.
    pub fn database(&self, name: &str) -> Option<Arc<DatabaseSpec>> {
        self.state.load().databases.get(name).cloned()
    }

    /// Every virtual database, by name.
    pub fn databases(&self) -> Vec<Arc<DatabaseSpec>> {
        let mut v: Vec<_> = self.state.load().databases.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A configured user (and its SCRAM secret).
    pub fn user(&self, name: &str) -> Option<(UserSpec, Option<ScramSecret>)> {
        self.state.load().users.get(name).cloned()
    }

    /// Whether clients are checked by the pooler (some users are configured).
    pub fn has_users(&self) -> bool {
        !self.state.load().users.is_empty()
    }

    /// The hosts of a database and their roles.
    pub fn topology(&self, db: &str) -> Option<Arc<Topology>> {
        self.state.load().topologies.get(db).cloned()
    }

    /// Applies new settings: new clients see new users and databases at once; a database whose
    /// settings changed gets fresh pools (sessions on the old ones finish undisturbed and their
    /// idle server connections are closed). Returns the settings that need a restart.
    pub fn apply(&self, spec: PgSpec) -> Vec<&'static str> {
        let old = self.state.load_full();
        let mut restart = Vec::new();
        if spec.listen != old.spec.listen {
            restart.push("postgres.listen");
        }
        if spec.worker_threads != old.spec.worker_threads {
            restart.push("postgres.worker_threads");
        }
        let next = State::new(spec, Some(&old));
        let changed: Vec<String> = old
            .databases
            .iter()
            .filter(|(name, d)| next.databases.get(*name) != Some(*d))
            .map(|(name, _)| name.clone())
            .collect();
        let new_dbs: Vec<String> = next
            .databases
            .keys()
            .filter(|n| old.databases.get(*n) != next.databases.get(*n))
            .cloned()
            .collect();
        self.state.store(Arc::new(next));
        let dropped: Vec<Arc<Pool>> = match self.pools.lock() {
            Ok(mut pools) => {
                let keys: Vec<_> = pools
                    .keys()
                    .filter(|(db, _)| changed.contains(db))
                    .cloned()
                    .collect();
                keys.iter().filter_map(|k| pools.remove(k)).collect()
            }
            Err(_) => Vec::new(),
        };
        if let Ok(mut carried) = self.carried_stats.lock() {
            for p in &dropped {
                carried.insert((p.db.name.clone(), p.user.clone()), p.stats.clone());
            }
        }
        let handle = self.runtime.lock().ok().and_then(|h| h.clone());
        if let Some(h) = &handle {
            let _enter = h.enter();
            for p in dropped {
                p.retire();
                // Its successor at once (no connection is made): the clients still on it
                // stay in SHOW POOLS and the metrics under their database.
                if let Some(db) = self.database(&p.db.name)
                    && (!self.has_users() || self.user(&p.user).is_some())
                {
                    self.pool(&db, &p.user);
                }
            }
        }
        if let Ok(mut monitors) = self.monitors.lock() {
            for name in &changed {
                if let Some(m) = monitors.remove(name) {
                    m.abort();
                }
            }
            if let Some(h) = &handle {
                for name in &new_dbs {
                    if let Some(t) = self.topology(name).filter(|t| t.has_replicas()) {
                        monitors.insert(name.clone(), h.spawn(t.monitor()).abort_handle());
                    }
                }
            }
        }
        restart
    }

    /// The pool for (database, user), made on first use.
    pub fn pool(&self, db: &Arc<DatabaseSpec>, user: &str) -> Arc<Pool> {
        let state = self.state();
        let make = || {
            let topo = state
                .topologies
                .get(&db.name)
                .cloned()
                .unwrap_or_else(|| Arc::new(Topology::new(db, None)));
            let carried = self
                .carried_stats
                .lock()
                .ok()
                .and_then(|mut c| c.remove(&(db.name.clone(), user.to_string())));
            Arc::new(
                Pool::new(db.clone(), user, &state.spec, self.server_ids.clone(), topo)
                    .carrying(carried),
            )
        };
        let key = (db.name.clone(), user.to_string());
        let Ok(mut pools) = self.pools.lock() else {
            return make();
        };
        match pools.get(&key) {
            // A pool made from settings a reload has since replaced is not reused.
            Some(p) if p.db == *db => p.clone(),
            _ => {
                let p = make();
                pools.insert(key, p.clone());
                p
            }
        }
    }

    /// Every pool, sorted by (database, user).
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = self
            .pools
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| (&a.db.name, &a.user).cmp(&(&b.db.name, &b.user)));
        v
    }

    /// Registers a client under a fresh backend key; returns the key.
    pub fn register(&self, slot: Arc<ClientSlot>) -> (i32, i32) {
        let Ok(mut clients) = self.clients.lock() else {
            return (0, 0);
        };
        loop {
            let key = (rand::random::<i32>() & 0x7fff_ffff, rand::random::<i32>());
            if let std::collections::hash_map::Entry::Vacant(e) = clients.entry(key) {
                e.insert(slot);
                return key;
            }
        }
    }

    /// Forgets a client.
    pub fn unregister(&self, key: (i32, i32)) {
        if let Ok(mut c) = self.clients.lock() {
            c.remove(&key);
        }
    }

    /// Every connected client.
    pub fn clients(&self) -> Vec<Arc<ClientSlot>> {
        self.clients
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The server a client key is using now, with its cancel counted as in flight until the
    /// guard is dropped: until then that server is not leased to another client. A client
    /// without a server that waits for one has its wait ended instead (`queued_cancel.rs`).
    pub fn begin_cancel(&self, key: (i32, i32)) -> Option<(ServerKey, InFlight)> {
        let slot = self.clients.lock().ok()?.get(&key)?.clone();
        let s = slot.server.lock().ok()?;
        if s.is_none() && slot.queued.cancel() {
            tracing::debug!("cancel request for a statement waiting for a server: ended");
        }
        s.map(|(_, k)| (k, slot.cancels.enter()))
    }

    /// Asks the process to reload its config file (the console's RELOAD); the answer is the
    /// outcome, or None when nothing serves reloads.
    pub async fn reload(&self) -> Option<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reloads.tx.send(tx).ok()?;
        rx.await.ok()
    }

    /// The reload requests, for the one task that serves them (taken once).
    pub fn reload_requests(&self) -> Option<ReloadReceiver> {
        self.reloads.rx.lock().ok()?.take()
    }

    /// Stops handing out server connections (PAUSE) or resumes (RESUME).
    pub fn set_paused(&self, paused: bool) {
        self.paused.set(paused);
    }

    /// Whether PAUSE is in force.
    pub fn is_paused(&self) -> bool {
        self.paused.get()
    }

    /// Waits while paused.
    pub async fn wait_resumed(&self) {
        self.paused.wait_for(false).await;
    }

    /// Whether the drain's deadline has passed ([`Self::stop_now`]).
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// The drain's deadline: every session still open, in a transaction or not, is ended
    /// (its client told 57P01, its query in flight cancelled).
    pub fn stop_now(&self) {
        self.stopping.set(true);
        for client in self.clients() {
            client.on_close.wake();
        }
    }

    /// Whether the pooler is shutting down.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Server connections handed out across all pools.
    pub fn active_servers(&self) -> usize {
        self.pools()
            .iter()
            .map(|p| p.stats.active.load(Relaxed))
            .sum()
    }

    /// Closes idle server connections of every pool.
    pub fn close_idle(&self) {
        for p in self.pools() {
            p.close_idle();
        }
    }

    /// Accepts clients on `listener` until `shutdown` resolves; reaps idle servers meanwhile.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let reaper = {
            let me = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    for p in me.pools() {
                        p.reap();
                        p.top_up().await;
                    }
                }
            })
        };
        if let Ok(mut h) = self.runtime.lock() {
            *h = Some(tokio::runtime::Handle::current());
        }
        if let Ok(mut monitors) = self.monitors.lock() {
            for (name, t) in &self.state().topologies {
                if t.has_replicas() {
                    let task = tokio::spawn(t.clone().monitor());
                    monitors.insert(name.clone(), task.abort_handle());
                }
            }
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(crate::session::run(self.clone(), stream, peer));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = &mut shutdown => break,
            }
        }
        // Sessions between transactions say goodbye now; the others when theirs ends.
        self.closing.set(true);
        for client in self.clients() {
            client.on_close.wake();
        }
        reaper.abort();
        if let Ok(mut monitors) = self.monitors.lock() {
            for (_, m) in monitors.drain() {
                m.abort();
            }
        }
        self.close_idle();
    }
}
