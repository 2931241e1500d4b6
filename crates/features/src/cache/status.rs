//! The Cache-Status response header (RFC 9211): how the cache handled the request.

use http::HeaderValue;

/// The cache's name in Cache-Status.
const NAME: &str = "scalegate";

/// Why a request went forward to the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fwd {
    /// Nothing stored for the URL.
    UriMiss,
    /// The URL is stored, but not this variant.
    VaryMiss,
    /// A stored response needed revalidation.
    Stale,
    /// The request's own directives did not allow a stored response.
    Request,
    /// Bypass rules, a request body, or a method the cache does not answer.
    Bypass,
}

impl Fwd {
    fn token(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Bypass => "bypass",
        }
    }
}

/// A served-from-cache entry: `scalegate; hit; ttl=N[; detail=D]`.
pub fn hit(ttl: i64, detail: Option<&str>) -> HeaderValue {
    let mut s = format!("{NAME}; hit; ttl={ttl}");
    if let Some(d) = detail {
        s.push_str("; detail=");
        s.push_str(d);
    }
    HeaderValue::try_from(s).unwrap_or(HeaderValue::from_static(NAME))
}

/// A forwarded entry: `scalegate; fwd=F[; fwd-status=N][; stored][; detail=D]`.
pub fn forward(fwd: Fwd, status: Option<u16>, stored: bool, detail: Option<&str>) -> HeaderValue {
    let mut s = format!("{NAME}; fwd={}", fwd.token());
    if let Some(st) = status {
        s.push_str(&format!("; fwd-status={st}"));
    }
    if stored {
        s.push_str("; stored");
    }
    if let Some(d) = detail {
        s.push_str("; detail=");
        s.push_str(d);
    }
    HeaderValue::try_from(s).unwrap_or(HeaderValue::from_static(NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9211_members() {
        assert_eq!(hit(30, None), "scalegate; hit; ttl=30");
        assert_eq!(
            hit(-5, Some("stale-while-revalidate")),
            "scalegate; hit; ttl=-5; detail=stale-while-revalidate"
        );
        assert_eq!(
            forward(Fwd::Stale, Some(304), true, None),
            "scalegate; fwd=stale; fwd-status=304; stored"
        );
        assert_eq!(
            forward(Fwd::UriMiss, None, false, None),
            "scalegate; fwd=uri-miss"
        );
    }
}
