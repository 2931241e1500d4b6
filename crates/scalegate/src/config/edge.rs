//! A listener's edge keys (normalisation, trusted proxies, header count, upgrades) and the
//! route match values that must be written in normal form to ever match.

use scalegate_http::edge::{DEFAULT_MAX_HEADERS, EdgeSpec};
use scalegate_http::forwarded::TrustSpec;
use scalegate_http::normalize::{self, EscapedSlashes, NormalizeSpec};
use toml::Spanned;

use super::raw::RawListener;
use super::validate::Check;

/// The edge rules of one listener.
pub(super) fn listener_edge(c: &mut Check, l: &RawListener) -> EdgeSpec {
    let escaped_slashes = match &l.escaped_slashes {
        None => EscapedSlashes::Reject,
        Some(s) => match s.get_ref().as_str() {
            "reject" => EscapedSlashes::Reject,
            "keep" => EscapedSlashes::Keep,
            "decode" => EscapedSlashes::Decode,
            other => {
                c.err(
                    s.span(),
                    format!(
                        r#"escaped_slashes must be "reject", "keep" or "decode", got {other:?}"#
                    ),
                );
                EscapedSlashes::Reject
            }
        },
    };
    let upgrades = match &l.upgrades {
        None => vec!["websocket".to_string()],
        Some(list) => {
            let mut out = Vec::new();
            for p in list.get_ref() {
                let p = p.trim().to_ascii_lowercase();
                if p == "h2c" {
                    c.err(
                        list.span(),
                        "upgrades: h2c cannot be passed: its streams would bypass routing, allow/deny and rate limits",
                    );
                } else if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                    c.err(
                        list.span(),
                        format!("upgrades: {p:?} is not a protocol name"),
                    );
                } else {
                    out.push(p);
                }
            }
            out
        }
    };
    EdgeSpec {
        normalize: NormalizeSpec {
            merge_slashes: l.merge_slashes.unwrap_or(true),
            escaped_slashes,
        },
        trust: TrustSpec {
            trusted_proxies: super::edits::cidrs(c, l.trusted_proxies.as_ref(), "trusted_proxies"),
            forwarded_header: l.forwarded_header.unwrap_or(false),
        },
        max_headers: c.opt_int(
            &l.max_headers,
            1..=10_000,
            DEFAULT_MAX_HEADERS as i64,
            "max_headers",
        ) as usize,
        upgrades,
    }
}

/// A route's `match.host` as requests will carry it: lower case, no trailing dot. Requests
/// are matched on their host without the port, so a host with a port (or one no request can
/// carry) would never match: an error.
pub(super) fn match_host(c: &mut Check, h: &Spanned<String>) -> String {
    let mut host = h.get_ref().to_ascii_lowercase();
    if host.len() > 1 && host.ends_with('.') {
        host.pop();
    }
    if !valid_host(&host) || (host.contains(':') && !host.starts_with('[')) {
        c.err(
            h.span(),
            format!(
                "match.host {:?} never matches: write a host name or address without a port (requests are matched on their host, whatever the port; a listener per port tells ports apart)",
                h.get_ref()
            ),
        );
    }
    host
}

/// Whether `h` is a host a request or a connect can name: a DNS name (letters, digits, `-`,
/// `_`, dots), an IPv4 address, or an IPv6 address in brackets.
pub(super) fn valid_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        // A link-local address may name its interface: [fe80::1%eth0].
        let (addr, zone) = inner.split_once('%').unwrap_or((inner, "x"));
        let zone_ok = !zone.is_empty()
            && zone
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        return zone_ok && addr.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && !h.starts_with('.')
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A route's `match.path_prefix`, which must be in normal form: a request path never keeps a
/// `%61`, a `..` or a `//` once normalised, so such a prefix would never match.
pub(super) fn match_path(c: &mut Check, p: &Spanned<String>) -> String {
    let raw = p.get_ref();
    if !raw.starts_with('/') {
        // Reported where the route is checked.
        return raw.clone();
    }
    let lenient = NormalizeSpec {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Keep,
    };
    match normalize::path(raw, &lenient) {
        Ok(None) => {}
        Ok(Some(normal)) => c.err(
            p.span(),
            format!(
                "path_prefix {raw:?} never matches: request paths are normalised, write {normal:?}"
            ),
        ),
        Err(e) => c.err(p.span(), format!("path_prefix {raw:?}: {e}")),
    }
    raw.clone()
}
