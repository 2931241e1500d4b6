//! One Redis connection for a piece of shared state (the cache's L2 tier, shared rate limits),
//! with the rule every user of it follows: Redis being down never fails a request.
//!
//! The link connects in the background and keeps retrying; until it is up, and whenever a call
//! errs or runs past its time budget, [`RedisLink::call`] answers None, `up` turns false and
//! `errors` counts, and the caller carries on with its in-memory state alone. After a failure
//! calls are not even tried for [`HOLD_OFF`] (one request then probes), so a Redis that hangs
//! does not add its whole time budget to every request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;

/// How long calls are skipped after one failed.
pub const HOLD_OFF: Duration = Duration::from_secs(1);

/// A link that made no call for this long is checked with a PING, so that `up` tells the
/// link's state in quiet times too (a Redis that died while no request needed it would
/// otherwise read as up until the next request).
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// A background-connected Redis client with a per-call time budget.
pub struct RedisLink {
    url: String,
    timeout: Duration,
    /// What this link serves, for log lines ("cache tier", "shared rate limits").
    role: &'static str,
    conn: ArcSwapOption<ConnectionManager>,
    /// Whether the last call succeeded.
    pub up: AtomicBool,
    /// Failed or timed-out calls.
    pub errors: AtomicU64,
    /// No call is tried before this tick (0: no hold-off).
    hold_until: AtomicU64,
    /// When the last call started (a tick).
    last_call: AtomicU64,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("url", &self.url)
            .field("role", &self.role)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisLink {
    /// Starts connecting in the background on `spawner` (retrying every second until it
    /// succeeds).
    pub fn start(
        spawner: &crate::Spawner,
        url: &str,
        timeout: Duration,
        role: &'static str,
    ) -> Arc<RedisLink> {
        let link = Arc::new(RedisLink {
            url: url.to_owned(),
            timeout,
            role,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            hold_until: AtomicU64::new(0),
            last_call: AtomicU64::new(0),
        });
        spawner.spawn(connect(Arc::downgrade(&link)));
        link
    }

    /// The Redis URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one call within the time budget; None when Redis is not connected, slow or errs.
    /// A call that finds its connection closed (Redis's `timeout` for idle clients, a proxy
    /// that drops idle connections, `CLIENT KILL`) is made once more on the connection the
    /// manager opens in its place, within the same budget: a closed idle connection is not
    /// Redis being down.
    pub async fn call<T, F>(&self, what: &str, f: impl Fn(ConnectionManager) -> F) -> Option<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let now = now_nanos();
        if now < self.hold_until.load(Ordering::Relaxed) {
            return None;
        }
        let conn = self.conn.load_full()?;
        self.last_call.store(now, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut again = true;
        loop {
            match tokio::time::timeout_at(deadline, f((*conn).clone())).await {
                Ok(Ok(v)) => {
                    self.ok();
                    return Some(v);
                }
                Ok(Err(e)) if again && (e.is_connection_dropped() || e.is_io_error()) => {
                    again = false;
                }
                Ok(Err(e)) if refused_key(&e) => {
                    self.refused(what, &e);
                    return None;
                }
                Ok(Err(e)) => {
                    self.failed(what, &e);
                    return None;
                }
                Err(_) => {
                    self.failed(what, &"timed out");
                    return None;
                }
            }
        }
    }

    /// Runs one call within `budget`, even during a hold-off: for work that must not be skipped
    /// (purges, queued writes) and is not on a request's path. A failure still counts and
    /// starts a hold-off for [`Self::call`]. The error says what went wrong.
    pub async fn call_within<T, F>(
        &self,
        what: &str,
        budget: Duration,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, String>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let Some(conn) = self.conn.load_full() else {
            return Err(format!("{what}: redis not connected"));
        };
        self.last_call.store(now_nanos(), Ordering::Relaxed);
        match tokio::time::timeout(budget, f((*conn).clone())).await {
            Ok(Ok(v)) => {
                self.ok();
                Ok(v)
            }
            Ok(Err(e)) if refused_key(&e) => {
                self.refused(what, &e);
                Err(format!("{what}: {e}"))
            }
            Ok(Err(e)) => {
                self.failed(what, &e);
                Err(format!("{what}: {e}"))
            }
            Err(_) => {
                self.failed(what, &"timed out");
                Err(format!("{what}: timed out after {budget:?}"))
            }
        }
    }

    /// Redis answered, refusing one key (it holds another type): Redis is up, only that key
    /// is skipped. Counted as an error, without a hold-off.
    fn refused(&self, what: &str, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.ok();
        tracing::debug!(error = %e, what, role = self.role, "redis refused a key of another type");
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let until = now_nanos().saturating_add(HOLD_OFF.as_nanos() as u64);
        self.hold_until.store(until, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, what, role = self.role, "redis down; carrying on from memory alone");
        }
    }

    fn ok(&self) {
        self.hold_until.store(0, Ordering::Relaxed);
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(role = self.role, "redis up");
        }
    }
}

/// Whether Redis answered with a refusal of a key that holds another type (`WRONGTYPE`: a key
/// written by something else under the prefix): an answer about that key, not Redis being down.
pub fn refused_key(e: &redis::RedisError) -> bool {
    e.code() == Some(WRONG_TYPE) || e.to_string().contains(WRONG_TYPE)
}

/// The error code of a command on a key of another type.
pub const WRONG_TYPE: &str = "WRONGTYPE";

async fn connect(link: Weak<RedisLink>) {
    loop {
        let Some(me) = link.upgrade() else { return };
        let attempt = async {
            let client = redis::Client::open(me.url.as_str())?;
            // Each call has its own budget (the tier's timeout, or BACKGROUND's 2 s for
            // purges): the crate's default of 500 ms per response would cut the longer ones.
            let unbounded = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
            client.get_connection_manager_with_config(unbounded).await
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(c)) => {
                me.conn.store(Some(Arc::new(c)));
                me.ok();
                drop(me);
                return watch(link).await;
            }
            Ok(Err(e)) => me.failed("connect", &e),
            Err(_) => me.failed("connect", &"timed out"),
        }
        drop(me);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Once connected (the connection manager reconnects by itself): a PING whenever the link has
/// made no call for [`PING_EVERY`], so `up` follows Redis in quiet times.
async fn watch(link: Weak<RedisLink>) {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        let Some(me) = link.upgrade() else { return };
        let idle = now_nanos().saturating_sub(me.last_call.load(Ordering::Relaxed));
        if idle < PING_EVERY.as_nanos() as u64 {
            continue;
        }
        let _ = me
            .call("ping", |mut c| async move {
                redis::cmd("PING").query_async::<()>(&mut c).await
            })
            .await;
    }
}

/// Monotonic nanoseconds since the first call, plus one (0 means "never"), on tokio's clock so
/// tests with a paused runtime see paused time.
fn now_nanos() -> u64 {
    static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .saturating_duration_since(origin)
        .as_nanos() as u64
        + 1
}
