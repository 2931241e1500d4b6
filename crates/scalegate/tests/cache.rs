//! The shared cache (issue 5) against a real scriptable origin and, for the shared tier, a real
//! redis-server: RFC 9111 directives, coalescing, stale serving, purges, Redis L2 and the
//! invalidation bus, compression.

mod cache_support;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cache_support::*;
use common::{Client, eventually, quiescent};
use scalegate_testkit::{Origin, RedisServer};

/// An origin answering every path by its name: `/ma` max-age=60, `/sma` s-maxage, …
async fn directive_origin() -> Origin {
    Origin::start(|req, n| {
        let body = format!("{} #{n}", req.uri.path());
        let h: &[(&str, &str)] = match req.uri.path() {
            "/ma" => &[("cache-control", "max-age=60")],
            "/sma" => &[("cache-control", "max-age=0, s-maxage=60")],
            "/expires" => &[
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
                ("date", "Mon, 23 Nov 2026 00:00:00 GMT"),
            ],
            "/heuristic" => &[("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")],
            "/none" => &[],
            "/no-store" => &[("cache-control", "no-store, max-age=60")],
            "/private" => &[("cache-control", "private, max-age=60")],
            "/cookie" => &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "sid=secret"),
            ],
            "/vary-star" => &[("cache-control", "max-age=60"), ("vary", "*")],
            "/trailers" => &[("cache-control", "max-age=60"), ("trailer", "x-checksum")],
            "/lang" => &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            "/created" => &[],
            "/auth-public" => &[("cache-control", "public, max-age=60")],
            "/aged" => &[("cache-control", "max-age=60"), ("age", "20")],
            _ => &[("cache-control", "max-age=60")],
        };
        let st = if req.uri.path() == "/created" {
            201
        } else {
            200
        };
        resp(st, h, &body)
    })
    .await
}

#[tokio::test]
async fn freshness_comes_from_max_age_s_maxage_expires_and_heuristics() {
    let o = directive_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    for path in ["/ma", "/sma", "/expires", "/heuristic"] {
        let a = get(&g, path, &[]).await;
        assert!(
            status(&a).contains("fwd=uri-miss"),
            "{path}: {}",
            status(&a)
        );
        assert!(status(&a).contains("stored"), "{path}: {}", status(&a));
        let b = get(&g, path, &[]).await;
        assert_eq!(b.body, a.body, "{path} served from cache");
        assert!(
            status(&b).starts_with("scalegate; hit"),
            "{path}: {}",
            status(&b)
        );
        assert!(!b.header("age").is_empty(), "{path}: Age on a hit");
        assert_eq!(o.hits(path), 1, "{path}: one origin request");
    }
    // No freshness information and no validators: never stored.
    get(&g, "/none", &[]).await;
    get(&g, "/none", &[]).await;
    assert_eq!(o.hits("/none"), 2);
    // Age from upstream counts against freshness.
    let r = get(&g, "/aged", &[]).await;
    let r2 = get(&g, "/aged", &[]).await;
    assert_eq!(r.body, r2.body);
    assert!(
        r2.header("age").parse::<u64>().unwrap_or(0) >= 20,
        "age {}",
        r2.header("age")
    );
    quiescent(&g).await;
}

#[tokio::test]
async fn what_a_shared_cache_must_not_store() {
    let o = directive_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    for path in [
        "/no-store",
        "/private",
        "/cookie",
        "/vary-star",
        "/created",
        "/trailers",
    ] {
        get(&g, path, &[]).await;
        let r = get(&g, path, &[]).await;
        assert_eq!(o.hits(path), 2, "{path} must not be served from cache");
        assert!(!status(&r).contains("hit"), "{path}: {}", status(&r));
    }
    // The Set-Cookie response still reached the client.
    assert_eq!(
        get(&g, "/cookie", &[]).await.header("set-cookie"),
        "sid=secret"
    );
    // Authorization: not shared unless the response says public / s-maxage / must-revalidate.
    get(&g, "/ma-auth", &[("authorization", "Bearer x")]).await;
    get(&g, "/ma-auth", &[("authorization", "Bearer x")]).await;
    assert_eq!(o.hits("/ma-auth"), 2);
    get(&g, "/auth-public", &[("authorization", "Bearer x")]).await;
    get(&g, "/auth-public", &[("authorization", "Bearer x")]).await;
    assert_eq!(o.hits("/auth-public"), 1);
    // A request's no-cache goes to the origin.
    get(&g, "/ma", &[]).await;
    let r = get(&g, "/ma", &[("cache-control", "no-cache")]).await;
    assert_eq!(o.hits("/ma"), 2, "{}", status(&r));
    let r = get(&g, "/ma", &[("pragma", "no-cache")]).await;
    assert_eq!(o.hits("/ma"), 3, "{}", status(&r));
    quiescent(&g).await;
}

#[tokio::test]
async fn set_cookie_responses_are_shared_only_when_configured_and_without_the_cookie() {
    let o = directive_origin().await;
    let g = gw(&o, "cache = { share_set_cookie = true }", "").await;
    let first = get(&g, "/cookie", &[]).await;
    assert_eq!(first.header("set-cookie"), "sid=secret");
    let second = get(&g, "/cookie", &[]).await;
    assert_eq!(o.hits("/cookie"), 1);
    assert_eq!(
        second.header("set-cookie"),
        "",
        "a stored cookie is never replayed"
    );
    quiescent(&g).await;
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let o = directive_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    let en = get(&g, "/lang", &[("accept-language", "en")]).await;
    let fr = get(&g, "/lang", &[("accept-language", "fr")]).await;
    assert_ne!(en.body, fr.body);
    assert!(status(&fr).contains("fwd=vary-miss"), "{}", status(&fr));
    assert_eq!(
        get(&g, "/lang", &[("accept-language", "en")]).await.body,
        en.body
    );
    assert_eq!(
        get(&g, "/lang", &[("accept-language", "fr")]).await.body,
        fr.body
    );
    assert_eq!(o.hits("/lang"), 2);
    quiescent(&g).await;
}

