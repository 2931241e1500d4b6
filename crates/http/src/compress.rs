//! Response compression: gzip, br and zstd chosen from Accept-Encoding q-values, only for
//! compressible types at or above a size, never over an existing Content-Encoding, and always
//! with `Vary: Accept-Encoding` so caches (ours included) keep the codings apart.

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::cache_control::Directives;

use crate::body::{BoxError, RespBody};

/// The codings a request accepts, with their q-values, as its Accept-Encoding lists them.
fn accepted(headers: &HeaderMap) -> Vec<(&str, f32)> {
    let mut accepted: Vec<(&str, f32)> = Vec::new();
    for line in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(line) = line.to_str() else { continue };
        for item in line.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            // A q-value that is not one (RFC 9110 §12.4.2: 0 to 1) accepts nothing.
            let q = match parts.find_map(|p| p.trim().strip_prefix("q=")) {
                None => 1.0,
                Some(q) => q
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))
                    .unwrap_or(0.0),
            };
            accepted.push((coding, q));
        }
    }
    accepted
}

/// The q-value `accepted` gives a coding: its own entry, else `*`'s, else 0.
fn q_value(accepted: &[(&str, f32)], coding: &str) -> f32 {
    let exact = accepted.iter().find(|(c, _)| {
        c.eq_ignore_ascii_case(coding)
            || Encoding::parse(c).is_some_and(|e| Some(e) == Encoding::parse(coding))
    });
    exact
        .or_else(|| accepted.iter().find(|(c, _)| *c == "*"))
        .map_or(0.0, |(_, q)| *q)
}

/// Whether a request can take a body in the content codings `codings` (a Content-Encoding
/// value). Identity always; a request without Accept-Encoding takes nothing else (RFC 9110
/// §12.5.3 would allow any coding, but such clients rarely decode one).
pub fn accepts(headers: &HeaderMap, codings: &HeaderValue) -> bool {
    let Ok(codings) = codings.to_str() else {
        return false;
    };
    let accepted = accepted(headers);
    codings
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .all(|c| q_value(&accepted, c) > 0.0)
}

/// The coding to use for a request: the acceptable one with the highest q-value, ties broken by
/// the gateway's order; None means identity.
pub fn negotiate(headers: &HeaderMap, offered: &[Encoding]) -> Option<Encoding> {
    let accepted = accepted(headers);
    let q_of = |e: Encoding| q_value(&accepted, e.token());
    let mut best: Option<(Encoding, f32)> = None;
    for &e in offered {
        let q = q_of(e);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((e, q));
        }
    }
    // A client that prefers the body as it is (`identity` named above the codings) gets it.
    let identity = accepted
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case("identity"))
        .map(|(_, q)| *q);
    best.filter(|(_, q)| identity.is_none_or(|i| *q >= i))
        .map(|(e, _)| e)
}

/// Whether a response is one the gateway compresses (whatever this client accepts).
pub fn eligible(spec: &CompressionSpec, status: StatusCode, h: &HeaderMap) -> bool {
    if !status.is_success()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::PARTIAL_CONTENT
        || h.contains_key(header::CONTENT_RANGE)
    {
        return false;
    }
    if h.get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return false;
    }
    if Directives::of(h).no_transform {
        return false;
    }
    let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "text/event-stream" || !spec.content_types.iter().any(|p| media.starts_with(p)) {
        return false;
    }
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    length.is_none_or(|n| n >= spec.min_bytes)
}

/// Compresses an eligible response for this request: adds `Vary: Accept-Encoding`, and when
/// the client accepts one of the offered codings, encodes the body as it streams.
pub fn apply(
    spec: &CompressionSpec,
    req: &HeaderMap,
    method: &Method,
    head: &mut http::response::Parts,
    body: RespBody,
) -> (RespBody, Option<Encoding>) {
    if !eligible(spec, head.status, &head.headers) {
        return (body, None);
    }
    add_vary(&mut head.headers);
    let Some(enc) = negotiate(req, &spec.encodings) else {
        return (body, None);
    };
    let h = &mut head.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(enc.token()),
    );
    // The encoded bytes are a different representation: a strong validator must not claim
    // byte equality with the identity one.
    if let Some(etag) = h.get(header::ETAG).and_then(|v| v.to_str().ok())
        && !etag.starts_with("W/")
        && let Ok(weak) = HeaderValue::try_from(format!("W/{etag}"))
    {
        h.insert(header::ETAG, weak);
    }
    // HEAD gets the headers GET would (RFC 9110 §9.3.2), and has no body to encode.
    if method == Method::HEAD {
        return (body, Some(enc));
    }
    (encode(body, enc), Some(enc))
}

