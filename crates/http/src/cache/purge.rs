//! Purges: by URL, by prefix, by tag; hard (gone) or soft (stale, still usable when the origin
//! fails). The same message comes from the admin API and from the invalidation bus.

use serde::{Deserialize, Serialize};

/// One purge request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    /// What is purged.
    pub target: Target,
    /// Mark stale instead of removing.
    #[serde(default)]
    pub soft: bool,
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
    /// From admin query parameters: `url=`, `prefix=` or `tag=`, and `soft=true`.
    pub fn from_query(q: &str) -> Option<Purge> {
        let mut p = Purge::default();
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "url" => p.target = Target::Url(v),
                "prefix" => p.target = Target::Prefix(v),
                "tag" => p.target = Target::Tag(v),
                "soft" => p.soft = v == "true" || v == "1",
                _ => return None,
            }
        }
        (p.target != Target::None).then_some(p)
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
        Some(Purge { target, soft })
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
        assert_eq!(p.target, Target::Url("/a?x=1".into()));
        assert!(p.soft);
        assert!(Purge::from_query("bogus=1").is_none());
        assert!(Purge::from_query("soft=true").is_none());
        let m = Purge::from_message("tag product-7 soft").unwrap();
        assert_eq!(m.target, Target::Tag("product-7".into()));
        assert!(m.soft);
        let j = Purge::from_message(r#"{"target":{"prefix":"/static/"}}"#).unwrap();
        assert_eq!(j.target, Target::Prefix("/static/".into()));
        assert!(!j.soft);
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
