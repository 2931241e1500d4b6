//! Client time is never upstream time (request path v2, issue 14): a client that sends its body
//! slowly gets 408 within `listeners.body_timeout`, is never blamed on an endpoint, and does not
//! disturb other requests; the route timeout runs only once the request has gone upstream.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway whose listener has `listener` settings, with one route (`route` settings) to
/// `endpoints` (an upstream with `upstream` settings).
async fn gateway(listener: &str, endpoints: &str, route: &str, upstream: &str) -> GatewayProcess {
    GatewayProcess::start_full(
        BIN,
        "[runtime]\nworker_threads = 2\n",
        listener,
        &routed(endpoints, "/", route, upstream),
    )
    .await
}

/// An origin answering every request with `size` bytes, behind a gateway whose listener has
/// `idle_timeout` and whose upstream has the `upstream` settings.
async fn big_download(
    size: usize,
    idle_timeout: &str,
    upstream: &str,
) -> (scalegate_testkit::Origin, GatewayProcess) {
    let o = download_origin(size).await;
    let listener = format!("idle_timeout = \"{idle_timeout}\"");
    let gw = gateway(&listener, &format!("\"{}\"", o.addr), "", upstream).await;
    (o, gw)
}

/// An HTTP/2 client that gives its streams no flow-control window: it takes no byte of a
/// response body (headers are not flow-controlled), while its connection stays healthy.
async fn zero_window_client(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    tx
}

/// A gateway (listener `idle_timeout`) whose upstream admits one request at a time, that one
/// place held by an HTTP/2 stream given no window (its response head is returned).
async fn bulkhead_held_by_a_stalled_stream(
    idle_timeout: &str,
) -> (
    scalegate_testkit::Origin,
    GatewayProcess,
    http::Response<hyper::body::Incoming>,
) {
    let upstream = "concurrency = { max_in_flight = 1, queue = 0 }";
    let (o, gw) = big_download(1 << 20, idle_timeout, upstream).await;
    let mut tx = zero_window_client(gw.http).await;
    let held = tx.send_request(big(gw.http)).await.expect("response head");
    assert_eq!(held.status(), 200);
    (o, gw, held)
}

/// A GET of `/big` from `addr`.
fn big(addr: SocketAddr) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(format!("http://{addr}/big"))
        .body(http_body_util::Empty::new())
        .expect("request")
}

/// An origin answering every request with `size` bytes.
async fn download_origin(size: usize) -> scalegate_testkit::Origin {
    let big = bytes::Bytes::from(vec![b'x'; size]);
    scalegate_testkit::Origin::start(move |_, _| {
        http::Response::builder()
            .status(200)
            .body(big.clone())
            .expect("response")
    })
    .await
}

/// Sends a POST head announcing `len` body bytes (or chunked when `len` is None), then one byte
/// (one chunk) every `every` until the gateway answers; returns the status line and how long it
/// took.
async fn trickle(addr: SocketAddr, len: Option<usize>, every: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let framing = match len {
        Some(n) => format!("content-length: {n}"),
        None => "transfer-encoding: chunked".to_string(),
    };
    let head = format!("POST /upload HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("head");
    let mut buf = vec![0u8; 4096];
    loop {
        let piece: &[u8] = if len.is_some() { b"x" } else { b"1\r\nx\r\n" };
        // The gateway may answer (and close) while we still write.
        let _ = s.write_all(piece).await;
        match tokio::time::timeout(every, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let line = text.lines().next().unwrap_or_default().to_string();
                return (line, started.elapsed());
            }
            Ok(_) => return ("closed".to_string(), started.elapsed()),
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no answer");
    }
}

/// The reproduction: slow uploads used to get 504 after the route timeout, each counted
/// against the endpoint, until every endpoint was ejected and normal GETs got 503.
#[tokio::test]
async fn slow_uploads_get_408_and_eject_nothing() {
    let bs = backends(2).await;
    let upstream = "passive = { consecutive_failures = 2, base_ejection = \"10s\" }\npool = { max_per_endpoint = 8 }";
    let gw = gateway(
        "body_timeout = \"1s\"",
        &endpoints(&bs),
        "timeout = \"300ms\"",
        upstream,
    )
    .await;
    let mut slow = Vec::new();
    for i in 0..20 {
        // Half announce a length (read whole before any upstream connection is taken), half
        // stream chunks (they hold a connection, at most half of the pool).
        let len = (i % 2 == 0).then_some(1000);
        let t = tokio::spawn(trickle(gw.http, len, Duration::from_millis(100)));
        slow.push((len, t));
    }
    // Meanwhile ordinary requests are served.
    let c = Client::http1();
    for _ in 0..20 {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(r.status, 200, "a GET beside the slow uploads");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for (len, t) in slow {
        let (line, took) = t.await.expect("join");
        // A streamed upload beyond its half of the pool is refused (503, Retry-After) instead.
        let ok = line.contains(" 408 ") || (len.is_none() && line.contains(" 503 "));
        assert!(ok, "slow body answered {line:?}");
        assert!(
            took < Duration::from_secs(5),
            "answered within the body timeout: {took:?}"
        );
    }
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("scalegate_upstream_ejections_total") && !l.ends_with(" 0")),
        "no endpoint ejected:\n{metrics}"
    );
    for _ in 0..10 {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(r.status, 200);
    }
    quiescent(&gw).await;
}

