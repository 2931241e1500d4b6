//! Range requests answered from a stored complete response (RFC 9110 §14): one byte range
//! becomes a 206 with the right slice of the body, an unsatisfiable one a 416. Several ranges in
//! one request, other units, syntax errors and a failed If-Range get the whole 200, as
//! RFC 9110 §14.2 allows.

use std::ops::Range;

use http::{HeaderMap, StatusCode, header};

use super::freshness::http_date;
use super::object::Object;

/// What a request's Range header makes of a stored response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ranged {
    /// The whole response (no Range, or one that is ignored).
    Full,
    /// A 206 with these bytes of the body.
    Partial(Range<usize>),
    /// A 416: the range starts past the end.
    Unsatisfiable,
}

/// Evaluates the Range (and If-Range) of a GET against a stored response.
pub fn evaluate(req: &HeaderMap, o: &Object) -> Ranged {
    let mut lines = req.get_all(header::RANGE).iter();
    let (Some(range), None) = (lines.next(), lines.next()) else {
        return Ranged::Full;
    };
    if o.status != StatusCode::OK || !if_range_holds(req, o) {
        return Ranged::Full;
    }
    let Ok(range) = range.to_str() else {
        return Ranged::Full;
    };
    match parse(range) {
        Some(spec) => spec.resolve(o.body.len()),
        None => Ranged::Full,
    }
}

/// One byte-range-spec: `first-[last]` or `-suffix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spec {
    From(u64, Option<u64>),
    Suffix(u64),
}

impl Spec {
    fn resolve(self, len: usize) -> Ranged {
        let len64 = len as u64;
        match self {
            Spec::From(first, _) if first >= len64 => Ranged::Unsatisfiable,
            Spec::From(first, last) => {
                let end = last.map_or(len64, |l| l.saturating_add(1).min(len64));
                Ranged::Partial(first as usize..end as usize)
            }
            Spec::Suffix(0) => Ranged::Unsatisfiable,
            Spec::Suffix(_) if len == 0 => Ranged::Unsatisfiable,
            Spec::Suffix(n) => Ranged::Partial(len - n.min(len64) as usize..len),
        }
    }
}

/// A `bytes=` header with exactly one valid range; None otherwise (the Range is ignored).
fn parse(v: &str) -> Option<Spec> {
    let (unit, set) = v.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut items = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(item), None) = (items.next(), items.next()) else {
        return None;
    };
    let (first, last) = item.split_once('-')?;
    let num = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    if first.trim().is_empty() {
        return num(last).map(Spec::Suffix);
    }
    let first = num(first)?;
    if last.trim().is_empty() {
        return Some(Spec::From(first, None));
    }
    let last = num(last)?;
    (last >= first).then_some(Spec::From(first, Some(last)))
}

/// If-Range (RFC 9110 §13.1.5): an entity-tag must match the stored one strongly; a date must
/// equal its Last-Modified. Absent: holds.
fn if_range_holds(req: &HeaderMap, o: &Object) -> bool {
    let Some(cond) = req.get(header::IF_RANGE) else {
        return true;
    };
    let cond = cond.as_bytes().trim_ascii();
    if cond.starts_with(b"\"") || cond.starts_with(b"W/") {
        let etag = o
            .headers
            .get(header::ETAG)
            .map(|e| e.as_bytes().trim_ascii());
        return !cond.starts_with(b"W/")
            && etag.is_some_and(|e| !e.starts_with(b"W/") && e == cond);
    }
    let date = req.get(header::IF_RANGE).and_then(http_date);
    let lm = o.headers.get(header::LAST_MODIFIED).and_then(http_date);
    date.is_some() && date == lm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_14_1_2_byte_ranges() {
        let p = |v| parse(v).map(|s| s.resolve(1000));
        assert_eq!(p("bytes=0-99"), Some(Ranged::Partial(0..100)));
        assert_eq!(p("Bytes = 900-"), Some(Ranged::Partial(900..1000)));
        assert_eq!(p("bytes=-100"), Some(Ranged::Partial(900..1000)));
        assert_eq!(p("bytes=-5000"), Some(Ranged::Partial(0..1000)));
        assert_eq!(p("bytes=990-5000"), Some(Ranged::Partial(990..1000)));
        assert_eq!(p("bytes=1000-"), Some(Ranged::Unsatisfiable));
        assert_eq!(p("bytes=-0"), Some(Ranged::Unsatisfiable));
        // Ignored: several ranges, other units, nonsense.
        for v in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=",
            "0-1",
        ] {
            assert_eq!(parse(v), None, "{v}");
        }
    }
}
