//! The admin console: connect to the virtual database `scalegate` (or `pgbouncer`, so
//! existing tooling works) and run SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS,
//! SHOW DATABASES, SHOW HOSTS, SHOW CONFIG, SHOW VERSION, PAUSE, RESUME or RELOAD as simple
//! queries or through the extended protocol (`console_ext`), as drivers send them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::stream::ClientStream;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::failure::Failure;
use crate::login;
use crate::pooler::Pooler;
use crate::proto::{self, Severity, Startup};
use crate::spec::PoolMode;

/// Console logins that may be in progress at once.
const MAX_PENDING_LOGINS: usize = 64;

/// A console login in progress, until dropped.
struct PendingLogin(Arc<Pooler>);

impl PendingLogin {
    fn take(pooler: &Arc<Pooler>) -> Option<PendingLogin> {
        let before = pooler.console_logins.fetch_add(1, Relaxed);
        let pending = PendingLogin(pooler.clone());
        (before < MAX_PENDING_LOGINS).then_some(pending)
    }
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        self.0.console_logins.fetch_sub(1, Relaxed);
    }
}

/// Whether `database` names the console.
pub fn is_console(database: &str) -> bool {
    database == "scalegate" || database == "pgbouncer"
}

/// Serves one console session.
pub async fn run(
    pooler: Arc<Pooler>,
    mut stream: ClientStream,
    mut buf: BytesMut,
    peer: SocketAddr,
    startup: Startup,
) {
    let admin_users = pooler.spec().admin_users;
    let allowed = if admin_users.is_empty() {
        peer.ip().is_loopback()
    } else {
        admin_users.contains(&startup.user)
    };
    // Authenticated first (within the login timeout): who is an admin is not told to a
    // client that has not. Console logins are not under max_client_conn (an operator must
    // reach a full pooler), so those in progress have a bound of their own.
    let Some(_pending) = PendingLogin::take(&pooler) else {
        return Failure::TooMany(format!(
            "too many console logins in progress (at most {MAX_PENDING_LOGINS})"
        ))
        .send(&mut stream)
        .await;
    };
    let authed = tokio::time::timeout(
        login::LOGIN_TIMEOUT,
        login::authenticate(&mut stream, &mut buf, &pooler, &startup.user),
    )
    .await
    .unwrap_or_else(|_| Err(Failure::ConnectionLost("login timed out".into())));
    if let Err(r) = authed {
        return r.send(&mut stream).await;
    }
    drop(_pending);
    if !allowed {
        return Failure::Auth(
            "28000",
            format!(
                "user \"{}\" may not use the admin console (postgres.admin_users)",
                startup.user
            ),
        )
        .send(&mut stream)
        .await;
    }
    let mut out = BytesMut::new();
    proto::parameter_status(&mut out, "server_version", "15.0 (scalegate)");
    proto::parameter_status(&mut out, "client_encoding", "UTF8");
    proto::parameter_status(&mut out, "standard_conforming_strings", "on");
    proto::ready(&mut out, b'I');
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let mut extended = crate::console_ext::Extended::default();
    loop {
        let n = match proto::tagged_len(&buf, 1 << 20) {
            Ok(Some(n)) => n,
            Ok(None) => match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(e) => {
                let b = proto::error_bytes(Severity::Fatal, "08P01", &e.to_string());
                let _ = stream.write_all(&b).await;
                return;
            }
        };
        let msg = buf.split_to(n);
        out.clear();
        match msg[0] {
            b'X' => return,
            b'Q' => {
                let mut body = &msg[5..];
                let sql = proto::cstr(&mut body).unwrap_or_default();
                command(&pooler, &sql, &mut out).await;
                proto::ready(&mut out, b'I');
            }
            _ => extended.message(&pooler, &msg, &mut out).await,
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn table(out: &mut BytesMut, cols: &[&str], rows: Vec<Vec<String>>, tag: &str) {
    proto::row_description(out, cols);
    let n = rows.len();
    for r in rows {
        proto::data_row(out, &r);
    }
    proto::command_complete(out, &format!("{tag} {n}"));
}

/// A command's words, upper case.
fn words(sql: &str) -> Vec<String> {
    sql.trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect()
}

/// The columns a command answers with (None: it answers with a tag only, or is unknown).
pub(crate) fn columns_of(sql: &str) -> Option<&'static [&'static str]> {
    let words = words(sql);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    Some(match words.as_slice() {
        ["SHOW", "POOLS"] => POOL_COLS,
        ["SHOW", "STATS"] => STATS_COLS,
        ["SHOW", "CLIENTS"] => CLIENT_COLS,
        ["SHOW", "SERVERS"] => SERVER_COLS,
        ["SHOW", "DATABASES"] => DB_COLS,
        ["SHOW", "HOSTS"] => HOST_COLS,
        ["SHOW", "CONFIG"] => CONFIG_COLS,
        ["SHOW", "VERSION"] => &["version"],
        ["SHOW", "HELP"] | ["HELP"] => &["help"],
        _ => return None,
    })
}

/// Runs one console command, writing its answer (without ReadyForQuery) to `out`.
pub(crate) async fn command(pooler: &Pooler, sql: &str, out: &mut BytesMut) {
    let words = words(sql);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["SHOW", "POOLS"] => table(out, POOL_COLS, pool_rows(pooler), "SHOW"),
        ["SHOW", "STATS"] => table(out, STATS_COLS, stats_rows(pooler), "SHOW"),
        ["SHOW", "CLIENTS"] => table(out, CLIENT_COLS, client_rows(pooler), "SHOW"),
        ["SHOW", "SERVERS"] => table(out, SERVER_COLS, server_rows(pooler), "SHOW"),
        ["SHOW", "DATABASES"] => table(out, DB_COLS, db_rows(pooler), "SHOW"),
        ["SHOW", "HOSTS"] => table(out, HOST_COLS, host_rows(pooler), "SHOW"),
        ["SHOW", "CONFIG"] => table(out, CONFIG_COLS, config_rows(pooler), "SHOW"),
        ["SHOW", "VERSION"] => table(
            out,
            &["version"],
            vec![vec![format!("scalegate {}", env!("CARGO_PKG_VERSION"))]],
            "SHOW",
        ),
        ["PAUSE"] => {
            pooler.set_paused(true);
            // PAUSE returns once every server connection is back in its pool.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while pooler.active_servers() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            proto::command_complete(out, "PAUSE");
        }
        ["RESUME"] => {
            pooler.set_paused(false);
            proto::command_complete(out, "RESUME");
        }
        // Answered once the reload has run: success only when the new config is in force.
        ["RELOAD"] => match pooler.reload().await {
            Some(Ok(())) => proto::command_complete(out, "RELOAD"),
            Some(Err(why)) => proto::error(
                out,
                Severity::Error,
                "F0000",
                &format!("reload rejected, the previous config stays in force: {why}"),
            ),
            None => proto::error(
                out,
                Severity::Error,
                "55000",
                "this process does not reload its config (started without a config file)",
            ),
        },
        ["SHOW", "HELP"] | ["HELP"] => {
            let help = "SHOW POOLS|STATS|CLIENTS|SERVERS|DATABASES|HOSTS|CONFIG|VERSION; PAUSE; RESUME; RELOAD";
            table(out, &["help"], vec![vec![help.into()]], "SHOW");
        }
        _ => proto::error(
            out,
            Severity::Error,
            "42601",
            &format!("unknown admin command {sql:?}; try SHOW HELP"),
        ),
    }
}

const CONFIG_COLS: &[&str] = &["key", "value", "changeable"];

/// The `[postgres]` settings in force; `changeable` says whether a reload applies a change
/// (the listener and its threads need a restart).
fn config_rows(pooler: &Pooler) -> Vec<Vec<String>> {
    let s = pooler.spec();
    let dur = |d: Duration| format!("{}ms", d.as_millis());
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let rows = [
        ("listen", s.listen.to_string(), false),
        ("worker_threads", s.worker_threads.to_string(), false),
        ("max_client_conn", s.max_client_conn.to_string(), true),
        ("wait_timeout", dur(s.wait_timeout), true),
        ("server_lifetime", dur(s.server_lifetime), true),
        ("idle_timeout", dur(s.idle_timeout), true),
        ("check_after_idle", dur(s.check_after_idle), true),
        (
            "idle_transaction_timeout",
            s.idle_transaction_timeout.map_or_else(|| "off".into(), dur),
            true,
        ),
        ("max_message_bytes", s.max_message_bytes.to_string(), true),
        (
            "max_prepared_statements",
            s.max_prepared_statements.to_string(),
            true,
        ),
        ("tls", yes(s.tls.is_some()), true),
        ("tls_required", yes(s.tls_required), true),
        ("admin_users", s.admin_users.join(","), true),
        ("databases", s.databases.len().to_string(), true),
    ];
    rows.into_iter()
        .map(|(k, v, c)| vec![k.to_string(), v, yes(c)])
        .collect()
}

const POOL_COLS: &[&str] = &[
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "sv_active",
    "sv_idle",
    "sv_open",
    "maxwait_us",
    "pool_mode",
    "pool_size",
    "cl_pinned",
    "shard",
];

fn mode(m: PoolMode) -> String {
    match m {
        PoolMode::Session => "session".into(),
        PoolMode::Transaction => "transaction".into(),
    }
}

/// One row per pool: database, user, then what `rest` gives.
fn per_pool(pooler: &Pooler, rest: impl Fn(&crate::pool::Pool) -> Vec<String>) -> Vec<Vec<String>> {
    pooler
        .pools()
        .iter()
        .map(|p| {
            let mut row = vec![p.db.name.clone(), p.user.clone()];
            row.extend(rest(p));
            row
        })
        .collect()
}

/// One row per pool; a sharded database's pool has one row per shard, whose server columns
/// count that shard's connections (the client columns are the pool's).
fn pool_rows(pooler: &Pooler) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for p in pooler.pools().iter() {
        let s = &p.stats;
        let (clients, waiting) = (s.clients.load(Relaxed), s.waiting.load(Relaxed));
        let oldest_us = s.oldest_wait.oldest(std::time::Instant::now()).as_micros();
        let row = |active: usize, idle: usize, open: usize, shard: String| {
            vec![
                p.db.name.clone(),
                p.user.clone(),
                // PgBouncer's cl_active: clients not waiting for a server.
                clients.saturating_sub(waiting).to_string(),
                waiting.to_string(),
                active.to_string(),
                idle.to_string(),
                open.to_string(),
                oldest_us.to_string(),
                mode(p.mode()),
                p.db.pool_size.to_string(),
                s.pinned.load(Relaxed).to_string(),
                shard,
            ]
        };
        if p.db.sharding.is_some() {
            for shard in 0..p.topology.hosts.len() {
                let (active, idle) = p.host_usage(shard);
                rows.push(row(active, idle, active + idle, shard.to_string()));
            }
        } else {
            let (active, open) = (s.active.load(Relaxed), s.open.load(Relaxed));
            rows.push(row(active, p.idle_count(), open, String::new()));
        }
    }
    rows
}

