//! TLS: listeners (HTTP/2 and HTTP/1.1 chosen by ALPN, X-Forwarded-Proto https) and upstreams
//! over TLS (verified certificates, ALPN, config errors).

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
    quiescent(&gw).await;
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
    quiescent(&gw).await;
}

#[tokio::test]
async fn plain_http_to_a_tls_listener_does_not_reach_the_backend() {
    let bs = backends(1).await;
    let gw = tls_gateway(&bs).await;
    let (out, _) = raw(gw.http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!out.contains("b0"), "{out:?}");
    assert_eq!(bs[0].hits(), 0);
    quiescent(&gw).await;
}

/// A gateway whose upstream is `front` (a TLS listener), with `tls` settings for it.
async fn edge_gateway(front: &GatewayProcess, settings: &str) -> GatewayProcess {
    let upstream = routed(&format!("\"{}\"", front.http), "/", "", settings);
    GatewayProcess::start(BIN, &upstream).await
}

#[tokio::test]
async fn an_upstream_over_tls_is_verified_and_used() {
    let bs = backends(1).await;
    let front = tls_gateway(&bs).await;
    let ca = format!("tls = {{ ca = \"{}\" }}", data("ca.crt"));
    // HTTP/1.1, the certificate checked against the endpoint's IP (its SAN has 127.0.0.1).
    let edge = edge_gateway(&front, &ca).await;
    let r = Client::http1().get(edge.http, "/").await.expect("through");
    // (The front listener speaks only TLS: clear text would not reach the backend.)
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b0"));
    // HTTP/2 by ALPN, the certificate checked against a configured name; its health probes
    // speak HTTP/2 over TLS too.
    let h2_probed = "protocol = \"h2\"\nhealth = { path = \"/health\", interval = \"100ms\" }";
    let named = format!(
        "{h2_probed}\ntls = {{ ca = \"{}\", server_name = \"localhost\" }}",
        data("ca.crt")
    );
    let edge = edge_gateway(&front, &named).await;
    let r = Client::http1()
        .get(edge.http, "/")
        .await
        .expect("through h2");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b0"));
    wait_for_probe(&bs[0]).await;
    // HTTP/1.1 health probes over TLS, to a front of their own.
    let other = backends(1).await;
    let front = tls_gateway(&other).await;
    let probed = format!("{ca}\nhealth = {{ path = \"/health\", interval = \"100ms\" }}");
    let _edge = edge_gateway(&front, &probed).await;
    wait_for_probe(&other[0]).await;
    quiescent(&edge).await;
    quiescent(&front).await;
}

/// Waits until the backend has seen a health probe.
async fn wait_for_probe(b: &Backend) {
    for _ in 0..100 {
        if b.health_hits() > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no probe reached the backend through TLS");
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let read = |n: &str| std::fs::read(data(n)).expect("test data");
    let backend = scalegate_testkit::tls_backend::MtlsBackend::start(
        &read("localhost.crt"),
        &read("localhost.key"),
        &read("client-ca.crt"),
    )
    .await;
    let upstream = |tls: String| routed(&format!("\"{}\"", backend.addr), "/", "", &tls);
    let with_cert = format!(
        "tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        data("ca.crt"),
        data("client.crt"),
        data("client.key")
    );
    let gw = GatewayProcess::start(BIN, &upstream(with_cert)).await;
    let r = Client::http1().get(gw.http, "/").await.expect("answer");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "mtls-ok"));
    // Without the client certificate the upstream refuses the handshake.
    let without = format!("tls = {{ ca = \"{}\" }}", data("ca.crt"));
    let gw = GatewayProcess::start(BIN, &upstream(without)).await;
    let r = Client::http1().get(gw.http, "/").await.expect("answer");
    assert_eq!(r.status.as_u16(), 502, "{r:?}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn an_upstream_certificate_that_fails_verification_is_never_used() {
    let bs = backends(1).await;
    let front = tls_gateway(&bs).await;
    // The leaf itself as the only trusted "CA": not a CA, so the chain does not verify.
    let wrong = format!("tls = {{ ca = \"{}\" }}", data("localhost.crt"));
    let edge = edge_gateway(&front, &wrong).await;
    let r = Client::http1().get(edge.http, "/").await.expect("answer");
    assert_eq!(r.status.as_u16(), 502, "{r:?}");
    // A name the certificate does not carry.
    let other = format!(
        "tls = {{ ca = \"{}\", server_name = \"api.example\" }}",
        data("ca.crt")
    );
    let edge = edge_gateway(&front, &other).await;
    let r = Client::http1().get(edge.http, "/").await.expect("answer");
    assert_eq!(r.status.as_u16(), 502, "{r:?}");
    assert_eq!(bs[0].hits(), 0, "nothing reached the backend");
    quiescent(&edge).await;
    quiescent(&front).await;
}

/// Runs `scalegate check` on `text` saved as `name`; expects exit 1 and returns stderr.
fn check_fails(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_client_certificate_without_its_key_is_reported_at_the_tls_line() {
    let stderr = check_fails(
        "up.toml",
        "[[routes]]\nupstream = \"app\"\n[upstreams.app]\nendpoints = [\"127.0.0.1:9\"]\ntls = { cert = \"c.pem\" }\n",
    );
    assert!(
        stderr.contains("up.toml:5:7: tls: cert and key go together"),
        "{stderr}"
    );
}

#[test]
fn a_missing_certificate_is_reported_at_the_tls_line() {
    let stderr = check_fails(
        "tls.toml",
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:8443\"\ntls = { cert = \"nope.crt\", key = \"nope.key\" }\n",
    );
    assert!(
        stderr.contains("tls.toml:4:7: tls: cannot read \"nope.crt\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_rewritten_certificate_file_reloads_the_config_without_a_signal() {
    let bs = backends(1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(data("localhost.crt"), &cert).expect("cert");
    std::fs::copy(data("localhost.key"), &key).expect("key");
    let listener = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    );
    let gw = GatewayProcess::start_full(BIN, "", &listener, &app(&bs, "")).await;
    let reloaded = || async {
        gw.admin_get("/metrics")
            .await
            .contains("scalegate_config_reloads_total{result=\"ok\"} 1")
    };
    assert!(!reloaded().await);
    // A certificate rotation (cert-manager, a renewed Let's Encrypt chain) rewrites the files.
    std::fs::write(&cert, std::fs::read(data("localhost.crt")).expect("read")).expect("write");
    assert!(
        eventually(std::time::Duration::from_secs(10), reloaded).await,
        "the change reloaded the config"
    );
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let (r, _) = tls_get(gw.http, "/", &ca, true)
        .await
        .expect("TLS still served");
    assert_eq!(r.status.as_u16(), 200);
    quiescent(&gw).await;
}
