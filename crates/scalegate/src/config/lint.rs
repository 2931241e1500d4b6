//! Warnings: settings that are valid but do not do what their author most likely meant. They are
//! printed by `scalegate check` (as `FILE:LINE:COL: warning: ...`) and logged on start and
//! reload; the config is used as written.

use std::time::Duration;

use toml::Spanned;

use super::Problem;
use super::raw::{RawConcurrency, RawConfig, RawEndpoint, RawRoute, RawZoneAffinity};
use super::zone::ZONE_ENV;

/// Every warning for a file that parsed.
pub(super) fn lint(raw: &RawConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    if raw.listeners.is_empty()
        && let Some(first) = raw.routes.first()
    {
        warn(
            &mut out,
            first.span(),
            "there are routes but no [[listeners]]: nothing accepts requests for them".into(),
        );
    }
    admin_token_in_clear(raw, &mut out);
    shadowed_routes(raw, &mut out);
    routes_under_fanout(raw, &mut out);
    zone_affinity_without_local_endpoints(raw, &mut out);
    contradictions(raw, &mut out);
    out.sort_by_key(|p| p.span.as_ref().map_or(0, |s| s.start));
    out
}

fn warn(out: &mut Vec<Problem>, span: std::ops::Range<usize>, message: String) {
    out.push(Problem {
        span: Some(span),
        message: format!("warning: {message}"),
    });
}

/// The admin API has no TLS: on an address other hosts reach, its token crosses the network in
/// clear text.
fn admin_token_in_clear(raw: &RawConfig, out: &mut Vec<Problem>) {
    let (Some(listen), Some(_)) = (&raw.admin.listen, &raw.admin.token) else {
        return;
    };
    let remote = listen
        .get_ref()
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| !a.ip().is_loopback());
    if remote {
        warn(
            out,
            listen.span(),
            format!(
                "admin.listen {} is reachable from other hosts and the admin API has no TLS: admin.token travels in clear text (put it behind a TLS proxy or a private network)",
                listen.get_ref()
            ),
        );
    }
}

fn route_name(i: usize, r: &RawRoute) -> String {
    r.name
        .as_ref()
        .map_or_else(|| format!("route{i}"), |n| n.get_ref().clone())
}

/// A route with the same listener and match as an earlier one never wins (ties go to the first).
fn shadowed_routes(raw: &RawConfig, out: &mut Vec<Problem>) {
    let key = |r: &RawRoute| {
        let m = &r.matcher;
        let text = |s: &Option<Spanned<String>>| s.as_ref().map(|v| v.get_ref().clone());
        let mut headers: Vec<(String, String)> = m
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.get_ref().clone()))
            .collect();
        headers.sort();
        (
            text(&r.listener),
            text(&m.host).map(|h| h.to_ascii_lowercase()),
            text(&m.path_prefix),
            text(&m.method).map(|x| x.to_ascii_uppercase()),
            headers,
        )
    };
    let mut seen: Vec<(usize, _)> = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let k = key(r.get_ref());
        if let Some(&(first, _)) = seen.iter().find(|(_, other)| *other == k) {
            warn(
                out,
                r.span(),
                format!(
                    "route {:?} never matches: route {:?} has the same listener and match and comes first",
                    route_name(i, r.get_ref()),
                    route_name(first, raw.routes[first].get_ref())
                ),
            );
        } else {
            seen.push((i, k));
        }
    }
}

/// `[fanout]` answers every request under its prefix before routing.
fn routes_under_fanout(raw: &RawConfig, out: &mut Vec<Problem>) {
    let Some(f) = &raw.fanout else { return };
    let prefix = f
        .get_ref()
        .path_prefix
        .as_ref()
        .map_or("/live/", |p| p.get_ref().as_str());
    for (i, r) in raw.routes.iter().enumerate() {
        let Some(p) = &r.get_ref().matcher.path_prefix else {
            continue;
        };
        let under = format!("{}/", p.get_ref().trim_end_matches('/'));
        if under.starts_with(prefix) {
            warn(
                out,
                p.span(),
                format!(
                    "route {:?} never sees requests: [fanout] answers everything under {prefix:?}",
                    route_name(i, r.get_ref())
                ),
            );
        }
    }
}

