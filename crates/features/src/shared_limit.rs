//! Rate limits shared by every gateway instance through Redis.
//!
//! One process keeps a GCRA timestamp per key in memory (`scalegate_core::admission`). Several
//! instances behind one load balancer would each allow the full rate, so a route with
//! `rate_limit.shared = true` keeps its timestamps in Redis instead: one Lua script per request
//! reads the key's TAT, applies the same GCRA rule with Redis's own clock (so instances' clocks
//! need not agree) and stores the new TAT with an expiry at the moment it stops mattering.
//! The verdict is then judged by [`Gcra::judge`], the rule the memory limiter uses.
//!
//! When Redis is unreachable, slow (over the call budget) or errs, the request is judged by the
//! route's memory limiter instead: each instance enforces the full limit on its own until Redis
//! is back, which over-admits by at most the number of instances and never blocks traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use scalegate_core::admission::{Gcra, RateDecision};

use scalegate_http::plug::{BoxFut, SharedCounter};
use scalegate_http::spec::ClusterSpec;
use scalegate_shared::redis_link::RedisLink;

/// GCRA on a Redis key, in microseconds: ARGV[1] emission interval, ARGV[2] burst tolerance.
/// Returns how far ahead of now the TAT would run; the TAT is stored only when that is within
/// the tolerance (the request is allowed). `%.0f` keeps all digits of a µs timestamp, which
/// Lua's default number format would round.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local ahead = tat + emission - now
if ahead <= tolerance then
  redis.call('SET', KEYS[1], string.format('%.0f', tat + emission), 'PX', math.floor(ahead / 1000) + 1)
end
return ahead
";

/// The Redis side of shared rate limits, one per gateway (kept across reloads).
#[derive(Debug)]
pub struct SharedLimits {
    spec: ClusterSpec,
    link: Arc<RedisLink>,
    /// The GCRA script: sent by its SHA1 (EVALSHA), loaded again when Redis has lost it
    /// (restart, SCRIPT FLUSH).
    script: redis::Script,
    /// Requests judged in memory because Redis did not answer.
    pub fallbacks: AtomicU64,
}

impl SharedCounter for SharedLimits {
    fn check<'a>(
        &'a self,
        route: &'a str,
        key: u64,
        gcra: &'a Gcra,
    ) -> BoxFut<'a, Option<RateDecision>> {
        Box::pin(SharedLimits::check(self, route, key, gcra))
    }
}

impl SharedLimits {
    /// Starts connecting to the cluster's Redis.
    pub fn start(spawner: &scalegate_shared::Spawner, spec: ClusterSpec) -> Arc<SharedLimits> {
        Arc::new(SharedLimits {
            link: RedisLink::start(spawner, &spec.redis_url, spec.timeout, "shared rate limits"),
            spec,
            script: redis::Script::new(GCRA_SCRIPT),
            fallbacks: AtomicU64::new(0),
        })
    }

    /// The settings it was started with.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The connection (its `up` and `errors` for metrics).
    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    /// Counts one request for `key` of `route` in Redis; None when Redis did not answer (the
    /// caller judges in memory).
    pub async fn check(&self, route: &str, key: u64, gcra: &Gcra) -> Option<RateDecision> {
        let redis_key = format!("{}rl:{route}:{key:016x}", self.spec.key_prefix);
        let emission = micros(gcra.emission()).max(1);
        let tolerance = micros(gcra.window());
        let mut invocation = self.script.key(redis_key);
        invocation.arg(emission).arg(tolerance);
        let answer = self
            .link
            .call("rate limit", |mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async::<i64>(&mut c).await }
            })
            .await;
        match answer {
            Some(ahead) => {
                let ahead_ns = u64::try_from(ahead).unwrap_or(0).saturating_mul(1000);
                Some(gcra.judge(ahead_ns))
            }
            None => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
