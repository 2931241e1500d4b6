//! Every failure status the gateway answers with, each caused for real.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn connect_refused_is_502() {
    let dead = DeadPort::new();
    let dead = dead.addr();
    let cfg = routed(
        &format!("\"{dead}\""),
        "/",
        "",
        "passive = { consecutive_failures = 0 }",
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let r = Client::http1().get(gw.http, "/").await.expect("response");
    assert_eq!(r.status, 502);
    quiescent(&gw).await;
}

#[tokio::test]
async fn no_healthy_endpoint_is_503_with_retry_after() {
    let bs = backends(1).await;
    bs[0].set_healthy(false);
    let gw = gateway(
        &bs,
        "panic_threshold = 0\nhealth = { interval = \"50ms\", unhealthy_after = 1 }",
    )
    .await;
    let c = Client::http1();
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.get(gw.http, "/").await.is_ok_and(|r| r.status == 503)
        })
        .await
    );
    let r = c.get(gw.http, "/").await.expect("response");
    assert_eq!(r.header("retry-after"), "1");
    let ready = gw.admin_get("/ready").await;
    assert!(
        ready.contains("\"ready\":false") && ready.contains("app"),
        "{ready}"
    );
    quiescent(&gw).await;
}

/// A probe's finding: with every endpoint's breaker open (`max_ejection_percent = 100`) the
/// upstream is in panic mode, which cannot route past an open breaker, so every request got
/// 503 while `/ready` said ready (panic mode counted as ready).
#[tokio::test]
async fn ready_is_false_when_every_endpoint_is_ejected() {
    let bs = backends(1).await;
    let gw = gateway(
        &bs,
        "passive = { consecutive_failures = 2, base_ejection = \"60s\", max_ejection_percent = 100 }",
    )
    .await;
    let c = Client::http1();
    bs[0].set_status(502);
    for _ in 0..3 {
        c.get(gw.http, "/").await.expect("response");
    }
    assert_eq!(c.get(gw.http, "/").await.expect("response").status, 503);
    let ready = gw.admin_get("/ready").await;
    assert!(
        ready.contains("\"ready\":false") && ready.contains("app"),
        "{ready}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn slow_upstream_is_504_after_the_route_timeout() {
    let bs = backends(1).await;
    bs[0].set_delay(Duration::from_secs(3));
    let cfg = routed(&endpoints(&bs), "/", "timeout = \"300ms\"", "");
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let r = Client::http1().get(gw.http, "/").await.expect("response");
    assert_eq!(r.status, 504);
    quiescent(&gw).await;
}

#[tokio::test]
async fn no_matching_route_is_404() {
    let bs = backends(1).await;
    let cfg = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/api\" }}\nupstream = \"app\"\n[upstreams.app]\nendpoints = [\"{}\"]\n",
        bs[0].addr
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let c = Client::http1();
    assert_eq!(
        c.get(gw.http, "/other").await.expect("response").status,
        404
    );
    assert_eq!(
        c.get(gw.http, "/api/x").await.expect("response").status,
        200
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn malformed_request_is_400_and_the_connection_closes() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    let (out, closed) = raw(gw.http, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    assert!(closed);
    let (out, closed) = raw(
        gw.http,
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    assert!(closed);
    assert_eq!(bs[0].hits(), 0);
    quiescent(&gw).await;
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let bs = backends(1).await;
    let gw =
        GatewayProcess::start_full(BIN, "", "max_header_bytes = \"16KiB\"", &app(&bs, "")).await;
    let big = "a".repeat(40_000);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let (out, closed) = raw(gw.http, req.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{:?}",
        &out[..out.len().min(100)]
    );
    assert!(closed);
    // Between one and two times the limit: hyper's read buffer can take it in one read, so the
    // gateway checks the head's size itself.
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (out, _) = raw(gw.http, req.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{:?}",
        &out[..out.len().min(100)]
    );
    assert_eq!(bs[0].hits(), 0, "nothing oversized reached the upstream");
    quiescent(&gw).await;
}

#[tokio::test]
async fn host_headers_follow_rfc_9112() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    for bad in [
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    ] {
        let (out, _) = raw(gw.http, bad.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{bad:?}: {out:?}");
    }
    assert_eq!(bs[0].hits(), 0);
    // HTTP/1.0 needs no Host.
    let (out, _) = raw(gw.http, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out:?}");
    // In the absolute form the target's authority wins over Host, upstream too.
    let (out, _) = raw(
        gw.http,
        b"GET http://b.example/ HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    let seen = bs[0].last_headers().expect("a request");
    assert_eq!(seen["host"], "b.example");
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_malformed_request_body_is_400_and_blames_no_endpoint() {
    let bs = backends(1).await;
    // One failure would eject the endpoint.
    let gw = gateway(&bs, "passive = { consecutive_failures = 1 }").await;
    let bad =
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let (out, closed) = raw(gw.http, bad.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    assert!(closed);
    let view = gw.admin_get("/upstreams").await;
    assert!(!view.contains("\"ejected\""), "{view}");
    let ok = Client::http1().get(gw.http, "/").await.expect("response");
    assert_eq!(ok.status, 200);
    quiescent(&gw).await;
}

#[tokio::test]
async fn body_over_the_route_limit_is_413() {
    let bs = backends(1).await;
    let cfg = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\nmax_body_bytes = \"1KiB\"\n[upstreams.app]\nendpoints = [\"{}\"]\n",
        bs[0].addr
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let body = "x".repeat(2000);
    let declared = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n{body}");
    let (out, _) = raw(gw.http, declared.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out:?}");
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n"
    );
    let (out, _) = raw(gw.http, chunked.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out:?}");
    let small = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let (out, _) = raw(gw.http, small.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn slowloris_client_is_cut_off_after_the_header_timeout() {
    let bs = backends(1).await;
    let (gw, mut s) = connected(&bs, "300ms").await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // Dribble one header byte at a time, never finishing the head.
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(0)) | Ok(Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a client dribbling headers for 4 s was not cut off by a 300 ms header timeout"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    let mut s = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("100 in time")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head:?}");
    s.write_all(b"hello").await.expect("body");
    let mut rest = String::new();
    while !rest.contains("b0") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("response")
            .expect("read");
        assert!(n > 0, "closed early: {rest:?}");
        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(rest.contains("200 OK"), "{rest:?}");
    assert_eq!(bs[0].last_body_len(), 5);
    assert!(
        bs[0]
            .last_headers()
            .is_some_and(|h| !h.contains_key("expect"))
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn an_upstream_body_that_stalls_is_cut_off_after_the_read_timeout() {
    let bs = backends(1).await;
    let cfg = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\nread_timeout = \"300ms\"\n[upstreams.app]\nendpoints = [\"{}\"]\n",
        bs[0].addr
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let r = Client::http1().get(gw.http, "/stall").await;
    let err = r.expect_err("a stalled body cannot complete");
    assert!(
        !err.contains("client timeout"),
        "the gateway left the client hanging: {err}"
    );
    // The gateway itself is fine afterwards.
    assert_eq!(
        Client::http1()
            .get(gw.http, "/")
            .await
            .expect("response")
            .status,
        200
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_partial_http2_preface_is_told_apart_or_let_go() {
    let bs = backends(1).await;
    // The first bytes of the HTTP/2 preface, then the client leaves: the connection ends then,
    // not at the header timeout.
    let (gw, mut s) = connected(&bs, "60s").await;
    s.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut out = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    assert!(ended.is_ok(), "let go when the client left");
    // A slow HTTP/1.1 client whose first byte could begin the preface is served.
    let mut s = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    s.write_all(b"P").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"OST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        .await
        .expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    quiescent(&gw).await;
}

/// A gateway in front of `bs` with `header_read_timeout` set, and a raw connection to it.
async fn connected(
    bs: &[Backend],
    header_timeout: &str,
) -> (GatewayProcess, tokio::net::TcpStream) {
    let listener = format!("header_read_timeout = \"{header_timeout}\"");
    let gw = GatewayProcess::start_full(BIN, "", &listener, &app(bs, "")).await;
    let s = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    (gw, s)
}

/// A probe's finding: the same bad bodies sent to an h2c upstream (gRPC's case) were answered
/// 502 ("upstream connection broke", UNAVAILABLE to gRPC clients, which retry it) and counted
/// against the endpoint, so a client could eject healthy backends. Over HTTP/1.1 they were
/// already 413 and 400.
#[tokio::test]
async fn a_bad_body_streamed_to_an_h2c_upstream_is_the_clients_fault() {
    let bs = backends(1).await;
    let cfg = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\nmax_body_bytes = \"1KiB\"\n[upstreams.app]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\npassive = {{ consecutive_failures = 1, max_ejection_percent = 100 }}\n",
        bs[0].addr
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let body = "x".repeat(2000);
    // Three chunks: 512 + 512 + 1024 bytes, over the 1 KiB limit only at the third.
    let over = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n{a}\r\n200\r\n{a}\r\n400\r\n{b}\r\n0\r\n\r\n",
        a = &body[..512],
        b = &body[..1024]
    );
    let (out, _) = raw(gw.http, over.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out:?}");
    // A first chunk that goes, then a broken chunk size.
    let broken = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n";
    let (out, _) = raw(gw.http, broken.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let view = gw.admin_get("/upstreams").await;
    assert!(!view.contains("\"ejected\""), "{view}");
    let ok = Client::http1().get(gw.http, "/").await.expect("response");
    assert_eq!(ok.status, 200);
    quiescent(&gw).await;
}
