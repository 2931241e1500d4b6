//! The purge bus over Redis: a purge is published on the channel (for the instances listening
//! now) and appended to a capped stream (`{key_prefix}purges`, the last 10,000) in one script,
//! the message carrying its stream id. Each instance remembers the last id it applied; when its
//! subscription drops (Redis restarted, `CLIENT KILL TYPE pubsub`, a network cut) it replays the
//! stream from there after subscribing again, so a purge published meanwhile is not lost. If
//! the stream no longer reaches back that far, the instance empties its memory tier (the loss
//! is detected and logged, never silent).
//!
//! Messages an application publishes itself (no id) are applied as they come, without replay.

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;

use super::l2::{BACKGROUND, L2};
use super::purge::Purge;
use super::store::Store;

/// Purges kept in the stream for instances catching up.
const KEEP: usize = 10_000;
/// Stream entries read per round trip when catching up.
const PAGE: usize = 500;

/// Appends to the stream and publishes with the id. KEYS: stream. ARGV: purge JSON, channel,
/// how many entries to keep. Returns the number of subscribers reached.
const PUBLISH: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'p', ARGV[1])
local msg = string.sub(ARGV[1], 1, -2) .. ',"id":"' .. id .. '"}'
return redis.call('PUBLISH', ARGV[2], msg)
"#;

/// A stream id (`ms-seq`), comparable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId(u64, u64);

impl StreamId {
    fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }

    fn exclusive(self) -> String {
        format!("({}-{}", self.0, self.1)
    }
}

/// The id a published message carries, if any.
#[derive(serde::Deserialize)]
struct Stamp {
    id: Option<String>,
}

impl L2 {
    fn stream(&self) -> String {
        format!("{}purges", self.prefix())
    }

    /// Publishes a purge to every instance (now, and to those catching up later); the number of
    /// subscribers that received it at once.
    pub async fn publish(&self, p: &Purge) -> Result<usize, String> {
        let msg = serde_json::to_string(p).map_err(|e| format!("publish: {e}"))?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUBLISH)
            .arg(1)
            .arg(self.stream())
            .arg(msg)
            .arg(self.channel())
            .arg(KEEP);
        self.reach("publish", cmd).await
    }

    /// Publishes a purge on the channel only, to the instances listening now: no stream entry,
    /// so no replay for one that is resubscribing. Returns the number of subscribers reached.
    pub async fn notify(&self, p: &Purge) -> Result<usize, String> {
        let msg = serde_json::to_string(p).map_err(|e| format!("notify: {e}"))?;
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.channel()).arg(msg);
        self.reach("notify", cmd).await
    }

    /// Runs a command that answers how many subscribers it reached.
    async fn reach(&self, what: &str, cmd: redis::Cmd) -> Result<usize, String> {
        let n: i64 = self
            .link
            .call_within(what, BACKGROUND, |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Stream entries after `after` (oldest first), at most a page.
    async fn entries_after(&self, after: StreamId) -> Result<Vec<(StreamId, Purge)>, String> {
        let stream = self.stream();
        let raw: Vec<(String, Vec<(String, String)>)> = self
            .link
            .call_within("purge replay", BACKGROUND, |mut c| async move {
                redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(after.exclusive())
                    .arg("+")
                    .arg("COUNT")
                    .arg(PAGE)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, fields)| {
                let id = StreamId::parse(&id)?;
                let json = fields.into_iter().find(|(k, _)| k == "p")?.1;
                Some((id, Purge::from_message(&json)?))
            })
            .collect())
    }

    /// The id of the newest (`+`) or oldest (`-`) entry of the stream (0-0 when empty).
    async fn edge(&self, newest: bool) -> Result<StreamId, String> {
        let stream = self.stream();
        let cmd = if newest { "XREVRANGE" } else { "XRANGE" };
        let (from, to) = if newest { ("+", "-") } else { ("-", "+") };
        let raw: Vec<(String, Vec<(String, String)>)> = self
            .link
            .call_within("purge replay", BACKGROUND, |mut c| async move {
                redis::cmd(cmd)
                    .arg(stream)
                    .arg(from)
                    .arg(to)
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(raw
            .first()
            .and_then(|(id, _)| StreamId::parse(id))
            .unwrap_or_default())
    }
}

/// How often an idle subscription checks that its store is still in use.
pub(super) const GONE_CHECK: Duration = Duration::from_secs(2);

/// Applies the purges published on the channel, replaying the stream after every reconnect,
/// until the tier or the store is dropped.
pub async fn subscribe(l2: Weak<L2>, store: Weak<Store>) {
    let mut last: Option<StreamId> = None;
    loop {
        let Some(me) = l2.upgrade() else { return };
        let (url, channel) = (me.url().to_owned(), me.channel().to_owned());
        drop(me);
        let sub = async {
            let client = redis::Client::open(url.as_str())?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        if let Ok(Ok(ps)) = tokio::time::timeout(Duration::from_secs(2), sub).await {
            tracing::info!(channel, "subscribed to cache purges");
            let mut messages = ps.into_on_message();
            // Subscribed first, then caught up: nothing published in between is missed.
            if catch_up(&l2, &store, &mut last).await.is_ok() {
                let mut alive = tokio::time::interval(GONE_CHECK);
                loop {
                    let msg = tokio::select! {
                        msg = messages.next() => msg,
                        // A reload that replaced the store ends this subscription, even when
                        // no purge comes to notice it.
                        _ = alive.tick() => match l2.strong_count() == 0 || store.strong_count() == 0 {
                            true => return,
                            false => continue,
                        },
                    };
                    let Some(msg) = msg else { break };
                    let Ok(text) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let (Some(store), Some(purge)) = (store.upgrade(), Purge::from_message(&text))
                    else {
                        continue;
                    };
                    let n = super::purger::from_bus(&store, &purge).await;
                    tracing::debug!(?purge, objects = n, "purge from the bus");
                    let id = serde_json::from_str::<Stamp>(&text).ok().and_then(|s| s.id);
                    if let Some(id) = id.as_deref().and_then(StreamId::parse) {
                        last = last.max(Some(id));
                    }
                }
                tracing::warn!(channel, "cache purge subscription lost; resubscribing");
            }
        }
        if l2.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Applies the stream's purges after `last` (the first time: starts from its end).
async fn catch_up(
    l2: &Weak<L2>,
    store: &Weak<Store>,
    last: &mut Option<StreamId>,
) -> Result<(), String> {
    let (Some(me), Some(store)) = (l2.upgrade(), store.upgrade()) else {
        return Err("gone".into());
    };
    let Some(mut from) = *last else {
        *last = Some(me.edge(true).await?);
        return Ok(());
    };
    let oldest = me.edge(false).await?;
    if from != StreamId::default() && oldest != StreamId::default() && from < oldest {
        // The last purge applied was trimmed, and any after it up to `oldest` with it: some
        // purges may not be replayable.
        tracing::error!(
            "cache purges were missed while the subscription was down and are no longer \
             in the stream: emptying the memory tier"
        );
        store.clear_memory();
    }
    loop {
        let page = me.entries_after(from).await?;
        let full = page.len() == PAGE;
        for (id, purge) in page {
            let n = super::purger::from_bus(&store, &purge).await;
            tracing::info!(?purge, objects = n, "purge replayed after a resubscribe");
            from = id;
        }
        *last = Some(from);
        if !full {
            return Ok(());
        }
    }
}
