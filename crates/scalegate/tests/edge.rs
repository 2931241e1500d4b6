//! The edge: one normalised form of every request, trust boundaries for forwarded headers,
//! upgrades, Host rules, header limits and bodies on GET, each checked at the client AND at a
//! recording backend (the exact request it received).

mod common;
mod wire;

use common::*;
use scalegate_testkit::Recorder;
use scalegate_testkit::raw_h2::{Frame, H2Answer};
use wire::{Seen, expect, h1, h2, plain};

async fn gateway_with(listener: &str, rec: &Recorder) -> GatewayProcess {
    GatewayProcess::start_full(
        BIN,
        "[runtime]\nworker_threads = 1\n",
        listener,
        &wire::deny_routes(rec),
    )
    .await
}

const BYPASSES: &[&str] = &[
    "/admin/x",
    "/public/../admin/x",
    "/public/%2e%2e/admin/x",
    "/public/%2E%2E/admin/x",
    "/%61dmin/x",
    "//admin/x",
    "/./admin/x",
    "/public/./../admin/x",
    "/admin/",
    "/%2e/admin",
];

#[tokio::test]
async fn path_bypasses_are_denied_over_http1_and_http2() {
    let rec = Recorder::start().await;
    let gw = gateway_with("", &rec).await;
    for p in BYPASSES {
        let req = format!("GET {p} HTTP/1.1\r\nHost: shop.example\r\n\r\n");
        assert_eq!(h1(gw.http, req.as_bytes()).await, [403], "HTTP/1.1 {p}");
        let answer = h2(gw.http, "GET", p, "shop.example", &[], &[]).await;
        assert_eq!(answer, H2Answer::Status(403), "HTTP/2 {p}");
    }
    expect(&rec, &[], "every bypass is refused").await;
    quiescent(&gw).await;
}

/// A probe's finding: dot-segments with parameters walked past the deny rule to the default
/// route, and servlet containers resolve them as `..` (the "..;/" bypass). They are refused.
#[tokio::test]
async fn dot_segments_with_parameters_are_refused_over_http1_and_http2() {
    let rec = Recorder::start().await;
    let gw = gateway_with("", &rec).await;
    for p in [
        "/public/..;/admin/x",
        "/;/admin/x",
        "/.;/admin/x",
        "/public/%2e%2e;/admin/x",
        "/public/..;jsessionid=1/admin/x",
        // A second probe: an encoded `;`, and a NUL where C backends cut the path.
        "/public/..%3B/admin/x",
        "/public/%2e%2e%3b/admin/x",
        "/admin%00",
        "/public/..%00/admin/x",
    ] {
        let req = format!("GET {p} HTTP/1.1\r\nHost: shop.example\r\n\r\n");
        // Before the fix: 200 from the default route.
        assert_eq!(h1(gw.http, req.as_bytes()).await, [400], "HTTP/1.1 {p}");
        let answer = h2(gw.http, "GET", p, "shop.example", &[], &[]).await;
        assert_eq!(answer, H2Answer::Status(400), "HTTP/2 {p}");
    }
    expect(&rec, &[], "every spelling is refused").await;
    quiescent(&gw).await;
}

#[tokio::test]
async fn host_spellings_are_denied_over_http1_and_http2() {
    let rec = Recorder::start().await;
    let gw = gateway_with("", &rec).await;
    for host in [
        "admin.example",
        "admin.example.",
        "ADMIN.Example",
        "Admin.Example.:80",
    ] {
        let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(h1(gw.http, req.as_bytes()).await, [403], "HTTP/1.1 {host}");
        let absolute = format!("GET http://{host}/x HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(
            h1(gw.http, absolute.as_bytes()).await,
            [403],
            "absolute {host}"
        );
        let answer = h2(gw.http, "GET", "/x", host, &[], &[]).await;
        assert_eq!(answer, H2Answer::Status(403), "HTTP/2 {host}");
    }
    expect(&rec, &[], "every host spelling is refused").await;
    quiescent(&gw).await;
}

