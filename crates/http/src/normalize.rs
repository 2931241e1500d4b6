//! One normalisation of the request target, before anything looks at it: routing, allow/deny,
//! rate-limit keys, cache keys, the access log and the request sent upstream all see the same
//! path and host, so a spelling the backend treats as equal cannot dodge a rule.
//!
//! The path (as Envoy's `normalize_path` + `merge_slashes` and HAProxy's `normalize-uri` do):
//! percent-encoded unreserved characters are decoded (`%61` → `a`, `%2E` → `.`), the remaining
//! escapes upper-cased (`%3f` → `%3F`), runs of `/` merged (optional), dot-segments removed
//! (RFC 3986 §5.2.4). An encoded `/` or `\` (`%2F`, `%5C`) or a literal `\` is refused with 400
//! by default, since a backend that decodes it would see another path than the gateway matched
//! ([`EscapedSlashes`]). A malformed escape (`%zz`) is 400. The query is left alone.
//!
//! The host (Host and the target's authority): lower-cased, one trailing dot of the name
//! removed (`Admin.Example.:8080` → `admin.example:8080`); userinfo (`user@host`) is 400.
//!
//! Cost: a path that needs no work (no `%`, no `\`, no `.` or `..` segment, no `//`) and a host
//! already in lower case without a trailing dot are checked in one scan each and left in place,
//! without allocating.

use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderValue, header};

use crate::error::ProxyError;

/// What an encoded slash (`%2F`), an encoded backslash (`%5C`) or a literal `\` in a path
/// becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Refused with 400 (default).
    #[default]
    Reject,
    /// Left encoded (escapes upper-cased, a literal `\` sent as `%5C`): the backend must treat
    /// them as data, not as `/`.
    Keep,
    /// Decoded to `/` (a backslash too) and then normalised like any other slash.
    Decode,
}

/// A listener's normalisation settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormalizeSpec {
    /// Merge runs of `/` into one (default true: most backends do, so `//admin` is `/admin`).
    pub merge_slashes: bool,
    /// Encoded slashes and backslashes (default: reject).
    pub escaped_slashes: EscapedSlashes,
}

