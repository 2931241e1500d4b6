//! Retries under injected faults (issue 4, acceptance a, b, e): real backends that die, fail or
//! ask to be retried later.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;

const RETRY: &str = "retry = { attempts = 3, backoff = \"10ms\", max_backoff = \"50ms\", budget_percent = 100, min_retries_per_second = 100 }";

fn retrying_app(bs: &[Backend], route_retry: &str, upstream: &str) -> String {
    routed(&endpoints(bs), "/", route_retry, upstream)
}

/// A gateway retrying with [`RETRY`], passive ejection off so failures stay visible.
async fn retrying_gateway(bs: &[Backend]) -> GatewayProcess {
    GatewayProcess::start(
        BIN,
        &retrying_app(bs, RETRY, "passive = { consecutive_failures = 0 }"),
    )
    .await
}

async fn post(c: &Client, addr: std::net::SocketAddr, key: Option<&str>) -> u16 {
    let mut b = http::Request::post(format!("http://{addr}/order"));
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    let req = b
        .body(Full::new(Bytes::from_static(b"{\"qty\":1}")))
        .expect("request");
    c.send(req).await.map(|r| r.status.as_u16()).unwrap_or(0)
}

#[tokio::test]
async fn gets_see_no_failure_when_a_backend_dies_mid_load() {
    let bs = backends(3).await;
    let gw = GatewayProcess::start(BIN, &retrying_app(&bs, RETRY, "")).await;
    let load = LoadLoop::start(gw.http, (0..4).map(|_| Client::http1()).collect());
    assert!(eventually(Duration::from_secs(10), || async { bs[0].hits() > 20 }).await);
    bs[0].stop();
    let before = load.ok();
    assert!(
        eventually(Duration::from_secs(10), || async {
            load.ok() > before + 200
        })
        .await
    );
    let (_, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failures, first {:?}",
        failures.len(),
        failures.first()
    );
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("scalegate_http_retries_total{route=\"route0\"}"),
        "{metrics}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_post_is_retried_only_with_an_idempotency_key() {
    let bs = backends(2).await;
    bs[0].set_status(503);
    let gw = retrying_gateway(&bs).await;
    let c = Client::http1();
    let mut without = Vec::new();
    for _ in 0..10 {
        without.push(post(&c, gw.http, None).await);
    }
    assert!(
        without.contains(&503),
        "round robin sent some POSTs to the failing backend: {without:?}"
    );
    for i in 0..10 {
        assert_eq!(
            post(&c, gw.http, Some(&format!("k{i}"))).await,
            200,
            "keyed POST {i}"
        );
    }
    quiescent(&gw).await;
}

#[tokio::test]
async fn retry_after_is_waited_for_and_too_long_is_passed_back() {
    let bs = backends(1).await;
    bs[0].set_retry_after(1);
    bs[0].fail_next(1, 503);
    let retry = "retry = { attempts = 3, max_retry_after = \"2s\", budget_percent = 100, min_retries_per_second = 100 }";
    let gw = GatewayProcess::start(
        BIN,
        &retrying_app(&bs, retry, "passive = { consecutive_failures = 0 }"),
    )
    .await;
    let c = Client::http1();
    let started = Instant::now();
    let r = c.get(gw.http, "/").await.expect("response");
    assert_eq!(r.status, 200, "retried after the backend's Retry-After");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry did not wait for Retry-After"
    );
    assert_eq!(bs[0].hits(), 2);

    bs[0].set_retry_after(10);
    bs[0].fail_next(1, 503);
    let r = c.get(gw.http, "/").await.expect("response");
    assert_eq!(
        r.status, 503,
        "a Retry-After beyond the maximum is passed back"
    );
    assert_eq!(r.header("retry-after"), "10");
    assert_eq!(bs[0].hits(), 3, "and not retried");
    quiescent(&gw).await;
}

#[tokio::test]
async fn the_retry_budget_caps_extra_load_on_a_failing_upstream() {
    let bs = backends(2).await;
    for b in &bs {
        b.set_status(503);
    }
    let retry = "retry = { attempts = 3, backoff = \"1ms\", max_backoff = \"2ms\", budget_percent = 20, min_retries_per_second = 0 }";
    let gw = GatewayProcess::start(
        BIN,
        &retrying_app(
            &bs,
            retry,
            "passive = { consecutive_failures = 0 }\npanic_threshold = 0",
        ),
    )
    .await;
    let c = Client::http1();
    for _ in 0..100 {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(r.status, 503);
    }
    let total: usize = bs.iter().map(|b| b.hits()).sum();
    assert!(
        total >= 100,
        "every request reached a backend once: {total}"
    );
    assert!(
        total <= 120,
        "retries exceeded 20% of requests: {total} attempts for 100 requests"
    );
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("scalegate_http_retries_budget_exhausted_total{route=\"route0\"}"),
        "{metrics}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn an_unknown_length_body_is_streamed_and_not_retried() {
    let bs = backends(2).await;
    bs[0].set_status(503);
    let gw = retrying_gateway(&bs).await;
    // Chunked bodies are not kept for replay, so an idempotent PUT that fails is passed back.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (out, _) = raw(
            gw.http,
            b"PUT /doc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        statuses.push(out.get(9..12).unwrap_or_default().to_string());
    }
    assert!(statuses.iter().any(|s| s == "503"), "{statuses:?}");
    assert!(statuses.iter().any(|s| s == "200"), "{statuses:?}");
    quiescent(&gw).await;
}

/// Nothing of a streamed body has left while the connection is still being made, so a refused
/// connection sends the request to another endpoint whatever its method and body (before: a
/// 502 for every request that picked the stopped endpoint).
#[tokio::test]
async fn a_streamed_body_goes_to_another_endpoint_when_the_connection_is_refused() {
    let bs = backends(2).await;
    bs[0].stop();
    let gw = retrying_gateway(&bs).await;
    for _ in 0..6 {
        let (out, _) = raw(
            gw.http,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(out.get(9..12), Some("200"), "{out}");
        assert_eq!(bs[1].last_body_len(), 5);
    }
    // A known length past what is kept for replay streams too.
    let big = 200_000;
    for _ in 0..4 {
        let mut req = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {big}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        req.resize(req.len() + big, b'x');
        let (out, _) = raw(gw.http, &req).await;
        assert_eq!(out.get(9..12), Some("200"), "{out}");
        assert_eq!(bs[1].last_body_len(), big);
    }
    // They went to the live endpoint as retries (not as first picks).
    let metrics = gw.admin_get("/metrics").await;
    let retried = metrics
        .lines()
        .find(|l| l.starts_with("scalegate_http_retries_total{route=\"route0\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(retried >= 2.0, "retries: {retried}");
    quiescent(&gw).await;
}
