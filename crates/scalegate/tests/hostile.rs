//! A corpus of hostile and broken requests over HTTP/1.1 and HTTP/2 (smuggling, framing,
//! bare CR/LF/NUL, HTTP/2 field and length errors, bypasses of every route matcher, forwarded
//! header spoofing, h2c upgrades). Each case states the client's answer AND exactly what the
//! recording backend received, so a regression shows at the backend, not only in a status.
//!
//! A request whose body breaks after its head went upstream reaches the backend as a cut
//! request (kept apart by the recorder), never as a complete one: only complete requests are
//! compared here.

mod common;
mod wire;

use common::*;
use scalegate_testkit::Recorder;
use scalegate_testkit::raw_h2::{Frame, H2Answer};
use wire::{Seen, plain};

/// A plain GET of `target` as the backend sees it, with Host `s`.
fn get(target: &str) -> Vec<Seen> {
    vec![plain(&format!("GET {target} HTTP/1.1"), "s", &[], b"")]
}

fn nothing() -> Vec<Seen> {
    vec![]
}

/// One HTTP/1.1 case: (name, bytes, statuses the client reads, what the backend receives).
type H1Case = (&'static str, Vec<u8>, Vec<u16>, Vec<Seen>);

#[rustfmt::skip]
fn h1_cases() -> Vec<H1Case> {
    let r = |s: &str| s.as_bytes().to_vec();
    let post = |extra: &[&str], body: &[u8]| vec![plain("POST /p HTTP/1.1", "s", extra, body)];
    vec![
        // --- Smuggling: framing conflicts and variants ---
        // Both framings: Transfer-Encoding wins and Content-Length is dropped (hyper), and the
        // connection closes after the answer (RFC 9112 §6.3), so the GET behind is never read.
        ("CL+TE", r("POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![200], post(&["transfer-encoding: chunked"], b"0\r\n\r\n")),
        ("TE+CL", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![200], post(&["transfer-encoding: chunked"], b"0\r\n\r\n")),
        ("TE xchunked", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), vec![400], nothing()),
        ("TE chunked, identity", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"), vec![400], nothing()),
        ("TE twice, identity last", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"), vec![400], nothing()),
        ("TE space before colon", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"), vec![400], nothing()),
        ("TE in HTTP/1.0", r("POST /p HTTP/1.0\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), vec![400], nothing()),
        // A probe's finding: the gzip coding was dropped and the backend got a compressed
        // body as if plain (200 before). RFC 9112 §6.1: 501.
        ("TE gzip, chunked", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), vec![501], nothing()),
        ("TE gzip then chunked fields", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), vec![501], nothing()),
        ("TE upper case is chunked", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), vec![200], post(&["transfer-encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n")),
        ("TE tab before value", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), vec![200], post(&["transfer-encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n")),
        ("duplicate CL differing", r("POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), vec![400], nothing()),
        ("CL list differing", r("POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: 3, 4\r\n\r\nabcd"), vec![400], nothing()),
        ("CL plus sign", r("POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: +3\r\n\r\nabc"), vec![400], nothing()),
        ("CL negative", r("POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: -1\r\n\r\n"), vec![400], nothing()),
        ("CL hex", r("POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: 0x3\r\n\r\nabc"), vec![400], nothing()),
        ("CL overflow", r("POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: 99999999999999999999999\r\n\r\n"), vec![400], nothing()),
        ("CL then pipelined GET", r("POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\n\r\nabcGET /admin/x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![200, 403], post(&["content-length: 3"], b"abc")),
        ("chunk size overflow", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n"), vec![400], nothing()),
        ("chunk size not hex", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n"), vec![400], nothing()),
        ("chunk longer than its size", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n"), vec![400], nothing()),
        ("chunk with extension", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n"), vec![200], post(&["transfer-encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n")),
        ("chunked then smuggled GET", r("POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![200, 403], post(&["transfer-encoding: chunked"], b"0\r\n\r\n")),
        // --- Bare CR, LF, NUL and malformed lines ---
        ("obs-fold", r("GET /p HTTP/1.1\r\nHost: s\r\nX-A: a\r\n b\r\n\r\n"), vec![400], nothing()),
        ("bare CR in value", r("GET /p HTTP/1.1\r\nHost: s\r\nX-A: a\rb\r\n\r\n"), vec![400], nothing()),
        ("NUL in value", r("GET /p HTTP/1.1\r\nHost: s\r\nX-A: a\0b\r\n\r\n"), vec![400], nothing()),
        ("NUL in path", r("GET /p\0x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("space in header name", r("GET /p HTTP/1.1\r\nHost: s\r\nX A: b\r\n\r\n"), vec![400], nothing()),
        ("bare LF line ends", r("GET /p HTTP/1.1\nHost: s\n\n"), vec![200], get("/p")),
        ("two spaces in request line", r("GET  /p HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("HTTP/1.2", r("GET /p HTTP/1.2\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("target without slash", r("GET p HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("CONNECT tunnel", r("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"), vec![400], nothing()),
        ("CONNECT to a denied host", r("CONNECT admin.example:443 HTTP/1.1\r\nHost: admin.example:443\r\n\r\n"), vec![400], nothing()),
        ("authority form without CONNECT", r("GET admin.example:80 HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("header without colon", r("GET /p HTTP/1.1\r\nHost: s\r\nX-A\r\n\r\n"), vec![400], nothing()),
        // --- Host rules ---
        ("no Host", r("GET /p HTTP/1.1\r\n\r\n"), vec![400], nothing()),
        ("absolute form without Host", r("GET http://s/p HTTP/1.1\r\n\r\n"), vec![400], nothing()),
        ("two Hosts", r("GET /p HTTP/1.1\r\nHost: s\r\nHost: admin.example\r\n\r\n"), vec![400], nothing()),
        ("Host userinfo", r("GET /p HTTP/1.1\r\nHost: u@admin.example\r\n\r\n"), vec![400], nothing()),
        ("Host with path", r("GET /p HTTP/1.1\r\nHost: admin.example/x\r\n\r\n"), vec![400], nothing()),
        ("Host with space", r("GET /p HTTP/1.1\r\nHost: admin .example\r\n\r\n"), vec![400], nothing()),
        ("absolute form userinfo", r("GET http://u:p@s/p HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        // --- Host matcher ---
        ("host exact", r("GET /p HTTP/1.1\r\nHost: admin.example\r\n\r\n"), vec![403], nothing()),
        ("host trailing dot", r("GET /p HTTP/1.1\r\nHost: admin.example.\r\n\r\n"), vec![403], nothing()),
        ("host upper case", r("GET /p HTTP/1.1\r\nHost: ADMIN.EXAMPLE\r\n\r\n"), vec![403], nothing()),
        ("host dot and port", r("GET /p HTTP/1.1\r\nHost: Admin.Example.:8443\r\n\r\n"), vec![403], nothing()),
        ("host trailing tab", r("GET /p HTTP/1.1\r\nHost: admin.example\t\r\n\r\n"), vec![403], nothing()),
        ("host via absolute form", r("GET http://ADMIN.example./p HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        // A probe's finding: one of two trailing dots was removed and the rest forwarded, past
        // the host-matched rule, to a backend that removes the other.
        ("host two trailing dots", r("GET /p HTTP/1.1\r\nHost: admin.example..\r\n\r\n"), vec![400], nothing()),
        ("absolute form two trailing dots", r("GET http://admin.example../p HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("Host port not a number", r("GET /p HTTP/1.1\r\nHost: s:abc\r\n\r\n"), vec![400], nothing()),
        ("Host port signed", r("GET /p HTTP/1.1\r\nHost: s:+80\r\n\r\n"), vec![400], nothing()),
        ("Host port too long", r("GET /p HTTP/1.1\r\nHost: s:999999\r\n\r\n"), vec![400], nothing()),
        ("Host port over 65535", r("GET /p HTTP/1.1\r\nHost: s:65536\r\n\r\n"), vec![400], nothing()),
        ("Host leading dot", r("GET /p HTTP/1.1\r\nHost: .admin.example\r\n\r\n"), vec![400], nothing()),
        ("Host without a name", r("GET /p HTTP/1.1\r\nHost: :80\r\n\r\n"), vec![400], nothing()),
        ("Host IPv6 not one", r("GET /p HTTP/1.1\r\nHost: [zz]\r\n\r\n"), vec![400], nothing()),
        ("Host after IPv6", r("GET /p HTTP/1.1\r\nHost: [::1]x\r\n\r\n"), vec![400], nothing()),
        // --- Path matcher ---
        ("path exact", r("GET /admin HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path dot-dot", r("GET /public/../admin/x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path encoded dot-dot", r("GET /public/%2e%2e/admin/x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path mixed encoded dots", r("GET /public/.%2E/admin/x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path encoded letter", r("GET /%61dmin/x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path all encoded", r("GET /%61%64%6D%69%6E HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path double slash", r("GET //admin/x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path dot segment", r("GET /./admin/x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path above root", r("GET /../../admin HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path parameter", r("GET /admin;jsessionid=1 HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path fragment", r("GET /admin#x HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path query", r("GET /admin?x=/../public HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("path encoded slash", r("GET /public%2F..%2Fadmin HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("path encoded backslash", r("GET /public%5C..%5Cadmin HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("path backslash", r("GET /public\\..\\admin HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("path bad escape", r("GET /%zzadmin HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("path double encoded", r("GET /%252e%252e/admin HTTP/1.1\r\nHost: s\r\n\r\n"), vec![200], get("/%252e%252e/admin")),
        ("path look-alike", r("GET /%EF%BD%81dmin HTTP/1.1\r\nHost: s\r\n\r\n"), vec![200], get("/%EF%BD%81dmin")),
        ("path upper case is another path", r("GET /ADMIN HTTP/1.1\r\nHost: s\r\n\r\n"), vec![200], get("/ADMIN")),
        ("path prefix is a segment", r("GET /administrator HTTP/1.1\r\nHost: s\r\n\r\n"), vec![200], get("/administrator")),
        // --- Method matcher ---
        ("method exact", r("DELETE /items/1 HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("method lower case", r("delete /items/1 HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("method mixed case", r("Delete /items/1 HTTP/1.1\r\nHost: s\r\n\r\n"), vec![400], nothing()),
        ("method and dot-dot", r("DELETE /x/../items/1 HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        ("method and double slash", r("DELETE //items/1 HTTP/1.1\r\nHost: s\r\n\r\n"), vec![403], nothing()),
        // --- Header matcher ---
        ("header exact", r("GET /p HTTP/1.1\r\nHost: s\r\nx-internal: 1\r\n\r\n"), vec![403], nothing()),
        ("header name case", r("GET /p HTTP/1.1\r\nHost: s\r\nX-INTERNAL: 1\r\n\r\n"), vec![403], nothing()),
        ("header no space", r("GET /p HTTP/1.1\r\nHost: s\r\nx-internal:1\r\n\r\n"), vec![403], nothing()),
        ("header padded value", r("GET /p HTTP/1.1\r\nHost: s\r\nx-internal: \t1 \t\r\n\r\n"), vec![403], nothing()),
        ("header among others", r("GET /p HTTP/1.1\r\nHost: s\r\nx-internal: 0\r\nx-internal: 1\r\n\r\n"), vec![403], nothing()),
        ("header other value", r("GET /p HTTP/1.1\r\nHost: s\r\nx-internal: 01\r\n\r\n"), vec![200], vec![plain("GET /p HTTP/1.1", "s", &["x-internal: 01"], b"")]),
        // --- Forwarded spoofing and Connection nominations ---
        ("spoof XFF", r("GET /p HTTP/1.1\r\nHost: s\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"), vec![200], get("/p")),
        ("spoof XFF twice", r("GET /p HTTP/1.1\r\nHost: s\r\nX-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\n\r\n"), vec![200], get("/p")),
        ("spoof XFP", r("GET /p HTTP/1.1\r\nHost: s\r\nX-Forwarded-Proto: https\r\n\r\n"), vec![200], get("/p")),
        ("spoof XFH", r("GET /p HTTP/1.1\r\nHost: s\r\nX-Forwarded-Host: evil.example\r\n\r\n"), vec![200], get("/p")),
        ("spoof X-Real-IP", r("GET /p HTTP/1.1\r\nHost: s\r\nX-Real-IP: 10.0.0.1\r\n\r\n"), vec![200], get("/p")),
        ("spoof Forwarded", r("GET /p HTTP/1.1\r\nHost: s\r\nForwarded: for=10.0.0.1;proto=https;host=evil\r\n\r\n"), vec![200], get("/p")),
        // Found from outside (session 21): names frameworks believe passed through as sent.
        ("spoof X-Forwarded-Ssl", r("GET /p HTTP/1.1\r\nHost: s\r\nX-Forwarded-Ssl: on\r\nX-Forwarded-Scheme: https\r\n\r\n"), vec![200], get("/p")),
        ("spoof X-Forwarded-Port and -Prefix", r("GET /p HTTP/1.1\r\nHost: s\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\n\r\n"), vec![200], get("/p")),
        ("spoof Front-End-Https", r("GET /p HTTP/1.1\r\nHost: s\r\nFront-End-Https: on\r\nX-Url-Scheme: https\r\n\r\n"), vec![200], get("/p")),
        ("spoof XFF to pass deny", r("GET /admin HTTP/1.1\r\nHost: s\r\nX-Forwarded-For: 203.0.113.1\r\nX-Real-IP: 203.0.113.1\r\n\r\n"), vec![403], nothing()),
        ("nominate X-Request-Id", r("GET /p HTTP/1.1\r\nHost: s\r\nConnection: x-request-id\r\n\r\n"), vec![200], get("/p")),
        ("nominate XFF", r("GET /p HTTP/1.1\r\nHost: s\r\nConnection: X-Forwarded-For, x-forwarded-proto\r\n\r\n"), vec![200], get("/p")),
        ("nominate Host", r("GET /p HTTP/1.1\r\nHost: s\r\nConnection: host\r\n\r\n"), vec![200], get("/p")),
        ("nominate Content-Length", r("POST /p HTTP/1.1\r\nHost: s\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\nabc"), vec![200], post(&["content-length: 3"], b"abc")),
        ("nominate a client header", r("GET /p HTTP/1.1\r\nHost: s\r\nConnection: x-drop\r\nX-Drop: 1\r\n\r\n"), vec![200], get("/p")),
        // --- Upgrades ---
        ("h2c upgrade", r("GET /p HTTP/1.1\r\nHost: s\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"), vec![200], get("/p")),
        ("h2c upgrade, settings not nominated", r("GET /p HTTP/1.1\r\nHost: s\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n"), vec![200], get("/p")),
        ("H2C upper case", r("GET /p HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: H2C\r\n\r\n"), vec![200], get("/p")),
        ("h2c with websocket", r("GET /p HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: websocket, h2c\r\n\r\n"), vec![200], get("/p")),
        ("unknown upgrade", r("GET /p HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: foo/1\r\n\r\n"), vec![200], get("/p")),
        // --- Bodies on methods that seldom have one ---
        ("GET chunked body", r("GET /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), vec![200], vec![plain("GET /p HTTP/1.1", "s", &["transfer-encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n")]),
        ("HEAD chunked body", r("HEAD /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), vec![200], vec![plain("HEAD /p HTTP/1.1", "s", &["transfer-encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n")]),
        ("GET length body", r("GET /p HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\n\r\nabc"), vec![200], vec![plain("GET /p HTTP/1.1", "s", &["content-length: 3"], b"abc")]),
        ("OPTIONS chunked body", r("OPTIONS /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), vec![200], vec![plain("OPTIONS /p HTTP/1.1", "s", &["transfer-encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n")]),
    ]
}

/// What an HTTP/2 case must get: an exact status, or a refusal (400 or a stream/connection
/// error) for what HTTP/2 itself calls malformed.
#[derive(Debug, Clone, Copy)]
enum H2Want {
    Status(u16),
    Refused,
}

/// One HTTP/2 case: (name, method, path, authority, extra fields, frames, want, backend).
type H2Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<Frame>,
    H2Want,
    Vec<Seen>,
);

#[rustfmt::skip]
fn h2_cases() -> Vec<H2Case> {
    use H2Want::{Refused, Status};
    let data = |d: &[u8], end: bool| vec![Frame::Data(d.to_vec(), end)];
    vec![
        // --- Malformed fields and lengths (RFC 9113 §8.1.1, §8.2) ---
        ("CR in value", "GET", "/p", "s", vec![("x-a", "a\rb")], vec![], Refused, nothing()),
        ("LF in value", "GET", "/p", "s", vec![("x-a", "a\nb")], vec![], Refused, nothing()),
        ("CRLF injection", "GET", "/p", "s", vec![("x-a", "a\r\nx-forwarded-for: 1.1.1.1")], vec![], Refused, nothing()),
        ("NUL in value", "GET", "/p", "s", vec![("x-a", "a\0b")], vec![], Refused, nothing()),
        ("CRLF in path", "GET", "/p\r\nx: y", "s", vec![], vec![], Refused, nothing()),
        ("space in path", "GET", "/p HTTP/1.1\r\nHost: evil", "s", vec![], vec![], Refused, nothing()),
        ("upper-case name", "GET", "/p", "s", vec![("X-A", "1")], vec![], Refused, nothing()),
        ("connection header", "GET", "/p", "s", vec![("connection", "close")], vec![], Refused, nothing()),
        ("transfer-encoding", "POST", "/p", "s", vec![("transfer-encoding", "chunked")], data(b"0\r\n\r\n", true), Refused, nothing()),
        ("upgrade h2c", "GET", "/p", "s", vec![("upgrade", "h2c")], vec![], Refused, nothing()),
        ("keep-alive", "GET", "/p", "s", vec![("keep-alive", "1")], vec![], Refused, nothing()),
        ("te gzip", "GET", "/p", "s", vec![("te", "gzip")], vec![], Refused, nothing()),
        ("CL larger than data", "POST", "/p", "s", vec![("content-length", "5")], data(b"abc", true), Refused, nothing()),
        ("CL smaller than data", "POST", "/p", "s", vec![("content-length", "2")], data(b"abcde", true), Refused, nothing()),
        ("CL not a number", "POST", "/p", "s", vec![("content-length", "x")], data(b"abc", true), Refused, nothing()),
        ("two CLs differing", "POST", "/p", "s", vec![("content-length", "3"), ("content-length", "4")], data(b"abc", true), Refused, nothing()),
        ("empty path", "GET", "", "s", vec![], vec![], Refused, nothing()),
        ("path without slash", "GET", "admin", "s", vec![], vec![], Refused, nothing()),
        ("authority userinfo", "GET", "/p", "u@admin.example", vec![], vec![], Refused, nothing()),
        ("Host differs from authority", "GET", "/p", "s", vec![("host", "admin.example")], vec![], Refused, nothing()),
        ("method lower case", "get", "/p", "s", vec![], vec![], Refused, nothing()),
        ("encoded slash", "GET", "/public%2F..%2Fadmin", "s", vec![], vec![], Refused, nothing()),
        ("bad escape", "GET", "/%zz", "s", vec![], vec![], Refused, nothing()),
        // --- Matcher bypasses ---
        ("path dot-dot", "GET", "/public/../admin/x", "s", vec![], vec![], Status(403), nothing()),
        ("path encoded dots", "GET", "/public/%2E%2e/admin/x", "s", vec![], vec![], Status(403), nothing()),
        ("path encoded letter", "GET", "/%61dmin/x", "s", vec![], vec![], Status(403), nothing()),
        ("path double slash", "GET", "//admin/x", "s", vec![], vec![], Status(403), nothing()),
        ("path dot", "GET", "/./admin/x", "s", vec![], vec![], Status(403), nothing()),
        ("path parameter", "GET", "/admin;x", "s", vec![], vec![], Status(403), nothing()),
        ("authority trailing dot", "GET", "/p", "admin.example.", vec![], vec![], Status(403), nothing()),
        ("authority two trailing dots", "GET", "/p", "admin.example..", vec![], vec![], Status(400), nothing()),
        ("authority upper case", "GET", "/p", "ADMIN.Example", vec![], vec![], Status(403), nothing()),
        ("authority dot and port", "GET", "/p", "admin.example.:443", vec![], vec![], Status(403), nothing()),
        ("method matcher", "DELETE", "/x/../items/1", "s", vec![], vec![], Status(403), nothing()),
        ("header matcher", "GET", "/p", "s", vec![("x-internal", "1")], vec![], Status(403), nothing()),
        ("header matcher among others", "GET", "/p", "s", vec![("x-internal", "0"), ("x-internal", "1")], vec![], Status(403), nothing()),
        // --- Forwarded spoofing, bodies ---
        ("spoof XFP", "GET", "/p", "s", vec![("x-forwarded-proto", "https")], vec![], Status(200), get("/p")),
        ("spoof all", "GET", "/p", "s", vec![("x-forwarded-for", "1.2.3.4"), ("x-forwarded-host", "evil"), ("x-real-ip", "1.2.3.4"), ("forwarded", "for=1.2.3.4")], vec![], Status(200), get("/p")),
        ("spoof XFF to pass deny", "GET", "/admin", "s", vec![("x-forwarded-for", "203.0.113.1")], vec![], Status(403), nothing()),
        ("GET body without CL", "GET", "/p", "s", vec![], data(b"abc", true), Status(200), vec![plain("GET /p HTTP/1.1", "s", &["transfer-encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n")]),
        ("DELETE body with CL", "DELETE", "/p", "s", vec![("content-length", "3")], data(b"abc", true), Status(200), vec![plain("DELETE /p HTTP/1.1", "s", &["content-length: 3"], b"abc")]),
        ("POST body in two frames", "POST", "/p", "s", vec![], vec![Frame::Data(b"ab".to_vec(), false), Frame::Data(b"c".to_vec(), true)], Status(200), vec![plain("POST /p HTTP/1.1", "s", &["transfer-encoding: chunked"], b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")]),
    ]
}

#[tokio::test]
async fn hostile_requests_are_refused_or_normalised_before_the_backend() {
    let rec = Recorder::start().await;
    let gw = GatewayProcess::start(BIN, &wire::deny_routes(&rec)).await;
    let h1 = h1_cases();
    let h2 = h2_cases();
    assert!(h1.len() + h2.len() >= 100, "{} cases", h1.len() + h2.len());
    let mut failures = Vec::new();
    for (name, bytes, want, backend) in h1 {
        rec.clear();
        let got = wire::h1(gw.http, &bytes).await;
        let seen = settled(&rec, backend.len()).await;
        if got != want || seen != backend {
            failures.push(format!(
                "HTTP/1.1 {name}: client got {got:?} (want {want:?}); backend got {seen:#?} (want {backend:#?})"
            ));
        }
    }
    for (name, method, path, authority, extra, frames, want, backend) in h2 {
        rec.clear();
        let got = wire::h2(gw.http, method, path, authority, &extra, &frames).await;
        let seen = settled(&rec, backend.len()).await;
        let client_ok = match want {
            H2Want::Status(s) => got == H2Answer::Status(s),
            H2Want::Refused => matches!(
                got,
                H2Answer::Status(400) | H2Answer::Reset(_) | H2Answer::GoAway(_)
            ),
        };
        if !client_ok || seen != backend {
            failures.push(format!(
                "HTTP/2 {name}: client got {got:?} (want {want:?}); backend got {seen:#?} (want {backend:#?})"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Still serving normally after all of it.
    let r = Client::http1().get(gw.http, "/p").await.expect("response");
    assert_eq!(r.status, 200);
    quiescent(&gw).await;
}

/// The complete requests the recorder holds once `n` arrived (or 150 ms passed, for cases
/// that expect nothing, so a late smuggled request would still be seen).
async fn settled(rec: &Recorder, n: usize) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(150);
    while tokio::time::Instant::now() < deadline {
        if n > 0 && rec.requests().len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    rec.requests().iter().map(|r| wire::seen(r)).collect()
}

/// A probe's finding (CVE-2023-44487, rapid reset, in the variant that lets each stream be
/// accepted before resetting it): one h2c connection had 7,900 requests reach the backend in
/// 4 s, with no GOAWAY, and other clients got 504s. A connection that cancels most of the
/// streams it opens is now closed once it has cancelled 100.
#[tokio::test]
async fn a_client_cancelling_the_streams_it_opened_is_cut_off() {
    let bs = backends(1).await;
    bs[0].set_delay(std::time::Duration::from_millis(200));
    let gw = gateway(&bs, "").await;
    let pause = std::time::Duration::from_millis(50);
    let (opened, cut) =
        scalegate_testkit::rapid_reset::rapid_reset(gw.http, b"/", 20, 100, pause).await;
    assert!(cut, "the connection was let run: {opened} streams opened");
    assert!(opened <= 500, "{opened} streams opened before it was cut");
    // Other clients, and this one on a new connection, are served.
    bs[0].set_delay(std::time::Duration::ZERO);
    let r = Client::h2c().get(gw.http, "/").await.expect("response");
    assert_eq!(r.status, 200);
    quiescent(&gw).await;
}