#[tokio::test]
async fn conditional_revalidation_merges_304s() {
    // max-age=1 with an ETag: after expiry the cache asks with If-None-Match and the origin
    // says 304 with a new header; the body is kept, the header updated.
    let o = Origin::start(|req, n| {
        let inm = req
            .headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok());
        let lm_path = req.uri.path() == "/lm";
        if lm_path {
            if req.headers.contains_key("if-modified-since") {
                return resp(304, &[("cache-control", "max-age=1")], "");
            }
            return resp(
                200,
                &[
                    ("cache-control", "max-age=1"),
                    ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ],
                "lm-body",
            );
        }
        if inm == Some("\"v1\"") {
            let x = format!("{n}");
            return resp(
                304,
                &[
                    ("cache-control", "max-age=1"),
                    ("etag", "\"v1\""),
                    ("x-rev", &x),
                ],
                "",
            );
        }
        resp(
            200,
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"v1\""),
                ("x-rev", "1"),
            ],
            "etag-body",
        )
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    assert_eq!(get(&g, "/e", &[]).await.body, "etag-body");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(&g, "/e", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "etag-body", "body kept across the 304");
    assert_eq!(r.header("x-rev"), "2", "headers merged from the 304");
    assert!(
        status(&r).contains("fwd=stale; fwd-status=304"),
        "{}",
        status(&r)
    );
    assert_eq!(
        o.last("/e")
            .expect("seen")
            .get("if-none-match")
            .map(|v| v.to_str().unwrap_or("")),
        Some("\"v1\"")
    );
    let again = get(&g, "/e", &[]).await;
    assert!(
        status(&again).contains("hit"),
        "fresh again after 304: {}",
        status(&again)
    );
    // Last-Modified validator.
    get(&g, "/lm", &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(&g, "/lm", &[]).await;
    assert_eq!(r.body, "lm-body");
    assert!(
        o.last("/lm")
            .expect("seen")
            .contains_key("if-modified-since")
    );
    // A client's own conditional request is answered 304 from the cache.
    let r = get(&g, "/e", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status, 304);
    quiescent(&g).await;
}

#[tokio::test]
async fn unsafe_methods_invalidate_and_head_is_served_from_get() {
    let o = Origin::start(|req, n| {
        if req.method == http::Method::POST {
            return resp(201, &[("location", "/items/7")], "created");
        }
        resp(
            200,
            &[("cache-control", "max-age=60")],
            &format!("{} #{n}", req.uri.path()),
        )
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    let c = Client::http1();
    get(&g, "/items", &[]).await;
    get(&g, "/items/7", &[]).await;
    let head = c
        .request("HEAD", g.http, "/items", &[])
        .await
        .expect("head");
    assert_eq!(head.status, 200);
    assert!(
        status(&head).contains("hit"),
        "HEAD from the stored GET: {}",
        status(&head)
    );
    assert_eq!(o.hits("/items"), 1);
    let post = c.post_with(g.http, "/items", &[]).await.expect("post");
    assert_eq!(post.status, 201);
    // A probe's finding: responses to other methods carried no Cache-Status, though every
    // response of a caching route does (README).
    assert_eq!(status(&post), "scalegate; fwd=bypass; fwd-status=201");
    assert_eq!(
        get(&g, "/items", &[]).await.body,
        "/items #3",
        "POST invalidated /items"
    );
    assert_eq!(
        get(&g, "/items/7", &[]).await.body,
        "/items/7 #2",
        "and its Location"
    );
    quiescent(&g).await;
}

#[tokio::test]
async fn concurrent_misses_are_coalesced_into_one_origin_request() {
    let o = Origin::start(|_, n| {
        resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("x-origin-delay-ms", "300"),
            ],
            &format!("v{n}"),
        )
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    let c = Client::http1();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (c, addr) = (c.clone(), g.http);
        tasks.push(tokio::spawn(async move { c.get(addr, "/hot").await }));
    }
    let mut coalesced = 0;
    for t in tasks {
        let r = t.await.expect("task").expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "v1");
        coalesced += usize::from(status(&r).contains("coalesced"));
    }
    assert_eq!(
        o.hits("/hot"),
        1,
        "100 concurrent misses, one origin request"
    );
    assert!(
        coalesced > 50,
        "followers say so in Cache-Status ({coalesced})"
    );
    let m = g.admin_get("/metrics").await;
    assert!(m.contains("result=\"coalesced\""), "coalesced counted");
    quiescent(&g).await;
}

/// A probe's finding: clients waiting on a coalesced miss whose origin never answered got
/// their 504 after up to four route timeouts (each waited a timeout per leader, three times,
/// then went to the origin itself). The route's timeout now covers the whole wait.
#[tokio::test]
async fn clients_waiting_on_a_stalled_miss_get_their_504_within_the_route_timeout() {
    let o = Origin::start(|_, n| {
        resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("x-origin-delay-ms", "6000"),
            ],
            &format!("v{n}"),
        )
    })
    .await;
    let g = gw(
        &o,
        "cache = {}
timeout = \"1s\"",
        "",
    )
    .await;
    let c = Client::http1();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, addr) = (c.clone(), g.http);
        tasks.push(tokio::spawn(async move {
            // Some together, some while the first ones wait.
            tokio::time::sleep(Duration::from_millis(100 * (i % 4))).await;
            let sent = std::time::Instant::now();
            let r = c.get(addr, "/stalled").await.expect("response");
            (r.status, sent.elapsed())
        }));
    }
    for t in tasks {
        let (code, took) = t.await.expect("task");
        assert_eq!(code, 504);
        // One timeout (1 s) and the scheduling around it; before: up to 4 s.
        assert!(took < Duration::from_millis(2500), "504 after {took:?}");
    }
    quiescent(&g).await;
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let o = Origin::start(|_, n| {
        resp(
            200,
            &[
                ("cache-control", "max-age=1, stale-while-revalidate=30"),
                ("x-origin-delay-ms", if n > 1 { "500" } else { "0" }),
            ],
            &format!("v{n}"),
        )
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    assert_eq!(get(&g, "/swr", &[]).await.body, "v1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Served without waiting: had it waited for the (slow) refresh, the body would be v2.
    let r = get(&g, "/swr", &[]).await;
    assert_eq!(r.body, "v1", "stale served");
    assert!(
        status(&r).contains("stale-while-revalidate"),
        "{}",
        status(&r)
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&g, "/swr", &[]).await.body == "v2"
        })
        .await
    );
    assert_eq!(o.hits("/swr"), 2, "one background refresh");
    quiescent(&g).await;
}

