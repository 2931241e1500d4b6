//! The URL index of the Redis tier, which makes purges cost what they match, never what Redis
//! holds (no SCAN):
//!
//! - `{prefix}idx:url`: every stored URL key (score 0), so a host-qualified prefix purge is one
//!   lexical range (`ZRANGEBYLEX [host/path [host/path\xff`);
//! - `{prefix}idx:path`: `path-and-query NUL url-key` for every key, so a purge of a path on
//!   every host, or of a path prefix on every host, is one lexical range too;
//! - `{prefix}idx:exp`: each key scored by when it expires; the janitor drops index entries of
//!   keys Redis has expired, in bounded steps.
//!
//! Matches are deleted a page at a time, each page removing its own index entries.

use std::sync::Weak;
use std::time::{Duration, SystemTime};

use redis::AsyncCommands;
use scalegate_shared::redis_link::WRONG_TYPE;

use super::l2::{BACKGROUND, L2, ms};
use super::l2_write::path_member;
use super::purge::{Matcher, Purge};

/// Index entries read (and keys deleted) per round trip.
const PAGE: usize = 1000;
/// Most pages one purge walks (ten million keys).
const MOST_PAGES: usize = 10_000;
/// How often the janitor looks for expired index entries.
const JANITOR_EVERY: Duration = Duration::from_secs(30);

/// Drops the index entries of expired keys; entries of keys that are still there (refreshed
/// since) get their new expiry. KEYS: idx:exp, idx:url, idx:path. ARGV: now (ms), limit, key
/// prefix.
const JANITOR: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, k in ipairs(due) do
  local ttl = redis.call('PTTL', ARGV[3] .. k)
  if ttl == -2 then
    redis.call('ZREM', KEYS[1], k)
    redis.call('ZREM', KEYS[2], k)
    local i = string.find(k, '/', 1, true)
    local pq = k
    if i then pq = string.sub(k, i) end
    redis.call('ZREM', KEYS[3], pq .. '\0' .. k)
  elseif ttl > 0 then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + ttl, k)
  else
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + 86400000, k)
  end
end
return #due
"#;

impl L2 {
    /// The names of the three index keys: (url, path, expiry).
    pub(super) fn indexes(&self) -> (String, String, String) {
        let p = self.prefix();
        (
            format!("{p}idx:url"),
            format!("{p}idx:path"),
            format!("{p}idx:exp"),
        )
    }

    /// Applies a purge to Redis (soft purges remove too: only memory keeps soft-stale
    /// copies). Returns how many URL keys it deleted, or what failed. An index or tag key that
    /// holds another type (written by something else under the prefix) is removed and the
    /// purge made again: it would otherwise be retried for ever.
    pub async fn purge(&self, p: &Purge) -> Result<usize, String> {
        match self.purge_once(p).await {
            Err(e) if e.contains(WRONG_TYPE) => {
                let (idx_url, idx_path, idx_exp) = self.indexes();
                let mut keys = vec![(idx_url, "zset"), (idx_path, "zset"), (idx_exp, "zset")];
                if let Matcher::Tag(t) = p.matcher() {
                    keys.push((self.tag_key(&t), "set"));
                }
                self.remove_mistyped(keys).await;
                self.purge_once(p).await
            }
            done => done,
        }
    }

