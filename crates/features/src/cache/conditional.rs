//! A client's conditional GET or HEAD answered from a stored response (RFC 9110 §13.2.2,
//! RFC 9111 §4.3.2): If-None-Match takes precedence over If-Modified-Since; entity-tags compare
//! weakly; dates compare as dates (a later date is "not modified" too), in any HTTP-date format,
//! against Last-Modified, else Date, else when the response was received.

use std::time::SystemTime;

use http::{HeaderMap, StatusCode, header};

use super::freshness::http_date;
use super::object::Object;
use scalegate_http::cache_control;

/// Whether the request's preconditions make the answer a 304 for this stored response.
pub fn not_modified(o: &Object, req: &HeaderMap) -> bool {
    // Preconditions apply only to responses that would be 2xx (RFC 9110 §13.2.1).
    if !o.status.is_success() || o.status == StatusCode::PARTIAL_CONTENT {
        return false;
    }
    if req.contains_key(header::IF_NONE_MATCH) {
        let etag = o.headers.get(header::ETAG).and_then(|v| v.to_str().ok());
        return req
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cache_control::list)
            .any(|t| t == "*" || etag.is_some_and(|e| weak_eq(t, e)));
    }
    let Some(since) = req.get(header::IF_MODIFIED_SINCE).and_then(http_date) else {
        // Absent, or not a valid date: ignored (RFC 9110 §13.1.3).
        return false;
    };
    modified(o) <= since
}

/// The stored response's modification time: Last-Modified, else Date, else its birth.
fn modified(o: &Object) -> SystemTime {
    o.headers
        .get(header::LAST_MODIFIED)
        .and_then(http_date)
        .or_else(|| o.headers.get(header::DATE).and_then(http_date))
        .unwrap_or(o.timing.born)
}

/// Weak comparison of two entity-tags (RFC 9110 §8.8.3.2): equal opaque tags, W/ or not.
fn weak_eq(a: &str, b: &str) -> bool {
    opaque(a) == opaque(b)
}

fn opaque(t: &str) -> &str {
    let t = t.trim();
    t.strip_prefix("W/").unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_8_8_3_2_weak_comparison() {
        assert!(weak_eq("\"a\"", "W/\"a\""));
        assert!(weak_eq("W/\"a\"", "W/\"a\""));
        assert!(!weak_eq("\"a\"", "\"b\""));
        assert!(!weak_eq("\"a\"", "\"a,b\""));
    }
}