/// A probe's finding: a background refresh was counted in
/// `scalegate_http_requests_total` as a request of its own, a failed one as `5xx`: dashboards
/// showed errors no client got. Clients' requests are counted, the cache's own trips are not.
#[tokio::test]
async fn a_background_refresh_is_not_counted_as_a_clients_request() {
    let o = Origin::start(|_, n| {
        let (code, cc) = match n {
            1 => (200, "max-age=1, stale-while-revalidate=60"),
            _ => (503, "no-store"),
        };
        resp(code, &[("cache-control", cc)], &format!("v{n}"))
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    assert_eq!(get(&g, "/swr", &[]).await.body, "v1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let r = get(&g, "/swr", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "v1", "stale served");
    }
    assert!(eventually(Duration::from_secs(5), || async { o.hits("/swr") >= 2 }).await);
    quiescent(&g).await;
    let m = g.admin_get("/metrics").await;
    let count = |class: &str| {
        m.lines()
            .filter(|l| l.starts_with("scalegate_http_requests_total{"))
            .filter(|l| l.contains(&format!("class=\"{class}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(count("2xx"), 4.0, "the four client requests\n{m}");
    assert_eq!(count("5xx"), 0.0, "no client got a 5xx\n{m}");
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_fails_or_is_down() {
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let o = Origin::start(move |req, n| {
        if f.load(Ordering::SeqCst) {
            return resp(503, &[], "down");
        }
        let cc = if req.uri.path() == "/strict" {
            "max-age=1, must-revalidate"
        } else {
            "max-age=1, stale-if-error=60"
        };
        resp(200, &[("cache-control", cc)], &format!("v{n}"))
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    get(&g, "/sie", &[]).await;
    get(&g, "/strict", &[]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    failing.store(true, Ordering::SeqCst);
    let r = get(&g, "/sie", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "v1"),
        "{}",
        status(&r)
    );
    assert!(status(&r).contains("stale-if-error"));
    let strict = get(&g, "/strict", &[]).await;
    assert_eq!(strict.status, 503, "must-revalidate forbids serving stale");
    // The origin gone altogether (connection refused).
    o.stop();
    let r = get(&g, "/sie", &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "v1"));
    quiescent(&g).await;
}

#[tokio::test]
async fn purge_by_url_prefix_and_tag_and_soft_purge() {
    let o = Origin::start(|req, n| {
        let tag = if req.uri.path().starts_with("/p/") {
            "product"
        } else {
            "other"
        };
        resp(
            200,
            &[
                ("cache-control", "max-age=60, stale-if-error=60"),
                ("surrogate-key", tag),
                ("etag", "\"e\""),
            ],
            &format!("{} #{n}", req.uri.path()),
        )
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    let c = Client::http1();
    for p in ["/a", "/static/x", "/static/y", "/p/1", "/p/2"] {
        get(&g, p, &[]).await;
    }
    let purge = |q: &'static str| {
        let c = c.clone();
        let admin = g.admin;
        async move {
            c.post_with(admin, &format!("/cache/purge?{q}"), &[AUTH])
                .await
                .expect("purge")
        }
    };
    assert_eq!(
        c.post_with(g.admin, "/cache/purge?url=/a", &[])
            .await
            .expect("r")
            .status,
        401
    );
    // A full URL with the port: keys hold the host without it.
    let r = purge("url=http://127.0.0.1:1/a").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"purged\":1"), "{}", r.body);
    assert_eq!(get(&g, "/a", &[]).await.body, "/a #2");
    purge("prefix=/static/").await;
    assert_eq!(get(&g, "/static/x", &[]).await.body, "/static/x #2");
    assert_eq!(get(&g, "/static/y", &[]).await.body, "/static/y #2");
    purge("tag=product").await;
    assert_eq!(get(&g, "/p/1", &[]).await.body, "/p/1 #2");
    assert_eq!(get(&g, "/p/2", &[]).await.body, "/p/2 #2");
    assert_eq!(
        get(&g, "/a", &[]).await.body,
        "/a #2",
        "untouched by the tag purge"
    );
    // Soft purge: the next request revalidates, but stale is still usable when the origin fails.
    purge("url=/a&soft=true").await;
    o.stop();
    let r = get(&g, "/a", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "/a #2"),
        "{}",
        status(&r)
    );
    let view = g.admin_get("/cache").await;
    assert!(view.contains("\"hottest\""), "{view}");
    quiescent(&g).await;
}

#[tokio::test]
async fn compression_is_negotiated_and_cached_per_coding() {
    let big = "scalegate compresses text. ".repeat(200);
    let b2 = big.clone();
    let o = Origin::start(move |req, _| match req.uri.path() {
        "/small" => resp(
            200,
            &[
                ("content-type", "text/plain"),
                ("cache-control", "max-age=60"),
            ],
            "tiny",
        ),
        "/png" => resp(
            200,
            &[
                ("content-type", "image/png"),
                ("cache-control", "max-age=60"),
            ],
            &b2,
        ),
        "/gz" => resp(
            200,
            &[
                ("content-type", "text/plain"),
                ("content-encoding", "gzip"),
                ("cache-control", "max-age=60"),
            ],
            "already",
        ),
        _ => resp(
            200,
            &[
                ("content-type", "text/html; charset=utf-8"),
                ("cache-control", "max-age=60"),
            ],
            &b2,
        ),
    })
    .await;
    let g = gw(&o, "cache = {}\ncompression = {}", "").await;
    for (ae, want) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip;q=0.5, br;q=0.9", "br"),
        ("identity", ""),
    ] {
        let r = get(&g, "/page", &[("accept-encoding", ae)]).await;
        assert_eq!(r.header("content-encoding"), want, "accept-encoding {ae}");
        assert!(
            r.header("vary")
                .to_ascii_lowercase()
                .contains("accept-encoding")
        );
        if want.is_empty() {
            assert_eq!(r.body, big);
        } else {
            assert!(r.raw.len() < big.len() / 5, "{want} is smaller");
        }
    }
    assert_eq!(
        o.hits("/page"),
        5 - 1,
        "each coding stored once (gzip;q=.5,br normalises to br)"
    );
    let again = get(&g, "/page", &[("accept-encoding", "gzip, deflate")]).await;
    assert_eq!(again.header("content-encoding"), "gzip");
    assert!(
        status(&again).contains("hit"),
        "gzip variant served from cache"
    );
    let gz = again.raw.clone();
    let mut d = flate2_like_gunzip(&gz);
    d.truncate(big.len());
    assert_eq!(d, big.as_bytes());
    for p in ["/small", "/png", "/gz"] {
        let r = get(&g, p, &[("accept-encoding", "br")]).await;
        assert_ne!(
            r.header("content-encoding"),
            "br",
            "{p} not compressed by us"
        );
    }
    quiescent(&g).await;
}

/// Decompresses gzip with the system's gzip tool (keeps test dependencies small).
fn flate2_like_gunzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b)
        .expect("write");
    child.wait_with_output().expect("gunzip").stdout
}

#[tokio::test]
async fn rules_keys_bypass_and_size_limit() {
    let o = Origin::start(|req, n| {
        resp(
            200,
            &[("cache-control", "no-cache, max-age=0")],
            &format!("{} #{n}", req.uri.path()),
        )
    })
    .await;
    let route = r#"cache = { rules = [{ path_prefix = "/static/", ttl = "1d" }], key = { query = ["v"] }, bypass = { path_prefixes = ["/live/"] }, max_object_bytes = 64 }"#;
    let g = gw(&o, route, "").await;
    get(&g, "/static/app.js?v=1&utm=a", &[]).await;
    let r = get(&g, "/static/app.js?utm=b&v=1", &[]).await;
    assert_eq!(
        o.hits("/static/app.js"),
        1,
        "TTL rule overrides no-cache; utm not in key: {}",
        status(&r)
    );
    get(&g, "/static/app.js?v=2", &[]).await;
    assert_eq!(o.hits("/static/app.js"), 2, "v is in the key");
    get(&g, "/live/x", &[]).await;
    let r = get(&g, "/live/x", &[]).await;
    assert!(status(&r).contains("fwd=bypass"));
    assert_eq!(o.hits("/live/x"), 2);
    // Bigger than max_object_bytes: passed through, not stored.
    let big = Origin::start(|_, n| {
        resp(
            200,
            &[("cache-control", "max-age=60")],
            &format!("{n}{}", "x".repeat(100)),
        )
    })
    .await;
    let g2 = gw(&big, "cache = { max_object_bytes = 64 }", "").await;
    get(&g2, "/big", &[]).await;
    let r = get(&g2, "/big", &[]).await;
    assert_eq!(big.hits("/big"), 2, "{}", status(&r));
    assert_eq!(r.body.len(), 101);
    quiescent(&g).await;
    quiescent(&g2).await;
}

#[tokio::test]
async fn redis_tier_warms_new_instances_and_survives_redis_loss() {
    let mut redis = RedisServer::start().await;
    let o = Origin::start(|req, n| {
        resp(
            200,
            &[("cache-control", "max-age=60")],
            &format!("{} #{n}", req.uri.path()),
        )
    })
    .await;
    let pre = format!("[cache]\nredis = {{ url = \"{}\" }}\n", redis.url());
    let g1 = gw(&o, "cache = {}", &pre).await;
    let g2 = gw(&o, "cache = {}", &pre).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            g1.admin_get("/cache").await.contains("\"up\":true")
                && g2.admin_get("/cache").await.contains("\"up\":true")
        })
        .await,
        "both instances reach redis"
    );
    assert_eq!(get(&g1, "/warm", &[]).await.body, "/warm #1");
    assert!(
        eventually(Duration::from_secs(5), || async {
            redis
                .command(&["EXISTS", "scalegate:cache:127.0.0.1/warm"])
                .await
                .is_some_and(|r| r.starts_with(":1"))
        })
        .await,
        "the fill reached redis"
    );
    // Instance 2 has never seen /warm: it finds it in Redis.
    let mut hit = false;
    for _ in 0..50 {
        let r = get(&g2, "/warm", &[]).await;
        if r.body == "/warm #1" {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hit, "instance 2 served what instance 1 stored");
    assert_eq!(o.hits("/warm"), 1);
    // Event-driven purge: one PUBLISH, every instance purges (memory and Redis).
    let before1 = get(&g1, "/evt", &[]).await.body;
    let before2 = get(&g2, "/evt", &[]).await.body;
    assert!(status(&get(&g1, "/evt", &[]).await).contains("hit"));
    redis
        .command(&["PUBLISH", "scalegate:purge", "url /evt"])
        .await
        .expect("publish");
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&g1, "/evt", &[]).await.body != before1
        })
        .await,
        "instance 1 purged"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&g2, "/evt", &[]).await.body != before2
        })
        .await,
        "instance 2 purged"
    );
    // Redis dies: both keep serving from memory, and say the tier is down.
    get(&g1, "/l1", &[]).await;
    redis.kill();
    let r = get(&g1, "/l1", &[]).await;
    assert_eq!(r.status, 200);
    assert!(status(&r).contains("hit"), "{}", status(&r));
    let r = get(&g1, "/after", &[]).await;
    assert_eq!(r.status, 200, "misses still reach the origin");
    assert!(
        eventually(Duration::from_secs(5), || async {
            g1.admin_get("/metrics")
                .await
                .contains("scalegate_cache_tier{tier=\"redis\",what=\"up\"} 0")
        })
        .await
    );
    quiescent(&g1).await;
    quiescent(&g2).await;
}

