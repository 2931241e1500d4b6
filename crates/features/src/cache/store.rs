//! The memory tier (L1): a moka cache bounded by bytes (TinyLFU admission), one entry per URL
//! key holding that URL's variants; plus the coalescing table and hit-for-pass markers. The
//! Redis tier, when configured, sits behind it (see `l2`).

use scalegate_shared::Spawner;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderName;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::flight::{FlightGuard, Flights, Join};
use super::object::{Object, Variants};
use super::purge::Purge;
use super::purge_log::PurgeLog;
use super::spec::StoreSpec;

/// How long a key that answered uncacheable skips coalescing (hit-for-pass).
const PASS_FOR: Duration = Duration::from_secs(10);

/// The gateway-wide object store.
pub struct Store {
    spec: StoreSpec,
    l1: Cache<Arc<str>, Arc<Variants>>,
    pass: Cache<String, ()>,
    flights: Arc<Flights>,
    log: PurgeLog,
    /// Purges that failed somewhere and are retried.
    pub retries: super::purger::Retries,
    /// The Redis tier, when configured.
    pub l2: Option<Arc<super::l2::L2>>,
    /// The NATS purge bus, when configured.
    pub nats: Option<Arc<super::nats::Nats>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("objects", &self.l1.entry_count())
            .field("bytes", &self.l1.weighted_size())
            .finish()
    }
}

struct Retention;

impl moka::Expiry<Arc<str>, Arc<Variants>> for Retention {
    fn expire_after_create(&self, _: &Arc<str>, v: &Arc<Variants>, _: Instant) -> Option<Duration> {
        Some(v.retention(SystemTime::now()).max(Duration::from_secs(1)))
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        v: &Arc<Variants>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.retention(SystemTime::now()).max(Duration::from_secs(1)))
    }
}

/// A summary line of one object for the admin view.
#[derive(Debug, serde::Serialize)]
pub struct ObjectInfo {
    /// URL key.
    pub url: String,
    /// Body bytes.
    pub bytes: usize,
    /// Hits served.
    pub hits: u64,
    /// Seconds of freshness left (negative: stale).
    pub ttl: i64,
    /// Tags.
    pub tags: Vec<String>,
}

impl Store {
    /// An empty store.
    pub fn new(spec: StoreSpec, spawner: &Spawner) -> Arc<Store> {
        let l1 = Cache::builder()
            .max_capacity(spec.max_bytes)
            .weigher(|_: &Arc<str>, v: &Arc<Variants>| v.weight())
            .expire_after(Retention)
            .build();
        let pass = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(PASS_FOR)
            .build();
        Arc::new_cyclic(|me| Store {
            l2: spec
                .redis
                .clone()
                .map(|r| super::l2::L2::start(spawner, r, me.clone())),
            nats: spec
                .nats
                .clone()
                .map(|n| super::nats::Nats::start(spawner, n, me.clone())),
            spec,
            l1,
            pass,
            flights: Arc::default(),
            log: PurgeLog::default(),
            retries: Default::default(),
        })
    }

    /// Its settings (a reload with the same settings keeps the store).
    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    /// The variants stored for a URL key in memory.
    pub fn get(&self, url: &str) -> Option<Arc<Variants>> {
        self.l1.get(url)
    }

    /// Stores an object in memory (replacing its variant).
    pub fn put(&self, vary: Vec<HeaderName>, obj: Arc<Object>) {
        self.l1
            .entry(obj.url.clone())
            .and_compute_with(|cur| match cur {
                Some(e) => Op::Put(Arc::new(e.value().with(vary, obj))),
                None => Op::Put(Arc::new(Variants {
                    vary,
                    items: vec![obj],
                })),
            });
    }

    /// Stores a fetched object in both tiers (Redis in the background), unless a purge that
    /// matches it was applied after `fetched` (when its request went to the origin).
    pub fn insert(&self, vary: Vec<HeaderName>, obj: Arc<Object>, fetched: SystemTime) {
        if self.purged_since(fetched, &obj) {
            return;
        }
        if let Some(l2) = &self.l2 {
            l2.put(&vary, &obj, fetched);
        }
        self.put(vary, obj);
    }

