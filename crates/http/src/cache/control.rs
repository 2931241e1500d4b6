//! The few Cache-Control directives the cache reads itself. Storability and freshness lifetime
//! come from `http-cache-semantics`; this covers what it leaves to the caller: the RFC 5861
//! stale extensions, directives that forbid serving stale, and the request's own no-cache and
//! max-age.

use std::time::Duration;

use http::{HeaderMap, header};

/// The directives of one Cache-Control header set (all its lines).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache` (unqualified or qualified).
    pub no_cache: bool,
    /// `no-store`.
    pub no_store: bool,
    /// `no-transform`.
    pub no_transform: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `s-maxage` present.
    pub s_maxage: bool,
    /// `max-age=N`.
    pub max_age: Option<Duration>,
    /// `stale-while-revalidate=N`.
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error=N`.
    pub stale_if_error: Option<Duration>,
}

impl Directives {
    /// Parses every Cache-Control line of `headers`; unknown directives are ignored.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            let Ok(line) = line.to_str() else { continue };
            for item in line.split(',') {
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                let secs = || {
                    value
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs)
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-cache" => d.no_cache = true,
                    "no-store" => d.no_store = true,
                    "no-transform" => d.no_transform = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "s-maxage" => d.s_maxage = true,
                    "max-age" => d.max_age = secs(),
                    "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                    "stale-if-error" => d.stale_if_error = secs(),
                    _ => {}
                }
            }
        }
        d
    }

    /// Whether a shared cache may serve this response stale at all (RFC 9111 §4.2.4:
    /// must-revalidate, proxy-revalidate, no-cache and s-maxage forbid it).
    pub fn allows_stale(&self) -> bool {
        !(self.must_revalidate || self.proxy_revalidate || self.no_cache || self.s_maxage)
    }
}

/// Whether a request asks the cache not to answer from storage without revalidating
/// (`Cache-Control: no-cache`, or `Pragma: no-cache` without Cache-Control).
pub fn request_no_cache(headers: &HeaderMap, d: &Directives) -> bool {
    d.no_cache
        || (!headers.contains_key(header::CACHE_CONTROL)
            && headers
                .get(header::PRAGMA)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(v: &str) -> Directives {
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, v.parse().unwrap());
        Directives::of(&h)
    }

    #[test]
    fn parses_the_stale_extensions() {
        let d = cc("max-age=60, stale-while-revalidate=30, stale-if-error=\"600\"");
        assert_eq!(d.max_age, Some(Duration::from_secs(60)));
        assert_eq!(d.stale_while_revalidate, Some(Duration::from_secs(30)));
        assert_eq!(d.stale_if_error, Some(Duration::from_secs(600)));
        assert!(d.allows_stale());
    }

    #[test]
    fn revalidation_directives_forbid_stale() {
        for v in [
            "max-age=1, must-revalidate",
            "proxy-revalidate",
            "no-cache",
            "s-maxage=5",
        ] {
            assert!(!cc(v).allows_stale(), "{v}");
        }
    }

    #[test]
    fn pragma_counts_only_without_cache_control() {
        let mut h = HeaderMap::new();
        h.insert(header::PRAGMA, "no-cache".parse().unwrap());
        assert!(request_no_cache(&h, &Directives::of(&h)));
        h.insert(header::CACHE_CONTROL, "max-age=10".parse().unwrap());
        assert!(!request_no_cache(&h, &Directives::of(&h)));
    }
}
