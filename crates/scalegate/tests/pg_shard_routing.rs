//! Every sharded statement reaches its shard or is refused, against four real PostgreSQL
//! shards (hash sharding, 256 virtual shards): statements after the first in a transaction,
//! the extended protocol, and the real asyncpg client (installed into target/pyenv), whose
//! first use of a statement is Parse/Describe/Flush before the Bind, and whose `executemany`
//! pipelines Bind/Execute pairs under one Sync. Placement is checked on each shard with
//! PostgreSQL's own partition hash.

mod common;

use common::*;
use scalegate_testkit::PgServer;
use scalegate_testkit::python;

const SCHEMA: &str = "CREATE TABLE users (user_id bigint PRIMARY KEY, name text, score int)";

/// PostgreSQL's hash partitioning remainder of `user_id` for modulus 256 (the seed and the
/// combining constant of `compute_partition_hash_value`), then the default map (v % 4).
const WRONG_SHARD: &str = "SELECT user_id FROM users \
     WHERE ((hashint8extended(user_id, 8816678312871386365) & 255) + 227) % 256 % 4 <> ";

struct Shards {
    servers: Vec<PgServer>,
    gw: GatewayProcess,
    port: u16,
}

async fn four_shards() -> Shards {
    let mut servers = Vec::new();
    for _ in 0..4 {
        let s = PgServer::start().await;
        s.psql("postgres", SCHEMA);
        servers.push(s);
    }
    let port = free_port();
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("\"postgres://postgres@127.0.0.1:{}/postgres\"", s.port))
        .collect();
    let cfg = format!(
        "[postgres]\nlisten = \"127.0.0.1:{port}\"\n[postgres.databases.app]\n\
         shards = [{}]\npool_mode = \"transaction\"\npool_size = 4\n\
         sharding = {{ function = \"hash\", virtual_shards = 256, keys = [\"users.user_id\"] }}\n",
        urls.join(", ")
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    Shards { servers, gw, port }
}

