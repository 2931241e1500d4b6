//! The origin's 304 to the cache's own revalidation of a stored response (RFC 9111 §4.3.4).
//!
//! The 304's headers refresh the stored copy only when it names the stored representation (its
//! ETag or Last-Modified, if it sends one, matches) and the refreshed response would still be
//! stored for this request. A 304 that says `private` or `no-store` now removes the stored copy;
//! one answering a request with Authorization that does not say `public`, `s-maxage` or
//! `must-revalidate` is this client's alone, and the stored copy stays as it was. A 304's
//! Set-Cookie goes to the client that caused it, never into the store.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Response, StatusCode, header};

use super::answer::{CACHE_STATUS, from_served};
use super::key;
use super::object::{Object, merge_not_modified};
use super::spec::CacheSpec;
use super::status::{self, Fwd};
use super::store::Store;
use super::verdict::Answer;
use scalegate_http::body::RespBody;

/// What a 304 makes of a stored response.
pub enum Revalidated {
    /// The client's answer, from the refreshed copy.
    Answer(Response<RespBody>),
    /// The 304 named another representation: the stored copy is forgotten, and the exchange's
    /// body comes back so the request can be asked again without conditions.
    Outdated(RespBody),
}

/// One 304 received for `stored`, with the request it answers.
pub struct NotModified<'a> {
    /// The route's cache settings.
    pub spec: &'a CacheSpec,
    /// The store holding `stored`.
    pub store: &'a Arc<Store>,
    /// The client's request.
    pub request: &'a http::request::Parts,
    /// The stored response that was revalidated.
    pub stored: &'a Arc<Object>,
    /// When the revalidation was sent and when its answer came.
    pub sent: SystemTime,
    /// When the 304 arrived.
    pub received: SystemTime,
}

impl NotModified<'_> {
    /// The client's answer to a 304 with headers `fresh` (its body, `upstream`, carries the
    /// exchange's bookkeeping). A 304 naming another representation than the stored one
    /// updates nothing (RFC 9111 §4.3.4): the stored copy is outdated and forgotten, and
    /// `upstream` comes back so that the request can be asked again without conditions.
    pub fn answer(&self, fresh: &HeaderMap, upstream: RespBody) -> Revalidated {
        if names_another(&self.stored.headers, fresh) {
            self.forget();
            return Revalidated::Outdated(upstream);
        }
        let headers = merge_not_modified(&self.stored.headers, fresh);
        let answer = Answer {
            request: &self.request.headers,
            path: self.request.uri.path(),
            status: self.stored.status,
            headers: &headers,
            sent: self.sent,
            received: self.received,
        };
        let refreshed = Arc::new(answer.refresh(self.spec, self.stored));
        let verdict = answer.storable(self.spec);
        match &verdict {
            Ok(_) => {
                let vary = key::vary_names(&refreshed.headers).unwrap_or_default();
                self.store.insert(vary, refreshed.clone(), self.sent);
            }
            // This request's own reason (its Authorization, its no-store): the stored copy
            // stays as it was.
            Err(why) if !why.from_response() => {}
            Err(_) => self.forget(),
        }
        let detail = verdict.as_ref().err().map(|why| why.token());
        let cs = status::forward(Fwd::Stale, Some(304), verdict.is_ok(), detail);
        let mut r = from_served(&refreshed, self.request, cs, upstream);
        for cookie in fresh.get_all(header::SET_COOKIE) {
            r.headers_mut().append(header::SET_COOKIE, cookie.clone());
        }
        Revalidated::Answer(r)
    }

    /// The answer when a 304 named another representation and the request could not
    /// be asked again: 502, the client cannot be given a body the origin says is not current.
    pub fn outdated(mut upstream: RespBody) -> Response<RespBody> {
        upstream.set_status(502);
        let mut r = Response::new(upstream);
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r.headers_mut().insert(
            CACHE_STATUS.clone(),
            status::forward(Fwd::Stale, Some(304), false, Some("validator-mismatch")),
        );
        r
    }

    /// Removes the stored copy from every tier and instance, as a write to the URL would.
    fn forget(&self) {
        super::purger::invalidate_url(self.store, self.stored.url.to_string());
    }
}

/// Whether a 304's validators name another representation than the stored one's: an ETag
/// that differs by weak comparison (the gateway weakens the ETag of what it compresses, and
/// the origin answers with its own strong one), or, without an ETag, a Last-Modified that
/// differs.
fn names_another(stored: &HeaderMap, fresh: &HeaderMap) -> bool {
    if let Some(new) = value(fresh, header::ETAG) {
        let opaque = |t: &[u8]| t.strip_prefix(b"W/").unwrap_or(t).to_vec();
        return match value(stored, header::ETAG) {
            Some(old) => opaque(old) != opaque(new),
            None => true,
        };
    }
    match (
        value(stored, header::LAST_MODIFIED),
        value(fresh, header::LAST_MODIFIED),
    ) {
        (Some(old), Some(new)) => old != new,
        _ => false,
    }
}

/// A header's value, trimmed.
fn value(h: &HeaderMap, name: header::HeaderName) -> Option<&[u8]> {
    h.get(name).map(|v| v.as_bytes().trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
                )
            })
            .collect()
    }

    #[test]
    fn a_304_names_the_stored_representation_or_another() {
        let stored = h(&[
            (header::ETAG, "\"v1\""),
            (header::LAST_MODIFIED, "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        assert!(
            !names_another(&stored, &h(&[])),
            "no validators: the stored one"
        );
        assert!(!names_another(&stored, &h(&[(header::ETAG, "\"v1\"")])));
        assert!(
            !names_another(&stored, &h(&[(header::ETAG, "W/\"v1\"")])),
            "weak match"
        );
        assert!(names_another(&stored, &h(&[(header::ETAG, "\"v2\"")])));
        assert!(names_another(
            &h(&[(header::LAST_MODIFIED, "Mon, 01 Jan 2024 00:00:00 GMT")]),
            &h(&[(header::LAST_MODIFIED, "Tue, 02 Jan 2024 00:00:00 GMT")])
        ));
        assert!(names_another(&h(&[]), &h(&[(header::ETAG, "\"v1\"")])));
    }
}
