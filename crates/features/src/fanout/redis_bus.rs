//! The Redis transport of the fan-out bus: one pub/sub connection with a pattern subscription
//! to `{prefix}*`, pinged every second, and one command connection for PUBLISH.
//!
//! The subscription's end is noticed at once — the connection closing (Redis restarted, or
//! `CLIENT KILL TYPE pubsub`, which Redis also does to a subscriber over its output buffer
//! limit) ends the message stream, a connection that stops answering fails its ping — and the
//! bus is told ([`Bus::lost`]) before reconnecting straight away (then with a short backoff
//! while Redis refuses).

use std::sync::Weak;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::watch;

use super::BusSpec;
use super::bus::{Bus, SendError};

/// Longest wait for Redis to connect and confirm the subscription.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscription connection is pinged, and how long a PUBLISH or a ping may take.
const PING_EVERY: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait between connection attempts while Redis refuses.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The command connection (it reconnects by itself once made).
#[derive(Debug, Default)]
pub(super) struct Sender {
    conn: ArcSwapOption<ConnectionManager>,
}

impl Sender {
    /// PUBLISH; the number of connections that received it.
    pub(super) async fn publish(&self, channel: String, frame: Bytes) -> Result<usize, SendError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(SendError::NotSent("not connected to redis yet".into()));
        };
        let mut c = (*conn).clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(&frame[..]);
        let call = cmd.query_async::<i64>(&mut c);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(n)) => Ok(usize::try_from(n).unwrap_or(0)),
            Ok(Err(e)) => Err(SendError::Unknown(format!("redis: {e}"))),
            Err(_) => Err(SendError::Unknown("redis did not answer within 1 s".into())),
        }
    }
}

/// Subscribes, delivers, notices the subscription's end, and subscribes again, until the bus
/// stops or goes away.
pub(super) async fn run(bus: Weak<Bus>, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let Some(me) = bus.upgrade() else { return };
        let BusSpec::Redis { url, .. } = me.spec().clone() else {
            return;
        };
        let prefix = me.prefix().to_string();
        let need_sender = matches!(&me.link, super::bus::Link::Redis(s) if s.conn.load().is_none());
        drop(me);
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, connect(&url, &prefix, need_sender));
        let connected = tokio::select! {
            r = connect => r.map_err(|_| "timed out".to_string()).and_then(|r| r.map_err(|e| e.to_string())),
            _ = stop.changed() => return,
        };
        let (mut sink, mut stream, sender) = match connected {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "fan-out bus: cannot subscribe on redis; retrying");
                }
                let wait = Duration::from_millis(50u64 << failures.min(4)).min(MAX_BACKOFF);
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        failures = 0;
        {
            let Some(me) = bus.upgrade() else { return };
            if let (Some(c), super::bus::Link::Redis(s)) = (sender, &me.link) {
                s.conn.store(Some(std::sync::Arc::new(c)));
            }
            me.came_up();
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        let why = loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break "the subscription connection closed" };
                    let Some(me) = bus.upgrade() else { return };
                    if let Some(name) = msg.get_channel_name().strip_prefix(prefix.as_str()) {
                        me.arrived(name, Bytes::copy_from_slice(msg.get_payload_bytes()));
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(CALL_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break "the subscription connection stopped answering";
                    }
                }
                _ = stop.changed() => return,
            }
        };
        match bus.upgrade() {
            Some(me) => me.lost(why),
            None => return,
        }
    }
}

type Connected = (
    redis::aio::PubSubSink,
    redis::aio::PubSubStream,
    Option<ConnectionManager>,
);

/// A confirmed pattern subscription, and a command connection when asked.
async fn connect(url: &str, prefix: &str, sender: bool) -> redis::RedisResult<Connected> {
    let client = redis::Client::open(url)?;
    let mut ps = client.get_async_pubsub().await?;
    ps.psubscribe(format!("{}*", glob_escape(prefix))).await?;
    let (sink, stream) = ps.split();
    let conn = match sender {
        // Each call has its own budget (CALL_TIMEOUT), not the crate's 500 ms default.
        true => Some(
            client
                .get_connection_manager_with_config(
                    redis::aio::ConnectionManagerConfig::new().set_response_timeout(None),
                )
                .await?,
        ),
        false => None,
    };
    Ok((sink, stream, conn))
}

/// `prefix` as a literal in a Redis glob pattern.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_characters_in_the_prefix_are_literal() {
        assert_eq!(super::glob_escape("a:b:"), "a:b:");
        assert_eq!(super::glob_escape("x*[y]?\\"), "x\\*\\[y\\]\\?\\\\");
    }
}
