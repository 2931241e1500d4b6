//! Cache-Control directives (RFC 9111 §5.2), parsed as the RFC says and never allocating:
//! directive names are case-insensitive, values may be tokens or quoted strings (a comma inside
//! quotes does not end the directive), whitespace around names, `=` and values is ignored.
//!
//! The same parser reads a request's directives, a response's, and the targeted fields of
//! RFC 9213 (`CDN-Cache-Control` and the like).

use std::time::Duration;

use http::{HeaderMap, HeaderValue, header};

/// The largest delta-seconds a cache must handle; bigger values mean this (RFC 9111 §1.2.2).
pub const MAX_DELTA: Duration = Duration::from_secs(1 << 31);

/// The directives of one Cache-Control header set (all its lines). A directive that appears
/// twice keeps its first occurrence (RFC 9111 §4.2.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache`, unqualified or with a field list (treated as unqualified).
    pub no_cache: bool,
    /// `no-store`.
    pub no_store: bool,
    /// `private`, unqualified or with a field list (treated as unqualified).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `no-transform`.
    pub no_transform: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `must-understand`.
    pub must_understand: bool,
    /// `immutable`.
    pub immutable: bool,
    /// `only-if-cached` (a request directive).
    pub only_if_cached: bool,
    /// `max-age=N`; an invalid value reads as 0 (stale, RFC 9111 §4.2.1).
    pub max_age: Option<Duration>,
    /// `s-maxage=N`; an invalid value reads as 0.
    pub s_maxage: Option<Duration>,
    /// `min-fresh=N` (request); an invalid value is ignored.
    pub min_fresh: Option<Duration>,
    /// `max-stale[=N]` (request); without a value, any staleness ([`MAX_DELTA`]); an invalid
    /// value is ignored.
    pub max_stale: Option<Duration>,
    /// `stale-while-revalidate=N` (RFC 5861); an invalid value is ignored.
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error=N` (RFC 5861); an invalid value is ignored.
    pub stale_if_error: Option<Duration>,
}

/// One directive of a field value: its name as sent, and its value (quotes removed, escapes
/// left as they are) if it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directive<'a> {
    /// The name, as sent (compare with `eq_ignore_ascii_case`).
    pub name: &'a str,
    /// The value without its quotes.
    pub value: Option<&'a str>,
}

/// The directives of one field line, in order. Empty list elements are skipped.
pub fn directives(line: &str) -> impl Iterator<Item = Directive<'_>> {
    let mut rest = line;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let (item, tail) = split_item(rest);
            rest = tail;
            if let Some(d) = directive(item) {
                return Some(d);
            }
        }
    })
}

/// The elements of a comma-separated list (RFC 9110 §5.6.1), commas inside quoted strings
/// kept, each trimmed of whitespace, empty ones skipped.
pub fn list(line: &str) -> impl Iterator<Item = &str> {
    let mut rest = line;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            let (item, tail) = split_item(rest);
            rest = tail;
            let item = item.trim_matches([' ', '\t']);
            if !item.is_empty() {
                return Some(item);
            }
        }
        None
    })
}

/// Splits off the first list element: up to the first comma outside a quoted string.
fn split_item(s: &str) -> (&str, &str) {
    let b = s.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b',' if !quoted => return (&s[..i], &s[i + 1..]),
            _ => {}
        }
        i += 1;
    }
    (s, "")
}

fn directive(item: &str) -> Option<Directive<'_>> {
    let ows: &[char] = &[' ', '\t'];
    let (name, value) = match item.split_once('=') {
        Some((n, v)) => (n.trim_matches(ows), Some(unquote(v.trim_matches(ows)))),
        None => (item.trim_matches(ows), None),
    };
    (!name.is_empty()).then_some(Directive { name, value })
}

/// The content of a quoted string (up to its closing quote), or the token as it is.
fn unquote(v: &str) -> &str {
    let Some(inner) = v.strip_prefix('"') else {
        return v;
    };
    let b = inner.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'"' => return &inner[..i],
            _ => {}
        }
        i += 1;
    }
    inner
}

/// `delta-seconds` (RFC 9111 §1.2.2): digits only, capped at [`MAX_DELTA`].
pub fn delta_seconds(v: &str) -> Option<Duration> {
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // All digits: only an overflow fails to parse, and that is past the cap anyway.
    let secs = v.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_DELTA))
}

impl Directives {
    /// Parses every Cache-Control line of `headers`; unknown directives are ignored.
    pub fn of(headers: &HeaderMap) -> Self {
        Self::from_lines(headers.get_all(header::CACHE_CONTROL))
    }

    /// Parses the lines of one field (Cache-Control or a targeted field).
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let mut d = Directives::default();
        for line in lines {
            // Not visible ASCII: not a valid field value; parse what is readable.
            let line = std::str::from_utf8(line.as_bytes()).unwrap_or("");
            for dir in directives(line) {
                d.apply(dir);
            }
        }
        d
    }

    fn apply(&mut self, dir: Directive<'_>) {
        let is = |n: &str| dir.name.eq_ignore_ascii_case(n);
        let secs = dir.value.and_then(delta_seconds);
        let first = |slot: &mut Option<Duration>, v: Option<Duration>| {
            if slot.is_none() {
                *slot = v;
            }
        };
        if is("no-cache") {
            self.no_cache = true;
        } else if is("no-store") {
            self.no_store = true;
        } else if is("private") {
            self.private = true;
        } else if is("public") {
            self.public = true;
        } else if is("no-transform") {
            self.no_transform = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("must-understand") {
            self.must_understand = true;
        } else if is("immutable") {
            self.immutable = true;
        } else if is("only-if-cached") {
            self.only_if_cached = true;
        } else if is("max-age") {
            first(&mut self.max_age, Some(secs.unwrap_or(Duration::ZERO)));
        } else if is("s-maxage") {
            first(&mut self.s_maxage, Some(secs.unwrap_or(Duration::ZERO)));
        } else if is("min-fresh") {
            first(&mut self.min_fresh, secs);
        } else if is("max-stale") {
            let v = match dir.value {
                None => Some(MAX_DELTA),
                Some(_) => secs,
            };
            first(&mut self.max_stale, v);
        } else if is("stale-while-revalidate") {
            first(&mut self.stale_while_revalidate, secs);
        } else if is("stale-if-error") {
            first(&mut self.stale_if_error, secs);
        }
    }

    /// Whether a shared cache may serve this response stale at all (RFC 9111 §4.2.4:
    /// must-revalidate, proxy-revalidate, no-cache and s-maxage forbid it).
    pub fn allows_stale(&self) -> bool {
        !(self.must_revalidate || self.proxy_revalidate || self.no_cache || self.s_maxage.is_some())
    }
}

/// Whether a request asks the cache not to answer from storage without revalidating
/// (`Cache-Control: no-cache`, or `Pragma: no-cache` without Cache-Control, RFC 9111 §5.4).
pub fn request_no_cache(headers: &HeaderMap, d: &Directives) -> bool {
    d.no_cache
        || (!headers.contains_key(header::CACHE_CONTROL)
            && headers.get_all(header::PRAGMA).iter().any(|v| {
                let line = std::str::from_utf8(v.as_bytes()).unwrap_or("");
                directives(line).any(|d| d.name.eq_ignore_ascii_case("no-cache"))
            }))
}

#[cfg(test)]
mod tests;
