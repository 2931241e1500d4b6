//! RFC 9111 (HTTP caching) and its neighbours, checked from outside against a real scripted
//! origin. Each test is named after the section it checks.

mod cache_support;
mod common;

use cache_support::*;
use scalegate_testkit::client::Resp;
use scalegate_testkit::{GatewayProcess, Origin};

/// The spellings of "do not share this" an origin may send; each must keep alice's response
/// from bob. The path names the spelling.
const PRIVATE_SPELLINGS: &[(&str, &str)] = &[
    ("/private", "max-age=3600, private"),
    ("/Private", "max-age=3600, Private"),
    ("/PRIVATE", "max-age=3600, PRIVATE"),
    ("/private-quoted", "max-age=3600, private=\"set-cookie\""),
    ("/private-ws", "max-age=3600 ,\t Private\t"),
    ("/private-field-list", "max-age=3600, PRIVATE=\"x-a, x-b\""),
    ("/No-Store", "max-age=3600, No-Store"),
    ("/NO-STORE", "MAX-AGE=3600, NO-STORE"),
    ("/No-CaChE", "No-CaChE, max-age=3600"),
    (
        "/no-cache-set-cookie",
        "no-cache=\"set-cookie\", max-age=3600",
    ),
    ("/no-cache-unquoted", "no-cache=set-cookie, max-age=3600"),
    ("/S-MAXAGE", "max-age=3600, S-MAXAGE=0"),
    ("/MaX-AgE", "MaX-AgE=0"),
];

/// An origin answering each user their own response, with the path's Cache-Control and a
/// Set-Cookie of the user's session.
async fn per_user_origin() -> Origin {
    Origin::start(|req, _| {
        let user = req
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nobody")
            .to_string();
        let cc = PRIVATE_SPELLINGS
            .iter()
            .find(|(p, _)| *p == req.uri.path())
            .map_or("max-age=3600", |(_, cc)| *cc);
        let cookie = format!("session={user}");
        resp(
            200,
            &[("cache-control", cc), ("set-cookie", &cookie)],
            &format!("account of {user}"),
        )
    })
    .await
}

#[tokio::test]
async fn rfc9111_5_2_directive_names_are_case_insensitive_alice_never_reaches_bob() {
    let o = per_user_origin().await;
    // Sharing Set-Cookie responses is on, so only the directives keep these apart.
    let g = gw(&o, "cache = { share_set_cookie = true }", "").await;
    for (path, cc) in PRIVATE_SPELLINGS {
        let a = get(&g, path, &[("x-user", "alice")]).await;
        assert_eq!(a.body, "account of alice", "{path}");
        for _ in 0..2 {
            let b = get(&g, path, &[("x-user", "bob")]).await;
            assert_eq!(
                b.body,
                "account of bob",
                "{cc:?}: bob got {:?} ({})",
                b.body,
                status(&b)
            );
            assert_eq!(b.header("set-cookie"), "session=bob", "{cc:?}");
            assert!(!is_hit(&b), "{cc:?}: {}", status(&b));
        }
        assert_eq!(o.hits(path), 3, "{cc:?}: every request reached the origin");
    }
    // The control: the same origin with a plain max-age is shared.
    get(&g, "/public", &[("x-user", "alice")]).await;
    let b = get(&g, "/public", &[("x-user", "bob")]).await;
    assert!(is_hit(&b), "{}", status(&b));
    assert_eq!(
        b.header("set-cookie"),
        "",
        "a stored cookie is never replayed"
    );
    common::quiescent(&g).await;
}

