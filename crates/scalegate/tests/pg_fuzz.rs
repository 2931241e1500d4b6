//! Random protocol messages from many clients after a good login: the pooler answers or closes
//! each of them, keeps serving everyone else, and leaks no server connection.

mod common;

use std::time::Duration;

use common::*;
use scalegate_testkit::PgServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SQL: &[&[u8]] = &[
    b"select 1",
    b"select $1::int",
    b"begin",
    b"commit",
    b"rollback",
    b"set search_path = x",
    b"listen foo",
    b"\xff\xfe not utf-8",
    b"",
    b"select 1; select 2",
    b"prepare p as select 1",
    b"deallocate all",
    b"discard all",
    b"copy (select 1) to stdout",
    b"begin read only",
    b"select * from nope",
    b"/* scalegate:replica */ select 1",
    b"declare c cursor with hold for select 1",
];

const NAMES: &[&[u8]] = &[b"", b"s1", b"s2", b"\x01\x02"];

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    v.push(0);
    v
}

/// One random frontend message: well formed, half formed, or nonsense.
fn random_message(r: &mut Rng) -> Vec<u8> {
    match r.below(12) {
        0 => message(b'Q', &cstr(r.pick(SQL))),
        1 => {
            let mut b = cstr(r.pick(NAMES));
            b.extend(cstr(r.pick(SQL)));
            let n = [0u16, 1, 3, 0xffff][r.below(4)];
            b.extend_from_slice(&n.to_be_bytes());
            for _ in 0..n.min(2) {
                b.extend_from_slice(&[0, 0, 0, 23]);
            }
            message(b'P', &b)
        }
        2 => {
            let mut b = cstr(r.pick(NAMES));
            b.extend(cstr(r.pick(NAMES)));
            b.extend_from_slice(&[0, 1, 0, 7]); // one format code, an invalid one
            b.extend_from_slice(&[0, 2]); // two parameters, then lengths that lie
            b.extend_from_slice(&[0xff, 0xff, 0xff, 0xf9]);
            b.extend_from_slice(&[0, 1, 0x86, 0xa0, b'1']);
            message(b'B', &b)
        }
        3 => message(b'D', &[[b'S', b'P', b'Z'][r.below(3)], b's', b'1', 0]),
        4 => message(b'E', &[0, 0xff, 0xff, 0xff, 0xff]),
        5 | 6 => message(b'S', &[]),
        7 => message(b'C', &[b'S', 0]),
        8 => message([b'd', b'c', b'f', b'F', b'H'][r.below(5)], &r.bytes(16)),
        9 => {
            // Shorter than its own fields.
            let body = cstr(r.pick(SQL));
            message(b'P', &body[..r.below(body.len().max(1))])
        }
        10 => {
            let mut m = vec![r.next() as u8];
            m.extend_from_slice(&(4 + r.below(32) as i32).to_be_bytes());
            m.extend(r.bytes(32));
            m
        }
        _ => message(b'Q', &r.bytes(40)),
    }
}

fn startup(database: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for s in ["user", "postgres", "database", database, ""] {
        body.extend(cstr(s.as_bytes()));
    }
    let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

/// Reads what arrives within `wait`; false once the pooler closed the connection.
async fn drain(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Err(_) => return true,
            Ok(Ok(0) | Err(_)) => return false,
            Ok(Ok(_)) => {}
        }
    }
}

/// One client: a good login, then a few batches of random messages.
async fn fuzz_client(port: u16, seed: u64) {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let database = ["app", "sess"][r.below(2)];
    if s.write_all(&startup(database)).await.is_err() {
        return;
    }
    drain(&mut s, Duration::from_millis(300)).await;
    for _ in 0..1 + r.below(4) {
        let batch: Vec<u8> = (0..1 + r.below(3))
            .flat_map(|_| random_message(&mut r))
            .collect();
        if s.write_all(&batch).await.is_err() || !drain(&mut s, Duration::from_millis(30)).await {
            return;
        }
    }
}

#[tokio::test]
async fn random_messages_never_break_the_pooler_or_leak_servers() {
    let pg = PgServer::start().await;
    let port = free_port();
    let replica = PgServer::replica_of(&pg).await;
    let primary = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let standby = format!("postgres://postgres@127.0.0.1:{}/postgres", replica.port);
    let gw = GatewayProcess::start(
        BIN,
        &format!(
            "[postgres]\nlisten = \"127.0.0.1:{port}\"\nwait_timeout = \"2s\"\n\
             [postgres.databases.app]\nprimary = \"{primary}\"\nreplicas = [\"{standby}\"]\npool_size = 3\n\
             [postgres.databases.sess]\nprimary = \"{primary}\"\npool_mode = \"session\"\npool_size = 3\n"
        ),
    )
    .await;
    for wave in 0..15u64 {
        let clients: Vec<_> = (0..8)
            .map(|i| tokio::spawn(fuzz_client(port, wave * 8 + i)))
            .collect();
        for c in clients {
            c.await.expect("client task");
        }
    }
    // Everyone else is still served.
    let client = pg_client(port, "app").await;
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(one, 1);
    drop(client);
    // And every server connection came back: none is left active once the clients are gone.
    let console = pg_client(port, "scalegate").await;
    let settled = eventually(Duration::from_secs(10), || async {
        let rows = console
            .simple_query("SHOW POOLS")
            .await
            .expect("show pools");
        rows.iter().all(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.get("cl_active") == Some("0")
                    && r.get("sv_active") == Some("0")
                    && r.get("sv_open")
                        .and_then(|v| v.parse::<u32>().ok())
                        .is_some_and(|n| n <= 3)
            }
            _ => true,
        })
    })
    .await;
    let show = |m: &tokio_postgres::SimpleQueryMessage| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => (0..r.len())
            .map(|i| r.get(i).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("|"),
        _ => String::new(),
    };
    let pools: Vec<String> = console
        .simple_query("SHOW POOLS")
        .await
        .expect("pools")
        .iter()
        .map(show)
        .collect();
    let clients: Vec<String> = console
        .simple_query("SHOW CLIENTS")
        .await
        .expect("clients")
        .iter()
        .map(show)
        .collect();
    assert!(
        settled,
        "no client or server connection left behind: {pools:#?} {clients:#?}"
    );
    quiescent(&gw).await;
}
