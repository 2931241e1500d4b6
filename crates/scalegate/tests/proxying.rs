//! What crosses the hop: headers, protocols, bodies.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_added() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    let c = Client::http1();
    let r = c
        .get_with(
            gw.http,
            "/",
            &[
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("te", "deflate, trailers"),
                ("proxy-authorization", "Basic eA=="),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-app", "kept"),
            ],
        )
        .await
        .expect("response");
    assert_eq!(r.status, 200);
    let h = bs[0].last_headers().expect("request reached the backend");
    for gone in ["x-private", "keep-alive", "proxy-authorization"] {
        assert!(!h.contains_key(gone), "{gone} crossed the hop: {h:?}");
    }
    assert_eq!(h["te"], "trailers", "only the trailers token of TE crosses");
    assert_eq!(h["x-app"], "kept");
    // The client is not a trusted proxy: its X-Forwarded-For is replaced, not extended.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.http.to_string());
    assert_eq!(h["host"], gw.http.to_string());
    let id = h["x-request-id"].to_str().unwrap_or_default();
    assert_eq!(id.len(), 32, "{id}");
    // The backend's own hop-by-hop response headers stay on its side.
    assert!(!r.headers.contains_key("keep-alive"), "{:?}", r.headers);
    assert_eq!(r.header("x-backend"), "b0");
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_client_request_id_is_kept() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    Client::http1()
        .get_with(gw.http, "/", &[("x-request-id", "abc-123")])
        .await
        .expect("response");
    assert_eq!(
        bs[0].last_headers().expect("headers")["x-request-id"],
        "abc-123"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn the_request_id_is_one_per_request_and_returned_to_the_client() {
    let bs = backends(1).await;
    let cfg = routed(
        &endpoints(&bs),
        "/",
        "retry = { attempts = 3, backoff = \"1ms\", budget_percent = 100, min_retries_per_second = 100 }",
        "passive = { consecutive_failures = 0 }",
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let c = Client::http1();
    let r = c.get(gw.http, "/").await.expect("response");
    let id = r.header("x-request-id").to_string();
    assert_eq!(id.len(), 32, "{r:?}");
    assert_eq!(
        bs[0].last_headers().expect("headers")["x-request-id"],
        id.as_str()
    );
    // Retried: the attempt that succeeds carries the same id the client gets.
    bs[0].fail_next(1, 503);
    let r = c.get(gw.http, "/").await.expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(bs[0].hits(), 3, "one attempt, then the retry");
    let id = r.header("x-request-id").to_string();
    assert_eq!(
        bs[0].last_headers().expect("headers")["x-request-id"],
        id.as_str()
    );
    // The gateway's own answers carry one too, and a client's id comes back as sent.
    bs[0].stop();
    let r = c
        .get_with(gw.http, "/", &[("x-request-id", "mine-1")])
        .await
        .expect("response");
    assert!(r.status.is_server_error(), "{r:?}");
    assert_eq!(r.header("x-request-id"), "mine-1");
    quiescent(&gw).await;
}

#[tokio::test]
async fn h2c_client_reaches_an_http1_upstream() {
    let bs = backends(2).await;
    let gw = gateway(&bs, "").await;
    let c = Client::h2c();
    let m = spread(&c, gw.http, "/", 20, &[]).await;
    assert_eq!(m.values().sum::<usize>(), 20, "{m:?}");
    assert_eq!(m.len(), 2, "{m:?}");
    let h = bs[0].last_headers().expect("headers");
    assert_eq!(
        h["host"],
        gw.http.to_string(),
        "the :authority becomes Host towards an h1 upstream"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn h2c_upstream_is_used_when_marked() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "protocol = \"h2c\"").await;
    let m = spread(&Client::http1(), gw.http, "/", 10, &[]).await;
    assert_eq!(m.get("b0"), Some(&10), "{m:?}");
    quiescent(&gw).await;
}

/// A gRPC-shaped call (POST, application/grpc, `te: trailers`) over a client HTTP/2
/// connection and an h2c upstream.
fn grpc_call(addr: std::net::SocketAddr) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}/grpc/echo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .expect("request")
}

