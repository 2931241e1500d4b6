//! `[cluster]`: the Redis that gateway instances share state through, and the routes that use it.

use std::time::Duration;

use scalegate_http::spec::ClusterSpec;
use toml::Spanned;

use super::raw::{RawCluster, RawRoute};
use super::validate::Check;

/// Checks a Redis URL's scheme (the client reports anything else only when it connects).
pub(super) fn redis_url(c: &mut Check, url: &Spanned<String>, what: &str) {
    let u = url.get_ref();
    if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
        c.err(
            url.span(),
            format!(r#"{what} {u:?}: expected "redis://host:port[/db]""#),
        );
    }
}

/// The cluster settings, if any.
pub(super) fn cluster(c: &mut Check, raw: Option<&Spanned<RawCluster>>) -> Option<ClusterSpec> {
    let r = raw?.get_ref().redis.as_ref()?.get_ref();
    redis_url(c, &r.url, "cluster.redis.url");
    Some(ClusterSpec {
        redis_url: r.url.get_ref().clone(),
        key_prefix: r.key_prefix.clone().unwrap_or_else(|| "scalegate:".into()),
        timeout: c.dur(
            &r.timeout,
            Duration::from_millis(50),
            "cluster.redis.timeout",
        ),
    })
}

/// A shared rate limit needs somewhere to be shared.
pub(super) fn check_shared_limits(
    c: &mut Check,
    routes: &[Spanned<RawRoute>],
    cluster: Option<&ClusterSpec>,
) {
    if cluster.is_some() {
        return;
    }
    for r in routes {
        if let Some(rl) = &r.get_ref().rate_limit
            && rl.get_ref().shared == Some(true)
        {
            c.err(
                rl.span(),
                r#"rate_limit.shared needs [cluster] redis = { url = "redis://host:port" } (where the instances share counters)"#,
            );
        }
    }
}
