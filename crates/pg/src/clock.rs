//! The pooler's coarse clock, for bookkeeping measured in seconds (a server connection's
//! lifetime and idle time, a client's wait budget). Every transaction touches these, and a
//! precise clock read costs more than the rest of the bookkeeping; Linux's
//! `CLOCK_MONOTONIC_COARSE` is read from memory without touching the timestamp counter, with
//! a resolution of one scheduler tick (1–4 ms), far below the shortest timeout it serves.
//! Waits that are reported to operators in microseconds are still timed precisely.

use std::time::Duration;

/// A point on a monotonic clock, in milliseconds, with a resolution of 1–4 ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Coarse(u64);

impl Coarse {
    /// Now.
    pub fn now() -> Coarse {
        Coarse(now_ms())
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Coarse) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Time since this point.
    pub fn elapsed(self) -> Duration {
        Coarse::now().since(self)
    }
}

#[cfg(target_os = "linux")]
fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on every Linux
    // since 2.6.32 and cannot fail with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000 + (ts.tv_nsec as u64) / 1_000_000
}

#[cfg(not(target_os = "linux"))]
fn now_ms() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::Coarse;
    use std::time::Duration;

    #[test]
    fn it_moves_forward_with_real_time() {
        let a = Coarse::now();
        std::thread::sleep(Duration::from_millis(30));
        let b = Coarse::now();
        assert!(b >= a);
        // One tick of slack on each side of the sleep.
        assert!(b.since(a) >= Duration::from_millis(20), "{:?}", b.since(a));
        assert_eq!(a.since(b), Duration::ZERO);
    }
}
