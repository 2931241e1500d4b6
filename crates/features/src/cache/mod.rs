//! The shared HTTP cache (RFC 9111).
//!
//! Read `serve` first: it is the cache's part of the request path. The data path's
//! `cache_control` parses directives and `compress` negotiates and encodes; [`freshness`] holds the RFC 9111 rules of storability, freshness and age,
//! [`verdict`] adds the route's own; [`object`] is a stored response (RFC 5861 stale
//! extensions, purge state), `answer` serves one; [`store`] is the memory tier, [`l2`] the
//! Redis tier and invalidation bus; [`key`] makes cache keys.

pub(crate) mod answer;
pub mod conditional;
pub(crate) mod fill;
pub mod flight;
pub mod freshness;
pub mod key;
pub mod l2;
pub mod l2_bus;
pub mod l2_index;
pub mod l2_write;
pub mod nats;
pub mod object;
pub mod purge;
pub mod purge_log;
pub mod purger;
pub mod range;
pub(crate) mod revalidate;
pub(crate) mod serve;
pub mod spec;
pub mod status;
pub mod store;
pub mod verdict;

pub use purge::{Purge, Target};
pub use purger::{Report as PurgeReport, purge};
pub use scalegate_http::compress::{CompressionSpec, Encoding};
pub use spec::{BypassSpec, CacheSpec, KeySpec, NatsSpec, QueryKey, RedisSpec, StoreSpec, TtlRule};
pub use store::Store;
