//! A stored response and what it may be used for now: fresh, stale but servable while it is
//! refreshed in the background, or stale and only usable if the origin fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use super::freshness::Freshness;
use scalegate_http::cache_control::{self, Directives};

/// Object state set by purges.
const LIVE: u8 = 0;
const SOFT_PURGED: u8 = 1;
const PURGED: u8 = 2;

/// One stored response (one variant of a URL).
#[derive(Debug)]
pub struct Object {
    /// Status.
    pub status: StatusCode,
    /// Response headers as stored (hop-by-hop and Set-Cookie removed).
    pub headers: HeaderMap,
    /// The whole body, in the coding it was stored with.
    pub body: Bytes,
    /// Its age, freshness and stale uses.
    pub timing: Timing,
    /// Tags from Surrogate-Key / Cache-Tag, for purging.
    pub tags: Vec<String>,
    /// Its URL key.
    pub url: Arc<str>,
    /// Its variant key.
    pub variant: String,
    /// Hits served (for the admin view of the hottest keys).
    pub hits: AtomicU64,
    state: AtomicU8,
}

/// When a stored response was born, until when it is fresh, and how it may be used after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// When its age was zero: its age now is `now - born`.
    pub born: SystemTime,
    /// When it stops being fresh.
    pub fresh_until: SystemTime,
    /// Whether it may never be served stale (no `max-stale` either).
    pub strict: bool,
    /// How long past `fresh_until` it may be served while refreshed in the background.
    pub stale_while_revalidate: Duration,
    /// How long past `fresh_until` it may be served when the origin fails.
    pub stale_if_error: Duration,
    /// How long past `fresh_until` it is kept for conditional revalidation.
    pub keep: Duration,
}

impl Timing {
    /// The timing of a response stored `now`: its freshness, unless the route fixes a TTL
    /// (counted from now); stale uses from its directives, else the route's `defaults`
    /// (stale-while-revalidate, stale-if-error, keep). Only responses with validators are kept
    /// past their stale uses.
    pub fn new(
        fresh: Freshness,
        d: &Directives,
        ttl_override: Option<Duration>,
        defaults: (Duration, Duration, Duration),
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Timing {
        let (swr_default, sie_default, keep) = defaults;
        let strict = fresh.strict && ttl_override.is_none();
        let (swr, sie) = if strict {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (
                d.stale_while_revalidate.unwrap_or(swr_default),
                d.stale_if_error.unwrap_or(sie_default),
            )
        };
        let has_validators =
            headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
        Timing {
            born: fresh.born,
            fresh_until: match ttl_override {
                Some(ttl) => now + ttl,
                None => fresh.born + fresh.lifetime,
            },
            strict,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            keep: if has_validators { keep } else { Duration::ZERO },
        }
    }
}

/// What a stored object may be used for at a given time, for a given request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usable {
    /// Serve it (fresh, or stale within the request's `max-stale`).
    Fresh,
    /// Serve it and refresh it in the background.
    StaleWhileRevalidate,
    /// Revalidate first; it may still answer if the origin fails.
    Stale,
}

impl Object {
    /// An object from a complete response.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        timing: Timing,
        url: Arc<str>,
        variant: String,
    ) -> Object {
        Object {
            tags: tags(&headers),
            status,
            headers,
            body,
            timing,
            url,
            variant,
            hits: AtomicU64::new(0),
            state: AtomicU8::new(LIVE),
        }
    }

    /// The same stored response with new headers and timing (after a 304).
    pub fn refreshed(&self, headers: HeaderMap, timing: Timing) -> Self {
        let o = Object::new(
            self.status,
            headers,
            self.body.clone(),
            timing,
            self.url.clone(),
            self.variant.clone(),
        );
        o.hits
            .store(self.hits.load(Ordering::Relaxed), Ordering::Relaxed);
        o
    }

    /// Bytes it holds, as the memory tier weighs it.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(self.body.len() + headers + self.url.len() + self.variant.len() + 256)
            .unwrap_or(u32::MAX)
    }

    /// How long the memory tier keeps it: fresh life plus the longest stale use.
    pub fn retention(&self, now: SystemTime) -> Duration {
        let t = &self.timing;
        let extra = t.stale_while_revalidate.max(t.stale_if_error).max(t.keep);
        (t.fresh_until + extra)
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// What it may be used for now, given the request's own directives (RFC 9111 §5.2.1:
    /// no-cache, max-age, min-fresh, max-stale).
    pub fn usable(&self, req: &HeaderMap, now: SystemTime) -> Usable {
        let t = &self.timing;
        if self.state.load(Ordering::Relaxed) != LIVE {
            return Usable::Stale;
        }
        let d = Directives::of(req);
        if cache_control::request_no_cache(req, &d) || d.max_age.is_some_and(|m| self.age(now) > m)
        {
            return Usable::Stale;
        }
        let left = t
            .fresh_until
            .duration_since(now)
            .ok()
            .filter(|l| !l.is_zero());
        match (left, d.min_fresh) {
            (Some(left), Some(min)) if left >= min => return Usable::Fresh,
            (Some(_), Some(_)) => return Usable::Stale,
            (Some(_), None) => return Usable::Fresh,
            (None, _) => {}
        }
        let stale_for = now.duration_since(t.fresh_until).unwrap_or(Duration::ZERO);
        if !t.strict && d.max_stale.is_some_and(|m| stale_for <= m) {
            Usable::Fresh
        } else if stale_for < t.stale_while_revalidate && d.min_fresh.is_none() {
            Usable::StaleWhileRevalidate
        } else {
            Usable::Stale
        }
    }

    /// Whether it may answer when the origin fails now (stale-if-error; soft purges allow it,
    /// unless the response forbids serving it stale: a soft-purged object is stale).
    pub fn serves_on_error(&self, now: SystemTime) -> bool {
        match self.state.load(Ordering::Relaxed) {
            PURGED => false,
            SOFT_PURGED if self.timing.strict => false,
            _ => now < self.timing.fresh_until + self.timing.stale_if_error,
        }
    }

    /// Whether lookups may see it at all.
    pub fn visible(&self) -> bool {
        self.state.load(Ordering::Relaxed) != PURGED
    }

    /// Marks it stale (soft) or gone (hard).
    pub fn purge(&self, soft: bool) {
        let to = if soft { SOFT_PURGED } else { PURGED };
        self.state.fetch_max(to, Ordering::Relaxed);
    }

    /// Its age now (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.timing.born)
            .unwrap_or(Duration::ZERO)
    }

    /// Seconds of freshness left (negative when stale; 0 once soft-purged), for Cache-Status.
    pub fn ttl_secs(&self, now: SystemTime) -> i64 {
        if self.state.load(Ordering::Relaxed) != LIVE {
            return 0;
        }
        match self.timing.fresh_until.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    /// The stored headers with Age set for now.
    pub fn response_headers(&self, now: SystemTime) -> HeaderMap {
        let mut h = self.headers.clone();
        h.insert(header::AGE, HeaderValue::from(self.age(now).as_secs()));
        h
    }
}

