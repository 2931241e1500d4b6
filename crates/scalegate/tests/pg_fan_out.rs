//! Fanned-out SELECTs answer what one database holding every row answers, or are refused with
//! 0A000: generated queries (a fixed seed, so a failure replays) run through the pooler over
//! two real shards and directly on a third PostgreSQL holding all rows, over the simple and
//! the extended protocol, and the answers are compared.

mod common;

use common::*;
use scalegate_testkit::PgServer;
use tokio_postgres::types::Type;
use tokio_postgres::{Client as PgClient, SimpleQueryMessage};

const SCHEMA: &str = "CREATE TABLE users (user_id bigint PRIMARY KEY, name text, score int); \
    CREATE TABLE orders (order_id bigint PRIMARY KEY, user_id bigint, total int)";

/// The rows, as SQL, the same for the shards (through the pooler) and the single database.
fn rows() -> Vec<String> {
    let mut rng = Rng(7);
    let mut out = Vec::new();
    for id in 1..=60i64 {
        let score = match rng.below(6) {
            0 => "NULL".to_string(),
            _ => (rng.below(10) as i64 - 3).to_string(),
        };
        let name = match rng.below(8) {
            0 => "NULL".to_string(),
            n => format!("'{}{}'", ["n", "N", "a", "b_", "é"][n % 5], rng.below(20)),
        };
        out.push(format!(
            "INSERT INTO users (user_id, name, score) VALUES ({id}, {name}, {score})"
        ));
    }
    for order in 1..=120i64 {
        let user = 1 + rng.below(60) as i64;
        let total = rng.below(100);
        out.push(format!(
            "INSERT INTO orders (order_id, user_id, total) VALUES ({order}, {user}, {total})"
        ));
    }
    out
}

/// A generated SELECT, and whether its ORDER BY gives a total order.
fn query(rng: &mut Rng) -> (String, bool) {
    let k = rng.below(8) as i64 - 2;
    let select = [
        "user_id, name, score",
        "*",
        "user_id, score * 2 AS s2",
        "user_id, name",
        "count(*)",
        "DISTINCT score",
        "user_id, row_number() OVER (ORDER BY user_id)",
        "user_id, max(score) OVER ()",
    ][rng.below(8)];
    let filter = [
        String::new(),
        format!("WHERE score > {k}"),
        "WHERE score IS NULL".into(),
        "WHERE name LIKE 'n%'".into(),
        format!("WHERE user_id IN (SELECT user_id FROM orders WHERE total > {})", k * 10),
        "WHERE score = (SELECT max(score) FROM users)".into(),
        format!(
            "WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = users.user_id AND o.total > {})",
            k * 10
        ),
        "WHERE user_id IN (SELECT user_id FROM users ORDER BY user_id LIMIT 3)".into(),
        "WHERE name IN (SELECT name FROM users WHERE user_id = 5)".into(),
        format!("WHERE score >= (SELECT avg(total) / 20 FROM orders WHERE total > {k})"),
        "WHERE score < (SELECT count(*) FROM orders o WHERE o.user_id = users.user_id)".into(),
    ][rng.below(11)]
    .clone();
    let (order, total) = match rng.below(4) {
        0 => (String::new(), false),
        _ => {
            let col = if select.contains("s2") {
                ["s2", "2", "user_id"][rng.below(3)]
            } else if select.contains("name") || select == "*" {
                ["score", "user_id", "name COLLATE \"C\"", "name"][rng.below(4)]
            } else {
                "user_id"
            };
            let dir = ["", " ASC", " DESC"][rng.below(3)];
            let nulls = ["", " NULLS FIRST", " NULLS LAST"][rng.below(3)];
            let tie = if col == "user_id" || !select.contains("user_id") && select != "*" {
                String::new()
            } else {
                ", user_id".into()
            };
            (format!("ORDER BY {col}{dir}{nulls}{tie}"), true)
        }
    };
    let limit = match rng.below(6) {
        0 => format!("LIMIT {}", rng.below(8)),
        1 => format!("FETCH FIRST {} ROWS ONLY", rng.below(8) + 1),
        2 => format!("OFFSET {}", rng.below(3)),
        _ => String::new(),
    };
    (
        format!("SELECT {select} FROM users {filter} {order} {limit}"),
        total,
    )
}