const STATS_COLS: &[&str] = &[
    "database",
    "user",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_wait_time_us",
    "wait_timeouts",
    "replica_xact_count",
];

fn stats_rows(pooler: &Pooler) -> Vec<Vec<String>> {
    per_pool(pooler, |p| {
        let s = &p.stats;
        vec![
            s.xacts.load(Relaxed).to_string(),
            s.queries.load(Relaxed).to_string(),
            s.bytes_in.load(Relaxed).to_string(),
            s.bytes_out.load(Relaxed).to_string(),
            s.wait_us.load(Relaxed).to_string(),
            s.wait_timeouts.load(Relaxed).to_string(),
            s.replica_xacts.load(Relaxed).to_string(),
        ]
    })
}

const CLIENT_COLS: &[&str] = &[
    "user",
    "database",
    "addr",
    "connected_s",
    "server_id",
    "pinned",
];

fn client_rows(pooler: &Pooler) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = pooler
        .clients()
        .iter()
        .map(|c| {
            let server = c.server.lock().ok().and_then(|s| *s);
            vec![
                c.user.clone(),
                c.database.clone(),
                c.addr.to_string(),
                c.since.elapsed().as_secs().to_string(),
                server.map(|(id, _)| id.to_string()).unwrap_or_default(),
                crate::effects::state::names(c.pinned.load(Relaxed)),
            ]
        })
        .collect();
    rows.sort();
    rows
}