#[tokio::test]
async fn a_nats_publish_purges_every_instance() {
    let nats = scalegate_testkit::NatsServer::start().await;
    let o = Origin::start(|req, n| {
        resp(
            200,
            &[("cache-control", "max-age=60"), ("cache-tag", "news")],
            &format!("{} #{n}", req.uri.path()),
        )
    })
    .await;
    let pre = format!("[cache]\nnats = {{ url = \"{}\" }}\n", nats.url());
    let g1 = gw(&o, "cache = {}", &pre).await;
    let g2 = gw(&o, "cache = {}", &pre).await;
    get(&g1, "/n", &[]).await;
    get(&g2, "/n", &[]).await;
    assert_eq!(o.hits("/n"), 2);
    assert!(
        get(&g1, "/n", &[])
            .await
            .header("cache-status")
            .contains("hit")
    );
    // The subscriptions come up in the background; publish until both have purged.
    let purged = eventually(Duration::from_secs(10), || async {
        nats.publish("scalegate.purge", "tag news").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        !status(&get(&g1, "/n", &[]).await).contains("hit")
            && !status(&get(&g2, "/n", &[]).await).contains("hit")
    })
    .await;
    assert!(purged, "both instances purged by one NATS publish");
    quiescent(&g1).await;
    quiescent(&g2).await;
}

