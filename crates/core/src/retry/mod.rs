//! Retries: whether a failed attempt is tried again, after how long, and whether the upstream can
//! afford it.
//!
//! [`RetryPolicy::decide`] is the one place that answers "retry?"; [`Backoff`] gives the wait and
//! [`RetryBudget`] caps retries at a share of live traffic so a failing upstream never gets much
//! more than its normal load.

mod backoff;
mod budget;

use std::time::Duration;

pub use backoff::Backoff;
pub use budget::RetryBudget;

/// How an attempt ended, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The TCP connect failed or timed out: the request never reached the upstream.
    ConnectFailed,
    /// The upstream refused the request before processing any of it (an HTTP/2 stream reset
    /// with REFUSED_STREAM, or opened above the last stream a GOAWAY let through: RFC 9113
    /// §8.7): safe to send again whatever its method.
    Refused,
    /// The connection broke after the request may have been sent.
    Reset,
    /// No response head within the per-try timeout.
    Timeout,
    /// A response with this status and, if present, its Retry-After.
    Status(u16, Option<Duration>),
}

/// Why a retry was not made; the last attempt's outcome is passed back to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The outcome is a success or not a retryable failure.
    NotRetryable,
    /// Attempts exhausted.
    Attempts,
    /// The method is not idempotent and there is no Idempotency-Key.
    NotIdempotent,
    /// The request body was too large to keep for a replay.
    BodyNotReplayable,
    /// The retry budget is spent.
    Budget,
    /// The upstream asked for a wait longer than allowed, or past the deadline.
    RetryAfterTooLong,
}

/// The answer for one failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this wait.
    Retry(Duration),
    /// Do not.
    GiveUp(GiveUp),
}

/// What the caller knows about the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    /// GET, HEAD, OPTIONS, PUT, DELETE (or TRACE), or the request carries an Idempotency-Key.
    pub idempotent: bool,
    /// The body was kept and can be sent again.
    pub replayable: bool,
}

/// A route's retry settings. Validated at config load.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = no retries).
    pub attempts: u32,
    /// Wait between attempts.
    pub backoff: Backoff,
    /// Longest Retry-After honoured; a longer one is passed back to the client.
    pub max_retry_after: Duration,
    /// Statuses retried without a Retry-After (default 502, 503, 504).
    pub retry_statuses: Vec<u16>,
}

impl RetryPolicy {
    /// Decides on the attempt numbered `attempt` (1 = the first) that ended with `outcome`.
    /// `budget_ok` is the budget's answer; `remaining` is the time left before the request's
    /// overall deadline. `jitter` is a uniform draw in [0, 1).
    pub fn decide(
        &self,
        attempt: u32,
        outcome: AttemptOutcome,
        facts: RequestFacts,
        budget_ok: bool,
        remaining: Duration,
        jitter: f64,
    ) -> Decision {
        let retry_after = match outcome {
            AttemptOutcome::Status(s, after) => {
                let honoured = after.is_some() && (s == 429 || s == 503);
                if !honoured && !self.retry_statuses.contains(&s) {
                    return Decision::GiveUp(GiveUp::NotRetryable);
                }
                after.filter(|_| honoured)
            }
            _ => None,
        };
        if attempt >= self.attempts {
            return Decision::GiveUp(GiveUp::Attempts);
        }
        // A request that never reached the upstream, or that it refused unprocessed, can be
        // sent again whatever its method.
        let safe = facts.idempotent
            || matches!(
                outcome,
                AttemptOutcome::ConnectFailed | AttemptOutcome::Refused
            );
        if !safe {
            return Decision::GiveUp(GiveUp::NotIdempotent);
        }
        if !facts.replayable {
            return Decision::GiveUp(GiveUp::BodyNotReplayable);
        }
        let wait = match retry_after {
            Some(after) if after > self.max_retry_after => {
                return Decision::GiveUp(GiveUp::RetryAfterTooLong);
            }
            Some(after) => after,
            None => self.backoff.delay(attempt, jitter),
        };
        if wait >= remaining {
            return Decision::GiveUp(GiveUp::RetryAfterTooLong);
        }
        if !budget_ok {
            return Decision::GiveUp(GiveUp::Budget);
        }
        Decision::Retry(wait)
    }
}