/// Adds `Accept-Encoding` to Vary unless it is there (or Vary is `*`).
fn add_vary(h: &mut HeaderMap) {
    let present = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|n| {
            let n = n.trim();
            n == "*" || n.eq_ignore_ascii_case("accept-encoding")
        })
    });
    if !present {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// The body, encoded as it streams.
pub fn encode(body: RespBody, enc: Encoding) -> RespBody {
    let input = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let chunk = 16 * 1024;
    let out = match enc {
        Encoding::Gzip => stream(ReaderStream::with_capacity(
            GzipEncoder::with_quality(input, Level::Default),
            chunk,
        )),
        Encoding::Br => stream(ReaderStream::with_capacity(
            BrotliEncoder::with_quality(input, Level::Precise(4)),
            chunk,
        )),
        Encoding::Zstd => stream(ReaderStream::with_capacity(
            ZstdEncoder::with_quality(input, Level::Default),
            chunk,
        )),
    };
    RespBody::Boxed(out)
}

fn stream<S>(s: S) -> http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>
where
    S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    StreamBody::new(s.map_ok(Frame::data).map_err(BoxError::from)).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Encoding; 3] = [Encoding::Br, Encoding::Zstd, Encoding::Gzip];

    fn ae(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, v.parse().unwrap());
        h
    }

    #[test]
    fn q_values_decide_and_ties_go_to_our_order() {
        assert_eq!(negotiate(&ae("gzip, br"), &ALL), Some(Encoding::Br));
        assert_eq!(
            negotiate(&ae("gzip;q=1, br;q=0.5"), &ALL),
            Some(Encoding::Gzip)
        );
        assert_eq!(negotiate(&ae("br;q=0, gzip"), &ALL), Some(Encoding::Gzip));
        assert_eq!(negotiate(&ae("identity"), &ALL), None);
        assert_eq!(negotiate(&ae("*"), &ALL), Some(Encoding::Br));
        assert_eq!(negotiate(&ae("*;q=0.1, zstd"), &ALL), Some(Encoding::Zstd));
        assert_eq!(negotiate(&HeaderMap::new(), &ALL), None);
        assert_eq!(negotiate(&ae("br"), &[Encoding::Gzip]), None);
        // Found from outside (session 20): identity preferred, and q-values that are not.
        assert_eq!(negotiate(&ae("identity, gzip;q=0.5"), &ALL), None);
        assert_eq!(
            negotiate(&ae("identity;q=0.5, gzip"), &ALL),
            Some(Encoding::Gzip)
        );
        assert_eq!(negotiate(&ae("gzip;q=abc"), &ALL), None);
        assert_eq!(
            negotiate(&ae("zstd;q=1.1, gzip;q=0.2"), &ALL),
            Some(Encoding::Gzip)
        );
    }

    fn resp(ct: &str, len: Option<u64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        if let Some(n) = len {
            h.insert(header::CONTENT_LENGTH, n.into());
        }
        h
    }

    #[test]
    fn eligibility() {
        let s = CompressionSpec::default();
        let ok = |h: &HeaderMap| eligible(&s, StatusCode::OK, h);
        assert!(ok(&resp("text/html; charset=utf-8", Some(5000))));
        assert!(ok(&resp("application/json", None)));
        assert!(!ok(&resp("application/json", Some(100))), "below threshold");
        assert!(!ok(&resp("image/png", Some(5000))), "not compressible");
        assert!(
            !ok(&resp("text/event-stream", None)),
            "streams are not buffered"
        );
        let mut h = resp("text/html", Some(5000));
        h.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(!ok(&h), "never double-compress");
        let mut h = resp("text/html", Some(5000));
        h.insert(header::CACHE_CONTROL, "no-transform".parse().unwrap());
        assert!(!ok(&h));
        let h = resp("text/html", Some(5000));
        assert!(!eligible(&s, StatusCode::PARTIAL_CONTENT, &h));
    }

    /// Found from outside (session 20): HEAD on a compressing route got the identity headers
    /// (Content-Length, strong ETag, no Vary) where GET was compressed.
    #[test]
    fn head_gets_the_headers_get_would() {
        let s = CompressionSpec::default();
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.headers = resp("text/html", Some(5000));
        head.headers.insert(header::ETAG, "\"v1\"".parse().unwrap());
        let (_, enc) = apply(&s, &ae("gzip"), &Method::HEAD, &mut head, RespBody::empty());
        assert_eq!(enc, Some(Encoding::Gzip));
        assert_eq!(head.headers[header::CONTENT_ENCODING], "gzip");
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(head.headers[header::ETAG], "W/\"v1\"");
        assert_eq!(head.headers[header::VARY], "Accept-Encoding");
    }

    #[tokio::test]
    async fn encodes_and_round_trips() {
        use async_compression::tokio::bufread::GzipDecoder;
        use tokio::io::AsyncReadExt;
        let text = Bytes::from("hello scalegate ".repeat(500));
        let body = encode(RespBody::full(text.clone()), Encoding::Gzip);
        let gz = body.collect().await.unwrap().to_bytes();
        assert!(gz.len() < text.len() / 10);
        let mut out = Vec::new();
        GzipDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, text);
    }
}

/// A content coding the gateway can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Brotli.
    Br,
    /// Zstandard.
    Zstd,
    /// Gzip.
    Gzip,
}

impl Encoding {
    /// The token in Accept-Encoding / Content-Encoding.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    /// Parses a token.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "br" => Some(Encoding::Br),
            "zstd" => Some(Encoding::Zstd),
            "gzip" | "x-gzip" => Some(Encoding::Gzip),
            _ => None,
        }
    }
}

/// A route's response compression.
#[derive(Clone, Debug, PartialEq)]
pub struct CompressionSpec {
    /// Bodies smaller than this (by Content-Length) are sent as they are (default 1024).
    pub min_bytes: u64,
    /// Codings offered, in the gateway's order of preference (default br, zstd, gzip).
    pub encodings: Vec<Encoding>,
    /// Content types compressed, as prefixes of the media type (default text/*, JSON,
    /// JavaScript, XML, SVG, WASM).
    pub content_types: Vec<String>,
}

impl Default for CompressionSpec {
    fn default() -> Self {
        CompressionSpec {
            min_bytes: 1024,
            encodings: vec![Encoding::Br, Encoding::Zstd, Encoding::Gzip],
            content_types: [
                "text/",
                "application/json",
                "application/javascript",
                "application/xml",
                "application/xhtml+xml",
                "application/rss+xml",
                "application/atom+xml",
                "application/wasm",
                "image/svg+xml",
                "application/problem+json",
                "application/ld+json",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}
