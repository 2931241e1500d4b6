//! An upstream's `dns` table, checked.

use std::time::Duration;

use scalegate_http::spec::DnsSpec;
use toml::Spanned;

use super::raw::RawDns;
use super::validate::Check;

/// DNS discovery settings.
pub(super) fn dns(c: &mut Check, raw: &Spanned<RawDns>) -> DnsSpec {
    let span = raw.span();
    let d = raw.get_ref();
    let name = d.name.get_ref();
    let ok = name
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        c.err(
            d.name.span(),
            format!(r#"dns.name {name:?} must be "host:port", e.g. "app.default.svc.cluster.local:8000""#),
        );
    }
    DnsSpec {
        name: name.clone(),
        interval: c.dur(&d.interval, Duration::from_secs(5), "dns.interval"),
        weight: c.int(d.weight, &span, 1..=1000, 1, "dns.weight") as u32,
        zone: d.zone.clone(),
    }
}
