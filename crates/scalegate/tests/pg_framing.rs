//! Client messages as the network delivers them: split across many reads, one byte at a time,
//! larger than any read buffer, and a client's half-sent message waiting while other clients'
//! whole ones run. The pooler shares its read buffers between clients that have nothing
//! buffered, so what one client has half sent must stay its own.

mod common;
mod pg_common;

use std::io::Write;
use std::time::Duration;

use common::*;
use pg_common::*;
use scalegate_testkit::PgServer;

/// The first column of the first DataRow in `messages`.
fn first_value(messages: &[(u8, Vec<u8>)]) -> Option<Vec<u8>> {
    let (_, row) = messages.iter().find(|(tag, _)| *tag == b'D')?;
    let len = i32::from_be_bytes(row.get(2..6)?.try_into().ok()?);
    Some(row.get(6..6 + usize::try_from(len).ok()?)?.to_vec())
}

#[tokio::test]
async fn a_half_sent_message_stays_its_clients_while_others_run() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 1", "").await;
    let mut a = raw_login(port);
    let mut b = raw_login(port);
    a.set_nodelay(true).ok();
    b.set_nodelay(true).ok();

    // A sends half of a query larger than any read buffer, then waits.
    let big = "x".repeat(200_000);
    let qa = query_message(&format!("SELECT '{big}' AS v"));
    let half = qa.len() / 2;
    a.write_all(&qa[..half]).expect("first half");
    std::thread::sleep(Duration::from_millis(100));

    // B runs whole queries meanwhile, on the one server connection.
    for i in 0..50 {
        query(&mut b, &format!("SELECT {i}"));
        let got = first_value(&read_until_ready(&mut b));
        assert_eq!(got, Some(i.to_string().into_bytes()), "B's query {i}");
    }

    // The rest of A's query arrives in small pieces, with pauses.
    for (n, chunk) in qa[half..].chunks(1000).enumerate() {
        a.write_all(chunk).expect("rest");
        if n % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let got = first_value(&read_until_ready(&mut a)).expect("A's row");
    assert_eq!(got.len(), big.len());
    assert!(got == big.as_bytes(), "A's value came back changed");

    // One byte per write, while B keeps running whole queries between the bytes.
    for (n, byte) in query_message("SELECT 42").into_iter().enumerate() {
        a.write_all(&[byte]).expect("byte");
        query(&mut b, &format!("SELECT {n}"));
        let got = first_value(&read_until_ready(&mut b));
        assert_eq!(got, Some(n.to_string().into_bytes()), "B between A's bytes");
    }
    assert_eq!(first_value(&read_until_ready(&mut a)), Some(b"42".to_vec()));

    // A pipeline of queries in one write, and both clients still answer.
    let pipeline: Vec<u8> = (0..20)
        .flat_map(|i| query_message(&format!("SELECT {i}")))
        .collect();
    a.write_all(&pipeline).expect("pipeline");
    for i in 0..20 {
        let got = first_value(&read_until_ready(&mut a));
        assert_eq!(got, Some(i.to_string().into_bytes()), "pipelined {i}");
    }
    drop((a, b));
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn a_message_over_the_limit_gets_its_fatal_not_a_reset() {
    // psycopg sending a 70 MB parameter got "server closed the connection unexpectedly": the
    // pooler closed the socket with the client's bytes unread, which resets the connection
    // and drops the FATAL on its way.
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "", "").await;
    let mut s = raw_login(port);
    let size: usize = 70 << 20;
    let mut head = vec![b'Q'];
    head.extend_from_slice(&u32::try_from(size + 4).expect("size").to_be_bytes());
    s.write_all(&head).expect("header");
    let chunk = vec![b'x'; 1 << 20];
    let mut write_error = None;
    for _ in 0..70 {
        if let Err(e) = s.write_all(&chunk) {
            write_error = Some(e);
            break;
        }
    }
    // As libpq does, a client that cannot finish its write reports that, not the FATAL.
    assert!(
        write_error.is_none(),
        "the client's write failed: {write_error:?}"
    );
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let read = std::io::Read::read_to_end(&mut s, &mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("FATAL") && text.contains("08P01"),
        "{read:?}: {text:?}"
    );
    drop(s);
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn psql_sending_a_message_over_the_limit_shows_the_fatal() {
    // libpq stops at the first EOF while it still writes: a FIN sent before the FATAL is read
    // made psql report "server closed the connection unexpectedly" without the reason.
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "", "").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.sql");
    let value = "x".repeat(70 << 20);
    std::fs::write(&file, format!("SELECT '{value}';\n")).expect("write");
    drop(value);
    let out = psql_app(port).arg("-f").arg(&file).output().expect("psql");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FATAL"), "{err}");
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn a_message_type_no_client_sends_gets_fatal_08p01() {
    // Unknown message types were ignored: a client waiting for an answer hung.
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "", "").await;
    for tag in [b'Z', 0u8, b'p'] {
        let mut s = raw_login(port);
        s.write_all(&[tag, 0, 0, 0, 4]).expect("write");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut got = Vec::new();
        let read = std::io::Read::read_to_end(&mut s, &mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("FATAL") && text.contains("08P01"),
            "{tag}: {read:?} {text:?}"
        );
    }
    pooler_quiescent(&gw, port).await;
}

/// A probe's finding: psycopg 3 ends every pipeline and `executemany()` with Sync then Flush.
/// The Flush, alone after the Sync's answer, took a server connection for a client that was
/// idle and out of any transaction, and kept it until the client's next statement: eight idle
/// psycopg clients exhausted `pool_size = 8`. A Flush with nothing to flush takes no server.
#[tokio::test]
async fn a_flush_after_the_sync_holds_no_server() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 1", "wait_timeout = \"2s\"").await;
    let mut a = raw_login(port);
    let batch = [parse("", "SELECT 1"), bind(""), execute(0), sync(), flush()].concat();
    a.write_all(&batch).expect("pipeline");
    read_until_ready(&mut a);
    // And a Flush of its own, later.
    std::thread::sleep(Duration::from_millis(100));
    a.write_all(&flush()).expect("flush");
    std::thread::sleep(Duration::from_millis(100));
    // Another client gets the one server (before: 53300 after the 2 s wait).
    let mut b = raw_login(port);
    query(&mut b, "SELECT 7");
    let got = read_until_ready(&mut b);
    assert_eq!(first_value(&got), Some(b"7".to_vec()), "{got:?}");
    // The first client still works.
    query(&mut a, "SELECT 8");
    assert_eq!(first_value(&read_until_ready(&mut a)), Some(b"8".to_vec()));
    drop((a, b));
    pooler_quiescent(&gw, port).await;
}
