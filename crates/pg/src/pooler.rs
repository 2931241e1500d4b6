//! The pooler as a whole: listener, pools by (database, user), connected clients (for cancel
//! requests and SHOW CLIENTS), pause state, and the periodic reaper.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::ScramSecret;
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
}

/// Shared state of the running pooler.
#[derive(Debug)]
pub struct Pooler {
    /// Settings.
    pub spec: PgSpec,
    databases: HashMap<String, Arc<DatabaseSpec>>,
    topologies: HashMap<String, Arc<Topology>>,
    /// Read/write classification cache.
    pub classifier: Classifier,
    users: HashMap<String, (UserSpec, Option<ScramSecret>)>,
    pools: Mutex<HashMap<(String, String), Arc<Pool>>>,
    clients: Mutex<HashMap<(i32, i32), Arc<ClientSlot>>>,
    /// Clients connected now.
    pub client_count: AtomicUsize,
    server_ids: Arc<AtomicU64>,
    paused: watch::Sender<bool>,
    /// Woken by the console's RELOAD; the process reloads its config file.
    pub reload: tokio::sync::Notify,
    closing: watch::Sender<bool>,
}

impl Pooler {
    /// A pooler for `spec` (no listener yet).
    pub fn new(spec: PgSpec) -> Arc<Pooler> {
        let databases = spec
            .databases
            .iter()
            .map(|d| (d.name.clone(), Arc::new(d.clone())))
            .collect();
        let topologies = spec
            .databases
            .iter()
            .map(|d| {
                let monitor_user = d.primary.user.as_deref().unwrap_or("postgres");
                let password = spec
                    .users
                    .iter()
                    .find(|u| u.name == monitor_user)
                    .map(|u| u.password.clone());
                (d.name.clone(), Arc::new(Topology::new(d, password)))
            })
            .collect();
        let users = spec
            .users
            .iter()
            .map(|u| (u.name.clone(), (u.clone(), ScramSecret::new(&u.password))))
            .collect();
        Arc::new(Pooler {
            spec,
            databases,
            topologies,
            classifier: Classifier::default(),
            users,
            pools: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            client_count: AtomicUsize::new(0),
            server_ids: Arc::new(AtomicU64::new(1)),
            paused: watch::channel(false).0,
            reload: tokio::sync::Notify::new(),
            closing: watch::channel(false).0,
        })
    }

    /// A virtual database by name.
    pub fn database(&self, name: &str) -> Option<Arc<DatabaseSpec>> {
        self.databases.get(name).cloned()
    }

    /// Every virtual database, by name.
    pub fn databases(&self) -> Vec<Arc<DatabaseSpec>> {
        let mut v: Vec<_> = self.databases.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A configured user (and its SCRAM secret).
    pub fn user(&self, name: &str) -> Option<&(UserSpec, Option<ScramSecret>)> {
        self.users.get(name)
    }

    /// The hosts of a database and their roles.
    pub fn topology(&self, db: &str) -> Option<Arc<Topology>> {
        self.topologies.get(db).cloned()
    }

    /// The pool for (database, user), made on first use.
    pub fn pool(&self, db: &Arc<DatabaseSpec>, user: &str) -> Arc<Pool> {
        let make = || {
            let topo = self
                .topology(&db.name)
                .unwrap_or_else(|| Arc::new(Topology::new(db, None)));
            Arc::new(Pool::new(
                db.clone(),
                user,
                &self.spec,
                self.server_ids.clone(),
                topo,
            ))
        };
        let key = (db.name.clone(), user.to_string());
        let Ok(mut pools) = self.pools.lock() else {
            return make();
        };
        pools.entry(key).or_insert_with(make).clone()
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

    /// The server a client key is using now.
    pub fn server_of(&self, key: (i32, i32)) -> Option<ServerKey> {
        let slot = self.clients.lock().ok()?.get(&key)?.clone();
        let s = slot.server.lock().ok()?;
        s.map(|(_, k)| k)
    }

    /// Stops handing out server connections (PAUSE) or resumes (RESUME).
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Whether PAUSE is in force.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Waits while paused.
    pub async fn wait_resumed(&self) {
        let mut rx = self.paused.subscribe();
        let _ = rx.wait_for(|p| !*p).await;
    }

    /// Whether the pooler is shutting down.
    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once shutdown has begun.
    pub async fn closing(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
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
        let monitors: Vec<_> = self
            .topologies
            .values()
            .filter(|t| t.has_replicas())
            .map(|t| tokio::spawn(t.clone().monitor()))
            .collect();
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
        self.closing.send_replace(true);
        reaper.abort();
        for m in monitors {
            m.abort();
        }
        self.close_idle();
    }
}
