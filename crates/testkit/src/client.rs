//! Test clients: pooled HTTP/1.1, HTTP/2 with prior knowledge, and raw TCP.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
    /// Body as sent.
    pub raw: Bytes,
    /// Trailer fields, if any came.
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    /// A header's value as text ("" if absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A keep-alive HTTP client.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Legacy<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// HTTP/1.1 with keep-alive.
    pub fn http1() -> Self {
        Client {
            inner: Legacy::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 with prior knowledge (h2c).
    pub fn h2c() -> Self {
        Client {
            inner: Legacy::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// Sends a request; Err on transport failure.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Resp, String> {
        let resp = tokio::time::timeout(Duration::from_secs(20), self.inner.request(req))
            .await
            .map_err(|_| "client timeout".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        read_whole(resp).await
    }

    /// GET `http://addr{path}` with extra headers.
    pub async fn get_with(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        self.bodiless(http::Method::GET, addr, path, headers).await
    }

    /// POST an empty body to `http://addr{path}` with extra headers.
    pub async fn post_with(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        self.bodiless(http::Method::POST, addr, path, headers).await
    }

    async fn bodiless(
        &self,
        method: http::Method,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?)
            .await
    }

    /// Any bodiless method to `http://addr{path}` with extra headers.
    pub async fn request(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        let m = http::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        self.bodiless(m, addr, path, headers).await
    }

    /// GET `http://addr{path}`.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Resp, String> {
        self.get_with(addr, path, &[]).await
    }
}

/// Writes `bytes` on a fresh connection and reads until the server closes it (or 10 s).
/// Returns what was read and whether the server closed the connection.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (String::new(), false);
    };
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// A TLS connection to `addr` (server name "localhost") trusting `ca_pem`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &[u8],
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tls_over(tcp, ca_pem, alpn).await
}

/// [`tls_connect`] over a connection made by the caller (a small receive buffer, say).
pub async fn tls_over(
    tcp: TcpStream,
    ca_pem: &[u8],
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// GET `https://localhost{path}` on `addr`, trusting `ca_pem`, offering only h2 (`h2 = true`) or
/// only http/1.1 by ALPN. Returns the response and the HTTP version used.
pub async fn tls_get(
    addr: SocketAddr,
    path: &str,
    ca_pem: &[u8],
    h2: bool,
) -> Result<(Resp, http::Version), String> {
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let tls = tls_connect(addr, ca_pem, alpn).await?;
    let io = hyper_util::rt::TokioIo::new(tls);
    let resp = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(format!("https://localhost{path}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        tx.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        tx.send_request(req).await.map_err(|e| e.to_string())?
    };
    let version = resp.version();
    Ok((read_whole(resp).await?, version))
}

/// Reads a response's body and trailers to the end.
async fn read_whole<B>(resp: http::Response<B>) -> Result<Resp, String>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.map_err(|e| format!("{e:?}"))?;
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        raw: body,
        trailers,
    })
}

/// The sending half of an h2c connection (HTTP/2 with prior knowledge).
pub type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>;

/// Opens an h2c connection to `addr` and sends one GET of `warm_path` first, so the server's
/// SETTINGS (extended CONNECT needs them) have arrived; returns the sender and that GET's status.
pub async fn h2c(addr: SocketAddr, warm_path: &str) -> (H2Sender, StatusCode) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let warm = Request::get(format!("http://{addr}{warm_path}"))
        .body(http_body_util::Empty::new())
        .expect("request");
    let status = tx
        .send_request(warm)
        .await
        .expect("warm-up request")
        .status();
    (tx, status)
}

/// Sends an RFC 8441 extended CONNECT for `protocol` (WebSocket version 13) to `path`.
pub async fn extended_connect(
    tx: &mut H2Sender,
    addr: SocketAddr,
    path: &str,
    protocol: &'static str,
) -> http::Response<hyper::body::Incoming> {
    let mut connect = Request::connect(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::new())
        .expect("request");
    connect
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    tx.send_request(connect).await.expect("extended CONNECT")
}