/// Zone affinity with no endpoint in the gateway's zone never keeps anything local.
fn zone_affinity_without_local_endpoints(raw: &RawConfig, out: &mut Vec<Problem>) {
    let zone = match &raw.runtime.zone {
        Some(z) => z.get_ref().clone(),
        None => match std::env::var(ZONE_ENV) {
            Ok(z) if !z.trim().is_empty() => z,
            _ => return,
        },
    };
    for (name, u) in &raw.upstreams {
        let Some(za) = &u.get_ref().zone_affinity else {
            continue;
        };
        if matches!(za.get_ref(), RawZoneAffinity::On(false)) {
            continue;
        }
        let dns_local = u
            .get_ref()
            .dns
            .as_ref()
            .is_some_and(|d| d.get_ref().zone.as_deref() == Some(zone.as_str()));
        let local = dns_local
            || u.get_ref().endpoints.iter().any(|e| match e.get_ref() {
                RawEndpoint::Full(t) => t.zone.as_deref() == Some(zone.as_str()),
                RawEndpoint::Addr(_) => false,
            });
        if !local {
            warn(
                out,
                za.span(),
                format!(
                    "upstream {:?} has no endpoint in this gateway's zone {zone:?}: zone_affinity balances over every zone",
                    name.get_ref()
                ),
            );
        }
    }
}

/// The route timeout when none is written (validate.rs).
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pairs of settings where one makes the other do nothing.
fn contradictions(raw: &RawConfig, out: &mut Vec<Problem>) {
    for (i, r) in raw.routes.iter().enumerate() {
        let route = r.get_ref();
        let timeout = route
            .timeout
            .as_ref()
            .map_or(DEFAULT_ROUTE_TIMEOUT, |t| t.get_ref().0);
        if let Some(retry) = &route.retry
            && let Some(per_try) = retry.get_ref().per_try_timeout
            && per_try.0 >= timeout
        {
            warn(
                out,
                retry.span(),
                format!(
                    "route {:?}: retry.per_try_timeout {:?} is not shorter than the route's timeout {timeout:?}: an attempt never times out before the request does, so a slow answer is never retried",
                    route_name(i, route),
                    per_try.0
                ),
            );
        }
        if let Some(cc) = &route.concurrency {
            min_limit_over_max(cc, out);
        }
    }
    for (name, u) in &raw.upstreams {
        let up = u.get_ref();
        // Either side may be the default (validate.rs: interval 2 s, timeout 1 s).
        if let Some(h) = &up.health
            && let timeout = h.get_ref().timeout.map_or(Duration::from_secs(1), |d| d.0)
            && let interval = h.get_ref().interval.map_or(Duration::from_secs(2), |d| d.0)
            && timeout > interval
        {
            warn(
                out,
                h.span(),
                format!(
                    "upstream {:?}: health.timeout {timeout:?} is longer than health.interval {interval:?}: a probe that hangs holds up the next ones",
                    name.get_ref(),
                ),
            );
        }
        let pool = scalegate_http::spec::PoolSpec::default();
        if let Some(p) = &up.pool
            && let idle = p
                .get_ref()
                .max_idle_per_endpoint
                .unwrap_or(pool.max_idle_per_endpoint as i64)
            && let max = p
                .get_ref()
                .max_per_endpoint
                .unwrap_or(pool.max_per_endpoint as i64)
            && idle > max
        {
            warn(
                out,
                p.span(),
                format!(
                    "upstream {:?}: pool.max_idle_per_endpoint {idle} is more than max_per_endpoint {max}: at most {max} connections are kept",
                    name.get_ref()
                ),
            );
        }
        if let Some(cc) = &up.concurrency {
            min_limit_over_max(cc, out);
        }
    }
}

/// An adaptive limit's floor above its ceiling is the ceiling.
fn min_limit_over_max(cc: &Spanned<RawConcurrency>, out: &mut Vec<Problem>) {
    let c = cc.get_ref();
    if let Some(min) = c.min_limit
        && min > c.max_in_flight
    {
        warn(
            out,
            cc.span(),
            format!(
                "concurrency.min_limit {min} is more than max_in_flight {}: the adaptive limit stays at max_in_flight",
                c.max_in_flight
            ),
        );
    }
}
