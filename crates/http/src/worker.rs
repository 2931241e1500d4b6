//! Data-path workers. Thread per core: each worker is an OS thread with a single-threaded tokio
//! runtime, its own SO_REUSEPORT socket per listener and its own upstream pools, so a request
//! never crosses threads. (ARCHITECTURE.md has the measurement behind this choice.)
//!
//! A worker follows the gateway's snapshot: listeners that appear start accepting, listeners
//! that go stop accepting. On shutdown it stops accepting, asks every connection to finish
//! (HTTP/1.1 closes after the response in flight, HTTP/2 sends GOAWAY) and waits up to the drain
//! timeout.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::gateway::Gateway;
use crate::proxy::{self, ConnCtx};
use crate::spec::ListenerSpec;

/// How the workers are told to stop.
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
    async fn wait(&mut self) {
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

/// Starts the data-path threads. Each returns when it has drained.
pub fn spawn_workers(
    gateway: Arc<Gateway>,
    shutdown: Shutdown,
    drain_timeout: Duration,
    shape: Runtime,
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
                        Ok(rt) => rt.block_on(run_worker(id, gw, sd, drain_timeout)),
                        Err(e) => tracing::error!(error = %e, "cannot start worker runtime"),
                    }
                });
            spawned
                .map_err(|e| tracing::error!(error = %e, "cannot spawn worker thread"))
                .ok()
        })
        .collect()
}

struct Running {
    spec: ListenerSpec,
    socket: Arc<TcpListener>,
    task: JoinHandle<()>,
}

async fn run_worker(id: usize, gw: Arc<Gateway>, mut shutdown: Shutdown, drain_timeout: Duration) {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut versions = gw.subscribe();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        reconcile(id, &gw, &graceful, &mut running);
        tokio::select! {
            _ = shutdown.wait() => break,
            changed = versions.changed() => if changed.is_err() { break },
            _ = sweep.tick() => if id == 0 { gw.sweep_idle() },
        }
    }
    // Stop accepting: the sockets close once their accept loops are gone.
    for (_, r) in running.drain() {
        r.task.abort();
        let _ = r.task.await;
    }
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        tracing::error!(worker = id, "connection watcher still shared; not draining");
        return;
    };
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            worker = id,
            "drain timeout reached with connections still open"
        );
    }
}

/// Starts accept loops for new listeners, stops those that left, restarts changed ones.
fn reconcile(
    id: usize,
    gw: &Arc<Gateway>,
    graceful: &Arc<GracefulShutdown>,
    running: &mut HashMap<String, Running>,
) {
    let snap = gw.snapshot();
    running.retain(|key, r| {
        let keep = snap.listeners.iter().any(|l| listener_key(&l.spec) == *key);
        if !keep {
            r.task.abort();
            tracing::info!(worker = id, listener = %r.spec.name, "listener stopped");
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
                r.task = tokio::spawn(accept_loop(
                    id,
                    gw.clone(),
                    l.spec.clone(),
                    r.socket.clone(),
                    graceful.clone(),
                ));
            }
            None => {
                let Some(std_listener) = l.sockets.take(id) else {
                    continue;
                };
                let socket = match TcpListener::from_std(std_listener) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        tracing::error!(worker = id, listener = %l.spec.name, error = %e, "cannot register listener");
                        continue;
                    }
                };
                let task = tokio::spawn(accept_loop(
                    id,
                    gw.clone(),
                    l.spec.clone(),
                    socket.clone(),
                    graceful.clone(),
                ));
                running.insert(
                    key,
                    Running {
                        spec: l.spec.clone(),
                        socket,
                        task,
                    },
                );
            }
        }
    }
}

fn listener_key(spec: &ListenerSpec) -> String {
    format!("{}@{}", spec.name, spec.bind)
}

/// The HTTP/1.1 + HTTP/2 (prior knowledge) connection settings of a listener.
pub fn connection_builder(spec: &ListenerSpec) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(spec.header_read_timeout)
        .max_buf_size(spec.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(spec.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

async fn accept_loop(
    worker: usize,
    gw: Arc<Gateway>,
    spec: ListenerSpec,
    socket: Arc<TcpListener>,
    graceful: Arc<GracefulShutdown>,
) {
    let builder = Arc::new(connection_builder(&spec));
    let name: Arc<str> = Arc::from(spec.name.as_str());
    loop {
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
            gateway: gw.clone(),
            listener: name.clone(),
            peer,
            worker,
            scheme: "http",
        });
        let svc = service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(proxy::handle(ctx, req).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
}
