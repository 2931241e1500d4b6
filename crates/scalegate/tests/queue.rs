//! Queued routes: requests stored and answered 202, delivered later with retries, in memory and
//! durably in a real NATS JetStream across the loss of the gateway that took them; jobs given
//! up kept as dead letters, listed, sent again and discarded through the admin API.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

const TOKEN: &str = "queue-test-token-0123";

fn queued(bs: &[Backend], queue: &str) -> String {
    routed(
        &endpoints(bs),
        "/hooks",
        &format!("name = \"hooks\"\nqueue = {{ {queue} }}"),
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
    quiescent(&gw).await;
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
    quiescent(&gw).await;
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
    let g2 = GatewayProcess::start(BIN, &cfg).await;
    assert!(
        eventually(Duration::from_secs(20), || async { back.hits() >= 1 }).await,
        "another gateway delivered the job"
    );
    let seen = back.last_headers().expect("a delivery");
    assert_eq!(seen["x-scalegate-job-id"], &*id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(back.hits(), 1, "exactly once");
    quiescent(&g2).await;
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

#[tokio::test]
async fn a_drain_that_runs_out_stops_on_time_and_says_what_was_lost() {
    // Four 1.5 s jobs, one at a time, a 2 s drain: the process exited 5 s after SIGTERM,
    // started a delivery after the deadline, and logged jobs it had delivered as lost.
    let bs = backends(1).await;
    bs[0].set_delay(Duration::from_millis(1500));
    let mut gw = GatewayProcess::start_with(
        BIN,
        "[runtime]\nworker_threads = 2\n[lifecycle]\ndrain_timeout = \"2s\"\n",
        &queued(&bs, "max_in_flight = 1"),
    )
    .await;
    for i in 0..4 {
        assert_eq!(post(&gw, "/hooks/x", &format!("job{i}")).await.status, 202);
    }
    let stopped = std::time::Instant::now();
    gw.signal(15);
    let status = gw.wait_exit(Duration::from_secs(20)).await.expect("exited");
    let took = stopped.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_millis(3500),
        "a 2 s drain took {took:?}"
    );
    // Job 1 was delivered within the drain, job 2 was cut off, jobs 3 and 4 never started.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bs[0].hits(), 2, "a delivery started after the drain ended");
    let log = gw.stderr();
    assert!(
        log.contains("never_sent=2") && log.contains("cut_off=1"),
        "{log}"
    );
}

#[tokio::test]
async fn jobs_queued_before_a_reload_that_changes_the_queue_are_still_delivered_and_drained() {
    // A reload that changed the route's queue settings made a new queue: the old one's jobs
    // vanished from /queue, and SIGTERM exited at once without delivering or counting them.
    let bs = backends(1).await;
    bs[0].set_delay(Duration::from_millis(200));
    let mut gw = GatewayProcess::start_with(
        BIN,
        "[runtime]\nworker_threads = 2\n[lifecycle]\ndrain_timeout = \"20s\"\n",
        &queued(&bs, "max_in_flight = 1, attempts = 3"),
    )
    .await;
    for i in 0..8 {
        assert_eq!(post(&gw, "/hooks/x", &format!("job{i}")).await.status, 202);
    }
    // max_in_flight is one of the settings a running queue cannot take in place.
    gw.write_config(&queued(&bs, "max_in_flight = 2, attempts = 4"));
    gw.signal(libc::SIGHUP);
    let listed = eventually(Duration::from_secs(10), || async {
        gw.admin_get("/queue")
            .await
            .contains("hooks (before reload)")
    })
    .await;
    assert!(listed, "{}", gw.admin_get("/queue").await);
    gw.signal(15);
    let status = gw.wait_exit(Duration::from_secs(30)).await.expect("exited");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        bs[0].hits(),
        8,
        "every job accepted before the reload was delivered"
    );
}

/// Starts a gateway with an admin token on `rest`.
async fn with_token(preamble: &str, rest: &str) -> GatewayProcess {
    GatewayProcess::start_custom(
        BIN,
        &format!("[runtime]\nworker_threads = 2\n{preamble}"),
        &format!("token = \"{TOKEN}\""),
        "",
        rest,
    )
    .await
}

/// An admin call; `auth` adds the bearer token.
async fn admin(gw: &GatewayProcess, method: &str, path: &str, auth: bool) -> Resp {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.admin));
    if auth {
        req = req.header("authorization", format!("Bearer {TOKEN}"));
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    Client::http1().send(req).await.expect("response")
}

