//! Active checks, passive ejection, slow start and panic mode, observed through real traffic.

mod common;

use std::time::Duration;

use common::*;

/// Checks every 50 ms. The timeout is long: on a machine busy with other test binaries a
/// healthy endpoint's check can take over 200 ms, and with both endpoints out the upstream is
/// in panic mode (every endpoint gets traffic), which these tests would take for a failure.
const FAST_CHECKS: &str = "health = { path = \"/health\", interval = \"50ms\", timeout = \"1s\", healthy_after = 2, unhealthy_after = 2 }";

async fn state_of(gw: &GatewayProcess, addr: std::net::SocketAddr) -> String {
    let body = gw.admin_get("/upstreams").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let eps = v["upstreams"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    eps.iter()
        .find(|e| e["addr"] == addr.to_string())
        .map(|e| e["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn active_check_ejects_a_failing_endpoint_and_brings_it_back() {
    let bs = backends(2).await;
    let gw = gateway(&bs, FAST_CHECKS).await;
    let c = Client::http1();
    bs[0].set_healthy(false);
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&gw, bs[0].addr).await == "unhealthy"
        })
        .await
    );
    let m = spread(&c, gw.http, "/", 20, &[]).await;
    assert_eq!(m.get("b1"), Some(&20), "{m:?}");
    bs[0].set_healthy(true);
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&gw, bs[0].addr).await == "available"
        })
        .await
    );
    let m = spread(&c, gw.http, "/", 20, &[]).await;
    assert!(m.get("b0").copied().unwrap_or(0) >= 5, "{m:?}");
    // Two failed checks to eject, two passing ones to return: at least four.
    assert!(bs[0].health_hits() >= 4, "{}", bs[0].health_hits());
    quiescent(&gw).await;
}

