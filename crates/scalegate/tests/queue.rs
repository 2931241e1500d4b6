//! Queued routes: requests stored and answered 202, delivered later with retries, in memory and
//! durably in a real NATS JetStream across the loss of the gateway that took them.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

fn queued(bs: &[Backend], queue: &str) -> String {
    routed(
        &endpoints(bs),
        "/hooks",
        &format!("queue = {{ {queue} }}"),
        // Failures are the queue's to retry; keep the only endpoint in rotation.
        "passive = { consecutive_failures = 0 }",
    )
}

async fn post(gw: &GatewayProcess, path: &str, body: &str) -> Resp {
    let req = http::Request::post(format!("http://{}{path}", gw.http))
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    Client::http1().send(req).await.expect("response")
}

#[tokio::test]
async fn a_queued_request_is_accepted_at_once_and_delivered_through_failures() {
    let bs = backends(1).await;
    bs[0].fail_next(2, 503);
    let gw = GatewayProcess::start(
        BIN,
        &queued(&bs, "attempts = 5, backoff = \"50ms\", max_in_flight = 1"),
    )
    .await;
    let r = post(&gw, "/hooks/order", "job-1").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.header("x-scalegate-job-id").to_string();
    assert!(r.body.contains(&id) && !id.is_empty(), "{}", r.body);
    assert!(
        eventually(Duration::from_secs(10), || async { bs[0].hits() >= 3 }).await,
        "delivered after two failures: {} hits",
        bs[0].hits()
    );
    let seen = bs[0].last_headers().expect("a delivery");
    assert_eq!(seen["x-scalegate-job-id"], &*id);
    assert_eq!(seen["x-scalegate-attempt"], "3");
    assert_eq!(bs[0].last_body_len(), 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bs[0].hits(), 3, "delivered once");
}

#[tokio::test]
async fn a_full_memory_queue_answers_503_and_a_big_body_413() {
    let bs = backends(1).await;
    bs[0].set_delay(Duration::from_secs(2));
    let gw = GatewayProcess::start(
        BIN,
        &queued(
            &bs,
            "max_queued = 1, max_in_flight = 1, max_body_bytes = 16",
        ),
    )
    .await;
    assert_eq!(post(&gw, "/hooks/a", "1").await.status, 202);
    // The worker holds the first; one more fits in the queue; the next does not.
    assert!(eventually(Duration::from_secs(5), || async { bs[0].hits() == 1 }).await);
    assert_eq!(post(&gw, "/hooks/a", "2").await.status, 202);
    let full = post(&gw, "/hooks/a", "3").await;
    assert_eq!(full.status, 503, "{}", full.body);
    assert_eq!(full.header("retry-after"), "1");
    assert_eq!(
        post(&gw, "/hooks/a", "0123456789abcdefXYZ").await.status,
        413
    );
}

#[tokio::test]
async fn jetstream_keeps_jobs_across_the_loss_of_the_gateway_that_took_them() {
    let nats = scalegate_testkit::NatsServer::start_jetstream().await;
    let bs = backends(1).await;
    let addr = bs[0].addr;
    bs[0].stop();
    let cfg = format!(
        "[queue]\nnats = {{ url = \"{}\" }}\n{}",
        nats.url(),
        queued(
            &bs,
            "attempts = 100, backoff = \"100ms\", max_backoff = \"200ms\""
        )
    );
    let g1 = GatewayProcess::start(BIN, &cfg).await;
    // The store connects in the background: retry until it takes the job.
    let mut accepted = None;
    for _ in 0..50 {
        let r = post(&g1, "/hooks/pay", "durable").await;
        if r.status == 202 {
            accepted = Some(r.header("x-scalegate-job-id").to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = accepted.expect("JetStream took the job");
    // The upstream is down and the gateway that took the job dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(g1);
    let back = Backend::start_on("b0", addr).await;
    let _g2 = GatewayProcess::start(BIN, &cfg).await;
    assert!(
        eventually(Duration::from_secs(20), || async { back.hits() >= 1 }).await,
        "another gateway delivered the job"
    );
    let seen = back.last_headers().expect("a delivery");
    assert_eq!(seen["x-scalegate-job-id"], &*id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(back.hits(), 1, "exactly once");
}

#[tokio::test]
async fn sigterm_delivers_what_is_queued_in_memory_before_exiting() {
    let bs = backends(1).await;
    bs[0].set_delay(Duration::from_millis(300));
    let mut gw = GatewayProcess::start(BIN, &queued(&bs, "max_in_flight = 1")).await;
    for i in 0..3 {
        assert_eq!(post(&gw, "/hooks/x", &format!("job{i}")).await.status, 202);
    }
    gw.signal(15);
    let status = gw.wait_exit(Duration::from_secs(20)).await.expect("exited");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        bs[0].hits(),
        3,
        "every accepted job was delivered before exit"
    );
}
