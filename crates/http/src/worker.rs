//! Data-path workers. Thread per core: each worker is an OS thread with a single-threaded tokio
//! runtime, its own SO_REUSEPORT socket per listener and its own upstream pools, so a request
//! never crosses threads. (ARCHITECTURE.md has the measurement behind this choice.)
//!
//! A worker follows the gateway's snapshot: listeners that appear start accepting, listeners
//! that go stop accepting. On shutdown it stops accepting, every connection closes once its
//! request in flight is answered (HTTP/1.1 with `Connection: close`, HTTP/2 with GOAWAY; idle
//! ones at once), and the worker waits for them up to the drain timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::conn::{self, ConnTracker, Protocols};
use crate::gateway::Gateway;
use crate::proxy::{ConnCtx, ListenerRules, LiveRules};
use crate::spec::ListenerSpec;

/// How the workers and their connections are told to stop.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Sends the stop signal to every worker.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A stop channel: the trigger for the controller, the receiver for workers.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Tells every worker to stop accepting and drain.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has been triggered.
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// How data-path threads are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// One single-threaded runtime per worker, one socket and pool set each (the default).
    ThreadPerCore,
    /// One multi-threaded work-stealing runtime with this many threads, sharing one socket and
    /// one pool set (kept for comparison; see ARCHITECTURE.md).
    WorkStealing(usize),
}

/// Runs on each worker thread every few seconds: the binary passes a hook that hands memory the
/// allocator holds but no longer uses back to the OS (parked connections free their buffers, but
/// an idle thread's allocator would otherwise keep the pages).
pub type Housekeeping = fn();

/// Starts the data-path threads. Each returns when it has drained.
pub fn spawn_workers(
    gateway: Arc<Gateway>,
    shutdown: Shutdown,
    drain_timeout: Duration,
    shape: Runtime,
    housekeeping: Housekeeping,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..gateway.workers())
        .filter_map(|id| {
            let gw = gateway.clone();
            let sd = shutdown.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sg-worker-{id}"))
                .spawn(move || {
                    let rt = match shape {
                        Runtime::ThreadPerCore => tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build(),
                        Runtime::WorkStealing(n) => tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(n.max(1))
                            .thread_name("sg-worker")
                            .enable_all()
                            .build(),
                    };
                    match rt {
                        Ok(rt) => rt.block_on(run_worker(id, gw, sd, drain_timeout, housekeeping)),
                        Err(e) => tracing::error!(error = %e, "cannot start worker runtime"),
                    }
                });
            spawned
                .map_err(|e| tracing::error!(error = %e, "cannot spawn worker thread"))
                .ok()
        })
        .collect()
}

/// What every accept loop of a worker shares.
#[derive(Clone)]
struct WorkerCtx {
    id: usize,
    gw: Arc<Gateway>,
    tracker: Arc<ConnTracker>,
    shutdown: Shutdown,
}

struct Running {
    spec: ListenerSpec,
    socket: Arc<TcpListener>,
    task: JoinHandle<()>,
    /// Connections open on this listener in this worker, across accept-loop restarts.
    open: Arc<OpenCount>,
    /// The name and edge rules its connections read at each request, across reloads.
    rules: LiveRules,
}

/// Connections a listener has open in one worker. It outlives the accept loop, so a reload that
/// restarts the loop (a changed listener setting) still counts the connections the old loop
/// accepted against `max_connections`.
#[derive(Debug, Default)]
struct OpenCount {
    n: AtomicUsize,
    closed: Notify,
}

impl OpenCount {
    /// Returns once fewer than `cap` connections are open.
    async fn wait_below(&self, cap: usize) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Registered before the check, so a close between check and wait is not missed.
            closed.as_mut().enable();
            if self.n.load(Ordering::Acquire) < cap {
                return;
            }
            closed.await;
        }
    }

    /// Counts one more open connection until the returned guard drops.
    fn hold(self: &Arc<Self>) -> OpenGuard {
        self.n.fetch_add(1, Ordering::AcqRel);
        OpenGuard(self.clone())
    }
}

/// One counted open connection.
struct OpenGuard(Arc<OpenCount>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.n.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_waiters();
    }
}

