//! Protocol upgrades (WebSocket) through the gateway against a real upstream socket: the 101
//! and the bytes after it pass both ways, a refused upgrade comes back as a normal response,
//! and plain requests keep having their Upgrade header removed.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that reads a request head and, when it asks for `Upgrade: websocket`, answers
/// 101 (accepting the request's key) and then echoes every byte upper-cased; anything else gets 426 with the head it saw as
/// the body.
async fn upgrade_upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (head, mut rest) = read_head(&mut s).await;
                let lower = head.to_ascii_lowercase();
                if !lower.contains("upgrade: websocket") || !lower.contains("connection: upgrade") {
                    let resp = format!(
                        "HTTP/1.1 426 Upgrade Required\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
                        head.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    return;
                }
                let key = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("sec-websocket-key:")
                            .then(|| l[18..].trim().to_string())
                    })
                    .unwrap_or_default();
                let accept =
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let mut buf = [0u8; 1024];
                loop {
                    if !rest.is_empty() {
                        let up = rest.to_ascii_uppercase();
                        if s.write_all(&up).await.is_err() {
                            return;
                        }
                        rest.clear();
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => rest.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// Reads up to the end of an HTTP head; returns it and whatever bytes followed.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), Vec::new()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn gateway_to(upstream: std::net::SocketAddr) -> GatewayProcess {
    GatewayProcess::start(
        BIN,
        &format!(
            "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"ws\"\n\n\
             [upstreams.ws]\nendpoints = [\"{upstream}\"]\n"
        ),
    )
    .await
}

async fn read_exactly<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut out))
        .await
        .expect("bytes in time")
        .expect("read");
    out
}

/// Upgrades on `s`, checks the 101 and that bytes flow both ways (including bytes sent in the
/// same write as the request head).
async fn upgrade_and_echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    // Bytes right behind the request head (in the same write) must not be lost.
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\nearly",
    )
    .await
    .expect("write");
    let (head, mut rest) = read_head(s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "the upstream's answer to the client's own key: {head}"
    );
    if rest.len() < 5 {
        let more = read_exactly(s, 5 - rest.len()).await;
        rest.extend_from_slice(&more);
    }
    assert_eq!(rest, b"EARLY");
    for msg in ["hello", "second frame", "x"] {
        s.write_all(msg.as_bytes()).await.expect("write");
        let got = read_exactly(s, msg.len()).await;
        assert_eq!(got, msg.to_ascii_uppercase().as_bytes());
    }
}

