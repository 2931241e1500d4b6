//! Runtime switches through the admin API (POST, bearer token): no reload, and they survive
//! reloads.
//!
//! - `/switches/routes/{route}/disable` and `/enable`: a disabled route answers with its fallback
//!   or 503;
//! - `/switches/routes/{route}/canary?upstream={name}&percent={0-100}`: send that share of the
//!   route's traffic to a second upstream (percent 0 clears it);
//! - `/switches/endpoints/{upstream}/{addr}/drain` and `/undrain`;
//! - `/switches/endpoints/{upstream}/{addr}/weight?value={n}` (0 restores the configured weight).

use bytes::Bytes;
use http::{Response, StatusCode, Uri};
use http_body_util::Full;
use scalegate_http::Gateway;
use serde_json::json;

use crate::admin::{JSON, TEXT, reply};

fn query<'a>(uri: &'a Uri, key: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn bad(msg: String) -> Response<Full<Bytes>> {
    reply(StatusCode::BAD_REQUEST, TEXT, format!("400: {msg}\n"))
}

fn not_found(msg: String) -> Response<Full<Bytes>> {
    reply(StatusCode::NOT_FOUND, TEXT, format!("404: {msg}\n"))
}

/// Applies one switch; answers with the switches now in force.
pub fn apply(gw: &Gateway, uri: &Uri) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let snap = gw.snapshot();
    match parts[..] {
        ["switches", "routes", route, action] => {
            if !snap.routes.iter().any(|r| r.spec.name == route) {
                return not_found(format!("no route {route:?}"));
            }
            match action {
                "disable" => gw.switches.update(route, |s| s.disabled = true),
                "enable" => gw.switches.update(route, |s| s.disabled = false),
                "canary" => {
                    let pct = match query(uri, "percent")
                        .and_then(|p| p.parse::<u8>().ok())
                        .filter(|p| *p <= 100)
                    {
                        Some(p) => p,
                        None => return bad("canary needs percent=0..100".into()),
                    };
                    let target = query(uri, "upstream").unwrap_or("");
                    if pct > 0 && snap.upstream(target).is_none() {
                        return not_found(format!("no upstream {target:?}"));
                    }
                    gw.switches.update(route, |s| {
                        s.canary = (pct > 0).then(|| (target.to_string(), pct))
                    });
                }
                _ => return not_found(format!("no route switch {action:?}")),
            }
            tracing::warn!(route, action, "runtime switch applied");
        }
        ["switches", "endpoints", upstream, addr, action] => {
            let Some(ep) = gw.endpoint(upstream, addr) else {
                return not_found(format!("no endpoint {addr:?} in upstream {upstream:?}"));
            };
            match action {
                "drain" => ep.state.set_draining(true),
                "undrain" => ep.state.set_draining(false),
                "weight" => match query(uri, "value")
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|w| *w <= 1000)
                {
                    Some(w) => ep.state.set_weight_override((w > 0).then_some(w)),
                    None => {
                        return bad(
                            "weight needs value=0..1000 (0 restores the configured weight)".into(),
                        );
                    }
                },
                _ => return not_found(format!("no endpoint switch {action:?}")),
            }
            tracing::warn!(upstream, endpoint = addr, action, "runtime switch applied");
        }
        _ => return not_found("no such switch".into()),
    }
    reply(StatusCode::OK, JSON, view(gw).to_string() + "\n")
}

/// Every switch in force.
pub fn view(gw: &Gateway) -> serde_json::Value {
    let endpoints: Vec<_> = gw
        .snapshot()
        .upstreams
        .iter()
        .flat_map(|u| {
            u.endpoints.iter().filter_map(move |e| {
                let drained = e.state.is_draining();
                let weight = e.state.weight_override();
                (drained || weight.is_some()).then(|| {
                    json!({ "upstream": u.spec.name, "endpoint": e.addr, "drained": drained, "weight": weight })
                })
            })
        })
        .collect();
    json!({ "routes": gw.switches.all(), "endpoints": endpoints })
}
