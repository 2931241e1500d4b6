//! scalegate's shared-state backends: what gateway instances share state through when there
//! are several of them. [`redis_link`] is a Redis connection that never fails a request (a
//! per-call budget, a hold-off after a failure); [`nats_link`] subscribes to NATS subjects.
//! Features (the cache's tier and purge bus, shared rate limits, fan-out, durable queues) use
//! these; the data path knows neither.

pub mod nats_link;
pub mod redis_link;
