//! The admin listener's own pages: the live dashboard.

mod common;

use common::*;

#[tokio::test]
async fn the_dashboard_is_served_and_reads_only_metrics_that_exist() {
    let bs = backends(1).await;
    // A caching route with a shared rate limit and a queued route, so the cache, Redis and
    // queue families have samples (the Redis is a closed port: the link reports itself down).
    let dead = free_port();
    let cfg = routed(
        &endpoints(&bs),
        "/",
        "cache = {}\nrate_limit = { requests = 100, shared = true }",
        "",
    ) + "\n[[routes]]\nname = \"hooks\"\nmatch = { path_prefix = \"/hooks\" }\nupstream = \"app\"\nqueue = {}\n";
    let cfg =
        format!("[cluster]\nredis = {{ url = \"redis://127.0.0.1:{dead}\" }}\n[fanout]\n{cfg}");
    let gw = GatewayProcess::start(BIN, &cfg).await;
    Client::http1().get(gw.http, "/").await.expect("response");
    let r = Client::http1()
        .get(gw.admin, "/dashboard")
        .await
        .expect("response");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("text/html"));
    let page = r.body;
    assert!(page.contains("fetch(\"/upstreams\")") && page.contains("fetch(\"/metrics\")"));

    // Every gateway metric the page reads is one /metrics declares, so renaming a metric
    // cannot silently blank the dashboard. Families are declared once they have a sample:
    // the pooler's need [postgres], shedding and reloads need those events.
    let later = [
        "scalegate_http_shed_total",
        "scalegate_config_reloads_total",
    ];
    let metrics = gw.admin_get("/metrics").await;
    let mut read = 0;
    for name in page
        .split('"')
        .filter(|s| s.starts_with("scalegate_") && !s.starts_with("scalegate_pg_"))
        .filter(|s| !later.contains(s))
    {
        let family = ["_total", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "the dashboard reads {name}, which /metrics does not declare"
        );
        read += 1;
    }
    assert!(read >= 9, "{read}");
    assert!(gw.admin_get("/").await.contains("/dashboard"));
}
