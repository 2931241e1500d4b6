//! Builds the features of each config the gateway applies ([`Features`], the data path's
//! `plug::Plugins`), keeping what must survive a reload: the cache store while its settings
//! stay, a route's queue (a memory queue keeps its jobs), the fan-out hub (a changed one takes
//! the old one's subscribers over), the Redis link of shared rate limits.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use scalegate_http::gateway::{Gateway, Snapshot};
use scalegate_http::plug::{Built, Plugins, RouteHandler};
use scalegate_http::spec::GatewaySpec;
use scalegate_shared::Spawner;

use crate::cache::serve::CachedRoute;
use crate::cache::{CacheSpec, Store, StoreSpec};
use crate::fanout::{FanoutSpec, Hub};
use crate::queue::{JobsSpec, QueueSpec, RouteQueue};
use crate::shared_limit::SharedLimits;

/// What the features are told to do, validated (the binary builds it beside the data path's
/// `GatewaySpec`).
#[derive(Clone, Debug, Default)]
pub struct FeatureSpec {
    /// The cache store shared by every caching route.
    pub cache: StoreSpec,
    /// WebSocket fan-out (None: off).
    pub fanout: Option<FanoutSpec>,
    /// Durable store for queued routes (None: each instance's memory).
    pub jobs: Option<JobsSpec>,
    /// Route name → its features.
    pub routes: HashMap<String, RouteFeatures>,
}

/// One route's features.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteFeatures {
    /// Response cache (None: off).
    pub cache: Option<CacheSpec>,
    /// Store requests and deliver them later, answering 202 (None: proxy as usual). A queued
    /// route does not cache.
    pub queue: Option<QueueSpec>,
}

/// The features of one snapshot, for the next build and for the admin API.
#[derive(Debug, Default)]
pub struct FeatureState {
    /// The cache store (None when no route caches).
    pub cache: Option<Arc<Store>>,
    /// The fan-out hub (None: off).
    pub fanout: Option<Arc<Hub>>,
    /// Redis for shared rate limits (None when no route shares one).
    pub shared: Option<Arc<SharedLimits>>,
    /// Route name → its queue.
    pub queues: HashMap<String, Arc<RouteQueue>>,
    /// Memory queues a reload replaced (their settings changed) while they still held jobs:
    /// kept so their workers deliver those, a drain waits for them and counts what they lose.
    pub retired: Vec<(String, Arc<RouteQueue>)>,
}

impl FeatureState {
    /// The queue of route `name`.
    pub fn queue(&self, name: &str) -> Option<&Arc<RouteQueue>> {
        self.queues.get(name)
    }
}

/// The features' state in a snapshot (None before any feature was built).
pub fn state(snap: &Snapshot) -> Option<&FeatureState> {
    snap.features.as_deref()?.downcast_ref()
}

/// The cache store of a snapshot (None when no route caches).
pub fn cache(snap: &Snapshot) -> Option<Arc<Store>> {
    state(snap)?.cache.clone()
}

/// The fan-out hub of a snapshot (None: off).
pub fn fanout(snap: &Snapshot) -> Option<Arc<Hub>> {
    state(snap)?.fanout.clone()
}

/// The Redis link of shared rate limits of a snapshot (None when no route shares one).
pub fn shared_limits(snap: &Snapshot) -> Option<Arc<SharedLimits>> {
    state(snap)?.shared.clone()
}

/// The queue of route `route` in a snapshot.
pub fn queue(snap: &Snapshot, route: &str) -> Option<Arc<RouteQueue>> {
    state(snap)?.queue(route).cloned()
}

/// Every queued route of a snapshot with its queue, in route order, then the queues a reload
/// replaced that still hold jobs (named "ROUTE (before reload)").
pub fn queues(snap: &Snapshot) -> Vec<(String, Arc<RouteQueue>)> {
    let mut all: Vec<_> = snap
        .routes
        .iter()
        .filter_map(|r| Some((r.spec.name.clone(), queue(snap, &r.spec.name)?)))
        .collect();
    if let Some(s) = state(snap) {
        all.extend(
            s.retired
                .iter()
                .filter(|(_, q)| q.unsettled() > 0)
                .map(|(name, q)| (format!("{name} (before reload)"), q.clone())),
        );
    }
    all
}

