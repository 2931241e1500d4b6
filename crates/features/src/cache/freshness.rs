//! What a shared cache may store (RFC 9111 §3) and for how long it is fresh (§4.2): the
//! freshness lifetime from `s-maxage`, `max-age`, `Expires` or the Last-Modified heuristic, and
//! the age from `Age`, `Date` and the exchange's own timing.
//!
//! Targeted fields (RFC 9213, `CDN-Cache-Control` and the route's list) replace Cache-Control
//! and Expires when one is present: [`effective`] picks the directives that apply.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use scalegate_http::cache_control::{self, Directives};

/// Statuses a cache may give a heuristic freshness lifetime (RFC 9110 §15.1).
const HEURISTIC: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Statuses whose caching requirements this cache implements, for `must-understand`
/// (RFC 9111 §5.2.2.3). 206 is left out: partial responses are never stored.
const UNDERSTOOD: [u16; 15] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 451, 501,
];

/// The heuristic lifetime is this fraction of the time since Last-Modified…
const HEURISTIC_FRACTION: u32 = 10;
/// …and never more than this.
const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 3600);

/// Why a response is not stored; its token is the `detail` of Cache-Status (RFC 9211).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// The request said `no-store`.
    RequestNoStore,
    /// The response said `no-store` (without `must-understand`).
    NoStore,
    /// `must-understand` on a status this cache does not implement.
    MustUnderstand,
    /// `private` (a shared cache never stores it).
    Private,
    /// The request carried Authorization and the response did not allow sharing it.
    Authorization,
    /// A status that may not be stored without explicit freshness, or never (1xx, 304).
    Status,
    /// A partial response (206): only complete responses are stored.
    Partial,
    /// A 304 to the client's own conditional request: there is no body to store.
    NotModified,
    /// Neither a freshness lifetime nor a validator: a stored copy could never be used.
    NoFreshness,
    /// Set-Cookie, and the route does not share such responses.
    SetCookie,
    /// The response declares trailer fields, which the store does not keep.
    Trailer,
    /// `Vary: *`.
    VaryStar,
    /// Bigger than the route's `max_object_bytes`.
    TooBig,
}

impl NotStored {
    /// The Cache-Status `detail` token.
    pub fn token(self) -> &'static str {
        match self {
            NotStored::RequestNoStore => "request-no-store",
            NotStored::NoStore => "no-store",
            NotStored::MustUnderstand => "must-understand",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::Status => "status",
            NotStored::Partial => "partial",
            NotStored::NotModified => "not-modified",
            NotStored::NoFreshness => "no-freshness",
            NotStored::SetCookie => "set-cookie",
            NotStored::Trailer => "trailer",
            NotStored::VaryStar => "vary-star",
            NotStored::TooBig => "too-big",
        }
    }

    /// Whether the reason belongs to the response (so the next request for the key will most
    /// likely get the same answer: hit-for-pass), rather than to this request.
    pub fn from_response(self) -> bool {
        !matches!(
            self,
            NotStored::RequestNoStore
                | NotStored::Authorization
                | NotStored::TooBig
                | NotStored::NotModified
                | NotStored::Partial
        )
    }
}

/// The directives that govern a response for this cache: the first of `targets` (RFC 9213)
/// present with a non-empty value, else Cache-Control. The flag says a targeted field won (so
/// Expires is ignored).
pub fn effective(headers: &HeaderMap, targets: &[HeaderName]) -> (Directives, bool) {
    for t in targets {
        if headers
            .get(t)
            .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
        {
            return (Directives::from_lines(headers.get_all(t)), true);
        }
    }
    let mut d = Directives::of(headers);
    // `Pragma: no-cache` on a response without Cache-Control: honoured as no-cache, the
    // careful reading of a field whose response semantics RFC 9111 §5.4 leaves undefined.
    if !headers.contains_key(header::CACHE_CONTROL) {
        d.no_cache = cache_control::request_no_cache(headers, &d);
    }
    (d, false)
}

/// One exchange with the origin, as the freshness rules need it.
#[derive(Clone, Copy, Debug)]
pub struct Exchange<'a> {
    /// The request's headers (Authorization, its own Cache-Control).
    pub request: &'a HeaderMap,
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: &'a HeaderMap,
    /// The response's governing directives (see [`effective`]).
    pub directives: &'a Directives,
    /// Whether they came from a targeted field.
    pub targeted: bool,
    /// When the request was sent.
    pub sent: SystemTime,
    /// When the response arrived.
    pub received: SystemTime,
}

