//! Runtime switches through the admin API (issue 4, item 7): token-authenticated, no reload.

mod common;

use common::*;

const TOKEN: &str = "test-token-0123456789";
const AUTH: (&str, &str) = ("authorization", "Bearer test-token-0123456789");

async fn gw_with_token(rest: &str) -> GatewayProcess {
    GatewayProcess::start_custom(
        BIN,
        "[runtime]\nworker_threads = 2",
        &format!("token = \"{TOKEN}\""),
        "",
        rest,
    )
    .await
}

#[tokio::test]
async fn switches_need_the_admin_token() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    let c = Client::http1();
    let r = c
        .post_with(gw.admin, "/switches/routes/route0/disable", &[AUTH])
        .await
        .expect("response");
    assert_eq!(r.status, 403, "no token configured: switches are off");
    let gw = gw_with_token(&app(&bs, "")).await;
    let r = c
        .post_with(gw.admin, "/switches/routes/route0/disable", &[])
        .await
        .expect("response");
    assert_eq!(r.status, 401);
    let r = c
        .post_with(
            gw.admin,
            "/switches/routes/route0/disable",
            &[("authorization", "Bearer wrong-token-0123456")],
        )
        .await
        .expect("response");
    assert_eq!(r.status, 401);
    assert_eq!(
        c.get(gw.http, "/").await.expect("response").status,
        200,
        "nothing changed"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_disabled_route_answers_503_until_enabled() {
    let bs = backends(1).await;
    let gw = gw_with_token(&app(&bs, "")).await;
    let c = Client::http1();
    let r = c
        .post_with(gw.admin, "/switches/routes/route0/disable", &[AUTH])
        .await
        .expect("response");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"disabled\":true"), "{}", r.body);
    let r = c.get(gw.http, "/").await.expect("response");
    assert_eq!((r.status.as_u16(), r.header("retry-after")), (503, "1"));
    assert_eq!(bs[0].hits(), 0);
    c.post_with(gw.admin, "/switches/routes/route0/enable", &[AUTH])
        .await
        .expect("response");
    assert_eq!(c.get(gw.http, "/").await.expect("response").status, 200);
    assert_eq!(
        c.post_with(gw.admin, "/switches/routes/nope/disable", &[AUTH])
            .await
            .expect("response")
            .status,
        404
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn drain_and_weight_switches_move_traffic_and_survive_a_reload() {
    let bs = backends(2).await;
    let gw = gw_with_token(&app(&bs, "balance = \"weighted\"")).await;
    let c = Client::http1();
    let drain = format!("/switches/endpoints/app/{}/drain", bs[0].addr);
    assert_eq!(
        c.post_with(gw.admin, &drain, &[AUTH])
            .await
            .expect("response")
            .status,
        200
    );
    let m = spread(&c, gw.http, "/", 20, &[]).await;
    assert_eq!(m.get("b1"), Some(&20), "{m:?}");
    // A reload keeps the switch.
    gw.write_config(&format!(
        "{}\n[[routes]]\nname = \"x\"\nmatch = {{ path_prefix = \"/x\" }}\nupstream = \"app\"\n",
        app(&bs, "balance = \"weighted\"")
    ));
    gw.signal(libc::SIGHUP);
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            gw.admin_get("/metrics").await.contains("route=\"x\"")
        })
        .await
    );
    let m = spread(&c, gw.http, "/", 20, &[]).await;
    assert_eq!(m.get("b1"), Some(&20), "drain survived the reload: {m:?}");
    let undrain = format!("/switches/endpoints/app/{}/undrain", bs[0].addr);
    c.post_with(gw.admin, &undrain, &[AUTH])
        .await
        .expect("response");
    let weight = format!("/switches/endpoints/app/{}/weight?value=3", bs[0].addr);
    assert_eq!(
        c.post_with(gw.admin, &weight, &[AUTH])
            .await
            .expect("response")
            .status,
        200
    );
    let m = spread(&c, gw.http, "/", 400, &[]).await;
    let (a, b) = (
        m.get("b0").copied().unwrap_or(0),
        m.get("b1").copied().unwrap_or(0),
    );
    assert!(
        (270..=330).contains(&a) && (70..=130).contains(&b),
        "weight 3:1 expected: {m:?}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_canary_switch_shifts_a_share_of_traffic_to_a_second_upstream() {
    let bs = backends(2).await;
    let cfg = format!(
        "[[routes]]\nname = \"web\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"stable\"\n\n[upstreams.stable]\nendpoints = [\"{}\"]\n\n[upstreams.canary]\nendpoints = [\"{}\"]\n",
        bs[0].addr, bs[1].addr
    );
    let gw = gw_with_token(&cfg).await;
    let c = Client::http1();
    let r = c
        .post_with(
            gw.admin,
            "/switches/routes/web/canary?upstream=canary&percent=25",
            &[AUTH],
        )
        .await
        .expect("response");
    assert_eq!(r.status, 200, "{}", r.body);
    let m = spread(&c, gw.http, "/", 400, &[]).await;
    let canary = m.get("b1").copied().unwrap_or(0);
    assert!(
        (60..=140).contains(&canary),
        "about 25% to the canary: {m:?}"
    );
    c.post_with(
        gw.admin,
        "/switches/routes/web/canary?upstream=canary&percent=0",
        &[AUTH],
    )
    .await
    .expect("response");
    let m = spread(&c, gw.http, "/", 50, &[]).await;
    assert_eq!(m.get("b0"), Some(&50), "{m:?}");
    let r = c
        .post_with(
            gw.admin,
            "/switches/routes/web/canary?upstream=ghost&percent=10",
            &[AUTH],
        )
        .await
        .expect("response");
    assert_eq!(r.status, 404);
    quiescent(&gw).await;
}
