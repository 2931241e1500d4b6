//! Admission: whether a request may start at all (rate limits now; load shedding later).

mod gcra;

pub use gcra::{Gcra, RateDecision, RateLimiter};
