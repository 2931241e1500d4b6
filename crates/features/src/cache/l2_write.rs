//! Fills written to Redis by one task per tier, in the order they were stored. A Redis
//! hiccup (an error, a timeout, a pause) delays the queued fills, which are retried until
//! they succeed or their object's retention passes; only a full queue drops a fill (counted
//! in `dropped`). A fill that a purge overtook is not written, or is deleted again if the purge
//! arrived while it was being written.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use scalegate_shared::redis_link::WRONG_TYPE;
use tokio::sync::Notify;

use super::l2::{BACKGROUND, L2, encode, ms};
use super::object::Object;
use super::purge::key_path;
use super::store::Store;

/// Most fills waiting; beyond, new ones are dropped.
const MOST_QUEUED: usize = 4096;
/// Fills written per pipeline.
const BATCH: usize = 32;
/// Waits between attempts while Redis fails.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// One fill waiting to be written.
pub struct Pending {
    /// The response's Vary list, comma-joined.
    pub vary: String,
    /// The object.
    pub obj: Arc<Object>,
    /// When its request went to the origin.
    pub fetched: SystemTime,
}

/// The fills waiting, and the writer's wake-up.
#[derive(Default)]
pub struct WriteQueue {
    items: Mutex<VecDeque<Pending>>,
    wake: Notify,
}

impl WriteQueue {
    /// Queues a fill; false when the queue is full.
    pub fn push(&self, p: Pending) -> bool {
        {
            let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
            if items.len() >= MOST_QUEUED {
                return false;
            }
            items.push_back(p);
        }
        self.wake.notify_one();
        true
    }

    fn take(&self) -> Vec<Pending> {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let n = items.len().min(BATCH);
        items.drain(..n).collect()
    }

    fn put_back(&self, batch: Vec<Pending>) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        for p in batch.into_iter().rev() {
            items.push_front(p);
        }
    }
}

/// Writes queued fills until the tier is dropped.
pub async fn writer(l2: Weak<L2>, queue: Arc<WriteQueue>, store: Weak<Store>) {
    let mut backoff = BACKOFF.0;
    loop {
        // Woken by a fill; now and then anyway, to notice the tier is gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), queue.wake.notified()).await;
        loop {
            let Some(me) = l2.upgrade() else { return };
            let now = SystemTime::now();
            let store = store.upgrade();
            let overtaken = |p: &Pending| {
                store
                    .as_ref()
                    .is_some_and(|s| s.purged_since(p.fetched, &p.obj))
            };
            let batch: Vec<Pending> = queue
                .take()
                .into_iter()
                .filter(|p| !p.obj.retention(now).is_zero() && !overtaken(p))
                .collect();
            if batch.is_empty() {
                if queue.items.lock().map_or(true, |q| q.is_empty()) {
                    break;
                }
                continue;
            }
            let written = match me.write(&batch).await {
                Ok(()) => Ok(batch.len()),
                // One key of the batch holds another type (something else wrote under the
                // prefix): Redis is up, and that key must not hold every fill back. The fills
                // go one by one; the refused one replaces the key.
                Err(e) if e.contains(WRONG_TYPE) => me.write_one_by_one(&batch).await,
                Err(e) => Err((0, e)),
            };
            match written {
                Ok(n) => {
                    backoff = BACKOFF.0;
                    me.writes
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    // A purge applied while the pipeline was in flight may have run before it.
                    let late: Vec<String> = batch
                        .iter()
                        .filter(|p| overtaken(p))
                        .map(|p| p.obj.url.to_string())
                        .collect();
                    if !late.is_empty() {
                        let _ = me.delete(late).await;
                    }
                }
                Err((done, e)) => {
                    let batch: Vec<Pending> = batch.into_iter().skip(done).collect();
                    tracing::debug!(error = %e, fills = batch.len(), "cache fills wait for redis");
                    queue.put_back(batch);
                    drop(me);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }
}

impl L2 {
    /// Writes fills one at a time; the keys a refused fill needs that hold another type (its
    /// URL's, a tag's, an index's) are removed and the fill written again, and one refused even
    /// then is dropped and counted. Ok with
    /// how many were written; Err with how many were done (written or dropped) when Redis
    /// fails otherwise.
    async fn write_one_by_one(&self, batch: &[Pending]) -> Result<usize, (usize, String)> {
        let mut written = 0;
        for (done, item) in batch.iter().enumerate() {
            let one = std::slice::from_ref(item);
            match self.write(one).await {
                Ok(()) => written += 1,
                Err(e) if e.contains(WRONG_TYPE) => {
                    // Only the keys of another type go (not the URL's hash, which may hold
                    // other instances' variants, when it was an index or tag key).
                    let (idx_url, idx_path, idx_exp) = self.indexes();
                    let mut keys = vec![
                        (self.key(&item.obj.url), "hash"),
                        (idx_url, "zset"),
                        (idx_path, "zset"),
                        (idx_exp, "zset"),
                    ];
                    keys.extend(item.obj.tags.iter().map(|t| (self.tag_key(t), "set")));
                    self.remove_mistyped(keys).await;
                    if self.write(one).await.is_ok() {
                        written += 1;
                    } else {
                        self.dropped
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(url = %item.obj.url, "cache fill not written to redis: a key it needs holds another type");
                    }
                }
                Err(e) => return Err((done, e)),
            }
        }
        Ok(written)
    }

    /// Writes fills in one pipeline: the hash fields, the tag sets, the URL index.
    async fn write(&self, batch: &[Pending]) -> Result<(), String> {
        let now = SystemTime::now();
        let mut p = redis::pipe();
        let (idx_url, idx_path, idx_exp) = self.indexes();
        for item in batch {
            let o = &item.obj;
            let Some(blob) = encode(o) else { continue };
            let ttl = o.retention(now).as_secs().max(1);
            let expires_ms = ms(now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default())
            .saturating_add(ttl * 1000);
            let url: &str = &o.url;
            let key = self.key(url);
            p.hset(&key, "vary", &item.vary).ignore();
            p.hset(&key, format!("o:{}", o.variant), blob).ignore();
            p.cmd("EXPIRE").arg(&key).arg(ttl).arg("NX").ignore();
            p.cmd("EXPIRE").arg(&key).arg(ttl).arg("GT").ignore();
            p.zadd(&idx_url, url, 0).ignore();
            p.zadd(&idx_path, path_member(url), 0).ignore();
            p.cmd("ZADD")
                .arg(&idx_exp)
                .arg("GT")
                .arg(expires_ms)
                .arg(url)
                .ignore();
            for t in &o.tags {
                let t = self.tag_key(t);
                p.sadd(&t, url).ignore();
                p.cmd("EXPIRE").arg(&t).arg(ttl).arg("NX").ignore();
                p.cmd("EXPIRE").arg(&t).arg(ttl).arg("GT").ignore();
            }
        }
        self.link
            .call_within("put", BACKGROUND, |mut c| async move {
                p.query_async::<()>(&mut c).await
            })
            .await
    }
}

/// The member of the path index for a URL key: its path-and-query, a NUL, the key (so a
/// lexical range over a path prefix finds every host's keys).
pub fn path_member(url: &str) -> String {
    format!("{}\0{url}", key_path(url))
}
