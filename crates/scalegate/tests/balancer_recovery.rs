//! Balancers never starve a healthy endpoint for good: a p2c_ewma endpoint that was slow and
//! recovered wins its share back, and retries leave a zone whose endpoints all failed.
//! Real gateway, real backends slowed and killed on command, load from concurrent clients.

mod common;

use std::time::Duration;

use common::*;

/// Requests each backend served between two snapshots of their hit counters.
fn served(before: &[usize], bs: &[Backend]) -> Vec<usize> {
    bs.iter().zip(before).map(|(b, n)| b.hits() - n).collect()
}

fn hits(bs: &[Backend]) -> Vec<usize> {
    bs.iter().map(Backend::hits).collect()
}

#[tokio::test]
async fn p2c_ewma_gives_a_recovered_endpoint_its_share_back() {
    let bs = backends(3).await;
    let gw = gateway(&bs, "balance = \"p2c_ewma\"").await;
    let load = LoadLoop::start(gw.http, (0..4).map(|_| Client::http1()).collect());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Slowed by 50 ms: it gets next to nothing.
    bs[0].set_delay(Duration::from_millis(50));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = hits(&bs);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let slow = served(&start, &bs);
    let total: usize = slow.iter().sum();
    assert!(
        slow[0] * 20 < total,
        "the slow endpoint is avoided: {slow:?}"
    );
    // Recovered: within 15 s it takes at least a fifth of the traffic again.
    bs[0].set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let start = hits(&bs);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let back = served(&start, &bs);
    let total: usize = back.iter().sum();
    assert!(
        back[0] * 5 >= total,
        "recovered endpoint's share 10-15 s later: {back:?}"
    );
    let (ok, failures) = load.stop().await;
    assert!(ok > 0 && failures.is_empty(), "{failures:?}");
    quiescent(&gw).await;
}

/// Four endpoints, b0 and b1 in the gateway's zone "a", b2 and b3 in zone "b"; the route
/// retries with `retry`, the upstream has zone affinity and `upstream` settings.
async fn two_zones(bs: &[Backend], retry: &str, upstream: &str) -> GatewayProcess {
    let eps = format!(
        "{{ addr = \"{}\", zone = \"a\" }}, {{ addr = \"{}\", zone = \"a\" }}, \
         {{ addr = \"{}\", zone = \"b\" }}, {{ addr = \"{}\", zone = \"b\" }}",
        bs[0].addr, bs[1].addr, bs[2].addr, bs[3].addr
    );
    let cfg = routed(
        &eps,
        "/",
        &format!("retry = {retry}"),
        &format!("zone_affinity = true\n{upstream}"),
    );
    GatewayProcess::start_with(BIN, "[runtime]\nworker_threads = 2\nzone = \"a\"\n", &cfg).await
}

/// Kills both local endpoints under load from six clients; every request must still succeed.
async fn kill_the_local_zone_under_load(bs: &[Backend], gw: &GatewayProcess) {
    let load = LoadLoop::start(gw.http, (0..6).map(|_| Client::http1()).collect());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (bs[2].hits(), bs[3].hits()),
        (0, 0),
        "the other zone is idle while the local one is healthy"
    );
    bs[0].stop();
    bs[1].stop();
    let before = hits(bs);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, failures) = load.stop().await;
    let after = served(&before, bs);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        after[2] + after[3] > 100,
        "the other zone took over: {after:?}"
    );
    quiescent(gw).await;
}

#[tokio::test]
async fn retries_leave_a_zone_whose_endpoints_all_failed() {
    // Passive ejection off: the dead local endpoints keep looking available, so only the
    // retries' choice keeps requests alive (first local, then the other local, then zone b).
    let bs = backends(4).await;
    let gw = two_zones(
        &bs,
        "{ attempts = 3, budget_percent = 100, min_retries_per_second = 10000 }",
        "passive = { consecutive_failures = 0 }",
    )
    .await;
    kill_the_local_zone_under_load(&bs, &gw).await;
}

#[tokio::test]
async fn a_dead_local_zone_costs_no_errors_with_default_settings() {
    let bs = backends(4).await;
    let gw = two_zones(&bs, "{ attempts = 3 }", "").await;
    kill_the_local_zone_under_load(&bs, &gw).await;
}