const SERVER_COLS: &[&str] = &[
    "server_id",
    "database",
    "user",
    "addr",
    "backend_pid",
    "state",
];

/// Server connections: those clients hold (active), then those waiting in pools (idle).
fn server_rows(pooler: &Pooler) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for c in pooler.clients() {
        if let Some((id, key)) = c.server.lock().ok().and_then(|s| *s) {
            rows.push(vec![
                id.to_string(),
                c.database.clone(),
                c.user.clone(),
                key.addr.to_string(),
                key.pid.to_string(),
                "active".into(),
            ]);
        }
    }
    for p in pooler.pools() {
        for (id, key, _) in p.idle_servers() {
            rows.push(vec![
                id.to_string(),
                p.db.name.clone(),
                p.user.clone(),
                key.addr.to_string(),
                key.pid.to_string(),
                "idle".into(),
            ]);
        }
    }
    rows.sort_by_key(|r| r[0].parse::<u64>().unwrap_or(0));
    rows
}

const DB_COLS: &[&str] = &[
    "name",
    "host",
    "port",
    "database",
    "pool_mode",
    "pool_size",
    "replicas",
];

fn db_rows(pooler: &Pooler) -> Vec<Vec<String>> {
    pooler
        .databases()
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.primary.host.clone(),
                d.primary.port.to_string(),
                d.primary.dbname.clone(),
                mode(d.pool_mode),
                d.pool_size.to_string(),
                d.replicas.len().to_string(),
            ]
        })
        .collect()
}

const HOST_COLS: &[&str] = &[
    "database",
    "shard",
    "host",
    "port",
    "role",
    "lsn",
    "lag_bytes",
    "lag_ms",
    "outstanding",
    "xacts",
];

fn host_rows(pooler: &Pooler) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for d in pooler.databases() {
        let Some(t) = pooler.topology(&d.name) else {
            continue;
        };
        for (i, h) in t.hosts.iter().enumerate() {
            let shard = if d.sharding.is_some() {
                i.to_string()
            } else {
                String::new()
            };
            rows.push(vec![
                d.name.clone(),
                shard,
                h.spec.host.clone(),
                h.spec.port.to_string(),
                h.role().name().to_string(),
                h.lsn.load(Relaxed).to_string(),
                h.lag_bytes.load(Relaxed).to_string(),
                h.lag_ms.load(Relaxed).to_string(),
                h.outstanding.load(Relaxed).to_string(),
                h.xacts.load(Relaxed).to_string(),
            ]);
        }
    }
    rows
}
