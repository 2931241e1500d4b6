//! Rate limiting (issue 4 acceptance g): a burst beyond the policy gets 429 with Retry-After and
//! the IETF RateLimit headers, per key.

mod common;

use common::*;

fn limited(bs: &[Backend], limit: &str) -> String {
    format!(
        "[[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\nrate_limit = {{ {limit} }}\n\n[upstreams.app]\nendpoints = [{}]\n",
        endpoints(bs)
    )
}

#[tokio::test]
async fn a_burst_beyond_the_policy_gets_429_with_retry_after_and_ratelimit_headers() {
    let bs = backends(1).await;
    let gw = GatewayProcess::start(
        BIN,
        &limited(&bs, "requests = 1, per = \"10s\", burst = 5, key = \"ip\""),
    )
    .await;
    let c = Client::http1();
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let r = c.get(gw.http, "/").await.expect("response");
        statuses.push(r.status.as_u16());
        last = Some(r);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(bs[0].hits(), 5, "refused requests never reach the backend");
    let r = last.expect("a response");
    let retry_after: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!(
        (1..=10).contains(&retry_after),
        "one request per 10 s: {retry_after}"
    );
    assert_eq!(r.header("ratelimit-policy"), "\"default\";q=5;w=50");
    assert_eq!(
        r.header("ratelimit"),
        format!("\"default\";r=0;t={retry_after}")
    );

    let ok = Client::http1()
        .get_with(gw.http, "/", &[])
        .await
        .expect("response");
    assert_eq!(
        ok.status, 429,
        "the limit is per client IP, not per connection"
    );
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("scalegate_http_rate_limited_total{route=\"api\"} 4"),
        "{metrics}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn allowed_responses_carry_the_remaining_quota_and_keys_are_independent() {
    let bs = backends(1).await;
    let gw = GatewayProcess::start(
        BIN,
        &limited(
            &bs,
            "requests = 1, per = \"10s\", burst = 3, key = \"header:x-api-key\"",
        ),
    )
    .await;
    let c = Client::http1();
    let first = c
        .get_with(gw.http, "/", &[("x-api-key", "a")])
        .await
        .expect("response");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit"), "\"default\";r=2;t=10");
    for _ in 0..2 {
        c.get_with(gw.http, "/", &[("x-api-key", "a")])
            .await
            .expect("response");
    }
    assert_eq!(
        c.get_with(gw.http, "/", &[("x-api-key", "a")])
            .await
            .expect("response")
            .status,
        429
    );
    assert_eq!(
        c.get_with(gw.http, "/", &[("x-api-key", "b")])
            .await
            .expect("response")
            .status,
        200,
        "another key has its own quota"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_shared_limit_holds_across_instances_and_falls_back_to_memory_without_redis() {
    let mut redis = scalegate_testkit::RedisServer::start().await;
    let bs = backends(1).await;
    let cluster = format!("[cluster]\nredis = {{ url = \"{}\" }}\n", redis.url());
    let cfg = format!(
        "{cluster}{}",
        limited(
            &bs,
            "requests = 1, per = \"60s\", burst = 6, key = \"route\", shared = true"
        )
    );
    let g1 = GatewayProcess::start(BIN, &cfg).await;
    let g2 = GatewayProcess::start(BIN, &cfg).await;
    let up = "scalegate_rate_limit_redis_up 1";
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            g1.admin_get("/metrics").await.contains(up)
                && g2.admin_get("/metrics").await.contains(up)
        })
        .await,
        "both instances reach redis"
    );
    let c = Client::http1();
    let mut ok = 0;
    for i in 0..12 {
        if i == 3 {
            // Redis forgets its scripts (restart, failover, SCRIPT FLUSH): loaded again.
            redis.command(&["SCRIPT", "FLUSH"]).await.expect("flush");
        }
        let gw = if i % 2 == 0 { &g1 } else { &g2 };
        let r = c.get(gw.http, "/").await.expect("response");
        ok += usize::from(r.status == 200);
    }
    assert_eq!(ok, 6, "one budget of 6 for both instances together");
    assert_eq!(bs[0].hits(), 6);
    for gw in [&g1, &g2] {
        let m = gw.admin_get("/metrics").await;
        let fallbacks = metric_sum(&m, "scalegate_rate_limit_fallbacks_total");
        assert_eq!(fallbacks, 0.0, "every request counted in Redis: {m}");
    }

    // Redis gone: each instance judges in memory on its own, requests keep flowing.
    redis.kill();
    let r = c.get(g1.http, "/").await.expect("response");
    assert_eq!(r.status, 200, "judged by the instance's own memory limiter");
    let metrics = g1.admin_get("/metrics").await;
    assert!(
        metrics.contains("scalegate_rate_limit_redis_up 0"),
        "{metrics}"
    );
    // A probe's finding: an instance with no traffic kept showing the dead Redis as up (for
    // 40 s and more: the gauge only followed calls). A quiet link is PINGed now.
    assert!(
        eventually(std::time::Duration::from_secs(15), || async {
            g2.admin_get("/metrics")
                .await
                .contains("scalegate_rate_limit_redis_up 0")
        })
        .await,
        "the quiet instance sees Redis down"
    );
    quiescent(&g1).await;
    quiescent(&g2).await;
}

/// A second probe's finding: behind Redis's `timeout` for idle clients (or a proxy that drops
/// idle connections) the first call after a quiet spell found its connection closed: that
/// request was judged in memory alone (the limit no longer shared), an error was counted and
/// `redis_up` read 0 though Redis was fine. Such a call is made once more on a new connection.
#[tokio::test]
async fn a_redis_connection_closed_while_idle_is_not_redis_down() {
    let redis = scalegate_testkit::RedisServer::start().await;
    redis
        .command(&["CONFIG", "SET", "timeout", "1"])
        .await
        .expect("config");
    let bs = backends(1).await;
    let cfg = format!(
        "[cluster]\nredis = {{ url = \"{}\" }}\n{}",
        redis.url(),
        limited(
            &bs,
            "requests = 100, per = \"1s\", burst = 100, key = \"route\", shared = true"
        )
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            gw.admin_get("/metrics")
                .await
                .contains("scalegate_rate_limit_redis_up 1")
        })
        .await
    );
    let c = Client::http1();
    for _ in 0..3 {
        // Longer than Redis's idle timeout: the link's connection is closed under it.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert_eq!(c.get(gw.http, "/").await.expect("response").status, 200);
    }
    let m = gw.admin_get("/metrics").await;
    assert_eq!(
        metric_sum(&m, "scalegate_rate_limit_fallbacks_total"),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "scalegate_rate_limit_redis_errors_total"),
        0.0,
        "{m}"
    );
    assert!(m.contains("scalegate_rate_limit_redis_up 1"), "{m}");
    quiescent(&gw).await;
}