#[tokio::test]
async fn grpc_over_h2_keeps_te_trailers_and_passes_trailers_back() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "protocol = \"h2c\"").await;
    let r = Client::h2c().send(grpc_call(gw.http)).await.expect("call");
    assert_eq!(r.status, 200);
    assert_eq!(r.raw, Bytes::from_static(b"\0\0\0\0\x02hi"));
    assert_eq!(r.header("content-type"), "application/grpc");
    let t = r
        .trailers
        .expect("the upstream's trailers reach the client");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["x-saw-te"], "trailers", "the upstream got te: trailers");
    quiescent(&gw).await;
}

#[tokio::test]
async fn http1_trailers_reach_a_client_that_accepts_them() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    let r = Client::http1()
        .send(grpc_call(gw.http))
        .await
        .expect("call");
    assert_eq!(r.status, 200);
    let t = r
        .trailers
        .expect("chunked trailers pass through HTTP/1.1 both sides");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["x-saw-te"], "trailers");
    quiescent(&gw).await;
}

#[tokio::test]
async fn gateway_failures_reach_grpc_callers_as_grpc_statuses() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    bs[0].stop();
    let r = Client::h2c().send(grpc_call(gw.http)).await.expect("call");
    assert_eq!(r.status, 200, "a trailers-only answer: {r:?}");
    assert_eq!(r.header("grpc-status"), "14", "UNAVAILABLE: {r:?}");
    assert!(!r.header("grpc-message").is_empty());
    assert!(r.raw.is_empty());
    // A plain HTTP client of the same route still gets the HTTP status.
    let r = Client::h2c().get(gw.http, "/").await.expect("get");
    assert!(r.status.is_server_error(), "{r:?}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn routes_rewrite_the_path_prefix_and_edit_headers() {
    let bs = backends(1).await;
    let cfg = routed(
        &endpoints(&bs),
        "/api",
        "rewrite = { prefix = \"/bytes\" }\nrequest_headers = { set = { x-env = \"prod\" }, remove = [\"x-debug\"] }\nresponse_headers = { set = { x-frame-options = \"DENY\" }, remove = [\"x-backend\"] }",
        "",
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let c = Client::http1();
    let r = c
        .get_with(gw.http, "/api/5", &[("x-debug", "1")])
        .await
        .expect("response");
    assert_eq!(r.body, "xxxxx", "the upstream was asked for /bytes/5");
    let h = bs[0].last_headers().expect("headers");
    assert_eq!(h["x-env"], "prod");
    assert!(!h.contains_key("x-debug"), "{h:?}");
    assert_eq!(r.header("x-frame-options"), "DENY");
    assert_eq!(r.header("x-backend"), "", "removed from the response");
    // HTTP/2 clients get the same rewrite.
    let r = Client::h2c().get(gw.http, "/api/3").await.expect("h2");
    assert_eq!(r.body, "xxx");
    // The gateway's own answers carry the response edits too.
    bs[0].stop();
    let r = c.get(gw.http, "/api/5").await.expect("response");
    assert!(r.status.is_server_error(), "{r:?}");
    assert_eq!(r.header("x-frame-options"), "DENY");
    quiescent(&gw).await;
}

#[tokio::test]
async fn allow_and_deny_lists_refuse_clients_with_403() {
    let bs = backends(1).await;
    let routes = |rules: &str| {
        format!(
            "[[routes]]\nname = \"inner\"\nmatch = {{ path_prefix = \"/inner\" }}\nupstream = \"app\"\n{rules}\n\n[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\nendpoints = [{}]\n",
            endpoints(&bs)
        )
    };
    let c = Client::http1();
    // Only 10/8 may use /inner: the test client (127.0.0.1) may not; other routes are open.
    let gw = GatewayProcess::start(BIN, &routes("allow = [\"10.0.0.0/8\"]")).await;
    let r = c.get(gw.http, "/inner/x").await.expect("response");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        c.get(gw.http, "/other").await.expect("response").status,
        200
    );
    assert_eq!(
        bs[0].hits(),
        1,
        "the refused request never reached the upstream"
    );
    // Loopback allowed, but one address denied: deny wins.
    let gw = GatewayProcess::start(
        BIN,
        &routes("allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.1\"]"),
    )
    .await;
    assert_eq!(
        c.get(gw.http, "/inner/x").await.expect("response").status,
        403
    );
    let gw = GatewayProcess::start(BIN, &routes("allow = [\"127.0.0.0/8\"]")).await;
    assert_eq!(
        c.get(gw.http, "/inner/x").await.expect("response").status,
        200
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    let c = Client::http1();
    let big = Bytes::from(vec![b'y'; 5 << 20]);
    let req = http::Request::post(format!("http://{}/upload", gw.http))
        .body(Full::new(big))
        .expect("request");
    let r = c.send(req).await.expect("upload");
    assert_eq!(r.status, 200);
    assert_eq!(bs[0].last_body_len(), 5 << 20);
    let r = c.get(gw.http, "/bytes/3000000").await.expect("download");
    assert_eq!(r.body.len(), 3_000_000);
    quiescent(&gw).await;
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request() {
    let bs = backends(1).await;
    let gw = GatewayProcess::start_with(BIN, "[log]\naccess_log = true", &app(&bs, "")).await;
    let c = Client::http1();
    c.get_with(gw.http, "/bytes/10?q=1", &[("x-request-id", "req-1")])
        .await
        .expect("response");
    c.get(gw.http, "/missing-upstream-is-fine")
        .await
        .expect("response");
    let mut lines = Vec::new();
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            lines = gw.stdout().lines().map(str::to_string).collect::<Vec<_>>();
            let n = lines.len();
            async move { n >= 2 }
        })
        .await
    );
    let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/bytes/10");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"], 10);
    assert_eq!(first["request_id"], "req-1");
    assert_eq!(first["upstream"], "app");
    assert_eq!(first["endpoint"], bs[0].addr.to_string());
    assert!(first["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    let second: serde_json::Value = serde_json::from_str(&lines[1]).expect("json");
    assert_eq!(
        second["request_id"].as_str().map(str::len),
        Some(32),
        "generated ids are logged"
    );
    quiescent(&gw).await;
}

/// Requests refused before routing (400, 404, 431) have an access log line and are counted
/// (they were invisible to both).
#[tokio::test]
async fn refusals_before_routing_are_logged_and_counted() {
    let bs = backends(1).await;
    let gw = GatewayProcess::start_with(
        BIN,
        "[log]\naccess_log = true",
        &routed(&endpoints(&bs), "/api", "", ""),
    )
    .await;
    let c = Client::http1();
    let r = c.get(gw.http, "/elsewhere").await.expect("response");
    assert_eq!(r.status, 404);
    let not_found_bytes = r.body.len() as u64;
    let (two_hosts, _) = raw(
        gw.http,
        b"GET /api HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let big = "x".repeat(70 * 1024);
    let r = c
        .get_with(gw.http, "/api", &[("x-big", big.as_str())])
        .await
        .expect("response");
    assert_eq!(r.status, 431);
    let mut statuses = Vec::new();
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            statuses = gw
                .stdout()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .map(|v| v["status"].as_u64().unwrap_or_default())
                .collect::<Vec<_>>();
            let n = statuses.len();
            async move { n >= 3 }
        })
        .await,
        "{statuses:?}"
    );
    statuses.sort();
    assert_eq!(statuses, [400, 404, 431]);
    // The gateway's own answer is logged with its bytes (found from outside, session 20: 0).
    let logged_404 = gw
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["status"] == 404)
        .and_then(|v| v["bytes"].as_u64());
    assert_eq!(logged_404, Some(not_found_bytes));
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        metrics
            .contains("scalegate_http_requests_total{route=\"-\",upstream=\"-\",class=\"4xx\"} 3"),
        "{metrics}"
    );
    quiescent(&gw).await;
}