impl Default for NormalizeSpec {
    fn default() -> Self {
        NormalizeSpec {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Normalises the request's target path, its authority and its Host header in place.
pub fn normalize(parts: &mut Parts, spec: &NormalizeSpec) -> Result<(), ProxyError> {
    method(&parts.method)?;
    let new_path = match parts.uri.path_and_query() {
        // Only origin paths: `*` (OPTIONS) and an authority-form target have nothing to do.
        Some(pq) if pq.path().starts_with('/') => {
            path(pq.path(), spec)?.map(|p| match pq.query() {
                Some(q) => format!("{p}?{q}"),
                None => p,
            })
        }
        _ => None,
    };
    let new_authority = match parts.uri.authority() {
        Some(a) => host(a.as_str())?,
        None => None,
    };
    if new_path.is_some() || new_authority.is_some() {
        let mut up = std::mem::take(&mut parts.uri).into_parts();
        if let Some(p) = new_path {
            up.path_and_query = Some(
                PathAndQuery::try_from(p)
                    .map_err(|_| ProxyError::BadRequest("path not valid once normalised"))?,
            );
        }
        if let Some(a) = new_authority {
            up.authority = Some(
                Authority::try_from(a)
                    .map_err(|_| ProxyError::BadRequest("host not valid once normalised"))?,
            );
        }
        parts.uri = Uri::from_parts(up).map_err(|_| ProxyError::BadRequest("target not valid"))?;
    }
    if let Some(h) = parts.headers.get(header::HOST) {
        let text = h
            .to_str()
            .map_err(|_| ProxyError::BadRequest("Host is not a valid authority"))?;
        if let Some(lower) = host(text)? {
            let v = HeaderValue::try_from(lower)
                .map_err(|_| ProxyError::BadRequest("Host is not a valid authority"))?;
            parts.headers.insert(header::HOST, v);
        }
    }
    Ok(())
}

/// Method names are case-sensitive (RFC 9110 §9.1): `delete` is not DELETE to the gateway's
/// matchers, but some frameworks upper-case it. A case variant of a standard method is 400.
fn method(m: &http::Method) -> Result<(), ProxyError> {
    let s = m.as_str();
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Ok(());
    }
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if STANDARD.iter().any(|k| k.eq_ignore_ascii_case(s)) {
        return Err(ProxyError::BadRequest("method names are case-sensitive"));
    }
    Ok(())
}

/// The normalised form of an authority (`host[:port]`), None when it is already normal. One
/// that is not `host[:port]` is 400 (RFC 9112 §3.2): a port that is not a number up to 65535,
/// a port without a name, an IPv6 literal that is not one or has anything but a port after it,
/// and a name with an empty label (`internal.example..` would keep a trailing dot once one is
/// removed, and be another name to the rules than to a backend that removes it too).
pub fn host(authority: &str) -> Result<Option<String>, ProxyError> {
    let b = authority.as_bytes();
    if b.contains(&b'@') {
        return Err(ProxyError::BadRequest("userinfo in the host"));
    }
    // The name ends where the port starts (an IPv6 literal ends at its bracket).
    let name_end = if b.first() == Some(&b'[') {
        b.iter()
            .position(|&c| c == b']')
            .map(|i| i + 1)
            .ok_or(ProxyError::BadRequest(
                "IPv6 host without its closing bracket",
            ))?
    } else {
        b.iter().position(|&c| c == b':').unwrap_or(b.len())
    };
    port(&b[name_end..])?;
    if b.first() == Some(&b'[')
        && authority[1..name_end - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_err()
    {
        return Err(ProxyError::BadRequest("host is not a valid IPv6 literal"));
    }
    let dot = name_end > 1 && b[name_end - 1] == b'.';
    let name = &b[..name_end];
    if name.windows(2).any(|w| w == b"..") || name.first() == Some(&b'.') {
        return Err(ProxyError::BadRequest("empty label in the host"));
    }
    if name.is_empty() && !b.is_empty() {
        return Err(ProxyError::BadRequest("host without a name"));
    }
    if !dot && !b.iter().any(u8::is_ascii_uppercase) {
        return Ok(None);
    }
    let name = &authority[..name_end - usize::from(dot)];
    let mut out = String::with_capacity(authority.len());
    out.push_str(name);
    out.push_str(&authority[name_end..]);
    out.make_ascii_lowercase();
    Ok(Some(out))
}

/// What follows a host's name: nothing, or `:` and a port up to 65535 (empty, as RFC 3986
/// allows, too).
fn port(rest: &[u8]) -> Result<(), ProxyError> {
    let Some(digits) = rest.strip_prefix(b":") else {
        return if rest.is_empty() {
            Ok(())
        } else {
            Err(ProxyError::BadRequest("host is not host[:port]"))
        };
    };
    if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProxyError::BadRequest("host port is not a number"));
    }
    let n = digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    if n > u32::from(u16::MAX) {
        return Err(ProxyError::BadRequest("host port is over 65535"));
    }
    Ok(())
}

/// The normalised form of an origin path (starting with `/`), None when it is already normal.
pub fn path(p: &str, spec: &NormalizeSpec) -> Result<Option<String>, ProxyError> {
    if !needs_work(p.as_bytes(), spec.merge_slashes) {
        return Ok(None);
    }
    let decoded = decode(p.as_bytes(), spec)?;
    // A NUL in a path is never a name: backends in C (and older Jetty) cut the path there, so
    // `/admin%00` or `/public/..%00/admin` would be another path to them than to the rules.
    if decoded.windows(3).any(|w| w == b"%00") {
        return Err(ProxyError::BadRequest("encoded NUL in path"));
    }
    if has_dot_segment_with_parameters(&decoded) {
        return Err(ProxyError::BadRequest(
            "dot-segment with parameters in path",
        ));
    }
    let out = remove_dot_segments(&decoded);
    if out == p.as_bytes() {
        return Ok(None);
    }
    // Every byte is one the target already had, or an unreserved character: still UTF-8.
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| ProxyError::BadRequest("path is not UTF-8"))
}

