//! Session state in transaction mode, with pool_size 1 so every client lands on the same server
//! connection: DEALLOCATE / DISCARD from one client never break another's prepared statements,
//! and state that outlives a transaction (LISTEN, WITH HOLD cursors, advisory locks, SQL
//! PREPARE, TEMP tables, set_config) is pinned or refused on every protocol path — never seen
//! by the next client.

mod common;
mod pg_common;

use std::time::Duration;

use common::*;
use pg_common::*;
use scalegate_testkit::PgServer;
use tokio_postgres::Client;

async fn one_server(mode: &str) -> (PgServer, GatewayProcess, u16) {
    let pg = PgServer::start().await;
    let db = format!("pool_size = 1\non_session_state = \"{mode}\"");
    let (gw, port) = pooler(BIN, &pg, &db, "wait_timeout = \"10s\"").await;
    (pg, gw, port)
}

/// A pooler of one server connection of `pg` in pool mode `mode`.
async fn one_server_in(pg: &PgServer, mode: &str) -> (GatewayProcess, u16) {
    let db = format!("pool_size = 1\npool_mode = \"{mode}\"");
    pooler(BIN, pg, &db, "wait_timeout = \"10s\"").await
}

async fn int(c: &Client, sql: &str) -> i64 {
    pg_one::<i64>(c, sql).await
}

#[tokio::test]
async fn deallocate_and_discard_never_break_another_clients_prepared_statements() {
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    let b = app_client(port).await;
    let stmt = a.prepare("SELECT $1::int8 + 1").await.expect("prepare");
    let mine = b.prepare("SELECT $1::int8 * 2").await.expect("prepare");
    let run = |n: i64| {
        let (a, stmt) = (&a, &stmt);
        async move {
            let row = a.query_one(stmt, &[&n]).await;
            row.unwrap_or_else(|e| panic!("A's statement after B's {n}: {e}"))
                .get::<_, i64>(0)
        }
    };
    assert_eq!(run(1).await, 2);
    let forgetting = [
        "DEALLOCATE ALL",
        "/* psycopg */ deallocate all",
        "-- x\nDEALLOCATE PREPARE ALL;",
        "SELECT 1; DEALLOCATE ALL",
        "DISCARD ALL",
        "DISCARD PLANS",
        "RESET ALL",
    ];
    for (i, sql) in forgetting.iter().enumerate() {
        b.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(run(i as i64 * 10).await, i as i64 * 10 + 1, "after {sql}");
    }
    // Through the extended protocol, as a named statement (tokio-postgres prepares it).
    b.execute("DEALLOCATE ALL", &[])
        .await
        .expect("extended DEALLOCATE ALL");
    assert_eq!(run(100).await, 101);
    // B's own statements are gone for B, as on a real server.
    let e = b.query_one(&mine, &[&1i64]).await.expect_err("deallocated");
    assert_eq!(sqlstate(&e), "26000", "{e:?}");
    // DEALLOCATE of a name B never prepared is the server's 26000.
    let e = b
        .simple_query("DEALLOCATE nosuch")
        .await
        .expect_err("unknown");
    assert_eq!(sqlstate(&e), "26000", "{e:?}");
    assert_eq!(run(7).await, 8);
    drop((a, b));
    pooler_quiescent(&gw, port).await;
    drop(gw);
}

/// Runs `check` as client B while client A holds session state; with pool_size 1 and pinning, B
/// waits until A disconnects and then finds none of A's state.
async fn pinned_until_a_leaves<F, Fut>(port: u16, a: Client, check: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let pinned = console(port, "SHOW CLIENTS");
    assert!(
        pinned
            .lines()
            .any(|l| !l.ends_with('|') && l.split('|').count() == 6),
        "A shows as pinned: {pinned}"
    );
    let b = app_client(port).await;
    let task = tokio::spawn(check(b));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!task.is_finished(), "B got A's pinned server connection");
    drop(a);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("B is served once A leaves")
        .expect("B's checks");
}

