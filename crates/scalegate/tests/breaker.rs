//! The per-endpoint circuit breaker (one mechanism with passive ejection), issue 4 acceptance d.

mod common;

use std::time::Duration;

use common::*;

/// The reproduction: with default settings an upstream of one endpoint was ejected by
/// five 5xx answers and the route answered 503 for 10 s, a full outage caused by the
/// protection. Now the ejection is held back (`max_ejection_percent`, default 50): the client
/// keeps seeing the backend's own answers, and the moment the backend recovers, so does the
/// route.
#[tokio::test]
async fn a_lone_endpoint_answering_5xx_keeps_being_forwarded_to() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    let c = Client::http1();
    bs[0].set_status(500);
    for _ in 0..20 {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(r.status, 500, "the backend's own 5xx, not a gateway 503");
    }
    bs[0].set_status(200);
    assert_eq!(c.get(gw.http, "/").await.expect("response").status, 200);
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("scalegate_upstream_ejections_held_total{upstream=\"app\""),
        "{metrics}"
    );
    quiescent(&gw).await;
}

/// With two endpoints only one may be out (50%): when both fail, the second stays in rotation.
#[tokio::test]
async fn the_last_half_of_an_upstream_is_never_ejected() {
    let bs = backends(2).await;
    let gw = gateway(
        &bs,
        "passive = { consecutive_failures = 2, base_ejection = \"30s\" }",
    )
    .await;
    let c = Client::http1();
    for b in &bs {
        b.set_status(502);
    }
    for _ in 0..20 {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(
            r.status, 502,
            "an endpoint's own answer, never 503 no healthy endpoint"
        );
    }
    let upstreams = gw.admin_get("/upstreams").await;
    assert_eq!(
        upstreams.matches("\"state\":\"ejected\"").count(),
        1,
        "{upstreams}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn breaker_opens_fails_fast_and_a_half_open_probe_closes_it() {
    let bs = backends(1).await;
    bs[0].set_status(500);
    let gw = gateway(
        &bs,
        "passive = { consecutive_failures = 3, base_ejection = \"1s\", half_open_probes = 1, max_ejection_percent = 100 }",
    )
    .await;
    let c = Client::http1();
    for _ in 0..3 {
        assert_eq!(c.get(gw.http, "/").await.expect("response").status, 500);
    }
    // Open: the gateway answers without touching the backend.
    for _ in 0..10 {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), "1");
    }
    assert_eq!(
        bs[0].hits(),
        3,
        "no request reached the backend while the breaker was open"
    );
    let upstreams = gw.admin_get("/upstreams").await;
    assert!(upstreams.contains("\"state\":\"ejected\""), "{upstreams}");

    // The backend recovers; after the open interval one probe goes through and closes it.
    bs[0].set_status(200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.get(gw.http, "/").await.is_ok_and(|r| r.status == 200)
        })
        .await
    );
    let metrics = gw.admin_get("/metrics").await;
    let closed = format!(
        "scalegate_upstream_breaker_closed_total{{upstream=\"app\",endpoint=\"{}\"}} 1",
        bs[0].addr
    );
    assert!(metrics.contains(&closed), "{metrics}");
    let m = spread(&c, gw.http, "/", 10, &[]).await;
    assert_eq!(m.get("b0"), Some(&10), "closed again: {m:?}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_failing_half_open_probe_reopens_the_breaker() {
    let bs = backends(1).await;
    bs[0].set_status(502);
    let gw = gateway(
        &bs,
        "passive = { consecutive_failures = 2, base_ejection = \"500ms\", max_ejection_percent = 100 }",
    )
    .await;
    let c = Client::http1();
    for _ in 0..2 {
        c.get(gw.http, "/").await.expect("response");
    }
    // Wait past the open interval; the next request is the probe, and it fails.
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.get(gw.http, "/").await.is_ok_and(|r| r.status == 502)
        })
        .await
    );
    let hits = bs[0].hits();
    assert_eq!(hits, 3, "exactly one probe went through");
    // Reopened for twice as long: an immediate request fails fast.
    assert_eq!(c.get(gw.http, "/").await.expect("response").status, 503);
    assert_eq!(bs[0].hits(), hits);
    quiescent(&gw).await;
}

#[tokio::test]
async fn breaker_opens_on_failure_rate() {
    let bs = backends(2).await;
    let gw = gateway(
        &bs,
        "passive = { consecutive_failures = 0, failure_rate_percent = 50, min_requests = 10, window = \"10s\", base_ejection = \"60s\" }",
    )
    .await;
    let c = Client::http1();
    // Every other request to b0 fails: never a run, but a 50% failure rate.
    for i in 0..40 {
        bs[0].set_status(if i % 2 == 0 { 500 } else { 200 });
        c.get(gw.http, "/").await.expect("response");
    }
    let hits = bs[0].hits();
    let m = spread(&c, gw.http, "/", 20, &[]).await;
    assert_eq!(
        bs[0].hits(),
        hits,
        "b0 got traffic after its breaker opened: {m:?}"
    );
    assert_eq!(m.get("b1"), Some(&20));
    quiescent(&gw).await;
}

