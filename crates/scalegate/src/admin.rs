//! The admin listener (loopback by default): `/health`, `/ready`, `/metrics` (Prometheus text) and
//! `/upstreams` (JSON view of every upstream and endpoint).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use scalegate_core::endpoint::Availability;
use scalegate_http::{Gateway, clock};
use serde_json::json;
use tokio::net::TcpListener;

use crate::admin_queue::DeadCall;

struct Admin {
    gw: Arc<Gateway>,
    registry: Registry,
    token: Arc<AdminToken>,
}

/// The admin token in force: set at start, replaced by each reload (a rotated token works at
/// once and the old one stops working).
pub type AdminToken = arc_swap::ArcSwapOption<String>;

/// Binds the admin listener and serves it on the current runtime; returns the bound address.
pub async fn start(
    addr: SocketAddr,
    gw: Arc<Gateway>,
    token: Arc<AdminToken>,
    pg: Option<Arc<scalegate_pg::Pooler>>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let mut registry = Registry::default();
    gw.metrics.register(&mut registry);
    registry.register_collector(Box::new(crate::fleet_metrics::FleetMetrics(gw.clone())));
    registry.register_collector(Box::new(scalegate_http::live_metrics::LiveMetrics(
        gw.clone(),
    )));
    if let Some(p) = pg {
        registry.register_collector(Box::new(scalegate_pg::metrics::PoolerMetrics(p)));
    }
    let admin = Arc::new(Admin {
        gw,
        registry,
        token,
    });
    let places = Arc::new(crate::admin_places::Places::default());
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: try again shortly rather than spin.
                    tracing::debug!(error = %e, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(place) = places.take(peer.ip()) else {
                // Over a cap: closed at once (the admin port shares the process's file
                // descriptors with the data path; admin_places.rs).
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.serve(req, peer).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                drop(place);
            });
        }
    });
    Ok(local)
}

/// How long an admin client has to send a request head, idle keep-alive included: slowloris
/// clients are closed as on the public listeners.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What another host may read without the token: liveness, readiness, metrics, the upstreams'
/// view and the dashboard that shows them (what `admin.expose_without_token` promises). The
/// other views name request URLs (`/cache`), queued jobs' methods and paths (`/queue`) and
/// operators' switches; from another host they need the token, as changes do.
fn open_to_anyone(path: &str) -> bool {
    matches!(
        path,
        "/" | "/health" | "/ready" | "/metrics" | "/upstreams" | "/dashboard"
    )
}

pub(crate) fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

pub(crate) const JSON: &str = "application/json";
/// The live dashboard: one self-contained page that polls `/upstreams` and `/metrics`.
const DASHBOARD: &str = include_str!("dashboard.html");
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

