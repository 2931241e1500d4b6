//! Outages ridden through: a primary restarted under load (pgbench loses no client), a server
//! dying under a client (exactly one FATAL, retryable), idle server connections terminated
//! (replaced without the client noticing), a replica that refuses connections (reads fall back
//! at once), and two hosts claiming primary (writes go to the newer timeline).

mod common;
mod pg_common;

use std::time::Duration;

use common::*;
use pg_common::*;
use scalegate_testkit::PgServer;
use scalegate_testkit::postgres::psql;

#[tokio::test]
async fn a_primary_restart_under_pgbench_aborts_no_client() {
    let mut pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 10", "wait_timeout = \"30s\"").await;
    let init = pgbench(port, &["-i", "-q", "-s", "1"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "prepared"] {
        let load = tokio::task::spawn_blocking(move || {
            pgbench(
                port,
                &["-S", "-M", mode, "-c", "50", "-j", "2", "-T", "8", "-n"],
            )
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        pg.restart_fast().await;
        let out = load.await.expect("pgbench task");
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "-M {mode}: {text}{err}");
        assert!(
            !err.contains("aborted"),
            "-M {mode}: clients aborted: {err}"
        );
        assert!(
            text.contains("number of failed transactions: 0"),
            "-M {mode}: {text}"
        );
    }
    pooler_quiescent(&gw, port).await;
}

fn backends(pg: &PgServer) -> Vec<String> {
    let pids = pg.psql(
        "postgres",
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' \
         AND pid <> pg_backend_pid()",
    );
    pids.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn a_client_whose_server_dies_gets_exactly_one_retryable_fatal() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 2", "").await;
    let mut s = raw_login(port);
    query(&mut s, "BEGIN");
    read_until_ready(&mut s);
    for pid in backends(&pg) {
        pg.psql("postgres", &format!("SELECT pg_terminate_backend({pid})"));
    }
    query(&mut s, "SELECT 1");
    let got = read_until_ready(&mut s);
    let errors: Vec<String> = got
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("FATAL") && (errors[0].contains("57P01") || errors[0].contains("08006")),
        "{errors:?}"
    );
    // Everyone else goes on.
    let c = app_client(port).await;
    assert_eq!(pg_one::<i32>(&c, "SELECT 1").await, 1);
    drop(c);
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn idle_server_connections_terminated_are_replaced_without_the_client_noticing() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 2", "").await;
    let c = app_client(port).await;
    for i in 0..20i32 {
        assert_eq!(pg_one::<i32>(&c, &format!("SELECT {i}")).await, i);
        for pid in backends(&pg) {
            pg.psql("postgres", &format!("SELECT pg_terminate_backend({pid})"));
        }
        // At once, while the FATALs may still be on their way.
        let v = c.query_one(&format!("SELECT {i} + 1"), &[]).await;
        let v: i32 = v.unwrap_or_else(|e| panic!("round {i}: {e}")).get(0);
        assert_eq!(v, i + 1);
    }
    drop(c);
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn reads_fall_back_at_once_when_a_replica_refuses_connections() {
    let primary = PgServer::start().await;
    primary.psql("postgres", "CREATE TABLE one AS SELECT 1 AS x");
    let mut replica = PgServer::replica_of(&primary).await;
    let port = free_port();
    // A long health interval: the fallback must not wait for the monitor.
    let cfg = format!(
        "[postgres]\nlisten = \"127.0.0.1:{port}\"\n\
         [postgres.databases.app]\nprimary = \"postgres://postgres@127.0.0.1:{}/postgres\"\n\
         replicas = [\"postgres://postgres@127.0.0.1:{}/postgres\"]\nhealth_interval = \"30s\"\n",
        primary.port, replica.port
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let seen = eventually(Duration::from_secs(15), || async {
        psql(port, "postgres", "scalegate", "SHOW HOSTS").is_ok_and(|h| h.contains("|replica|"))
    })
    .await;
    assert!(seen, "the monitor never saw the replica");
    let c = app_client(port).await;
    let on: i32 = pg_one(&c, "SELECT inet_server_port() FROM one").await;
    assert_eq!(on, replica.port as i32, "reads go to the replica");
    drop(c);
    replica.kill();
    for i in 0..10 {
        let c = app_client(port).await;
        let on: i32 = c
            .query_one("SELECT inet_server_port() FROM one", &[])
            .await
            .unwrap_or_else(|e| panic!("read {i} after the replica stopped: {e}"))
            .get(0);
        assert_eq!(on, primary.port as i32);
    }
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn of_two_hosts_claiming_primary_a_fresh_pooler_writes_to_the_newer_timeline() {
    let old = PgServer::start().await;
    old.psql("postgres", "CREATE TABLE one AS SELECT 1 AS x");
    let new = PgServer::replica_of(&old).await;
    new.promote();
    // Both accept writes now; the promoted one is on timeline 2.
    let port = free_port();
    let cfg = format!(
        "[postgres]\nlisten = \"127.0.0.1:{port}\"\nwait_timeout = \"10s\"\n\
         [postgres.databases.app]\nprimary = \"postgres://postgres@127.0.0.1:{}/postgres\"\n\
         replicas = [\"postgres://postgres@127.0.0.1:{}/postgres\"]\nhealth_interval = \"200ms\"\n",
        old.port, new.port
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let c = app_client(port).await;
    for _ in 0..5 {
        let on: i32 = pg_one(&c, "SELECT inet_server_port() FROM one FOR UPDATE").await;
        assert_eq!(on, new.port as i32, "a write went to the stale primary");
    }
    drop(c);
    let hosts = psql(port, "postgres", "scalegate", "SHOW HOSTS").expect("hosts");
    assert!(
        hosts.contains(&format!("|{}|primary|", new.port)),
        "{hosts}"
    );
    pooler_quiescent(&gw, port).await;
}

/// Found from outside: a simple query that begins a transaction, writes and commits, on a
/// server that then dies, was taken for a read because its text starts with BEGIN, and was run
/// again on new servers: four rows for one INSERT. A batch that writes is never sent twice; the
/// client is told its server was lost.
#[tokio::test]
async fn a_batch_that_wrote_is_never_sent_again_when_its_server_dies() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 2", "").await;
    pg.psql("postgres", "CREATE TABLE dup (v int)");
    let batches = [
        "BEGIN; INSERT INTO dup VALUES (1); COMMIT; SELECT pg_terminate_backend(pg_backend_pid())",
        "START TRANSACTION; INSERT INTO dup VALUES (2); COMMIT; SELECT pg_terminate_backend(pg_backend_pid())",
        "/* scalegate:replica */ SELECT 1; INSERT INTO dup VALUES (3); COMMIT; SELECT pg_terminate_backend(pg_backend_pid())",
    ];
    for (i, sql) in batches.iter().enumerate() {
        let c = app_client(port).await;
        let e = c.simple_query(sql).await.expect_err("its server died");
        assert!(e.is_closed() || !sqlstate(&e).is_empty(), "{e:?}");
        let n = pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM dup WHERE v = {}", i + 1),
        );
        assert_eq!(n, "1", "rows written by one run of: {sql}");
    }
    pooler_quiescent(&gw, port).await;
}

/// The config of a pooler on `port` whose database `app` is on `pg` (`None`: only a database
/// `other`).
fn moved_config(port: u16, pg: Option<&PgServer>) -> String {
    let (name, pg_port) = pg.map_or(("other", 1), |pg| ("app", pg.port));
    format!(
        "[postgres]\nlisten = \"127.0.0.1:{port}\"\n\
         [postgres.databases.{name}]\nprimary = \"postgres://postgres@127.0.0.1:{pg_port}/postgres\"\n"
    )
}

#[tokio::test]
async fn a_reload_that_moves_the_database_moves_connected_clients_too() {
    // An operator moves `app` to a new primary by editing the config. Clients connected
    // before kept writing to the old host for as long as they stayed connected.
    let (old_pg, new_pg) = (PgServer::start().await, PgServer::start().await);
    let port = free_port();
    let gw = GatewayProcess::start(BIN, &moved_config(port, Some(&old_pg))).await;
    let before = app_client(port).await;
    let server_port = "SELECT inet_server_port()";
    let on = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default()
    };
    assert_eq!(
        on(before.simple_query(server_port).await.expect("before")),
        old_pg.port.to_string()
    );
    let plus_one = before.prepare("SELECT $1::int + 1").await.expect("prepare");
    assert_eq!(
        before
            .query_one(&plus_one, &[&1])
            .await
            .expect("bind")
            .get::<_, i32>(0),
        2
    );

    gw.write_config(&moved_config(port, Some(&new_pg)));
    gw.signal(libc::SIGHUP);
    let moved = eventually(Duration::from_secs(10), || async {
        psql(port, "postgres", "app", server_port).as_deref() == Ok(&new_pg.port.to_string())
    })
    .await;
    assert!(moved, "new clients never reached the new primary");
    // A client of the new pool prepares first, so its statement ids are not the old pool's.
    let after = app_client(port).await;
    let text = after
        .prepare("SELECT 'not plus one'")
        .await
        .expect("prepare");
    assert_eq!(
        after
            .query_one(&text, &[])
            .await
            .expect("run")
            .get::<_, &str>(0),
        "not plus one"
    );

    assert_eq!(
        on(before.simple_query(server_port).await.expect("after")),
        new_pg.port.to_string(),
        "a client connected before the reload still went to the old primary"
    );
    assert_eq!(
        before
            .query_one(&plus_one, &[&41])
            .await
            .expect("its statement on the new host")
            .get::<_, i32>(0),
        42
    );

    // A database removed from the config ends its clients with a clear error.
    gw.write_config(&moved_config(port, None));
    gw.signal(libc::SIGHUP);
    let removed = eventually(Duration::from_secs(10), || async {
        psql(port, "postgres", "app", "SELECT 1").is_err()
    })
    .await;
    assert!(removed, "the database was never removed");
    let e = before
        .simple_query("SELECT 1")
        .await
        .expect_err("no database any more");
    assert_eq!(sqlstate(&e), "3D000", "{e}");
    drop((before, after));
    pooler_empty(&gw, port).await;
}

#[tokio::test]
async fn a_read_whose_backend_is_killed_under_it_is_not_sent_again() {
    // The OOM killer (here: SIGKILL) ends the backend running a read. Each crash restarts the
    // whole cluster; the pooler re-sent the read three times: four cluster-wide restarts for
    // one query, where PostgreSQL alone (and PgBouncer) give one error and one crash.
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 2", "wait_timeout = \"30s\"").await;
    let pg_port = pg.port;
    let killer = tokio::task::spawn_blocking(move || {
        let mut killed = std::collections::HashSet::new();
        let until = std::time::Instant::now() + Duration::from_secs(8);
        while std::time::Instant::now() < until {
            let running = psql(
                pg_port,
                "postgres",
                "postgres",
                // Only the read itself: psql's own (earlier) sessions mention it too.
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' \
                 AND query LIKE 'SELECT /* deathquery */%' AND pid <> pg_backend_pid()",
            );
            for pid in running.unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>()
                    && killed.insert(pid)
                {
                    // SAFETY: kill(2) on a PostgreSQL backend this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        killed.len()
    });
    let c = app_client(port).await;
    let r = c
        .simple_query("SELECT /* deathquery */ pg_sleep(1.5)")
        .await;
    assert!(r.is_err(), "the read succeeded");
    let kills = killer.await.expect("killer");
    assert_eq!(
        kills,
        1,
        "the read was sent again to a new backend {} times",
        kills - 1
    );
    drop(c);
    let fresh = eventually(Duration::from_secs(20), || async {
        psql(port, "postgres", "app", "SELECT 1").as_deref() == Ok("1")
    })
    .await;
    assert!(fresh, "clients are served again once the cluster is back");
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn a_reload_that_changes_the_pool_mode_asks_connected_clients_to_reconnect() {
    // Transaction to session mode: a connected client moved to the session pool, released its
    // server there with its settings, and the next session client got them.
    let pg = PgServer::start().await;
    let port = free_port();
    let cfg = |mode: &str| {
        format!(
            "[postgres]\nlisten = \"127.0.0.1:{port}\"\n[postgres.databases.app]\nprimary = \"postgres://postgres@127.0.0.1:{}/postgres\"\npool_mode = \"{mode}\"\n",
            pg.port
        )
    };
    let gw = GatewayProcess::start(BIN, &cfg("transaction")).await;
    let a = app_client(port).await;
    a.simple_query("SET work_mem = '77MB'").await.expect("set");
    gw.write_config(&cfg("session"));
    gw.signal(libc::SIGHUP);
    // A reload is applied within milliseconds; the client's next transaction is told.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e = a
        .simple_query("SELECT 1")
        .await
        .expect_err("told to reconnect");
    assert_eq!(sqlstate(&e), "57P01", "{e}");
    let b = app_client(port).await;
    assert_eq!(pg_one::<String>(&b, "SHOW work_mem").await, "4MB");
    drop((a, b));
    pooler_empty(&gw, port).await;
}

/// Left alone in an earlier session: a reload that raised `pool_size` helped only the clients
/// that came after it; those already queued kept waiting in the replaced pool, behind the
/// old size, for a server to come back or for the wait timeout (here 60 s). They now wait
/// again in the new pool and are served at once.
#[tokio::test]
async fn a_reload_that_raises_pool_size_serves_the_clients_already_waiting() {
    let pg = PgServer::start().await;
    let port = free_port();
    let config = |size: u32| {
        format!(
            "[postgres]\nlisten = \"127.0.0.1:{port}\"\nwait_timeout = \"60s\"\n\
             [postgres.databases.app]\nprimary = \"postgres://postgres@127.0.0.1:{}/postgres\"\n\
             pool_size = {size}\n",
            pg.port
        )
    };
    let gw = GatewayProcess::start(BIN, &config(1)).await;
    let holder = app_client(port).await;
    holder.simple_query("BEGIN").await.expect("begin");
    let waiter = app_client(port).await;
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 1").await.is_ok() });
    let queued = one_waits(port).await;
    assert!(queued, "{}", console(port, "SHOW POOLS"));

    gw.write_config(&config(2));
    gw.signal(libc::SIGHUP);
    // The holder keeps its transaction open throughout: only the larger pool can serve.
    let served = tokio::time::timeout(Duration::from_secs(30), waiting).await;
    assert!(
        matches!(served, Ok(Ok(true))),
        "the queued client was not served by the larger pool: {served:?}"
    );
    holder.simple_query("COMMIT").await.expect("commit");
    drop(holder);
    pooler_quiescent(&gw, port).await;
}
