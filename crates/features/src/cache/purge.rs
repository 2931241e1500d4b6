//! Purges: by URL, by prefix, by tag; hard (gone) or soft (stale, still usable when the origin
//! fails). The same message comes from the admin API and from the invalidation bus.

use scalegate_http::normalize::NormalizeSpec;
use serde::{Deserialize, Serialize};

/// One purge request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    /// What is purged.
    pub target: Target,
    /// Mark stale instead of removing.
    #[serde(default)]
    pub soft: bool,
    /// Sent by an instance that has already purged Redis (an unsafe method's invalidation): the
    /// others drop it from their memory only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_only: bool,
}

/// What a purge matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Nothing (an empty message).
    #[default]
    None,
    /// One URL: `http://host/path?q`, `host/path?q` or `/path?q` (every host).
    Url(String),
    /// Every URL under a prefix, same forms as `Url`.
    Prefix(String),
    /// Every object tagged so (Surrogate-Key / Cache-Tag).
    Tag(String),
}

impl Purge {
    /// From admin query parameters: exactly one of `url=`, `prefix=` or `tag=` (not empty),
    /// and optionally `soft=true|false` (or 1|0). Anything else is refused with the reason: a
    /// purge that did less than it was asked must not answer 200.
    pub fn from_query(q: &str) -> Result<Purge, &'static str> {
        Purge::from_query_as(q, &NormalizeSpec::default())
    }

    /// [`Purge::from_query`] for a gateway whose listeners normalise paths by `specs`: a URL or
    /// prefix is named as a request on each of them would be (`merge_slashes = false` keeps
    /// `//`, `escaped_slashes = "keep"` keeps `%2F`), one purge per distinct result. Refused
    /// only when no listener could have had such a request.
    pub fn from_query_on(q: &str, specs: &[NormalizeSpec]) -> Result<Vec<Purge>, &'static str> {
        let mut out: Vec<Purge> = Vec::new();
        let mut refused = None;
        for spec in specs {
            match Purge::from_query_as(q, spec) {
                Ok(p) if !out.contains(&p) => out.push(p),
                Ok(_) => {}
                Err(why) => refused = refused.or(Some(why)),
            }
        }
        match (out.is_empty(), refused) {
            (true, Some(why)) => Err(why),
            (true, None) => Purge::from_query(q).map(|p| vec![p]),
            (false, _) => Ok(out),
        }
    }

    fn from_query_as(q: &str, spec: &NormalizeSpec) -> Result<Purge, &'static str> {
        let mut p = Purge::default();
        let mut soft = None;
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            let target = match k {
                "url" => Target::Url(normal_url(&v, spec)?),
                "prefix" => Target::Prefix(normal_url(&v, spec)?),
                "tag" => Target::Tag(v),
                "soft" if soft.is_some() => return Err("soft given twice"),
                "soft" => {
                    soft = Some(match v.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err("soft must be true or false"),
                    });
                    continue;
                }
                _ => return Err("unknown parameter"),
            };
            if p.target != Target::None {
                return Err("one purge names one url, prefix or tag");
            }
            if matches!(&target, Target::Url(v) | Target::Prefix(v) | Target::Tag(v) if v.is_empty())
            {
                return Err("an empty url, prefix or tag");
            }
            p.target = target;
        }
        if p.target == Target::None {
            return Err("no url, prefix or tag");
        }
        p.soft = soft.unwrap_or(false);
        Ok(p)
    }

    /// From a bus message: JSON (`{"target":{"tag":"t"},"soft":true}`) or the short text forms
    /// `url <u>`, `prefix <p>`, `tag <t>` (optionally followed by ` soft`).
    pub fn from_message(m: &str) -> Option<Purge> {
        let m = m.trim();
        if m.starts_with('{') {
            return serde_json::from_str(m).ok();
        }
        let mut words = m.split_whitespace();
        let kind = words.next()?;
        let arg = words.next()?.to_string();
        let soft = words.next() == Some("soft");
        let target = match kind {
            "url" => Target::Url(arg),
            "prefix" => Target::Prefix(arg),
            "tag" => Target::Tag(arg),
            _ => return None,
        };
        Some(Purge {
            target,
            soft,
            ..Purge::default()
        })
    }
}

