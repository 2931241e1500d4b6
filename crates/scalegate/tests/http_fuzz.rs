//! Mangled HTTP/1.1 requests: whatever a client sends, the gateway answers with a 2xx from the
//! upstream or a 4xx of its own (never a 5xx that blames the upstream), ejects no endpoint, and
//! keeps serving.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BASES: &[&[u8]] = &[
    b"POST /p?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n",
];

const INSERTS: &[&[u8]] = &[
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 7\r\n",
    b"Host: y\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    b" folded\r\n",
    b"\r\n",
    b"\0",
    b"\n",
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"HTTP/2.0",
];

/// A good request with one to three random edits.
fn mangled(r: &mut Rng) -> Vec<u8> {
    let mut req = BASES[r.below(BASES.len())].to_vec();
    for _ in 0..1 + r.below(3) {
        let at = r.below(req.len());
        match r.below(5) {
            0 => req[at] = r.next() as u8,
            1 => req.insert(at, r.next() as u8),
            2 => {
                let end = (at + 1 + r.below(8)).min(req.len());
                req.drain(at..end);
            }
            3 => {
                let insert = INSERTS[r.below(INSERTS.len())];
                req.splice(at..at, insert.iter().copied());
            }
            _ => req.truncate(at),
        }
        if req.is_empty() {
            req.push(b'G');
        }
    }
    req
}

/// Sends one request, half-closes, and returns the status of the first response (None when the
/// gateway closed without one).
async fn status_of(gw: &GatewayProcess, req: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(gw.http).await.ok()?;
    s.write_all(req).await.ok()?;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let line = out.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

#[tokio::test]
async fn mangled_requests_get_4xx_never_an_upstream_5xx() {
    let bs = backends(1).await;
    // One failure counted against the endpoint would eject it.
    let gw = gateway(&bs, "passive = { consecutive_failures = 1 }").await;
    let mut r = Rng(0x5CA1_E6A7_E000_0001);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let req = mangled(&mut r);
        let status = status_of(&gw, &req).await;
        if let Some(s) = status {
            assert!(s < 500, "{s} for {:?}", String::from_utf8_lossy(&req));
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert!(
        statuses.len() > 2,
        "the edits reach several outcomes: {statuses:?}"
    );
    let view = gw.admin_get("/upstreams").await;
    assert!(!view.contains("\"ejected\""), "{view}");
    let ok = Client::http1().get(gw.http, "/").await.expect("response");
    assert_eq!(ok.status, 200, "still serving");
    quiescent(&gw).await;
}
