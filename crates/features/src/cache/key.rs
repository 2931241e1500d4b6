//! Cache keys. An entry is found in two steps: the *URL key* (host, path, normalised query)
//! names the entry, which holds the response's variants; the *variant key* (configured headers
//! and cookies, then the normalised values of the headers the response Varies on) picks one.
//! Purging a URL is one removal, whatever its variants.

use http::{HeaderMap, HeaderName, header};

use super::spec::{BypassSpec, KeySpec, QueryKey};
use scalegate_http::compress;
use scalegate_http::compress::Encoding;
use scalegate_http::headers::cookie;

/// The URL key: `host` + path + `?` + query as the route's key settings normalise it.
pub fn url_key(spec: &KeySpec, host: Option<&str>, path: &str, query: Option<&str>) -> String {
    let mut k = String::with_capacity(64);
    if spec.host {
        k.push_str(&host.unwrap_or("").to_ascii_lowercase());
    }
    k.push_str(path);
    if let Some(q) = query.and_then(|q| normalize_query(q, &spec.query)) {
        k.push('?');
        k.push_str(&q);
    }
    k
}

/// The query as it enters the key; None when nothing of it does.
pub fn normalize_query(q: &str, mode: &QueryKey) -> Option<String> {
    if q.is_empty() {
        return None;
    }
    // Sorted by name only, and stably: a parameter given twice keeps its values' order, which
    // first-wins and last-wins parsers (and lists) depend on.
    let kept = |pairs: Vec<&str>| {
        let mut pairs = pairs;
        pairs.sort_by(|a, b| param_name(a).cmp(param_name(b)));
        (!pairs.is_empty()).then(|| pairs.join("&"))
    };
    let pairs = || q.split('&').filter(|p| !p.is_empty());
    match mode {
        QueryKey::Keep => Some(q.to_string()),
        QueryKey::Ignore => None,
        QueryKey::Sort => kept(pairs().collect()),
        QueryKey::Allow(names) => kept(
            pairs()
                .filter(|p| names.iter().any(|n| param_name(p) == n))
                .collect(),
        ),
    }
}

/// A query parameter's name (`a` of `a=1`, all of `flag`).
fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(n, _)| n)
}

/// The header names a response Varies on, lowercased; None for `Vary: *` (never matches, so
/// such a response is not stored).
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::VARY) {
        for n in v.to_str().unwrap_or("").split(',').map(str::trim) {
            if n == "*" {
                return None;
            }
            if let Ok(name) = HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// The variant key: the route, the port of the request's host when it names one other than `own_port`
/// (the port the client connected to) and the key holds the host, configured key headers and
/// cookies, then each Varied header normalised (Accept-Encoding to the coding the gateway
/// would pick, others with whitespace collapsed).
///
/// The URL key holds the host without its port (purges name hosts so), but the origin sees
/// the port: a page built for `Host: victim.com:6666` (a redirect, a link) must not be served
/// for `Host: victim.com`. A request naming no port, or the one it connected to, keeps the
/// variant key it always had, so instances on different ports still share a Redis tier.
pub fn variant(
    spec: &KeySpec,
    vary: &[HeaderName],
    (req, own_port, route): (&http::request::Parts, u16, &str),
    encodings: &[Encoding],
) -> String {
    let headers = &req.headers;
    let mut v = String::new();
    // The route: two routes may send one URL to different upstreams (by header, by
    // listener), or rewrite it differently; neither may answer with the other's response.
    v.push_str("\u{1}route ");
    v.push_str(route);
    v.push('\n');
    if spec.host
        && let Some(port) = host_port(req)
        && port.parse::<u16>().ok() != Some(own_port)
    {
        v.push_str("\u{1}port ");
        v.push_str(port);
        v.push('\n');
    }
    for name in &spec.headers {
        v.push_str(header_value(headers, name).as_deref().unwrap_or(ABSENT));
        v.push('\n');
    }
    for name in &spec.cookies {
        v.push_str(cookie(headers, name).unwrap_or(ABSENT));
        v.push('\n');
    }
    for name in vary {
        v.push_str(&normalized(headers, name, encodings));
        v.push('\n');
    }
    v
}

/// The port the request's host names (the URI's authority, else Host), if any.
fn host_port(req: &http::request::Parts) -> Option<&str> {
    let raw = match req.uri.authority() {
        Some(a) => a.as_str(),
        None => req.headers.get(header::HOST)?.to_str().ok()?,
    };
    let after_host = match raw.rfind(']') {
        Some(i) => &raw[i + 1..],
        None => raw.rsplit('@').next().unwrap_or(raw),
    };
    after_host
        .split_once(':')
        .map(|(_, port)| port)
        .filter(|p| !p.is_empty())
}

/// One Varied header's value as the key sees it.
pub fn normalized(headers: &HeaderMap, name: &HeaderName, encodings: &[Encoding]) -> String {
    if name == header::ACCEPT_ENCODING {
        return compress::negotiate(headers, encodings)
            .map_or("identity", Encoding::token)
            .to_string();
    }
    header_value(headers, name).unwrap_or_else(|| ABSENT.to_string())
}

/// A header or cookie the request does not have, in a variant key: an absent field matches
/// only an absent one, not an empty one (RFC 9111 §4.1).
const ABSENT: &str = "\u{2}";

/// All lines of a header joined with ", ", whitespace around commas collapsed; None when the
/// request has no such field, Some("") when it is empty.
fn header_value(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        out.get_or_insert_with(String::new);
        let s = String::from_utf8_lossy(v.as_bytes());
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let o = out.get_or_insert_with(String::new);
            if !o.is_empty() {
                o.push_str(", ");
            }
            o.push_str(part);
        }
    }
    out
}