#[tokio::test]
async fn listen_is_pinned_in_every_spelling_and_never_heard_by_the_next_client() {
    let (_pg, gw, port) = one_server("pin").await;
    for sql in ["/* c */ LISTEN x", "SELECT 1; LISTEN x", "listen x"] {
        let a = app_client(port).await;
        a.simple_query(sql).await.expect("listen");
        pinned_until_a_leaves(port, a, |b| async move {
            assert_eq!(
                int(&b, "SELECT count(*) FROM pg_listening_channels()").await,
                0
            );
        })
        .await;
    }
    // Extended protocol.
    let a = app_client(port).await;
    a.execute("LISTEN x", &[]).await.expect("listen");
    pinned_until_a_leaves(port, a, |b| async move {
        assert_eq!(
            int(&b, "SELECT count(*) FROM pg_listening_channels()").await,
            0
        );
    })
    .await;
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn hold_cursors_sql_prepare_and_temp_tables_are_pinned_then_cleaned() {
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    a.execute(
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1 FROM generate_series(1, 3)",
        &[],
    )
    .await
    .expect("declare");
    a.simple_query("PREPARE p AS SELECT 1")
        .await
        .expect("prepare");
    a.simple_query("CREATE TEMP TABLE tt AS SELECT 1 AS x")
        .await
        .expect("temp");
    // A keeps all of it across transactions.
    assert_eq!(int(&a, "SELECT count(*) FROM tt").await, 1);
    let fetched = a.simple_query("FETCH 2 FROM c").await.expect("fetch");
    assert_eq!(
        fetched
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        2
    );
    pinned_until_a_leaves(port, a, |b| async move {
        assert_eq!(
            int(&b, "SELECT count(*) FROM pg_cursors WHERE is_holdable").await,
            0
        );
        assert_eq!(
            int(
                &b,
                "SELECT count(*) FROM pg_prepared_statements WHERE from_sql"
            )
            .await,
            0
        );
        // B's own PREPARE of the same name works (A's did not survive).
        b.simple_query("PREPARE p AS SELECT 2")
            .await
            .expect("B's prepare");
        let v = b.simple_query("EXECUTE p").await.expect("execute");
        assert!(
            matches!(&v[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("2"))
        );
        let tt: Option<String> = pg_one(&b, "SELECT to_regclass('pg_temp.tt')::text").await;
        assert_eq!(tt, None, "A's temp table is gone");
    })
    .await;
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn an_advisory_lock_taken_through_parse_keeps_mutual_exclusion() {
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    // Parse/Bind/Execute with a parameter, as asyncpg, JDBC and node-postgres send it.
    a.query_one("SELECT pg_advisory_lock($1)", &[&42i64])
        .await
        .expect("lock");
    pinned_until_a_leaves(port, a, |b| async move {
        // A left: its lock went with it; B takes it for itself.
        let got: bool = pg_one(&b, "SELECT pg_try_advisory_lock(42)").await;
        assert!(got);
        let held = int(
            &b,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )
        .await;
        assert_eq!(held, 1, "only B's own lock");
    })
    .await;
    pooler_quiescent(&gw, port).await;
}

/// A probe's finding (session 24): a `pg_try_advisory_lock` that found the lock held (false:
/// nothing taken) pinned its client until it left, so workers polling for a lock (leader
/// election) each held a server connection and the rest of the pool got 53300. The catalogs
/// are now asked at the transaction's end, as after an unlock.
#[tokio::test]
async fn a_try_lock_that_took_nothing_does_not_pin() {
    let pg = PgServer::start().await;
    let db = "pool_size = 2\non_session_state = \"pin\"";
    let (gw, port) = pooler(BIN, &pg, db, "wait_timeout = \"10s\"").await;
    let holder = app_client(port).await;
    holder
        .simple_query("SELECT pg_advisory_lock(42)")
        .await
        .expect("lock");
    let poller = app_client(port).await;
    for sql in [
        "SELECT pg_try_advisory_lock(42)",
        "SELECT pg_try_advisory_lock_shared(42)",
    ] {
        let got: bool = pg_one(&poller, sql).await;
        assert!(!got, "{sql}: the holder has it");
    }
    let got: bool = poller
        .query_one("SELECT pg_try_advisory_lock($1)", &[&42i64])
        .await
        .expect("try lock through Parse")
        .get(0);
    assert!(!got);
    // The holder keeps one server; the other is free for everyone else.
    let other = app_client(port).await;
    let served = tokio::time::timeout(Duration::from_secs(5), int(&other, "SELECT 1::int8")).await;
    assert_eq!(served.expect("served while the poller is connected"), 1);
    drop((holder, poller, other));
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn state_that_is_gone_unpins_and_literals_never_pin() {
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    let b = app_client(port).await;
    // A string literal that reads like session state is just a string.
    let s: String = pg_one(&a, "SELECT 'with hold'").await;
    assert_eq!(s, "with hold");
    let row = a
        .query_one("SELECT $1::text || ' listen x'", &[&"pg_advisory_lock(1)"])
        .await;
    assert!(row.is_ok());
    assert_eq!(int(&b, "SELECT 1::int8").await, 1, "A is not pinned");
    // State taken and released: the server goes back to the pool.
    a.simple_query("LISTEN x").await.expect("listen");
    a.simple_query("SELECT pg_advisory_lock(7)")
        .await
        .expect("lock");
    a.simple_query("UNLISTEN *").await.expect("unlisten");
    a.query_one("SELECT pg_advisory_unlock($1)", &[&7i64])
        .await
        .expect("unlock");
    let shown = tokio::time::timeout(Duration::from_secs(5), int(&b, "SELECT 2::int8")).await;
    assert_eq!(shown.expect("B is served while A is connected"), 2);
    // DISCARD ALL ends everything at once.
    a.simple_query("CREATE TEMP TABLE t2 (x int)")
        .await
        .expect("temp");
    a.simple_query("DISCARD ALL").await.expect("discard");
    let shown = tokio::time::timeout(Duration::from_secs(5), int(&b, "SELECT 3::int8")).await;
    assert_eq!(shown.expect("B is served while A is connected"), 3);
    drop((a, b));
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn set_config_is_tracked_with_literals_and_pinned_otherwise() {
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    let b = app_client(port).await;
    a.simple_query("SELECT set_config('search_path', 's1', false)")
        .await
        .expect("set_config");
    let theirs: String = pg_one(&b, "SHOW search_path").await;
    assert_eq!(theirs, "\"$user\", public", "B sees the default");
    let mine: String = pg_one(&a, "SHOW search_path").await;
    assert_eq!(mine, "s1", "A keeps its setting on whatever server it gets");
    // A parameter is a value the pooler sees at Bind (asyncpg restores `jit` this way): tracked.
    a.query_one("SELECT set_config('search_path', $1, false)", &[&"s2"])
        .await
        .expect("set_config with a parameter");
    let theirs: String = pg_one(&b, "SHOW search_path").await;
    assert_eq!(theirs, "\"$user\", public", "B sees the default");
    let mine: String = pg_one(&a, "SHOW search_path").await;
    assert_eq!(mine, "s2", "A keeps the parameter's value");
    // A value computed on the server is not seen: the client is pinned.
    a.query_one(
        "SELECT set_config('search_path', $1 || '3', false)",
        &[&"s"],
    )
    .await
    .expect("set_config with a computed value");
    pinned_until_a_leaves(port, a, |b| async move {
        let v: String = pg_one(&b, "SHOW search_path").await;
        assert_eq!(v, "\"$user\", public");
    })
    .await;
    drop(b);
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn refuse_mode_answers_0a000_with_a_hint_on_every_path() {
    let (_pg, gw, port) = one_server("refuse").await;
    let a = app_client(port).await;
    let b = app_client(port).await;
    let simple = [
        "/* c */ LISTEN x",
        "SELECT 1; LISTEN x",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "SELECT pg_advisory_lock(1)",
        "PREPARE p AS SELECT 1",
        "CREATE TEMP TABLE tt (x int)",
    ];
    for sql in simple {
        let e = a.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), "0A000", "{sql}: {e:?}");
        let db = e.as_db_error().expect("server-style error");
        assert!(db.hint().is_some_and(|h| !h.is_empty()), "{sql}: no hint");
    }
    // Extended protocol, named statements with parameters.
    let e = a
        .query_one("SELECT pg_advisory_lock($1)", &[&42i64])
        .await
        .expect_err("advisory lock via Parse");
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    let e = a
        .query_one(
            "SELECT set_config('search_path', $1 || '', false)",
            &[&"s2"],
        )
        .await
        .expect_err("set_config via Parse");
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    // Inside a transaction the refusal fails the transaction, as a server error would.
    a.batch_execute("BEGIN").await.expect("begin");
    assert!(a.simple_query("LISTEN x").await.is_err());
    let e = a.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(sqlstate(&e), "25P02");
    a.batch_execute("ROLLBACK").await.expect("rollback");
    // Nothing reached the server, and both clients go on.
    assert_eq!(
        int(&b, "SELECT count(*) FROM pg_listening_channels()").await,
        0
    );
    let got: bool = pg_one(&b, "SELECT pg_try_advisory_xact_lock(42)").await;
    assert!(got);
    assert_eq!(int(&a, "SELECT 5::int8").await, 5);
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            "scalegate_pg_session_state_refusals_total{database=\"app\",user=\"postgres\"} 9"
        ),
        "{metrics}"
    );
    drop((a, b));
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn unnamed_statements_with_parameters_are_pinned_or_refused_too() {
    use tokio_postgres::types::Type;
    // Pinned: the lock taken through an unnamed Parse keeps A on its server.
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    let got = a
        .query_typed("SELECT pg_advisory_lock($1)", &[(&9i64, Type::INT8)])
        .await;
    got.expect("lock through an unnamed statement");
    pinned_until_a_leaves(port, a, |b| async move {
        let held = int(
            &b,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        )
        .await;
        assert_eq!(held, 0, "A's lock left with A");
    })
    .await;
    pooler_quiescent(&gw, port).await;
    // Refused: 0A000 for the unnamed statement, and the session goes on.
    let (_pg2, gw2, port2) = one_server("refuse").await;
    let a = app_client(port2).await;
    let e = a
        .query_typed("SELECT pg_advisory_lock($1)", &[(&9i64, Type::INT8)])
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    let rows = a
        .query_typed("SELECT $1::int8 + 1", &[(&1i64, Type::INT8)])
        .await
        .expect("next statement");
    assert_eq!(rows[0].get::<_, i64>(0), 2);
    drop(a);
    pooler_quiescent(&gw2, port2).await;
}

/// Found from outside: `SET ROLE` (and `set_config('role', …)`) outlived the client, because
/// `RESET ALL` leaves the role alone: the next client on the server connection ran as that
/// role.
#[tokio::test]
async fn a_role_set_by_one_client_is_not_the_next_ones() {
    let (pg, gw, port) = one_server("pin").await;
    pg.psql("postgres", "CREATE ROLE tenant_a LOGIN");
    // The session authorization too: RESET ALL leaves it alone as well (found in a second
    // probe: the next client ran as that user).
    for set in [
        "SET ROLE tenant_a",
        "SELECT set_config('role', 'tenant_a', false)",
        "SET session_authorization = 'tenant_a'",
        "SELECT set_config('session_authorization', 'tenant_a', false)",
    ] {
        let a = app_client(port).await;
        a.simple_query(set)
            .await
            .unwrap_or_else(|e| panic!("{set}: {e}"));
        assert_eq!(
            pg_one::<String>(&a, "SELECT current_user::text").await,
            "tenant_a"
        );
        drop(a);
        let b = app_client(port).await;
        let who = "SELECT current_user::text || ' ' || session_user::text";
        let who = pg_one::<String>(&b, who).await;
        assert_eq!(who, "postgres postgres", "after another client's {set}");
        drop(b);
    }
    // RESET ALL keeps the role, as on PostgreSQL; the client keeps it on other connections.
    let a = app_client(port).await;
    a.simple_query("SET ROLE tenant_a").await.expect("set role");
    a.simple_query("RESET ALL").await.expect("reset all");
    let b = app_client(port).await;
    assert_eq!(
        pg_one::<String>(&b, "SELECT current_user::text").await,
        "postgres"
    );
    assert_eq!(
        pg_one::<String>(&a, "SELECT current_user::text").await,
        "tenant_a"
    );
    drop((a, b));
    pooler_quiescent(&gw, port).await;
}

/// Found from outside: a SET undone by ROLLBACK TO SAVEPOINT came back once the client moved
/// to another server connection (the pooler applied it at COMMIT). After a savepoint rollback
/// or an error in a transaction, the pooler asks the server what survived.
#[tokio::test]
async fn settings_undone_by_a_savepoint_rollback_stay_undone() {
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    let b = app_client(port).await;
    let default = path(&b).await;
    for sql in [
        "BEGIN",
        "SET search_path = kept",
        "SAVEPOINT s",
        "SET search_path = sp_leak",
        "ROLLBACK TO SAVEPOINT s",
        "COMMIT",
    ] {
        a.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(path(&a).await, "kept");
    // B takes the one server connection between A's transactions: A's settings are replayed.
    assert_eq!(path(&b).await, default);
    assert_eq!(path(&a).await, "kept", "after moving");
    // An error undoes what the failed part set; the savepoint brings the transaction back.
    for sql in [
        "BEGIN",
        "SAVEPOINT s",
        "SET search_path = lost",
        "SELECT 1/0",
        "ROLLBACK TO SAVEPOINT s",
        "SET work_mem = '7MB'",
        "COMMIT",
    ] {
        let r = a.simple_query(sql).await;
        assert_eq!(r.is_err(), sql == "SELECT 1/0", "{sql}: {r:?}");
    }
    assert_eq!(path(&b).await, default);
    assert_eq!(path(&a).await, "kept");
    assert_eq!(pg_one::<String>(&a, "SHOW work_mem").await, "7MB");
    assert_eq!(pg_one::<String>(&b, "SHOW work_mem").await, "4MB");
    drop((a, b));
    pooler_quiescent(&gw, port).await;
}

async fn path(c: &Client) -> String {
    pg_one::<String>(c, "SHOW search_path").await
}

/// Found from outside: code in a DO block changed settings, created a temporary table or took
/// a session advisory lock that the next client on the server connection found. Settings a DO
/// block may have changed count as unknown (the next client gets a full replay); a lock or a
/// temporary table it names pins the client until the server says it is gone.
#[tokio::test]
async fn what_a_do_block_leaves_is_not_the_next_clients() {
    let (_pg, gw, port) = one_server("pin").await;
    let b = app_client(port).await;
    let default = path(&b).await;
    let a = app_client(port).await;
    a.simple_query("DO $$BEGIN PERFORM set_config('search_path', 'leak', false); END$$")
        .await
        .expect("DO set_config");
    assert_eq!(path(&b).await, default, "after another client's DO block");
    a.simple_query("DO $$BEGIN EXECUTE 'CREATE TEMP TABLE tt_do (x int)'; END$$")
        .await
        .expect("DO temp table");
    a.simple_query("DO $$BEGIN PERFORM pg_advisory_lock(4242); END$$")
        .await
        .expect("DO advisory lock");
    // A holds both on its server connection: it stays A's, and B waits until they are gone.
    let tables = "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()";
    let locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                 AND pid = pg_backend_pid()";
    assert_eq!(int(&a, tables).await, 1);
    let b_sees = async { (int(&b, tables).await, int(&b, locks).await) };
    let a_cleans = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.simple_query("DROP TABLE tt_do; SELECT pg_advisory_unlock(4242)")
            .await
            .expect("clean up");
    };
    let (seen, ()) = tokio::join!(b_sees, a_cleans);
    assert_eq!(seen, (0, 0), "B saw A's temporary table or lock");
    drop((a, b));
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn settings_committed_by_commit_and_chain_survive_a_rollback_and_stay_the_clients() {
    // COMMIT AND CHAIN commits the SET before it; the chained transaction's ROLLBACK undoes
    // nothing of it. The pooler dropped the change at the ROLLBACK, so the server went back to
    // the pool with it and every later client ran with A's settings (its role, search_path).
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    for sql in [
        "BEGIN",
        "SET statement_timeout = '4321ms'",
        "COMMIT AND CHAIN",
        "ROLLBACK",
    ] {
        a.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    for _ in 0..3 {
        let b = app_client(port).await;
        assert_eq!(
            pg_one::<String>(&b, "SHOW statement_timeout").await,
            "0",
            "another client has A's setting"
        );
    }
    assert_eq!(
        pg_one::<String>(&a, "SHOW statement_timeout").await,
        "4321ms",
        "A lost its own committed setting"
    );
    // ROLLBACK AND CHAIN undoes what came before it; the chained transaction's COMMIT keeps
    // only what came after.
    for sql in [
        "BEGIN",
        "SET lock_timeout = '1111ms'",
        "ROLLBACK AND CHAIN",
        "SET idle_in_transaction_session_timeout = '2222ms'",
        "COMMIT",
    ] {
        a.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let b = app_client(port).await;
    let both = "SELECT current_setting('lock_timeout') || ' ' || current_setting('idle_in_transaction_session_timeout')";
    assert_eq!(pg_one::<String>(&b, both).await, "0 0");
    assert_eq!(pg_one::<String>(&a, both).await, "0 2222ms");
    drop((a, b));
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn a_set_run_as_a_prepared_statement_is_tracked_each_time_it_runs() {
    // psycopg prepares a statement it has run five times, SET included, and then only binds
    // it: the SET ran without the pooler seeing it, so one tenant's search_path (or role) went
    // to the next client on that server.
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    let set = a.prepare("SET search_path TO s1").await.expect("prepare");
    a.execute(&set, &[]).await.expect("set");
    a.simple_query("RESET search_path").await.expect("reset");
    a.execute(&set, &[]).await.expect("set again, bound only");
    let b = app_client(port).await;
    assert_eq!(
        pg_one::<String>(&b, "SHOW search_path").await,
        "\"$user\", public",
        "another client got A's search_path"
    );
    assert_eq!(pg_one::<String>(&a, "SHOW search_path").await, "s1");
    // Prepared and never run: nothing changes.
    let c = app_client(port).await;
    c.prepare("SET search_path TO s2").await.expect("prepare");
    assert_eq!(
        pg_one::<String>(&c, "SHOW search_path").await,
        "\"$user\", public"
    );
    drop((a, b, c));
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn a_pipeline_that_commits_then_rolls_back_leaves_no_setting_behind() {
    // psycopg's pipeline mode sends `BEGIN; SET …; COMMIT AND CHAIN; SET …; ROLLBACK` as one
    // segment (one Sync): the pooler saw a ROLLBACK last and dropped the first SET, which the
    // chain had committed, so every later client on that server got it.
    let (_pg, gw, port) = one_server("pin").await;
    let mut a = raw_login(port);
    let mut batch = Vec::new();
    for sql in [
        "BEGIN",
        "SET work_mem = '11MB'",
        "COMMIT AND CHAIN",
        "SET work_mem = '12MB'",
        "ROLLBACK",
    ] {
        batch.extend(parse("", sql));
        batch.extend(bind(""));
        batch.extend(execute(0));
    }
    batch.extend(sync());
    std::io::Write::write_all(&mut a, &batch).expect("pipeline");
    read_until_ready(&mut a);
    let b = app_client(port).await;
    assert_eq!(pg_one::<String>(&b, "SHOW work_mem").await, "4MB");
    query(&mut a, "SHOW work_mem");
    let shown = read_until_ready(&mut a);
    let row = shown.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert!(
        String::from_utf8_lossy(&row.1).contains("11MB"),
        "A lost its committed setting"
    );
    // One simple query string: the client keeps what the server kept.
    let c = app_client(port).await;
    c.simple_query("BEGIN; SET work_mem = '13MB'; COMMIT AND CHAIN; ROLLBACK")
        .await
        .expect("multi-statement");
    assert_eq!(pg_one::<String>(&c, "SHOW work_mem").await, "13MB");
    assert_eq!(pg_one::<String>(&b, "SHOW work_mem").await, "4MB");
    drop((a, b, c));
    pooler_quiescent(&gw, port).await;
}

/// A probe's finding: code a DO block runs with EXECUTE (`LISTEN`, `PREPARE`) left state the
/// pooler's reading of the block's text could not name; the server went back to the pool with
/// it, and the next client ran the first one's prepared statement (and could not PREPARE the
/// name itself: 42P05). Every DO block now has the server's catalogs asked at the end of its
/// transaction, in both modes (nothing is refused: nothing is known to be created).
#[tokio::test]
async fn state_a_do_block_creates_with_dynamic_sql_is_not_the_next_clients() {
    for mode in ["pin", "refuse"] {
        let (_pg, gw, port) = one_server(mode).await;
        let a = app_client(port).await;
        a.simple_query(
            "DO $$BEGIN EXECUTE 'PREPARE report AS SELECT ''rows of A'''; \
             EXECUTE 'LIS' || 'TEN ch_do'; END$$",
        )
        .await
        .unwrap_or_else(|e| panic!("{mode}: DO: {e}"));
        assert_eq!(
            int(&a, "SELECT count(*) FROM pg_listening_channels()").await,
            1,
            "{mode}: A keeps its server"
        );
        drop(a);
        let b = app_client(port).await;
        let prepared = "SELECT count(*) FROM pg_prepared_statements WHERE from_sql";
        assert_eq!(int(&b, prepared).await, 0, "{mode}: A's PREPARE");
        let listening = "SELECT count(*) FROM pg_listening_channels()";
        assert_eq!(int(&b, listening).await, 0, "{mode}: A's LISTEN");
        drop(b);
        pooler_empty(&gw, port).await;
    }
}

/// A probe's finding: `UPDATE pg_settings` (the same as SET, says PostgreSQL) was not seen
/// as a change of settings; the next client on the server ran with the first one's
/// search_path.
#[tokio::test]
async fn a_setting_changed_through_pg_settings_is_not_the_next_clients() {
    let (_pg, gw, port) = one_server("pin").await;
    let b = app_client(port).await;
    let default = path(&b).await;
    let a = app_client(port).await;
    a.simple_query("UPDATE pg_settings SET setting = 'evil, public' WHERE name = 'search_path'")
        .await
        .expect("update pg_settings");
    assert_eq!(path(&b).await, default, "after A's UPDATE pg_settings");
    // A keeps it, as on PostgreSQL (left alone in session 19: it was lost at A's next server):
    // what the session made is read back at the end of the transaction.
    assert_eq!(path(&a).await, "evil, public");
    assert_eq!(path(&b).await, default);
    assert_eq!(path(&a).await, "evil, public");
    drop((a, b));
    pooler_quiescent(&gw, port).await;
}

/// A probe's finding: a list given at startup (`options=-c search_path=zz,public`, JDBC's
/// currentSchema) was replayed as `SET search_path = 'zz,public'`, one schema named
/// "zz,public": every unqualified name failed (42P01). Startup values are read as PostgreSQL
/// reads them.
#[tokio::test]
async fn a_list_given_at_startup_stays_a_list() {
    let (pg, gw, port) = one_server("pin").await;
    pg.psql("postgres", "CREATE TABLE sp_probe (x int)");
    let options = "options='-c search_path=zz,public -c application_name=a\\\\ b'";
    let c = pg_client_with(port, "app", options).await;
    assert_eq!(path(&c).await, "zz,public", "as PostgreSQL shows it");
    assert_eq!(int(&c, "SELECT count(*) FROM sp_probe").await, 0);
    assert_eq!(pg_one::<String>(&c, "SHOW application_name").await, "a b");
    drop(c);
    pooler_quiescent(&gw, port).await;
}

/// A probe's finding: a startup parameter the server refuses (`-c no_such_guc=1`,
/// `-c work_mem=banana`) was let in; its replay failed as a whole, so the client ran on a
/// server still holding the previous client's settings (its time zone, its DateStyle).
/// PostgreSQL refuses such a login; the pooler ends the client with the server's error
/// before anything of it runs.
#[tokio::test]
async fn a_client_whose_startup_settings_the_server_refuses_is_refused() {
    let (_pg, gw, port) = one_server("pin").await;
    let connect = |options: &'static str| async move {
        pg_client_with(port, "app", &format!("options='{options}'")).await
    };
    let t = connect("-c TimeZone=Asia/Kolkata -c work_mem=64MB").await;
    assert_eq!(pg_one::<String>(&t, "SHOW TimeZone").await, "Asia/Kolkata");
    for bad in ["-c no_such_guc=1", "-c work_mem=banana"] {
        let u = connect(bad).await;
        let e = u
            .simple_query("SHOW TimeZone")
            .await
            .expect_err("refused, never run with T's settings");
        assert!(
            ["42704", "22023"].contains(&sqlstate(&e).as_str()),
            "{bad}: {e:?}"
        );
        assert!(u.is_closed() || u.simple_query("SELECT 1").await.is_err());
    }
    assert_eq!(pg_one::<String>(&t, "SHOW work_mem").await, "64MB");
    // One PostgreSQL takes only at login (55P02 when replayed) is dropped, not fatal: the
    // client connects as it does directly (a regression probe's finding), with the rest.
    let v = connect("-c log_connections=on -c work_mem=32MB").await;
    assert_eq!(pg_one::<String>(&v, "SHOW work_mem").await, "32MB");
    assert_eq!(pg_one::<String>(&t, "SHOW work_mem").await, "64MB");
    assert_eq!(pg_one::<String>(&v, "SHOW work_mem").await, "32MB");
    drop((t, v));
    pooler_quiescent(&gw, port).await;
}

/// A probe's finding: a temporary type, domain or function made by a DO block's dynamic
/// SQL was not among what the catalogs were asked for; the next client's `'x'::status`
/// resolved to the first client's temporary enum. They are counted now.
#[tokio::test]
async fn temporary_types_and_functions_a_do_block_makes_stay_its_own() {
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    a.simple_query(
        "DO $$BEGIN EXECUTE 'CREATE TYPE pg_temp.status AS ENUM (''hijacked'')'; \
         EXECUTE 'CREATE FUNCTION pg_temp.tf() RETURNS int LANGUAGE sql AS ''SELECT 1'''; END$$",
    )
    .await
    .expect("DO");
    drop(a);
    let b = app_client(port).await;
    let temp = "SELECT (SELECT count(*) FROM pg_type WHERE typnamespace = pg_my_temp_schema()) \
                + (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema())";
    assert_eq!(int(&b, temp).await, 0, "A's temporary type or function");
    drop(b);
    pooler_empty(&gw, port).await;
}

/// `work_mem` as client `s` (raw protocol) sees it.
fn raw_work_mem(s: &mut std::net::TcpStream) -> String {
    pg_common::query(s, "SHOW work_mem");
    let msgs = pg_common::read_until_ready(s);
    let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    // DataRow: column count (2), length (4), value.
    String::from_utf8_lossy(&row.1[6..]).into_owned()
}

/// Probe findings (session 20, a regression hunt on the tracking of `set_config($1)`): a
/// setting was recorded when its statement was bound, not when it ran, so a Bind whose portal
/// never ran made the client's setting flip between server connections; `set_config` with a
/// NULL parameter (which resets) was recorded as unknown and the old value kept coming back.
#[tokio::test]
async fn a_setting_is_the_clients_once_its_statement_has_run() {
    let (_pg, gw, port) = one_server("pin").await;
    let b = app_client(port).await;
    let default: String = pg_one(&b, "SHOW work_mem").await;
    let mut a = pg_common::raw_login(port);
    // A Bind of s1's unnamed portal with '33MB'.
    let bind = || {
        let size = 4i32.to_be_bytes();
        let parts: [&[u8]; 7] = [b"\0", b"s1\0", &[0, 0], &[0, 1], &size, b"33MB", &[0, 0]];
        pg_common::pg_message(b'B', &parts)
    };
    // Bound, never executed.
    let mut batch = pg_common::parse("s1", "SELECT set_config('work_mem', $1, false)");
    batch.extend(bind());
    batch.extend(pg_common::sync());
    std::io::Write::write_all(&mut a, &batch).expect("send");
    pg_common::read_until_ready(&mut a);
    for round in 0..3 {
        assert_eq!(raw_work_mem(&mut a), default, "round {round}");
        // Another client takes the server between A's transactions.
        let _: String = pg_one(&b, "SHOW work_mem").await;
    }
    // Run, it is A's.
    let mut run = bind();
    run.extend(pg_common::execute(0));
    run.extend(pg_common::sync());
    std::io::Write::write_all(&mut a, &run).expect("send");
    pg_common::read_until_ready(&mut a);
    for _ in 0..2 {
        assert_eq!(raw_work_mem(&mut a), "33MB");
        let _: String = pg_one(&b, "SHOW work_mem").await;
    }
    drop(a);
    // NULL resets it.
    let c = app_client(port).await;
    c.batch_execute("SET work_mem = '11MB'").await.expect("set");
    c.query("SELECT set_config('work_mem', $1, false)", &[&None::<&str>])
        .await
        .expect("set_config NULL");
    for _ in 0..2 {
        let now: String = pg_one(&c, "SHOW work_mem").await;
        assert_eq!(now, default);
        let _: String = pg_one(&b, "SHOW work_mem").await;
    }
    drop((b, c));
    pooler_quiescent(&gw, port).await;
}

/// A regression hunt's finding (session 20): the pooler remembers what at most 64 bound
/// portals will change when they run; a client that bound 65 portals of a prepared SET before
/// running the first made a change the pooler had forgotten, and the server went back to the
/// pool with it: every other client read the first one's work_mem. Forgetting one now makes
/// the server's settings unknown (the next client's are replayed whole).
#[tokio::test]
async fn a_setting_made_by_one_of_many_bound_portals_is_not_the_next_clients() {
    let (_pg, gw, port) = one_server("pin").await;
    let b = app_client(port).await;
    let default: String = pg_one(&b, "SHOW work_mem").await;
    let mut a = pg_common::raw_login(port);
    pg_common::query(&mut a, "BEGIN");
    pg_common::read_until_ready(&mut a);
    let mut batch = pg_common::parse("s65", "SET work_mem = '77MB'");
    for i in 0..65 {
        let portal = format!("p{i}\0");
        batch.extend(pg_common::pg_message(
            b'B',
            &[portal.as_bytes(), b"s65\0", &[0, 0], &[0, 0], &[0, 0]],
        ));
    }
    batch.extend(pg_common::pg_message(b'E', &[b"p0\0", &0i32.to_be_bytes()]));
    batch.extend(pg_common::sync());
    std::io::Write::write_all(&mut a, &batch).expect("send");
    pg_common::read_until_ready(&mut a);
    pg_common::query(&mut a, "COMMIT");
    pg_common::read_until_ready(&mut a);
    assert_eq!(raw_work_mem(&mut a), "77MB");
    let theirs: String = pg_one(&b, "SHOW work_mem").await;
    assert_eq!(theirs, default, "B does not get A's setting");
    assert_eq!(raw_work_mem(&mut a), "77MB", "A keeps it");
    drop(a);
    drop(b);
    pooler_quiescent(&gw, port).await;
}

/// A probe's finding: RESET, RESET ALL and DISCARD ALL threw away the client's startup
/// settings, where PostgreSQL goes back to them. asyncpg's pool sends RESET ALL at every
/// release, so a pool made with `server_settings={'statement_timeout': ...}` ran without its
/// timeout from the second acquire on. Each reset here is followed by another client on the
/// one server connection, and by a multi-statement reset the pooler reads back.
#[tokio::test]
async fn a_reset_goes_back_to_the_clients_startup_settings() {
    let (_pg, gw, port) = one_server("pin").await;
    let options = "options='-c statement_timeout=444 -c application_name=myapp'";
    let a = pg_client_with(port, "app", options).await;
    let other = app_client(port).await;
    let resets = [
        "RESET ALL",
        "DISCARD ALL",
        "RESET statement_timeout",
        "SET statement_timeout TO DEFAULT",
        "SET statement_timeout = 5; RESET ALL",
        "BEGIN; SET statement_timeout = 7; RESET statement_timeout; SAVEPOINT s; \
         ROLLBACK TO SAVEPOINT s; COMMIT",
    ];
    for reset in resets {
        a.batch_execute(reset).await.expect(reset);
        let shown = pg_one::<String>(&a, "SHOW statement_timeout").await;
        assert_eq!(shown, "444ms", "after {reset}, on the same server");
        assert_eq!(
            pg_one::<String>(&other, "SHOW statement_timeout").await,
            "0"
        );
        let shown = pg_one::<String>(&a, "SHOW statement_timeout").await;
        assert_eq!(shown, "444ms", "after {reset}, replayed");
        assert_eq!(pg_one::<String>(&a, "SHOW application_name").await, "myapp");
        let e = a
            .simple_query("SELECT pg_sleep(1)")
            .await
            .expect_err("the timeout is in force");
        assert_eq!(sqlstate(&e), "57014", "after {reset}: {e:?}");
    }
    drop((a, other));
    pooler_quiescent(&gw, port).await;
}

/// Left over from session 25's regression hunt: a client that keeps its server connection
/// between transactions (session mode, or pinned by an advisory lock in transaction mode) lost
/// its startup settings for good at a reset, since the pooler replayed them only when a client
/// took a server (asyncpg in session mode: 199 of 201 checks ran without `server_settings`).
/// What the client set itself and did not reset stays.
#[tokio::test]
async fn a_client_holding_its_server_gets_its_startup_settings_back_after_a_reset() {
    let pg = PgServer::start().await;
    for mode in ["session", "transaction"] {
        let (gw, port) = one_server_in(&pg, mode).await;
        let options = "options='-c statement_timeout=444 -c application_name=myapp'";
        let a = pg_client_with(port, "app", options).await;
        a.batch_execute("SELECT pg_advisory_lock(9); SET work_mem = '7MB'")
            .await
            .expect("lock and SET");
        // The last two let go of the lock (and with it, in transaction mode, the server).
        let resets = [
            ("RESET statement_timeout", true),
            ("SET statement_timeout TO DEFAULT", true),
            ("BEGIN; RESET statement_timeout; COMMIT", true),
            ("RESET ALL", false),
            ("SET statement_timeout = 5; RESET ALL", false),
            ("DISCARD ALL", false),
            (
                "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL",
                false,
            ),
        ];
        // Single statements go as prepared ones too (psycopg with prepare_threshold=0,
        // asyncpg's fetch: Parse, Bind, Execute).
        let runs = resets.iter().flat_map(|&(reset, keeps)| {
            let protocols = if reset.contains(';') { 1 } else { 2 };
            (0..protocols).map(move |p| (reset, keeps, p == 1))
        });
        for (reset, keeps_work_mem, extended) in runs {
            if !keeps_work_mem {
                a.batch_execute("SELECT pg_advisory_lock(9)")
                    .await
                    .expect("lock");
            }
            match extended {
                false => a.batch_execute(reset).await.map(|_| 0),
                true => a.execute(reset, &[]).await,
            }
            .expect(reset);
            let shown = pg_one::<String>(&a, "SHOW statement_timeout").await;
            assert_eq!(shown, "444ms", "{mode} mode, {reset}, extended: {extended}");
            assert_eq!(pg_one::<String>(&a, "SHOW application_name").await, "myapp");
            let work_mem = pg_one::<String>(&a, "SHOW work_mem").await;
            assert_eq!(
                work_mem == "7MB",
                keeps_work_mem,
                "{mode}, {reset}: {work_mem}"
            );
            let e = a
                .simple_query("SELECT pg_sleep(1)")
                .await
                .expect_err("the timeout is in force");
            assert_eq!(sqlstate(&e), "57014", "{mode} mode, after {reset}: {e:?}");
        }
        drop(a);
        pooler_quiescent(&gw, port).await;
    }
}

/// The regression hunt's finding: after `RESET ALL` (or `DISCARD ALL`, `RESET
/// client_encoding`) the server told the client its own default encoding (UTF8), and the
/// pooler then set the client's startup LATIN1 back without a word: psycopg wrote UTF-8 to a
/// session reading LATIN1 (`length('é')` was 2), in both pool modes. A reset of a setting the
/// server reports now follows the server, so the client is never told one encoding and
/// served another.
#[tokio::test]
async fn after_a_reset_the_client_has_the_encoding_it_was_told() {
    let pg = PgServer::start().await;
    for mode in ["transaction", "session"] {
        let (gw, port) = one_server_in(&pg, mode).await;
        let (mut a, login) = raw_startup_with(port, &[("client_encoding", "LATIN1")]);
        let mut told = reported(&login, "client_encoding").expect("told at login");
        assert_eq!(told, "LATIN1");
        for reset in [
            "RESET ALL",
            "DISCARD ALL",
            "RESET client_encoding",
            "SET client_encoding TO DEFAULT",
        ] {
            query(&mut a, "SET client_encoding = 'LATIN1'");
            told = reported(&read_until_ready(&mut a), "client_encoding").unwrap_or(told);
            query(&mut a, reset);
            told = reported(&read_until_ready(&mut a), "client_encoding").unwrap_or(told);
            query(&mut a, "SHOW client_encoding");
            let answer = read_until_ready(&mut a);
            told = reported(&answer, "client_encoding").unwrap_or(told);
            let shown = answer
                .iter()
                .find(|(t, _)| *t == b'D')
                .map(|(_, d)| String::from_utf8_lossy(&d[6..]).to_string());
            assert_eq!(
                shown.as_deref(),
                Some(told.as_str()),
                "{mode} mode, {reset}"
            );
        }
        drop(a);
        pooler_quiescent(&gw, port).await;
    }
}

/// The last value of `name` that ParameterStatus messages among `msgs` told.
fn reported(msgs: &[(u8, Vec<u8>)], name: &str) -> Option<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'S')
        .filter_map(|(_, body)| {
            let mut parts = body.split(|b| *b == 0);
            let (k, v) = (parts.next()?, parts.next()?);
            (k == name.as_bytes()).then(|| String::from_utf8_lossy(v).to_string())
        })
        .next_back()
}

/// A probe's finding: the pooler's own question to the catalogs (is a lock still held?) ran
/// under the client's `statement_timeout`; at `1ms` it was cancelled, and the client stayed
/// pinned, holding the only server connection, until it left: every other client got 53300.
#[tokio::test]
async fn the_state_check_runs_out_of_the_clients_statement_timeout() {
    let (_pg, gw, port) = one_server("pin").await;
    let a = app_client(port).await;
    let b = app_client(port).await;
    for round in 0..3 {
        a.batch_execute("SELECT pg_advisory_lock(7)")
            .await
            .expect("lock");
        a.batch_execute("SET statement_timeout = '1ms'")
            .await
            .expect("SET");
        // The unlock itself may take over 1 ms on a busy machine: it is sent until it runs.
        let mut unlocked = false;
        for _ in 0..50 {
            unlocked = a
                .batch_execute("SELECT pg_advisory_unlock(7)")
                .await
                .is_ok();
            if unlocked {
                break;
            }
        }
        assert!(unlocked, "round {round}: the unlock ran");
        a.batch_execute("RESET statement_timeout")
            .await
            .expect("RESET");
        let served = tokio::time::timeout(Duration::from_secs(5), int(&b, "SELECT 1::int8"));
        let served = served.await.expect("served while A is connected");
        assert_eq!(served, 1, "round {round}");
    }
    drop((a, b));
    pooler_quiescent(&gw, port).await;
}

/// A probe's finding: with `pg_temp` first in its search_path, a client's `CREATE TABLE`
/// made a temporary table no statement named, and `EXPLAIN ANALYZE CREATE TEMP TABLE … AS`
/// was not looked into: the server went back to the pool holding them, and the next client's
/// `SELECT * FROM accounts` read the first one's rows. Both pin now, or are refused.
#[tokio::test]
async fn temporary_tables_made_through_search_path_or_explain_stay_their_clients() {
    let temp_tables = "SELECT count(*) FROM pg_class WHERE relpersistence = 't'";
    let makers = [
        "SET search_path = pg_temp, public; CREATE TABLE accounts (owner text)",
        "SELECT set_config('search_path', 'pg_temp, public', false); CREATE TABLE t2 (x int)",
        "EXPLAIN ANALYZE CREATE TEMP TABLE scratch AS SELECT 1 AS x",
    ];
    let (_pg, gw, port) = one_server("pin").await;
    for sql in makers {
        let a = app_client(port).await;
        a.batch_execute(sql).await.expect(sql);
        drop(a);
        let b = app_client(port).await;
        assert_eq!(int(&b, temp_tables).await, 0, "after {sql}");
        drop(b);
    }
    pooler_quiescent(&gw, port).await;
    let (_pg, gw, port) = one_server("refuse").await;
    for sql in makers {
        let a = app_client(port).await;
        let e = a.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), "0A000", "{sql}: {e:?}");
        assert_eq!(int(&a, temp_tables).await, 0, "after {sql}");
    }
    pooler_quiescent(&gw, port).await;
}
