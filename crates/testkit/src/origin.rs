//! A scriptable origin server for cache tests: the test supplies a function from request head
//! (and how many times that path was asked) to response; the origin counts requests per path
//! and records the last request head of each.
//!
//! A response header `x-origin-delay-ms: N` makes the origin wait N ms before answering (the
//! header itself is not sent).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// The test's answer function: request head and the 1-based count of requests for this path.
pub type Handler = dyn Fn(&http::request::Parts, usize) -> Response<Bytes> + Send + Sync;

#[derive(Default)]
struct Seen {
    hits: HashMap<String, usize>,
    last: HashMap<String, HeaderMap>,
}

/// A running origin; stops on [`Origin::stop`] or drop.
pub struct Origin {
    /// Address it listens on.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("addr", &self.addr).finish()
    }
}

impl Origin {
    /// Starts on a free loopback port.
    pub async fn start(
        h: impl Fn(&http::request::Parts, usize) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        Self::serve(listener, Arc::new(h))
    }

    /// Starts on a given address (to bring a stopped origin back).
    pub async fn start_on(
        addr: SocketAddr,
        h: impl Fn(&http::request::Parts, usize) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Origin {
        for _ in 0..50 {
            if let Ok(l) = TcpListener::bind(addr).await {
                return Self::serve(l, Arc::new(h));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("rebind {addr}")
    }

    fn serve(listener: TcpListener, handler: Arc<Handler>) -> Origin {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (s, t) = (seen.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s2, h2) = (s.clone(), handler.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (s3, h3) = (s2.clone(), h2.clone());
                        async move { Ok::<_, Infallible>(answer(&s3, &*h3, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                if let Ok(mut t) = t.lock() {
                    t.push(conn.abort_handle());
                }
            }
        });
        if let Ok(mut t) = tasks.lock() {
            t.push(accept.abort_handle());
        }
        Origin { addr, seen, tasks }
    }

    /// Requests seen for a path (query excluded).
    pub fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .map_or(0, |s| s.hits.get(path).copied().unwrap_or(0))
    }

    /// The last request head seen for a path.
    pub fn last(&self, path: &str) -> Option<HeaderMap> {
        self.seen.lock().ok()?.last.get(path).cloned()
    }

    /// Stops listening and closes every connection.
    pub fn stop(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(seen: &Mutex<Seen>, h: &Handler, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, _body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let n = {
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        let n = s.hits.entry(path.clone()).or_insert(0);
        *n += 1;
        let n = *n;
        s.last.insert(path, parts.headers.clone());
        n
    };
    let resp = h(&parts, n);
    let (mut head, body) = resp.into_parts();
    if let Some(ms) = head
        .headers
        .remove("x-origin-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Response::from_parts(head, Full::new(body))
}
