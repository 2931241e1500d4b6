//! scalegate's features on top of the data path: the RFC 9111 cache ([`cache`]), queued routes
//! ([`queue`]), WebSocket fan-out ([`fanout`]) and rate limits shared through Redis
//! ([`shared_limit`]). Each plugs into `scalegate-http` through its `plug` traits; [`Features`]
//! builds them for each config the gateway applies.

pub mod cache;
pub mod fanout;
pub mod plugins;
pub mod queue;
pub mod shared_limit;

pub use plugins::{
    FeatureSpec, FeatureState, Features, RouteFeatures, cache, fanout, queue, queues,
    shared_limits, state,
};
