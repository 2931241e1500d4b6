//! Response heads over the configured limits (request path v2, issue 14): a 502 that does not
//! count against the endpoint's health, and the limits are config keys.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers every request with `fields` extra header fields.
async fn many_headers_backend(fields: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
    for i in 0..fields {
        head.push_str(&format!("x-field-{i}: v\r\n"));
    }
    head.push_str("\r\nok");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let head = head.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if s.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The reproduction: 150 response header fields were "502 upstream connection broke",
/// counted as an endpoint failure (five ejected it), and nothing was logged.
#[tokio::test]
async fn a_response_head_over_the_limit_is_a_502_that_ejects_nothing() {
    let addr = many_headers_backend(150).await;
    let gw = GatewayProcess::start(
        BIN,
        &routed(
            &format!("\"{addr}\""),
            "/",
            "",
            "passive = { consecutive_failures = 2, max_ejection_percent = 100 }",
        ),
    )
    .await;
    let c = Client::http1();
    for _ in 0..6 {
        let r = c.get(gw.http, "/").await.expect("response");
        assert_eq!(r.status, 502);
        assert!(r.body.contains("response head too large"), "{}", r.body);
    }
    let upstreams = gw.admin_get("/upstreams").await;
    assert!(upstreams.contains("\"state\":\"available\""), "{upstreams}");
    assert!(
        gw.stderr().contains("max_response_headers"),
        "the refusal is logged"
    );
    quiescent(&gw).await;
}

/// Raised limits let the same answer through.
#[tokio::test]
async fn the_response_head_limits_are_config_keys() {
    let addr = many_headers_backend(150).await;
    let gw = GatewayProcess::start(
        BIN,
        &routed(
            &format!("\"{addr}\""),
            "/",
            "",
            "pool = { max_response_headers = 200, max_response_header_bytes = \"128KiB\" }",
        ),
    )
    .await;
    // A raw client: hyper's own client refuses more than 100 fields too.
    let (answer, _) = raw(
        gw.http,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-field-149: v"), "{answer}");
    quiescent(&gw).await;
}
