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
    // The deferred BEGIN reaches the shard as written (isolation level kept).
    c.simple_query("BEGIN ISOLATION LEVEL SERIALIZABLE")
        .await
        .expect("begin");
    c.simple_query("SELECT name FROM users WHERE user_id = 3")
        .await
        .expect("keyed read");
    let level = c
        .simple_query("SHOW transaction_isolation")
        .await
        .expect("show");
    assert!(
        level.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("serializable"))),
        "the transaction's isolation level was lost"
    );
    c.simple_query("COMMIT").await.expect("commit");
    // BEGIN with more statements in the same query is not answered as a bare BEGIN (which
    // would drop the UPDATE silently): it is refused as a whole.
    let e = c
        .simple_query("BEGIN ; UPDATE users SET score = 7 WHERE user_id = 1")
        .await
        .expect_err("several statements in one query");
    assert_eq!(code(&e), "0A000", "{e:?}");
    assert_eq!(
        s.servers[0].psql("postgres", "SELECT score FROM users WHERE user_id = 1"),
        "0"
    );
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
    # Without a statement cache (what PgBouncer setups use) asyncpg sends the unnamed
    # statement: Parse/Describe/Flush, then Bind/Execute/Sync of it.
    bare = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="app",
                                 statement_cache_size=0)
    for k in (1, 3, 77, 150, 4001):
        got = await bare.fetchval("SELECT name FROM users WHERE user_id = $1", k)
        assert got is not None and got.startswith(("u", "c")), (k, got)
    try:
        async with bare.transaction():
            await bare.execute("INSERT INTO users (user_id, name) VALUES ($1, 'b')", 7001)
            raise Rollback()
    except Rollback:
        pass
    assert await bare.fetchval("SELECT name FROM users WHERE user_id = $1", 7001) is None
    await bare.executemany("INSERT INTO users (user_id, name) VALUES ($1, $2)",
                           [(k, f"e{k}") for k in range(7101, 7121)])
    for k in range(7101, 7121):
        assert await bare.fetchval("SELECT name FROM users WHERE user_id = $1", k) == f"e{k}", k
    await bare.close()
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
    for k in 7101..=7120 {
        assert_eq!(
            all.iter().filter(|&&x| x == k).count(),
            1,
            "{k} stored once"
        );
    }
    for k in [3001, 3002, 3003, 3004, 5051, 5052, 6001, 6002, 7001] {
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

/// A raw protocol client: just enough framing to send what drivers send.
mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
        out.push(tag);
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
    }

    fn cstr(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }

    pub fn parse(out: &mut Vec<u8>, sql: &str) {
        let mut b = Vec::new();
        cstr(&mut b, "");
        cstr(&mut b, sql);
        b.extend_from_slice(&0i16.to_be_bytes());
        msg(out, b'P', &b);
    }

    /// Bind of the unnamed statement with one text parameter, then Execute.
    pub fn bind_execute(out: &mut Vec<u8>, value: &str) {
        let mut b = Vec::new();
        cstr(&mut b, "");
        cstr(&mut b, "");
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&(value.len() as i32).to_be_bytes());
        b.extend_from_slice(value.as_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        msg(out, b'B', &b);
        msg(out, b'E', &[0, 0, 0, 0, 0]);
    }

    pub fn query(out: &mut Vec<u8>, sql: &str) {
        let mut b = Vec::new();
        cstr(&mut b, sql);
        msg(out, b'Q', &b);
    }

    pub struct Conn {
        s: TcpStream,
        buf: Vec<u8>,
    }

    impl Conn {
        pub async fn connect(port: u16) -> Conn {
            let s = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let mut body = Vec::new();
            body.extend_from_slice(&196_608i32.to_be_bytes());
            for kv in ["user", "postgres", "database", "app", ""] {
                cstr(&mut body, kv);
            }
            let mut start = (body.len() as i32 + 4).to_be_bytes().to_vec();
            start.extend_from_slice(&body);
            let mut c = Conn { s, buf: Vec::new() };
            c.send(&start).await;
            c.until_ready().await;
            c
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            self.s.write_all(bytes).await.expect("send");
        }

        /// The next message: (tag, body).
        pub async fn next(&mut self) -> (u8, Vec<u8>) {
            loop {
                if self.buf.len() >= 5 {
                    let len =
                        i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                            as usize;
                    if self.buf.len() > len {
                        let m: Vec<u8> = self.buf.drain(..=len).collect();
                        return (m[0], m[5..].to_vec());
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    self.s.read(&mut chunk),
                )
                .await
                .expect("an answer within 5 s")
                .expect("read");
                assert!(n > 0, "the pooler closed the connection");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        /// Tags up to and including the next ReadyForQuery, and its status.
        pub async fn until_ready(&mut self) -> (Vec<u8>, u8) {
            let mut tags = Vec::new();
            loop {
                let (tag, body) = self.next().await;
                tags.push(tag);
                if tag == b'Z' {
                    return (tags, body[0]);
                }
            }
        }

        /// Whether anything arrives within `ms` milliseconds.
        pub async fn quiet_for(&mut self, ms: u64) -> bool {
            if !self.buf.is_empty() {
                return false;
            }
            let mut chunk = [0u8; 1];
            tokio::time::timeout(
                std::time::Duration::from_millis(ms),
                self.s.peek(&mut chunk),
            )
            .await
            .is_err()
        }
    }
}

/// The SQLSTATE of an ErrorResponse body.
fn sqlstate(body: &[u8]) -> String {
    let mut fields = body.split(|&b| b == 0);
    fields
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn flush_ended_and_unnamed_statement_batches_are_routed_or_refused() {
    let s = four_shards().await;
    s.seed();
    let mut c = raw::Conn::connect(s.port).await;
    // The unnamed statement prepared in a batch of its own, then bound: routed by the Bind.
    let mut out = Vec::new();
    raw::parse(&mut out, "SELECT name FROM users WHERE user_id = $1");
    raw::msg(&mut out, b'D', b"S\0");
    raw::msg(&mut out, b'S', &[]);
    c.send(&out).await;
    assert_eq!(c.until_ready().await, (b"1tTZ".to_vec(), b'I'));
    for (key, name) in [("77", "u77"), ("3", "u3"), ("1", "u1")] {
        let mut out = Vec::new();
        raw::bind_execute(&mut out, key);
        raw::msg(&mut out, b'S', &[]);
        c.send(&out).await;
        let (tag, row) = c.next().await;
        assert_eq!(tag, b'2', "BindComplete for {key}, got {}", tag as char);
        let (tag, row2) = c.next().await;
        assert_eq!(
            tag,
            b'D',
            "a row for {key}: {:?}",
            String::from_utf8_lossy(&row2)
        );
        assert!(row2.ends_with(name.as_bytes()), "{key}: {row:?} {row2:?}");
        assert_eq!(c.until_ready().await, (b"CZ".to_vec(), b'I'));
    }
    // In a transaction on shard 2, a Flush-ended batch for shard 1 is refused: the error comes
    // at once, nothing else until the client's Sync, then the transaction is failed.
    let mut out = Vec::new();
    raw::query(&mut out, "BEGIN");
    c.send(&out).await;
    assert_eq!(c.until_ready().await.1, b'T');
    let mut out = Vec::new();
    raw::parse(&mut out, "UPDATE users SET score = 42 WHERE user_id = $1");
    raw::bind_execute(&mut out, "77");
    raw::msg(&mut out, b'S', &[]);
    c.send(&out).await;
    assert_eq!(c.until_ready().await, (b"12CZ".to_vec(), b'T'));
    let mut out = Vec::new();
    raw::parse(&mut out, "UPDATE users SET score = 42 WHERE user_id = $1");
    raw::bind_execute(&mut out, "3");
    raw::msg(&mut out, b'H', &[]);
    c.send(&out).await;
    let (tag, body) = c.next().await;
    assert_eq!((tag, sqlstate(&body)), (b'E', "0A000".to_string()));
    assert!(
        c.quiet_for(300).await,
        "nothing but the error before the Sync"
    );
    c.send(&{
        let mut o = Vec::new();
        raw::msg(&mut o, b'S', &[]);
        o
    })
    .await;
    assert_eq!(c.until_ready().await, (b"Z".to_vec(), b'E'));
    let mut out = Vec::new();
    raw::query(&mut out, "COMMIT");
    c.send(&out).await;
    assert_eq!(c.until_ready().await, (b"CZ".to_vec(), b'I'));
    for (shard, id) in [(2, 77), (1, 3)] {
        assert_eq!(
            s.servers[shard].psql(
                "postgres",
                &format!("SELECT score FROM users WHERE user_id = {id}")
            ),
            "0",
            "the failed transaction changed nothing"
        );
    }
    quiescent(&s.gw).await;
}
