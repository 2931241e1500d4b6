//! Trust boundaries: who may tell the gateway where a request came from.
//!
//! A listener's `trusted_proxies` lists the address blocks of the proxies in front of it (a load
//! balancer, a CDN). From any other peer, every `X-Forwarded-*`, `X-Real-IP`, `Forwarded`,
//! `Front-End-Https` and `X-Url-Scheme` is thrown away, and `X-Forwarded-For`, `-Proto`,
//! `-Host` (and `Forwarded` when configured) are replaced by what the gateway itself saw (the
//! peer's address, the listener's scheme, the request's host), so a client cannot claim to be
//! `https`, another host or another address. From a trusted proxy they are kept and extended:
//! the peer is appended to `X-Forwarded-For` (and to `Forwarded` when the listener emits it).
//! `X-Real-IP` is always the client address below.
//!
//! The client address that allow/deny, rate-limit `ip` keys, `ip_hash` and the access log use is
//! the peer's, or, when the peer is a trusted proxy, the nearest address in `X-Forwarded-For`
//! (read from the right) that is not itself a trusted proxy.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::access::Cidr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Whether the gateway owns a request header: the client cannot remove it by naming it in
/// Connection (the gateway sets or extends it for the next hop).
pub fn gateway_owned(n: &HeaderName) -> bool {
    *n == crate::headers::X_REQUEST_ID
        || *n == X_FORWARDED_FOR
        || *n == X_FORWARDED_PROTO
        || *n == X_FORWARDED_HOST
        || *n == X_REAL_IP
        || *n == header::FORWARDED
        || *n == header::HOST
        || *n == header::CONTENT_LENGTH
}

/// A listener's trust settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustSpec {
    /// Peers whose forwarded headers are believed (empty: nobody's).
    pub trusted_proxies: Vec<Cidr>,
    /// Also send an RFC 7239 `Forwarded` header upstream (default false).
    pub forwarded_header: bool,
}

impl TrustSpec {
    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// The client's address when it differs from the peer's: the peer is a trusted proxy and
    /// X-Forwarded-For names an address before it. Read from the right, trusted proxies are
    /// skipped; the first other address is the client. If all are trusted, the leftmost is; an
    /// entry that is not an address ends the walk at the last good one.
    pub fn client_behind_proxies(&self, peer: IpAddr, h: &HeaderMap) -> Option<IpAddr> {
        if self.trusted_proxies.is_empty() || !self.trusts(peer) {
            return None;
        }
        let mut client = peer;
        let lines: Vec<&HeaderValue> = h.get_all(&X_FORWARDED_FOR).iter().collect();
        for line in lines.iter().rev() {
            let Ok(text) = line.to_str() else {
                return Some(client).filter(|c| *c != peer);
            };
            for item in text.rsplit(',') {
                let Some(ip) = parse_node(item.trim()) else {
                    return Some(client).filter(|c| *c != peer);
                };
                client = ip;
                if !self.trusts(ip) {
                    return Some(ip);
                }
            }
        }
        Some(client).filter(|c| *c != peer)
    }
}

/// An address in X-Forwarded-For: `1.2.3.4`, `::1`, `[::1]`, `[::1]:80` or `1.2.3.4:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

/// Whether a header says where a request came from or how it arrived, as applications read
/// them: the ones the gateway sets, and the other `X-Forwarded-*` (Port, Prefix, Ssl, Scheme,
/// Server …), `Front-End-Https` and `X-Url-Scheme`, which frameworks (Rack, Spring,
/// Werkzeug's ProxyFix) believe. An untrusted peer's are all dropped.
///
/// Runs on every request header of every untrusted request: one byte decides for most names.
fn forwarding(n: &HeaderName) -> bool {
    let s = n.as_str().as_bytes();
    match s.first() {
        Some(b'x') => s.starts_with(b"x-forwarded-") || s == b"x-real-ip" || s == b"x-url-scheme",
        Some(b'f') => s == b"forwarded" || s == b"front-end-https",
        _ => false,
    }
}

