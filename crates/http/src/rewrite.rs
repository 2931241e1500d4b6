//! Per-route edits of what crosses the gateway: the path prefix the upstream sees, and headers
//! set or removed on the request going up and on the response coming back.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Headers to remove, then headers to set (each replacing any of the same name).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderEdits {
    /// Set, in order, replacing existing values.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Removed (all values).
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Applies the edits to `h`.
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
    }
}

/// Replaces the route's matched path prefix (`from`) with `to` on the way to the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRewrite {
    /// The route's `path_prefix`.
    pub from: String,
    /// What the upstream sees instead.
    pub to: String,
}

impl PathRewrite {
    /// The rewritten path and query, or None when `path_and_query` does not start with the
    /// prefix. Exactly one `/` joins the new prefix and the rest: `/api` → `/v2` turns
    /// `/api/users?x=1` into `/v2/users?x=1`, and `/api/` → `/` turns `/api/users` into `/users`.
    pub fn apply(&self, path_and_query: &str) -> Option<String> {
        let rest = path_and_query.strip_prefix(self.from.as_str())?;
        let to = self.to.as_str();
        Some(if rest.is_empty() || rest.starts_with('?') {
            format!("{to}{rest}")
        } else if rest.starts_with(';') {
            // Path parameters of the matched segment stay on the segment that replaces it:
            // `/api;v=1` → `/v2;v=1`, not `/v2/;v=1` (a `/;` the edge refuses from clients).
            let head = to.strip_suffix('/').filter(|h| !h.is_empty()).unwrap_or(to);
            format!("{head}{rest}")
        } else {
            let head = to.strip_suffix('/').unwrap_or(to);
            let tail = rest.strip_prefix('/').unwrap_or(rest);
            format!("{head}/{tail}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(from: &str, to: &str, path: &str) -> Option<String> {
        PathRewrite {
            from: from.into(),
            to: to.into(),
        }
        .apply(path)
    }

    #[test]
    fn prefixes_are_joined_with_exactly_one_slash() {
        assert_eq!(
            rw("/api", "/v2", "/api/users?x=1").as_deref(),
            Some("/v2/users?x=1")
        );
        assert_eq!(rw("/api", "/v2", "/api").as_deref(), Some("/v2"));
        assert_eq!(rw("/api", "/v2", "/api?q").as_deref(), Some("/v2?q"));
        assert_eq!(rw("/api/", "/", "/api/users").as_deref(), Some("/users"));
        assert_eq!(rw("/api", "/", "/api/users").as_deref(), Some("/users"));
        assert_eq!(rw("/api", "/", "/api").as_deref(), Some("/"));
        assert_eq!(
            rw("/api/", "/v2", "/api/users").as_deref(),
            Some("/v2/users")
        );
        assert_eq!(
            rw("/api/", "/v2/", "/api/a//b").as_deref(),
            Some("/v2/a//b")
        );
        assert_eq!(rw("/api", "/v2", "/other"), None);
        // Found from outside (session 20): parameters of the matched segment stay on it.
        assert_eq!(rw("/api", "/v2", "/api;v=1").as_deref(), Some("/v2;v=1"));
        assert_eq!(
            rw("/api", "/v2/", "/api;v=1?x").as_deref(),
            Some("/v2;v=1?x")
        );
    }

    #[test]
    fn removals_come_before_sets() {
        let e = HeaderEdits {
            set: vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("prod"),
            )],
            remove: vec![
                HeaderName::from_static("x-env"),
                HeaderName::from_static("server"),
            ],
        };
        let mut h = HeaderMap::new();
        h.append("x-env", HeaderValue::from_static("a"));
        h.append("x-env", HeaderValue::from_static("b"));
        h.insert("server", HeaderValue::from_static("nginx"));
        e.apply(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-env"], "prod");
    }
}
