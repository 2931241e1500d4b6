//! Helpers shared by the cache tests (cache.rs, cache_rfc.rs, cache_purge.rs): a scripted
//! origin's responses, a gateway with one caching route, requests and Cache-Status.
#![allow(dead_code)]

use bytes::Bytes;
use http::Response;
use scalegate_testkit::client::{Client, Resp};
use scalegate_testkit::{GatewayProcess, Origin};

/// The admin token of [`gw`] gateways.
pub const TOKEN: &str = "cache-test-token-0123";
/// The Authorization header carrying [`TOKEN`].
pub const AUTH: (&str, &str) = ("authorization", "Bearer cache-test-token-0123");

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_scalegate");

/// A response with these headers and body.
pub fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Bytes> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Bytes::from(body.to_string())).expect("response")
}

/// A gateway with one caching catch-all route (`route` lines) in front of `origin`, with
/// `preamble` before the rest of the config (a `[cache]` table, …).
pub async fn gw(origin: &Origin, route: &str, preamble: &str) -> GatewayProcess {
    let rest = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n{route}\n\n[upstreams.app]\nendpoints = [\"{}\"]\npassive = {{ consecutive_failures = 0 }}\n",
        origin.addr
    );
    GatewayProcess::start_custom(
        BIN,
        &format!("[runtime]\nworker_threads = 2\n{preamble}"),
        &format!("token = \"{TOKEN}\""),
        "",
        &rest,
    )
    .await
}

/// GET `path` with `headers` over HTTP/1.1.
pub async fn get(g: &GatewayProcess, path: &str, headers: &[(&str, &str)]) -> Resp {
    Client::http1()
        .get_with(g.http, path, headers)
        .await
        .expect("response")
}

/// The Cache-Status header.
pub fn status(r: &Resp) -> &str {
    r.header("cache-status")
}

/// Whether the response came from the cache.
pub fn is_hit(r: &Resp) -> bool {
    status(r).starts_with("scalegate; hit")
}

/// POSTs an admin purge (`url=…`, `prefix=…` or `tag=…`).
pub async fn purge(g: &GatewayProcess, query: &str) -> Resp {
    Client::http1()
        .post_with(g.admin, &format!("/cache/purge?{query}"), &[AUTH])
        .await
        .expect("purge")
}
