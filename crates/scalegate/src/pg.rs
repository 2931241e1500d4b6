//! Running the PostgreSQL pooler beside the gateway: its own threads and runtime, a listener
//! bound before start-up reports success, and a drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use scalegate_pg::{PgSpec, Pooler};
use tokio::sync::oneshot;

/// A running pooler.
pub struct PgHandle {
    /// Shared state (console, metrics).
    pub pooler: Arc<Pooler>,
    /// Where clients connect.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<Duration>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Binds the pooler's listener and starts serving on `spec.worker_threads` threads.
pub fn start(spec: PgSpec) -> anyhow::Result<PgHandle> {
    let std_listener = std::net::TcpListener::bind(spec.listen)
        .with_context(|| format!("cannot bind postgres.listen {}", spec.listen))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let threads = spec.worker_threads;
    let pooler = Pooler::new(spec);
    let (tx, rx) = oneshot::channel::<Duration>();
    let p = pooler.clone();
    let thread = std::thread::Builder::new()
        .name("sg-pg".into())
        .spawn(move || {
            let rt = if threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("sg-pg")
                    .enable_all()
                    .build()
            };
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "cannot start the postgres runtime"),
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "postgres listener"),
                };
                let (drain_tx, drain_rx) = oneshot::channel::<Duration>();
                let stop = async move {
                    if let Ok(d) = rx.await {
                        let _ = drain_tx.send(d);
                    }
                };
                p.clone().serve(listener, stop).await;
                // Let transactions in flight finish before the runtime goes away.
                let drain = drain_rx.await.unwrap_or(Duration::ZERO);
                let deadline = tokio::time::Instant::now() + drain;
                while p.active_servers() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                p.close_idle();
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        })?;
    Ok(PgHandle {
        pooler,
        addr,
        stop: Some(tx),
        thread: Some(thread),
    })
}

impl PgHandle {
    /// Stops accepting, waits up to `drain` for server connections in use, and joins.
    pub fn stop(mut self, drain: Duration) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(drain);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