#[tokio::test]
async fn no_cache_and_proxy_revalidate_always_revalidate_and_key_headers_split_entries() {
    let o = Origin::start(|req, n| {
        let cc = match req.uri.path() {
            "/nc" => "no-cache",
            // proxy-revalidate applies once stale (RFC 9111 §5.2.2.8): fresh, it is a hit.
            "/pr" => "max-age=0, proxy-revalidate",
            _ => "max-age=60",
        };
        if req.headers.get("if-none-match").is_some() {
            return resp(304, &[("cache-control", cc), ("etag", "\"x\"")], "");
        }
        let body = format!("{} #{n}", req.uri.path());
        resp(200, &[("cache-control", cc), ("etag", "\"x\"")], &body)
    })
    .await;
    let g = gw(
        &o,
        r#"cache = { key = { headers = ["x-tenant"], cookies = ["lang"] } }"#,
        "",
    )
    .await;
    for path in ["/nc", "/pr"] {
        assert_eq!(get(&g, path, &[]).await.body, format!("{path} #1"));
        let r = get(&g, path, &[]).await;
        assert_eq!(
            r.body,
            format!("{path} #1"),
            "body from the store after a 304"
        );
        assert!(
            status(&r).contains("fwd-status=304"),
            "{path}: {}",
            status(&r)
        );
        assert_eq!(o.hits(path), 2, "{path} revalidated every time");
    }
    get(&g, "/t", &[("x-tenant", "a")]).await;
    get(&g, "/t", &[("x-tenant", "b")]).await;
    get(&g, "/t", &[("x-tenant", "a"), ("cookie", "lang=fr")]).await;
    assert_eq!(
        o.hits("/t"),
        3,
        "key headers and cookies make separate entries"
    );
    assert!(status(&get(&g, "/t", &[("x-tenant", "b")]).await).contains("hit"));
    quiescent(&g).await;
}

/// Found from outside: the cache key dropped the port of the Host header while the origin saw
/// it, so a page built for `Host: victim.com:6666` (a redirect, a link) was served to every
/// client of `victim.com`: cache poisoning. A port is now its own variant.
#[tokio::test]
async fn a_port_in_the_host_is_not_served_to_the_host_without_it() {
    let o = directive_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    let raw_get = |host: &'static str| {
        let addr = g.http;
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            let req = format!("GET /ma HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).expect("send");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.rsplit("\r\n\r\n")
                .next()
                .unwrap_or_default()
                .to_string()
        })
    };
    let poisoned = raw_get("victim.com:6666").await.expect("request");
    assert_eq!(poisoned, "/ma #1");
    let plain = raw_get("victim.com").await.expect("request");
    assert_eq!(
        plain, "/ma #2",
        "the page built for another port was served"
    );
    assert_eq!(raw_get("victim.com").await.expect("request"), "/ma #2");
    assert_eq!(raw_get("victim.com:6666").await.expect("request"), "/ma #1");
    // A purge of the URL removes every port's copy.
    let r = purge(&g, "url=http://victim.com/ma").await;
    assert!(r.body.contains("\"purged\":2"), "{}", r.body);
    assert_eq!(raw_get("victim.com:6666").await.expect("request"), "/ma #3");
    quiescent(&g).await;
}

