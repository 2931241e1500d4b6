//! Admission of a routed request: the route's allow/deny rules, operator switches, then the
//! rate limit (in that order: a refused client spends no rate-limit budget).

use std::sync::Arc;

use scalegate_core::admission::Priority;

use crate::admission;
use crate::error::ProxyError;
use crate::router::Route;

use super::{Admitted, Exchange};

/// Admits a request to `route`, or says why not (403, 503, 429).
pub(super) async fn admit(
    x: &mut Exchange,
    route: &Arc<Route>,
    parts: &http::request::Parts,
) -> Result<Admitted, ProxyError> {
    let client = x.client;
    if !route.spec.access.permits(client.ip()) {
        return Err(ProxyError::Forbidden);
    }
    let switch = x.ctx.gateway.switches.route(&route.spec.name);
    if switch.as_ref().is_some_and(|s| s.disabled) {
        return Err(ProxyError::RouteDisabled);
    }
    let rate = match (&route.limiter, &route.spec.rate_limit, &route.shared) {
        (Some(l), Some(spec), None) => Some(admission::check(l, spec, &parts.headers, client)),
        // Boxed: the Redis round trip's future stays out of every other request's future.
        (Some(l), Some(spec), Some(shared)) => {
            let key = admission::key_of(spec, &parts.headers, client);
            let check = admission::check_shared(shared.as_ref(), &route.spec.name, l, spec, key);
            Some(Box::pin(check).await)
        }
        _ => None,
    };
    match rate {
        Some(Ok(status)) => x.set_rate(status),
        Some(Err((denied, status))) => {
            x.set_rate(status);
            route.metrics.rate_limited.inc();
            return Err(denied);
        }
        None => {}
    }
    Ok(Admitted {
        prio: priority(route, &parts.headers),
        canary: switch.and_then(|s| s.canary),
        client,
    })
}

/// The request's priority class: the route's, or the priority header's when the route allows it.
fn priority(route: &Route, h: &http::HeaderMap) -> Priority {
    route
        .spec
        .priority_header
        .as_ref()
        .and_then(|name| h.get(name.as_str()))
        .and_then(|v| v.to_str().ok())
        .and_then(Priority::parse)
        .unwrap_or(route.spec.priority)
}
