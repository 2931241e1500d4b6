//! The NATS transport of the fan-out bus: one client subscribed to `{prefix}>`. The client
//! reconnects and resubscribes by itself; its connection events drive the bus: `Disconnected`
//! cuts every local subscriber off at once, `Connected` marks the bus up again once a flush has
//! made sure the resubscription reached the server, a slow-consumer report (the client dropped
//! messages it had no room for) counts as a gap. Publishing needs a connected client: while
//! disconnected the client would buffer publishes and send them late, so they are refused.

use std::sync::Weak;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::BusSpec;
use super::bus::{Bus, Link, SendError};

/// How often the client pings the server (two missed answers count as a lost connection).
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a flush may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The client, once made.
#[derive(Debug, Default)]
pub(super) struct Sender {
    client: ArcSwapOption<Client>,
}

impl Sender {
    /// Publishes, then makes a round trip to the server (`nats_link::acknowledged`): Ok once
    /// the server has the frame.
    pub(super) async fn publish(&self, subject: String, frame: Bytes) -> Result<(), SendError> {
        let Some(client) = self.client.load_full() else {
            return Err(SendError::NotSent("not connected to NATS yet".into()));
        };
        if client.connection_state() != State::Connected {
            return Err(SendError::NotSent("not connected to NATS now".into()));
        }
        client
            .publish(subject, frame)
            .await
            .map_err(|e| SendError::NotSent(format!("nats: {e}")))?;
        scalegate_shared::nats_link::acknowledged(&client, FLUSH_TIMEOUT)
            .await
            .map_err(SendError::Unknown)
    }
}

/// Connects, subscribes and delivers until the bus stops or goes away.
pub(super) async fn run(bus: Weak<Bus>, mut stop: watch::Receiver<bool>) {
    let Some(me) = bus.upgrade() else { return };
    let BusSpec::Nats { url, .. } = me.spec().clone() else {
        return;
    };
    let prefix = me.prefix().to_string();
    drop(me);
    let (tx, mut events) = mpsc::channel(64);
    let options = ConnectOptions::new()
        .retry_on_initial_connect()
        .ping_interval(PING_EVERY)
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e).await;
            }
        });
    let client = match options.connect(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, url, "fan-out bus off: cannot connect to NATS");
            return;
        }
    };
    let mut sub = match client.subscribe(format!("{prefix}>")).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "fan-out bus off: cannot subscribe on NATS");
            return;
        }
    };
    match bus.upgrade() {
        Some(me) => {
            if let Link::Nats(s) = &me.link {
                s.client.store(Some(std::sync::Arc::new(client.clone())));
            }
        }
        None => return,
    }
    // The first Connected event (the initial connection) marks the bus up like later ones.
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(me) = bus.upgrade() else { return };
                let Some(msg) = msg else {
                    me.lost("the NATS subscription ended");
                    return;
                };
                if let Some(name) = msg.subject.as_str().strip_prefix(prefix.as_str()) {
                    me.arrived(name, msg.payload);
                }
            }
            event = events.recv() => {
                let Some(me) = bus.upgrade() else { return };
                match event {
                    Some(Event::Disconnected) => me.lost("the NATS connection was lost"),
                    Some(Event::SlowConsumer(_)) => me.gap("the NATS client dropped messages (slow consumer)"),
                    Some(Event::Connected) => {
                        // The resubscription is queued before anything we send now: once the
                        // flush returns, the server has it.
                        match tokio::time::timeout(FLUSH_TIMEOUT * 5, client.flush()).await {
                            Ok(Ok(())) if client.connection_state() == State::Connected => me.came_up(),
                            _ => tracing::warn!("fan-out bus: NATS reconnected but did not confirm the subscription"),
                        }
                    }
                    Some(_) => {}
                    None => return,
                }
            }
            _ = stop.changed() => return,
        }
    }
}