/// The dead letters the admin API lists for route "hooks".
async fn dead_letters(gw: &GatewayProcess) -> serde_json::Value {
    let r = admin(gw, "GET", "/queue/hooks/dead", false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    v["jobs"].clone()
}

/// Posts one job, lets every attempt fail, and checks its dead letter; then retries it (the
/// upstream fixed) and checks it was delivered and left the dead letters. Returns the job id.
async fn dead_letter_round_trip(gw: &GatewayProcess, b: &Backend, attempts: usize) -> String {
    b.set_status(503);
    let mut id = None;
    for _ in 0..50 {
        let r = post(gw, "/hooks/dead", "payload").await;
        if r.status == 202 {
            id = Some(r.header("x-scalegate-job-id").to_string());
            break;
        }
        // The durable store connects in the background.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = id.expect("the queue took the job");
    assert!(
        eventually(Duration::from_secs(20), || async {
            dead_letters(gw)
                .await
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await,
        "the job became a dead letter"
    );
    assert_eq!(b.hits(), attempts, "tried exactly `attempts` times");
    let jobs = dead_letters(gw).await;
    let job = &jobs[0];
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["uri"], "/hooks/dead");
    assert_eq!(job["attempts"], attempts);
    assert_eq!(job["last_status"], 503);
    assert_eq!(job["reason"], "attempts_exhausted");
    assert_eq!(job["body_bytes"], 7);

    // Changing calls need the token.
    assert_eq!(
        admin(gw, "POST", "/queue/hooks/dead/retry", false)
            .await
            .status,
        401
    );
    assert_eq!(
        admin(gw, "GET", "/queue/nope/dead", false).await.status,
        404
    );

    b.set_status(200);
    let r = admin(gw, "POST", "/queue/hooks/dead/retry", true).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"retried\":1"), "{}", r.body);
    assert!(
        eventually(Duration::from_secs(20), || async { b.hits() > attempts }).await,
        "the retried job was delivered"
    );
    let seen = b.last_headers().expect("a delivery");
    assert_eq!(seen["x-scalegate-job-id"], &*id, "same job id");
    assert_eq!(seen["x-scalegate-attempt"], "1", "a fresh first attempt");
    assert_eq!(dead_letters(gw).await, serde_json::json!([]));
    id
}

#[tokio::test]
async fn a_job_given_up_in_memory_is_kept_retried_and_discarded() {
    let bs = backends(1).await;
    let gw = with_token(
        "",
        &queued(&bs, "attempts = 2, backoff = \"50ms\", max_in_flight = 1"),
    )
    .await;
    dead_letter_round_trip(&gw, &bs[0], 2).await;

    // Another dead letter, discarded this time.
    bs[0].set_status(500);
    assert_eq!(post(&gw, "/hooks/x", "1").await.status, 202);
    assert!(
        eventually(Duration::from_secs(10), || async {
            dead_letters(&gw)
                .await
                .as_array()
                .is_some_and(|a| a.len() == 1)
        })
        .await
    );
    let r = admin(&gw, "DELETE", "/queue/hooks/dead", true).await;
    assert!(r.body.contains("\"discarded\":1"), "{}", r.body);
    assert_eq!(dead_letters(&gw).await, serde_json::json!([]));
    let view = admin(&gw, "GET", "/queue", false).await;
    assert!(
        view.body.contains("\"route\":\"hooks\"")
            && view.body.contains("\"given_up_since_start\":2")
            && view.body.contains("\"dead_letters_kept\":0"),
        "{}",
        view.body
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn jetstream_keeps_dead_letters_and_applies_a_changed_attempts_count() {
    let nats = scalegate_testkit::NatsServer::start_jetstream().await;
    let bs = backends(1).await;
    let preamble = format!("[queue]\nnats = {{ url = \"{}\" }}\n", nats.url());
    // The route's durable consumer is first made with 2 attempts…
    let first = with_token(&preamble, &queued(&bs, "attempts = 2")).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            post(&first, "/hooks/warm", "w").await.status == 202
        })
        .await,
        "the store connected"
    );
    assert!(eventually(Duration::from_secs(10), || async { bs[0].hits() == 1 }).await);
    drop(first);
    // …then the gateway comes back with 3. Had the consumer kept JetStream's max_deliver at 2, a
    // failing job would stop being delivered after two tries and never be given up.
    let bs2 = vec![Backend::start("b1").await];
    let gw = with_token(&preamble, &queued(&bs2, "attempts = 3, backoff = \"50ms\"")).await;
    dead_letter_round_trip(&gw, &bs2[0], 3).await;
    quiescent(&gw).await;
}

/// The `attempts` a route's queue runs with, as /queue shows it.
async fn attempts_in_force(gw: &GatewayProcess) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&gw.admin_get("/queue").await).expect("json");
    v["routes"][0]["attempts"].as_u64().unwrap_or(0)
}

