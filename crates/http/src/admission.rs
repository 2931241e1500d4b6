//! Admission on the request path: the route's rate limit, and the IETF RateLimit headers that
//! tell clients where they stand (draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy:
//! "name";q=<quota>;w=<window s>` and `RateLimit: "name";r=<remaining>;t=<reset s>`).
//!
//! A limit is kept in this process's memory, or in Redis when it is shared by every instance
//! (a `plug::SharedCounter`: the features' Redis-backed one); both give a `RateDecision` that becomes the same outcome and headers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use scalegate_core::admission::{RateDecision, RateLimiter};
use scalegate_core::hash::{mix, stable_hash};

use crate::clock;
use crate::error::ProxyError;
use crate::plug::SharedCounter;
use crate::spec::{RateKey, RateLimitSpec};

/// Where a request stands against its route's limit, for the response headers.
#[derive(Clone, Debug)]
pub struct RateStatus {
    policy: HeaderValue,
    status: HeaderValue,
}

fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The answer of a rate-limit check: Ok with the header values to send, or the 429 outcome
/// with them.
pub type RateOutcome = Result<RateStatus, (ProxyError, RateStatus)>;

/// Checks the request against the route's limit in this process's memory.
pub fn check(
    limiter: &RateLimiter,
    spec: &RateLimitSpec,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> RateOutcome {
    let key = key_of(spec, headers, peer);
    verdict(spec, limiter.check(key, clock::now()))
}

/// Checks the request with key `key` (from [`key_of`]) against a limit shared through Redis,
/// or in memory while Redis does not answer.
pub async fn check_shared(
    shared: &dyn SharedCounter,
    route: &str,
    limiter: &RateLimiter,
    spec: &RateLimitSpec,
    key: u64,
) -> RateOutcome {
    let decision = match shared.check(route, key, &spec.gcra).await {
        Some(d) => d,
        None => limiter.check(key, clock::now()),
    };
    verdict(spec, decision)
}

/// The request's key under the route's key parts.
pub fn key_of(spec: &RateLimitSpec, headers: &HeaderMap, peer: SocketAddr) -> u64 {
    let mut key = 0x5ca1_e6a7_u64;
    for part in &spec.key {
        let h = match part {
            RateKey::Ip => match peer.ip() {
                IpAddr::V4(v4) => stable_hash(&v4.octets()),
                IpAddr::V6(v6) => stable_hash(&v6.octets()),
            },
            RateKey::Header(name) => stable_hash(
                headers
                    .get(name.as_str())
                    .map_or(&b""[..], |v| v.as_bytes()),
            ),
            RateKey::Route => 1,
        };
        key = mix(key ^ h);
    }
    key
}

/// The outcome and the RateLimit headers for a decision.
fn verdict(spec: &RateLimitSpec, decision: RateDecision) -> RateOutcome {
    let gcra = &spec.gcra;
    let policy = format!(
        "\"{}\";q={};w={}",
        spec.name,
        gcra.burst(),
        secs_up(gcra.window()).max(1)
    );
    let header =
        |s: String| HeaderValue::try_from(s).unwrap_or(HeaderValue::from_static("\"default\""));
    match decision {
        RateDecision::Allow { remaining, reset } => Ok(RateStatus {
            policy: header(policy),
            status: header(format!(
                "\"{}\";r={remaining};t={}",
                spec.name,
                secs_up(reset)
            )),
        }),
        RateDecision::Deny { retry_after } => {
            let secs = secs_up(retry_after).max(1);
            let status = RateStatus {
                policy: header(policy),
                status: header(format!("\"{}\";r=0;t={secs}", spec.name)),
            };
            Err((
                ProxyError::RateLimited {
                    retry_after_secs: secs,
                },
                status,
            ))
        }
    }
}

impl RateStatus {
    /// Adds `RateLimit-Policy` and `RateLimit` to a response.
    pub fn apply(&self, h: &mut HeaderMap) {
        h.insert("ratelimit-policy", self.policy.clone());
        h.insert("ratelimit", self.status.clone());
    }
}