/// Found from outside: with a NATS-only purge bus, an instance whose link to NATS was down
/// when a purge was published never heard of it (NATS keeps nothing for a subscriber that is
/// away) and served the purged object until its TTL ran out. A disconnect now empties the
/// memory tier, and so does the reconnect.
#[tokio::test]
async fn an_instance_cut_off_from_nats_serves_nothing_a_missed_purge_removed() {
    let nats = scalegate_testkit::NatsServer::start().await;
    let relay = scalegate_testkit::Relay::start(([127, 0, 0, 1], nats.port).into()).await;
    let o = Origin::start(|req, n| {
        resp(
            200,
            &[("cache-control", "max-age=600")],
            &format!("{} #{n}", req.uri.path()),
        )
    })
    .await;
    let direct = format!("[cache]\nnats = {{ url = \"{}\" }}\n", nats.url());
    let cut_off = format!("[cache]\nnats = {{ url = \"nats://{}\" }}\n", relay.addr);
    let d = gw(&o, "cache = {}", &direct).await;
    let e = gw(&o, "cache = {}", &cut_off).await;
    let connected = eventually(Duration::from_secs(10), || async { relay.open() > 0 }).await;
    assert!(connected, "instance E never connected to NATS");
    assert_eq!(get(&e, "/n", &[]).await.body, "/n #1");
    assert!(is_hit(&get(&e, "/n", &[]).await));
    // E's link drops and stays down for a while; meanwhile the object is purged through D.
    relay.delay_new(Duration::from_secs(2));
    relay.cut();
    let r = purge(&d, "url=/n").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let back = eventually(Duration::from_secs(15), || async { relay.open() > 0 }).await;
    assert!(back, "instance E never reconnected");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = get(&e, "/n", &[]).await;
    assert!(
        !is_hit(&after),
        "E served what the missed purge removed: {}",
        after.body
    );
    quiescent(&d).await;
    quiescent(&e).await;
}

/// Found from outside: a purge over a NATS-only bus was answered 200 `"nats":true` once it was
/// written to the socket, even while the server was paused. It is now 200 only once the
/// server has answered after it; otherwise 503 and retried.
#[tokio::test]
async fn a_purge_over_nats_is_200_only_once_the_server_has_it() {
    let nats = scalegate_testkit::NatsServer::start().await;
    let o = directive_origin().await;
    let pre = format!("[cache]\nnats = {{ url = \"{}\" }}\n", nats.url());
    let g = gw(&o, "cache = {}", &pre).await;
    let up = eventually(Duration::from_secs(10), || async {
        purge(&g, "url=/ma").await.status == 200
    })
    .await;
    assert!(up, "the purge bus never came up");
    nats.pause();
    let r = purge(&g, "url=/ma").await;
    nats.resume();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("\"retrying\":true"), "{}", r.body);
    quiescent(&g).await;
}

#[tokio::test]
async fn a_soft_purge_is_stale_so_must_revalidate_forbids_serving_it_on_error() {
    let failing = Arc::new(AtomicBool::new(false));
    let fail = failing.clone();
    let o = Origin::start(move |req, n| {
        if fail.load(Ordering::Relaxed) {
            return resp(503, &[], "down");
        }
        let cc = match req.uri.path() {
            "/strict" => "max-age=300, must-revalidate",
            "/s-maxage" => "s-maxage=300",
            _ => "max-age=300",
        };
        resp(200, &[("cache-control", cc)], &format!("v{n}"))
    })
    .await;
    let g = gw(&o, "cache = { stale_if_error = \"10m\" }", "").await;
    for p in ["/strict", "/s-maxage", "/lenient"] {
        assert_eq!(get(&g, p, &[]).await.body, "v1");
        let r = purge(&g, &format!("url={p}&soft=true")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    failing.store(true, Ordering::Relaxed);
    for p in ["/strict", "/s-maxage"] {
        let r = get(&g, p, &[]).await;
        assert_eq!(r.status, 503, "{p}: served stale ({})", status(&r));
    }
    let r = get(&g, "/lenient", &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "v1"));
    assert!(status(&r).contains("ttl=0"), "{}", status(&r));
    quiescent(&g).await;
}

#[tokio::test]
async fn a_purge_that_would_do_less_than_asked_is_refused() {
    let o =
        Origin::start(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("#{n}"))).await;
    let g = gw(&o, "cache = {}", "").await;
    for q in [
        "url=/pa&prefix=/pb/",
        "url=/pa&url=/pb",
        "url=/pa&soft=yes",
        "prefix=",
        "tag=",
        "url=",
        "url=ftp%3A%2F%2Fh%2Fx",
        "url=%2Fx%25zz",
    ] {
        let r = purge(&g, q).await;
        assert_eq!(r.status, 400, "{q}: {}", r.body);
    }
    // A URL spelled as a client may spell it finds the copy its request stored (it answered
    // 200 "purged":0 and left the copy).
    for (i, spelling) in ["%2F%2561b0", "%2Fx%2F..%2Fab1", "%2F%2Fab2"]
        .iter()
        .enumerate()
    {
        let path = format!("/ab{i}");
        get(&g, &path, &[]).await;
        let r = purge(&g, &format!("url={spelling}")).await;
        assert!(r.body.contains("\"purged\":1"), "{spelling}: {}", r.body);
        assert!(!is_hit(&get(&g, &path, &[]).await), "{spelling}");
    }
    quiescent(&g).await;
}