/// A probe's finding (session 20): a reload that changed a durable queue's `attempts` made a
/// new queue; the old one's consumer, its last pull still open, handed back the jobs that pull
/// brought, and each hand-back counted in JetStream as a delivery: jobs reached the upstream
/// once or twice of the three attempts before they were given up (some listed with 4
/// attempts), others waited out the 15 s acknowledgement timeout. Its counters also started
/// again from zero. Such a reload now changes the running queue in place.
#[tokio::test]
async fn a_reload_that_changes_attempts_spends_none_of_a_durable_jobs_attempts() {
    let nats = scalegate_testkit::NatsServer::start_jetstream().await;
    let bs = backends(1).await;
    let preamble = format!("[queue]\nnats = {{ url = \"{}\" }}\n", nats.url());
    let gw = with_token(&preamble, &queued(&bs, "attempts = 5, backoff = \"50ms\"")).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            post(&gw, "/hooks/warm", "w").await.status == 202
        })
        .await,
        "the store connected"
    );
    assert!(eventually(Duration::from_secs(10), || async { bs[0].hits() == 1 }).await);
    gw.write_config(&queued(&bs, "attempts = 3, backoff = \"50ms\""));
    gw.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || async {
            attempts_in_force(&gw).await == 3
        })
        .await
    );
    bs[0].set_status(500);
    let jobs = 6;
    for i in 0..jobs {
        assert_eq!(post(&gw, "/hooks/x", &format!("job{i}")).await.status, 202);
    }
    let given_up = eventually(Duration::from_secs(20), || async {
        let v: serde_json::Value =
            serde_json::from_str(&gw.admin_get("/queue").await).expect("json");
        v["routes"][0]["given_up_since_start"].as_u64() == Some(jobs)
    })
    .await;
    assert!(given_up, "{}", gw.admin_get("/queue").await);
    assert_eq!(bs[0].hits() as u64, 1 + 3 * jobs, "three real tries each");
    let v: serde_json::Value = serde_json::from_str(&gw.admin_get("/queue").await).expect("json");
    assert_eq!(
        v["routes"][0]["accepted_since_start"].as_u64(),
        Some(1 + jobs),
        "the job accepted before the reload still counts"
    );
    quiescent(&gw).await;
}

/// A probe's finding (session 20): a stream made with one `queue.nats.prefix` and then
/// configured with another took none of the new subjects; every job got 503 and the log said
/// "cannot reach JetStream" while NATS was up. The log now says what is wrong.
#[tokio::test]
async fn a_stream_made_with_another_prefix_is_reported_as_such() {
    let nats = scalegate_testkit::NatsServer::start_jetstream().await;
    let bs = backends(1).await;
    let store = |prefix: &str| {
        format!(
            "[queue]\nnats = {{ url = \"{}\", stream = \"SGX\", prefix = \"{prefix}\" }}\n",
            nats.url()
        )
    };
    let first = with_token(&store("a.jobs."), &queued(&bs, "")).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            post(&first, "/hooks/x", "j").await.status == 202
        })
        .await
    );
    drop(first);
    let gw = with_token(&store("b.jobs."), &queued(&bs, "")).await;
    let reported = eventually(Duration::from_secs(10), || async {
        gw.stderr().contains("exists with subjects")
    })
    .await;
    assert!(reported, "{}", gw.stderr());
    assert_eq!(post(&gw, "/hooks/x", "j").await.status, 503);
    quiescent(&gw).await;
}

/// A probe's finding (session 20): after a reload that started a new queue, what the old
/// queue still did with the jobs it held (deliveries, retries, jobs given up) was counted
/// nowhere the route's counters could show, and its dead letters were lost with it. The
/// queues a route has had share its counters and its dead letters.
#[tokio::test]
async fn what_a_replaced_queue_still_does_counts_for_its_route() {
    let bs = backends(1).await;
    bs[0].set_status(500);
    let settings = |n: u32| format!("max_in_flight = {n}, attempts = 2, backoff = \"1s\"");
    let gw = GatewayProcess::start(BIN, &queued(&bs, &settings(1))).await;
    let field = |v: &serde_json::Value, k: &str| v["routes"][0][k].as_u64().unwrap_or(0);
    let view = || async {
        serde_json::from_str::<serde_json::Value>(&gw.admin_get("/queue").await).expect("json")
    };
    for i in 0..2 {
        assert_eq!(post(&gw, "/hooks/x", &format!("old{i}")).await.status, 202);
    }
    // Both failed once and wait out their backoff in the old queue when the reload comes.
    assert!(
        eventually(Duration::from_secs(10), || async {
            field(&view().await, "failed_deliveries_since_start") == 2
        })
        .await
    );
    gw.write_config(&queued(&bs, &settings(2)));
    gw.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || async {
            field(&view().await, "max_in_flight") == 2
        })
        .await
    );
    assert_eq!(post(&gw, "/hooks/x", "new").await.status, 202);
    let all = eventually(Duration::from_secs(20), || async {
        let v = view().await;
        field(&v, "given_up_since_start") == 3 && field(&v, "failed_deliveries_since_start") == 3
    })
    .await;
    assert!(all, "{}", gw.admin_get("/queue").await);
    assert_eq!(field(&view().await, "accepted_since_start"), 3);
    // The dead letters too: the two the old queue gave up are listed with the route's.
    let dead: serde_json::Value =
        serde_json::from_str(&gw.admin_get("/queue/hooks/dead").await).expect("json");
    assert_eq!(dead["jobs"].as_array().map(Vec::len), Some(3), "{dead}");
    quiescent(&gw).await;
}
