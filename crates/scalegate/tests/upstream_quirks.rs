//! Upstreams that answer in ways HTTP/1.1 allows (or tolerates) but that must not reach the
//! client as they came: a close-delimited HTTP/1.0 body, repeated Content-Length fields, a
//! length on a 204, an upstream that stops reading the request body. Found from outside
//! (session 21) with raw-socket backends.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a raw upstream ends its connection after its answer.
#[derive(Clone, Copy)]
enum End {
    /// A clean close (FIN).
    Close,
    /// A reset (RST): what a crashed or killed backend leaves.
    Reset,
}

/// A raw upstream that reads a request head, writes `answer` and ends the connection so.
async fn raw_upstream(answer: &'static [u8], end: End) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                let _ = s.write_all(answer).await;
                let _ = s.flush().await;
                if let End::Reset = end {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = s.set_zero_linger();
                }
            });
        }
    });
    addr
}

async fn read_head(s: &mut TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// A gateway whose failures eject nothing, in front of `addr`.
async fn gateway_to(addr: SocketAddr, listener: &str, route: &str) -> GatewayProcess {
    let upstream = "passive = { consecutive_failures = 0 }";
    GatewayProcess::start_full(
        BIN,
        "",
        listener,
        &routed(&format!("\"{addr}\""), "/", route, upstream),
    )
    .await
}

/// An HTTP/1.0 upstream's body has no length: it ends when the connection closes, so a reset
/// cuts it without a trace on the wire the gateway writes unless that wire has its own framing.
/// The gateway sends its own version (RFC 9110 §6.2), HTTP/1.1, and chunks the body: a cut one
/// lacks its last chunk. It answered `HTTP/1.0 200` close-delimited, and a body cut by a reset
/// looked whole to clients, caches and the access log.
#[tokio::test]
async fn a_cut_http10_body_does_not_look_whole() {
    let head = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"items\":[1,2,3";
    let cut = raw_upstream(head.as_bytes(), End::Reset).await;
    let gw = gateway_to(cut, "", "").await;
    let (out, _) = raw(gw.http, GET).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{out}"
    );
    assert!(out.contains("{\"items\":[1,2,3"), "{out}");
    assert!(
        !out.ends_with("0\r\n\r\n"),
        "a cut body ended as whole: {out}"
    );
    quiescent(&gw).await;

    // Closed cleanly, the same body is whole, and ends so.
    let whole = raw_upstream(head.as_bytes(), End::Close).await;
    let gw = gateway_to(whole, "", "").await;
    let (out, _) = raw(gw.http, GET).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("0\r\n\r\n"), "{out}");
    quiescent(&gw).await;
}

/// Repeated Content-Length fields of one value, or a list of one value, are accepted from an
/// HTTP/1.1 upstream (RFC 9112 §6.3), and a 204 with a length is tolerated; passed on as they
/// came, each made every HTTP/2 client refuse the response as malformed. The client gets one
/// Content-Length, and none on a 204.
#[tokio::test]
async fn repeated_or_stray_content_lengths_reach_clients_as_one_or_none() {
    let cases: [(&'static [u8], u16, &str, &str); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            200,
            "abc",
            "3",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
            200,
            "abc",
            "3",
        ),
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 30\r\n\r\n",
            204,
            "",
            "",
        ),
    ];
    for (answer, status, body, length) in cases {
        let addr = raw_upstream(answer, End::Close).await;
        let gw = gateway_to(addr, "", "").await;
        let r = Client::h2c()
            .get(gw.http, "/x")
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(answer)));
        assert_eq!(r.status.as_u16(), status);
        assert_eq!(r.body, body);
        let lengths: Vec<_> = r.headers.get_all("content-length").iter().collect();
        match length {
            "" => assert!(lengths.is_empty(), "{lengths:?}"),
            n => assert_eq!(lengths, [n], "{}", String::from_utf8_lossy(answer)),
        }
        let r = Client::http1().get(gw.http, "/x").await.expect("HTTP/1.1");
        assert_eq!((r.status.as_u16(), r.body.as_str()), (status, body));
        let lengths: Vec<_> = r.headers.get_all("content-length").iter().collect();
        assert!(lengths.len() <= 1, "{lengths:?}");
        quiescent(&gw).await;
    }
}

