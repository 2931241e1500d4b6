//! Clients that give up: every count a request takes comes back when the client goes away,
//! whatever phase the request was in (request path v2, issue 14).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

/// Sends a GET and hangs up after `after`, like `curl --max-time`.
async fn hang_up(addr: SocketAddr, path: &str, after: Duration) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    tokio::time::sleep(after).await;
    drop(s);
}

/// The reproduction: `admission.max_in_flight = 5`, an upstream taking 2 s, ten
/// clients giving up after 0.3 s. Afterwards the gateway must answer normally (it answered 503
/// forever: the hang-ups never gave their slots back).
#[tokio::test]
async fn ten_client_hang_ups_leave_no_slot_taken() {
    let b = Backend::start("b").await;
    b.set_delay(Duration::from_secs(2));
    let gw = GatewayProcess::start_with(
        BIN,
        "[admission]\nmax_in_flight = 5",
        &app(std::slice::from_ref(&b), ""),
    )
    .await;
    hang_ups_then_normal_service(&gw, &b, 10).await;
}

/// `n` clients give up after 0.3 s on the slow backend `b`; then every count is back, and with
/// the backend fast again `n` requests are answered 200.
async fn hang_ups_then_normal_service(gw: &GatewayProcess, b: &Backend, n: usize) {
    let hangups: Vec<_> = (0..n)
        .map(|_| tokio::spawn(hang_up(gw.http, "/", Duration::from_millis(300))))
        .collect();
    for h in hangups {
        h.await.expect("join");
    }
    quiescent(gw).await;
    b.set_delay(Duration::ZERO);
    let c = Client::http1();
    for _ in 0..n {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(r.status, 200, "answered normally after the hang-ups");
    }
    quiescent(gw).await;
}

/// HTTP/2 clients cancel with RST_STREAM (a gRPC deadline does the same): the stream's slots
/// come back while the connection stays open.
#[tokio::test]
async fn rst_stream_cancellations_leave_no_slot_taken() {
    let b = Backend::start("b").await;
    b.set_delay(Duration::from_secs(2));
    let gw = GatewayProcess::start_with(
        BIN,
        "[admission]\nmax_in_flight = 5",
        &app(std::slice::from_ref(&b), ""),
    )
    .await;
    let c = Client::h2c();
    for _ in 0..10 {
        // Dropping the pending request resets its stream.
        let _ = tokio::time::timeout(Duration::from_millis(300), c.get(gw.http, "/")).await;
    }
    quiescent(&gw).await;
    b.set_delay(Duration::ZERO);
    let r = c.get(gw.http, "/").await.expect("response");
    assert_eq!(r.status, 200);
    quiescent(&gw).await;
}

/// Requests abandoned while they wait in a bulkhead's queue leave it: the queue does not fill
/// up with requests nobody waits for, and the slots of the admitted ones come back.
#[tokio::test]
async fn hang_ups_in_a_bulkhead_queue_leave_it() {
    let b = Backend::start("b").await;
    b.set_delay(Duration::from_secs(2));
    let gw = GatewayProcess::start(
        BIN,
        &app(
            std::slice::from_ref(&b),
            "concurrency = { max_in_flight = 2, queue = 4, queue_timeout = \"10s\" }",
        ),
    )
    .await;
    // The queue is free again afterwards.
    hang_ups_then_normal_service(&gw, &b, 6).await;
}

/// A half-open breaker's probe whose client hangs up gives its probe slot back: the endpoint is
/// not kept out of rotation for good by one impatient client.
#[tokio::test]
async fn a_hung_up_half_open_probe_frees_its_slot() {
    let b = Backend::start("b").await;
    let gw = GatewayProcess::start(
        BIN,
        &app(
            std::slice::from_ref(&b),
            "passive = { consecutive_failures = 2, base_ejection = \"500ms\", half_open_probes = 1, max_ejection_percent = 100 }\npanic_threshold = 0",
        ),
    )
    .await;
    let c = Client::http1();
    b.fail_next(2, 502);
    for _ in 0..2 {
        let _ = c.get(gw.http, "/").await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Half-open: the probe request stalls and its client gives up.
    b.set_delay(Duration::from_secs(2));
    hang_up(gw.http, "/", Duration::from_millis(300)).await;
    quiescent(&gw).await;
    b.set_delay(Duration::ZERO);
    let ok = eventually(Duration::from_secs(5), || async {
        c.get(gw.http, "/").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(ok, "the endpoint came back into rotation");
    quiescent(&gw).await;
}

/// A probe's finding: a client that went away before the response was counted in
/// `scalegate_http_requests_total{class="1xx"}` (its status is 0), so error ratios and the
/// dashboard read client aborts as informational answers. They are `class="aborted"`.
#[tokio::test]
async fn a_client_gone_before_the_response_is_counted_as_aborted() {
    let b = Backend::start("b").await;
    b.set_delay(Duration::from_secs(2));
    let gw = GatewayProcess::start(BIN, &app(std::slice::from_ref(&b), "")).await;
    hang_up(gw.http, "/", Duration::from_millis(300)).await;
    quiescent(&gw).await;
    let m = gw.admin_get("/metrics").await;
    let count = |class: &str| {
        m.lines()
            .filter(|l| l.starts_with("scalegate_http_requests_total{") && l.contains(class))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(count("class=\"aborted\""), 1.0, "{m}");
    assert_eq!(count("class=\"1xx\""), 0.0, "{m}");
}