impl Purge {
    /// The purge in the form lookups and matches use.
    pub fn matcher(&self) -> Matcher {
        match &self.target {
            Target::None => Matcher::None,
            Target::Url(u) => {
                let (host, pq) = split_url(u);
                let sorted = sort_query(&pq);
                Matcher::Url { host, pq, sorted }
            }
            Target::Prefix(p) => {
                let (host, path) = split_url(p);
                Matcher::Prefix { host, path }
            }
            Target::Tag(t) => Matcher::Tag(t.clone()),
        }
    }
}

/// A purge's target, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    /// Nothing.
    None,
    /// One URL (both its query as sent and sorted, as the default key mode stores it); every
    /// host when `host` is None.
    Url {
        /// Lowercased host, without port.
        host: Option<String>,
        /// Path and query.
        pq: String,
        /// Path and query with the parameters sorted.
        sorted: String,
    },
    /// URL keys under a prefix; every host when `host` is None.
    Prefix {
        /// Lowercased host, without port.
        host: Option<String>,
        /// Path prefix.
        path: String,
    },
    /// Objects carrying the tag.
    Tag(String),
}

impl Matcher {
    /// Whether an object with this URL key and tags is purged.
    pub fn matches(&self, url_key: &str, tags: &[String]) -> bool {
        match self {
            Matcher::None => false,
            Matcher::Url { host, pq, sorted } => {
                let is = |rest: &str| rest == pq || rest == sorted;
                match host {
                    // Keys hold the host, or none when a route leaves it out of its key.
                    Some(h) => url_key.strip_prefix(h.as_str()).is_some_and(is) || is(url_key),
                    None => is(key_path(url_key)),
                }
            }
            Matcher::Prefix { host, path } => match host {
                Some(h) => url_key
                    .strip_prefix(h.as_str())
                    .is_some_and(|rest| rest.starts_with('/') && rest.starts_with(path.as_str())),
                None => key_path(url_key).starts_with(path.as_str()),
            },
            Matcher::Tag(t) => tags.iter().any(|x| x == t),
        }
    }

    /// The URL keys it names outright (a URL with its host); None when they must be looked up.
    pub fn direct_keys(&self) -> Option<Vec<String>> {
        let Matcher::Url {
            host: Some(h),
            pq,
            sorted,
        } = self
        else {
            return None;
        };
        let mut keys = vec![
            format!("{h}{pq}"),
            format!("{h}{sorted}"),
            pq.clone(),
            sorted.clone(),
        ];
        keys.sort();
        keys.dedup();
        Some(keys)
    }
}

