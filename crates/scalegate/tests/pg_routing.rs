//! Read/write split, replica lag and failover against a real primary and a streaming replica
//! (pg_basebackup -R), through the pooler.

mod common;
mod pg_common;

use std::io::Write;
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

/// `count` statements `sql` (padded with a comment to about 16 KiB each) as Parse, Bind and
/// Execute of the unnamed statement, each followed by `end` (nothing, or a Sync).
fn padded_statements(sql: &str, count: usize, end: &[u8]) -> Vec<Vec<u8>> {
    use pg_common::{bind, execute, parse};
    let padded = format!("{sql} /* {} */", "x".repeat(16_000));
    let one = [parse("", &padded), bind(""), execute(0), end.to_vec()].concat();
    vec![one; count]
}

/// The first column of every DataRow in `messages`, as text.
fn row_values(messages: &[(u8, Vec<u8>)]) -> Vec<String> {
    messages
        .iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, row)| String::from_utf8_lossy(row.get(6..).unwrap_or_default()).into_owned())
        .collect()
}

/// Writes `messages` on a clone of `s` from a thread while this one reads the answers up to
/// the `last` ReadyForQuery; returns them and the pooler's peak resident memory meanwhile.
fn exchange(
    s: &mut std::net::TcpStream,
    messages: Vec<Vec<u8>>,
    readies: usize,
    pid: u32,
) -> (Vec<(u8, Vec<u8>)>, u64) {
    let mut w = s.try_clone().expect("clone");
    pg_common::peak_rss_while(pid, || {
        let writer = std::thread::spawn(move || {
            for m in &messages {
                w.write_all(m).expect("write");
            }
        });
        let mut got = Vec::new();
        for _ in 0..readies {
            got.extend(pg_common::read_until_ready(s));
        }
        writer.join().expect("writer");
        got
    })
}

/// A probe's finding (session 24): with replicas listed, the pooler held a client's batch
/// until its end (Sync) to choose primary or replica. 300 MB of Parse/Bind/Execute without a
/// Sync were held whole (316 MB resident, 8 s of CPU scanning it again at every read): one
/// client could take the pooler's memory. Past 1 MiB such a batch now goes to the primary as
/// it stands (the rest may write), and its answers stream back.
#[tokio::test]
async fn a_long_batch_without_sync_is_not_held_to_route_it() {
    let (primary, replica) = cluster().await;
    let (gw, port) = pooler(&primary, &replica, "").await;
    let pid = gw.pid().expect("pid");
    let mut s = pg_common::raw_login(port);
    let before = pg_common::rss_mib(pid);
    let mut batch = padded_statements("SELECT inet_server_port()", 2_000, b"");
    batch.push(pg_common::sync());
    let (got, peak) = exchange(&mut s, batch, 1, pid);
    let ports = row_values(&got);
    assert_eq!(
        ports.len(),
        2_000,
        "{:?}",
        &got[got.len().saturating_sub(3)..]
    );
    assert!(
        ports.iter().all(|p| *p == primary.port.to_string()),
        "ran on {:?}",
        ports.first()
    );
    // 32 MB were sent: before, all of them were held.
    assert!(
        peak < before + 16,
        "{peak} MiB resident, {before} MiB before"
    );
    drop(s);
    quiescent(&gw).await;
}

/// A probe's finding (session 24): a client pipelining batches faster than the server answered
/// them had every one held by the pooler (a routed session sends one batch at a time, each to
/// where it belongs), however many. Past 1 MiB the pooler now reads no more until the server
/// answers, as PostgreSQL reads no more while it works; the kernel's buffers hold the rest.
#[tokio::test]
async fn pipelined_batches_wait_in_the_socket_while_the_server_answers() {
    let (primary, replica) = cluster().await;
    let (gw, port) = pooler(&primary, &replica, "").await;
    let pid = gw.pid().expect("pid");
    let mut s = pg_common::raw_login(port);
    let before = pg_common::rss_mib(pid);
    let batches = padded_statements("SELECT inet_server_port()", 2_000, &pg_common::sync());
    let (got, peak) = exchange(&mut s, batches, 2_000, pid);
    let ports = row_values(&got);
    assert_eq!(ports.len(), 2_000);
    // Reads still go to the replica, one batch at a time.
    assert!(ports.iter().all(|p| *p == replica.port.to_string()));
    assert!(
        peak < before + 16,
        "{peak} MiB resident, {before} MiB before"
    );
    drop(s);
    quiescent(&gw).await;
}

/// Kills the primary of a pooler's cluster and waits until the pooler's monitor has seen it.
async fn primary_down(primary: &mut PgServer, port: u16) {
    primary.kill();
    let seen = eventually(Duration::from_secs(15), || async {
        psql(port, "postgres", "scalegate", "SHOW HOSTS").is_ok_and(|h| h.contains("|down|"))
    })
    .await;
    assert!(seen, "the monitor never saw the primary down");
}

/// A probe's finding (session 24): with the primary down, a client that had only read (from
/// the replica) and sent Terminate was never let go: the pooler took a server connection for
/// the Terminate, waited for a primary, answered 57P03 and tried again. asyncpg's close() waits
/// for the server to close and hung with it, for good. A Terminate with no server held now
/// ends the session at once.
#[tokio::test]
async fn a_client_leaving_while_the_primary_is_down_is_let_go() {
    let (mut primary, replica) = cluster().await;
    let (gw, port) = pooler(&primary, &replica, "").await;
    let mut s = pg_common::raw_login(port);
    primary_down(&mut primary, port).await;
    pg_common::query(&mut s, "SELECT inet_server_port()");
    let got = pg_common::read_until_ready(&mut s);
    assert_eq!(row_values(&got), vec![replica.port.to_string()], "{got:?}");
    s.write_all(&pg_common::pg_message(b'X', &[]))
        .expect("terminate");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut byte = [0u8; 1];
    let end = std::io::Read::read(&mut s, &mut byte);
    assert!(matches!(end, Ok(0)), "closed, not {end:?} ({byte:?})");
    drop(s);
    quiescent(&gw).await;
}