impl Shards {
    /// The ids stored on shard `i`.
    fn ids_on(&self, i: usize) -> Vec<i64> {
        let out = self.servers[i].psql("postgres", "SELECT user_id FROM users ORDER BY 1");
        out.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Panics if any shard holds a row PostgreSQL's hash puts elsewhere.
    fn assert_placement(&self) {
        for (i, s) in self.servers.iter().enumerate() {
            let wrong = s.psql("postgres", &format!("{WRONG_SHARD}{i}"));
            assert!(
                wrong.trim().is_empty(),
                "rows on the wrong shard {i}: {wrong}"
            );
        }
    }

    fn seed(&self) {
        // Users 1 → shard 0, 3 → shard 1, 77 → shard 2 (as PostgreSQL's hash places them).
        for (i, s) in self.servers.iter().enumerate() {
            s.psql(
                "postgres",
                &format!(
                    "INSERT INTO users SELECT id, 'u' || id, 0 FROM generate_series(1, 200) id \
                     WHERE ((hashint8extended(id, 8816678312871386365) & 255) + 227) % 256 % 4 = {i}"
                ),
            );
        }
    }
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn a_transaction_never_writes_to_a_shard_it_does_not_run_on() {
    let s = four_shards().await;
    s.seed();
    assert!(s.ids_on(0).contains(&1) && s.ids_on(1).contains(&3) && s.ids_on(2).contains(&77));
    let mut c = pg_client(s.port, "app").await;
    // Simple protocol: the second UPDATE is for shard 1, the transaction is on shard 0.
    c.simple_query("BEGIN").await.expect("begin");
    c.simple_query("UPDATE users SET score = 999 WHERE user_id = 1")
        .await
        .expect("first update");
    let e = c
        .simple_query("UPDATE users SET score = 999 WHERE user_id = 3")
        .await
        .expect_err("a statement for another shard is refused");
    assert_eq!(code(&e), "0A000", "{e:?}");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("shard 0") && msg.contains("shard 1"), "{msg}");
    // The transaction is failed, as after any error: COMMIT rolls back.
    let e = c.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(code(&e), "25P02", "{e:?}");
    c.simple_query("COMMIT").await.expect("commit answers");
    for (shard, id) in [(0, 1), (1, 3)] {
        assert_eq!(
            s.servers[shard].psql(
                "postgres",
                &format!("SELECT score FROM users WHERE user_id = {id}")
            ),
            "0",
            "user {id} unchanged"
        );
    }
    // Extended protocol, inserts: 1001 then 1002, on different shards.
    let (a, b) = (1001i64, 1002i64);
    let tx = c.transaction().await.expect("begin");
    tx.execute("INSERT INTO users (user_id, name) VALUES ($1, 'x')", &[&a])
        .await
        .expect("first insert");
    let e = tx
        .execute("INSERT INTO users (user_id, name) VALUES ($1, 'x')", &[&b])
        .await
        .expect_err("second insert is for another shard");
    assert_eq!(code(&e), "0A000", "{e:?}");
    tx.rollback().await.expect("rollback");
    for id in [a, b] {
        let n = c
            .query("SELECT 1 FROM users WHERE user_id = $1", &[&id])
            .await
            .expect("lookup");
        assert!(n.is_empty(), "{id} was written");
    }
    // A keyless SELECT after a keyed statement is refused, not answered from one shard.
    let tx = c.transaction().await.expect("begin");
    tx.query("SELECT name FROM users WHERE user_id = $1", &[&77i64])
        .await
        .expect("keyed read");
    let e = tx
        .query("SELECT user_id FROM users ORDER BY 1", &[])
        .await
        .expect_err("keyless read inside a transaction");
    assert_eq!(code(&e), "0A000", "{e:?}");
    tx.rollback().await.expect("rollback");
    // Statements for the transaction's own shard, tableless ones and savepoints all work.
    let tx = c.transaction().await.expect("begin");
    tx.execute("UPDATE users SET score = 5 WHERE user_id = $1", &[&77i64])
        .await
        .expect("update");
    tx.batch_execute("SAVEPOINT sp").await.expect("savepoint");
    let one: i32 = tx
        .query_one("SELECT 1", &[])
        .await
        .expect("select 1")
        .get(0);
    assert_eq!(one, 1);
    tx.execute("UPDATE users SET score = 6 WHERE user_id = $1", &[&77i64])
        .await
        .expect("update again");
    tx.commit().await.expect("commit");
    assert_eq!(
        s.servers[2].psql("postgres", "SELECT score FROM users WHERE user_id = 77"),
        "6"
    );
    // A tableless SELECT outside a transaction is one row, from one shard.
    let rows = c.simple_query("SELECT now()").await.expect("now");
    let n = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(n, 1);
    s.assert_placement();
    quiescent(&s.gw).await;
}

const ASYNCPG: &str = r#"
import asyncio, sys, asyncpg

class Rollback(Exception):
    pass

async def main(port):
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="app",
                                 statement_cache_size=100)
    # First use of each statement text: Parse/Describe/Flush, then Bind/Execute/Sync.
    for k in (1, 3, 77, 150):
        rows = await conn.fetch(f"SELECT user_id, name FROM users WHERE user_id = $1 -- {k}", k)
        assert [tuple(r) for r in rows] == [(k, f"u{k}")], (k, rows)
    # The same statement again, now cached: Bind/Execute/Sync only.
    for k in range(1, 41):
        got = await conn.fetchval("SELECT name FROM users WHERE user_id = $1", k)
        assert got == f"u{k}", (k, got)
    # First-use INSERT inside a transaction, rolled back: nothing stays anywhere.
    for k in (3001, 3002, 3003, 3004):
        try:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO users (user_id, name) VALUES ($1, 'tx') -- {k}", k)
                assert await conn.fetchval(f"SELECT name FROM users WHERE user_id = $1 -- in {k}", k) == "tx"
                raise Rollback()
        except Rollback:
            pass
        assert await conn.fetchval("SELECT name FROM users WHERE user_id = $1", k) is None, k
    # ... and committed: found on its shard by key.
    for k in (4001, 4002, 4003, 4004):
        async with conn.transaction():
            await conn.execute(f"INSERT INTO users (user_id, name) VALUES ($1, 'c') -- {k}", k)
        assert await conn.fetchval("SELECT name FROM users WHERE user_id = $1", k) == "c", k
    # executemany: pipelined Bind/Execute pairs under one Sync, split by shard.
    rows = [(k, f"m{k}") for k in range(5001, 5051)]
    await conn.executemany("INSERT INTO users (user_id, name) VALUES ($1, $2)", rows)
    for k, name in rows:
        assert await conn.fetchval("SELECT name FROM users WHERE user_id = $1", k) == name, k
    # A failing executemany leaves nothing behind (5051 is new, 5001 a duplicate).
    try:
        await conn.executemany("INSERT INTO users (user_id, name) VALUES ($1, $2)",
                               [(5051, "n"), (5052, "n"), (5001, "dup")])
        raise AssertionError("duplicate accepted")
    except asyncpg.UniqueViolationError:
        pass
    for k in (5051, 5052):
        assert await conn.fetchval("SELECT name FROM users WHERE user_id = $1", k) is None, k
    # Two shards in one transaction: refused with 0A000, and nothing is written.
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO users (user_id, name) VALUES ($1, 'x')", 6001)
            await conn.execute("INSERT INTO users (user_id, name) VALUES ($1, 'x')", 6002)
        raise AssertionError("cross-shard transaction accepted")
    except asyncpg.FeatureNotSupportedError as e:
        assert "shard" in str(e), e
    for k in (6001, 6002):
        assert await conn.fetchval("SELECT name FROM users WHERE user_id = $1", k) is None, k
    # A tableless SELECT is one row.
    assert len(await conn.fetch("SELECT version()")) == 1
    await conn.close()
    print("ok")

