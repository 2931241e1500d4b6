//! Helpers shared by the pooler's test files (included with `mod pg_common;` next to `mod
//! common;`): a gateway pooling one PostgreSQL database, clients of it, the console.
#![allow(dead_code)]

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
