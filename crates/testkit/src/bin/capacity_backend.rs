//! A backend with fixed capacity for bench/overload.sh: at most CAPACITY requests are served at
//! once, each taking SERVICE_MS; the rest wait in an unbounded backlog, like an app server's
//! worker pool. Usage: capacity_backend PORT CAPACITY SERVICE_MS

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (port, capacity, service_ms) = match args[..] {
        [p, c, s] => (p, c, s),
        _ => {
            eprintln!("usage: capacity_backend PORT CAPACITY SERVICE_MS");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port as u16))
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let slots = Arc::new(Semaphore::new(capacity as usize));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let slots = slots.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let slots = slots.clone();
                    async move {
                        let _slot = slots.acquire().await;
                        tokio::time::sleep(Duration::from_millis(service_ms)).await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"ok\n",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
