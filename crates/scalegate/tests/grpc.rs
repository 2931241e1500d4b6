//! gRPC through the gateway when the server dies (request path v2, issue 14): the client sees
//! UNAVAILABLE, which gRPC clients retry, as it would calling the server directly — not the
//! INTERNAL that a stream reset means to it.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Chunk = Result<Frame<Bytes>, Infallible>;

/// An h2c server that answers one streaming call with a 200 head and one message, then dies
/// (its connection is dropped mid-stream, as when the process is killed) or, when `dies` is
/// false, says nothing more for 30 s.
async fn grpc_server(dies: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
            let kill_tx = std::sync::Mutex::new(Some(kill_tx));
            let svc = hyper::service::service_fn(move |_req| {
                let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
                // Taken only to fire it: a sender dropped unused would end the connection too.
                let kill = if dies {
                    kill_tx.lock().ok().and_then(|mut k| k.take())
                } else {
                    None
                };
                tokio::spawn(async move {
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))))
                        .await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Some(k) = kill {
                        let _ = k.send(());
                    }
                    // Keep the stream open until the connection dies.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(tx);
                });
                let body = StreamBody::new(tokio_stream_from(rx));
                let resp = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body)
                    .expect("response");
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc);
            tokio::spawn(async move {
                tokio::select! {
                    _ = conn => {}
                    _ = kill_rx => {} // dropping the connection closes the socket at once
                }
            });
        }
    });
    addr
}

/// An mpsc receiver as a stream of frames.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
) -> impl futures_util::Stream<Item = Chunk> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// One streaming call through `gw`: the trailers and the data that came before them.
async fn stream_call(gw: &GatewayProcess) -> (http::HeaderMap, Bytes) {
    let call = http::Request::post(format!("http://{}/echo.Echo/Stream", gw.http))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .expect("request");
    let stream = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let resp = tx.send_request(call).await.expect("response head");
    assert_eq!(resp.status(), 200);
    let collected = resp
        .into_body()
        .collect()
        .await
        .expect("the stream ends with trailers, not a reset");
    let trailers = collected.trailers().cloned().expect("trailers");
    (trailers, collected.to_bytes())
}

#[tokio::test]
async fn a_grpc_server_dying_mid_stream_is_unavailable_to_the_client() {
    let addr = grpc_server(true).await;
    let gw = GatewayProcess::start(
        BIN,
        &routed(&format!("\"{addr}\""), "/", "", "protocol = \"h2c\""),
    )
    .await;
    let (trailers, data) = stream_call(&gw).await;
    assert_eq!(trailers["grpc-status"], "14", "UNAVAILABLE");
    assert_eq!(data, Bytes::from_static(b"\0\0\0\0\x02hi"));
    quiescent(&gw).await;
}

/// A probe's finding: a stream cut by the route's `read_timeout` (the gateway's own timer; the
/// server was fine) was reported as UNAVAILABLE "upstream connection broke", which misleads and
/// invites a retry of a call that may have had effects. It is DEADLINE_EXCEEDED, as a response
/// head that does not come in time is.
#[tokio::test]
async fn a_grpc_stream_cut_by_the_read_timeout_is_deadline_exceeded() {
    let addr = grpc_server(false).await;
    let gw = GatewayProcess::start(
        BIN,
        &routed(
            &format!("\"{addr}\""),
            "/",
            "read_timeout = \"500ms\"",
            "protocol = \"h2c\"",
        ),
    )
    .await;
    let (trailers, data) = stream_call(&gw).await;
    assert_eq!(
        trailers["grpc-status"], "4",
        "DEADLINE_EXCEEDED: {trailers:?}"
    );
    assert!(
        trailers["grpc-message"]
            .to_str()
            .unwrap_or_default()
            .contains("read_timeout"),
        "{trailers:?}"
    );
    assert_eq!(data, Bytes::from_static(b"\0\0\0\0\x02hi"));
    quiescent(&gw).await;
}

/// An h2c gRPC server that answers every call with one message and `grpc-status: 0` as a
/// trailer, declared nowhere (as gRPC servers do).
async fn grpc_ok_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = hyper::service::service_fn(|_req| async {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames: Vec<Chunk> = vec![
                    Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                    Ok(Frame::trailers(trailers)),
                ];
                let body = StreamBody::new(futures_util::stream::iter(frames));
                let resp = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body)
                    .expect("response");
                Ok::<_, Infallible>(resp)
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc);
            tokio::spawn(conn);
        }
    });
    addr
}

/// Found from outside: an HTTP/1.1 client that asked for trailers (`TE: trailers`) got a gRPC
/// answer from an h2c server without its `grpc-status`: hyper writes only the trailer fields a
/// response's `Trailer` header declares, and gRPC servers declare none.
#[tokio::test]
async fn an_http11_client_that_asks_for_trailers_gets_grpc_status() {
    let addr = grpc_ok_server().await;
    let cfg = routed(&format!("\"{addr}\""), "/", "", "protocol = \"h2c\"");
    let gw = GatewayProcess::start(BIN, &cfg).await;
    let (out, _) = raw(
        gw.http,
        b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nContent-Type: application/grpc\r\n\
          Content-Length: 0\r\nConnection: TE, close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\r\n0\r\ngrpc-status: 0\r\n\r\n"), "{out}");
    quiescent(&gw).await;
}
