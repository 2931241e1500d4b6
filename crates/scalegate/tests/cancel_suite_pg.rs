//! The cancellation suite for the PostgreSQL pooler (issue 14), against a real PostgreSQL:
//! hundreds of sessions, each cut at a phase drawn from a seeded generator — tokio-postgres
//! clients dropped mid-query, mid-transaction, pinned by session state or while waiting for a
//! server, a query's future dropped while its client goes on, and raw sockets closed in the
//! middle of a message or of an unsynced extended-protocol batch. Afterwards no client, waiter,
//! pinned client or handed-out server connection is left in `SHOW POOLS` or `/metrics`, no
//! server backend is left in a transaction, nothing cut before its COMMIT was committed, every
//! commit that was acknowledged is there, and the whole pool serves again.
//!
//! `SG_CANCEL_SESSIONS` sets how many sessions (default 2000), `SG_CANCEL_SEED` the seed; a
//! failure prints the seed that replays its draws.

mod common;
mod pg_common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pg_common::*;
use scalegate_testkit::PgServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where a session is cut.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Raw socket: part of the startup message.
    StartupCut,
    /// Raw socket: logged in, then part of a Query or Parse message.
    MessageCut,
    /// Raw socket: Parse/Bind/Execute with no Sync, then closed.
    UnsyncedCut,
    /// Raw socket: a whole slow query, closed before its answer.
    QueryCut,
    /// tokio-postgres: a slow query, the client dropped at a random time.
    ClientDropped,
    /// tokio-postgres: BEGIN, an INSERT, then dropped before COMMIT (must never be committed).
    TransactionCut,
    /// tokio-postgres: BEGIN, an INSERT, COMMIT (must be there when acknowledged).
    Committed,
    /// tokio-postgres: a query's future dropped; the same client's next answer is its own.
    FutureDropped,
    /// tokio-postgres: pinned by a temp table, then dropped mid-query.
    PinnedCut,
}

const PHASES: &[Phase] = &[
    Phase::StartupCut,
    Phase::MessageCut,
    Phase::UnsyncedCut,
    Phase::QueryCut,
    Phase::ClientDropped,
    Phase::TransactionCut,
    Phase::Committed,
    Phase::FutureDropped,
    Phase::PinnedCut,
];

/// What the sessions saw and did, shared by the client tasks.
#[derive(Default)]
struct Record {
    outcomes: BTreeMap<String, usize>,
    /// Rows inserted by transactions cut before their COMMIT was sent.
    never_committed: Vec<i64>,
    /// Rows whose COMMIT was acknowledged.
    committed: Vec<i64>,
    /// Answers a client got that were not its own.
    mixed_up: Vec<String>,
}

type Shared = Arc<Mutex<Record>>;

fn note(r: &Shared, f: impl FnOnce(&mut Record)) {
    if let Ok(mut r) = r.lock() {
        f(&mut r);
    }
}

/// A pooler client and the task driving its connection (aborting it closes the socket).
struct Pg {
    client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<()>,
}

