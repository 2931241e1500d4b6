//! Process lifecycle: start workers and the admin listener, reload on SIGHUP or a change of the
//! config file, drain on SIGTERM/SIGINT and exit 0.
//!
//! Threads: the main thread runs a small control runtime (admin API, health probes, signals,
//! reloads); data-path workers run on their own threads (see `scalegate_http::worker`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use scalegate_http::Gateway;
use scalegate_http::health_check::Supervisor;
use scalegate_http::metrics::Labels;
use scalegate_http::worker::{Runtime, shutdown_channel, spawn_workers};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::admin;
use crate::config::{Config, LogFormat, RuntimeMode};
use crate::discovery::Discovery;
use crate::watch::watch_files;

/// A task the caller wants running beside the gateway on the control runtime (demo backends).
pub type Sidecar = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs the gateway until SIGTERM or SIGINT; `path` enables reloads from that file.
pub fn run(config: Config, path: Option<PathBuf>, sidecar: Option<Sidecar>) -> anyhow::Result<()> {
    init_logging(config.log_format);
    if let Some(p) = &path {
        for w in config.warning_lines(p) {
            tracing::warn!("{w}");
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sg-control")
        .build()
        .context("cannot start control runtime")?;
    rt.block_on(serve(config, path, sidecar))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rustls warns of alerts it sends a peer (a client asking to renegotiate): a client
        // could fill the log with them, so only its errors show unless RUST_LOG says otherwise.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    // Colours only for a terminal: a file, journald or `kubectl logs` would get escape codes.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn serve(
    config: Config,
    path: Option<PathBuf>,
    sidecar: Option<Sidecar>,
) -> anyhow::Result<()> {
    let (pools, shape) = match config.runtime.mode {
        RuntimeMode::ThreadPerCore => (config.runtime.worker_threads, Runtime::ThreadPerCore),
        RuntimeMode::WorkStealing => (1, Runtime::WorkStealing(config.runtime.worker_threads)),
    };
    let (mut discovery, mut dns_answers) = Discovery::new();
    discovery.prime(&config.gateway).await;
    let spawner = scalegate_shared::Spawner::current();
    let features = scalegate_features::Features {
        spec: &config.features,
        spawner: &spawner,
    };
    let gw = Gateway::new(&discovery.effective(&config.gateway), pools, &features)
        .context("cannot apply config")?;
    discovery.reconcile(&config.gateway);
    let mut health = Supervisor::default();
    health.reconcile(&gw.snapshot());

    let pg = match config.postgres.clone() {
        Some(spec) => {
            let h = crate::pg::start(spec)?;
            tracing::info!(addr = %h.addr, "postgres pooler listening");
            Some(h)
        }
        None => None,
    };
    // Both outcomes are exported from the start: an alert on the first failed reload needs a
    // series that was 0 before it.
    for result in ["ok", "error"] {
        let l: Labels = vec![("result", result.to_string())];
        let _ = gw.metrics.reloads.get_or_create(&l);
    }
    let admin_token = Arc::new(admin::AdminToken::from(
        config.admin_token.clone().map(Arc::new),
    ));
    let admin_addr = admin::start(
        config.admin_listen,
        gw.clone(),
        admin_token.clone(),
        pg.as_ref().map(|h| h.pooler.clone()),
    )
    .await
    .context("cannot start admin listener")?;
    let (trigger, shutdown) = shutdown_channel();
    let workers = spawn_workers(
        gw.clone(),
        shutdown,
        config.drain_timeout,
        shape,
        crate::alloc::release_free_memory,
    );
    let pg_reload = pg.as_ref().map(|h| h.pooler.clone());
    let mut console_reloads = pg_reload.as_ref().and_then(|p| p.reload_requests());
    if let Some(task) = sidecar {
        tokio::spawn(task);
    }
    for l in &gw.snapshot().listeners {
        tracing::info!(listener = %l.spec.name, addr = %l.sockets.local_addr, "listening");
    }
    tracing::info!(addr = %admin_addr, workers = config.runtime.worker_threads, "admin listening");

    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let (changed_tx, mut changed_rx) = mpsc::unbounded_channel::<()>();
    let mut watched = config.files.clone();
    let mut watching = config.watch_config;
    let mut _watcher = match &path {
        Some(p) if config.watch_config => watch_files(p, &watched, changed_tx.clone()),
        _ => None,
    };
    let live = Live {
        gw: &gw,
        pg: pg_reload.as_deref(),
        spawner: &spawner,
        admin_token: &admin_token,
    };
    let mut running = config;
    // A file change is applied once the file has been quiet for a moment (editors write in
    // several steps); signals are never held up by that wait.
    let mut settle: Option<tokio::time::Instant> = None;
    loop {
        let settled = async {
            match settle {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let console_reload = async {
            match &mut console_reloads {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(answer) = console_reload => {
                tracing::info!("RELOAD from the postgres console: reloading");
                let outcome = match &path {
                    Some(p) => reload(p, &live, &mut running, &mut health, &mut discovery),
                    None => Err("started without a config file".into()),
                };
                let _ = answer.send(outcome);
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                settle = None;
                if let Some(p) = &path { let _ = reload(p, &live, &mut running, &mut health, &mut discovery); }
            }
            Some(answer) = dns_answers.recv() => {
                if discovery.update(answer) {
                    let features = scalegate_features::Features {
                        spec: &running.features,
                        spawner: &spawner,
                    };
                    match gw.apply(&discovery.effective(&running.gateway), &features) {
                        Ok(snap) => health.reconcile(&snap),
                        Err(e) => tracing::error!(error = %e, "cannot apply endpoints found in DNS"),
                    }
                }
            }
            Some(()) = changed_rx.recv() => {
                settle = Some(tokio::time::Instant::now() + Duration::from_millis(150));
            }
            _ = settled => {
                settle = None;
                if let Some(p) = &path {
                    tracing::info!("config file changed: reloading");
                    let _ = reload(p, &live, &mut running, &mut health, &mut discovery);
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break }
        }
        // A reload that names other TLS files: watch those instead; one that turns
        // `watch_config` on or off starts or stops the watch.
        if let Some(p) = &path
            && (running.watch_config != watching
                || (running.watch_config && running.files != watched))
        {
            watched.clone_from(&running.files);
            watching = running.watch_config;
            _watcher = match watching {
                true => watch_files(p, &watched, changed_tx.clone()),
                false => None,
            };
        }
    }

    let drain_started = tokio::time::Instant::now();
    gw.set_draining();
    trigger.trigger();
    if let Some(hub) = scalegate_features::fanout(&gw.snapshot()) {
        // Other instances stop counting this one at once instead of after its heartbeats stop.
        hub.leave();
    }
    for (_, q) in scalegate_features::queues(&gw.snapshot()) {
        // Take no more jobs from the durable store; hand back those waiting for the upstream.
        q.stop();
    }
    let drain = running.drain_timeout;
    let pg_stopped = tokio::task::spawn_blocking(move || {
        if let Some(h) = pg {
            h.stop(drain);
        }
    });
    health.stop();
    let joined = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await;
    let _ = pg_stopped.await;
    if joined.is_err() {
        tracing::error!("a worker thread panicked");
    }
    finish_queued_jobs(&gw, drain_started + drain).await;
    tracing::info!("drained; exiting");
    Ok(())
}

/// Lets memory-queued jobs finish delivering until `deadline` (the end of the drain), so an
/// orderly stop loses none that can be delivered in time; says how many were lost otherwise.
async fn finish_queued_jobs(gw: &Gateway, deadline: tokio::time::Instant) {
    let queues = || -> Vec<_> {
        scalegate_features::queues(&gw.snapshot())
            .into_iter()
            .map(|(_, q)| q)
            .collect()
    };
    let sum = |f: fn(&scalegate_features::queue::RouteQueue) -> u64| -> u64 {
        queues().iter().map(|q| f(q)).sum()
    };
    while sum(|q| q.unsettled()) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (never_sent, cut_off) = (sum(|q| q.waiting_in_memory()), sum(|q| q.held_in_memory()));
    // Memory deliveries still running are cut off and no new one starts; jobs still held from
    // the durable store go back to it for another instance.
    for q in queues() {
        q.abandon();
    }
    let handed_back = tokio::time::Instant::now() + Duration::from_secs(2);
    while sum(|q| q.in_hand()) > 0 && tokio::time::Instant::now() < handed_back {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if never_sent + cut_off > 0 {
        tracing::warn!(
            never_sent,
            cut_off,
            "drain timeout: jobs queued in memory are lost: `never_sent` were not delivered, `cut_off` were being delivered or waiting for a retry (the upstream may have those) (use [queue] nats to keep them)"
        );
    }
}

/// What a reload changes besides the config it returns: the gateway, the pooler, the admin
/// token.
struct Live<'a> {
    gw: &'a Arc<Gateway>,
    pg: Option<&'a scalegate_pg::Pooler>,
    spawner: &'a scalegate_shared::Spawner,
    admin_token: &'a admin::AdminToken,
}

/// Applies the file at `path` if it is valid; otherwise logs every problem and keeps the
/// running config.
fn reload(
    path: &Path,
    live: &Live<'_>,
    running: &mut Config,
    health: &mut Supervisor,
    discovery: &mut Discovery,
) -> Result<(), String> {
    let Live {
        gw,
        pg,
        spawner,
        admin_token,
    } = *live;
    let counted = |result: &str| {
        let l: Labels = vec![("result", result.to_string())];
        gw.metrics.reloads.get_or_create(&l).inc();
    };
    let next = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload rejected, previous config stays in force:\n{e}");
            counted("error");
            return Err(e.to_string());
        }
    };
    for w in next.warning_lines(path) {
        tracing::warn!("{w}");
    }
    for setting in next.restart_needed(running) {
        tracing::warn!(
            setting,
            "changed setting only applies after a restart; keeping the running value"
        );
    }
    let features = scalegate_features::Features {
        spec: &next.features,
        spawner,
    };
    match gw.apply(&discovery.effective(&next.gateway), &features) {
        Ok(snap) => {
            health.reconcile(&snap);
            discovery.reconcile(&next.gateway);
            if let (Some(pooler), Some(spec)) = (pg, next.postgres.clone()) {
                for setting in pooler.apply(spec.clone()) {
                    tracing::warn!(
                        setting,
                        "changed setting only applies after a restart; keeping the running value"
                    );
                }
                running.postgres = Some(spec);
            }
            tracing::info!(version = snap.version, summary = %next.summary(), "config reloaded");
            // New or changed listeners, with the port they got (a port-0 one's is new).
            for l in &snap.listeners {
                let known = running.gateway.listeners.iter().any(|o| o == &l.spec);
                if !known {
                    tracing::info!(listener = %l.spec.name, addr = %l.sockets.local_addr, "listening");
                }
            }
            if next.admin_token != running.admin_token {
                admin_token.store(next.admin_token.clone().map(Arc::new));
                tracing::info!("admin.token changed: the new one is in force");
            }
            running.gateway = next.gateway;
            running.drain_timeout = next.drain_timeout;
            running.files = next.files;
            running.watch_config = next.watch_config;
            running.admin_token = next.admin_token;
            counted("ok");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "reload rejected, previous config stays in force");
            counted("error");
            Err(e.to_string())
        }
    }
}
