//! `[fanout]`, checked: WebSocket subscriptions to topics, and the bus between instances.

use std::time::Duration;

use scalegate_features::fanout::{AuthorizeSpec, BusSpec, FanoutSpec};
use toml::Spanned;

use super::raw::RawFanout;
use super::validate::Check;

/// The fan-out settings, if any.
pub(super) fn fanout(
    c: &mut Check,
    raw: Option<&Spanned<RawFanout>>,
    listeners: &[String],
    upstreams: &[String],
) -> Option<FanoutSpec> {
    let raw = raw?;
    let span = raw.span();
    let f = raw.get_ref();
    let path_prefix = match &f.path_prefix {
        Some(p) if !p.get_ref().starts_with('/') || !p.get_ref().ends_with('/') => {
            c.err(
                p.span(),
                r#"fanout.path_prefix must start and end with "/" (topics are the segment after it), e.g. "/live/""#,
            );
            "/live/".to_string()
        }
        Some(p) => p.get_ref().clone(),
        None => "/live/".to_string(),
    };
    let listener = f.listener.as_ref().map(|l| {
        if !listeners.contains(l.get_ref()) {
            c.err(
                l.span(),
                format!("fanout.listener {:?} is not a listener's name", l.get_ref()),
            );
        }
        l.get_ref().clone()
    });
    let buffer = c.opt_int(&f.buffer, 1..=1_000_000, 256, "fanout.buffer") as usize;
    let max_message_bytes = match &f.max_message_bytes {
        Some(m) if !(1..=16 << 20).contains(&m.get_ref().0) => {
            c.err(
                m.span(),
                "fanout.max_message_bytes must be between 1 and 16MiB",
            );
            64 << 10
        }
        Some(m) => m.get_ref().0 as usize,
        None => 64 << 10,
    };
    let bus = match (&f.redis, &f.nats) {
        (Some(_), Some(_)) => {
            c.err(span, "fanout: choose one bus, redis or nats");
            None
        }
        (Some(r), None) => {
            let r = r.get_ref();
            super::cluster::redis_url(c, &r.url, "fanout.redis.url");
            Some(BusSpec::Redis {
                url: r.url.get_ref().clone(),
                channel_prefix: r
                    .prefix
                    .clone()
                    .unwrap_or_else(|| "scalegate:fanout:".into()),
            })
        }
        (None, Some(n)) => {
            let n = n.get_ref();
            super::nats::url(c, &n.url, "fanout.nats.url");
            let subject_prefix = n
                .prefix
                .clone()
                .unwrap_or_else(|| "scalegate.fanout.".into());
            let key = "fanout.nats.prefix";
            super::nats::subject(c, n.url.span(), &subject_prefix, key, true);
            Some(BusSpec::Nats {
                url: n.url.get_ref().clone(),
                subject_prefix,
            })
        }
        (None, None) => None,
    };
    let authorize = f.authorize.as_ref().map(|a| {
        let a = a.get_ref();
        if !upstreams.contains(a.upstream.get_ref()) {
            c.err(
                a.upstream.span(),
                format!(
                    "fanout.authorize.upstream {:?} is not an upstream; defined: {upstreams:?}",
                    a.upstream.get_ref()
                ),
            );
        }
        let path = match &a.path {
            Some(p) if !p.get_ref().starts_with('/') || p.get_ref().contains('?') => {
                c.err(
                    p.span(),
                    r#"fanout.authorize.path must start with "/" and have no query (the topic is added as ?topic=)"#,
                );
                "/".to_string()
            }
            Some(p) => p.get_ref().clone(),
            None => "/fanout/authorize".to_string(),
        };
        AuthorizeSpec {
            upstream: a.upstream.get_ref().clone(),
            path,
            timeout: c.dur(&a.timeout, Duration::from_secs(2), "fanout.authorize.timeout"),
        }
    });
    Some(FanoutSpec {
        path_prefix,
        listener,
        buffer,
        max_message_bytes,
        bus,
        authorize,
    })
}
