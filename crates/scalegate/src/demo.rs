//! `scalegate demo`: the gateway in front of three built-in backends with different latencies,
//! configured from generated TOML through the same validation as a user's file.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::run;

/// Backend name and added latency.
const BACKENDS: [(&str, u64); 3] = [("fast", 2), ("medium", 15), ("slow", 60)];

/// Starts the demo and blocks until Ctrl-C.
pub fn run(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let mut sockets = Vec::new();
    for _ in BACKENDS {
        let s = StdListener::bind("127.0.0.1:0").context("cannot bind a demo backend")?;
        s.set_nonblocking(true)?;
        sockets.push(s);
    }
    let addrs: Vec<String> = sockets
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let toml = demo_config(listen, admin, &addrs);
    let config = Config::parse(&toml).map_err(|p| anyhow::anyhow!("demo config invalid: {p:?}"))?;

    println!("scalegate demo: gateway on http://{listen}, admin on http://{admin}");
    println!("backends (p2c_ewma balancing, health-checked):");
    for ((name, ms), addr) in BACKENDS.iter().zip(&addrs) {
        println!("  {name:<7} {addr}  (+{ms} ms)");
    }
    println!(
        "\ntry:\n  curl -s http://{listen}/hello\n  for i in $(seq 20); do curl -s http://{listen}/; done | sort | uniq -c\n  curl -s http://{admin}/upstreams\n  curl -s http://{admin}/metrics | grep scalegate_http\n  curl -s http://{admin}/ready\n\nlive dashboard: open http://{admin}/dashboard in a browser\n\nCtrl-C to stop.\n"
    );

    let sidecar = Box::pin(async move {
        for ((name, ms), socket) in BACKENDS.into_iter().zip(sockets) {
            match TcpListener::from_std(socket) {
                Ok(l) => {
                    tokio::spawn(backend(l, name, Duration::from_millis(ms)));
                }
                Err(e) => tracing::error!(error = %e, "demo backend failed to start"),
            }
        }
    });
    run::run(config, None, Some(sidecar))
}

fn demo_config(listen: SocketAddr, admin: SocketAddr, backends: &[String]) -> String {
    let endpoints: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[admin]
listen = "{admin}"
[lifecycle]
drain_timeout = "5s"
[[listeners]]
name = "public"
bind = "{listen}"
[[routes]]
listener = "public"
match = {{ path_prefix = "/" }}
upstream = "demo"
[upstreams.demo]
balance = "p2c_ewma"
endpoints = [{}]
health = {{ path = "/health", interval = "1s", timeout = "500ms" }}
"#,
        endpoints.join(", ")
    )
}

async fn backend(listener: TcpListener, name: &'static str, latency: Duration) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(
                move |req: http::Request<hyper::body::Incoming>| async move {
                    if req.uri().path() != "/health" {
                        tokio::time::sleep(latency).await;
                    }
                    let body = format!(
                        "{{\"backend\":\"{name}\",\"path\":\"{}\",\"latency_ms\":{}}}\n",
                        req.uri().path().escape_default(),
                        latency.as_millis()
                    );
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = StatusCode::OK;
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(r)
                },
            );
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