/// An origin answering `/s/NNN...` with status NNN and the headers of the path's first
/// segment after it (see the match), body `NNN #n`.
async fn status_origin() -> Origin {
    Origin::start(|req, n| {
        let path = req.uri.path();
        let mut parts = path.trim_start_matches('/').split('/');
        let (_, code, kind) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
        let code: u16 = code.and_then(|c| c.parse().ok()).unwrap_or(200);
        const DATE: &str = "Thu, 01 Jan 2065 00:00:00 GMT";
        let h: &[(&str, &str)] = match kind {
            "max-age" => &[("cache-control", "max-age=60")],
            "s-maxage" => &[("cache-control", "s-maxage=60")],
            "expires" => &[("date", DATE), ("expires", "Thu, 01 Jan 2065 01:00:00 GMT")],
            "expires-850" => &[
                ("date", DATE),
                ("expires", "Thursday, 01-Jan-65 01:00:00 GMT"),
            ],
            "expires-asctime" => &[("date", DATE), ("expires", "Thu Jan  1 01:00:00 2065")],
            "expires-invalid" => &[
                ("date", DATE),
                ("expires", "Thu,  01 Jan 2065 01:00:00 GMT"),
            ],
            "expires-zero" => &[("expires", "0")],
            "heuristic" => &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
            "age-list" => &[("cache-control", "max-age=3600"), ("age", "7200, 0")],
            "age-first" => &[("cache-control", "max-age=3600"), ("age", "100, 9000")],
            "age-invalid" => &[("cache-control", "max-age=3600"), ("age", "soon")],
            "must-understand" => &[("cache-control", "max-age=60, no-store, must-understand")],
            _ => &[],
        };
        resp(code, h, &format!("{code} #{n}"))
    })
    .await
}

/// Two GETs of `path`: whether the second came from the cache (and with the first's body).
async fn second_is_hit(g: &GatewayProcess, path: &str) -> (bool, Resp) {
    let a = get(g, path, &[]).await;
    let b = get(g, path, &[]).await;
    let hit = is_hit(&b);
    if hit {
        assert_eq!((a.status, &a.body), (b.status, &b.body), "{path}");
    }
    (hit, b)
}

#[tokio::test]
async fn rfc9111_3_any_final_status_with_explicit_freshness_is_stored() {
    let o = status_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    for code in [200, 201, 299, 400, 403, 418, 499, 500, 502, 503, 504, 599] {
        for kind in ["max-age", "s-maxage", "expires"] {
            let path = format!("/s/{code}/{kind}");
            let (hit, r) = second_is_hit(&g, &path).await;
            assert!(hit, "{path}: {}", status(&r));
            assert_eq!(r.status.as_u16(), code, "{path}");
            assert_eq!(o.hits(&path), 1, "{path}");
        }
    }
    common::quiescent(&g).await;
}

#[tokio::test]
async fn rfc9110_15_1_heuristic_freshness_only_for_heuristically_cacheable_statuses() {
    let o = status_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    for code in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
        let path = format!("/s/{code}/heuristic");
        let (hit, r) = second_is_hit(&g, &path).await;
        assert!(hit, "{path}: {}", status(&r));
    }
    for code in [201, 302, 307, 400, 403, 500, 502, 503] {
        let path = format!("/s/{code}/heuristic");
        let (hit, r) = second_is_hit(&g, &path).await;
        assert!(!hit, "{path}: {}", status(&r));
        assert!(
            status(&r).contains("detail=status"),
            "{path}: {}",
            status(&r)
        );
        assert_eq!(o.hits(&path), 2, "{path}");
    }
    common::quiescent(&g).await;
}

#[tokio::test]
async fn rfc9110_5_6_7_expires_in_all_three_date_formats() {
    let o = status_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    for kind in ["expires", "expires-850", "expires-asctime"] {
        let path = format!("/s/200/{kind}");
        let (hit, r) = second_is_hit(&g, &path).await;
        assert!(hit, "{path}: {}", status(&r));
        // Fresh for the hour between Date and Expires.
        let ttl: i64 = status(&r)
            .split("ttl=")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        assert!((3500..=3600).contains(&ttl), "{path}: {}", status(&r));
    }
    common::quiescent(&g).await;
}

#[tokio::test]
async fn rfc9111_5_3_an_invalid_expires_means_already_expired() {
    let o = status_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    for kind in ["expires-invalid", "expires-zero"] {
        let path = format!("/s/200/{kind}");
        let (hit, r) = second_is_hit(&g, &path).await;
        assert!(!hit, "{path}: {}", status(&r));
        assert!(
            status(&r).contains("detail=no-freshness"),
            "{path}: {}",
            status(&r)
        );
        assert_eq!(o.hits(&path), 2);
    }
    common::quiescent(&g).await;
}

