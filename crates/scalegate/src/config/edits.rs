//! A route's `rewrite`, `request_headers`, `response_headers`, `allow` and `deny`, checked.

use http::{HeaderName, HeaderValue};
use scalegate_http::access::Cidr;
use scalegate_http::rewrite::{HeaderEdits, PathRewrite};
use toml::Spanned;

use super::raw::{RawHeaderEdits, RawRewrite};
use super::validate::Check;

/// Headers that frame the message or the connection: editing them would break the exchange,
/// so a config that names them is refused.
const FRAMING: [&str; 7] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// The path rewrite; the route must match on a path prefix for there to be one to replace.
pub(super) fn rewrite(
    c: &mut Check,
    rw: &Spanned<RawRewrite>,
    path_prefix: Option<&Spanned<String>>,
) -> Option<PathRewrite> {
    let to = rw.get_ref().prefix.clone();
    if !to.starts_with('/') {
        c.err(rw.span(), r#"rewrite.prefix must start with "/""#);
        return None;
    }
    let Some(from) = path_prefix else {
        c.err(
            rw.span(),
            "rewrite needs the route to match on path_prefix (the part it replaces)",
        );
        return None;
    };
    Some(PathRewrite {
        from: from.get_ref().clone(),
        to,
    })
}

/// Header edits; `what` names the key in messages.
pub(super) fn headers(
    c: &mut Check,
    raw: Option<&Spanned<RawHeaderEdits>>,
    what: &str,
) -> HeaderEdits {
    let Some(raw) = raw else {
        return HeaderEdits::default();
    };
    let span = raw.span();
    let mut out = HeaderEdits::default();
    let name = |c: &mut Check, n: &str| -> Option<HeaderName> {
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) if FRAMING.contains(&h.as_str()) => {
                c.err(
                    span.clone(),
                    format!("{what}: {n:?} frames the message or connection and cannot be edited"),
                );
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                c.err(span.clone(), format!("{what}: invalid header name {n:?}"));
                None
            }
        }
    };
    for (n, v) in &raw.get_ref().set {
        let Some(h) = name(c, n) else { continue };
        match HeaderValue::from_str(v) {
            Ok(v) => out.set.push((h, v)),
            Err(_) => c.err(
                span.clone(),
                format!("{what}: value of {n:?} is not a valid header value"),
            ),
        }
    }
    for n in &raw.get_ref().remove {
        if let Some(h) = name(c, n) {
            out.remove.push(h);
        }
    }
    out
}

/// An `allow` or `deny` list: addresses or CIDR blocks.
pub(super) fn cidrs(c: &mut Check, raw: Option<&Spanned<Vec<String>>>, what: &str) -> Vec<Cidr> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in raw.get_ref() {
        match Cidr::parse(s) {
            Some(cidr) => out.push(cidr),
            None => c.err(
                raw.span(),
                format!(r#"{what}: {s:?} is not an address or block like "10.0.0.0/8""#),
            ),
        }
    }
    out
}
