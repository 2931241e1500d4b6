//! Admission: whether a request may start at all — rate limits, and the adaptive concurrency
//! limit and priorities the bulkhead uses.

mod aimd;
mod gcra;

pub use aimd::Aimd;
pub use gcra::{Gcra, RateDecision, RateLimiter};

/// Priority classes: under pressure `Low` is shed first and `Critical` last, and waiting requests
/// are served in priority order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Served first, shed last.
    Critical = 0,
    /// The default.
    Normal = 1,
    /// Shed first.
    Low = 2,
}

impl Priority {
    /// Parses "critical", "normal" or "low".
    pub fn parse(s: &str) -> Option<Priority> {
        match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Some(Priority::Critical),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }

    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}