/// Rows of a simple query as text, or the SQLSTATE of its error.
async fn simple(c: &PgClient, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let msgs = c
        .simple_query(sql)
        .await
        .map_err(|e| e.code().map(|c| c.code().to_string()).unwrap_or_default())?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// Rows of an extended-protocol query (binary results), or the SQLSTATE of its error.
async fn extended(c: &PgClient, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let rows = c
        .query(sql, &[])
        .await
        .map_err(|e| e.code().map(|c| c.code().to_string()).unwrap_or_default())?;
    Ok(rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| match *r.columns()[i].type_() {
                    Type::INT8 => r.get::<_, Option<i64>>(i).map(|v| v.to_string()),
                    Type::INT4 => r.get::<_, Option<i32>>(i).map(|v| v.to_string()),
                    Type::TEXT => r.get::<_, Option<String>>(i),
                    ref t => Some(format!("<{t}>")),
                })
                .collect()
        })
        .collect())
}

#[tokio::test]
async fn fanned_out_selects_answer_like_one_database_or_are_refused() {
    let a = PgServer::start().await;
    let b = PgServer::start().await;
    let single = PgServer::start().await;
    for s in [&a, &b, &single] {
        s.psql("postgres", SCHEMA);
    }
    let port = free_port();
    let cfg = format!(
        "[postgres]\nlisten = \"127.0.0.1:{port}\"\n[postgres.databases.app]\n\
         shards = [\"postgres://postgres@127.0.0.1:{}/postgres\", \"postgres://postgres@127.0.0.1:{}/postgres\"]\n\
         pool_size = 3\n\
         sharding = {{ function = \"hash\", virtual_shards = 8, keys = [\"users.user_id\", \"orders.user_id\"] }}\n",
        a.port, b.port
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let routed = pg_client(port, "app").await;
    let (one, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            single.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the single database");
    tokio::spawn(conn);
    for sql in rows() {
        routed
            .simple_query(&sql)
            .await
            .expect("insert through the pooler");
        one.simple_query(&sql)
            .await
            .expect("insert into the single database");
    }
    assert!(
        !a.psql("postgres", "SELECT 1 FROM users LIMIT 1").is_empty()
            && !b.psql("postgres", "SELECT 1 FROM users LIMIT 1").is_empty(),
        "both shards hold rows"
    );
    let mut rng = Rng(20);
    let (mut compared, mut refused) = (0, 0);
    let mut failures = Vec::new();
    for i in 0..300 {
        let (sql, total) = query(&mut rng);
        let ext = i % 2 == 1;
        let (got, want) = if ext {
            (extended(&routed, &sql).await, extended(&one, &sql).await)
        } else {
            (simple(&routed, &sql).await, simple(&one, &sql).await)
        };
        let Ok(mut want) = want else {
            continue; // not valid SQL for PostgreSQL either
        };
        match got {
            Err(code) if code == "0A000" => refused += 1,
            Err(code) => failures.push(format!("{sql}: error {code}")),
            Ok(mut got) => {
                compared += 1;
                let limited = sql.contains("LIMIT") || sql.contains("FETCH");
                if !total {
                    got.sort();
                    want.sort();
                }
                let same = if !total && limited {
                    got.len() == want.len()
                } else {
                    got == want
                };
                if !same {
                    failures.push(format!(
                        "{sql} ({}):\n  pooler {got:?}\n  single {want:?}",
                        if ext { "extended" } else { "simple" }
                    ));
                }
            }
        }
    }
    eprintln!("compared {compared}, refused {refused}");
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        compared > 60 && refused > 60,
        "compared {compared}, refused {refused}"
    );
    quiescent(&gw).await;
}
