//! Read/write split, replica lag and failover against a real primary and a streaming replica
//! (pg_basebackup -R), through the pooler.

mod common;

use std::time::Duration;

use common::*;
use scalegate_testkit::PgServer;
use scalegate_testkit::postgres::psql;
use tokio_postgres::Client as PgClient;

async fn cluster() -> (PgServer, PgServer) {
    let primary = PgServer::start().await;
    primary.psql("postgres", "CREATE TABLE t (n int)");
    primary.psql("postgres", "CREATE TABLE one AS SELECT 1 AS x");
    let replica = PgServer::replica_of(&primary).await;
    (primary, replica)
}

async fn pooler(primary: &PgServer, replica: &PgServer, db_extra: &str) -> (GatewayProcess, u16) {
    let port = free_port();
    let cfg = format!(
        "[postgres]\nlisten = \"127.0.0.1:{port}\"\nwait_timeout = \"10s\"\n\
         [postgres.databases.app]\nprimary = \"postgres://postgres@127.0.0.1:{}/postgres\"\n\
         replicas = [\"postgres://postgres@127.0.0.1:{}/postgres\"]\nhealth_interval = \"100ms\"\n{db_extra}\n",
        primary.port, replica.port
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    // Reads go to the replica once the monitor has seen it.
    let seen = eventually(Duration::from_secs(15), || async {
        psql(port, "postgres", "scalegate", "SHOW HOSTS").is_ok_and(|h| h.contains("|replica|"))
    })
    .await;
    assert!(seen, "the monitor never saw the replica");
    (gw, port)
}

async fn client(port: u16) -> PgClient {
    pg_client(port, "app").await
}

async fn port_of(c: &impl tokio_postgres::GenericClient, sql: &str) -> i32 {
    pg_one(c, sql).await
}

#[tokio::test]
async fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let (primary, replica) = cluster().await;
    let (gw, port) = pooler(&primary, &replica, "").await;
    let (p, r) = (primary.port as i32, replica.port as i32);
    let c = client(port).await;
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, r);
    let in_recovery: bool = pg_one(&c, "SELECT pg_is_in_recovery()").await;
    assert!(in_recovery);
    assert_eq!(
        port_of(&c, "SELECT inet_server_port() FROM one FOR UPDATE").await,
        p
    );
    assert_eq!(
        port_of(&c, "/* scalegate:primary */ SELECT inet_server_port()").await,
        p
    );
    // A function not known to be read-only runs on the primary.
    assert_eq!(
        port_of(&c, "SELECT inet_server_port() WHERE txid_current() > 0").await,
        p
    );
    // A read-only transaction stays on a replica; a plain one on the primary.
    let mut c2 = client(port).await;
    let tx = c2
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .expect("begin read only");
    assert_eq!(port_of(&tx, "SELECT inet_server_port()").await, r);
    tx.commit().await.expect("commit");
    // A probe's finding: a serializable read-only transaction (SQLAlchemy's) went to the
    // replica, which refuses it ("cannot use serializable mode in a hot standby").
    let tx = c2
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::Serializable)
        .start()
        .await
        .expect("begin serializable read only");
    assert_eq!(port_of(&tx, "SELECT inet_server_port()").await, p);
    tx.commit().await.expect("commit");
    let tx = c2.transaction().await.expect("begin");
    tx.execute("INSERT INTO t VALUES (1)", &[])
        .await
        .expect("write in tx");
    assert_eq!(port_of(&tx, "SELECT inet_server_port()").await, p);
    tx.commit().await.expect("commit");
    let stats = psql(port, "postgres", "scalegate", "SHOW STATS").expect("stats");
    let replica_xacts: u64 = stats
        .split('|')
        .next_back()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(replica_xacts >= 3, "{stats}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_lagging_replica_gets_no_reads_and_clients_read_their_writes() {
    let (primary, replica) = cluster().await;
    let (gw, port) = pooler(&primary, &replica, "max_replica_lag_bytes = 1024").await;
    let (p, r) = (primary.port as i32, replica.port as i32);
    let writer = client(port).await;
    let reader = client(port).await;
    assert_eq!(port_of(&reader, "SELECT inet_server_port()").await, r);
    replica.psql("postgres", "SELECT pg_wal_replay_pause()");
    writer
        .execute("INSERT INTO t SELECT generate_series(1, 5000)", &[])
        .await
        .expect("write");
    // Read-your-writes: the writer's next read must see its rows although the replica has not
    // replayed them.
    let n: i64 = pg_one(&writer, "SELECT count(*) FROM t").await;
    assert_eq!(n, 5000, "the writer read its own write as missing");
    // The replica is now far behind: reads of other clients move to the primary.
    let moved = eventually(Duration::from_secs(10), || async {
        port_of(&reader, "SELECT inet_server_port()").await == p
    })
    .await;
    assert!(moved, "reads kept going to a replica beyond max lag");
    let hosts = psql(port, "postgres", "scalegate", "SHOW HOSTS").expect("hosts");
    assert!(hosts.contains("|replica|"), "{hosts}");
    let metrics = gw.admin_get("/metrics").await;
    let lag = metrics
        .lines()
        .find(|l| l.starts_with("scalegate_pg_replica_lag_bytes{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(lag > 1024, "replica lag in metrics: {lag}\n{metrics}");
    replica.psql("postgres", "SELECT pg_wal_replay_resume()");
    let back = eventually(Duration::from_secs(10), || async {
        port_of(&reader, "SELECT inet_server_port()").await == r
    })
    .await;
    assert!(back, "reads never returned to the caught-up replica");
    // Other clients get replica consistency: the rows arrive once replay has caught up.
    let seen = eventually(Duration::from_secs(10), || async {
        let n: i64 = reader
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        n == 5000
    })
    .await;
    assert!(seen, "the replica never showed the rows");
    quiescent(&gw).await;
}

#[tokio::test]
async fn failover_sends_writes_to_the_promoted_replica() {
    let (mut primary, replica) = cluster().await;
    let (gw, port) = pooler(&primary, &replica, "").await;
    let r = replica.port as i32;
    let c = client(port).await;
    c.execute("INSERT INTO t VALUES (1)", &[])
        .await
        .expect("write before");
    let in_flight = client(port).await;
    in_flight
        .batch_execute("BEGIN; INSERT INTO t VALUES (2)")
        .await
        .expect("open transaction");
    primary.kill();
    // The transaction on the dead server gets an error, not a hang.
    let e = tokio::time::timeout(Duration::from_secs(10), in_flight.batch_execute("COMMIT"))
        .await
        .expect("an answer, not a hang");
    assert!(e.is_err(), "commit on a dead primary must fail");
    replica.promote();
    let moved = eventually(Duration::from_secs(15), || async {
        let c = client(port).await;
        matches!(
            c.query_one("/* scalegate:primary */ SELECT inet_server_port()", &[]).await,
            Ok(row) if row.get::<_, i32>(0) == r
        )
    })
    .await;
    assert!(moved, "writes never moved to the promoted replica");
    let c = client(port).await;
    c.execute("INSERT INTO t VALUES (3)", &[])
        .await
        .expect("write after failover");
    let hosts = psql(port, "postgres", "scalegate", "SHOW HOSTS").expect("hosts");
    assert!(hosts.contains(&format!("|{r}|primary|")), "{hosts}");
    assert!(hosts.contains("|down|"), "{hosts}");
    quiescent(&gw).await;
}

/// Found from outside: writes that reached the replica and failed there ("cannot execute … in
/// a read-only transaction"): a routing hint matched inside a string the user sent, a function
/// called as a table in FROM, a row lock in a subquery. Each now runs on the primary.
#[tokio::test]
async fn writes_hidden_in_strings_subqueries_and_table_functions_go_to_the_primary() {
    let (primary, replica) = cluster().await;
    primary.psql(
        "postgres",
        "CREATE TABLE log (msg text); \
         CREATE FUNCTION addlog(m text) RETURNS SETOF log LANGUAGE sql AS \
         'INSERT INTO log VALUES (m) RETURNING *'",
    );
    let (gw, port) = pooler(&primary, &replica, "").await;
    let p = primary.port as i32;
    let c = client(port).await;
    c.simple_query("INSERT INTO log (msg) VALUES ('see scalegate:replica docs')")
        .await
        .expect("a write whose data names the hint");
    c.simple_query("SELECT * FROM addlog('x')")
        .await
        .expect("a function in FROM that writes");
    let locked = "SELECT inet_server_port() FROM (SELECT * FROM one FOR UPDATE) s";
    assert_eq!(port_of(&c, locked).await, p);
    let n = primary.psql("postgres", "SELECT count(*) FROM log");
    assert_eq!(n, "2");
    drop(c);
    quiescent(&gw).await;
}

/// A probe's finding (session 20): a read that leaves session state (asyncpg's type lookup
/// ran `set_config('jit', $1, false)` on a server with JIT, untracked then; here a computed
/// value, untracked still) pinned the client to the replica,
/// where every later write failed with 25006 for the life of the connection. Such a read now
/// runs on the primary. A client pinned to a replica by state made inside a read-only
/// transaction there is told why its write cannot run, and writes again once it lets go.
#[tokio::test]
async fn session_state_never_keeps_a_clients_writes_on_the_replica() {
    let (primary, replica) = cluster().await;
    let (gw, port) = pooler(&primary, &replica, "").await;
    let (p, r) = (primary.port as i32, replica.port as i32);
    let c = client(port).await;
    c.query(
        "SELECT set_config('application_name', $1 || '-x', false)",
        &[&"a"],
    )
    .await
    .expect("a setting made with a computed value");
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, p, "pinned");
    c.execute("INSERT INTO t VALUES (1)", &[])
        .await
        .expect("a write after the pin");

    let c2 = client(port).await;
    c2.batch_execute("BEGIN READ ONLY").await.expect("begin");
    assert_eq!(port_of(&c2, "SELECT inet_server_port()").await, r);
    c2.batch_execute("PREPARE pq AS SELECT 1")
        .await
        .expect("prepare");
    c2.batch_execute("COMMIT").await.expect("commit");
    let e = c2
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .expect_err("a write on the replica");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert!(db.message().contains("replica"), "{db:?}");
    c2.batch_execute("DEALLOCATE pq").await.expect("let go");
    c2.execute("INSERT INTO t VALUES (3)", &[])
        .await
        .expect("a write once the state is gone");
    assert_eq!(primary.psql("postgres", "SELECT count(*) FROM t"), "2");
    drop((c, c2));
    quiescent(&gw).await;
}

/// A probe's finding (session 20): with `default_transaction_isolation = serializable` (SET,
/// or a startup option) every read went to the standby, which refuses serializable
/// transactions (0A000), and the startup option could not even be applied there. Such a
/// client's transactions run on the primary.
#[tokio::test]
async fn a_client_serializable_by_default_reads_from_the_primary() {
    let (primary, replica) = cluster().await;
    let (gw, port) = pooler(&primary, &replica, "").await;
    let p = primary.port as i32;
    let c = client(port).await;
    c.batch_execute("SET default_transaction_isolation = 'serializable'")
        .await
        .expect("set");
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, p);
    let serializable = "options='-c default_transaction_isolation=serializable'";
    let c2 = pg_client_with(port, "app", serializable).await;
    assert_eq!(port_of(&c2, "SELECT inet_server_port()").await, p);
    let level: String = pg_one(&c2, "SHOW transaction_isolation").await;
    assert_eq!(level, "serializable");
    drop((c, c2));
    quiescent(&gw).await;
}
