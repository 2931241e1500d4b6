//! The invalidation bus over NATS: every instance subscribes to a subject and applies the purges
//! published there (the same messages as the Redis channel), so an application invalidates
//! every instance with one publish. The client reconnects (and resubscribes) by itself; NATS
//! keeps nothing for a subscriber that was away, so a disconnect empties the memory tier.

use scalegate_shared::Spawner;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;

use super::l2::BACKGROUND;
use super::purge::Purge;
use super::spec::NatsSpec;
use super::store::Store;

/// A NATS connection carrying purges.
pub struct Nats {
    spec: NatsSpec,
    client: ArcSwapOption<async_nats::Client>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("url", &self.spec.url)
            .field("subject", &self.spec.subject)
            .finish()
    }
}

impl Nats {
    /// Connects in the background (retrying) and applies every purge published on the subject.
    pub fn start(spawner: &Spawner, spec: NatsSpec, store: Weak<Store>) -> Arc<Nats> {
        let nats = Arc::new(Nats {
            spec,
            client: ArcSwapOption::empty(),
        });
        spawner.spawn(subscribe(Arc::downgrade(&nats), store));
        nats
    }

    /// Publishes a purge to every instance, and waits (a bounded time) until the server has it.
    pub async fn publish(&self, p: &Purge) -> Result<(), String> {
        let client = self
            .client
            .load_full()
            .ok_or_else(|| "not connected".to_string())?;
        let msg = serde_json::to_vec(p).map_err(|e| e.to_string())?;
        let sent = client.publish(self.spec.subject.clone(), msg.into());
        match tokio::time::timeout(BACKGROUND, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("timed out after {BACKGROUND:?}")),
        }
        // A flush only writes to the socket: the server's answer says it has the purge.
        scalegate_shared::nats_link::acknowledged(&client, BACKGROUND).await
    }
}

async fn subscribe(nats: Weak<Nats>, store: Weak<Store>) {
    let Some(me) = nats.upgrade() else { return };
    let (url, subject) = (me.spec.url.clone(), me.spec.subject.clone());
    drop(me);
    let (tx, mut events) = tokio::sync::mpsc::channel(16);
    let Some((client, mut sub)) =
        scalegate_shared::nats_link::subscribe(&url, subject, "cache purge bus", tx).await
    else {
        return;
    };
    match nats.upgrade() {
        Some(me) => me.client.store(Some(Arc::new(client))),
        None => return,
    }
    let mut alive = tokio::time::interval(super::l2_bus::GONE_CHECK);
    loop {
        tokio::select! {
            // A reload that replaced the store ends this subscription (and its connection).
            _ = alive.tick() => if nats.strong_count() == 0 || store.strong_count() == 0 {
                return;
            },
            msg = sub.next() => {
                let Some(msg) = msg else { return };
                let text = String::from_utf8_lossy(&msg.payload);
                let (Some(store), Some(purge)) = (store.upgrade(), Purge::from_message(&text))
                else {
                    continue;
                };
                let n = super::purger::from_bus(&store, &purge).await;
                tracing::debug!(?purge, objects = n, "purge from NATS");
            }
            Some(event) = events.recv() => {
                let Some(store) = store.upgrade() else { return };
                missed_while(&event, &store);
            }
        }
    }
}

/// Makes up for purges the subscription may miss: NATS does not keep messages for a
/// subscriber that is away, so while the connection is down, and again once it is back (what
/// was stored meanwhile may have been purged elsewhere), the memory tier is emptied.
fn missed_while(event: &async_nats::Event, store: &Store) {
    match event {
        async_nats::Event::Disconnected => {
            tracing::error!(
                "cache purge bus: disconnected from NATS, purges published meanwhile will be \
                 missed: emptying the memory tier"
            );
            store.clear_memory();
        }
        async_nats::Event::Connected => {
            tracing::warn!(
                "cache purge bus: connected to NATS again: emptying the memory tier of what \
                 was stored while purges could not arrive"
            );
            store.clear_memory();
        }
        _ => {}
    }
}