/// Whether a request skips the cache under the route's bypass rules.
pub fn bypassed(spec: &BypassSpec, path: &str, headers: &HeaderMap) -> bool {
    spec.path_prefixes
        .iter()
        .any(|p| path.starts_with(p.as_str()))
        || spec.headers.iter().any(|h| headers.contains_key(h))
        || spec.cookies.iter().any(|c| cookie(headers, c).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(query: QueryKey) -> KeySpec {
        KeySpec {
            host: true,
            query,
            headers: vec![],
            cookies: vec![],
        }
    }

    #[test]
    fn sorting_keeps_what_origins_tell_apart() {
        let key = |q| normalize_query(q, &QueryKey::Sort);
        assert_ne!(
            key("a=1&a=2"),
            key("a=2&a=1"),
            "a repeated parameter's order"
        );
        assert_eq!(key("b=1&a=2&a=1"), Some("a=2&a=1&b=1".into()));
        assert_ne!(key("a=1;b=2"), key("a=1&b=2"), "';' is not a separator");
    }

    #[test]
    fn query_modes() {
        let q = "b=2&a=1&utm=x";
        assert_eq!(
            url_key(&spec(QueryKey::Sort), Some("Ex.COM"), "/p", Some(q)),
            "ex.com/p?a=1&b=2&utm=x"
        );
        assert_eq!(
            url_key(&spec(QueryKey::Keep), Some("ex.com"), "/p", Some(q)),
            "ex.com/p?b=2&a=1&utm=x"
        );
        assert_eq!(
            url_key(&spec(QueryKey::Ignore), Some("ex.com"), "/p", Some(q)),
            "ex.com/p"
        );
        let allow = QueryKey::Allow(vec!["b".into(), "a".into()]);
        assert_eq!(
            url_key(&spec(allow), Some("ex.com"), "/p", Some(q)),
            "ex.com/p?a=1&b=2"
        );
        let mut no_host = spec(QueryKey::Sort);
        no_host.host = false;
        assert_eq!(url_key(&no_host, Some("ex.com"), "/p", None), "/p");
    }

    /// A request head for `uri` with these headers.
    fn request(headers: &[(HeaderName, &str)], uri: &str) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (name, value) in headers {
            b = b.header(name, *value);
        }
        match b.body(()) {
            Ok(r) => r.into_parts().0,
            Err(e) => panic!("request: {e}"),
        }
    }

    #[test]
    fn a_port_in_the_host_is_its_own_variant() {
        let key = |host: &str, uri: &str| {
            let req = request(&[(header::HOST, host)], uri);
            variant(&spec(QueryKey::Sort), &[], (&req, 80, "r"), &[])
        };
        assert_eq!(
            key("victim.com", "/p"),
            "\u{1}route r\n",
            "no port: the key it always had"
        );
        assert_ne!(key("victim.com:6666", "/p"), key("victim.com", "/p"));
        assert_eq!(key("[::1]", "/p"), key("victim.com", "/p"));
        assert_ne!(key("[::1]:81", "/p"), key("[::1]", "/p"));
        // The absolute form's authority wins over Host, as for the URL key.
        assert_eq!(
            key("victim.com:6666", "http://victim.com/p"),
            key("victim.com", "/p")
        );
        // The port the client connected to is the site's own.
        assert_eq!(key("victim.com:80", "/p"), key("victim.com", "/p"));
    }

    #[test]
    fn vary_star_is_none_and_names_are_lowercased() {
        let mut h = HeaderMap::new();
        h.append(header::VARY, "Accept-Encoding, X-Lang".parse().unwrap());
        h.append(header::VARY, "accept-encoding".parse().unwrap());
        let names = vary_names(&h).unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(names[1].as_str(), "x-lang");
        h.append(header::VARY, "*".parse().unwrap());
        assert!(vary_names(&h).is_none());
    }

    #[test]
    fn accept_encoding_is_normalised_to_the_chosen_coding() {
        let all = [Encoding::Br, Encoding::Zstd, Encoding::Gzip];
        let names = [header::ACCEPT_ENCODING];
        let key = |ae: &str| {
            let req = request(&[(header::ACCEPT_ENCODING, ae)], "/");
            variant(&spec(QueryKey::Sort), &names, (&req, 80, "r"), &all)
        };
        assert_eq!(key("gzip, deflate, br"), key("br;q=1.0, gzip;q=0.8"));
        assert_eq!(key("gzip"), key("deflate, gzip;q=0.5"));
        assert_ne!(key("gzip"), key("br"));
        assert_eq!(key("identity"), key("br;q=0"));
    }

    #[test]
    fn bypass_rules() {
        let b = BypassSpec {
            path_prefixes: vec!["/admin".into()],
            headers: vec![header::AUTHORIZATION],
            cookies: vec!["session".into()],
        };
        let mut h = HeaderMap::new();
        assert!(bypassed(&b, "/admin/x", &h));
        assert!(!bypassed(&b, "/x", &h));
        h.insert(header::COOKIE, "a=1; session=abc".parse().unwrap());
        assert!(bypassed(&b, "/x", &h));
    }
}