/// Whether a method may be sent twice without changing the outcome (RFC 9110 §9.2.2).
pub fn is_idempotent_method(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(100))
                .expect("valid"),
            max_retry_after: Duration::from_secs(2),
            retry_statuses: vec![502, 503, 504],
        }
    }

    const GET: RequestFacts = RequestFacts {
        idempotent: true,
        replayable: true,
    };
    const POST: RequestFacts = RequestFacts {
        idempotent: false,
        replayable: true,
    };
    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn retries_idempotent_requests_on_upstream_failures() {
        let p = policy();
        for o in [
            AttemptOutcome::Reset,
            AttemptOutcome::Timeout,
            AttemptOutcome::Status(502, None),
        ] {
            assert!(
                matches!(p.decide(1, o, GET, true, LONG, 0.5), Decision::Retry(_)),
                "{o:?}"
            );
        }
        assert_eq!(
            p.decide(1, AttemptOutcome::Status(500, None), GET, true, LONG, 0.5),
            Decision::GiveUp(GiveUp::NotRetryable)
        );
        assert_eq!(
            p.decide(1, AttemptOutcome::Status(200, None), GET, true, LONG, 0.5),
            Decision::GiveUp(GiveUp::NotRetryable)
        );
    }

    #[test]
    fn stops_after_the_last_attempt() {
        assert_eq!(
            policy().decide(3, AttemptOutcome::Reset, GET, true, LONG, 0.5),
            Decision::GiveUp(GiveUp::Attempts)
        );
    }

    #[test]
    fn a_post_is_retried_only_when_it_never_left_or_was_refused_unprocessed() {
        let p = policy();
        assert_eq!(
            p.decide(1, AttemptOutcome::Reset, POST, true, LONG, 0.5),
            Decision::GiveUp(GiveUp::NotIdempotent)
        );
        for outcome in [AttemptOutcome::ConnectFailed, AttemptOutcome::Refused] {
            assert!(matches!(
                p.decide(1, outcome, POST, true, LONG, 0.5),
                Decision::Retry(_)
            ));
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_maximum() {
        let p = policy();
        let one = Some(Duration::from_secs(1));
        assert_eq!(
            p.decide(1, AttemptOutcome::Status(503, one), GET, true, LONG, 0.5),
            Decision::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            p.decide(1, AttemptOutcome::Status(429, one), GET, true, LONG, 0.5),
            Decision::Retry(Duration::from_secs(1))
        );
        let ten = Some(Duration::from_secs(10));
        assert_eq!(
            p.decide(1, AttemptOutcome::Status(503, ten), GET, true, LONG, 0.5),
            Decision::GiveUp(GiveUp::RetryAfterTooLong)
        );
        assert_eq!(
            p.decide(
                1,
                AttemptOutcome::Status(503, one),
                GET,
                true,
                Duration::from_millis(500),
                0.5
            ),
            Decision::GiveUp(GiveUp::RetryAfterTooLong),
            "a wait past the deadline is pointless"
        );
    }

    #[test]
    fn budget_and_replayability_are_respected() {
        let p = policy();
        assert_eq!(
            p.decide(1, AttemptOutcome::Reset, GET, false, LONG, 0.5),
            Decision::GiveUp(GiveUp::Budget)
        );
        let unreplayable = RequestFacts {
            idempotent: true,
            replayable: false,
        };
        assert_eq!(
            p.decide(1, AttemptOutcome::Reset, unreplayable, true, LONG, 0.5),
            Decision::GiveUp(GiveUp::BodyNotReplayable)
        );
    }
}
