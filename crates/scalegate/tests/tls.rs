//! TLS listeners: HTTP/2 and HTTP/1.1 chosen by ALPN, X-Forwarded-Proto https.

mod common;

use std::path::Path;

use common::*;
use scalegate_testkit::client::tls_get;

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

async fn tls_gateway(bs: &[Backend]) -> GatewayProcess {
    let listener = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        data("localhost.crt"),
        data("localhost.key")
    );
    GatewayProcess::start_full(BIN, "", &listener, &app(bs, "")).await
}

#[tokio::test]
async fn tls_client_gets_h2_by_alpn() {
    let bs = backends(1).await;
    let gw = tls_gateway(&bs).await;
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let (r, version) = tls_get(gw.http, "/", &ca, true).await.expect("h2 over TLS");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b0"));
    assert_eq!(version, http::Version::HTTP_2);
    let h = bs[0].last_headers().expect("headers");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["host"], "localhost", "the :authority becomes Host");
}

#[tokio::test]
async fn tls_client_gets_http1_by_alpn() {
    let bs = backends(1).await;
    let gw = tls_gateway(&bs).await;
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let (r, version) = tls_get(gw.http, "/", &ca, false)
        .await
        .expect("http/1.1 over TLS");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b0"));
    assert_eq!(version, http::Version::HTTP_11);
}

#[tokio::test]
async fn plain_http_to_a_tls_listener_does_not_reach_the_backend() {
    let bs = backends(1).await;
    let gw = tls_gateway(&bs).await;
    let (out, _) = raw(gw.http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!out.contains("b0"), "{out:?}");
    assert_eq!(bs[0].hits(), 0);
}

#[test]
fn a_missing_certificate_is_reported_at_the_tls_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tls.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:8443\"\ntls = { cert = \"nope.crt\", key = \"nope.key\" }\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("tls.toml:4:7: tls: cannot read \"nope.crt\""),
        "{stderr}"
    );
}