#[tokio::test]
async fn the_backend_receives_the_normalised_request() {
    let rec = Recorder::start().await;
    let gw = gateway_with("", &rec).await;
    let req =
        b"GET /public/./a/../b%7e/%3f?q=%2e%2E&x=/../ HTTP/1.1\r\nHost: Shop.Example.\r\n\r\n";
    assert_eq!(h1(gw.http, req).await, [200]);
    let answer = h2(
        gw.http,
        "GET",
        "/public//b%7E/%3f?q=%2e%2E&x=/../",
        "Shop.Example.",
        &[],
        &[],
    )
    .await;
    assert_eq!(answer, H2Answer::Status(200));
    let want = || {
        plain(
            "GET /public/b~/%3F?q=%2e%2E&x=/../ HTTP/1.1",
            "shop.example",
            &[],
            b"",
        )
    };
    expect(
        &rec,
        &[want(), want()],
        "normalised path and host, query untouched",
    )
    .await;
    quiescent(&gw).await;
}

#[tokio::test]
async fn encoded_slashes_userinfo_and_missing_host_are_400() {
    let rec = Recorder::start().await;
    let gw = gateway_with("", &rec).await;
    for p in [
        "/admin%2Fx",
        "/public%2f..%2fadmin/x",
        "/public%5C..%5Cadmin",
        "/public\\..\\admin",
        "/%zz",
    ] {
        let req = format!("GET {p} HTTP/1.1\r\nHost: shop.example\r\n\r\n");
        assert_eq!(h1(gw.http, req.as_bytes()).await, [400], "HTTP/1.1 {p}");
        let answer = h2(gw.http, "GET", p, "shop.example", &[], &[]).await;
        assert!(
            matches!(answer, H2Answer::Status(400) | H2Answer::Reset(_)),
            "HTTP/2 {p}: {answer:?}"
        );
    }
    for req in [
        &b"GET http://evil.example/x HTTP/1.1\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nHost: user@evil.example\r\n\r\n",
        b"GET http://user@evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        // A probe's finding: an empty Host passed where a missing one is 400.
        b"GET /x HTTP/1.1\r\nHost:\r\n\r\n",
    ] {
        assert_eq!(
            h1(gw.http, req).await,
            [400],
            "{}",
            String::from_utf8_lossy(req)
        );
    }
    let answer = h2(gw.http, "GET", "/x", "user@evil.example", &[], &[]).await;
    assert!(
        matches!(answer, H2Answer::Status(400) | H2Answer::Reset(_)),
        ":authority with userinfo: {answer:?}"
    );
    expect(&rec, &[], "nothing refused reaches the backend").await;
    quiescent(&gw).await;
}

#[tokio::test]
async fn encoded_slashes_can_be_kept_or_decoded_per_listener() {
    let rec = Recorder::start().await;
    let keep = gateway_with("escaped_slashes = \"keep\"\nmerge_slashes = false", &rec).await;
    assert_eq!(
        h1(keep.http, b"GET //a%2fb HTTP/1.1\r\nHost: s\r\n\r\n").await,
        [200]
    );
    expect(
        &rec,
        &[plain("GET //a%2Fb HTTP/1.1", "s", &[], b"")],
        "kept",
    )
    .await;
    // A probe's finding: a literal backslash was forwarded raw, a separator to backends that
    // take it for `/` (IIS), after the rules had matched one segment.
    assert_eq!(
        h1(keep.http, b"GET /x\\..\\admin HTTP/1.1\r\nHost: s\r\n\r\n").await,
        [200]
    );
    expect(
        &rec,
        &[plain("GET /x%5C..%5Cadmin HTTP/1.1", "s", &[], b"")],
        "a backslash kept encoded",
    )
    .await;
    let decode = gateway_with("escaped_slashes = \"decode\"", &rec).await;
    assert_eq!(
        h1(
            decode.http,
            b"GET /public%2F..%2Fadmin/x HTTP/1.1\r\nHost: s\r\n\r\n"
        )
        .await,
        [403],
        "decoded, then normalised like any slash"
    );
    assert_eq!(
        h1(decode.http, b"GET /a%2fb HTTP/1.1\r\nHost: s\r\n\r\n").await,
        [200]
    );
    expect(
        &rec,
        &[plain("GET /a/b HTTP/1.1", "s", &[], b"")],
        "decoded",
    )
    .await;
    quiescent(&keep).await;
    quiescent(&decode).await;
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let rec = Recorder::start().await;
    let gw = gateway_with("", &rec).await;
    let spoof = b"GET /p HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 1.2.3.4\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Real-IP: 1.2.3.4\r\n\
        Forwarded: for=1.2.3.4;host=evil\r\nConnection: x-request-id, x-forwarded-for\r\n\
        X-Request-Id: 0123456789abcdef0123456789abcdef\r\n\r\n";
    assert_eq!(h1(gw.http, spoof).await, [200]);
    expect(
        &rec,
        &[plain("GET /p HTTP/1.1", "shop.example", &[], b"")],
        "replaced",
    )
    .await;
    // Behind a trusted proxy: kept, extended, and the client address is the forwarded one
    // (so the deny rule for loopback does not refuse it).
    let trusted = gateway_with(
        "trusted_proxies = [\"127.0.0.0/8\"]\nforwarded_header = true",
        &rec,
    )
    .await;
    let via_proxy =
        b"GET /admin/x HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 198.51.100.7\r\n\
        X-Forwarded-Proto: https\r\n\r\n";
    assert_eq!(h1(trusted.http, via_proxy).await, [200]);
    let mut want = wire::seen(
        b"GET /admin/x HTTP/1.1\r\nhost: shop.example\r\nx-request-id: 0123456789abcdef0123456789abcdef\r\n\
        x-forwarded-for: 198.51.100.7, 127.0.0.1\r\nx-forwarded-proto: https\r\n\
        x-forwarded-host: shop.example\r\nx-real-ip: 198.51.100.7\r\n\
        forwarded: for=127.0.0.1;proto=http;host=shop.example\r\n\r\n",
    );
    want.headers.iter_mut().for_each(|h| {
        if h.starts_with("x-request-id") {
            *h = "x-request-id: <id>".into();
        }
    });
    want.headers.sort();
    expect(&rec, &[want], "kept and extended from a trusted proxy").await;
    // A loopback client that forwards for nobody is still loopback: denied.
    assert_eq!(
        h1(trusted.http, b"GET /admin/x HTTP/1.1\r\nHost: s\r\n\r\n").await,
        [403]
    );
    quiescent(&gw).await;
    quiescent(&trusted).await;
}