/// The route timeout starts once the body has gone upstream: an upload that takes longer to
/// arrive than the route timeout, but within the body timeout, is answered by the upstream.
#[tokio::test]
async fn the_route_timeout_starts_when_the_body_has_gone_upstream() {
    let b = Backend::start("b").await;
    let gw = GatewayProcess::start_full(
        BIN,
        "[runtime]\nworker_threads = 2\n",
        "body_timeout = \"10s\"",
        &routed(&format!("\"{}\"", b.addr), "/", "timeout = \"300ms\"", ""),
    )
    .await;
    // 100 KiB, so it streams (not read whole first), sent in 10 pieces over ~1 s.
    let mut s = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    let n = 100 * 1024;
    let head = format!("POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {n}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("head");
    for _ in 0..10 {
        s.write_all(&vec![b'x'; n / 10]).await.expect("piece");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = vec![0u8; 4096];
    let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answer")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..got]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(b.last_body_len(), n);
    drop(s);
    quiescent(&gw).await;
}

/// Found from outside: a client that asks for a large body and stops reading held its request,
/// and with it the upstream's bulkhead place and connection, for as long as it kept the socket
/// open (four such sockets blocked an upstream for everyone: slowloris on the download side).
/// A response the client's socket refuses for `idle_timeout` now closes the connection.
#[tokio::test]
async fn a_client_that_stops_reading_a_response_frees_what_it_held() {
    let upstream = "concurrency = { max_in_flight = 1, queue = 0 }";
    let (o, gw) = big_download(16 << 20, "4s", upstream).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stuck = socket.connect(gw.http).await.expect("connect");
    stuck
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    // It never reads: while the gateway waits on it, the one bulkhead place is taken; once it
    // gives up on it (idle_timeout without a byte taken), the place is free again. The probes
    // start once /big holds the place: one sent before could take it first (a CI flake).
    let admitted = eventually(Duration::from_secs(10), || async { o.hits("/big") == 1 }).await;
    assert!(admitted, "/big never reached the origin");
    let c = Client::http1();
    let taken = eventually(Duration::from_secs(5), || async {
        c.get(gw.http, "/small")
            .await
            .is_ok_and(|r| r.status == 503)
    })
    .await;
    assert!(taken, "the stuck download never held the bulkhead");
    let freed = eventually(Duration::from_secs(20), || async {
        c.get(gw.http, "/small")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(freed, "the stuck download kept the bulkhead place");
    quiescent(&gw).await;
    drop(stuck);
}

#[tokio::test]
async fn clients_sending_small_bodies_slowly_hold_no_bulkhead_place() {
    // Five connections announcing 100 body bytes and sending two held all five places of an
    // upstream's bulkhead until the body timeout: every other request got 503.
    let bs = backends(1).await;
    let upstream = "concurrency = { max_in_flight = 5, queue = 5, queue_timeout = \"500ms\" }";
    let gw = gateway("body_timeout = \"20s\"", &endpoints(&bs), "", upstream).await;
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        s.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nab")
            .await
            .expect("write");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = Client::http1();
    for _ in 0..5 {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(r.status, 200, "a GET beside ten slow senders: {}", r.body);
    }
    drop(slow);
    quiescent(&gw).await;
}

#[tokio::test]
async fn an_http2_stream_the_client_gives_no_window_frees_what_it_held() {
    // A client advertising a stream window of 0 takes no byte of a response body, yet its
    // connection answers PINGs, so no idle or write-stall timer fired: the stream held its
    // bulkhead place (and upstream connection) for as long as the client liked.
    let (_o, gw, held) = bulkhead_held_by_a_stalled_stream("2s").await;
    // The head came (headers are not flow-controlled); the body cannot. The place is taken.
    let c = Client::http1();
    let taken = c.get(gw.http, "/small").await.expect("response");
    assert_eq!(
        taken.status, 503,
        "the stalled stream never held the bulkhead"
    );
    let freed = eventually(Duration::from_secs(15), || async {
        c.get(gw.http, "/small")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(freed, "the stream without window kept the bulkhead place");
    drop(held);
    quiescent(&gw).await;
}

/// Left alone in this session's first fix: a route bulkhead's places held by HTTP/2 streams
/// given no window stayed held until the listener's `idle_timeout` (60 s here), so every
/// other request was shed; a request that finds the bulkhead full now has them give way once
/// they have taken nothing for 2 s, as a full pool does.
#[tokio::test]
async fn http2_streams_given_no_window_give_way_to_a_full_bulkhead() {
    let (_o, gw, held) = bulkhead_held_by_a_stalled_stream("60s").await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let served = Client::http1().get(gw.http, "/small").await;
    let status = served.map(|r| r.status.as_u16());
    assert_eq!(
        status.ok(),
        Some(200),
        "the stalled stream kept the bulkhead"
    );
    drop(held);
    quiescent(&gw).await;
}

/// A session-25 probe's finding: one HTTP/2 connection that opened many streams and gave them
/// no flow-control window held an upstream connection with each until the listener's
/// `idle_timeout` (60 s): 256 such streams took a worker's whole share of the upstream's pool,
/// and other clients got 503. A request that finds the pool full now has the streams that took
/// nothing for 2 s give their connections back, also while it waits.
#[tokio::test]
async fn http2_streams_given_no_window_give_way_to_requests_waiting_for_their_connections() {
    let o = download_origin(256 << 10).await;
    // One worker: the stalled connection and the waiting client share its pool of 4.
    let gw = GatewayProcess::start_full(
        BIN,
        "[runtime]\nworker_threads = 1\n",
        "idle_timeout = \"60s\"",
        &routed(
            &format!("\"{}\"", o.addr),
            "/",
            "",
            "pool = { max_per_endpoint = 4 }",
        ),
    )
    .await;
    let tx = zero_window_client(gw.http).await;
    let streams = (0..4).map(|_| {
        let mut tx = tx.clone();
        async move { tx.send_request(big(gw.http)).await }
    });
    let held = futures_util::future::join_all(streams).await;
    let holding = held
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
        .count();
    assert_eq!(
        holding, 4,
        "the pool's 4 connections are held by stalled streams"
    );
    // A request that comes before the streams have stalled for 2 s waits for the pool (up to
    // the route's 1 s connect_timeout); they pass 2 s during its wait and give way (the
    // regression hunt's D4: only a request arriving after that was served).
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let served = Client::http1().get(gw.http, "/small").await;
    let status = served.map(|r| r.status.as_u16());
    assert_eq!(status.ok(), Some(200), "the stalled streams kept the pool");
    drop(held);
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_slow_but_steady_http2_reader_gets_its_whole_download() {
    // The protection above reset downloads whose client opened its window steadily but slowly:
    // the gateway handed hyper the upstream's whole chunk (256 KiB here) and timed how long
    // the client took to drain all of it.
    let (_o, gw) = big_download(256 << 10, "2s", "").await;
    let tcp = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    let (mut tx, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 << 10)
            .initial_connection_window_size(16 << 10)
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/big", gw.http))
        .body(http_body_util::Empty::new())
        .expect("request");
    let resp = tx.send_request(req).await.expect("response head");
    let mut body = resp.into_body();
    let mut got = 0;
    // About 16 KiB every 300 ms (53 KiB/s): 16 pieces over some 5 s, past the 2 s timeout.
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.unwrap_or_else(|e| panic!("reset after {got} bytes: {e}"));
        got += frame.data_ref().map_or(0, |d| d.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(got, 256 << 10);
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_slow_but_steady_http1_reader_gets_its_whole_download() {
    // The watch for clients that stopped reading closed connections whose client read steadily
    // but slowly: the socket takes writes again only once a good part of its buffer (grown
    // large on loopback) has drained, which took longer than idle_timeout.
    let size = 16 << 20;
    let (_o, gw) = big_download(size, "1s", "").await;
    let mut s = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    // 16 KiB every 100 ms (about 160 KiB/s) for 15 s: the connection must stay open.
    let started = std::time::Instant::now();
    let mut got = 0;
    let mut buf = vec![0u8; 16 << 10];
    while started.elapsed() < Duration::from_secs(15) {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed after {got} bytes, {:?}", started.elapsed());
        got += n;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(s);
    quiescent(&gw).await;
}