#[tokio::test]
async fn cookies_are_read_as_the_application_reads_them() {
    // The origin echoes the Cookie fields it got, as many servers read them: the first line.
    let o = Origin::start(|req, n| {
        let lines: Vec<&str> = req
            .headers
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        resp(
            200,
            &[("cache-control", "max-age=60")],
            &format!(
                "{} line(s): {} #{n}",
                lines.len(),
                lines.first().unwrap_or(&"")
            ),
        )
    })
    .await;
    let g = gw(
        &o,
        "cache = { key = { cookies = [\"lang\"] }, bypass = { cookies = [\"session\"] } }",
        "",
    )
    .await;
    // HTTP/2 clients send each cookie as its own field; an HTTP/1.1 origin must get one line.
    let h2 = Client::h2c()
        .get_with(g.http, "/page", &[("cookie", "a=1"), ("cookie", "lang=de")])
        .await
        .expect("h2 request");
    assert_eq!(h2.body, "1 line(s): a=1; lang=de #1");
    // A session cookie however the client spells it bypasses the cache.
    for (i, session) in ["session =abc", "a=1,session=abc", " session=abc"]
        .iter()
        .enumerate()
    {
        let path = format!("/private-{i}");
        get(&g, &path, &[("cookie", session)]).await;
        let anonymous = get(&g, &path, &[]).await;
        assert!(
            !is_hit(&anonymous),
            "{session:?}: stored and shared ({})",
            status(&anonymous)
        );
    }
    // Parameters given twice keep their order in the key (first-wins and last-wins parsers).
    assert_eq!(get(&g, "/q?a=1&a=2", &[]).await.body, "0 line(s):  #1");
    let other = get(&g, "/q?a=2&a=1", &[]).await;
    assert!(!is_hit(&other), "{}", status(&other));
    quiescent(&g).await;
}

#[tokio::test]
async fn two_routes_to_one_url_never_answer_with_each_others_responses() {
    // A header-matched route (a canary, an API version) sends /page to another upstream; the
    // cache key held only host, path and query, so whichever route filled it answered both.
    let v1 = Origin::start(|_, _| resp(200, &[("cache-control", "max-age=60")], "v1")).await;
    let v2 = Origin::start(|_, _| resp(200, &[("cache-control", "max-age=60")], "v2")).await;
    let rest = format!(
        "[[routes]]\nname = \"v2\"\nmatch = {{ path_prefix = \"/\", headers = {{ \"x-version\" = \"v2\" }} }}\nupstream = \"v2\"\ncache = {{}}\n\n\
         [[routes]]\nname = \"v1\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"v1\"\ncache = {{}}\n\n\
         [upstreams.v1]\nendpoints = [\"{}\"]\n\n[upstreams.v2]\nendpoints = [\"{}\"]\n",
        v1.addr, v2.addr
    );
    let g = scalegate_testkit::GatewayProcess::start(BIN, &rest).await;
    assert_eq!(get(&g, "/page", &[]).await.body, "v1");
    let r = get(&g, "/page", &[("x-version", "v2")]).await;
    assert_eq!(r.body, "v2", "{}", status(&r));
    assert_eq!(get(&g, "/page", &[]).await.body, "v1");
    assert!(is_hit(&get(&g, "/page", &[("x-version", "v2")]).await));
    quiescent(&g).await;
}