#[tokio::test]
async fn rfc9111_5_1_age_uses_its_first_value_and_ignores_an_invalid_one() {
    let o = status_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    // Age 7200 > max-age 3600: stale on arrival, nothing to store.
    let (hit, r) = second_is_hit(&g, "/s/200/age-list").await;
    assert!(!hit, "{}", status(&r));
    // Age 100: stored, and a hit says it is at least 100 s old.
    let (hit, r) = second_is_hit(&g, "/s/200/age-first").await;
    assert!(hit, "{}", status(&r));
    let age: u64 = r.header("age").parse().unwrap_or(0);
    assert!((100..200).contains(&age), "Age {age}");
    // An invalid Age is ignored.
    let (hit, r) = second_is_hit(&g, "/s/200/age-invalid").await;
    assert!(hit, "{}", status(&r));
    assert!(
        r.header("age").parse::<u64>().unwrap_or(99) < 5,
        "{}",
        r.header("age")
    );
    common::quiescent(&g).await;
}

#[tokio::test]
async fn rfc9111_5_2_2_3_must_understand_stores_understood_statuses_despite_no_store() {
    let o = status_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    let (hit, r) = second_is_hit(&g, "/s/200/must-understand").await;
    assert!(hit, "{}", status(&r));
    let (hit, r) = second_is_hit(&g, "/s/299/must-understand").await;
    assert!(!hit, "{}", status(&r));
    assert!(
        status(&r).contains("detail=must-understand"),
        "{}",
        status(&r)
    );
    common::quiescent(&g).await;
}

/// An origin for request directives and conditionals: every response has an ETag "v1", a
/// Last-Modified of 2024-01-01 and the path's Cache-Control/Age; it answers 304 to a matching
/// If-None-Match.
async fn validator_origin() -> Origin {
    Origin::start(|req, n| {
        let (cc, age) = match req.uri.path() {
            "/stale" => ("max-age=60", "100"),
            "/stale-strict" => ("max-age=60, must-revalidate", "100"),
            "/no-lm" => ("max-age=60", "0"),
            _ => ("max-age=60", "0"),
        };
        let inm = req
            .headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok());
        let mut h = vec![("cache-control", cc), ("age", age), ("etag", "\"v1\"")];
        if req.uri.path() == "/no-lm" {
            // A Date in the future: no apparent age.
            h.push(("date", "Thu, 01 Jan 2065 00:00:00 GMT"));
        } else {
            h.push(("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"));
        }
        if inm.is_some_and(|v| v.contains("\"v1\"")) {
            return resp(304, &h, "");
        }
        resp(200, &h, &format!("{} #{n}", req.uri.path()))
    })
    .await
}

#[tokio::test]
async fn rfc9111_5_2_1_request_directives() {
    let o = validator_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    get(&g, "/fresh", &[]).await;
    let ask = |cc: &'static str| {
        let g = &g;
        async move { get(g, "/fresh", &[("cache-control", cc)]).await }
    };
    // max-age: an older response is revalidated; a young enough one is a hit.
    for (cc, hit) in [
        ("max-age=0", false),
        ("MAX-AGE=3600", true),
        ("min-fresh=120", false),
        ("min-fresh=10", true),
        ("No-Cache", false),
    ] {
        let r = ask(cc).await;
        assert_eq!(is_hit(&r), hit, "{cc}: {}", status(&r));
        assert_eq!(
            r.body, "/fresh #1",
            "{cc}: the stored body, revalidated or not"
        );
    }
    // Stale on arrival (Age 100 > max-age 60): max-stale allows it unless must-revalidate.
    get(&g, "/stale", &[]).await;
    get(&g, "/stale-strict", &[]).await;
    for (path, cc, hit) in [
        ("/stale", "max-stale=120", true),
        ("/stale", "max-stale", true),
        ("/stale", "max-stale=10", false),
        ("/stale-strict", "max-stale", false),
    ] {
        let r = get(&g, path, &[("cache-control", cc)]).await;
        assert_eq!(is_hit(&r), hit, "{path} {cc}: {}", status(&r));
    }
    // no-store: forwarded, and nothing is stored.
    let r = get(&g, "/ns", &[("cache-control", "No-Store")]).await;
    assert!(
        status(&r).contains("detail=request-no-store"),
        "{}",
        status(&r)
    );
    let r = get(&g, "/ns", &[]).await;
    assert!(status(&r).contains("fwd=uri-miss"), "{}", status(&r));
    assert_eq!(o.hits("/ns"), 2);
    // only-if-cached: a hit when fresh, else 504 without asking the origin.
    let r = get(&g, "/fresh", &[("cache-control", "only-if-cached")]).await;
    assert!(is_hit(&r), "{}", status(&r));
    for path in ["/never", "/stale-strict"] {
        let before = o.hits(path);
        let r = get(&g, path, &[("cache-control", "only-if-cached")]).await;
        assert_eq!(r.status, 504, "{path}");
        assert!(
            status(&r).contains("detail=only-if-cached"),
            "{}",
            status(&r)
        );
        assert_eq!(o.hits(path), before, "{path}: the origin was not asked");
    }
    common::quiescent(&g).await;
}