/// The queues of `was` still holding jobs that `queues` does not keep (their settings changed,
/// or their route went): retired ones carried over, and those just replaced.
fn retire(
    was: Option<&FeatureState>,
    queues: &HashMap<String, Arc<RouteQueue>>,
) -> Vec<(String, Arc<RouteQueue>)> {
    let Some(was) = was else {
        return Vec::new();
    };
    let kept = |q: &Arc<RouteQueue>| queues.values().any(|k| Arc::ptr_eq(k, q));
    was.retired
        .iter()
        .map(|(n, q)| (n, q))
        .chain(was.queues.iter())
        .filter(|(_, q)| !kept(q) && q.durable().is_none() && q.unsettled() > 0)
        .map(|(n, q)| (n.clone(), q.clone()))
        .collect()
}

/// The features for one config: pass it to `Gateway::new` / `Gateway::apply`.
#[derive(Debug)]
pub struct Features<'a> {
    /// What they are told to do.
    pub spec: &'a FeatureSpec,
    /// Where their background tasks run (the gateway's control runtime).
    pub spawner: &'a Spawner,
}

impl Plugins for Features<'_> {
    fn build(&self, gateway: &Weak<Gateway>, spec: &GatewaySpec, old: &Snapshot) -> Built {
        let (f, spawner) = (self.spec, self.spawner);
        let was = state(old);
        // One store for every caching route, kept across reloads while its settings stay.
        let cache = f.routes.values().any(|r| r.cache.is_some()).then(|| {
            let old = was.and_then(|s| s.cache.clone());
            match old {
                Some(s) if s.spec() == &f.cache => s,
                old => {
                    let new = Store::new(f.cache.clone(), spawner);
                    // Purges the old store still had to retry are not lost with it.
                    if let Some(old) = old {
                        crate::cache::purger::take_over(&new, &old);
                    }
                    new
                }
            }
        });
        // Kept while its settings stay; a changed one takes the old one's subscribers over (the
        // old one is retired once the new snapshot is in force, `applied`).
        let fanout = f
            .fanout
            .as_ref()
            .map(|spec| match was.and_then(|s| s.fanout.as_ref()) {
                Some(h) if h.spec() == spec => h.clone(),
                Some(h) => Hub::take_over(spawner, spec.clone(), h),
                None => Hub::start(spawner, spec.clone()),
            });
        let shared = spec
            .cluster
            .as_ref()
            .filter(|_| {
                spec.routes
                    .iter()
                    .any(|r| r.rate_limit.as_ref().is_some_and(|l| l.shared))
            })
            .map(|cluster| {
                was.and_then(|s| s.shared.clone())
                    .filter(|s| s.spec() == cluster)
                    .unwrap_or_else(|| SharedLimits::start(spawner, cluster.clone()))
            });
        let mut handlers: HashMap<String, Arc<dyn RouteHandler>> = HashMap::new();
        let mut queues = HashMap::new();
        for r in &spec.routes {
            let Some(rf) = f.routes.get(&r.name) else {
                continue;
            };
            if let Some(q) = &rf.queue {
                // Kept while the store stays the same and the new settings can be taken in
                // place (a memory queue keeps its jobs, a durable one its consumer).
                let old = was.and_then(|s| s.queue(&r.name));
                let queue = match old.filter(|o| o.durable() == f.jobs.as_ref()) {
                    Some(o) if o.adopt(q) => o.clone(),
                    _ => {
                        let carried = old.map(|o| o.carried()).unwrap_or_default();
                        RouteQueue::start(
                            spawner,
                            &r.name,
                            (q.clone(), carried),
                            f.jobs.as_ref(),
                            gateway.clone(),
                        )
                    }
                };
                handlers.insert(r.name.clone(), queue.clone());
                queues.insert(r.name.clone(), queue);
            } else if let (Some(c), Some(store)) = (&rf.cache, &cache) {
                let handler = CachedRoute {
                    spec: Arc::new(c.clone()),
                    store: store.clone(),
                };
                handlers.insert(r.name.clone(), Arc::new(handler));
            }
        }
        let retired = retire(was, &queues);
        Built {
            before_routing: fanout.clone().map(|h| h as _),
            handlers,
            shared: shared.clone().map(|s| s as _),
            state: Some(Arc::new(FeatureState {
                cache,
                fanout,
                shared,
                queues,
                retired,
            })),
        }
    }

    fn applied(&self, old: &Snapshot, new: &Snapshot) {
        let was = state(old).and_then(|s| s.fanout.as_ref());
        let now = state(new).and_then(|s| s.fanout.as_ref());
        if let (Some(was), Some(now)) = (was, now)
            && !Arc::ptr_eq(was, now)
        {
            was.retire();
        }
    }
}
