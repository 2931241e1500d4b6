//! The admin listener's own pages: the live dashboard.

mod common;

use common::*;

#[tokio::test]
async fn the_dashboard_is_served_and_reads_only_metrics_that_exist() {
    let bs = backends(1).await;
    // A caching route with a shared rate limit and a queued route, so the cache, Redis and
    // queue families have samples (the Redis is a closed port: the link reports itself down).
    let dead = DeadPort::new();
    let dead = dead.port;
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
    // the pooler's need [postgres], shedding needs that event (reloads are declared at start:
    // an alert on the first failed reload needs the series at 0 before it).
    let later = ["scalegate_http_shed_total"];
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
    quiescent(&gw).await;
}

/// Metric families and their types as `/metrics` declares them (`# TYPE name type`).
fn declared(metrics: &str) -> std::collections::HashMap<String, String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.trim().to_string()))
        .collect()
}

/// Each `scalegate_*` name in a PromQL expression, and whether it sits directly inside
/// `rate(`, `irate(` or `increase(`.
fn names_in(expr: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("scalegate_") {
        let before = rest[..at].trim_end();
        let in_rate = ["rate(", "irate(", "increase("]
            .iter()
            .any(|f| before.ends_with(f));
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push((name, in_rate));
    }
    out
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_that_exist_with_their_types() {
    let bs = backends(1).await;
    // Every part the dashboard shows, configured: a caching route with a shared rate limit and a
    // Redis cache tier, a queued route, fan-out with a Redis bus, the pooler. The Redis and
    // PostgreSQL behind them are closed ports: the families are declared all the same.
    let (dead, other) = (DeadPort::new(), DeadPort::new());
    let (dead, other) = (dead.port, other.port);
    let cfg = routed(
        &endpoints(&bs),
        "/",
        "cache = {}\nrate_limit = { requests = 100, shared = true }",
        "",
    ) + "\n[[routes]]\nname = \"hooks\"\nmatch = { path_prefix = \"/hooks\" }\nupstream = \"app\"\nqueue = {}\n";
    let redis = format!("redis://127.0.0.1:{dead}");
    let cfg = format!(
        "[cluster]\nredis = {{ url = \"{redis}\" }}\n[cache]\nredis = {{ url = \"{redis}/1\" }}\n\
         [fanout]\nredis = {{ url = \"{redis}\" }}\n\
         [postgres]\nlisten = \"127.0.0.1:{}\"\n[postgres.databases.app]\nprimary = \"postgres://app@127.0.0.1:{dead}/app\"\n\
         replicas = [\"postgres://app@127.0.0.1:{other}/app\"]\n{cfg}",
        free_port()
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    Client::http1().get(gw.http, "/").await.expect("response");
    let types = declared(&gw.admin_get("/metrics").await);

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let json = std::fs::read_to_string(root.join("deploy/grafana/scalegate.json")).expect("json");
    let board: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    // Declared once they have a sample (a shed, a reload); their names say they are counters.
    let later = ["scalegate_http_shed", "scalegate_config_reloads"];
    let mut checked = 0;
    let mut wrong = Vec::new();
    for panel in board["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for (name, in_rate) in names_in(expr) {
                let (family, kind) = if let Some(f) = name.strip_suffix("_total") {
                    (f, "counter")
                } else if let Some(f) = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                {
                    (f, "histogram")
                } else {
                    (name.as_str(), "gauge")
                };
                let declared = match types.get(family) {
                    Some(t) => Some(t.as_str()),
                    None if later.contains(&family) => Some("counter"),
                    None => None,
                };
                if declared != Some(kind) {
                    wrong.push(format!(
                        "panel {}: {name} needs a {kind} {family}, /metrics declares {declared:?}",
                        panel["title"]
                    ));
                }
                if in_rate != (kind != "gauge") {
                    wrong.push(format!(
                        "panel {}: {name} is a {kind}; rate() belongs to counters and histogram parts only: {expr}",
                        panel["title"]
                    ));
                }
                checked += 1;
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked >= 25, "{checked}");
    quiescent(&gw).await;
}

const OLD_TOKEN: &str = "old-token-0123456789";
const NEW_TOKEN: &str = "new-token-9876543210";

/// An admin call with a bearer token.
async fn call(gw: &GatewayProcess, method: &str, path: &str, token: &str) -> u16 {
    call_as(gw, method, path, &format!("Bearer {token}")).await
}

/// An admin call with this Authorization value.
async fn call_as(gw: &GatewayProcess, method: &str, path: &str, authorization: &str) -> u16 {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.admin))
        .header("authorization", authorization)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    Client::http1()
        .send(req)
        .await
        .expect("response")
        .status
        .as_u16()
}

