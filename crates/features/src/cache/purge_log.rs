//! The purges applied recently, so that a fill racing a purge cannot bring back what the purge
//! removed: a response fetched before a purge (its request went out earlier) and stored after it
//! is dropped if the purge matches it. Every instance keeps its own log of the purges it applied
//! (from its admin API or the bus).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::purge::{Matcher, Purge};

/// How long a purge is remembered: longer than any fill takes.
const REMEMBER: Duration = Duration::from_secs(600);
/// Most purges remembered; beyond, the oldest are forgotten.
const MOST: usize = 10_000;

/// Recent purges, oldest first.
#[derive(Debug, Default)]
pub struct PurgeLog {
    recent: Mutex<VecDeque<(SystemTime, Purge, Matcher)>>,
}

impl PurgeLog {
    /// Records a purge applied now (a repeat of the last one only moves its time).
    pub fn record(&self, p: &Purge, m: &Matcher) {
        if *m == Matcher::None {
            return;
        }
        let now = SystemTime::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        while recent
            .front()
            .is_some_and(|(t, ..)| now.duration_since(*t).unwrap_or(Duration::ZERO) > REMEMBER)
            || recent.len() >= MOST
        {
            recent.pop_front();
        }
        match recent.back_mut() {
            Some((t, last, _)) if last == p => *t = now,
            _ => recent.push_back((now, p.clone(), m.clone())),
        }
    }

    /// Whether a purge recorded after `since` matches this URL key and tags.
    pub fn purged_since(&self, since: SystemTime, url: &str, tags: &[String]) -> bool {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .rev()
            .take_while(|(t, ..)| *t >= since)
            .any(|(_, _, m)| m.matches(url, tags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::purge::Target;

    #[test]
    fn a_fill_started_before_a_matching_purge_is_refused() {
        let log = PurgeLog::default();
        let before = SystemTime::now() - Duration::from_millis(10);
        let p = Purge {
            target: Target::Prefix("/a/".into()),
            ..Purge::default()
        };
        log.record(&p, &p.matcher());
        assert!(log.purged_since(before, "h/a/x", &[]));
        assert!(!log.purged_since(before, "h/b/x", &[]));
        assert!(!log.purged_since(SystemTime::now() + Duration::from_secs(1), "h/a/x", &[]));
    }
}