/// An upstream that reads a request head and then neither reads the body nor answers (a
/// deadlocked or stopped backend): a body larger than the sockets' buffers stalls, and the
/// client's body timeout is only watched while the body is read. The request waited, past
/// every timeout, until the upstream closed. It now ends with 504 once the client's time for
/// the body and the route timeout have passed.
#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await {
                    tokio::time::sleep(Duration::from_secs(300)).await;
                }
                drop(s);
            });
        }
    });
    let gw = gateway_to(addr, "body_timeout = \"1s\"", "timeout = \"1s\"").await;
    let s = TcpStream::connect(gw.http).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let size = 9 << 20;
    let upload = tokio::spawn(async move {
        let head = format!("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&vec![b'a'; size]).await;
        wr
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer: the request still waits");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    upload.abort();
    quiescent(&gw).await;
}

/// An upstream that answers a WebSocket upgrade with `101` and `Upgrade: foo`: the client asked
/// for `websocket` and was handed a tunnel speaking something else. It is now a 502.
#[tokio::test]
async fn a_switch_to_a_protocol_the_client_did_not_ask_for_is_a_502() {
    let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n";
    let addr = raw_upstream(answer, End::Close).await;
    let gw = gateway_to(addr, "", "").await;
    let (out, _) = raw(
        gw.http,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    quiescent(&gw).await;
}

/// HTTP/2 servers refuse streams they will not process when they shed load or shut down
/// gracefully (RFC 9113 §8.7: RST_STREAM with REFUSED_STREAM, or a GOAWAY whose last stream id
/// is below the stream); such a request may go again, whatever its method. It was answered like
/// a reset: a POST never retried, and the refusal counted against the endpoint (one ejected it).
#[tokio::test]
async fn a_stream_an_h2_upstream_refused_unprocessed_is_retried_even_for_a_post() {
    use scalegate_testkit::refusing_h2::{self, Refusal};
    let retry = "retry = { attempts = 2, backoff = \"1ms\", budget_percent = 100, min_retries_per_second = 100 }";
    for how in [Refusal::Reset, Refusal::GoAway] {
        let up = refusing_h2::start(how, 2).await;
        let cfg = format!(
            "[[routes]]\nmatch = {{ path_prefix = \"/again\" }}\nupstream = \"app\"\n{retry}\n\n\
             [[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n\
             [upstreams.app]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n\
             passive = {{ consecutive_failures = 1, max_ejection_percent = 100 }}\n",
            up.addr
        );
        let gw = GatewayProcess::start(BIN, &cfg).await;
        let c = Client::http1();
        // No retries on this route: the refusal is the answer, and it blames no endpoint.
        let once = c.post_with(gw.http, "/once", &[]).await.expect("response");
        assert_eq!(once.status, 502, "{how:?}");
        let view = gw.admin_get("/upstreams").await;
        assert!(!view.contains("\"ejected\""), "{how:?}: {view}");
        // With retries, a POST refused unprocessed goes again.
        let again = c.post_with(gw.http, "/again", &[]).await.expect("response");
        assert_eq!(again.status, 200, "{how:?}");
        assert_eq!(
            up.answered.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{how:?}"
        );
        quiescent(&gw).await;
    }
}

/// A regression hunt's finding: a server that answered a head and then reset the stream with
/// REFUSED_STREAM (it lies: it processed the request) had a POST retried, so the backend
/// processed it twice. A refusal counts only before any response head.
#[tokio::test]
async fn a_refusal_after_the_response_head_is_not_retried() {
    use scalegate_testkit::refusing_h2::{self, Refusal};
    let up = refusing_h2::start(Refusal::AfterHead, 1).await;
    let retry = "retry = { attempts = 2, backoff = \"1ms\", budget_percent = 100, min_retries_per_second = 100 }";
    let cfg = routed(
        &format!("\"{}\"", up.addr),
        "/",
        retry,
        "protocol = \"h2c\"\npassive = { consecutive_failures = 0 }",
    );
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let r = Client::http1().post_with(gw.http, "/once", &[]).await;
    assert!(r.map_or(true, |r| r.status == 502), "not answered whole");
    assert_eq!(
        up.received.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "sent once"
    );
    quiescent(&gw).await;
}
