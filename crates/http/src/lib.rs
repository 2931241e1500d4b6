//! scalegate's HTTP data path: listeners, routing, proxying over pooled upstream connections,
//! active health checks. Decisions (which endpoint, is it healthy) come from `scalegate-core`;
//! this crate acts on them. Features (the cache, queued routes, fan-out, shared rate limits)
//! live in `scalegate-features` and plug in through [`plug`]: this crate knows none of them.
//!
//! Read [`proxy`] first: it is the request path, phase by phase.

pub mod access;
pub mod access_log;
pub mod admission;
pub mod body;
pub mod bulkhead;
pub mod cache_control;
pub mod clock;
pub mod compress;
pub mod conn;
pub mod dial;
pub mod edge;
pub mod error;
pub mod fallback;
pub mod forwarded;
pub mod gateway;
pub mod h2_resets;
pub mod h2_stall;
pub mod h2_websocket;
pub mod headers;
pub mod health_check;
pub mod listener;
pub mod live_metrics;
pub mod metrics;
pub mod normalize;
pub mod oneshot;
pub mod plain_on_tls;
pub mod plug;
pub mod pool;
pub mod proxy;
pub mod retry;
pub mod rewrite;
pub mod router;
pub mod small_writes;
pub mod spec;
pub mod stall;
pub mod switches;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod worker;
pub mod ws_frames;

pub use error::ProxyError;
pub use gateway::{ApplyError, Gateway, Snapshot};
pub use spec::GatewaySpec;
