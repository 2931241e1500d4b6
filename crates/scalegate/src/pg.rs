//! Running the PostgreSQL pooler beside the gateway: its own threads and runtime, a listener
//! bound before start-up reports success, and a drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
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
                // Transactions in flight finish; their clients are then told the pooler is
                // going away (57P01) and disconnected.
                while (p.active_servers() > 0 || p.client_count.load(Relaxed) > 0)
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Past the deadline, the sessions still open are ended in order: each client is
                // told 57P01 and its query in flight cancelled, instead of a bare EOF.
                p.stop_now();
                let told = tokio::time::Instant::now() + Duration::from_secs(2);
                while p.client_count.load(Relaxed) > 0 && tokio::time::Instant::now() < told {
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

/// The text of `scalegate pg reshard-plan`: the virtual shards that move when a shard is added.
pub fn reshard_plan(config: &crate::config::Config, database: &str) -> anyhow::Result<String> {
    use std::fmt::Write;
    let db = config
        .postgres
        .as_ref()
        .and_then(|p| p.databases.iter().find(|d| d.name == database))
        .ok_or_else(|| anyhow::anyhow!("no database {database:?} under [postgres.databases]"))?;
    let sharding = db
        .sharding
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("database {database:?} is not sharded"))?;
    let n = db.shards.len();
    let (next, moves) = scalegate_pg::shard::plan_add_shard(&sharding.map, n);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "database {database}: {} virtual shards on {n} shards; adding shard {n} moves {} virtual shards ({:.1}% of keys):",
        sharding.virtual_shards,
        moves.len(),
        100.0 * moves.len() as f64 / f64::from(sharding.virtual_shards.max(1))
    );
    for m in &moves {
        let _ = writeln!(
            out,
            "  virtual shard {:>5}: shard {} -> shard {}",
            m.vshard, m.from, m.to
        );
    }
    let _ = writeln!(
        out,
        "copy those virtual shards' rows to the new shard, then set the map (and add the shard):"
    );
    let list: Vec<String> = next.iter().map(|s| s.to_string()).collect();
    let _ = writeln!(out, "map = [{}]", list.join(", "));
    Ok(out)
}