impl Pg {
    async fn connect(port: u16) -> Option<Pg> {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=postgres dbname=app"),
            tokio_postgres::NoTls,
        )
        .await
        .ok()?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(Pg { client, conn })
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Runs `work` for at most `ms` milliseconds; whether it finished.
async fn within<F: std::future::Future>(ms: usize, work: F) -> bool {
    tokio::time::timeout(Duration::from_millis(ms as u64), work)
        .await
        .is_ok()
}

/// One framed frontend message.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn startup() -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0postgres\0database\0app\0\0");
    let mut m = (body.len() as i32 + 4).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Logs in on a raw socket: the startup message, then messages up to ReadyForQuery.
async fn raw_login(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(&startup()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Each backend message: tag, length, body; ReadyForQuery ('Z') ends the login.
        while buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < len + 1 {
                break;
            }
            match buf[0] {
                b'Z' => return Some(s),
                b'E' => return None,
                _ => {
                    buf.drain(..len + 1);
                }
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Closes a raw socket, half the time with a reset instead of an orderly close.
fn close(s: TcpStream, rng: &mut Rng) {
    if rng.below(2) == 0 {
        let _ = s.set_zero_linger();
    }
    drop(s);
}

async fn raw_session(port: u16, rng: &mut Rng, phase: Phase) -> String {
    if let Phase::StartupCut = phase {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
            return "connect failed".into();
        };
        let m = startup();
        let _ = s.write_all(&m[..1 + rng.below(m.len() - 1)]).await;
        close(s, rng);
        return "cut".into();
    }
    let Some(mut s) = raw_login(port).await else {
        return "login failed".into();
    };
    let sleep = format!("SELECT pg_sleep(0.0{})", rng.below(5));
    let bytes = match phase {
        Phase::MessageCut => {
            let m = if rng.below(2) == 0 {
                message(b'Q', &cstr("SELECT 1"))
            } else {
                let mut body = cstr("");
                body.extend(cstr("SELECT $1::int"));
                body.extend([0, 0]);
                message(b'P', &body)
            };
            m[..1 + rng.below(m.len() - 1)].to_vec()
        }
        Phase::UnsyncedCut => {
            let mut parse = cstr("");
            parse.extend(cstr(&sleep));
            parse.extend([0, 0]);
            let mut bind = cstr("");
            bind.extend(cstr(""));
            bind.extend([0, 0, 0, 0, 0, 0]);
            let mut execute = cstr("");
            execute.extend([0, 0, 0, 0]);
            let mut all = message(b'P', &parse);
            all.extend(message(b'B', &bind));
            all.extend(message(b'E', &execute));
            all
        }
        _ => message(b'Q', &cstr(&sleep)),
    };
    let _ = s.write_all(&bytes).await;
    tokio::time::sleep(Duration::from_millis(rng.below(40) as u64)).await;
    close(s, rng);
    "cut".into()
}

async fn client_session(port: u16, rng: &mut Rng, phase: Phase, id: i64, r: &Shared) -> String {
    let Some(pg) = Pg::connect(port).await else {
        return "connect failed".into();
    };
    let c = &pg.client;
    let cut = 1 + rng.below(60);
    let sleep = format!("SELECT pg_sleep(0.0{})", rng.below(5));
    match phase {
        Phase::ClientDropped => {
            let done = within(cut, c.simple_query(&sleep)).await;
            if done { "finished" } else { "cut" }.into()
        }
        Phase::TransactionCut => {
            if c.batch_execute("BEGIN").await.is_err() {
                return "begin failed".into();
            }
            let insert = format!("INSERT INTO cut VALUES ({id})");
            if c.batch_execute(&insert).await.is_err() {
                return "insert failed".into();
            }
            // Only now is the row certain to be in a transaction that was never committed.
            note(r, |r| r.never_committed.push(id));
            let _ = within(cut, c.simple_query(&sleep)).await;
            "cut".into()
        }
        Phase::Committed => {
            let sql = format!("BEGIN; INSERT INTO cut VALUES ({id}); {sleep}; COMMIT");
            match c.batch_execute(&sql).await {
                Ok(()) => {
                    note(r, |r| r.committed.push(id));
                    "committed".into()
                }
                Err(e) => format!("failed {}", sqlstate(&e)),
            }
        }
        Phase::FutureDropped => {
            let _ = within(
                cut,
                c.query_one("SELECT $1::int8 + 0 FROM pg_sleep(0.02)", &[&-id]),
            )
            .await;
            match c.query_one("SELECT $1::int8", &[&id]).await {
                Ok(row) if row.get::<_, i64>(0) == id => "own answer".into(),
                Ok(row) => {
                    let got: i64 = row.get(0);
                    note(r, |r| r.mixed_up.push(format!("{id} got {got}")));
                    "mixed up".into()
                }
                Err(e) => format!("failed {}", sqlstate(&e)),
            }
        }
        Phase::PinnedCut => {
            if c.batch_execute("CREATE TEMP TABLE mine (x int)")
                .await
                .is_err()
            {
                return "temp table failed".into();
            }
            let done = within(cut, c.simple_query(&sleep)).await;
            if done {
                "pinned, finished"
            } else {
                "pinned, cut"
            }
            .into()
        }
        _ => unreachable!("raw phases are not client sessions"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cut_at_every_phase_leave_nothing_held() {
    let seed = env_number("SG_CANCEL_SEED", 0x5ca1_e9a7);
    let _replay = Replay("SG_CANCEL_SEED", seed);
    let total = env_number("SG_CANCEL_SESSIONS", 2000) as usize;
    let pg = PgServer::start().await;
    pg.psql("postgres", "CREATE TABLE cut (id int8 PRIMARY KEY)");
    // Three server connections for twelve clients: most sessions wait for one at some point.
    let (gw, port) = pooler(
        BIN,
        &pg,
        "pool_size = 3\npool_mode = \"transaction\"",
        "wait_timeout = \"3s\"",
    )
    .await;
    let record: Shared = Arc::default();
    let clients = 12;
    let per_client = total.div_ceil(clients);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let record = record.clone();
        let mut rng = Rng(seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.push(tokio::spawn(async move {
            for n in 0..per_client {
                let phase = PHASES[rng.below(PHASES.len())];
                let id = (client * per_client + n) as i64 + 1;
                let what = match phase {
                    Phase::StartupCut
                    | Phase::MessageCut
                    | Phase::UnsyncedCut
                    | Phase::QueryCut => raw_session(port, &mut rng, phase).await,
                    _ => client_session(port, &mut rng, phase, id, &record).await,
                };
                note(&record, |r| {
                    *r.outcomes.entry(format!("{phase:?}: {what}")).or_insert(0) += 1
                });
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let (outcomes, never, committed, mixed) = {
        let r = record.lock().expect("record");
        (
            r.outcomes.clone(),
            r.never_committed.clone(),
            r.committed.clone(),
            r.mixed_up.clone(),
        )
    };
    eprintln!(
        "{} sessions (seed {seed}):\n{outcomes:#?}",
        outcomes.values().sum::<usize>()
    );
    assert!(
        mixed.is_empty(),
        "clients got answers not theirs: {mixed:?}"
    );
    pooler_empty(&gw, port).await;
    no_backend_left_busy(&pg).await;
    rows_match(&pg, &never, &committed);
    whole_pool_serves(port, 3).await;
    pooler_empty(&gw, port).await;
}

/// No PostgreSQL backend is left running a query or inside a transaction.
async fn no_backend_left_busy(pg: &PgServer) {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
               AND pid <> pg_backend_pid() AND state <> 'idle'";
    let idle = eventually(Duration::from_secs(10), || async {
        pg.psql("postgres", sql) == "0"
    })
    .await;
    let busy = pg.psql(
        "postgres",
        "SELECT state, query FROM pg_stat_activity WHERE backend_type = 'client backend' \
         AND pid <> pg_backend_pid() AND state <> 'idle'",
    );
    assert!(idle, "server backends left busy:\n{busy}");
}

/// No row of a transaction cut before its COMMIT is there; every acknowledged commit is.
fn rows_match(pg: &PgServer, never: &[i64], committed: &[i64]) {
    let have: std::collections::BTreeSet<i64> = pg
        .psql("postgres", "SELECT id FROM cut")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let leaked: Vec<_> = never.iter().filter(|id| have.contains(id)).collect();
    assert!(leaked.is_empty(), "cut transactions committed: {leaked:?}");
    let lost: Vec<_> = committed.iter().filter(|id| !have.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
}

/// `size` clients each hold a transaction at once: every server permit was given back (a
/// leaked one would make the last of them wait out `wait_timeout` and fail with 53300).
async fn whole_pool_serves(port: u16, size: usize) {
    let mut held = Vec::new();
    for i in 0..size {
        let c = pg_client(port, "app").await;
        let began = c.batch_execute("BEGIN; SELECT 1").await;
        assert!(began.is_ok(), "transaction {i} of {size}: {began:?}");
        held.push(c);
    }
    for c in &held {
        c.batch_execute("COMMIT").await.expect("commit");
    }
}