/// One scan: whether the path has an escape, a backslash, a `.`/`..` segment or (when merging)
/// an empty segment.
fn needs_work(p: &[u8], merge: bool) -> bool {
    for (i, &b) in p.iter().enumerate() {
        let at_segment_start = i > 0 && p[i - 1] == b'/';
        match b {
            b'%' | b'\\' => return true,
            b'/' if merge && at_segment_start => return true,
            b';' if at_segment_start => return true,
            b'.' if at_segment_start => {
                let rest = &p[i + 1..];
                if rest.is_empty()
                    || matches!(rest[0], b'/' | b';')
                    || (rest[0] == b'.' && (rest.len() == 1 || matches!(rest[1], b'/' | b';')))
                {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Whether a segment named `.`, `..` or nothing has parameters (`..;x`, `.;`, `;x`) and is not
/// the last: servlet containers (Tomcat, Jetty, Spring) drop a segment's parameters before
/// resolving dots and merging slashes, so to them `/public/..;/admin` and `/;/admin` are
/// `/admin`, while to RFC 3986 (and the gateway's rules) `..;` and `;` are names. Refused
/// rather than guessed at: no real client sends one. A last segment of parameters alone
/// (`/app/;jsessionid=1`) names the directory in either reading and is left alone.
fn has_dot_segment_with_parameters(p: &[u8]) -> bool {
    let mut segments = p.split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        // Parameters start at `;`, or at an encoded one (`..%3B`): a backend that decodes
        // before it drops parameters reads it as one.
        let plain = seg.iter().position(|&b| b == b';');
        let encoded = seg.windows(3).position(|w| w.eq_ignore_ascii_case(b"%3b"));
        let Some(at) = plain.into_iter().chain(encoded).min() else {
            continue;
        };
        let name = &seg[..at];
        let dots = name == b"." || name == b"..";
        if dots || (name.is_empty() && !last) {
            return true;
        }
    }
    false
}

/// RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Writes `c` as an escape with upper-case digits (RFC 3986 §2.1).
fn push_escape(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
}

/// Decodes unreserved escapes, upper-cases the others, applies the slash rules and merges runs
/// of `/` when asked.
fn decode(p: &[u8], spec: &NormalizeSpec) -> Result<Vec<u8>, ProxyError> {
    let mut out: Vec<u8> = Vec::with_capacity(p.len());
    let slash = |out: &mut Vec<u8>| {
        if !(spec.merge_slashes && out.last() == Some(&b'/')) {
            out.push(b'/');
        }
    };
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    p.get(i + 1).copied().and_then(hex_value),
                    p.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(ProxyError::BadRequest("malformed percent-encoding in path"));
                };
                let c = (h << 4) | l;
                if is_unreserved(c) {
                    out.push(c);
                } else if c == b'/' || c == b'\\' {
                    match spec.escaped_slashes {
                        EscapedSlashes::Reject => {
                            return Err(ProxyError::BadRequest("encoded slash in path"));
                        }
                        EscapedSlashes::Keep => push_escape(&mut out, c),
                        EscapedSlashes::Decode => slash(&mut out),
                    }
                } else {
                    push_escape(&mut out, c);
                }
                i += 3;
            }
            b'\\' => {
                match spec.escaped_slashes {
                    EscapedSlashes::Reject => {
                        return Err(ProxyError::BadRequest("backslash in path"));
                    }
                    // Left encoded, as a `%5C` is: a raw `\` would be a separator to a backend
                    // that takes it for `/` (IIS, Windows file servers), after the rules
                    // matched one segment.
                    EscapedSlashes::Keep => push_escape(&mut out, b'\\'),
                    EscapedSlashes::Decode => slash(&mut out),
                }
                i += 1;
            }
            b'/' => {
                slash(&mut out);
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments go, `..` removes the segment before it
/// (never above the root); a trailing `.` or `..` leaves a trailing `/`.
fn remove_dot_segments(p: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(p.len());
    let rest = p.strip_prefix(b"/").unwrap_or(p);
    let mut segments = rest.split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            b"." => {}
            b".." => {
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(seg);
                continue;
            }
        }
        if last {
            out.push(b'/');
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, ProxyError> {
        norm_with(p, NormalizeSpec::default())
    }

    fn norm_with(p: &str, spec: NormalizeSpec) -> Result<String, ProxyError> {
        Ok(path(p, &spec)?.unwrap_or_else(|| p.to_string()))
    }

    #[test]
    fn bypass_spellings_become_the_path_they_stand_for() {
        for (raw, want) in [
            ("/public/../admin/x", "/admin/x"),
            ("/public/%2e%2e/admin/x", "/admin/x"),
            ("/public/%2E%2e/admin/x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("//admin/x", "/admin/x"),
            ("/./admin/x", "/admin/x"),
            ("/admin/./x/.", "/admin/x/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/..", "/"),
            ("/../../admin", "/admin"),
            ("/a/..", "/"),
            ("/a//../b", "/b"),
            ("/%7Euser/%3f%c3%a9", "/~user/%3F%C3%A9"),
            ("/%25", "/%25"),
            ("/%252e%252e/admin", "/%252e%252e/admin"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..b/c.", "/a/..b/c."),
            ("/", "/"),
        ] {
            assert_eq!(norm(raw).expect(raw), want, "{raw}");
        }
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for raw in [
            "/a/..;/b",
            "/.;/b",
            "/a/%2e%2e;x/b",
            "/a/..;",
            "/%2E;x",
            "/;/b",
            "/a/;x/b",
            "/a/..%3B/b",
            "/a/%2e%2e%3b/b",
            "/admin%00",
            "/a/..%00/b",
        ] {
            assert!(norm(raw).is_err(), "{raw}");
        }
        for ok in [
            "/a;x/b",
            "/a/..b;x",
            "/a/.well-known;x",
            "/;x",
            "/a/;jsessionid=1",
            "/a%3Bb/c",
            "/a/x%3By/c",
        ] {
            assert!(norm(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn normal_paths_are_left_in_place() {
        let spec = NormalizeSpec::default();
        for p in [
            "/",
            "/api/v1/users",
            "/.well-known/acme",
            "/a.b/c..d/",
            "/x-y_z~",
        ] {
            assert_eq!(path(p, &spec).expect(p), None, "{p}");
        }
    }

    #[test]
    fn encoded_slashes_follow_the_listener_setting() {
        for raw in ["/admin%2fx", "/admin%2Fx", "/admin%5cx", "/admin\\x"] {
            assert!(norm(raw).is_err(), "{raw} must be refused by default");
        }
        let keep = NormalizeSpec {
            escaped_slashes: EscapedSlashes::Keep,
            ..NormalizeSpec::default()
        };
        assert_eq!(norm_with("/a%2fb/../c", keep).expect("keep"), "/c");
        assert_eq!(norm_with("/a/b%2f..", keep).expect("keep"), "/a/b%2F..");
        // A probe's finding: a literal backslash went upstream raw, a separator to IIS.
        assert_eq!(
            norm_with("/x\\..\\admin", keep).expect("keep"),
            "/x%5C..%5Cadmin"
        );
        let decode = NormalizeSpec {
            escaped_slashes: EscapedSlashes::Decode,
            ..NormalizeSpec::default()
        };
        assert_eq!(
            norm_with("/public%2F..%2Fadmin", decode).expect("d"),
            "/admin"
        );
        assert_eq!(
            norm_with("/public\\..\\admin", decode).expect("d"),
            "/admin"
        );
    }

    #[test]
    fn merging_slashes_is_optional_and_malformed_escapes_are_refused() {
        let keep = NormalizeSpec {
            merge_slashes: false,
            ..NormalizeSpec::default()
        };
        assert_eq!(path("//admin/x", &keep).expect("ok"), None);
        assert_eq!(norm_with("//a/./b", keep).expect("ok"), "//a/b");
        for bad in ["/%", "/%4", "/%zz", "/a%g1"] {
            assert!(norm(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn case_variants_of_standard_methods_are_refused() {
        for ok in ["GET", "DELETE", "PROPFIND", "purge"] {
            assert!(
                method(&http::Method::from_bytes(ok.as_bytes()).expect(ok)).is_ok(),
                "{ok}"
            );
        }
        for bad in ["get", "Delete", "pOST"] {
            assert!(
                method(&http::Method::from_bytes(bad.as_bytes()).expect(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn hosts_are_lower_case_without_a_trailing_dot_or_userinfo() {
        for (raw, want) in [
            ("Admin.Example.", Some("admin.example")),
            ("admin.example.:8080", Some("admin.example:8080")),
            ("ADMIN.example", Some("admin.example")),
            ("[::1]:80", None),
            ("[FE80::1]", Some("[fe80::1]")),
            ("admin.example", None),
            ("admin.example:8080", None),
            ("", None),
        ] {
            assert_eq!(host(raw).expect(raw).as_deref(), want, "{raw}");
        }
        // A probe's finding: two trailing dots lost one and passed a host-matched deny rule.
        for bad in [
            "internal.example..",
            "internal.example..:80",
            "a..b",
            ".",
            "x:abc",
            "x:-1",
            "x:+80",
            "x:999999",
            "x:65536",
            ".example.com",
            ":80",
            "[::1]x",
            "[::1",
            "[zz]:",
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
        assert_eq!(host("x:").expect("empty port").as_deref(), None);
        assert!(host("user@evil.example").is_err());
        assert!(host("user:pw@evil.example:80").is_err());
    }

    #[test]
    fn the_request_head_is_normalised_in_place() {
        let (mut parts, ()) = http::Request::builder()
            .uri("http://Admin.Example.:8080/public/../admin?q=%2e")
            .header("host", "Admin.Example.")
            .body(())
            .expect("request")
            .into_parts();
        normalize(&mut parts, &NormalizeSpec::default()).expect("normal");
        assert_eq!(parts.uri, "http://admin.example:8080/admin?q=%2e");
        assert_eq!(parts.headers["host"], "admin.example");
        let (mut parts, ()) = http::Request::builder()
            .uri("/x")
            .header("host", "u@h")
            .body(())
            .expect("request")
            .into_parts();
        assert!(normalize(&mut parts, &NormalizeSpec::default()).is_err());
    }
}
