//! Sharding through the pooler against two real PostgreSQL servers: routing by key (literal and
//! bind parameter), placement checked on each shard directly and against PostgreSQL's own hash
//! partitioning, split INSERTs, fanned-out SELECTs with ORDER BY/LIMIT merged, transactions on
//! one shard, clear errors for what cannot be routed, and `scalegate pg reshard-plan`.

mod common;
mod pg_common;

use std::io::Write;

use common::*;
use scalegate_testkit::PgServer;
use scalegate_testkit::postgres::psql;
use tokio_postgres::{Client as PgClient, SimpleQueryMessage};

const SCHEMA: &str = "CREATE TABLE users (user_id bigint PRIMARY KEY, name text); \
    CREATE TABLE tenants (slug text PRIMARY KEY)";

async fn shards() -> (PgServer, PgServer) {
    let a = PgServer::start().await;
    let b = PgServer::start().await;
    a.psql("postgres", SCHEMA);
    b.psql("postgres", SCHEMA);
    (a, b)
}

fn config(port: u16, a: &PgServer, b: &PgServer, sharding: &str) -> String {
    format!(
        "[postgres]\nlisten = \"127.0.0.1:{port}\"\n[postgres.databases.app]\n\
         shards = [\"postgres://postgres@127.0.0.1:{}/postgres\", \"postgres://postgres@127.0.0.1:{}/postgres\"]\n\
         pool_size = 3\nsharding = {{ {sharding} }}\n",
        a.port, b.port
    )
}

async fn client(port: u16) -> PgClient {
    pg_client(port, "app").await
}

