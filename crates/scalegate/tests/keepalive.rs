//! Keep-alive client connections: reuse after idling (parked connections), pipelining, the idle
//! timeout, and shutdown with parked connections.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response with a Content-Length body from `s`; returns the body.
async fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if pending.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + len]).into_owned();
                pending.drain(..end + 4 + len);
                assert!(head.starts_with("http/1.1 200"), "{head}");
                return body;
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("timely")
            .expect("read");
        assert!(n > 0, "connection closed early");
        pending.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_connection_idle_past_parking_serves_the_next_request() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    let mut pending = Vec::new();
    for round in 0..3 {
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(
            read_response(&mut s, &mut pending).await,
            "b0",
            "round {round}"
        );
        // Longer than the 1 s parking delay.
        tokio::time::sleep(Duration::from_millis(1600)).await;
    }
    quiescent(&gw).await;
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    s.write_all(b"GET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/5 HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/7 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut pending = Vec::new();
    for want in [3, 5, 7] {
        assert_eq!(read_response(&mut s, &mut pending).await.len(), want);
    }
    quiescent(&gw).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_the_idle_timeout() {
    let bs = backends(1).await;
    let gw = GatewayProcess::start_full(BIN, "", "idle_timeout = \"1500ms\"", &app(&bs, "")).await;
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    let mut pending = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut s, &mut pending).await, "b0");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection was not closed: {r:?}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn sigterm_closes_parked_connections_and_exits_0() {
    let bs = backends(1).await;
    let mut gw = gateway(&bs, "").await;
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    let mut pending = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut s, &mut pending).await, "b0");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("exited");
    assert_eq!(status.code(), Some(0));
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
}

const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

/// A gateway with `max_connections = 2` on one worker, and the two connections that fill it.
async fn at_the_limit() -> (GatewayProcess, Vec<Backend>, Vec<TcpStream>) {
    let bs = backends(1).await;
    let gw = GatewayProcess::start_full(
        BIN,
        "[runtime]\nworker_threads = 1\n",
        "max_connections = 2",
        &app(&bs, ""),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.http).await.expect("connect");
        s.write_all(REQ).await.expect("write");
        assert_eq!(read_response(&mut s, &mut Vec::new()).await, "b0");
        held.push(s);
    }
    (gw, bs, held)
}

/// A third connection is queued by the kernel, not served, until one held connection closes.
async fn third_waits_for_a_free_slot(gw: &GatewayProcess, mut held: Vec<TcpStream>) {
    let mut third = TcpStream::connect(gw.http).await.expect("connect");
    third.write_all(REQ).await.expect("write");
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections: {early:?}");
    drop(held.pop());
    assert_eq!(read_response(&mut third, &mut Vec::new()).await, "b0");
}

#[tokio::test]
async fn at_max_connections_new_connections_wait_for_a_free_slot() {
    let (gw, _bs, held) = at_the_limit().await;
    third_waits_for_a_free_slot(&gw, held).await;
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_reload_that_restarts_the_listener_keeps_counting_its_open_connections() {
    let (gw, _bs, held) = at_the_limit().await;
    // Change a listener setting: its accept loop restarts.
    let text = std::fs::read_to_string(&gw.config).expect("config");
    let changed = text.replace(
        "max_connections = 2",
        "max_connections = 2\nidle_timeout = \"61s\"",
    );
    std::fs::write(&gw.config, changed).expect("write config");
    gw.signal(1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.admin_get("/upstreams").await.contains("\"version\":2")
        })
        .await,
        "reloaded"
    );
    third_waits_for_a_free_slot(&gw, held).await;
    quiescent(&gw).await;
}