#[tokio::test]
async fn rfc9110_13_2_2_conditional_requests_answered_from_cache() {
    let o = validator_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    get(&g, "/c", &[]).await;
    get(&g, "/no-lm", &[]).await;
    const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        ("/c", &[("if-none-match", "\"v1\"")], 304),
        ("/c", &[("if-none-match", "W/\"v1\"")], 304),
        ("/c", &[("if-none-match", "\"x\", \"v1\"")], 304),
        ("/c", &[("if-none-match", "*")], 304),
        ("/c", &[("if-none-match", "\"v2\"")], 200),
        // If-None-Match takes precedence over If-Modified-Since.
        (
            "/c",
            &[("if-none-match", "\"v2\""), ("if-modified-since", LM)],
            200,
        ),
        ("/c", &[("if-modified-since", LM)], 304),
        (
            "/c",
            &[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")],
            304,
        ),
        (
            "/c",
            &[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")],
            200,
        ),
        (
            "/c",
            &[("if-modified-since", "Monday, 01-Jan-24 00:00:00 GMT")],
            304,
        ),
        (
            "/c",
            &[("if-modified-since", "Mon Jan  1 00:00:00 2024")],
            304,
        ),
        ("/c", &[("if-modified-since", "yesterday")], 200),
        // Without Last-Modified, Date stands in.
        (
            "/no-lm",
            &[("if-modified-since", "Thu, 01 Jan 2065 00:00:00 GMT")],
            304,
        ),
        ("/no-lm", &[("if-modified-since", LM)], 200),
    ];
    for (path, h, want) in cases {
        let r = get(&g, path, h).await;
        assert_eq!(r.status.as_u16(), *want, "{path} {h:?}: {}", status(&r));
        assert!(is_hit(&r), "{path} {h:?}: {}", status(&r));
    }
    assert_eq!(
        (o.hits("/c"), o.hits("/no-lm")),
        (1, 1),
        "all from the cache"
    );
    common::quiescent(&g).await;
}

#[tokio::test]
async fn rfc9111_4_3_2_a_conditional_request_on_a_miss_is_forwarded() {
    let o = validator_origin().await;
    let g = gw(&o, "cache = {}", "").await;
    let r = get(&g, "/cold", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status, 304, "{}", status(&r));
    let seen = o.last("/cold").expect("seen");
    assert_eq!(
        seen.get("if-none-match").map(|v| v.as_bytes()),
        Some(&b"\"v1\""[..])
    );
    assert!(status(&r).contains("detail=not-modified"), "{}", status(&r));
    // Nothing stored, and no hit-for-pass: the next plain request fills the cache.
    let r = get(&g, "/cold", &[]).await;
    assert!(status(&r).contains("stored"), "{}", status(&r));
    let r = get(&g, "/cold", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status, 304);
    assert!(is_hit(&r), "{}", status(&r));
    assert_eq!(o.hits("/cold"), 2);
    common::quiescent(&g).await;
}

/// 64 KiB of letters whose sequence does not repeat every 26 bytes (a wrong slice shows).
fn big_body() -> String {
    (0..65536u32)
        .map(|i| char::from(b'a' + ((i * 7 + i / 26 + i / 677) % 26) as u8))
        .collect()
}

#[tokio::test]
async fn rfc9110_14_range_requests_are_served_from_a_stored_response() {
    let body = big_body();
    let b2 = body.clone();
    let o = Origin::start(move |req, _| {
        let h = [
            ("cache-control", "max-age=60"),
            ("etag", "\"big\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("content-type", "application/octet-stream"),
        ];
        if let Some(r) = req.headers.get("range").and_then(|v| v.to_str().ok()) {
            // The origin's own 206 for a range miss.
            if r == "bytes=10-19" {
                let mut h = h.to_vec();
                h.push(("content-range", "bytes 10-19/65536"));
                return resp(206, &h, &b2[10..20]);
            }
        }
        resp(200, &h, &b2)
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    // A range miss goes to the origin as it is; its 206 is passed on, not stored itself, and
    // the whole object (64 KiB fits the store) is fetched behind it.
    let r = get(&g, "/obj", &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, body[10..20]);
    assert!(status(&r).contains("detail=partial"), "{}", status(&r));
    let full = get(&g, "/obj", &[]).await;
    assert_eq!(full.body, body);
    assert!(
        is_hit(&full),
        "filled behind the range miss: {}",
        status(&full)
    );
    let cases: &[(&str, u16, &str, std::ops::Range<usize>)] = &[
        ("bytes=0-99", 206, "bytes 0-99/65536", 0..100),
        ("bytes=65000-", 206, "bytes 65000-65535/65536", 65000..65536),
        ("bytes=-10", 206, "bytes 65526-65535/65536", 65526..65536),
        ("bytes=100-99999", 206, "bytes 100-65535/65536", 100..65536),
        ("bytes=70000-", 416, "bytes */65536", 0..0),
        // Several ranges: the whole representation.
        ("bytes=0-1, 5-6", 200, "", 0..65536),
        ("lines=1-2", 200, "", 0..65536),
    ];
    for (range, code, content_range, bytes) in cases {
        let r = get(&g, "/obj", &[("range", range)]).await;
        assert_eq!(r.status.as_u16(), *code, "{range}");
        assert!(is_hit(&r), "{range}: {}", status(&r));
        assert_eq!(r.header("content-range"), *content_range, "{range}");
        assert_eq!(r.body, body[bytes.clone()], "{range}");
        if *code == 206 {
            assert_eq!(
                r.header("content-length"),
                bytes.len().to_string(),
                "{range}"
            );
        }
    }
    // If-Range: a matching strong ETag or the exact Last-Modified keeps the range; anything
    // else gets the whole response.
    for (if_range, code) in [
        ("\"big\"", 206),
        ("Mon, 01 Jan 2024 00:00:00 GMT", 206),
        ("\"other\"", 200),
        ("W/\"big\"", 200),
        ("Tue, 02 Jan 2024 00:00:00 GMT", 200),
    ] {
        let r = get(
            &g,
            "/obj",
            &[("range", "bytes=0-99"), ("if-range", if_range)],
        )
        .await;
        assert_eq!(r.status.as_u16(), code, "If-Range {if_range}");
    }
    // A satisfied precondition wins over Range.
    let r = get(
        &g,
        "/obj",
        &[("range", "bytes=0-99"), ("if-none-match", "\"big\"")],
    )
    .await;
    assert_eq!(r.status, 304);
    assert_eq!(o.hits("/obj"), 2, "the range miss and the fill behind it");
    common::quiescent(&g).await;
    // Too big for the store: ranges go to the origin, nothing whole is fetched behind them.
    let g = gw(&o, "cache = { max_object_bytes = 1024 }", "").await;
    for _ in 0..2 {
        let r = get(&g, "/obj", &[("range", "bytes=10-19")]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (206, &body[10..20]));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(o.hits("/obj"), 4, "two range requests, no whole fetch");
    let last = o.last("/obj").expect("seen");
    assert_eq!(
        last.get("range").map(|v| v.as_bytes()),
        Some(&b"bytes=10-19"[..])
    );
    common::quiescent(&g).await;
}

/// An origin whose responses carry targeted fields: `/cdn` says no-store to everyone but
/// max-age to CDNs; `/ours` lets CDNs store but tells scalegate itself not to.
async fn targeted_origin() -> Origin {
    Origin::start(|req, n| {
        let h: &[(&str, &str)] = match req.uri.path() {
            "/cdn" => &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
            "/ours" => &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=60"),
                ("scalegate-cache-control", "No-Store"),
            ],
            _ => &[("cache-control", "max-age=60")],
        };
        resp(200, h, &format!("{} #{n}", req.uri.path()))
    })
    .await
}

#[tokio::test]
async fn rfc9213_targeted_cache_control_wins_over_cache_control() {
    let o = targeted_origin().await;
    // Default target list: CDN-Cache-Control; forwarded to clients as it is.
    let g = gw(&o, "cache = {}", "").await;
    let (hit, r) = second_is_hit(&g, "/cdn").await;
    assert!(hit, "CDN-Cache-Control: max-age=60 wins: {}", status(&r));
    assert_eq!(r.header("cdn-cache-control"), "max-age=60");
    assert_eq!(
        r.header("cache-control"),
        "no-store",
        "Cache-Control untouched"
    );
    let (hit, _) = second_is_hit(&g, "/ours").await;
    assert!(hit, "scalegate-cache-control is not on the default list");
    common::quiescent(&g).await;
    // A list of our own, first present wins, and targeted fields kept from clients.
    let route = r#"cache = { targets = ["scalegate-cache-control", "cdn-cache-control"], strip_targets = true }"#;
    let g = gw(&o, route, "").await;
    let (hit, r) = second_is_hit(&g, "/ours").await;
    assert!(!hit, "{}", status(&r));
    assert!(status(&r).contains("detail=no-store"), "{}", status(&r));
    assert_eq!(r.header("scalegate-cache-control"), "");
    assert_eq!(r.header("cdn-cache-control"), "");
    assert_eq!(r.header("cache-control"), "max-age=60");
    let (hit, r) = second_is_hit(&g, "/cdn").await;
    assert!(hit, "{}", status(&r));
    assert_eq!(r.header("cdn-cache-control"), "", "stripped on a hit too");
    common::quiescent(&g).await;
}

/// A raw origin that sends `103 Early Hints` before each 200 (hyper's test origin cannot).
async fn early_hints_origin() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut n = 0;
                loop {
                    let Ok(read) = s.read(&mut chunk).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..read]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        n += 1;
                        let body = format!("hinted #{n}");
                        let msg = format!(
                            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
                             HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(msg.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn rfc9110_15_2_informational_responses_are_never_stored() {
    let addr = early_hints_origin().await;
    let rest = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\ncache = {{}}\n\n[upstreams.app]\nendpoints = [\"{addr}\"]\n"
    );
    let g = GatewayProcess::start(BIN, &rest).await;
    let a = get(&g, "/h", &[]).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "hinted #1"));
    let b = get(&g, "/h", &[]).await;
    assert_eq!((b.status.as_u16(), b.body.as_str()), (200, "hinted #1"));
    assert!(
        is_hit(&b),
        "the final 200 is what is stored: {}",
        status(&b)
    );
    assert_eq!(b.header("link"), "", "nothing of the 103 is stored");
    common::quiescent(&g).await;
}

/// An origin whose `/r` is public for a second (ETag "v1"); a revalidation of it gets a 304
/// with `cc304` and alice's account header. `/other-etag` is "v1" at first, then "v2": its 304s
/// name "v2".
async fn revalidating_origin(cc304: &'static str) -> Origin {
    Origin::start(move |req, n| {
        if req.headers.contains_key("if-none-match") {
            let etag = if req.uri.path() == "/other-etag" {
                "\"v2\""
            } else {
                "\"v1\""
            };
            return resp(
                304,
                &[
                    ("cache-control", cc304),
                    ("etag", etag),
                    ("x-account", "alice@example.com"),
                    ("set-cookie", "seen=alice"),
                ],
                "",
            );
        }
        let (body, etag) = if req.uri.path() == "/other-etag" && n > 1 {
            ("v2 body", "\"v2\"")
        } else {
            ("public body", "\"v1\"")
        };
        resp(200, &[("cache-control", "max-age=1"), ("etag", etag)], body)
    })
    .await
}

#[tokio::test]
async fn rfc9111_3_5_a_private_304_never_reaches_another_user() {
    // A revalidation answered 304 `private` with alice's headers: its headers were merged into
    // the shared copy, and every later user got alice's account header (also through Redis).
    for alice in [&[("authorization", "Bearer alice")][..], &[][..]] {
        let o = revalidating_origin("private, max-age=60").await;
        let g = gw(&o, "cache = {}", "").await;
        assert_eq!(get(&g, "/r", &[]).await.body, "public body");
        tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
        let a = get(&g, "/r", alice).await;
        assert_eq!(a.body, "public body", "{}", status(&a));
        assert_eq!(a.header("x-account"), "alice@example.com");
        for _ in 0..2 {
            let b = get(&g, "/r", &[]).await;
            assert_eq!(b.header("x-account"), "", "{alice:?}: {}", status(&b));
            assert!(
                !b.header("cache-control").contains("private"),
                "{}",
                status(&b)
            );
            assert_eq!(b.header("set-cookie"), "");
        }
        assert_eq!(
            a.header("set-cookie"),
            "seen=alice",
            "a 304's cookie is the client's"
        );
        assert_eq!(
            a.header("set-cookie"),
            "seen=alice",
            "a 304's cookie is the client's"
        );
        common::quiescent(&g).await;
    }
}

#[tokio::test]
async fn rfc9111_4_3_4_a_304_naming_another_etag_updates_nothing() {
    // The stored response is "v1"; the origin's 304 says "v2". The gateway served the v1 body
    // labelled "v2" for the 304's whole freshness; then (found from outside, session 21) it
    // answered that request 502 from a healthy origin. The 304 updates nothing, the stored copy
    // is dropped, and the request is asked again without conditions: the client gets v2.
    let o = revalidating_origin("max-age=60").await;
    let g = gw(&o, "cache = {}", "").await;
    assert_eq!(get(&g, "/other-etag", &[]).await.body, "public body");
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let r = get(&g, "/other-etag", &[]).await;
    assert_eq!(r.status, 200, "{}", status(&r));
    assert_eq!((r.body.as_str(), r.header("etag")), ("v2 body", "\"v2\""));
    assert_eq!(
        o.hits("/other-etag"),
        3,
        "one revalidation, one plain request"
    );
    let next = get(&g, "/other-etag", &[]).await;
    assert_eq!(next.body, "v2 body", "{}", status(&next));
    assert!(is_hit(&next), "v2 was stored: {}", status(&next));
    common::quiescent(&g).await;
}

#[tokio::test]
async fn rfc9110_12_5_3_a_coding_the_origin_chose_is_not_served_to_a_client_without_it() {
    // The origin compresses with deflate when asked (Express's `compression` does) and Varies
    // on Accept-Encoding; the key normalised both requests to the same variant, so one
    // request made the URL deflate bytes for every plain client.
    let o = Origin::start(|req, _| {
        let ae = req
            .headers
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut h = vec![("cache-control", "max-age=60"), ("vary", "Accept-Encoding")];
        if ae.contains("deflate") {
            h.push(("content-encoding", "deflate"));
            return resp(200, &h, "DEFLATED-BYTES");
        }
        resp(200, &h, "plain text")
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    let d = get(&g, "/enc", &[("accept-encoding", "deflate")]).await;
    assert_eq!(d.header("content-encoding"), "deflate");
    for ae in [&[][..], &[("accept-encoding", "gzip")][..]] {
        let plain = get(&g, "/enc", ae).await;
        assert_eq!(plain.body, "plain text", "{ae:?}: {}", status(&plain));
        assert_eq!(plain.header("content-encoding"), "");
    }
    common::quiescent(&g).await;
}

#[tokio::test]
async fn rfc9111_4_1_an_empty_header_is_not_an_absent_one() {
    let o = Origin::start(|req, _| {
        let user = match req.headers.get("x-user") {
            Some(v) => format!("user [{}]", v.to_str().unwrap_or("?")),
            None => "anonymous".into(),
        };
        resp(
            200,
            &[("cache-control", "max-age=60"), ("vary", "x-user")],
            &user,
        )
    })
    .await;
    let g = gw(&o, "cache = {}", "").await;
    assert_eq!(get(&g, "/v", &[("x-user", "")]).await.body, "user []");
    assert_eq!(get(&g, "/v", &[]).await.body, "anonymous");
    common::quiescent(&g).await;
}