async fn run_worker(
    id: usize,
    gw: Arc<Gateway>,
    shutdown: Shutdown,
    drain_timeout: Duration,
    housekeeping: Housekeeping,
) {
    let tracker = Arc::new(ConnTracker::default());
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut versions = gw.subscribe();
    let mut sweep = tokio::time::interval(Duration::from_secs(2));
    let mut stop = shutdown.clone();
    let w = WorkerCtx {
        id,
        gw: gw.clone(),
        tracker: tracker.clone(),
        shutdown,
    };
    loop {
        reconcile(&w, &mut running);
        tokio::select! {
            _ = stop.wait() => break,
            changed = versions.changed() => if changed.is_err() { break },
            _ = sweep.tick() => {
                if id == 0 {
                    gw.sweep_idle();
                }
                housekeeping();
            }
        }
    }
    // Stop accepting: the sockets close once their accept loops are gone.
    for (_, r) in running.drain() {
        r.task.abort();
        let _ = r.task.await;
    }
    // Every connection saw the same shutdown signal and is finishing on its own.
    if tokio::time::timeout(drain_timeout, tracker.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            worker = id,
            open = tracker.live(),
            "drain timeout reached with connections still open"
        );
    }
}

/// Starts accept loops for new listeners, stops those that left, restarts changed ones.
fn reconcile(w: &WorkerCtx, running: &mut HashMap<String, Running>) {
    let snap = w.gw.snapshot();
    running.retain(|key, r| {
        let keep = snap.listeners.iter().any(|l| listener_key(&l.spec) == *key);
        if !keep {
            r.task.abort();
            tracing::info!(worker = w.id, listener = %r.spec.name, "listener stopped");
        }
        keep
    });
    for l in &snap.listeners {
        let key = listener_key(&l.spec);
        match running.get_mut(&key) {
            Some(r) if r.spec == l.spec => {}
            Some(r) => {
                r.task.abort();
                r.spec = l.spec.clone();
                // Connections already open follow the new name and edge rules too.
                let rules = ListenerRules::live(&l.spec.name, l.spec.edge.clone());
                r.rules.store(rules.load_full());
                r.task = tokio::spawn(accept_loop(
                    w.clone(),
                    l.spec.clone(),
                    r.socket.clone(),
                    (r.open.clone(), r.rules.clone()),
                ));
            }
            None => {
                let Some(std_listener) = l.sockets.take(w.id) else {
                    continue;
                };
                let socket = match TcpListener::from_std(std_listener) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        tracing::error!(worker = w.id, listener = %l.spec.name, error = %e, "cannot register listener");
                        continue;
                    }
                };
                let open = Arc::new(OpenCount::default());
                let rules = ListenerRules::live(&l.spec.name, l.spec.edge.clone());
                let task = tokio::spawn(accept_loop(
                    w.clone(),
                    l.spec.clone(),
                    socket.clone(),
                    (open.clone(), rules.clone()),
                ));
                running.insert(
                    key,
                    Running {
                        spec: l.spec.clone(),
                        socket,
                        task,
                        open,
                        rules,
                    },
                );
            }
        }
    }
}

/// What identifies a listener's socket across reloads: its address when it names a port, so
/// that a renamed listener, or two that swap ports, keep their sockets (binding the new before
/// the old closed would fail: "address in use"); with port 0 (one picked at bind) also its name.
fn listener_key(spec: &ListenerSpec) -> String {
    if spec.bind.port() == 0 {
        format!("{}@{}", spec.name, spec.bind)
    } else {
        spec.bind.to_string()
    }
}

/// Whether a listener of a new config keeps the socket of one of the running config.
pub(crate) fn same_socket(running: &ListenerSpec, new: &ListenerSpec) -> bool {
    listener_key(running) == listener_key(new)
}

async fn accept_loop(
    w: WorkerCtx,
    spec: ListenerSpec,
    socket: Arc<TcpListener>,
    (open, rules): (Arc<OpenCount>, LiveRules),
) {
    let protocols = Arc::new(Protocols::new(&spec));
    let name: Arc<str> = Arc::from(spec.name.as_str());
    let local_port = socket.local_addr().map_or(0, |a| a.port());
    // This worker's share of the listener's connection limit.
    let cap = spec
        .max_connections
        .map(|n| n.div_ceil(w.gw.workers()).max(1));
    loop {
        // At the limit, wait here: unaccepted connections queue in the kernel's backlog.
        if let Some(cap) = cap {
            open.wait_below(cap).await;
        }
        let (stream, peer) = match socket.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::new(ConnCtx {
            gateway: w.gw.clone(),
            rules: rules.clone(),
            peer,
            local_port,
            idle_timeout: spec.idle_timeout,
            max_head: spec.max_header_bytes,
            body_timeout: spec.body_timeout,
            worker: w.id,
            scheme: if spec.tls.is_some() { "https" } else { "http" },
            activity: conn::Activity::default(),
            tunnel: Default::default(),
            h2_streams: Default::default(),
            h2_cancels: Default::default(),
            shutdown: Some(w.shutdown.clone()),
        });
        let serving = conn::serve(
            stream,
            ctx,
            protocols.clone(),
            w.shutdown.clone(),
            w.tracker.track(),
        );
        let counted = open.hold();
        tokio::spawn(async move {
            serving.await;
            drop(counted);
        });
    }
}