#[tokio::test]
async fn the_route_fallback_answers_while_the_upstream_is_unavailable() {
    let bs = backends(1).await;
    bs[0].set_status(500);
    let cfg = format!(
        "[[routes]]\nname = \"feed\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\nfallback = {{ status = 200, content_type = \"application/json\", body = '{{\"items\":[]}}' }}\n\n[upstreams.app]\nendpoints = [\"{}\"]\npassive = {{ consecutive_failures = 2, base_ejection = \"60s\", max_ejection_percent = 100 }}\n",
        bs[0].addr
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let c = Client::http1();
    // The upstream's own 5xx answers are passed through until the breaker opens...
    for _ in 0..2 {
        assert_eq!(c.get(gw.http, "/").await.expect("response").status, 500);
    }
    // ...then the fallback answers instead of a 503.
    let r = c.get(gw.http, "/").await.expect("response");
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "{\"items\":[]}")
    );
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("x-scalegate-fallback"), "static");
    assert_eq!(bs[0].hits(), 2);
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("scalegate_http_fallbacks_total{route=\"feed\"} 1"),
        "{metrics}"
    );
    quiescent(&gw).await;
}

/// A probe's finding: an endpoint ejected while its upstream had two, then a reload that left
/// it alone in the upstream: the breaker carried over and every request got 503 for the rest of
/// the ejection (19 s) while the backend answered 200. The cap now counts the upstream as the
/// reload leaves it.
#[tokio::test]
async fn a_reload_that_leaves_an_ejected_endpoint_alone_puts_it_back_in_rotation() {
    let bs = backends(2).await;
    let passive = "passive = { consecutive_failures = 2, base_ejection = \"60s\" }";
    let gw = gateway(&bs, passive).await;
    let c = Client::http1();
    bs[0].set_status(502);
    for _ in 0..10 {
        c.get(gw.http, "/").await.expect("response");
    }
    let view = gw.admin_get("/upstreams").await;
    assert_eq!(view.matches("\"state\":\"ejected\"").count(), 1, "{view}");
    bs[0].set_status(200);
    gw.write_config(&routed(&format!("\"{}\"", bs[0].addr), "/", "", passive));
    gw.signal(1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            !gw.admin_get("/upstreams")
                .await
                .contains(&bs[1].addr.to_string())
        })
        .await
    );
    // Before the fix: 503 "no healthy endpoint" for the rest of the 60 s ejection.
    for _ in 0..5 {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    quiescent(&gw).await;
}

/// A probe's finding (session 20): a reload that turned the breaker off
/// (`consecutive_failures = 0`, no failure rate) left ejected endpoints out of rotation, and
/// each failure in half-open opened the breaker again for twice as long: the gateway kept
/// answering 503 in place of the upstream's own answers. Failures were still counted while it
/// was off, so turning it back on ejected at the first failure. Off now means off at once.
#[tokio::test]
async fn a_reload_that_turns_the_breaker_off_puts_every_endpoint_back() {
    let bs = backends(2).await;
    let on = "passive = { consecutive_failures = 2, base_ejection = \"60s\", max_ejection_percent = 100 }";
    let gw = gateway(&bs, on).await;
    let c = Client::http1();
    bs[0].set_status(500);
    bs[1].set_status(500);
    for _ in 0..8 {
        c.get(gw.http, "/").await.expect("response");
    }
    let view = gw.admin_get("/upstreams").await;
    assert_eq!(view.matches("\"state\":\"ejected\"").count(), 2, "{view}");
    let addrs = format!("\"{}\", \"{}\"", bs[0].addr, bs[1].addr);
    let off = "passive = { consecutive_failures = 0, max_ejection_percent = 100 }";
    gw.write_config(&routed(&addrs, "/", "", off));
    gw.signal(1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let view = gw.admin_get("/upstreams").await;
            view.matches("\"state\":\"available\"").count() == 2
        })
        .await,
        "the reload closes the breakers"
    );
    // The upstream's own answers, every time, however many fail.
    for _ in 0..8 {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(r.status, 500, "{}", r.body);
    }
    // Back on: the failures made while it was off are not held against the endpoints.
    gw.write_config(&routed(&addrs, "/", "", on));
    gw.signal(1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = c.get(gw.http, "/").await.expect("response");
    assert_eq!(r.status, 500, "{}", r.body);
    let view = gw.admin_get("/upstreams").await;
    assert_eq!(
        view.matches("\"state\":\"available\"").count(),
        2,
        "one failure ejects nothing: {view}"
    );
    quiescent(&gw).await;
}