fn ids_on(s: &PgServer) -> Vec<i64> {
    let out = s.psql("postgres", "SELECT user_id FROM users ORDER BY user_id");
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Creates `name (column)` on `s`, HASH-partitioned into 4 partitions `name_0` … `name_3`.
fn hash_partitioned(s: &PgServer, name: &str, column: &str) {
    let key = column.split_whitespace().next().unwrap_or(column);
    let mut sql = format!("CREATE TABLE {name} ({column}) PARTITION BY HASH ({key});");
    for r in 0..4 {
        sql.push_str(&format!(
            " CREATE TABLE {name}_{r} PARTITION OF {name} FOR VALUES WITH (MODULUS 4, REMAINDER {r});"
        ));
    }
    s.psql("postgres", &sql);
}

/// Two shards keyed by `users.user_id` (modulus) behind a gateway: the servers (kept alive),
/// the gateway and the pooler's port.
async fn keyed() -> ((PgServer, PgServer), GatewayProcess, u16) {
    let (a, b) = shards().await;
    let port = free_port();
    let keys = "function = \"modulus\", keys = [\"users.user_id\"]";
    let gw = GatewayProcess::start(BIN, &config(port, &a, &b, keys)).await;
    ((a, b), gw, port)
}

/// Asserts that a raw client's connection still answers a query after what it just did.
fn the_connection_goes_on(s: &mut std::net::TcpStream) {
    pg_common::query(s, "SELECT 'A'");
    let got = pg_common::read_until(s, b'Z');
    let row = got.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert!(row.1.ends_with(b"A"), "{got:?}");
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn modulus_sharding_routes_splits_and_fans_out() {
    let (a, b) = shards().await;
    let port = free_port();
    let gw = GatewayProcess::start(
        BIN,
        &config(
            port,
            &a,
            &b,
            "function = \"modulus\", keys = [\"users.user_id\"]",
        ),
    )
    .await;
    let c = client(port).await;
    for id in 1..=10i64 {
        c.execute(
            "INSERT INTO users (user_id, name) VALUES ($1, $2)",
            &[&id, &format!("u{id}")],
        )
        .await
        .expect("insert by bind parameter");
    }
    assert_eq!(
        ids_on(&a),
        vec![2, 4, 6, 8, 10],
        "user_id % 2 = 0 on shard 0"
    );
    assert_eq!(ids_on(&b), vec![1, 3, 5, 7, 9]);
    let name: String = c
        .query_one("SELECT name FROM users WHERE user_id = $1", &[&7i64])
        .await
        .expect("read by key")
        .get(0);
    assert_eq!(name, "u7");
    // A multi-row INSERT over both shards is split; the count is the sum.
    let done = c
        .simple_query("INSERT INTO users (user_id, name) VALUES (11, 'k'), (12, 'l'), (13, 'm')")
        .await
        .expect("split insert");
    assert!(matches!(
        done.last(),
        Some(SimpleQueryMessage::CommandComplete(3))
    ));
    assert_eq!(ids_on(&a).len(), 6, "{:?} {:?}", ids_on(&a), ids_on(&b));
    assert_eq!(ids_on(&b).len(), 7);
    // A SELECT without the key runs on every shard; ORDER BY and LIMIT hold across them.
    let rows = c
        .simple_query("SELECT user_id FROM users ORDER BY user_id DESC LIMIT 5")
        .await
        .expect("fan-out");
    let got: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(got, ["13", "12", "11", "10", "9"]);
    let all = c
        .query("SELECT user_id, name FROM users ORDER BY user_id", &[])
        .await
        .expect("extended fan-out");
    let ids: Vec<i64> = all.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, (1..=13).collect::<Vec<i64>>());
    // A transaction stays on the shard of its first statement.
    let mut c2 = client(port).await;
    let tx = c2.transaction().await.expect("begin");
    tx.execute("UPDATE users SET name = 'tx' WHERE user_id = $1", &[&3i64])
        .await
        .expect("update in tx");
    tx.commit().await.expect("commit");
    assert_eq!(
        b.psql("postgres", "SELECT name FROM users WHERE user_id = 3"),
        "tx"
    );
    let tx = c2.transaction().await.expect("begin");
    tx.execute(
        "UPDATE users SET name = 'gone' WHERE user_id = $1",
        &[&4i64],
    )
    .await
    .expect("update");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        a.psql("postgres", "SELECT name FROM users WHERE user_id = 4"),
        "u4"
    );
    // What cannot be routed gets a clear error, and the session goes on.
    for bad in ["UPDATE users SET name = 'x'", "SELECT count(*) FROM users"] {
        let e = c.simple_query(bad).await.expect_err("refused");
        assert_eq!(code(&e), "0A000", "{bad}: {e:?}");
    }
    assert!(
        c.simple_query("SELECT name FROM users WHERE user_id = 1")
            .await
            .is_ok()
    );
    let hosts = psql(port, "postgres", "scalegate", "SHOW HOSTS").expect("SHOW HOSTS");
    let counts: Vec<u64> = hosts
        .lines()
        .filter_map(|l| l.rsplit('|').next()?.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "{hosts}");
    assert!(
        counts.iter().all(|&n| n >= 5),
        "per-shard counters: {hosts}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn hash_sharding_places_rows_as_postgres_hash_partitioning_would() {
    let (a, b) = shards().await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        port,
        &a,
        &b,
        "function = \"hash\", virtual_shards = 4, keys = [\"users.user_id\", \"tenants.slug:text\"]",
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let c = client(port).await;
    let ids: Vec<i64> = (1..=40).chain([-7, 5_000_000_000]).collect();
    for id in &ids {
        c.execute("INSERT INTO users (user_id, name) VALUES ($1, 'x')", &[id])
            .await
            .expect("insert");
    }
    // PostgreSQL itself: the same keys in a table hash-partitioned into 4.
    hash_partitioned(&a, "h", "id bigint");
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    a.psql(
        "postgres",
        &format!(
            "INSERT INTO h SELECT unnest(ARRAY[{}]::bigint[])",
            list.join(",")
        ),
    );
    let placed = a.psql(
        "postgres",
        "SELECT id, right(tableoid::regclass::text, 1) FROM h",
    );
    let (on_a, on_b) = (ids_on(&a), ids_on(&b));
    for line in placed.lines() {
        let (id, remainder) = line.split_once('|').expect("id|remainder");
        let id: i64 = id.parse().expect("id");
        let remainder: usize = remainder.parse().expect("remainder");
        // Virtual shard r lives on shard r % 2 (the default map).
        let expected_a = remainder.is_multiple_of(2);
        assert_eq!(
            on_a.contains(&id),
            expected_a,
            "id {id} (partition {remainder})"
        );
        assert_eq!(
            on_b.contains(&id),
            !expected_a,
            "id {id} (partition {remainder})"
        );
    }
    // Text keys land where PostgreSQL's text hash partitioning puts them.
    let slugs = [
        "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka",
    ];
    for slug in slugs {
        c.execute("INSERT INTO tenants (slug) VALUES ($1)", &[&slug])
            .await
            .expect("insert text key");
    }
    hash_partitioned(&a, "ht", "slug text");
    let quoted: Vec<String> = slugs.iter().map(|s| format!("'{s}'")).collect();
    a.psql(
        "postgres",
        &format!("INSERT INTO ht SELECT unnest(ARRAY[{}])", quoted.join(",")),
    );
    let placed = a.psql(
        "postgres",
        "SELECT slug, right(tableoid::regclass::text, 1) FROM ht",
    );
    let on_a = a.psql("postgres", "SELECT slug FROM tenants");
    let on_a: Vec<&str> = on_a.lines().collect();
    for line in placed.lines() {
        let (slug, remainder) = line.split_once('|').expect("slug|remainder");
        let remainder: usize = remainder.parse().expect("remainder");
        assert_eq!(
            on_a.contains(&slug),
            remainder.is_multiple_of(2),
            "slug {slug} (partition {remainder})"
        );
    }
    // The plan for a third shard.
    std::fs::write(dir.path().join("s.toml"), &cfg).expect("write");
    let out = std::process::Command::new(BIN)
        .args(["pg", "reshard-plan", "--database", "app", "--config"])
        .arg(dir.path().join("s.toml"))
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("adding shard 2 moves 1 virtual shards"),
        "{text}"
    );
    assert!(
        text.contains("virtual shard     2: shard 0 -> shard 2"),
        "{text}"
    );
    assert!(text.contains("map = [0, 1, 2, 1]"), "{text}");
    quiescent(&gw).await;
}

