//! The least work a PostgreSQL transaction pooler can do, as a yardstick for
//! `bench/pg.sh FLOOR=1`.
//!
//! One thread. At start it logs `POOL` server connections in (trust auth only) and keeps the first
//! one's ParameterStatus messages to greet clients with. A client gets AuthenticationOk at once;
//! each batch of its messages takes a server connection from the pool (FIFO wait), is written
//! through unchanged, and the server's replies are relayed back until every Query/Sync has had its
//! ReadyForQuery; an idle ('I') one gives the connection back. Nothing else: no auth, no
//! prepared-statement tracking, no parameter re-application, no cancel, no timeouts, no TLS, no
//! metrics. Not a pooler anyone should run, only the floor under what one costs on this machine.
//!
//! Usage: `floor_pooler LISTEN SERVER USER DATABASE POOL`

use std::io;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Server connections not in use, and permits counting them (a FIFO queue for waiters).
struct Pool {
    idle: Mutex<Vec<TcpStream>>,
    free: Semaphore,
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, server, user, database, size] = args.as_slice() else {
        eprintln!("usage: floor_pooler LISTEN SERVER USER DATABASE POOL");
        std::process::exit(2);
    };
    let size: usize = size.parse().map_err(io::Error::other)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, server, user, database, size))
}

async fn serve(
    listen: &str,
    server: &str,
    user: &str,
    database: &str,
    size: usize,
) -> io::Result<()> {
    let mut idle = Vec::with_capacity(size);
    let mut greeting = Vec::new();
    for _ in 0..size {
        let (conn, params) = login(server, user, database).await?;
        if greeting.is_empty() {
            greeting = params;
        }
        idle.push(conn);
    }
    // AuthenticationOk, the server's ParameterStatus, BackendKeyData, ReadyForQuery(idle).
    let mut hello = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
    hello.extend_from_slice(&greeting);
    hello.extend_from_slice(&[b'K', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 1]);
    hello.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    let hello: Arc<[u8]> = hello.into();
    let pool = Arc::new(Pool {
        idle: Mutex::new(idle),
        free: Semaphore::new(size),
    });
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let (pool, hello) = (pool.clone(), hello.clone());
        tokio::spawn(async move {
            let _ = client_loop(client, &pool, &hello).await;
        });
    }
}

/// Logs one server connection in; returns it with the ParameterStatus messages it sent.
async fn login(server: &str, user: &str, database: &str) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut conn = TcpStream::connect(server).await?;
    conn.set_nodelay(true)?;
    let mut body = 196608u32.to_be_bytes().to_vec();
    for s in ["user", user, "database", database] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    conn.write_all(&startup).await?;
    let mut params = Vec::new();
    let mut buf = Vec::new();
    loop {
        let (tag, len) = next_message(&mut conn, &mut buf).await?;
        match tag {
            b'R' if buf[5..9] != [0, 0, 0, 0] => {
                return Err(io::Error::other("the floor pooler speaks trust auth only"));
            }
            b'S' => params.extend_from_slice(&buf[..len]),
            b'E' => return Err(io::Error::other("the server refused the login")),
            b'Z' => return Ok((conn, params)),
            _ => {}
        }
        buf.drain(..len);
    }
}

/// Reads until `buf` starts with one whole message; returns its tag and total length.
async fn next_message(conn: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(u8, usize)> {
    loop {
        if let Some(len) = whole_message(buf) {
            return Ok((buf[0], len));
        }
        read_more(conn, buf).await?;
    }
}

/// The length of the tagged message at the front of `buf`, once all of it is there.
fn whole_message(buf: &[u8]) -> Option<usize> {
    let len = 1 + u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
    (buf.len() >= len).then_some(len)
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 16384];
    let n = conn.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

async fn client_loop(mut client: TcpStream, pool: &Pool, hello: &[u8]) -> io::Result<()> {
    client.set_nodelay(true)?;
    // Startup (answering an SSLRequest with 'N' first).
    let mut buf = Vec::new();
    loop {
        while buf.len() < 4
            || buf.len() < u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
        {
            read_more(&mut client, &mut buf).await?;
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let ssl = buf.get(4..8) == Some(&[0x04, 0xd2, 0x16, 0x2f]);
        buf.drain(..len);
        if !ssl {
            break;
        }
        client.write_all(b"N").await?;
    }
    client.write_all(hello).await?;

    let mut leased: Option<TcpStream> = None;
    let mut reply = Vec::new();
    loop {
        // A batch: every whole message the client has sent so far.
        while whole_message(&buf).is_none() {
            read_more(&mut client, &mut buf).await?;
        }
        let (batch, mut pending) = complete_messages(&buf);
        if buf[0] == b'X' {
            break;
        }
        let server = match leased.as_mut() {
            Some(s) => s,
            None => {
                let permit = pool.free.acquire().await.map_err(io::Error::other)?;
                permit.forget();
                let conn = pool
                    .idle
                    .lock()
                    .map_err(|_| io::Error::other("poisoned"))?
                    .pop();
                leased.insert(conn.ok_or_else(|| io::Error::other("pool empty"))?)
            }
        };
        server.write_all(&buf[..batch]).await?;
        buf.drain(..batch);
        // Relay replies until every Query/Sync has had its ReadyForQuery.
        let mut idle = false;
        while pending > 0 {
            read_more(server, &mut reply).await?;
            let mut at = 0;
            while let Some(len) = whole_message(&reply[at..]) {
                if reply[at] == b'Z' {
                    pending -= 1;
                    idle = reply[at + 5] == b'I';
                }
                at += len;
            }
            client.write_all(&reply[..at]).await?;
            reply.drain(..at);
        }
        if idle && let Some(conn) = leased.take() {
            pool.idle
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .push(conn);
            pool.free.add_permits(1);
        }
    }
    // A client leaving mid-transaction drops its server connection (and the pool shrinks by one:
    // pgbench never does it).
    Ok(())
}

/// The length of the whole messages at the front of `buf`, and how many of them will be answered
/// with a ReadyForQuery (Query and Sync).
fn complete_messages(buf: &[u8]) -> (usize, usize) {
    let (mut at, mut n) = (0, 0);
    while let Some(len) = whole_message(&buf[at..]) {
        if matches!(buf[at], b'Q' | b'S') {
            n += 1;
        }
        at += len;
    }
    (at, n)
}