/// The forwarded headers of the request sent upstream. `peer` is the connection's address,
/// `client` the one found behind trusted proxies (or the peer), `proto` the listener's scheme,
/// `host` the request's (normalised) host.
pub fn apply(
    h: &mut HeaderMap,
    spec: &TrustSpec,
    peer: IpAddr,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let trusted = !spec.trusted_proxies.is_empty() && spec.trusts(peer);
    // From an untrusted peer none of them is kept. One pass over the names present (a client
    // seldom sends any) instead of a hashed removal of each; after it none is present.
    if !trusted && h.keys().any(forwarding) {
        let named: Vec<HeaderName> = h.keys().filter(|n| forwarding(n)).cloned().collect();
        for n in &named {
            h.remove(n);
        }
    }
    let kept = |h: &HeaderMap, n: &HeaderName| trusted && h.contains_key(n);
    let peer_text = IpText::new(peer);
    append_for(h, &peer_text);
    if !kept(h, &X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if let Some(host) = host
        && !kept(h, &X_FORWARDED_HOST)
    {
        h.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    // The address the gateway itself settled on (and that allow/deny and rate limits used),
    // whoever sent one: a trusted proxy may pass on a client's own X-Real-IP.
    {
        let client_text = if client == peer {
            peer_text
        } else {
            IpText::new(client)
        };
        if let Ok(v) = HeaderValue::from_bytes(client_text.as_bytes()) {
            h.insert(X_REAL_IP.clone(), v);
        }
    }
    if spec.forwarded_header {
        append_forwarded(h, peer, proto, host);
    }
}

/// Appends `peer` to X-Forwarded-For (one line, comma-separated).
fn append_for(h: &mut HeaderMap, peer: &IpText) {
    let mut lines = h.get_all(&X_FORWARDED_FOR).iter().peekable();
    let value = if lines.peek().is_none() {
        HeaderValue::from_bytes(peer.as_bytes())
    } else {
        let mut value = Vec::with_capacity(64);
        for line in lines {
            if line.to_str().is_ok() {
                value.extend_from_slice(line.as_bytes());
                value.extend_from_slice(b", ");
            }
        }
        value.extend_from_slice(peer.as_bytes());
        HeaderValue::from_bytes(&value)
    };
    if let Ok(v) = value {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// An address as text in a stack buffer: IPv4 (every request writes its peer's, usually twice)
/// without going through `fmt`.
#[derive(Clone, Copy)]
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                // At most 45 characters ("ffff:…:255.255.255.255"), so the write fits.
                let mut w = &mut t.buf[..];
                let _ = std::io::Write::write_fmt(&mut w, format_args!("{v6}"));
                t.len = 48 - w.len();
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Appends an RFC 7239 element for this hop: `for=…;proto=…;host=…`.
fn append_forwarded(h: &mut HeaderMap, peer: IpAddr, proto: &str, host: Option<&HeaderValue>) {
    let mut value = String::with_capacity(64);
    for line in h.get_all(header::FORWARDED) {
        if let Ok(t) = line.to_str() {
            value.push_str(t);
            value.push_str(", ");
        }
    }
    match peer {
        IpAddr::V4(v4) => {
            let _ = write!(value, "for={v4}");
        }
        IpAddr::V6(v6) => {
            let _ = write!(value, "for=\"[{v6}]\"");
        }
    }
    let _ = write!(value, ";proto={proto}");
    if let Some(host) = host.and_then(|v| v.to_str().ok()) {
        if host.bytes().all(is_tchar) {
            let _ = write!(value, ";host={host}");
        } else {
            let _ = write!(value, ";host=\"{host}\"");
        }
    }
    if let Ok(v) = HeaderValue::try_from(value) {
        h.insert(header::FORWARDED, v);
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip = ip(a);
            assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes(), "{a}");
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn spec(trusted: &[&str], forwarded_header: bool) -> TrustSpec {
        TrustSpec {
            trusted_proxies: trusted
                .iter()
                .map(|c| Cidr::parse(c).expect("cidr"))
                .collect(),
            forwarded_header,
        }
    }

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4;host=evil"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-scheme", "https"),
            ("front-end-https", "on"),
            ("x-url-scheme", "https"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn an_untrusted_peer_gets_what_the_gateway_saw() {
        let mut h = spoofed();
        let host = HeaderValue::from_static("shop.example");
        let s = spec(&["10.0.0.0/8"], true);
        let peer = ip("192.0.2.7");
        assert_eq!(s.client_behind_proxies(peer, &h), None);
        apply(&mut h, &s, peer, peer, "http", Some(&host));
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["forwarded"], "for=192.0.2.7;proto=http;host=shop.example");
        // Found from outside: the other names frameworks believe reached the upstream as sent.
        for n in [
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-ssl",
            "x-forwarded-scheme",
            "front-end-https",
            "x-url-scheme",
        ] {
            assert!(!h.contains_key(n), "{n} kept from an untrusted peer");
        }
    }

    #[test]
    fn a_trusted_proxy_is_believed_and_extended() {
        let mut h = spoofed();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 198.51.100.9, 10.0.0.5"),
        );
        let s = spec(&["10.0.0.0/8"], true);
        let peer = ip("10.1.1.1");
        let client = s.client_behind_proxies(peer, &h).expect("behind a proxy");
        assert_eq!(client, ip("198.51.100.9"), "the nearest untrusted address");
        apply(&mut h, &s, peer, client, "http", None);
        assert_eq!(
            h["x-forwarded-for"],
            "1.2.3.4, 198.51.100.9, 10.0.0.5, 10.1.1.1"
        );
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil.example");
        // Found from outside: the client's own X-Real-IP went upstream while allow/deny used
        // the address found in X-Forwarded-For; both now say the same.
        assert_eq!(h["x-real-ip"], "198.51.100.9");
        assert_eq!(
            h["forwarded"],
            "for=1.2.3.4;host=evil, for=10.1.1.1;proto=http"
        );
    }

    #[test]
    fn the_client_walk_stops_at_garbage_and_handles_ports_and_v6() {
        let s = spec(&["10.0.0.0/8", "2001:db8::/32"], false);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("junk, 10.0.0.2"),
        );
        assert_eq!(
            s.client_behind_proxies(ip("10.0.0.1"), &h),
            Some(ip("10.0.0.2"))
        );
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db9::1]:443"),
        );
        assert_eq!(
            s.client_behind_proxies(ip("2001:db8::1"), &h),
            Some(ip("2001:db9::1"))
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1:80"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        assert_eq!(
            s.client_behind_proxies(ip("10.0.0.1"), &h),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            s.client_behind_proxies(ip("10.0.0.1"), &HeaderMap::new()),
            None
        );
        let mut v6 = HeaderMap::new();
        let peer = ip("2001:db8::5");
        let both = spec(&[], true);
        apply(
            &mut v6,
            &both,
            peer,
            peer,
            "https",
            Some(&HeaderValue::from_static("a:8443")),
        );
        assert_eq!(
            v6["forwarded"],
            "for=\"[2001:db8::5]\";proto=https;host=\"a:8443\""
        );
    }
}
