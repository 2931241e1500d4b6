//! Each balancer's distribution, observed at real backends through the real gateway.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let bs = backends(3).await;
    let gw = gateway(&bs, "balance = \"round_robin\"").await;
    let m = spread(&Client::http1(), gw.http, "/", 300, &[]).await;
    // Two workers each keep their own cursor, so allow a little skew.
    for b in &bs {
        let n = m.get(b.name()).copied().unwrap_or(0);
        assert!((90..=110).contains(&n), "{m:?}");
    }
    quiescent(&gw).await;
}

#[tokio::test]
async fn weighted_follows_weights() {
    let bs = backends(2).await;
    let eps = format!(
        "[{{ addr = \"{}\", weight = 3 }}, {{ addr = \"{}\", weight = 1 }}]",
        bs[0].addr, bs[1].addr
    );
    let cfg = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n[upstreams.app]\nbalance = \"weighted\"\nendpoints = {eps}\n"
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let m = spread(&Client::http1(), gw.http, "/", 400, &[]).await;
    assert!(
        (270..=330).contains(&m["b0"]) && (70..=130).contains(&m["b1"]),
        "{m:?}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn least_conn_sends_less_to_a_busy_endpoint() {
    let bs = backends(2).await;
    bs[0].set_delay(Duration::from_millis(200));
    let gw = gateway(&bs, "balance = \"least_conn\"").await;
    let c = Client::http1();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        let addr = gw.http;
        tasks.push(tokio::spawn(
            async move { spread(&c, addr, "/", 10, &[]).await },
        ));
    }
    let (mut slow, mut fast) = (0, 0);
    for t in tasks {
        let m = t.await.unwrap_or_default();
        slow += m.get("b0").copied().unwrap_or(0);
        fast += m.get("b1").copied().unwrap_or(0);
    }
    assert_eq!(slow + fast, 80);
    assert!(fast > slow * 3, "slow={slow} fast={fast}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn p2c_ewma_avoids_the_slow_endpoint() {
    let bs = backends(3).await;
    bs[0].set_delay(Duration::from_millis(40));
    let gw = gateway(&bs, "balance = \"p2c_ewma\"").await;
    let m = spread(&Client::http1(), gw.http, "/", 150, &[]).await;
    let slow = m.get("b0").copied().unwrap_or(0);
    assert!(slow < 20, "{m:?}");
    assert_eq!(m.values().sum::<usize>(), 150);
    quiescent(&gw).await;
}

#[tokio::test]
async fn ip_hash_keeps_a_client_on_one_endpoint() {
    let bs = backends(3).await;
    let gw = gateway(&bs, "balance = \"ip_hash\"").await;
    let m = spread(&Client::http1(), gw.http, "/", 50, &[]).await;
    assert_eq!(m.len(), 1, "{m:?}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn cookie_sets_a_sticky_cookie_and_honours_it() {
    let bs = backends(3).await;
    let gw = gateway(&bs, "balance = \"cookie\"\ncookie = \"sticky\"").await;
    let c = Client::http1();
    let first = c.get(gw.http, "/").await.expect("first");
    let set = first.header("set-cookie").to_string();
    assert!(
        set.starts_with("sticky=") && set.contains("Path=/"),
        "{set:?}"
    );
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    let m = spread(&c, gw.http, "/", 30, &[("cookie", &cookie)]).await;
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m.get(&first.body), Some(&30));
    let again = c
        .get_with(gw.http, "/", &[("cookie", &cookie)])
        .await
        .expect("again");
    assert_eq!(
        again.header("set-cookie"),
        "",
        "an honoured cookie is not set again"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn consistent_hash_on_a_header_is_stable_and_spreads_keys() {
    let bs = backends(3).await;
    let gw = gateway(
        &bs,
        "balance = \"consistent_hash\"\nhash_on = \"header:x-user\"",
    )
    .await;
    let c = Client::http1();
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..30 {
        let u = user.to_string();
        let m = spread(&c, gw.http, "/", 5, &[("x-user", &u)]).await;
        assert_eq!(m.len(), 1, "user {user}: {m:?}");
        owners.extend(m.into_keys());
    }
    assert_eq!(
        owners.len(),
        3,
        "30 keys should reach every endpoint: {owners:?}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn endpoints_can_come_from_dns() {
    let bs = backends(2).await;
    // Listed endpoint b0, discovered endpoint b1 (a name that resolves to b1's address).
    let cfg = routed(
        &format!("\"{}\"", bs[0].addr),
        "/",
        "",
        &format!(
            "dns = {{ name = \"{}\", interval = \"200ms\" }}",
            bs[1].addr
        ),
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let m = spread(&Client::http1(), gw.http, "/", 40, &[]).await;
    assert!(
        m.get("b0") >= Some(&10) && m.get("b1") >= Some(&10),
        "{m:?}"
    );
    let view = gw.admin_get("/upstreams").await;
    assert!(view.contains(&bs[1].addr.to_string()), "{view}");
    // The estimate the balancer reads now, and the one the last answer left.
    assert!(
        view.contains("\"latency_ewma_ms\"") && view.contains("\"latency_last_sample_ms\""),
        "{view}"
    );
    // Only DNS: still served.
    gw.write_config(&routed(
        "",
        "/",
        "",
        &format!("dns = {{ name = \"{}\" }}", bs[1].addr),
    ));
    gw.signal(1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            !gw.admin_get("/upstreams")
                .await
                .contains(&bs[0].addr.to_string())
        })
        .await
    );
    let m = spread(&Client::http1(), gw.http, "/", 10, &[]).await;
    assert_eq!(m.get("b1"), Some(&10), "{m:?}");
    quiescent(&gw).await;
}