/// Purge tags of a response: Surrogate-Key (space separated) and Cache-Tag (comma separated).
pub fn tags(h: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let split = |name: &str, sep: char| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(move |v| v.split(sep))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    };
    for t in split("surrogate-key", ' ')
        .into_iter()
        .chain(split("cache-tag", ','))
    {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// Headers a 304 may not change in the stored response (RFC 9111 §3.2).
pub fn merge_not_modified(stored: &HeaderMap, fresh: &HeaderMap) -> HeaderMap {
    const KEEP: [HeaderName; 4] = [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
        header::CONTENT_RANGE,
    ];
    let mut out = stored.clone();
    for name in fresh.keys() {
        if KEEP.contains(name) || name == header::SET_COOKIE || keeps_weak_etag(name, stored, fresh)
        {
            continue;
        }
        out.remove(name);
        for v in fresh.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// Whether the stored ETag is the weak form of the 304's: the gateway weakened it when it
/// compressed the body, and the origin's strong tag names the uncompressed bytes. A strong tag
/// on the compressed copy would let `If-Range` splice ranges of two codings.
fn keeps_weak_etag(name: &HeaderName, stored: &HeaderMap, fresh: &HeaderMap) -> bool {
    if name != header::ETAG {
        return false;
    }
    let (Some(old), Some(new)) = (stored.get(header::ETAG), fresh.get(header::ETAG)) else {
        return false;
    };
    old.as_bytes().strip_prefix(b"W/") == Some(new.as_bytes())
}

/// All the variants stored for one URL key.
#[derive(Debug, Default)]
pub struct Variants {
    /// Header names the response Varies on.
    pub vary: Vec<HeaderName>,
    /// The variants, newest first.
    pub items: Vec<Arc<Object>>,
}

/// Most variants kept per URL; older ones make room.
pub const MAX_VARIANTS: usize = 16;

impl Variants {
    /// The visible variant with this key.
    pub fn find(&self, variant: &str) -> Option<&Arc<Object>> {
        self.items
            .iter()
            .find(|o| o.variant == variant && o.visible())
    }

    /// A copy with `obj` in place of its variant. A different Vary list drops the old variants.
    pub fn with(&self, vary: Vec<HeaderName>, obj: Arc<Object>) -> Variants {
        let mut items = vec![obj.clone()];
        if vary == self.vary {
            items.extend(
                self.items
                    .iter()
                    .filter(|o| o.variant != obj.variant && o.visible())
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
        }
        Variants { vary, items }
    }

    /// Total weight.
    pub fn weight(&self) -> u32 {
        self.items
            .iter()
            .map(|o| o.weight())
            .fold(0u32, u32::saturating_add)
    }

    /// Longest retention among the variants.
    pub fn retention(&self, now: SystemTime) -> Duration {
        self.items
            .iter()
            .map(|o| o.retention(now))
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_304_never_makes_a_compressed_copys_etag_strong() {
        let stored: HeaderMap = [(header::ETAG, HeaderValue::from_static("W/\"rv\""))]
            .into_iter()
            .collect();
        let fresh: HeaderMap = [
            (header::ETAG, HeaderValue::from_static("\"rv\"")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            ),
        ]
        .into_iter()
        .collect();
        let merged = merge_not_modified(&stored, &fresh);
        assert_eq!(merged[header::ETAG], "W/\"rv\"");
        assert_eq!(merged[header::CACHE_CONTROL], "max-age=60");
        // A plain stored tag is refreshed as usual.
        let plain: HeaderMap = [(header::ETAG, HeaderValue::from_static("\"rv\""))]
            .into_iter()
            .collect();
        assert_eq!(merge_not_modified(&plain, &fresh)[header::ETAG], "\"rv\"");
    }
}