#[tokio::test]
async fn websocket_upgrades_pass_through_and_carry_bytes_both_ways() {
    let up = upgrade_upstream().await;
    let gw = gateway_to(up).await;
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    upgrade_and_echo(&mut s).await;
    // Summed over routes (requests refused before routing have a row of their own).
    let open = |m: String| {
        let rows = m
            .lines()
            .filter(|l| l.starts_with("scalegate_http_tunnels_open{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok());
        Some(rows.sum::<i64>().to_string())
    };
    assert_eq!(open(gw.admin_get("/metrics").await).as_deref(), Some("1"));
    // Closing the client side ends the tunnel; the gateway keeps serving.
    drop(s);
    let closed = eventually(Duration::from_secs(5), || async {
        open(gw.admin_get("/metrics").await).as_deref() == Some("0")
    })
    .await;
    assert!(closed, "the tunnel gauge never went back to 0");
    let r = Client::http1()
        .get(gw.http, "/plain")
        .await
        .expect("plain request after a tunnel");
    assert_eq!(r.status.as_u16(), 426);
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_refused_upgrade_and_plain_requests_are_ordinary_responses() {
    let up = upgrade_upstream().await;
    let gw = gateway_to(up).await;
    // Upgrade without the Connection token: hop-by-hop, removed; the upstream refuses.
    let r = Client::http1()
        .get_with(gw.http, "/x", &[("upgrade", "websocket")])
        .await
        .expect("response");
    assert_eq!(r.status.as_u16(), 426);
    assert!(
        !r.body.to_ascii_lowercase().contains("upgrade:"),
        "{}",
        r.body
    );
    // Asking for a protocol the upstream does not speak: its refusal comes back.
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    s.write_all(b"GET /x HTTP/1.1\r\nHost: e\r\nConnection: upgrade\r\nUpgrade: h2c-ish\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    drop(s);
    quiescent(&gw).await;
}

#[tokio::test]
async fn upgrades_work_on_tls_listeners_too() {
    let up = upgrade_upstream().await;
    let data = |f: &str| format!("{}/tests/data/{f}", env!("CARGO_MANIFEST_DIR"));
    let listener = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        data("localhost.crt"),
        data("localhost.key")
    );
    let gw = GatewayProcess::start_full(
        BIN,
        "",
        &listener,
        &format!(
            "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"ws\"\n\n\
             [upstreams.ws]\nendpoints = [\"{up}\"]\n"
        ),
    )
    .await;
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let mut s = scalegate_testkit::client::tls_connect(gw.http, &ca, b"http/1.1")
        .await
        .expect("TLS");
    upgrade_and_echo(&mut s).await;
    drop(s);
    quiescent(&gw).await;
}

#[tokio::test]
async fn sigterm_closes_open_tunnels_and_exits_0() {
    let up = upgrade_upstream().await;
    let mut gw = gateway_to(up).await;
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    upgrade_and_echo(&mut s).await;
    gw.signal(libc::SIGTERM);
    // The tunnel is closed (EOF), not left to the drain timeout.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the tunnel is closed on shutdown");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("exited");
    assert_eq!(status.code(), Some(0));
}

/// A probe's finding: on SIGTERM a WebSocket over HTTP/2 (and one over TLS) was not closed with
/// the plain HTTP/1.1 ones but kept until the 30 s drain timeout ran out, holding the exit.
#[tokio::test]
async fn sigterm_closes_websockets_over_http2_too() {
    use hyper_util::rt::TokioIo;
    use scalegate_testkit::client::{extended_connect, h2c};

    let up = upgrade_upstream().await;
    let mut gw = gateway_to(up).await;
    let (mut tx, _) = h2c(gw.http, "/plain").await;
    let resp = extended_connect(&mut tx, gw.http, "/chat", "websocket").await;
    assert_eq!(resp.status(), 200);
    let mut ws = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgraded stream"));
    ws.write_all(b"hi").await.expect("write");
    assert_eq!(read_exactly(&mut ws, 2).await, b"HI");
    gw.signal(libc::SIGTERM);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut buf))
        .await
        .expect("the tunnel is closed on shutdown, not after the drain timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("exited");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn websocket_over_http2_becomes_an_http11_upgrade_upstream() {
    use hyper_util::rt::TokioIo;
    use scalegate_testkit::client::{extended_connect, h2c};

    let up = upgrade_upstream().await;
    let gw = gateway_to(up).await;
    let (mut tx, plain) = h2c(gw.http, "/plain").await;
    assert_eq!(plain, 426, "the upstream saw a plain GET");
    let resp = extended_connect(&mut tx, gw.http, "/chat", "websocket").await;
    assert_eq!(
        resp.status(),
        200,
        "RFC 8441: 200 for the accepted WebSocket"
    );
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let mut ws = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgraded stream"));
    for msg in ["over h2", "and back"] {
        ws.write_all(msg.as_bytes()).await.expect("write");
        let got = read_exactly(&mut ws, msg.len()).await;
        assert_eq!(got, msg.to_ascii_uppercase().as_bytes());
    }

    // Another protocol cannot be bootstrapped.
    let r = extended_connect(&mut tx, gw.http, "/x", "connect-udp").await;
    assert_eq!(r.status(), 400);
    drop((ws, tx));
    quiescent(&gw).await;
}

/// An upstream that answers every request with the status its path names (`/204` → 204) and
/// no upgrade.
async fn status_upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (head, _) = read_head(&mut s).await;
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|p| p.trim_start_matches('/').parse().ok())
                    .unwrap_or(500);
                let body = if status == 204 { "" } else { "ok" };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// A probe's finding (session 24): an HTTP/2 WebSocket (extended CONNECT) whose upstream
/// answered 200 or 201 without switching protocols ended in RST_STREAM(INTERNAL_ERROR), and a
/// 204 was passed on: RFC 9113 §8.5 makes any 2xx to a CONNECT an open tunnel, so the client
/// was told it had a WebSocket the upstream never agreed to. A 2xx that is not a 101 is now a
/// 502, as a wrong Sec-WebSocket-Accept is; other answers still come back as they are.
#[tokio::test]
async fn an_h2_websocket_answered_2xx_without_an_upgrade_is_a_bad_gateway() {
    use scalegate_testkit::client::{extended_connect, h2c};

    let up = status_upstream().await;
    let gw = gateway_to(up).await;
    let (mut tx, _) = h2c(gw.http, "/200").await;
    for (path, want) in [("/200", 502), ("/201", 502), ("/204", 502), ("/404", 404)] {
        let resp = extended_connect(&mut tx, gw.http, path, "websocket").await;
        assert_eq!(resp.status(), want, "{path}");
    }
    drop(tx);
    quiescent(&gw).await;
}

/// Found from outside: a tunnel whose upstream answered 101 and then never read stayed open
/// for ever after the client had gone (`tunnels_open` still 1 fourteen minutes later): the copy
/// waited on its write to the upstream and never looked at the client again. A side that
/// refuses writes for the listener's `idle_timeout` now ends the tunnel.
#[tokio::test]
async fn a_tunnel_to_an_upstream_that_stops_reading_is_closed() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = l.local_addr().expect("addr");
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = read_head(&mut s).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\n\r\n",
                )
                .await;
            // Never reads again, never closes.
            keep.lock().await.push(s);
        }
    });
    let gw = GatewayProcess::start_full(
        BIN,
        "",
        "idle_timeout = \"2s\"",
        &format!(
            "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"ws\"\n\n\
             [upstreams.ws]\nendpoints = [\"{upstream}\"]\n"
        ),
    )
    .await;
    let mut c = TcpStream::connect(gw.http).await.expect("connect");
    c.write_all(WS_UPGRADE).await.expect("upgrade");
    let (head, _) = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Write until the buffers on the way are full, then leave.
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..200 {
        match tokio::time::timeout(Duration::from_millis(200), c.write_all(&chunk)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    drop(c);
    quiescent(&gw).await;
    drop(held);
}

/// A WebSocket upstream (tungstenite) that echoes messages and sends the close code it gets
/// from the gateway to `closed`.
async fn websocket_upstream(
    closed: tokio::sync::mpsc::UnboundedSender<Option<u16>>,
) -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Close(frame) = &m {
                        let _ = closed.send(frame.as_ref().map(|f| u16::from(f.code)));
                        return;
                    }
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
                let _ = closed.send(None);
            });
        }
    });
    addr
}

/// Carried from session 18, done in session 20: a WebSocket cut by SIGTERM ended with no
/// close frame, so client libraries reported an abnormal closure (1006). Each peer now gets a
/// close frame with 1001 ("going away") first.
#[tokio::test]
async fn sigterm_says_going_away_to_both_ends_of_a_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let up = websocket_upstream(tx).await;
    let mut gw = gateway_to(up).await;
    let s = TcpStream::connect(gw.http).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/chat", gw.http), s)
        .await
        .expect("handshake");
    ws.send(Message::text("hello")).await.expect("send");
    let echo = ws.next().await.expect("a message").expect("ok");
    assert_eq!(echo, Message::text("hello"));
    gw.signal(libc::SIGTERM);
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("closed on shutdown");
    match got {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame with 1001, got {other:?}"),
    }
    let upstream_got = tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the upstream heard");
    assert_eq!(upstream_got, Some(Some(1001)));
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("exited");
    assert_eq!(status.code(), Some(0));
}
