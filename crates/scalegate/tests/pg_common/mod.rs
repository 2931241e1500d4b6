//! Helpers shared by the pooler's test files (included with `mod pg_common;` next to `mod
//! common;`): a gateway pooling one PostgreSQL database, clients of it, the console.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

use scalegate_testkit::postgres::psql;
use scalegate_testkit::{GatewayProcess, PgServer, eventually, free_port};

/// A gateway whose `[postgres]` pools database `app` of `pg` (`db_extra` goes into that
/// database's table, `extra` into `[postgres]`); returns it and the pooler's port.
pub async fn pooler(
    bin: &str,
    pg: &PgServer,
    db_extra: &str,
    extra: &str,
) -> (GatewayProcess, u16) {
    let port = free_port();
    let cfg = format!(
        "[postgres]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n\
         [postgres.databases.app]\nprimary = \"postgres://postgres@127.0.0.1:{}/postgres\"\n{db_extra}\n",
        pg.port
    );
    (GatewayProcess::start(bin, &cfg).await, port)
}

/// A tokio-postgres client of database `app` through the pooler.
pub async fn app_client(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("connect through the pooler: {e}"));
    tokio::spawn(conn);
    client
}

/// The SQLSTATE of an error ("" when it has none).
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// A console command's rows (unaligned psql output) .
pub fn console(port: u16, cmd: &str) -> String {
    psql(port, "postgres", "scalegate", cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// Waits (bounded) until no server connection of the pooler is handed out, no client waits
/// and none is pinned (SHOW POOLS), and the whole gateway is quiescent (`common::quiescent`):
/// every count taken was given back.
pub async fn pooler_quiescent(gw: &GatewayProcess, port: u16) {
    pooler_settles(gw, port, false).await;
}

/// [`pooler_quiescent`], and every client has left too (`cl_active` 0): for a test that has
/// closed all its clients, so that none is still counted after its socket went away.
pub async fn pooler_empty(gw: &GatewayProcess, port: u16) {
    pooler_settles(gw, port, true).await;
}

async fn pooler_settles(gw: &GatewayProcess, port: u16, clients_gone: bool) {
    crate::common::quiescent(gw).await;
    let ok = eventually(Duration::from_secs(10), || async {
        let pools = console(port, "SHOW POOLS");
        // database|user|cl_active|cl_waiting|sv_active|sv_idle|sv_open|maxwait|mode|size|cl_pinned
        pools.lines().all(|l| {
            let f: Vec<&str> = l.split('|').collect();
            f.len() >= 11
                && (!clients_gone || f[2] == "0")
                && f[3] == "0"
                && f[4] == "0"
                && f[10] == "0"
        })
    })
    .await;
    assert!(ok, "pooler not quiescent: {}", console(port, "SHOW POOLS"));
}

/// A raw protocol client: startup for database `app`, read to the first ReadyForQuery.
pub fn raw_login(port: u16) -> std::net::TcpStream {
    raw_startup(port).0
}

/// A raw protocol client's startup for database `app`, and what the pooler answered up to
/// the first ReadyForQuery (or the end of the connection; reads wait up to 30 s).
pub fn raw_startup(port: u16) -> (std::net::TcpStream, Vec<(u8, Vec<u8>)>) {
    raw_startup_with(port, &[])
}

/// [`raw_startup`] with more startup parameters.
pub fn raw_startup_with(
    port: u16,
    params: &[(&str, &str)],
) -> (std::net::TcpStream, Vec<(u8, Vec<u8>)>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut body = 196_608i32.to_be_bytes().to_vec();
    let fixed = [("user", "postgres"), ("database", "app")];
    for (k, v) in fixed.iter().chain(params) {
        for part in [k, v] {
            body.extend(part.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    p.extend(body);
    s.write_all(&p).expect("startup");
    let login = read_until_ready(&mut s);
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    (s, login)
}

/// A simple-protocol Query message.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend(((sql.len() + 5) as i32).to_be_bytes());
    m.extend(sql.as_bytes());
    m.push(0);
    m
}

/// Sends `sql` as a simple query.
pub fn query(s: &mut std::net::TcpStream, sql: &str) {
    s.write_all(&query_message(sql)).expect("query");
}

/// Messages (tag, body) until a ReadyForQuery or the end of the connection.
pub fn read_until_ready(s: &mut std::net::TcpStream) -> Vec<(u8, Vec<u8>)> {
    read_until(s, b'Z')
}

/// Messages (tag, body) up to and including the first tagged `last`, or to the end of the
/// connection.
pub fn read_until(s: &mut std::net::TcpStream, last: u8) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if s.read_exact(&mut head).is_err() {
            return out;
        }
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        if s.read_exact(&mut body).is_err() {
            return out;
        }
        out.push((head[0], body));
        if head[0] == last {
            return out;
        }
    }
}

/// A frontend message: `tag`, its length, `parts` in a row.
pub fn pg_message(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    let mut m = vec![tag];
    m.extend(((body.len() + 4) as i32).to_be_bytes());
    m.extend(body);
    m
}

/// Parse of statement `name` (no parameter types).
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    pg_message(
        b'P',
        &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0", &[0, 0]],
    )
}

/// Bind of the unnamed portal to `statement`, no parameters.
pub fn bind(statement: &str) -> Vec<u8> {
    pg_message(b'B', &[b"\0", statement.as_bytes(), b"\0", &[0; 6]])
}

/// Execute of the unnamed portal, at most `rows` rows (0: all).
pub fn execute(rows: i32) -> Vec<u8> {
    pg_message(b'E', &[b"\0", &rows.to_be_bytes()])
}

/// Flush.
pub fn flush() -> Vec<u8> {
    pg_message(b'H', &[])
}

/// Sync.
pub fn sync() -> Vec<u8> {
    pg_message(b'S', &[])
}

/// psql (without ~/.psqlrc) connected to database `app` of the pooler on `port` as postgres;
/// add the command (`-c`, `-f`) and run it.
pub fn psql_app(port: u16) -> std::process::Command {
    let mut c = std::process::Command::new(scalegate_testkit::postgres::bin_dir().join("psql"));
    c.args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "app"]);
    c
}

/// Waits (up to 10 s) until a client of the pooler on `port` waits for a server
/// (`cl_waiting` 1 in `SHOW POOLS`); false if none ever does.
pub async fn one_waits(port: u16) -> bool {
    eventually(Duration::from_secs(10), || async {
        // database|user|cl_active|cl_waiting|…
        console(port, "SHOW POOLS")
            .lines()
            .any(|l| l.split('|').nth(3) == Some("1"))
    })
    .await
}

/// Runs pgbench against database `app` of the pooler on `port` as postgres, with `args`.
pub fn pgbench(port: u16, args: &[&str]) -> std::process::Output {
    std::process::Command::new(scalegate_testkit::postgres::bin_dir().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("app")
        .output()
        .expect("pgbench")
}

/// The resident memory of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// What `work` returns, and the highest resident memory of process `pid` (MiB) seen while it
/// ran, sampled every 5 ms.
pub fn peak_rss_while<T>(pid: u32, work: impl FnOnce() -> T) -> (T, u64) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = rss_mib(pid);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss_mib(pid));
            std::thread::sleep(Duration::from_millis(5));
        }
        peak.max(rss_mib(pid))
    });
    let out = work();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, sampler.join().unwrap_or(0))
}
