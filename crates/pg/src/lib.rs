//! scalegate's PostgreSQL pooler. Clients speak the v3 wire protocol to it as to a server;
//! it hands them server connections from pools per (database, user) in session or
//! transaction mode, and keeps named prepared statements and session settings right when a
//! client's transactions land on different server connections.
//!
//! Codemap: `proto` (framing and the messages the pooler writes), `login` (SSL refusal,
//! cancel, protocol checks, client auth), `auth` (server-side SCRAM and md5), `server` (a
//! connection to PostgreSQL), `pool` (FIFO waiting, reuse, recycling), `session` (the message
//! pump), `stmt` (prepared statements across servers), `settings` (SET tracking), `effects`
//! (what SQL does to a session: state to pin or refuse, DEALLOCATE/DISCARD), `console`
//! (SHOW POOLS and friends), `classify` (read or write), `topology` (roles, lag,
//! failover), `shard` / `sharding` (keys to shards, statement plans), `stream` / `server_tls`
//! (TLS both ways), `metrics` (Prometheus; `wait_histogram` its lock-free wait times), `pooler`
//! (the whole).

pub mod auth;
pub mod cancel;
mod candidates;
pub mod classify;
pub mod clock;
pub mod console;
pub mod console_ext;
pub mod effects;
pub mod failure;
pub mod flag;
mod held;
pub mod login;
pub mod metrics;
pub mod oldest_wait;
pub mod outgoing;
pub mod pool;
pub mod pooler;
pub mod proto;
pub mod queued_cancel;
pub mod server;
pub mod server_tls;
pub mod session;
pub mod settings;
pub mod shard;
pub mod sharding;
pub mod spare;
pub mod spec;
pub mod stmt;
pub mod stream;
pub mod topology;
pub mod wait_histogram;
pub mod wait_timer;

pub use pooler::Pooler;
pub use spec::{
    ClientAuth, DatabaseSpec, OnSessionState, PgSpec, PoolMode, ServerSpec, UserSpec,
    auto_pool_size,
};