/// How fresh a response is and how it may be used once stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// When its age was zero (`received` minus its corrected initial age).
    pub born: SystemTime,
    /// Its freshness lifetime, counted from `born`.
    pub lifetime: Duration,
    /// Whether it may never be served stale (`must-revalidate`, `proxy-revalidate`,
    /// `no-cache`, `s-maxage`).
    pub strict: bool,
}

impl Exchange<'_> {
    /// Whether a shared cache may store the response (RFC 9111 §3), by the HTTP rules alone
    /// (the route's own rules on Set-Cookie, size and trailers come on top).
    pub fn storable(&self) -> Result<(), NotStored> {
        let d = self.directives;
        let code = self.status.as_u16();
        if Directives::of(self.request).no_store {
            return Err(NotStored::RequestNoStore);
        }
        if self.status == StatusCode::PARTIAL_CONTENT {
            return Err(NotStored::Partial);
        }
        if self.status == StatusCode::NOT_MODIFIED {
            return Err(NotStored::NotModified);
        }
        if self.status.is_informational() {
            return Err(NotStored::Status);
        }
        if d.must_understand {
            // A cache that understands the status ignores no-store (§5.2.2.3).
            if !UNDERSTOOD.contains(&code) {
                return Err(NotStored::MustUnderstand);
            }
        } else if d.no_store {
            return Err(NotStored::NoStore);
        }
        if d.private {
            return Err(NotStored::Private);
        }
        if self.request.contains_key(header::AUTHORIZATION)
            && !(d.must_revalidate || d.public || d.s_maxage.is_some())
        {
            return Err(NotStored::Authorization);
        }
        let explicit = d.max_age.is_some()
            || d.s_maxage.is_some()
            || (!self.targeted && self.headers.contains_key(header::EXPIRES));
        if !(explicit || d.public || HEURISTIC.contains(&code)) {
            return Err(NotStored::Status);
        }
        Ok(())
    }

    /// Its freshness and age (RFC 9111 §4.2.1 – §4.2.3).
    pub fn freshness(&self) -> Freshness {
        let d = self.directives;
        let date = self.headers.get(header::DATE).and_then(http_date);
        Freshness {
            born: self.received - self.initial_age(date),
            lifetime: self.lifetime(date.unwrap_or(self.received)),
            strict: !d.allows_stale(),
        }
    }

    /// The corrected initial age: the larger of the apparent age (from Date) and the Age
    /// header plus the time the exchange took.
    fn initial_age(&self, date: Option<SystemTime>) -> Duration {
        // Date has whole seconds: compare it with the arrival time at the same precision, so
        // a response is not up to a second old on arrival.
        let apparent = date.map_or(Duration::ZERO, |d| {
            whole_seconds(self.received)
                .duration_since(d)
                .unwrap_or(Duration::ZERO)
        });
        let delay = self
            .received
            .duration_since(self.sent)
            .unwrap_or(Duration::ZERO);
        apparent.max(age_value(self.headers) + delay)
    }

    fn lifetime(&self, date: SystemTime) -> Duration {
        let d = self.directives;
        if d.no_cache {
            return Duration::ZERO;
        }
        if let Some(s) = d.s_maxage.or(d.max_age) {
            return s;
        }
        if !self.targeted
            && let Some(expires) = self.headers.get(header::EXPIRES)
        {
            // An invalid date (or "0") means already expired (RFC 9111 §5.3).
            return http_date(expires)
                .and_then(|e| e.duration_since(date).ok())
                .unwrap_or(Duration::ZERO);
        }
        let heuristic = d.public || HEURISTIC.contains(&self.status.as_u16());
        match self.headers.get(header::LAST_MODIFIED).and_then(http_date) {
            Some(lm) if heuristic => date
                .duration_since(lm)
                .map_or(Duration::ZERO, |since| since / HEURISTIC_FRACTION)
                .min(HEURISTIC_MAX),
            _ => Duration::ZERO,
        }
    }
}

/// The Age header (RFC 9111 §5.1): the first member of a list, an invalid value ignored.
pub fn age_value(h: &HeaderMap) -> Duration {
    let Some(v) = h.get(header::AGE) else {
        return Duration::ZERO;
    };
    let first = std::str::from_utf8(v.as_bytes())
        .unwrap_or("")
        .split(',')
        .next()
        .unwrap_or("")
        .trim_matches([' ', '\t']);
    cache_control::delta_seconds(first).unwrap_or(Duration::ZERO)
}

/// An HTTP-date in any of its three formats (RFC 9110 §5.6.7: IMF-fixdate, RFC 850, asctime).
pub fn http_date(v: &HeaderValue) -> Option<SystemTime> {
    let s = std::str::from_utf8(v.as_bytes()).ok()?;
    httpdate::parse_http_date(s.trim_matches([' ', '\t'])).ok()
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

#[cfg(test)]
mod tests;
