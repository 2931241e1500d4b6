//! Upstreams that close an idle keep-alive connection without saying so (Node's 5 s
//! `keepAliveTimeout`, gunicorn's 2 s `keepalive`, uvicorn, Apache): when the close crosses a
//! request the gateway has just sent on that connection, the request is lost with no answer.
//! An idempotent request without a body (or with one kept whole) on a connection that idled
//! at least 100 ms is then sent again on a new connection (as Go's transport and browsers do,
//! RFC 9110 §9.2.2); any other request gets its 502.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers the first request of each connection (keep-alive, no `Connection:
/// close`) and closes the connection, unanswered, when a second request arrives on it: the
/// race of an idle-timeout close with a reused connection, made certain. Counts request heads.
async fn closes_on_reuse() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let heads = Arc::new(AtomicUsize::new(0));
    let counted = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let heads = counted.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let mut answered = false;
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        heads.fetch_add(1, Ordering::SeqCst);
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let body: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while seen.len() < end + 4 + body {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        seen.drain(..end + 4 + body);
                        if answered {
                            return; // closes, unanswered
                        }
                        answered = true;
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// Sends `req` on `s` and reads one response; returns its status line.
async fn exchange(s: &mut TcpStream, req: &[u8]) -> String {
    s.write_all(req).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return head.lines().next().unwrap_or_default().to_string();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("timely")
            .expect("read");
        assert!(
            n > 0,
            "connection closed early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// A gateway in front of one [`closes_on_reuse`] upstream, no retry configured, and a client
/// connection to it (one connection: its requests share a worker, hence its upstream pool).
async fn setup() -> (GatewayProcess, Arc<AtomicUsize>, TcpStream) {
    let (addr, heads) = closes_on_reuse().await;
    let settings = "passive = { consecutive_failures = 0 }";
    let gw = GatewayProcess::start(BIN, &routed(&format!("\"{addr}\""), "/", "", settings)).await;
    let s = TcpStream::connect(gw.http).await.expect("connect");
    (gw, heads, s)
}

#[tokio::test]
async fn a_get_lost_to_an_upstream_closing_its_idle_connection_is_sent_again() {
    let (gw, heads, mut s) = setup().await;
    let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(exchange(&mut s, get).await, "http/1.1 200 ok");
    // The pooled connection idles (a copy is kept for requests on connections that idled
    // at least 100 ms: a keep-alive timeout is what closes them).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Before the fix: "http/1.1 502 bad gateway".
    assert_eq!(exchange(&mut s, get).await, "http/1.1 200 ok");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exchange(&mut s, get).await, "http/1.1 200 ok");
    // Each lost copy reached the upstream once, and one more went on a new connection.
    assert_eq!(heads.load(Ordering::SeqCst), 5);
    drop(s);
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_post_lost_the_same_way_is_not_sent_again() {
    let (gw, heads, mut s) = setup().await;
    let post = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
    assert_eq!(exchange(&mut s, post).await, "http/1.1 200 ok");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The upstream may have acted on it: the client decides, with a 502 to go on.
    assert_eq!(exchange(&mut s, post).await, "http/1.1 502 bad gateway");
    assert_eq!(heads.load(Ordering::SeqCst), 2);
    quiescent(&gw).await;
}
