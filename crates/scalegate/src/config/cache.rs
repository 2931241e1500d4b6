//! Validation of the cache and compression settings: the gateway-wide `[cache]` store and each
//! route's `cache` and `compression` tables.

use std::time::Duration;

use scalegate_features::cache::{
    BypassSpec, CacheSpec, CompressionSpec, Encoding, KeySpec, NatsSpec, QueryKey, RedisSpec,
    StoreSpec, TtlRule,
};
use toml::Spanned;

use super::raw::{RawCache, RawCompression, RawQuery, RawStore};
use super::units::parse_duration;
use super::validate::Check;

/// The store settings (defaults when the table is absent).
pub(super) fn store(c: &mut Check, raw: Option<&Spanned<RawStore>>) -> StoreSpec {
    let mut spec = StoreSpec::default();
    let Some(raw) = raw else { return spec };
    let raw = raw.get_ref();
    if let Some(m) = &raw.max_bytes {
        if m.get_ref().0 < 1 << 20 {
            c.err(m.span(), "cache.max_bytes must be at least 1MiB");
        } else {
            spec.max_bytes = m.get_ref().0;
        }
    }
    if let Some(r) = &raw.redis {
        let r = r.get_ref();
        super::cluster::redis_url(c, &r.url, "cache.redis.url");
        spec.redis = Some(RedisSpec {
            url: r.url.get_ref().clone(),
            key_prefix: r
                .key_prefix
                .clone()
                .unwrap_or_else(|| "scalegate:cache:".into()),
            channel: r
                .channel
                .clone()
                .unwrap_or_else(|| "scalegate:purge".into()),
            timeout: c.dur(&r.timeout, Duration::from_millis(50), "cache.redis.timeout"),
        });
    }
    if let Some(n) = &raw.nats {
        let n = n.get_ref();
        super::nats::url(c, &n.url, "cache.nats.url");
        let subject = n
            .subject
            .clone()
            .unwrap_or_else(|| "scalegate.purge".into());
        super::nats::subject(c, n.url.span(), &subject, "cache.nats.subject", false);
        spec.nats = Some(NatsSpec {
            url: n.url.get_ref().clone(),
            subject,
        });
    }
    spec
}

/// A route's cache settings.
pub(super) fn route_cache(c: &mut Check, raw: &Spanned<RawCache>) -> CacheSpec {
    let d = CacheSpec::default();
    let raw = raw.get_ref();
    let mut rules = Vec::new();
    for r in &raw.rules {
        let r = r.get_ref();
        if !r.path_prefix.get_ref().starts_with('/') {
            c.err(r.path_prefix.span(), r#"path_prefix must start with "/""#);
        }
        let ttl = match r.ttl.get_ref().as_str() {
            "origin" => None,
            s => {
                match parse_duration(s) {
                    Some(t) => Some(t),
                    None => {
                        c.err(
                        r.ttl.span(),
                        format!(r#"ttl {s:?}: expected "origin" or a duration such as "60s" or "1d""#),
                    );
                        None
                    }
                }
            }
        };
        rules.push(TtlRule {
            path_prefix: r.path_prefix.get_ref().clone(),
            ttl,
        });
    }
    let query = match raw.key.query.as_ref() {
        None => QueryKey::Sort,
        Some(q) => match q.get_ref() {
            RawQuery::Mode(m) if m == "keep" => QueryKey::Keep,
            RawQuery::Mode(m) if m == "sort" => QueryKey::Sort,
            RawQuery::Mode(m) if m == "ignore" => QueryKey::Ignore,
            RawQuery::Allow(names) => QueryKey::Allow(names.clone()),
            RawQuery::Mode(m) => {
                c.err(
                    q.span(),
                    format!(r#"cache.key.query {m:?}: expected "keep", "sort", "ignore" or a list of parameter names"#),
                );
                QueryKey::Sort
            }
        },
    };
    let key = KeySpec {
        host: raw.key.host.unwrap_or(true),
        query,
        headers: header_names(c, &raw.key.headers),
        cookies: raw.key.cookies.clone(),
    };
    let bypass = BypassSpec {
        path_prefixes: raw.bypass.path_prefixes.clone(),
        headers: header_names(c, &raw.bypass.headers),
        cookies: raw.bypass.cookies.clone(),
    };
    CacheSpec {
        rules,
        key,
        bypass,
        max_object_bytes: raw
            .max_object_bytes
            .as_ref()
            .map_or(d.max_object_bytes, |m| m.get_ref().0),
        share_set_cookie: raw.share_set_cookie.unwrap_or(false),
        stale_while_revalidate: raw
            .stale_while_revalidate
            .map_or(d.stale_while_revalidate, |v| v.0),
        stale_if_error: raw.stale_if_error.map_or(d.stale_if_error, |v| v.0),
        keep: raw.keep.map_or(d.keep, |v| v.0),
        targets: match &raw.targets {
            Some(names) => targets(c, names),
            None => d.targets,
        },
        strip_targets: raw.strip_targets.unwrap_or(false),
    }
}

/// The targeted cache-control fields (RFC 9213) a route obeys, in order.
fn targets(c: &mut Check, names: &[Spanned<String>]) -> Vec<http::HeaderName> {
    for n in names {
        if n.get_ref().eq_ignore_ascii_case("cache-control") {
            c.err(
                n.span(),
                "cache.targets lists fields that take precedence over Cache-Control; Cache-Control itself is always the fallback",
            );
        }
    }
    header_names(c, names)
}

/// A route's compression settings.
pub(super) fn route_compression(c: &mut Check, raw: &Spanned<RawCompression>) -> CompressionSpec {
    let d = CompressionSpec::default();
    let raw = raw.get_ref();
    let mut encodings = Vec::new();
    for e in raw.encodings.iter().flatten() {
        match Encoding::parse(e.get_ref()) {
            Some(enc) if !encodings.contains(&enc) => encodings.push(enc),
            Some(_) => c.err(e.span(), format!("encoding {:?} listed twice", e.get_ref())),
            None => c.err(
                e.span(),
                format!(
                    r#"encoding {:?}: expected "br", "zstd" or "gzip""#,
                    e.get_ref()
                ),
            ),
        }
    }
    CompressionSpec {
        min_bytes: raw
            .min_bytes
            .as_ref()
            .map_or(d.min_bytes, |m| m.get_ref().0),
        encodings: if raw.encodings.is_some() {
            encodings
        } else {
            d.encodings
        },
        content_types: raw
            .content_types
            .as_ref()
            .map(|v| v.iter().map(|t| t.to_ascii_lowercase()).collect())
            .unwrap_or(d.content_types),
    }
}

fn header_names(c: &mut Check, names: &[Spanned<String>]) -> Vec<http::HeaderName> {
    names
        .iter()
        .filter_map(|n| {
            match http::HeaderName::from_bytes(n.get_ref().to_ascii_lowercase().as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    c.err(n.span(), format!("invalid header name {:?}", n.get_ref()));
                    None
                }
            }
        })
        .collect()
}