    /// Empties the memory tier (purges may have been missed).
    pub fn clear_memory(&self) {
        self.l1.invalidate_all();
    }

    /// Removes every variant of a URL key from memory.
    pub fn remove(&self, url: &str) {
        self.l1.invalidate(url);
    }

    /// Joins the fetch of a key (coalescing).
    pub fn join(&self, key: String) -> Join {
        self.flights.join(key)
    }

    /// Remembers that a key answered uncacheable, so requests for it skip coalescing.
    pub fn mark_pass(&self, key: String) {
        self.pass.insert(key, ());
    }

    /// Whether a key recently answered uncacheable.
    pub fn is_pass(&self, key: &str) -> bool {
        self.pass.contains_key(key)
    }

    /// Forgets that a key answered uncacheable (it has just been stored).
    pub fn clear_pass(&self, key: &str) {
        self.pass.invalidate(key);
    }

    /// A guard for a fetch of `key` that coalesces nothing but may store (hit-for-miss).
    pub fn detached(&self, key: String) -> FlightGuard {
        self.flights.detached(key)
    }

    /// Applies a purge to the memory tier; returns how many objects it hit. The purge is also
    /// remembered for a while, so a fill that started before it cannot store what it purged.
    pub fn purge_local(&self, p: &Purge) -> usize {
        let m = p.matcher();
        self.log.record(p, &m);
        let mut hit = 0;
        let mut apply = |key: &Arc<str>, v: &Variants| {
            let mut left = 0;
            for o in &v.items {
                if m.matches(&o.url, &o.tags) {
                    o.purge(p.soft);
                    hit += 1;
                } else if o.visible() {
                    left += 1;
                }
            }
            if !p.soft && left == 0 {
                self.l1.invalidate(key);
            }
        };
        match m.direct_keys() {
            Some(keys) => {
                for k in keys {
                    if let Some(v) = self.l1.get(k.as_str()) {
                        apply(&Arc::from(k.as_str()), &v);
                    }
                }
            }
            // Memory holds at most `max_bytes` of objects: walking it is bounded.
            None => {
                for (k, v) in self.l1.iter() {
                    if v.items.iter().any(|o| m.matches(&o.url, &o.tags)) {
                        apply(&k, &v);
                    }
                }
            }
        }
        hit
    }

    /// Whether a purge applied here after `since` matches this object (a fill that started
    /// before the purge must not store what the purge removed).
    pub fn purged_since(&self, since: SystemTime, obj: &Object) -> bool {
        self.log.purged_since(since, &obj.url, &obj.tags)
    }

    /// Objects in memory.
    pub fn objects(&self) -> u64 {
        self.l1.iter().map(|(_, v)| v.items.len() as u64).sum()
    }

    /// Bytes in memory as weighed.
    pub fn bytes(&self) -> u64 {
        self.l1.run_pending_tasks();
        self.l1.weighted_size()
    }

    /// The `n` biggest and the `n` most-hit objects.
    pub fn top(&self, n: usize) -> (Vec<ObjectInfo>, Vec<ObjectInfo>) {
        let now = SystemTime::now();
        let mut all: Vec<ObjectInfo> = self
            .l1
            .iter()
            .flat_map(|(_, v)| v.items.clone())
            .filter(|o| o.visible())
            .map(|o| ObjectInfo {
                url: o.url.to_string(),
                bytes: o.body.len(),
                hits: o.hits.load(std::sync::atomic::Ordering::Relaxed),
                ttl: o.ttl_secs(now),
                tags: o.tags.clone(),
            })
            .collect();
        all.sort_by_key(|o| std::cmp::Reverse(o.bytes));
        let biggest: Vec<ObjectInfo> = all.iter().take(n).map(clone_info).collect();
        all.sort_by_key(|o| std::cmp::Reverse(o.hits));
        all.truncate(n);
        (biggest, all)
    }
}

fn clone_info(o: &ObjectInfo) -> ObjectInfo {
    ObjectInfo {
        url: o.url.clone(),
        bytes: o.bytes,
        hits: o.hits,
        ttl: o.ttl,
        tags: o.tags.clone(),
    }
}
