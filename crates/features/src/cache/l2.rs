//! The shared tier (L2) in Redis and the invalidation bus.
//!
//! Layout: one hash per URL key (`{prefix}{url}`) with a `vary` field and one `o:{variant}`
//! field per stored variant, so a lookup is one HGETALL; a set per tag (`{prefix}tag:{tag}`)
//! lists the URL keys carrying it; and an index of URL keys (`l2_index`) makes URL and prefix
//! purges direct lookups. Every key expires with the longest retention of what it holds
//! (EXPIRE NX then GT keep the TTL consistent with L1's).
//!
//! Redis being down never fails a request: lookups are bounded by a short timeout, failures
//! are counted, `up` turns false, and the memory tier carries on alone. Fills are queued and
//! written in order by one task (`l2_write`), so a slow Redis never slows a response and a
//! hiccup delays fills instead of dropping them. Purges are never skipped (`purger`).

use scalegate_shared::Spawner;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::l2_bus;
use super::l2_index;
use super::l2_write::{self, Pending, WriteQueue};
use super::object::{Object, Timing};
use super::spec::RedisSpec;
use super::store::Store;
use scalegate_shared::redis_link::RedisLink;

/// The Redis tier's connection and counters.
pub struct L2 {
    spec: RedisSpec,
    /// The connection; its `up` and `errors` are the tier's.
    pub link: Arc<RedisLink>,
    /// Lookups answered from Redis.
    pub hits: AtomicU64,
    /// Objects written.
    pub writes: AtomicU64,
    /// Memory Redis reports in use (`INFO memory`), refreshed every few seconds.
    pub bytes: AtomicU64,
    /// Fills dropped because the write queue was full.
    pub dropped: AtomicU64,
    queue: Arc<WriteQueue>,
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2").field("link", &self.link).finish()
    }
}

/// An object as Redis holds it (the body travels after this header).
#[derive(Serialize, Deserialize)]
struct Meta {
    status: u16,
    headers: Vec<(String, String)>,
    born_ms: u64,
    fresh_until_ms: u64,
    strict: bool,
    swr_ms: u64,
    sie_ms: u64,
    keep_ms: u64,
    variant: String,
}

impl L2 {
    /// Starts connecting (in the background, retrying), subscribes to the purge channel and
    /// starts the fill writer and the index janitor.
    pub fn start(spawner: &Spawner, spec: RedisSpec, store: Weak<Store>) -> Arc<L2> {
        let l2 = Arc::new(L2 {
            link: RedisLink::start(spawner, &spec.url, spec.timeout, "cache tier"),
            spec,
            hits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queue: Arc::default(),
        });
        let me = Arc::downgrade(&l2);
        spawner.spawn(measure(me.clone()));
        spawner.spawn(l2_bus::subscribe(me.clone(), store.clone()));
        spawner.spawn(l2_write::writer(me.clone(), l2.queue.clone(), store));
        spawner.spawn(l2_index::janitor(me));
        l2
    }

    pub(super) fn key(&self, url: &str) -> String {
        format!("{}{url}", self.spec.key_prefix)
    }

    pub(super) fn tag_key(&self, tag: &str) -> String {
        format!("{}tag:{tag}", self.spec.key_prefix)
    }

    pub(super) fn prefix(&self) -> &str {
        &self.spec.key_prefix
    }

    /// Runs one call with the tier's timeout; None when Redis is down, slow or errs.
    async fn call<T, F>(
        &self,
        what: &str,
        f: impl Fn(redis::aio::ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.link.call(what, f).await
    }

    /// Every variant stored for a URL key, with the Vary list.
    pub async fn get(
        &self,
        url: &str,
        url_key: &Arc<str>,
    ) -> Option<(Vec<HeaderName>, Vec<Object>)> {
        let key = self.key(url);
        let fields: Vec<(String, Vec<u8>)> = self
            .call("get", |mut c| {
                let key = key.clone();
                async move { c.hgetall(key).await }
            })
            .await?;
        let mut vary = Vec::new();
        let mut objects = Vec::new();
        for (field, value) in fields {
            if field == "vary" {
                vary = String::from_utf8_lossy(&value)
                    .split(',')
                    .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                    .collect();
            } else if field.starts_with("o:")
                && let Some(o) = decode(&value, url_key.clone())
            {
                objects.push(o);
            }
        }
        if objects.is_empty() {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some((vary, objects))
    }

    /// Queues an object for writing (in order, retried through a hiccup); a full queue drops
    /// it and counts.
    pub fn put(&self, vary: &[HeaderName], obj: &Arc<Object>, fetched: SystemTime) {
        let vary = vary
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let queued = self.queue.push(Pending {
            vary,
            obj: obj.clone(),
            fetched,
        });
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Redis URL.
    pub fn url(&self) -> &str {
        &self.spec.url
    }

    /// The purge channel.
    pub fn channel(&self) -> &str {
        &self.spec.channel
    }
}

/// Time budget of background Redis work (fill writes, purges, the janitor): long enough for a
/// pause or a failover to pass, never on a request's path.
pub const BACKGROUND: Duration = Duration::from_secs(2);

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn encode(o: &Object) -> Option<Vec<u8>> {
    let t = &o.timing;
    let meta = Meta {
        status: o.status.as_u16(),
        headers: o
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        born_ms: ms(t.born.duration_since(UNIX_EPOCH).ok()?),
        fresh_until_ms: ms(t.fresh_until.duration_since(UNIX_EPOCH).ok()?),
        strict: t.strict,
        swr_ms: ms(t.stale_while_revalidate),
        sie_ms: ms(t.stale_if_error),
        keep_ms: ms(t.keep),
        variant: o.variant.clone(),
    };
    let meta = serde_json::to_vec(&meta).ok()?;
    let mut out = Vec::with_capacity(4 + meta.len() + o.body.len());
    out.extend_from_slice(&u32::try_from(meta.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&o.body);
    Some(out)
}

fn decode(b: &[u8], url: Arc<str>) -> Option<Object> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let meta: Meta = serde_json::from_slice(b.get(4..4 + len)?).ok()?;
    let body = Bytes::copy_from_slice(b.get(4 + len..)?);
    let mut headers = HeaderMap::new();
    for (k, v) in meta.headers {
        headers.append(
            HeaderName::from_bytes(k.as_bytes()).ok()?,
            HeaderValue::try_from(v).ok()?,
        );
    }
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    let timing = Timing {
        born: at(meta.born_ms),
        fresh_until: at(meta.fresh_until_ms),
        strict: meta.strict,
        stale_while_revalidate: Duration::from_millis(meta.swr_ms),
        stale_if_error: Duration::from_millis(meta.sie_ms),
        keep: Duration::from_millis(meta.keep_ms),
    };
    Some(Object::new(
        StatusCode::from_u16(meta.status).ok()?,
        headers,
        body,
        timing,
        url,
        meta.variant,
    ))
}

/// Keeps trying to connect until it does; the connection manager reconnects by itself after.
/// Reads Redis's memory use every few seconds (the tier's size in metrics and the admin view).
async fn measure(l2: Weak<L2>) {
    loop {
        let Some(me) = l2.upgrade() else { return };
        let info: Option<String> = me
            .call("info", |mut c| async move {
                redis::cmd("INFO").arg("memory").query_async(&mut c).await
            })
            .await;
        if let Some(used) = info.as_deref().and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        }) {
            me.bytes.store(used, Ordering::Relaxed);
        }
        drop(me);
        // Soon again while the link is still connecting, then every few seconds.
        let pause = if info.is_some() { 5 } else { 1 };
        tokio::time::sleep(Duration::from_secs(pause)).await;
    }
}