/// Found from outside, each silent before: an UPDATE that changed the sharding key left the row
/// on the shard of its old key (unreachable, its primary key no longer unique); a join keyed on
/// one table returned only that shard's rows of the other; an aggregate not on the pooler's
/// list, or a view, fanned out gave one row per shard; a fanned-out SELECT read through a
/// cursor (node-postgres pg-cursor: Execute with a row limit, then Flush) got every row and an
/// unsolicited ReadyForQuery, and the next read failed with 34000. Each is now refused with
/// 0A000, and the connection goes on.
#[tokio::test]
async fn what_would_lose_rows_across_shards_is_refused_and_the_connection_goes_on() {
    let (a, b) = shards().await;
    for shard in [&a, &b] {
        shard.psql(
            "postgres",
            "CREATE TABLE orders (order_id int, user_id bigint); \
             CREATE VIEW user_count AS SELECT count(*) FROM users",
        );
    }
    let port = free_port();
    let keys = "function = \"modulus\", keys = [\"users.user_id\", \"orders.user_id\"]";
    let gw = GatewayProcess::start(BIN, &config(port, &a, &b, keys)).await;
    let c = client(port).await;
    c.simple_query("INSERT INTO users (user_id, name) VALUES (1, 'a')")
        .await
        .expect("insert");
    for sql in [
        "UPDATE users SET user_id = 100 WHERE user_id = 1",
        "SELECT o.order_id FROM orders o JOIN users u ON true WHERE u.user_id = 3",
        // One row per shard before: an aggregate not on the list, a view.
        "SELECT bit_xor(user_id) FROM users",
        "SELECT * FROM user_count",
    ] {
        let e = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&e), "0A000", "{sql}: {e:?}");
    }
    let n: i64 = pg_one(&c, "SELECT count(*) FROM users WHERE user_id = 1").await;
    assert_eq!(n, 1, "the row stays where its key finds it");
    // A cursor over a fanned-out SELECT, as pg-cursor reads it.
    use pg_common::{bind, execute, flush, parse, read_until, sync};
    let mut s = pg_common::raw_login(port);
    let send = |s: &mut std::net::TcpStream, msgs: &[Vec<u8>]| {
        s.write_all(&msgs.concat()).expect("send");
    };
    let sql = "SELECT user_id FROM users ORDER BY user_id";
    send(&mut s, &[parse("", sql), bind(""), execute(2), flush()]);
    let got = read_until(&mut s, b'E');
    assert!(
        got.iter().all(|(t, _)| *t != b'Z'),
        "no ReadyForQuery before Sync: {got:?}"
    );
    send(&mut s, &[execute(2), sync()]);
    let got = read_until(&mut s, b'Z');
    assert_eq!(got.len(), 1, "messages up to the Sync are skipped: {got:?}");
    // The same connection goes on.
    send(&mut s, &[parse("", sql), bind(""), execute(0), sync()]);
    let got = read_until(&mut s, b'Z');
    assert!(got.iter().any(|(t, _)| *t == b'D'), "{got:?}");
    drop((c, s));
    quiescent(&gw).await;
}

