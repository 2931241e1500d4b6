//! The least work an HTTP/1.1 reverse proxy can do, as a yardstick for `bench/http.sh FLOOR=1`.
//!
//! One thread, one task per client connection, and each client connection gets its own
//! keep-alive upstream connection (round robin over the upstreams at accept). Per request it
//! parses the request head (httparse), writes the bytes through unchanged, parses the response
//! head, reads its `Content-Length` body and writes it back: two reads and two writes, nothing
//! else. No header edits, no routing, no pool, no timeouts, no metrics, no chunked bodies: it is
//! not a proxy anyone should run, only the floor under what one costs on this machine.
//!
//! Usage: `floor_proxy LISTEN UPSTREAM [UPSTREAM ...]`

use std::io;
use std::net::SocketAddr;

use scalegate_testkit::floor_framing::{request_len, response_len};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstreams) = match args.split_first() {
        Some((l, u)) if !u.is_empty() => (l.clone(), u.to_vec()),
        _ => {
            eprintln!("usage: floor_proxy LISTEN UPSTREAM [UPSTREAM ...]");
            std::process::exit(2);
        }
    };
    let upstreams: Vec<SocketAddr> = upstreams
        .iter()
        .map(|u| u.parse().map_err(io::Error::other))
        .collect::<io::Result<_>>()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstreams))
}

async fn serve(listen: String, upstreams: Vec<SocketAddr>) -> io::Result<()> {
    let listener = TcpListener::bind(&listen).await?;
    let mut next = 0usize;
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstreams[next % upstreams.len()];
        next = next.wrapping_add(1);
        tokio::spawn(async move {
            let _ = relay(client, upstream).await;
        });
    }
}

/// Relays requests on one client connection until either side closes.
async fn relay(mut client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    let mut req = Vec::with_capacity(4096);
    let mut resp = Vec::with_capacity(8192);
    loop {
        req.clear();
        let Some(req_len) = read_message(&mut client, &mut req, request_len).await? else {
            return Ok(());
        };
        server.write_all(&req[..req_len]).await?;
        resp.clear();
        let Some(resp_len) = read_message(&mut server, &mut resp, response_len).await? else {
            return Ok(());
        };
        client.write_all(&resp[..resp_len]).await?;
    }
}

/// Reads until `len` can tell the whole message's length and that many bytes are in `buf`.
/// `None` when the peer closed between messages.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    len: fn(&[u8]) -> io::Result<Option<usize>>,
) -> io::Result<Option<usize>> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(total) = len(buf)?
            && buf.len() >= total
        {
            return Ok(Some(total));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
