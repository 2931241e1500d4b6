//! Whether a route stores a response, and with what timing: the HTTP rules of [`freshness`]
//! (RFC 9111 §3) plus the route's own (Set-Cookie, trailers, `Vary: *`, size, TTL rules).
//!
//! [`freshness`]: super::freshness

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, StatusCode, header};

use super::freshness::{self, Exchange, NotStored};
use super::key;
use super::object::{Object, Timing};
use super::spec::CacheSpec;

/// One answer from the origin, with the request it answers and when it went and came.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    /// The request's headers.
    pub request: &'a HeaderMap,
    /// The request's path (TTL rules match it).
    pub path: &'a str,
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: &'a HeaderMap,
    /// When the request was sent.
    pub sent: SystemTime,
    /// When the response arrived.
    pub received: SystemTime,
}

impl Answer<'_> {
    /// Whether the route stores it; its Vary list and timing when so.
    pub fn storable(&self, spec: &CacheSpec) -> Result<(Vec<HeaderName>, Timing), NotStored> {
        let h = self.headers;
        let (d, targeted) = freshness::effective(h, &spec.targets);
        let x = Exchange {
            request: self.request,
            status: self.status,
            headers: h,
            directives: &d,
            targeted,
            sent: self.sent,
            received: self.received,
        };
        x.storable()?;
        if h.contains_key(header::SET_COOKIE) && !spec.share_set_cookie {
            return Err(NotStored::SetCookie);
        }
        // The store keeps body bytes only: a hit would lose the trailer fields (a gRPC status,
        // a checksum) the response declares.
        if h.contains_key(header::TRAILER) {
            return Err(NotStored::Trailer);
        }
        let length = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|n| n > spec.max_object_bytes) {
            return Err(NotStored::TooBig);
        }
        let vary = key::vary_names(h).ok_or(NotStored::VaryStar)?;
        let timing = self.timing(spec, &x);
        let validators = h.contains_key(header::ETAG) || h.contains_key(header::LAST_MODIFIED);
        if timing.fresh_until <= self.received && !validators {
            return Err(NotStored::NoFreshness);
        }
        Ok((vary, timing))
    }

    /// A stored object refreshed by this answer, a 304 whose headers are already merged into
    /// `self.headers` (RFC 9111 §4.3.4).
    pub fn refresh(&self, spec: &CacheSpec, stored: &Object) -> Object {
        let (d, targeted) = freshness::effective(self.headers, &spec.targets);
        let x = Exchange {
            request: self.request,
            status: stored.status,
            headers: self.headers,
            directives: &d,
            targeted,
            sent: self.sent,
            received: self.received,
        };
        stored.refreshed(self.headers.clone(), self.timing(spec, &x))
    }

    fn timing(&self, spec: &CacheSpec, x: &Exchange<'_>) -> Timing {
        Timing::new(
            x.freshness(),
            x.directives,
            ttl_override(spec, self.path),
            (spec.stale_while_revalidate, spec.stale_if_error, spec.keep),
            self.headers,
            self.received,
        )
    }
}

/// The route's fixed TTL for this path, if a rule sets one.
pub fn ttl_override(spec: &CacheSpec, path: &str) -> Option<Duration> {
    spec.rules
        .iter()
        .find(|r| path.starts_with(r.path_prefix.as_str()))
        .and_then(|r| r.ttl)
}
