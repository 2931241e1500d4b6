//! One request to one endpoint on a fresh connection, for the gateway's own questions to an
//! upstream (health probes, fan-out authorization): TLS and HTTP/2 as the upstream uses them,
//! the connection closed afterwards, never a pooled one (these must not queue behind traffic).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::spec::UpstreamProtocol;
use crate::upstream::HttpEndpoint;

/// Sends `req` (path-only URI) to `ep` and returns the response status; None when the endpoint
/// cannot be reached or breaks the exchange. The caller bounds the whole call with a timeout;
/// `connect_timeout` bounds the connection.
pub async fn status(
    ep: &HttpEndpoint,
    mut req: Request<Empty<Bytes>>,
    connect_timeout: Duration,
) -> Option<StatusCode> {
    let io = TokioIo::new(crate::dial::dial(&ep.dial(), connect_timeout).await.ok()?);
    if !req.headers().contains_key(header::HOST) {
        let host = HeaderValue::try_from(ep.addr.as_str()).ok()?;
        req.headers_mut().insert(header::HOST, host);
    }
    let resp = match ep.protocol {
        UpstreamProtocol::Http1 => {
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
            let conn = tokio::spawn(conn);
            let r = tx.send_request(req).await;
            conn.abort();
            r
        }
        UpstreamProtocol::Http2 => {
            let scheme = if ep.tls.is_some() { "https" } else { "http" };
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            *req.uri_mut() = format!("{scheme}://{}{path}", ep.addr).parse().ok()?;
            let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .ok()?;
            let conn = tokio::spawn(conn);
            let r = tx.send_request(req).await;
            conn.abort();
            r
        }
    };
    resp.ok().map(|r| r.status())
}
