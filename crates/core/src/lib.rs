//! Pure decisions of scalegate: which endpoint gets a request, whether an endpoint is healthy,
//! when live traffic ejects it, how its latency estimate moves.
//!
//! Nothing here does I/O or reads a clock: every decision takes `now` as a [`Tick`] and, where it
//! needs chance, an rng. Protocol crates (`scalegate-http`, later `pg`) act on these decisions.

pub mod admission;
pub mod balance;
pub mod capacity;
pub mod endpoint;
pub mod ewma;
pub mod hash;
pub mod health;
pub mod outlier;
pub mod retry;
pub mod time;
pub mod window;

pub use balance::{Balance, EndpointSet, Member, Pick, PickRequest, Tried};
pub use endpoint::EndpointState;
pub use health::{HealthCounter, HealthPolicy, Transition};
pub use outlier::OutlierPolicy;
pub use time::Tick;