/// Found from outside (session 21): one uncacheable answer (a 503 during a deploy) kept the key
/// from being stored for 10 s (hit-for-pass), so a recovering origin took every request
/// uncoalesced. The mark now only skips the queue (hit-for-miss): the first answer that may be
/// stored is, and ends it.
#[tokio::test]
async fn a_key_that_answered_uncacheable_stores_its_next_cacheable_answer() {
    let o = Origin::start(|_, n| match n {
        1 => resp(503, &[], "deploying"),
        _ => resp(200, &[("cache-control", "max-age=60")], "ok"),
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    assert_eq!(get(&g, "/hfm", &[]).await.status, 503);
    let r = get(&g, "/hfm", &[]).await;
    assert_eq!(r.body, "ok");
    assert!(status(&r).contains("stored"), "{}", status(&r));
    let r = get(&g, "/hfm", &[]).await;
    assert!(is_hit(&r), "{}", status(&r));
    assert_eq!(o.hits("/hfm"), 2);
    quiescent(&g).await;
}

/// Found from outside (session 21): a write whose Location or Content-Location was relative
/// (`x`, `./x`), or held a dot segment or an escape, invalidated nothing (RFC 9111 §4.4), so an
/// application that redirects after a write kept serving the old page for its freshness.
#[tokio::test]
async fn a_write_invalidates_what_its_relative_location_names() {
    let o = Origin::start(|req, n| match req.method {
        http::Method::POST => {
            let loc = req
                .headers
                .get("x-location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let name = req
                .headers
                .get("x-name")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("location");
            resp(201, &[(name, loc)], "")
        }
        _ => resp(200, &[("cache-control", "max-age=60")], &format!("v{n}")),
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    let c = Client::http1();
    for (name, loc) in [
        ("location", "x"),
        ("location", "./x"),
        ("location", "/i7/./x"),
        ("location", "../i7/x"),
        ("location", "/i7/%78"),
        ("content-location", "x"),
    ] {
        get(&g, "/i7/x", &[]).await;
        assert!(is_hit(&get(&g, "/i7/x", &[]).await), "{loc}: not stored");
        let w = c
            .post_with(g.http, "/i7/w", &[("x-location", loc), ("x-name", name)])
            .await
            .expect("post");
        assert_eq!(w.status, 201);
        let after = get(&g, "/i7/x", &[]).await;
        assert!(!is_hit(&after), "{name}: {loc} invalidated nothing");
    }
    quiescent(&g).await;
}

/// Found from outside (session 21): on a listener with `merge_slashes = false`, a purge of
/// `/n/a//b` answered 200 having removed `/n/a/b` (another resource) and left `/n/a//b`; with
/// `escaped_slashes = "keep"`, a purge naming `%2F` was refused. Purge URLs are now named as a
/// request on the gateway's listeners would be.
#[tokio::test]
async fn purges_name_paths_as_the_listener_does() {
    let o = Origin::start(|req, _| {
        let body = req.uri.path().to_string();
        resp(200, &[("cache-control", "max-age=60")], &body)
    })
    .await;
    let rest = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\ncache = {{}}\n\n[upstreams.app]\nendpoints = [\"{}\"]\n",
        o.addr
    );
    let g = scalegate_testkit::GatewayProcess::start_custom(
        BIN,
        "",
        &format!("token = \"{TOKEN}\""),
        "merge_slashes = false\nescaped_slashes = \"keep\"",
        &rest,
    )
    .await;
    for p in ["/n/a/b", "/n/a//b", "/n/a%2Fb"] {
        assert_eq!(get(&g, p, &[]).await.body, p);
        assert!(is_hit(&get(&g, p, &[]).await), "{p} not stored");
    }
    let r = purge(&g, "url=/n/a//b").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !is_hit(&get(&g, "/n/a//b", &[]).await),
        "the named URL stayed"
    );
    assert!(
        is_hit(&get(&g, "/n/a/b", &[]).await),
        "another URL was purged"
    );
    let r = purge(&g, "url=/n/a%252Fb").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!is_hit(&get(&g, "/n/a%2Fb", &[]).await), "%2F stayed");
    assert!(
        is_hit(&get(&g, "/n/a/b", &[]).await),
        "another URL was purged"
    );
    quiescent(&g).await;
}

/// An origin answering a Range with a 206 of the first 10 of 10,000 bytes and a plain GET
/// with all of them, both with Cache-Control `cc`; counts the plain GETs.
async fn range_origin(cc: &'static str) -> (Origin, Arc<std::sync::atomic::AtomicUsize>) {
    let whole = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = whole.clone();
    let o = Origin::start(move |req, _| match req.headers.get("range") {
        Some(_) => resp(
            206,
            &[("cache-control", cc), ("content-range", "bytes 0-9/10000")],
            "0123456789",
        ),
        None => {
            seen.fetch_add(1, Ordering::SeqCst);
            resp(200, &[("cache-control", cc)], &"x".repeat(10_000))
        }
    })
    .await;
    (o, whole)
}

/// A regression hunt's finding (session 21): with hit-for-miss, every range request to a key
/// that answered uncacheable started a background fetch of the whole object (each could pull
/// up to `max_object_bytes` from the origin, for video seeking say). Only a fill that leads its
/// key's flight fetches the whole object after a range miss.
#[tokio::test]
async fn range_requests_to_an_uncacheable_key_fetch_no_whole_objects() {
    let (o, whole) = range_origin("private").await;
    let g = gw(&o, "cache = {}", "").await;
    for _ in 0..5 {
        let r = get(&g, "/media", &[("range", "bytes=0-9")]).await;
        assert_eq!(r.status, 206);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n = whole.load(Ordering::SeqCst);
    assert!(n <= 1, "{n} whole fetches for 5 range requests");
    quiescent(&g).await;
}

/// Found from outside (session 21): a range miss carrying a user's `Authorization` started a
/// background fetch of the whole object with those credentials, whose answer is rarely
/// storable. Such a miss fetches only its range.
#[tokio::test]
async fn a_range_miss_with_credentials_fetches_no_whole_object() {
    let (o, whole) = range_origin("max-age=60").await;
    let g = gw(&o, "cache = {}", "").await;
    let credentials = [("range", "bytes=0-9"), ("authorization", "Bearer alice")];
    assert_eq!(get(&g, "/private-media", &credentials).await.status, 206);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        whole.load(Ordering::SeqCst),
        0,
        "a whole fetch with alice's credentials"
    );
    // Without credentials the whole object is still fetched in the background.
    assert_eq!(
        get(&g, "/media", &[("range", "bytes=0-9")]).await.status,
        206
    );
    let filled = eventually(Duration::from_secs(5), || async {
        whole.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(filled, "no background fill");
    quiescent(&g).await;
}

/// Left alone in session 23, fixed in session 24: the access log said `"bytes": 0` for a
/// response the cache sent after a 304 revalidation (the stored body went out whole), and the
/// stored body's whole length for a 304 or a Range answer to the client's own request.
#[tokio::test]
async fn the_access_log_counts_the_bytes_the_cache_sends() {
    let o = Origin::start(|req, _| {
        let tag = [("cache-control", "max-age=1"), ("etag", "\"v1\"")];
        if req.headers.contains_key("if-none-match") {
            return resp(304, &tag, "");
        }
        resp(200, &tag, "etag-body")
    })
    .await;
    let g = gw(&o, "cache = {}", "[log]\naccess_log = true\n").await;
    assert_eq!(get(&g, "/e", &[]).await.body, "etag-body");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let revalidated = get(&g, "/e", &[]).await;
    assert_eq!(
        (revalidated.status.as_u16(), revalidated.body.as_str()),
        (200, "etag-body")
    );
    let not_modified = get(&g, "/e", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status, 304);
    let part = get(&g, "/e", &[("range", "bytes=0-3")]).await;
    assert_eq!((part.status.as_u16(), part.body.as_str()), (206, "etag"));
    // The regression hunt's findings (session 24): a Range answered after a revalidation was
    // logged 200, and a HEAD hit with the stored body's length.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let part = get(&g, "/e", &[("range", "bytes=1-2")]).await;
    assert_eq!((part.status.as_u16(), part.body.as_str()), (206, "ta"));
    let head = Client::http1()
        .request("HEAD", g.http, "/e", &[])
        .await
        .expect("head");
    assert_eq!(head.status, 200);
    let mut bytes = Vec::new();
    let logged = eventually(Duration::from_secs(5), || {
        bytes = g
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["bytes"].as_u64())
            .collect();
        let n = bytes.len();
        async move { n >= 6 }
    })
    .await;
    assert!(logged, "{bytes:?}");
    assert_eq!(bytes, [9, 9, 0, 4, 2, 0]);
    let statuses: Vec<u64> = g
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["status"].as_u64())
        .collect();
    assert_eq!(statuses, [200, 200, 304, 206, 206, 200]);
    quiescent(&g).await;
}