impl Admin {
    /// The calls that wait on something (a body to read, the job store); everything else is
    /// `handle`.
    async fn serve(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        // A dual-stack listener ([::]) sees local IPv4 clients as ::ffff:127.0.0.1.
        if !peer.ip().to_canonical().is_loopback()
            && !open_to_anyone(req.uri().path())
            && let Some(refusal) = self.refuse(&req)
        {
            return refusal;
        }
        if req.method() == Method::POST && req.uri().path().starts_with("/fanout/") {
            return match self.refuse(&req) {
                None => crate::admin_fanout::publish(&self.gw, req).await,
                Some(refusal) => refusal,
            };
        }
        if req.method() == Method::POST && req.uri().path() == "/cache/purge" {
            return match self.refuse(&req) {
                None => crate::admin_cache::purge(&self.gw, req.uri()).await,
                Some(refusal) => refusal,
            };
        }
        if let Some(call) = DeadCall::parse(req.method(), req.uri().path()) {
            if call.changes()
                && let Some(refusal) = self.refuse(&req)
            {
                return refusal;
            }
            return crate::admin_queue::dead(&self.gw, call, req.uri()).await;
        }
        self.handle(req)
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() == Method::POST && req.uri().path().starts_with("/switches/") {
            return match self.refuse(&req) {
                None => crate::switches::apply(&self.gw, req.uri()),
                Some(refusal) => refusal,
            };
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "405: use GET\n");
        }
        match req.uri().path() {
            "/health" => reply(StatusCode::OK, TEXT, "ok\n"),
            "/ready" => match self.gw.readiness() {
                Ok(()) => reply(StatusCode::OK, JSON, r#"{"ready":true}"#.to_string() + "\n"),
                Err(reasons) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    JSON,
                    json!({ "ready": false, "not_ready": reasons }).to_string() + "\n",
                ),
            },
            "/metrics" => self.metrics(),
            "/cache" => reply(
                StatusCode::OK,
                JSON,
                crate::admin_cache::view(&self.gw).to_string() + "\n",
            ),
            "/upstreams" => reply(StatusCode::OK, JSON, self.upstreams().to_string() + "\n"),
            "/fanout" => reply(
                StatusCode::OK,
                JSON,
                crate::admin_fanout::view(&self.gw).to_string() + "\n",
            ),
            "/queue" => reply(
                StatusCode::OK,
                JSON,
                crate::admin_queue::view(&self.gw).to_string() + "\n",
            ),
            "/switches" => reply(
                StatusCode::OK,
                JSON,
                crate::switches::view(&self.gw).to_string() + "\n",
            ),
            "/dashboard" => reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
            "/" => reply(
                StatusCode::OK,
                TEXT,
                "scalegate admin: /dashboard /health /ready /metrics /upstreams /switches /cache /fanout /queue\n",
            ),
            _ => reply(StatusCode::NOT_FOUND, TEXT, "404: no such admin endpoint\n"),
        }
    }

    /// Runtime switches need `Authorization: Bearer <admin.token>`; without a configured token
    /// they are off.
    /// The refusal, if the request may not change switches.
    fn refuse(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let token = self.token.load();
        let Some(token) = token.as_deref() else {
            return Some(reply(
                StatusCode::FORBIDDEN,
                TEXT,
                "403: admin.token is not set: runtime switches are off, and other hosts may read only /health, /ready, /metrics, /upstreams and /dashboard\n",
            ));
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .unwrap_or("");
        // Compare in constant time for equal lengths.
        let same = given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            None
        } else {
            Some(reply(
                StatusCode::UNAUTHORIZED,
                TEXT,
                "401: bad or missing bearer token\n",
            ))
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let now = clock::now();
        for u in &self.gw.snapshot().upstreams {
            for e in &u.endpoints {
                e.metrics
                    .available
                    .set(i64::from(e.state.is_available(now)));
            }
        }
        crate::admin_cache::refresh_metrics(&self.gw);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "500: cannot encode metrics\n",
            );
        }
        reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            out,
        )
    }

    fn upstreams(&self) -> serde_json::Value {
        let now = clock::now();
        let snap = self.gw.snapshot();
        let ups: Vec<_> = snap
            .upstreams
            .iter()
            .map(|u| {
                let eps: Vec<_> = u
                    .spec
                    .endpoints
                    .iter()
                    .zip(&u.endpoints)
                    .map(|(spec, e)| {
                        let (state, ejected_ms) = match e.state.availability(now) {
                            Availability::Available => ("available", 0),
                            Availability::HalfOpen => ("half_open", 0),
                            Availability::Unhealthy => ("unhealthy", 0),
                            Availability::Ejected(until) => ("ejected", until.since(now).as_millis()),
                            Availability::Draining => ("draining", 0),
                        };
                        json!({
                            "addr": e.addr,
                            "weight": spec.weight,
                            "zone": spec.zone,
                            "state": state,
                            "ejected_for_ms": ejected_ms,
                            "in_flight": e.state.in_flight(),
                            // What the balancer reads now (decayed toward the fleet's typical
                            // latency while unrefreshed), and the value the last sample left.
                            "latency_ewma_ms": e.state.latency_estimate_now(now) / 1e6,
                            "latency_last_sample_ms": e.state.latency_estimate_ns() / 1e6,
                            "consecutive_failures": e.state.consecutive_failures(),
                            "slow_start_factor": e.state.slow_start_factor(now, u.spec.slow_start),
                            "connections": { "active": e.metrics.pool.active.get(), "idle": e.metrics.pool.idle.get() },
                        })
                    })
                    .collect();
                json!({
                    "name": u.spec.name,
                    "balance": format!("{:?}", u.spec.balance),
                    "health_checks": u.spec.health.is_some(),
                    "available": u.set.available_count(now),
                    "panic": u.set.in_panic(now),
                    "pickable": u.set.pickable_count(now),
                    "zone_affinity": u.spec.zone_affinity.as_ref().map(|z| json!({
                        "zone": z.zone,
                        "min_available_percent": z.min_available_percent,
                        "local_only": u.set.local_zone_only(now),
                    })),
                    "concurrency": u.bulkhead.as_ref().map(|b| {
                        let (in_flight, limit, queued) = b.snapshot();
                        json!({ "in_flight": in_flight, "limit": limit, "queued": queued })
                    }),
                    "endpoints": eps,
                })
            })
            .collect();
        json!({ "version": snap.version, "draining": self.gw.is_draining(), "upstreams": ups })
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive (RFC
/// 9110 §11.1), and spaces may follow it (RFC 9110 §11.4's `1*SP`).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}
