//! Dead letters: jobs given up after their last delivery attempt (or because their route went
//! away), kept so an operator can see what failed and why, and send them again once the upstream
//! is fixed (admin `/queue/{route}/dead`). The memory store keeps the newest 1,000 per route (at
//! most 16 MiB of bodies); the durable store keeps them in a JetStream stream of their own.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::Job;

/// Dead letters kept in memory per route.
const MEMORY_MAX_JOBS: usize = 1_000;
/// Body bytes kept in memory per route; the oldest dead letters go first.
const MEMORY_MAX_BYTES: usize = 16 << 20;

/// Why a job was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Every delivery attempt failed.
    AttemptsExhausted,
    /// Its route was removed by a reload.
    RouteGone,
}

impl Reason {
    /// The name used in the admin API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AttemptsExhausted => "attempts_exhausted",
            Reason::RouteGone => "route_gone",
        }
    }

    /// Parses `as_str`'s form (anything else is taken as exhausted attempts).
    pub fn parse(s: &str) -> Reason {
        if s == "route_gone" {
            Reason::RouteGone
        } else {
            Reason::AttemptsExhausted
        }
    }
}

/// A job given up, and why.
#[derive(Clone, Debug)]
pub struct DeadJob {
    /// The job as it was queued (body included).
    pub job: Job,
    /// Deliveries tried.
    pub attempts: u32,
    /// The last delivery's status (None when the upstream never answered).
    pub last_status: Option<u16>,
    /// What went wrong with the last delivery, in words (None for a route gone).
    pub last_error: Option<String>,
    /// Why it was given up.
    pub reason: Reason,
    /// When, in seconds since the Unix epoch.
    pub given_up_at: u64,
}

impl DeadJob {
    /// A dead letter dated now.
    pub fn now(
        job: Job,
        attempts: u32,
        last: Option<(Option<u16>, String)>,
        reason: Reason,
    ) -> DeadJob {
        let (last_status, last_error) = match last {
            Some((s, e)) => (s, Some(e)),
            None => (None, None),
        };
        DeadJob {
            job,
            attempts,
            last_status,
            last_error,
            reason,
            given_up_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// The admin API's view: everything but the body, which is summarised by its size.
    pub fn summary(&self) -> serde_json::Value {
        json!({
            "id": self.job.id,
            "method": self.job.method,
            "uri": self.job.uri,
            "body_bytes": self.job.body.len(),
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "reason": self.reason.as_str(),
            "given_up_at": self.given_up_at,
        })
    }
}

/// The memory store's dead letters for one route, oldest first.
#[derive(Debug, Default)]
pub(super) struct MemoryDead {
    jobs: Mutex<VecDeque<DeadJob>>,
}

impl MemoryDead {
    /// Keeps a dead letter, dropping the oldest beyond the bounds.
    pub(super) fn keep(&self, dead: DeadJob) {
        let Ok(mut jobs) = self.jobs.lock() else {
            return;
        };
        jobs.push_back(dead);
        let mut bytes: usize = jobs.iter().map(|d| d.job.body.len()).sum();
        while jobs.len() > MEMORY_MAX_JOBS || (bytes > MEMORY_MAX_BYTES && jobs.len() > 1) {
            if let Some(old) = jobs.pop_front() {
                bytes -= old.job.body.len();
            }
        }
    }

    /// The oldest `limit`, oldest first.
    pub(super) fn list(&self, limit: usize) -> Vec<DeadJob> {
        self.jobs.lock().map_or_else(
            |_| Vec::new(),
            |jobs| jobs.iter().take(limit).cloned().collect(),
        )
    }

    /// Takes them all out, oldest first.
    pub(super) fn take_all(&self) -> Vec<DeadJob> {
        self.jobs
            .lock()
            .map_or_else(|_| Vec::new(), |mut jobs| jobs.drain(..).collect())
    }

    /// Puts back, at the old end, the ones a retry could not requeue.
    pub(super) fn put_back(&self, rest: Vec<DeadJob>) {
        if let Ok(mut jobs) = self.jobs.lock() {
            for d in rest.into_iter().rev() {
                jobs.push_front(d);
            }
        }
    }

    /// How many are kept.
    pub(super) fn len(&self) -> usize {
        self.jobs.lock().map_or(0, |jobs| jobs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn dead(n: usize, body: usize) -> DeadJob {
        let req = http::Request::post(format!("http://x/j/{n}"))
            .body(())
            .expect("request");
        let job = Job::new(
            &req.into_parts().0,
            "127.0.0.1:1".parse().expect("addr"),
            Bytes::from(vec![b'x'; body]),
        );
        DeadJob::now(
            job,
            3,
            Some((Some(503), "the upstream answered 503".into())),
            Reason::AttemptsExhausted,
        )
    }

    #[test]
    fn memory_dead_letters_stay_within_count_and_bytes() {
        let m = MemoryDead::default();
        for n in 0..MEMORY_MAX_JOBS + 5 {
            m.keep(dead(n, 1));
        }
        assert_eq!(m.len(), MEMORY_MAX_JOBS);
        assert_eq!(m.list(1)[0].job.uri, "/j/5", "the oldest were dropped");
        let big = MemoryDead::default();
        for n in 0..5 {
            big.keep(dead(n, 5 << 20));
        }
        assert_eq!(big.len(), 3, "16 MiB holds three 5 MiB bodies");
        let all = big.take_all();
        assert_eq!(all[0].job.uri, "/j/2", "oldest first");
        assert_eq!(big.len(), 0);
        big.put_back(all);
        assert_eq!(big.list(10)[0].job.uri, "/j/2");
    }
}
