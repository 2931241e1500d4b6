//! Route matching: host, path prefix, method and headers. The most specific matching route wins:
//! a host beats no host, then the longer path prefix, then a method, then more headers; equal
//! specificity goes to the route written first.

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, Method, Uri, header};

use crate::metrics::RouteMetrics;
use crate::spec::{MatchSpec, RouteSpec};

/// A route ready to serve.
#[derive(Debug)]
pub struct Route {
    /// The validated rule.
    pub spec: RouteSpec,
    /// Index of its upstream in the snapshot.
    pub upstream: usize,
    /// Metric handles.
    pub metrics: RouteMetrics,
    /// Retry budget, when the route retries.
    pub budget: Option<scalegate_core::retry::RetryBudget>,
    /// Rate limiter, when the route has a rate limit (kept across reloads while the limit
    /// stays the same); with a shared limit it judges only while Redis does not answer.
    pub limiter: Option<Arc<scalegate_core::admission::RateLimiter>>,
    /// What counts the route's rate limit across instances, when it is shared.
    pub shared: Option<Arc<dyn crate::plug::SharedCounter>>,
    /// The route's own bulkhead, when configured.
    pub bulkhead: Option<Arc<crate::bulkhead::Bulkhead>>,
    /// What serves the route's requests in place of the upstream (a feature: the cache, a
    /// queue), when it has one.
    pub handler: Option<Arc<dyn crate::plug::RouteHandler>>,
}

/// The request fields routing looks at.
pub struct RouteKey<'a> {
    /// Host without port, from Host or the URI authority.
    pub host: Option<&'a str>,
    /// Path.
    pub path: &'a str,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RouteKey<'a> {
    /// Reads the routing fields of a request head.
    pub fn of(parts: &'a Parts) -> Self {
        RouteKey {
            host: request_host(&parts.uri, &parts.headers),
            path: parts.uri.path(),
            method: &parts.method,
            headers: &parts.headers,
        }
    }
}

/// Host of a request without the port: the URI authority (HTTP/2, absolute form) or Host.
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match uri.authority() {
        Some(a) => a.host(),
        None => headers.get(header::HOST)?.to_str().ok()?,
    };
    if raw.starts_with('[') {
        return raw.split_inclusive(']').next();
    }
    Some(raw.split(':').next().unwrap_or(raw))
}

/// All routes, most specific first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

fn specificity(m: &MatchSpec) -> (bool, usize, bool, usize) {
    (
        m.host.is_some(),
        m.path_prefix.as_ref().map_or(0, |p| p.len()),
        m.method.is_some(),
        m.headers.len(),
    )
}

impl RouteTable {
    /// Sorts routes by specificity (stable, so config order breaks ties).
    pub fn new(mut routes: Vec<Arc<Route>>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(specificity(&r.spec.matcher)));
        RouteTable { routes }
    }

    /// The route for a request on `listener`, if any.
    pub fn find(&self, listener: &str, key: &RouteKey<'_>) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            r.spec.listener.as_deref().is_none_or(|l| l == listener)
                && matches(&r.spec.matcher, key)
        })
    }

    /// Every route, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

fn matches(m: &MatchSpec, key: &RouteKey<'_>) -> bool {
    if let Some(h) = &m.host
        && !key.host.is_some_and(|k| k.eq_ignore_ascii_case(h))
    {
        return false;
    }
    if let Some(p) = &m.path_prefix
        && !prefix_matches(p, key.path)
    {
        return false;
    }
    if let Some(method) = &m.method
        && method != key.method
    {
        return false;
    }
    m.headers.iter().all(|(name, value)| {
        key.headers
            .get_all(name.as_str())
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes())
    })
}

/// "/api" matches "/api", "/api/", "/api/x" and "/api;v=1" but not "/apix"; "/" and "/api/" match
/// by prefix. A `;` ends a segment too: servers such as Tomcat drop path parameters, so
/// "/admin;x" is their "/admin" and must not slip past a rule for it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => {
            prefix.ends_with('/')
                || rest.is_empty()
                || rest.starts_with('/')
                || rest.starts_with(';')
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;

    fn route(name: &str, m: MatchSpec) -> Arc<Route> {
        Arc::new(Route {
            spec: RouteSpec {
                name: name.into(),
                listener: None,
                matcher: m,
                upstream: "u".into(),
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                max_body_bytes: 1,
                retry: None,
                rate_limit: None,
                priority: scalegate_core::admission::Priority::Normal,
                priority_header: None,
                fallback: None,
                bulkhead: None,
                compression: None,
                rewrite: None,
                request_headers: Default::default(),
                response_headers: Default::default(),
                access: Default::default(),
            },
            upstream: 0,
            metrics: Metrics::default().route(name, "u"),
            budget: None,
            limiter: None,
            shared: None,
            bulkhead: None,
            handler: None,
        })
    }

    fn check(
        table: &RouteTable,
        method: &str,
        uri: &str,
        host: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, ()) = b.body(()).ok()?.into_parts();
        table
            .find("public", &RouteKey::of(&parts))
            .map(|r| r.spec.name.clone())
    }

    #[test]
    fn most_specific_route_wins() {
        let prefix = |p: &str| MatchSpec {
            path_prefix: Some(p.into()),
            ..MatchSpec::default()
        };
        let t = RouteTable::new(vec![
            route("root", prefix("/")),
            route("api", prefix("/api")),
            route(
                "api-post",
                MatchSpec {
                    method: Some(Method::POST),
                    ..prefix("/api")
                },
            ),
            route(
                "host",
                MatchSpec {
                    host: Some("Admin.Example.com".into()),
                    ..prefix("/")
                },
            ),
            route(
                "beta",
                MatchSpec {
                    headers: vec![("x-beta".into(), "1".into())],
                    ..prefix("/api")
                },
            ),
        ]);
        assert_eq!(
            check(&t, "GET", "/", "ex.com", &[]).as_deref(),
            Some("root")
        );
        assert_eq!(
            check(&t, "GET", "/apix", "ex.com", &[]).as_deref(),
            Some("root")
        );
        assert_eq!(
            check(&t, "GET", "/api/v1?q=1", "ex.com", &[]).as_deref(),
            Some("api")
        );
        assert_eq!(
            check(&t, "POST", "/api", "ex.com", &[]).as_deref(),
            Some("api-post")
        );
        assert_eq!(
            check(&t, "GET", "/api", "admin.example.com:8080", &[]).as_deref(),
            Some("host")
        );
        assert_eq!(
            check(&t, "GET", "/api", "ex.com", &[("x-beta", "1")]).as_deref(),
            Some("beta")
        );
    }

    #[test]
    fn no_route_when_nothing_matches() {
        let t = RouteTable::new(vec![route(
            "api",
            MatchSpec {
                path_prefix: Some("/api".into()),
                ..MatchSpec::default()
            },
        )]);
        assert_eq!(check(&t, "GET", "/other", "ex.com", &[]), None);
    }
}