/// A probe's finding (session 20): a reload that changed `admin.token` was applied without a
/// word, but the admin API kept the token it started with: rotating a leaked token left the
/// old one working and refused the new one. Now the new token is in force at once.
#[tokio::test]
async fn a_reloaded_admin_token_is_in_force_at_once() {
    let bs = backends(2).await;
    let mut gw = GatewayProcess::start_custom(
        BIN,
        "[runtime]\nworker_threads = 2\n",
        &format!("token = \"{OLD_TOKEN}\""),
        "",
        &app(&bs, ""),
    )
    .await;
    let drain = format!("/switches/endpoints/app/{}/drain", bs[1].addr);
    assert_eq!(call(&gw, "POST", &drain, OLD_TOKEN).await, 200);
    gw.edit_header(OLD_TOKEN, NEW_TOKEN);
    gw.signal(libc::SIGHUP);
    let rotated = eventually(std::time::Duration::from_secs(10), || async {
        call(&gw, "POST", &drain, NEW_TOKEN).await == 200
    })
    .await;
    assert!(rotated, "the new token works");
    assert_eq!(
        call(&gw, "POST", &drain, OLD_TOKEN).await,
        401,
        "the old one does not"
    );
    // A probe's finding: the scheme is case-insensitive (RFC 9110 §11.1); `bearer` was 401.
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} {NEW_TOKEN}");
        assert_eq!(call_as(&gw, "POST", &drain, &auth).await, 200, "{scheme}");
    }
    assert_eq!(call_as(&gw, "POST", &drain, NEW_TOKEN).await, 401);
    quiescent(&gw).await;
}

/// This machine's own address on its default route (nothing is sent), if it has one.
fn own_address() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("198.51.100.1:9").ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// A probe's finding (session 20): on an admin address other hosts reach, every GET answered
/// anyone: `/cache` listed cached URLs with their query strings (reset tokens), `/queue/{route}/
/// dead` queued jobs' methods and paths. `expose_without_token` promises only health, metrics
/// and upstreams. From another host the other views now need the token.
#[tokio::test]
async fn other_hosts_read_only_health_metrics_and_upstreams_without_the_token() {
    let Some(ip) = own_address() else {
        eprintln!("skipped: this machine has no address but loopback");
        return;
    };
    let bs = backends(1).await;
    let rest = routed(&endpoints(&bs), "/", "cache = {}", "");
    for (admin, with_token) in [
        (format!("token = \"{OLD_TOKEN}\""), true),
        ("expose_without_token = true".to_string(), false),
    ] {
        let preamble = "[runtime]\nworker_threads = 2\n";
        let gw = GatewayProcess::start_admin_on(BIN, ip, preamble, &admin, "", &rest).await;
        Client::http1()
            .get(gw.http, "/account?token=SECRET")
            .await
            .expect("response");
        for open in ["/health", "/ready", "/metrics", "/upstreams", "/dashboard"] {
            assert_eq!(call(&gw, "GET", open, "wrong").await, 200, "{open}");
        }
        for closed in ["/cache", "/queue", "/switches", "/fanout"] {
            let refused = call(&gw, "GET", closed, "wrong").await;
            assert_eq!(refused, if with_token { 401 } else { 403 }, "{closed}");
            if with_token {
                assert_ne!(call(&gw, "GET", closed, OLD_TOKEN).await, 401, "{closed}");
            }
        }
        quiescent(&gw).await;
    }
}

/// A regression hunt's finding (session 20): on a dual-stack admin address (`[::]`), a local
/// IPv4 client arrives as `::ffff:127.0.0.1` and was taken for another host (401 on /cache).
#[tokio::test]
async fn a_local_client_of_a_dual_stack_admin_address_is_local() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("skipped: no IPv6 here");
        return;
    }
    let bs = backends(1).await;
    let any = std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED);
    let admin = format!("token = \"{OLD_TOKEN}\"");
    let preamble = "[runtime]\nworker_threads = 2\n";
    let gw = GatewayProcess::start_admin_on(BIN, any, preamble, &admin, "", &app(&bs, "")).await;
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], gw.admin.port()));
    let r = Client::http1()
        .get(local, "/queue")
        .await
        .expect("response");
    assert_eq!(r.status, 200, "{}", r.body);
    quiescent(&gw).await;
}

/// A probe's finding: the admin listener had no header-read timeout and no connection cap: a
/// client that opened connections and sent half a request head held them for good (3,000 file
/// descriptors, which the data path shares). A head not sent within 10 s now closes the
/// connection, as on the public listeners.
#[tokio::test]
async fn a_half_sent_admin_request_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bs = backends(1).await;
    let gw = GatewayProcess::start(BIN, &app(&bs, "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.admin)
        .await
        .expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 512];
    // Before: still open after a minute.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the half-sent request was not closed");
    quiescent(&gw).await;
}

/// Left alone in session 23, fixed in session 24: while one client held 1,024 half-sent admin
/// requests (the listener's cap), `/ready` went unanswered for everyone, a Kubernetes
/// readiness probe included, for as long as the client kept opening them. One address now
/// holds at most 64 admin connections; others still get in.
#[tokio::test]
async fn one_address_holding_admin_connections_does_not_shut_out_others() {
    use tokio::io::AsyncWriteExt;
    let bs = backends(1).await;
    let gw = GatewayProcess::start(BIN, &app(&bs, "")).await;
    let from: std::net::SocketAddr = "127.0.0.2:0".parse().expect("addr");
    let mut held = Vec::new();
    for _ in 0..1_100 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(from).expect("bind 127.0.0.2");
        let Ok(mut s) = socket.connect(gw.admin).await else {
            continue;
        };
        if s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_ok()
        {
            held.push(s);
        }
    }
    let ready = Client::http1().get(gw.admin, "/ready").await;
    assert!(
        ready.as_ref().is_ok_and(|r| r.status == 200),
        "{:?}",
        ready.map(|r| r.status)
    );
    drop(held);
    quiescent(&gw).await;
}