/// A probe's finding (psycopg 3, `with conn.transaction(): cur.executemany(INSERT …)` with keys
/// on both shards): the batch was refused with 0A000 and its ReadyForQuery, then the Flush that
/// psycopg sends after its Sync got a 25P02 and a second ReadyForQuery. The client read that
/// one as its ROLLBACK's answer, and every later result came one query late.
#[tokio::test]
async fn a_refused_batch_in_a_transaction_gets_one_ready_for_query_per_sync() {
    let (_shards, gw, port) = keyed().await;
    use pg_common::{bind, execute, flush, parse, query, read_until_ready, sync};
    let mut s = pg_common::raw_login(port);
    query(&mut s, "BEGIN");
    read_until_ready(&mut s);
    let insert = |id: i32| parse("", &format!("INSERT INTO users VALUES ({id}, 'x')"));
    let batch = [
        insert(1),
        bind(""),
        execute(0),
        insert(2),
        bind(""),
        execute(0),
        sync(),
        flush(),
    ];
    s.write_all(&batch.concat()).expect("batch");
    let got = read_until_ready(&mut s);
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, vec![b'E', b'Z'], "{got:?}");
    query(&mut s, "ROLLBACK");
    let got = read_until_ready(&mut s);
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    // Before: [E 25P02, Z] here, and the ROLLBACK's answer one query later.
    assert_eq!(tags, vec![b'C', b'Z'], "{got:?}");
    the_connection_goes_on(&mut s);
    drop(s);
    quiescent(&gw).await;
}

/// A probe's finding: inside a sharded transaction (its BEGIN held back until a shard is
/// known), a statement whose wait for a server failed (53300, or a cancel's 57014) was
/// answered ReadyForQuery idle: the client's next statement ran outside any transaction on
/// another shard and its COMMIT "succeeded", leaving half a transfer. The error now fails the
/// transaction as a server's would: 25P02 until ROLLBACK, COMMIT rolls back.
#[tokio::test]
async fn a_wait_that_fails_inside_a_sharded_transaction_fails_the_transaction() {
    let (a, b) = shards().await;
    let port = free_port();
    let keys = "function = \"modulus\", keys = [\"users.user_id\"]";
    let cfg = config(port, &a, &b, keys)
        .replace("pool_size = 3", "pool_size = 1")
        .replace(
            "[postgres.databases.app]",
            "wait_timeout = \"1s\"\n[postgres.databases.app]",
        );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let holder = client(port).await;
    holder.simple_query("BEGIN").await.expect("begin");
    holder
        .simple_query("INSERT INTO users (user_id, name) VALUES (2, 'held')")
        .await
        .expect("the holder takes shard 0's only server");
    let x = client(port).await;
    x.simple_query("BEGIN").await.expect("begin");
    let e = x
        .simple_query("INSERT INTO users (user_id, name) VALUES (4, 'debit')")
        .await
        .expect_err("shard 0 stays busy");
    assert_eq!(code(&e), "53300", "{e:?}");
    let e = x
        .simple_query("INSERT INTO users (user_id, name) VALUES (1, 'credit')")
        .await
        .expect_err("the transaction has failed");
    assert_eq!(code(&e), "25P02", "{e:?}");
    x.simple_query("COMMIT").await.expect("commit answers");
    assert_eq!(ids_on(&b), Vec::<i64>::new(), "nothing of the transaction");
    holder.simple_query("ROLLBACK").await.expect("rollback");
    assert!(x.simple_query("SELECT 1").await.is_ok(), "X goes on");
    drop((holder, x));
    quiescent(&gw).await;
}

/// A probe's finding (session 24): in a sharded database the pooler held a client's batch
/// until its end (Sync) to route each statement on its key, however long: one client could
/// take the pooler's memory. A batch that reaches 16 MiB without its end is now refused
/// (0A000, naming the limit), skipped to its Sync as after any error, and the connection goes
/// on.
#[tokio::test]
async fn a_batch_too_long_to_hold_is_refused_and_the_connection_goes_on() {
    let (_shards, gw, port) = keyed().await;
    use pg_common::{bind, execute, parse, read_until_ready, sync};
    let mut s = pg_common::raw_login(port);
    let padded = format!("SELECT 1 /* {} */", "x".repeat(64_000));
    let one = [parse("", &padded), bind(""), execute(0)].concat();
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        for _ in 0..(20 << 20) / one.len() {
            w.write_all(&one).expect("write");
        }
        w.write_all(&sync()).expect("sync");
    });
    let got = read_until_ready(&mut s);
    writer.join().expect("writer");
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, vec![b'E', b'Z'], "{:?}", &got[..got.len().min(4)]);
    let error = String::from_utf8_lossy(&got[0].1);
    assert!(
        error.contains("0A000") && error.contains("16 MiB"),
        "{error}"
    );
    the_connection_goes_on(&mut s);
    drop(s);
    quiescent(&gw).await;
}