#[tokio::test]
async fn h2c_and_unknown_upgrades_are_removed() {
    let rec = Recorder::start().await;
    let gw = gateway_with("", &rec).await;
    for up in ["h2c", "websocket, h2c", "foo/1"] {
        let req = format!(
            "GET /p HTTP/1.1\r\nHost: s\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {up}\r\n\
             HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        );
        assert_eq!(h1(gw.http, req.as_bytes()).await, [200], "{up}");
        // HTTP2-Settings not nominated in Connection: removed all the same.
        let req = format!(
            "GET /p HTTP/1.1\r\nHost: s\r\nConnection: Upgrade\r\nUpgrade: {up}\r\nHTTP2-Settings: AAMAAABk\r\n\r\n"
        );
        assert_eq!(h1(gw.http, req.as_bytes()).await, [200], "{up}");
    }
    let want: Vec<_> = (0..6)
        .map(|_| plain("GET /p HTTP/1.1", "s", &[], b""))
        .collect();
    expect(&rec, &want, "served as plain requests").await;
    quiescent(&gw).await;
}

#[tokio::test]
async fn header_count_limit_is_the_same_over_http1_and_http2() {
    let rec = Recorder::start().await;
    let gw = gateway_with("max_headers = 20", &rec).await;
    let lines = |n: usize| (0..n).map(|i| format!("x-h{i}: v\r\n")).collect::<String>();
    // Host is one of the 20.
    let ok = format!("GET /p HTTP/1.1\r\nHost: s\r\n{}\r\n", lines(19));
    assert_eq!(h1(gw.http, ok.as_bytes()).await, [200]);
    let over = format!("GET /p HTTP/1.1\r\nHost: s\r\n{}\r\n", lines(20));
    assert_eq!(h1(gw.http, over.as_bytes()).await, [431]);
    let names: Vec<String> = (0..21).map(|i| format!("x-h{i}")).collect();
    let fields =
        |n: usize| -> Vec<(&str, &str)> { names[..n].iter().map(|k| (k.as_str(), "v")).collect() };
    assert_eq!(
        h2(gw.http, "GET", "/p", "s", &fields(20), &[]).await,
        H2Answer::Status(200)
    );
    assert_eq!(
        h2(gw.http, "GET", "/p", "s", &fields(21), &[]).await,
        H2Answer::Status(431)
    );
    let got = rec.requests().len();
    assert_eq!(
        got, 2,
        "only the requests within the limit reach the backend"
    );
    quiescent(&gw).await;
    rec.clear();
    // The default (100) is also the same for both.
    let defaults = gateway_with("", &rec).await;
    let names: Vec<String> = (0..101).map(|i| format!("x-h{i}")).collect();
    let fields: Vec<(&str, &str)> = names.iter().map(|k| (k.as_str(), "v")).collect();
    assert_eq!(
        h2(defaults.http, "GET", "/p", "s", &fields, &[]).await,
        H2Answer::Status(431)
    );
    let over = format!("GET /p HTTP/1.1\r\nHost: s\r\n{}\r\n", lines(100));
    assert_eq!(h1(defaults.http, over.as_bytes()).await, [431]);
    expect(&rec, &[], "over the default limit").await;
    quiescent(&defaults).await;
}

#[tokio::test]
async fn bodies_on_get_and_head_are_forwarded_whatever_their_framing() {
    let rec = Recorder::start().await;
    let gw = gateway_with("", &rec).await;
    let chunked = b"GET /search HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(h1(gw.http, chunked).await, [200]);
    let with_length = b"DELETE /x HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(h1(gw.http, with_length).await, [200]);
    let answer = h2(
        gw.http,
        "GET",
        "/search",
        "s",
        &[],
        &[Frame::Data(b"hello".to_vec(), true)],
    )
    .await;
    assert_eq!(answer, H2Answer::Status(200));
    let answer = h2(
        gw.http,
        "OPTIONS",
        "/o",
        "s",
        &[("content-length", "5")],
        &[Frame::Data(b"hello".to_vec(), true)],
    )
    .await;
    assert_eq!(answer, H2Answer::Status(200));
    expect(
        &rec,
        &[
            plain(
                "GET /search HTTP/1.1",
                "s",
                &["transfer-encoding: chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            plain("DELETE /x HTTP/1.1", "s", &["content-length: 5"], b"hello"),
            plain(
                "GET /search HTTP/1.1",
                "s",
                &["transfer-encoding: chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            plain("OPTIONS /o HTTP/1.1", "s", &["content-length: 5"], b"hello"),
        ],
        "bodies kept, re-framed where needed",
    )
    .await;
    quiescent(&gw).await;
}

#[tokio::test]
async fn the_client_behind_trusted_proxies_keys_rate_limits_and_the_access_log() {
    let rec = Recorder::start().await;
    let rest = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\
         rate_limit = {{ requests = 1, per = \"1m\", burst = 1, key = \"ip\" }}\n\n\
         [upstreams.app]\nendpoints = [\"{}\"]\n",
        rec.addr
    );
    let preamble = "[runtime]\nworker_threads = 1\n[log]\naccess_log = true\n";
    let via = |ip: &str| format!("GET /p HTTP/1.1\r\nHost: s\r\nX-Forwarded-For: {ip}\r\n\r\n");
    let trusted =
        GatewayProcess::start_full(BIN, preamble, "trusted_proxies = [\"127.0.0.1\"]", &rest).await;
    assert_eq!(
        h1(trusted.http, via("198.51.100.1").as_bytes()).await,
        [200]
    );
    assert_eq!(
        h1(trusted.http, via("198.51.100.1").as_bytes()).await,
        [429]
    );
    assert_eq!(
        h1(trusted.http, via("198.51.100.2").as_bytes()).await,
        [200],
        "another client behind the same proxy has its own budget"
    );
    let logged = trusted.stdout();
    assert!(
        logged.contains("\"client\":\"198.51.100.2\""),
        "the access log names the client, not the proxy: {logged}"
    );
    let untrusted = GatewayProcess::start_full(BIN, preamble, "", &rest).await;
    assert_eq!(
        h1(untrusted.http, via("198.51.100.1").as_bytes()).await,
        [200]
    );
    assert_eq!(
        h1(untrusted.http, via("198.51.100.2").as_bytes()).await,
        [429],
        "a spoofed X-Forwarded-For is not another client"
    );
    assert!(untrusted.stdout().contains("\"client\":\"127.0.0.1\""));
    quiescent(&trusted).await;
    quiescent(&untrusted).await;
}

#[tokio::test]
async fn spellings_of_one_path_and_host_share_one_cache_entry() {
    let origin = scalegate_testkit::Origin::start(|req, n| {
        http::Response::builder()
            .header("cache-control", "max-age=60")
            .body(bytes::Bytes::from(format!("{} #{n}", req.uri.path())))
            .unwrap_or_default()
    })
    .await;
    let rest = routed(&format!("\"{}\"", origin.addr), "/", "cache = {}", "");
    let gw = GatewayProcess::start(BIN, &rest).await;
    let c = Client::http1();
    for (path, host) in [
        ("/c/a", "shop.example"),
        ("/c/%61", "Shop.Example."),
        ("/x/../c/./a", "SHOP.example"),
        ("//c//a", "shop.example"),
    ] {
        let r = c
            .get_with(gw.http, path, &[("host", host)])
            .await
            .expect("response");
        assert_eq!(
            r.body, "/c/a #1",
            "{path} {host}: one origin request, one entry"
        );
    }
    assert_eq!(origin.hits("/c/a"), 1);
    quiescent(&gw).await;
}

/// A probe's finding: HTTP/2 field values with leading or trailing whitespace were taken as
/// they were; route matching and per-key rate limits saw `" 1"` while the backend's HTTP/1.1
/// parser read `1`, so a padded `x-internal` walked past the route that denies it. They are
/// malformed (RFC 9113 §8.2.1) and refused.
#[tokio::test]
async fn http2_header_values_padded_with_whitespace_are_refused() {
    let rec = Recorder::start().await;
    let gw = gateway_with("", &rec).await;
    let plain = h2(
        gw.http,
        "GET",
        "/x",
        "shop.example",
        &[("x-internal", "1")],
        &[],
    )
    .await;
    assert_eq!(plain, H2Answer::Status(403), "the route denies x-internal");
    for padded in [" 1", "1 ", "\t1", "1\t", "  1  "] {
        let answer = h2(
            gw.http,
            "GET",
            "/x",
            "shop.example",
            &[("x-internal", padded)],
            &[],
        )
        .await;
        // Before: 200 from the catch-all route.
        assert!(
            matches!(answer, H2Answer::Status(400) | H2Answer::Reset(_)),
            "{padded:?}: {answer:?}"
        );
    }
    // A second probe: the same in a trailer went through (in the chunked trailer section).
    let with_trailer = |v: &str| {
        let trailer = Frame::Trailers(vec![(b"x-t".to_vec(), v.as_bytes().to_vec())]);
        let body = Frame::Data(b"hello".to_vec(), false);
        let fields = [("te", "trailers"), ("trailer", "x-t")];
        async move {
            h2(
                gw.http,
                "POST",
                "/x",
                "shop.example",
                &fields,
                &[body, trailer],
            )
            .await
        }
    };
    let answer = with_trailer(" padded ").await;
    assert!(
        matches!(answer, H2Answer::Status(400) | H2Answer::Reset(_)),
        "padded trailer: {answer:?}"
    );
    expect(&rec, &[], "nothing padded reaches the backend").await;
    let answer = with_trailer("plain").await;
    assert_eq!(answer, H2Answer::Status(200), "a plain trailer passes");
    rec.clear();
    quiescent(&gw).await;
}

/// A probe's finding: a request that named no host (HTTP/1.0 without Host, HTTP/2 without
/// :authority) went upstream as HTTP/1.1 without Host, which RFC 9112 §3.2 forbids (strict
/// backends answer 400, virtual hosts their default site). It carries the endpoint's address,
/// as nginx sends its upstream's.
#[tokio::test]
async fn a_request_that_names_no_host_goes_upstream_with_the_endpoints() {
    let rec = Recorder::start().await;
    let gw = gateway_with("", &rec).await;
    assert_eq!(h1(gw.http, b"GET /x HTTP/1.0\r\n\r\n").await, [200]);
    assert_eq!(
        h1(gw.http, b"GET /x HTTP/1.0\r\nHost:\r\n\r\n").await,
        [200]
    );
    let fields: [(&[u8], &[u8]); 3] = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/x"),
    ];
    let answer = scalegate_testkit::raw_h2::send(gw.http, &fields, &[]).await;
    assert_eq!(answer, H2Answer::Status(200));
    let mut want = plain("GET /x HTTP/1.1", &rec.addr.to_string(), &[], b"");
    // No host was named: none is forwarded as X-Forwarded-Host.
    want.headers.retain(|h| !h.starts_with("x-forwarded-host"));
    let want = || Seen {
        line: want.line.clone(),
        headers: want.headers.clone(),
        body: vec![],
    };
    expect(&rec, &[want(), want(), want()], "Host is the endpoint's").await;
    quiescent(&gw).await;
}
