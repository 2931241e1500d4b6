//! `runtime.zone` and an upstream's `zone_affinity`, checked.

use scalegate_http::spec::{EndpointSpec, ZoneAffinity};
use toml::Spanned;

use super::raw::{RawZoneAffinity, RawZoneAffinityTable};
use super::validate::Check;

/// Environment variable naming the gateway's zone when the file does not (one config file for
/// every replica, the zone from the node it runs on).
pub const ZONE_ENV: &str = "SCALEGATE_ZONE";

/// The gateway's own zone: `runtime.zone`, else `SCALEGATE_ZONE`, else none.
pub(super) fn gateway_zone(c: &mut Check, raw: Option<&Spanned<String>>) -> Option<String> {
    match raw {
        Some(z) if z.get_ref().trim().is_empty() => {
            c.err(z.span(), "runtime.zone must not be empty");
            None
        }
        Some(z) => Some(z.get_ref().clone()),
        None => std::env::var(ZONE_ENV)
            .ok()
            .filter(|z| !z.trim().is_empty()),
    }
}

/// An upstream's zone affinity; it needs the gateway's zone and endpoints labelled with zones.
pub(super) fn affinity(
    c: &mut Check,
    raw: Option<&Spanned<RawZoneAffinity>>,
    zone: Option<&str>,
    endpoints: &[EndpointSpec],
    dns_zone: Option<&str>,
) -> Option<ZoneAffinity> {
    let raw = raw?;
    let span = raw.span();
    let min = match raw.get_ref() {
        RawZoneAffinity::On(false) => return None,
        RawZoneAffinity::On(true) => None,
        RawZoneAffinity::Table(RawZoneAffinityTable {
            min_available_percent,
        }) => *min_available_percent,
    };
    let min_available_percent = c.int(
        min,
        &span,
        1..=100,
        70,
        "zone_affinity.min_available_percent",
    ) as u32;
    let Some(zone) = zone else {
        c.err(
            span,
            format!("zone_affinity needs the gateway's zone: set runtime.zone or {ZONE_ENV}"),
        );
        return None;
    };
    if endpoints.iter().all(|e| e.zone.is_none()) && dns_zone.is_none() {
        c.err(
            span,
            r#"zone_affinity needs endpoints with zones, e.g. { addr = "10.0.0.1:8000", zone = "a" }"#,
        );
        return None;
    }
    Some(ZoneAffinity {
        zone: zone.to_owned(),
        min_available_percent,
    })
}