/// A probe's finding (session 24): a Query message whose text had no terminating NUL (or bytes
/// after it) got 0A000 "cannot find the statement to route" from a sharded database, where
/// PostgreSQL answers 08P01. The pooler now refuses it as PostgreSQL does, and the connection
/// goes on.
#[tokio::test]
async fn a_malformed_query_is_a_protocol_violation() {
    let (_shards, gw, port) = keyed().await;
    use pg_common::{pg_message, read_until_ready};
    let mut s = pg_common::raw_login(port);
    for body in [&b"SELECT 1"[..], b"SELECT 1\0junk\0"] {
        s.write_all(&pg_message(b'Q', &[body])).expect("query");
        let got = read_until_ready(&mut s);
        let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, vec![b'E', b'Z'], "{got:?}");
        let error = String::from_utf8_lossy(&got[0].1);
        assert!(error.contains("08P01"), "{error}");
    }
    the_connection_goes_on(&mut s);
    drop(s);
    quiescent(&gw).await;
}

/// A probe's finding (session 24): two shards on one server (databases of their own) exported
/// `scalegate_pg_host_role` twice with identical labels (Prometheus drops one of a duplicate
/// pair); `scalegate_pg_host_transactions_total` already had `shard`. Every host series of a
/// sharded database now names its shard.
#[tokio::test]
async fn two_shards_on_one_server_have_a_series_each() {
    let pg = PgServer::start().await;
    for db in ["s0", "s1"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        pg.psql(db, SCHEMA);
    }
    let port = free_port();
    let cfg = format!(
        "[postgres]\nlisten = \"127.0.0.1:{port}\"\n[postgres.databases.app]\n\
         shards = [\"postgres://postgres@127.0.0.1:{p}/s0\", \"postgres://postgres@127.0.0.1:{p}/s1\"]\n\
         sharding = {{ function = \"modulus\", keys = [\"users.user_id\"] }}\n",
        p = pg.port
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let roles: Vec<String> = gw
        .admin_get("/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("scalegate_pg_host_role{"))
        .map(str::to_string)
        .collect();
    assert_eq!(roles.len(), 2, "{roles:?}");
    assert!(roles.iter().any(|l| l.contains("shard=\"0\"")), "{roles:?}");
    assert!(roles.iter().any(|l| l.contains("shard=\"1\"")), "{roles:?}");
    quiescent(&gw).await;
}

/// The regression hunt's finding (session 24) in the bound on a held batch: one autocommit
/// INSERT with a 17 MB parameter was refused ("a batch of over 16 MiB without Sync") when the
/// buffer reached the limit before its Bind was read whole. One long message never decides
/// alone now, wherever the reads split.
#[tokio::test]
async fn one_long_statement_is_not_a_long_batch() {
    use pg_common::{execute, parse, pg_message, read_until_ready, sync};
    let (_shards, gw, port) = keyed().await;
    let mut s = pg_common::raw_login(port);
    let name = "x".repeat(17 << 20);
    let param = |v: &[u8]| [&(v.len() as i32).to_be_bytes()[..], v].concat();
    // Alone, then inside a transaction (a server held: the batch is checked against its shard).
    for (id, in_transaction) in [(b"7", false), (b"8", true)] {
        if in_transaction {
            pg_common::query(&mut s, "BEGIN");
            read_until_ready(&mut s);
        }
        let bind = pg_message(
            b'B',
            &[
                b"\0\0",
                &[0, 0, 0, 2],
                &param(id),
                &param(name.as_bytes()),
                &[0, 0],
            ],
        );
        let insert = "INSERT INTO users (user_id, name) VALUES ($1, $2)";
        let first = [parse("", insert), bind].concat();
        // The buffer passes 16 MiB with the Bind still half read; the rest comes a moment later.
        let cut = 16 << 20;
        s.write_all(&first[..cut]).expect("first part");
        std::thread::sleep(std::time::Duration::from_millis(300));
        s.write_all(&[&first[cut..], &execute(0)[..], &sync()].concat())
            .expect("the rest");
        let got = read_until_ready(&mut s);
        let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"12CZ".to_vec(), "{:?}", &got[..got.len().min(3)]);
        if in_transaction {
            pg_common::query(&mut s, "COMMIT");
            read_until_ready(&mut s);
        }
    }
    let c = client(port).await;
    for id in [7, 8] {
        let sql = format!("SELECT length(name) FROM users WHERE user_id = {id}");
        let len: i32 = pg_one(&c, &sql).await;
        assert_eq!(len as usize, name.len());
    }
    drop((s, c));
    quiescent(&gw).await;
}