#[tokio::test]
async fn passive_ejection_after_consecutive_5xx() {
    let bs = backends(2).await;
    bs[0].set_status(500);
    let gw = gateway(
        &bs,
        "passive = { consecutive_failures = 3, base_ejection = \"60s\" }",
    )
    .await;
    let m = spread(&Client::http1(), gw.http, "/", 40, &[]).await;
    assert!(
        bs[0].hits() <= 4,
        "b0 kept getting traffic after ejection: {} hits, {m:?}",
        bs[0].hits()
    );
    assert!(m.get("b1").copied().unwrap_or(0) >= 36, "{m:?}");
    assert_eq!(state_of(&gw, bs[0].addr).await, "ejected");
    let metrics = gw.admin_get("/metrics").await;
    let line = format!(
        "scalegate_upstream_ejections_total{{upstream=\"app\",endpoint=\"{}\"}} 1",
        bs[0].addr
    );
    assert!(metrics.contains(&line), "{metrics}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn passive_ejection_on_connect_failure() {
    let bs = backends(1).await;
    let dead = DeadPort::new();
    let dead = dead.addr();
    let cfg = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n[upstreams.app]\nendpoints = [\"{dead}\", \"{}\"]\npassive = {{ consecutive_failures = 2, base_ejection = \"60s\" }}\n",
        bs[0].addr
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let m = spread(&Client::http1(), gw.http, "/", 30, &[]).await;
    let failed = m.get("status:502").copied().unwrap_or(0);
    assert!(failed <= 3, "{m:?}");
    assert!(m.get("b0").copied().unwrap_or(0) >= 27, "{m:?}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn slow_start_ramps_a_returning_endpoint() {
    let bs = backends(2).await;
    let gw = gateway(&bs, &format!("{FAST_CHECKS}\nslow_start = \"60s\"")).await;
    bs[0].set_healthy(false);
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&gw, bs[0].addr).await == "unhealthy"
        })
        .await
    );
    bs[0].set_healthy(true);
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&gw, bs[0].addr).await == "available"
        })
        .await
    );
    let m = spread(&Client::http1(), gw.http, "/", 200, &[]).await;
    let returning = m.get("b0").copied().unwrap_or(0);
    // At the start of a 60 s ramp the weight is ~10%: far below an even half.
    assert!(returning < 50, "{m:?}");
    assert!(
        returning > 0,
        "a ramping endpoint still gets some traffic: {m:?}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn panic_mode_spreads_over_all_when_too_few_are_healthy() {
    let bs = backends(4).await;
    let gw = gateway(&bs, &format!("{FAST_CHECKS}\npanic_threshold = 50")).await;
    for b in &bs[..3] {
        b.set_healthy(false);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&gw, bs[2].addr).await == "unhealthy"
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&gw, bs[0].addr).await == "unhealthy"
        })
        .await
    );
    let m = spread(&Client::http1(), gw.http, "/", 40, &[]).await;
    assert_eq!(m.len(), 4, "panic mode balances over every endpoint: {m:?}");
    let ready = gw.admin_get("/ready").await;
    assert!(ready.contains("\"ready\":true"), "{ready}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn without_panic_mode_only_healthy_endpoints_serve() {
    let bs = backends(4).await;
    let gw = gateway(&bs, &format!("{FAST_CHECKS}\npanic_threshold = 0")).await;
    for b in &bs[..3] {
        b.set_healthy(false);
    }
    for b in &bs[..3] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                state_of(&gw, b.addr).await == "unhealthy"
            })
            .await
        );
    }
    let m = spread(&Client::http1(), gw.http, "/", 20, &[]).await;
    assert_eq!(m.get("b3"), Some(&20), "{m:?}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn health_state_survives_a_reload() {
    let bs = backends(2).await;
    bs[0].set_status(500);
    let settings = "passive = { consecutive_failures = 2, base_ejection = \"60s\" }";
    let gw = gateway(&bs, settings).await;
    let c = Client::http1();
    spread(&c, gw.http, "/", 10, &[]).await;
    assert_eq!(state_of(&gw, bs[0].addr).await, "ejected");
    let hits = bs[0].hits();
    gw.write_config(&format!("{}\n[[routes]]\nname = \"extra\"\nmatch = {{ path_prefix = \"/extra\" }}\nupstream = \"app\"\n", app(&bs, settings)));
    gw.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.admin_get("/metrics").await.contains("route=\"extra\"")
        })
        .await
    );
    assert_eq!(
        state_of(&gw, bs[0].addr).await,
        "ejected",
        "ejection carried over the reload"
    );
    spread(&c, gw.http, "/", 10, &[]).await;
    assert_eq!(
        bs[0].hits(),
        hits,
        "the ejected endpoint got traffic after the reload"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn zone_affinity_stays_local_until_the_local_zone_degrades() {
    let bs = backends(3).await;
    let eps = format!(
        "{{ addr = \"{}\", zone = \"a\" }}, {{ addr = \"{}\", zone = \"a\" }}, {{ addr = \"{}\", zone = \"b\" }}",
        bs[0].addr, bs[1].addr, bs[2].addr
    );
    let cfg = routed(
        &eps,
        "/",
        "",
        &format!("zone_affinity = true\n{FAST_CHECKS}"),
    );
    let gw = GatewayProcess::start_with(BIN, "[runtime]\nworker_threads = 2\nzone = \"a\"\n", &cfg)
        .await;
    let c = Client::http1();
    let m = spread(&c, gw.http, "/", 40, &[]).await;
    assert_eq!(m.get("b2"), None, "the other zone gets nothing: {m:?}");
    assert!(m.contains_key("b0") && m.contains_key("b1"), "{m:?}");

    // Half the local zone down is under the default 70%: every zone takes traffic.
    bs[0].set_healthy(false);
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&gw, bs[0].addr).await == "unhealthy"
        })
        .await
    );
    let m = spread(&c, gw.http, "/", 40, &[]).await;
    assert_eq!(m.get("b0"), None, "{m:?}");
    let (b1, b2) = (m.get("b1").copied(), m.get("b2").copied());
    assert!(b1 >= Some(10) && b2 >= Some(10), "{m:?}");
    let body = gw.admin_get("/upstreams").await;
    assert!(body.contains("\"local_only\":false"), "{body}");
    quiescent(&gw).await;
}