    /// Removes those of `keys` that hold another type than the one given (Redis's TYPE name);
    /// a key that does not exist is left alone.
    pub(super) async fn remove_mistyped(&self, keys: Vec<(String, &'static str)>) {
        for (key, want) in keys {
            let k = key.clone();
            let kind: Result<String, String> = self
                .link
                .call_within("repair", BACKGROUND, |mut c| async move {
                    redis::cmd("TYPE").arg(k).query_async(&mut c).await
                })
                .await;
            let Ok(kind) = kind else { continue };
            if kind == "none" || kind == want {
                continue;
            }
            tracing::warn!(
                key,
                kind,
                want,
                "cache tier: a key under the prefix held another type; removed"
            );
            let _ = self
                .link
                .call_within("repair", BACKGROUND, |mut c| async move {
                    redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await
                })
                .await;
        }
    }

    async fn purge_once(&self, p: &Purge) -> Result<usize, String> {
        let (idx_url, idx_path, _) = self.indexes();
        match p.matcher() {
            Matcher::None => Ok(0),
            m @ Matcher::Url { host: Some(_), .. } => {
                self.delete(m.direct_keys().unwrap_or_default()).await
            }
            Matcher::Url {
                host: None,
                pq,
                sorted,
            } => {
                let mut n = self
                    .delete_range(&idx_path, &format!("{pq}\0"), true)
                    .await?;
                if sorted != pq {
                    n += self
                        .delete_range(&idx_path, &format!("{sorted}\0"), true)
                        .await?;
                }
                Ok(n)
            }
            Matcher::Prefix {
                host: Some(h),
                path,
            } => {
                self.delete_range(&idx_url, &format!("{h}{path}"), false)
                    .await
            }
            Matcher::Prefix { host: None, path } => self.delete_range(&idx_path, &path, true).await,
            Matcher::Tag(t) => {
                let tag_key = self.tag_key(&t);
                let tk = tag_key.clone();
                let urls: Vec<String> = self
                    .link
                    .call_within(
                        "purge",
                        BACKGROUND,
                        |mut c| async move { c.smembers(tk).await },
                    )
                    .await?;
                let n = self.delete(urls).await?;
                self.link
                    .call_within("purge", BACKGROUND, |mut c| async move {
                        c.del::<_, ()>(tag_key).await
                    })
                    .await?;
                Ok(n)
            }
        }
    }

    /// Deletes every key whose index entry starts with `prefix`, a page at a time.
    async fn delete_range(
        &self,
        index: &str,
        prefix: &str,
        by_path: bool,
    ) -> Result<usize, String> {
        let min = [b"[", prefix.as_bytes()].concat();
        let max = [b"[", prefix.as_bytes(), &[0xff]].concat();
        let mut deleted = 0;
        for _ in 0..MOST_PAGES {
            let (index, min, max) = (index.to_owned(), min.clone(), max.clone());
            let members: Vec<String> = self
                .link
                .call_within("purge", BACKGROUND, |mut c| async move {
                    redis::cmd("ZRANGEBYLEX")
                        .arg(index)
                        .arg(min)
                        .arg(max)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(PAGE)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let full = members.len() == PAGE;
            let urls: Vec<String> = members
                .into_iter()
                .map(|m| match (by_path, m.split_once('\0')) {
                    (true, Some((_, url))) => url.to_owned(),
                    _ => m,
                })
                .collect();
            if urls.is_empty() {
                break;
            }
            deleted += self.delete(urls).await?;
            if !full {
                break;
            }
        }
        Ok(deleted)
    }

    /// Deletes URL keys and their index entries; how many keys existed.
    pub(super) async fn delete(&self, urls: Vec<String>) -> Result<usize, String> {
        if urls.is_empty() {
            return Ok(0);
        }
        let (idx_url, idx_path, idx_exp) = self.indexes();
        let mut p = redis::pipe();
        for u in &urls {
            p.del(self.key(u));
        }
        for u in &urls {
            p.zrem(&idx_url, u).ignore();
            p.zrem(&idx_path, path_member(u)).ignore();
            p.zrem(&idx_exp, u).ignore();
        }
        let gone: Vec<i64> = self
            .link
            .call_within("purge", BACKGROUND, |mut c| async move {
                p.query_async(&mut c).await
            })
            .await?;
        Ok(gone.iter().filter(|n| **n > 0).count())
    }

    /// One janitor pass: index entries of expired keys, at most `limit`; how many were due.
    async fn sweep(&self, limit: usize) -> Result<usize, String> {
        let (idx_url, idx_path, idx_exp) = self.indexes();
        let now = ms(SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default());
        let prefix = self.prefix().to_owned();
        self.link
            .call_within("janitor", BACKGROUND, |mut c| async move {
                redis::cmd("EVAL")
                    .arg(JANITOR)
                    .arg(3)
                    .arg(idx_exp)
                    .arg(idx_url)
                    .arg(idx_path)
                    .arg(now)
                    .arg(limit)
                    .arg(prefix)
                    .query_async(&mut c)
                    .await
            })
            .await
    }
}

/// Keeps the index to the keys Redis still holds, until the tier is dropped.
pub async fn janitor(l2: Weak<L2>) {
    loop {
        tokio::time::sleep(JANITOR_EVERY).await;
        let Some(me) = l2.upgrade() else { return };
        // A few pages per round keep each script short; the rest waits for the next round.
        for _ in 0..10 {
            match me.sweep(PAGE).await {
                Ok(n) if n == PAGE => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "cache index janitor");
                    break;
                }
            }
        }
    }
}