asyncio.run(main(int(sys.argv[1])))
"#;

#[tokio::test]
async fn asyncpg_reads_and_writes_every_row_on_its_shard() {
    let py = python::python_with(&["asyncpg"]);
    let s = four_shards().await;
    s.seed();
    let port = s.port.to_string();
    let out = tokio::task::spawn_blocking(move || python::run(&py, ASYNCPG, &[&port]))
        .await
        .expect("asyncpg script");
    assert_eq!(out.trim(), "ok");
    s.assert_placement();
    let all: Vec<i64> = (0..4).flat_map(|i| s.ids_on(i)).collect();
    for k in 5001..=5050 {
        assert_eq!(
            all.iter().filter(|&&x| x == k).count(),
            1,
            "{k} stored once"
        );
    }
    for k in [3001, 3002, 3003, 3004, 5051, 5052, 6001, 6002] {
        assert!(!all.contains(&k), "{k} must not be stored");
    }
    // executemany spread its rows over every shard.
    for i in 0..4 {
        assert!(
            s.ids_on(i).iter().any(|k| (5001..=5050).contains(k)),
            "shard {i} got none of the executemany rows"
        );
    }
    quiescent(&s.gw).await;
}

/// The `xacts` column of SHOW HOSTS per shard, and the rows of SHOW POOLS.
fn console(port: u16) -> (Vec<(String, u64)>, String) {
    let hosts = scalegate_testkit::postgres::psql(port, "postgres", "scalegate", "SHOW HOSTS")
        .expect("SHOW HOSTS");
    let xacts = hosts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Some((f.get(1)?.to_string(), f.last()?.parse().ok()?))
        })
        .collect();
    let pools = scalegate_testkit::postgres::psql(port, "postgres", "scalegate", "SHOW POOLS")
        .expect("SHOW POOLS");
    (xacts, pools)
}

#[tokio::test]
async fn the_console_shows_each_shard_and_logins_are_not_transactions() {
    let s = four_shards().await;
    s.seed();
    // Clients that log in, prepare, ask the server version and set things run no transaction
    // of their own: no shard's count moves, and shard 0 does not look hot.
    for _ in 0..10 {
        let c = pg_client(s.port, "app").await;
        c.prepare("SELECT name FROM users WHERE user_id = $1")
            .await
            .expect("prepare");
        c.simple_query("SELECT version()").await.expect("version");
        c.simple_query("SET application_name = 'x'")
            .await
            .expect("set");
    }
    let (xacts, pools) = console(s.port);
    let shards: Vec<&str> = xacts.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(shards, ["0", "1", "2", "3"], "{xacts:?}");
    assert!(xacts.iter().all(|(_, n)| *n == 0), "{xacts:?}");
    // Each pool row names its shard.
    for shard in 0..4 {
        assert!(
            pools
                .lines()
                .any(|l| l.starts_with("app|postgres|") && l.ends_with(&format!("|{shard}"))),
            "{pools}"
        );
    }
    // A keyed transaction counts on its own shard.
    let c = pg_client(s.port, "app").await;
    c.query("SELECT name FROM users WHERE user_id = $1", &[&77i64])
        .await
        .expect("read on shard 2");
    let (xacts, _) = console(s.port);
    assert_eq!(
        xacts.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [0, 0, 1, 0],
        "{xacts:?}"
    );
    quiescent(&s.gw).await;
}