/// A probe's finding (session 24): with the primary down, the first client of a database and
/// user (every application instance's first pool connection after a restart of the pooler)
/// waited `wait_timeout` and got FATAL 57P03, although its reads could be served: the pooler
/// learned the server's parameters from the primary only. A replica now tells them, and what
/// it tells is a primary's (`in_hot_standby` off: writes are taken, they wait for a primary).
#[tokio::test]
async fn a_first_login_while_the_primary_is_down_is_served_by_a_replica() {
    let (mut primary, replica) = cluster().await;
    let (gw, port) = pooler(&primary, &replica, "").await;
    primary_down(&mut primary, port).await;
    let (mut s, login) = pg_common::raw_startup(port);
    assert_eq!(login.last().map(|m| m.0), Some(b'Z'), "{login:?}");
    let standby = login
        .iter()
        .find(|(tag, body)| *tag == b'S' && body.starts_with(b"in_hot_standby\0"));
    assert_eq!(
        standby.map(|(_, body)| body.as_slice()),
        Some(&b"in_hot_standby\0off\0"[..])
    );
    pg_common::query(&mut s, "SELECT inet_server_port()");
    let got = pg_common::read_until_ready(&mut s);
    assert_eq!(row_values(&got), vec![replica.port.to_string()], "{got:?}");
    drop(s);
    quiescent(&gw).await;
}

/// A probe's finding (session 24): with the primary down, every asyncpg pool release waited
/// `wait_timeout` and failed with 57P03, and asyncpg dropped the connection: its reset query
/// (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) called a function not
/// known to be read-only, so it went to the primary. A session reset runs on a replica now
/// (a client holding a lock or a listen is pinned to its server, never routed).
#[tokio::test]
async fn a_session_reset_runs_while_the_primary_is_down() {
    let (mut primary, replica) = cluster().await;
    let (gw, port) = pooler(&primary, &replica, "").await;
    let mut s = pg_common::raw_login(port);
    primary_down(&mut primary, port).await;
    let reset = "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;";
    pg_common::query(&mut s, reset);
    let got = pg_common::read_until_ready(&mut s);
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"TDCCCCZ".to_vec(), "{got:?}");
    drop(s);
    quiescent(&gw).await;
}

/// The value of ParameterStatus `name` in a login's messages.
fn parameter(login: &[(u8, Vec<u8>)], name: &str) -> Option<String> {
    login.iter().find_map(|(tag, body)| {
        let mut parts = body.split(|b| *b == 0);
        (*tag == b'S' && parts.next() == Some(name.as_bytes()))
            .then(|| String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned())
    })
}

/// The regression hunt's finding (session 24) in the fix above: parameters learned from a
/// replica during an outage were kept for the pool's life, so a replica's
/// `default_transaction_read_only = on` was every later client's too, and libpq's
/// `target_session_attrs=read-write` refused the pooler after the primary was back. A
/// replica's parameters now serve the logins of the outage only.
#[tokio::test]
async fn a_replicas_parameters_are_not_kept_once_the_primary_is_back() {
    let mut primary = PgServer::start().await;
    primary.psql("postgres", "CREATE TABLE t (n int)");
    // The replica copies the setting from the primary's auto.conf; the primary never loads it.
    primary.psql(
        "postgres",
        "ALTER SYSTEM SET default_transaction_read_only = on",
    );
    let replica = PgServer::replica_of(&primary).await;
    primary.psql(
        "postgres",
        "ALTER SYSTEM RESET default_transaction_read_only",
    );
    let (gw, port) = pooler(&primary, &replica, "").await;
    primary_down(&mut primary, port).await;
    let (_, during) = pg_common::raw_startup(port);
    assert_eq!(
        parameter(&during, "default_transaction_read_only").as_deref(),
        Some("on")
    );
    primary.restart_fast().await;
    let back = eventually(Duration::from_secs(15), || async {
        psql(port, "postgres", "scalegate", "SHOW HOSTS")
            .is_ok_and(|h| h.contains(&format!("|{}|primary|", primary.port)))
    })
    .await;
    assert!(back, "the monitor never saw the primary back");
    let (_, after) = pg_common::raw_startup(port);
    assert_eq!(
        parameter(&after, "default_transaction_read_only").as_deref(),
        Some("off")
    );
    quiescent(&gw).await;
}

/// The regression hunt's finding (session 24): a database whose one host is a hot standby (a
/// reporting pool) was reported `in_hot_standby = off`, so libpq's
/// `target_session_attrs=standby` refused it and `read-write` accepted it. Only a replica of a
/// split database stands in for its primary.
#[tokio::test]
async fn a_standby_alone_is_reported_as_one() {
    let (primary, replica) = cluster().await;
    let port = free_port();
    let cfg = format!(
        "[postgres]\nlisten = \"127.0.0.1:{port}\"\n\
         [postgres.databases.app]\nprimary = \"postgres://postgres@127.0.0.1:{}/postgres\"\n",
        replica.port
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let (_, login) = pg_common::raw_startup(port);
    assert_eq!(
        parameter(&login, "in_hot_standby").as_deref(),
        Some("on"),
        "{login:?}"
    );
    drop(primary);
    quiescent(&gw).await;
}