/// A purge's URL as a request for it would be normalised (edge.rs): `%61` decoded, `//` and
/// `.` segments resolved, the host lower-cased, so a purge named as a client spelled the URL
/// finds the stored copy. A URL no request could have is refused.
fn normal_url(url: &str, spec: &NormalizeSpec) -> Result<String, &'static str> {
    use scalegate_http::normalize;
    let (scheme, rest) = match url.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (Some(s), rest),
        Some(_) => return Err("a purge URL is http or https"),
        None => (None, url),
    };
    let (authority, pq) = match rest.find('/') {
        Some(0) => (None, rest),
        Some(i) => (Some(&rest[..i]), &rest[i..]),
        None if scheme.is_some() && !rest.is_empty() => (Some(rest), "/"),
        None => return Err("a purge URL is /path, host/path or http://host/path"),
    };
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let bad = |_| "a purge URL no request could have";
    let path = normalize::path(path, spec)
        .map_err(bad)?
        .unwrap_or_else(|| path.to_string());
    let mut out = String::with_capacity(url.len());
    if let Some(s) = scheme {
        out.push_str(s);
        out.push_str("://");
    }
    if let Some(a) = authority {
        out.push_str(
            &normalize::host(a)
                .map_err(bad)?
                .unwrap_or_else(|| a.to_string()),
        );
    }
    out.push_str(&path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// The path and query a Location or Content-Location names (RFC 9111 §4.4), resolved against
/// the request's `host` and `pq` as a client would (`x`, `./x`, `../x`, `//host/x`, absolute
/// URLs) and normalised as a request for it would be (`spec`), so that it finds the stored
/// copy; None for another host (a response must not invalidate another site's objects) or a
/// reference no request could follow.
pub fn same_host_target(
    host: Option<&str>,
    pq: &str,
    reference: &str,
    spec: &NormalizeSpec,
) -> Option<String> {
    let base = url::Url::parse(&format!("http://{}{pq}", host.unwrap_or("invalid."))).ok()?;
    let target = base.join(reference.trim()).ok()?;
    let same_host = matches!(target.scheme(), "http" | "https")
        && target
            .host_str()
            .zip(base.host_str())
            .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b));
    if !same_host {
        return None;
    }
    let path = scalegate_http::normalize::path(target.path(), spec).ok()?;
    let mut out = path.unwrap_or_else(|| target.path().to_string());
    if let Some(q) = target.query() {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// The path-and-query part of a URL key (after the host, if any).
pub fn key_path(k: &str) -> &str {
    k.find('/').map_or(k, |i| &k[i..])
}

/// `path?query` with the query's parameters sorted (how the default key mode stores it).
pub fn sort_query(pq: &str) -> String {
    match pq.split_once('?') {
        Some((p, q)) => match super::key::normalize_query(q, &super::spec::QueryKey::Sort) {
            Some(q) => format!("{p}?{q}"),
            None => p.to_string(),
        },
        None => pq.to_string(),
    }
}

/// Splits `http://host:port/path`, `host/path` or `/path` into (host, path-and-query). The
/// host is lowercased without its port, as cache keys hold it.
pub fn split_url(u: &str) -> (Option<String>, String) {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .unwrap_or(u);
    if rest.starts_with('/') {
        return (None, rest.to_string());
    }
    let (authority, pq) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let host = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    };
    (Some(host.to_ascii_lowercase()), pq)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_admin_queries_and_bus_messages() {
        let p = Purge::from_query("url=%2Fa%3Fx%3D1&soft=true").unwrap();
        assert_eq!(
            Purge::from_query("url=%2Fc%2F%2561b%2F.%2F%2Fx").map(|p| p.target),
            Ok(Target::Url("/c/ab/x".into()))
        );
        assert_eq!(
            Purge::from_query("url=http%3A%2F%2FLOCALHOST%3A80%2Fc%3Fq%3D1").map(|p| p.target),
            Ok(Target::Url("http://localhost:80/c?q=1".into()))
        );
        for refused in [
            "url=ftp%3A%2F%2Fh%2Fx",
            "url=%2Fc%2Fx%25zz",
            "url=http%3A%2F%2F",
            "url=/a&prefix=/b/",
            "url=/a&url=/b",
            "url=/a&soft=yes",
            "url=/a&soft=true&soft=false",
            "prefix=",
            "tag=",
            "",
        ] {
            assert!(Purge::from_query(refused).is_err(), "{refused}");
        }
        assert_eq!(p.target, Target::Url("/a?x=1".into()));
        assert!(p.soft);
        assert!(Purge::from_query("bogus=1").is_err());
        assert!(Purge::from_query("soft=true").is_err());
        let m = Purge::from_message("tag product-7 soft").unwrap();
        assert_eq!(m.target, Target::Tag("product-7".into()));
        assert!(m.soft);
        let j = Purge::from_message(r#"{"target":{"prefix":"/static/"}}"#).unwrap();
        assert_eq!(j.target, Target::Prefix("/static/".into()));
        assert!(!j.soft);
    }

    /// Found from outside: with `merge_slashes = false` a purge of `/n/a//b` removed `/n/a/b`
    /// (another resource) and left `/n/a//b`; with `escaped_slashes = "keep"` a purge naming
    /// `%2F` was refused although requests keep it.
    #[test]
    fn a_purge_is_named_as_each_listener_names_requests() {
        use scalegate_http::normalize::EscapedSlashes;
        let keep = NormalizeSpec {
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Keep,
        };
        let targets = |q: &str, specs: &[NormalizeSpec]| {
            Purge::from_query_on(q, specs).map(|ps| ps.into_iter().map(|p| p.target).collect())
        };
        let url = |u: &str| Target::Url(u.into());
        assert_eq!(targets("url=/n/a//b", &[keep]), Ok(vec![url("/n/a//b")]));
        assert_eq!(
            targets("url=/n/a%252Fb", &[keep]),
            Ok(vec![url("/n/a%2Fb")])
        );
        assert_eq!(
            targets("url=/n/a//b", &[keep, NormalizeSpec::default()]),
            Ok(vec![url("/n/a//b"), url("/n/a/b")])
        );
        assert!(targets("url=/n/a%252Fb", &[NormalizeSpec::default()]).is_err());
        assert_eq!(
            targets("prefix=/n/a//", &[keep]),
            Ok(vec![Target::Prefix("/n/a//".into())])
        );
    }

    /// Found from outside: only an exact absolute path or URL in Location invalidated; a
    /// relative one (`x`, `./x`, `../i7/x`), an escape or a dot segment left the stored copy
    /// served for its whole freshness.
    #[test]
    fn a_location_is_resolved_and_normalised_as_a_request() {
        let spec = NormalizeSpec::default();
        let t = |host: Option<&str>, r: &str| same_host_target(host, "/i7/w?a=1", r, &spec);
        let h = Some("Ex.com:8080");
        for r in [
            "x",
            "./x",
            "/i7/./x",
            "/i7/../i7/x",
            "/i7/%78",
            "//ex.com:8080/i7/x",
            "http://EX.com/i7/../i7/x",
            "https://ex.com/i7//x",
        ] {
            assert_eq!(t(h, r).as_deref(), Some("/i7/x"), "{r}");
        }
        assert_eq!(t(h, "x?b=2").as_deref(), Some("/i7/x?b=2"));
        assert_eq!(t(None, "x").as_deref(), Some("/i7/x"));
        assert_eq!(t(h, "http://other.com/i7/x"), None);
        assert_eq!(t(h, "//other.com/i7/x"), None);
        assert_eq!(t(None, "http://ex.com/i7/x"), None);
        assert_eq!(t(h, "mailto:a@ex.com"), None);
    }

    #[test]
    fn matchers() {
        let m = |q: &str| Purge::from_query(q).unwrap().matcher();
        let none: [String; 0] = [];
        assert!(m("url=/a?b=1%26a=2").matches("ex.com/a?a=2&b=1", &none));
        assert!(m("url=ex.com/a").matches("ex.com/a", &none));
        assert!(m("url=ex.com/a").matches("/a", &none), "a key without host");
        assert!(!m("url=ex.com/a").matches("other.com/a", &none));
        assert!(!m("url=/a").matches("ex.com/ab", &none));
        assert!(m("prefix=/s/").matches("ex.com/s/x", &none));
        assert!(m("prefix=ex.com/s/").matches("ex.com/s/x", &none));
        assert!(!m("prefix=ex.com/s/").matches("ex.com.evil/s/x", &none));
        assert!(!m("prefix=/s/").matches("ex.com/t/s/", &none));
        assert!(m("tag=t").matches("x/y", &["u".into(), "t".into()]));
    }

    #[test]
    fn splits_urls() {
        assert_eq!(split_url("/p?q"), (None, "/p?q".into()));
        assert_eq!(
            split_url("http://Ex.com:8080/p"),
            (Some("ex.com".into()), "/p".into())
        );
        assert_eq!(
            split_url("[::1]:8080/p"),
            (Some("[::1]".into()), "/p".into())
        );
        assert_eq!(split_url("ex.com"), (Some("ex.com".into()), "/".into()));
    }
}
