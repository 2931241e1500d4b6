//! Shared helpers for the gateway's integration tests.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub use scalegate_testkit::client::{Client, Resp, raw};
pub use scalegate_testkit::{Backend, DeadPort, GatewayProcess, eventually, free_port};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_scalegate");

/// A WebSocket opening handshake for `/chat` (RFC 6455's sample key), as a raw HTTP/1.1
/// request.
pub const WS_UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
      Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
      Sec-WebSocket-Version: 13\r\n\r\n";

/// Starts `n` backends named b0, b1, …
pub async fn backends(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Backend::start(&format!("b{i}")).await);
    }
    v
}

/// `"addr", "addr"` for an endpoints list.
pub fn endpoints(bs: &[Backend]) -> String {
    bs.iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A catch-all route to upstream "app" plus the upstream with `settings` lines.
pub fn app(bs: &[Backend], settings: &str) -> String {
    routed(&endpoints(bs), "/", "", settings)
}

/// One route for `prefix` to upstream "app" with extra `route` lines, and the upstream over
/// `endpoints` (the inside of a TOML list) with extra `upstream` lines.
pub fn routed(endpoints: &str, prefix: &str, route: &str, upstream: &str) -> String {
    format!(
        "[[routes]]\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"app\"\n{route}\n\n[upstreams.app]\nendpoints = [{endpoints}]\n{upstream}\n"
    )
}

/// Sends `n` sequential GETs of `path`; counts responses by body (non-2xx as "status:NNN").
pub async fn spread(
    c: &Client,
    addr: SocketAddr,
    path: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let key = match c.get_with(addr, path, headers).await {
            Ok(r) if r.status.is_success() => r.body,
            Ok(r) => format!("status:{}", r.status.as_u16()),
            Err(e) => format!("error:{e}"),
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Starts a gateway in front of `bs` with upstream `settings`.
pub async fn gateway(bs: &[Backend], settings: &str) -> GatewayProcess {
    GatewayProcess::start(BIN, &app(bs, settings)).await
}

/// Client loops sending GETs of `/` until stopped, counting successes and recording failures.
pub struct LoadLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LoadLoop {
    /// One loop per client, all against `addr`.
    pub fn start(addr: SocketAddr, clients: Vec<Client>) -> LoadLoop {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = clients
            .into_iter()
            .map(|c| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    while !stop.load(Relaxed) {
                        match c.get(addr, "/").await {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Relaxed);
                            }
                            other => failures
                                .lock()
                                .map(|mut f| f.push(format!("{other:?}")))
                                .unwrap_or(()),
                        }
                    }
                })
            })
            .collect();
        LoadLoop {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Successful responses so far.
    pub fn ok(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the loops; returns (successes, failures).
    pub async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        (self.ok.load(std::sync::atomic::Ordering::Relaxed), failures)
    }
}

/// A tokio-postgres client of the pooler on `port` (user postgres, database `db`).
pub async fn pg_client(port: u16, db: &str) -> tokio_postgres::Client {
    pg_client_with(port, db, "").await
}

/// [`pg_client`] with more connection parameters (`options='-c name=value'`).
#[allow(dead_code)] // not every test binary uses it
pub async fn pg_client_with(port: u16, db: &str, extra: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname={db} {extra}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("connect through the pooler: {e}"));
    tokio::spawn(conn);
    client
}

/// The first column of the one row `sql` returns (panics with the query on failure).
pub async fn pg_one<T>(c: &impl tokio_postgres::GenericClient, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A small deterministic generator (xorshift64*), so a failure replays.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Up to `max` random bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// One of `from`.
    pub fn pick<'a>(&mut self, from: &[&'a [u8]]) -> &'a [u8] {
        from[self.below(from.len())]
    }
}

/// A number from the environment variable `var` (a longer run by hand), or `default`.
pub fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Names the seed of a seeded test when it fails, so the run can be replayed: hold one for the
/// test's length (`let _replay = Replay("SG_CANCEL_SEED", seed);`).
pub struct Replay(pub &'static str, pub u64);

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("seeded test failed; replay with {}={}", self.0, self.1);
        }
    }
}

/// The sum of a metric's rows (every label set) in a Prometheus text page.
pub fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether `gw`'s /metrics comes to contain `needle` within 10 s (e.g. a reload's count).
pub async fn metrics_show(gw: &GatewayProcess, needle: &str) -> bool {
    eventually(std::time::Duration::from_secs(10), || async {
        gw.admin_get("/metrics").await.contains(needle)
    })
    .await
}

/// Gauges that count what requests hold right now; each must read zero once no request is in
/// flight. For `scalegate_upstream_connections` only the `state="active"` rows count, and for
/// `scalegate_pg_server_connections` only the active ones. A queued route's jobs count too
/// (waiting, in hand, paused): a test that sends traffic ends when every job it queued has been
/// delivered or given up.
const HELD: &[&str] = &[
    "scalegate_gateway_in_flight",
    "scalegate_http_in_flight",
    "scalegate_http_tunnels_open",
    "scalegate_upstream_endpoint_in_flight",
    "scalegate_upstream_endpoint_probes",
    "scalegate_bulkhead_in_flight",
    "scalegate_bulkhead_waiting",
    "scalegate_upstream_connections{state=\"active\"",
    "scalegate_pg_clients_waiting",
    "scalegate_pg_server_connections{state=\"active\"",
    "scalegate_pg_pinned_clients",
    "scalegate_queue_depth",
    "scalegate_queue_in_hand",
    "scalegate_queue_paused",
];

/// The rows of a Prometheus text page that count something still held (non-zero), by name.
pub fn held(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            HELD.iter().any(|h| match h.split_once('{') {
                // name{label="x"… : the name, then that label anywhere in the set
                Some((name, label)) => {
                    l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label)
                }
                None => l.starts_with(h) && l[h.len()..].starts_with(['{', ' ']),
            })
        })
        .filter(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v != 0.0)
        })
        .map(str::to_string)
        .collect()
}

/// The gateway is quiescent: every in-flight gauge, admission slot, bulkhead slot and waiter,
/// breaker probe slot, active upstream connection, active pooler server connection and queued
/// job is back to zero (waiting up to 10 s for responses that are still finishing). Panics with the rows
/// that stay non-zero. Every integration test that sends traffic ends with it.
pub async fn quiescent(gw: &GatewayProcess) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let still = held(&gw.admin_get("/metrics").await);
        if still.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway is not quiescent; still held: {still:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
