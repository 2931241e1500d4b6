//! The fan-out bus: Redis pub/sub or NATS between instances. Every instance subscribes to all
//! topics under the prefix and delivers what arrives to its own subscribers; publishing sends
//! on the bus only, so the publishing instance gets its copy back from the bus like every other.
//!
//! What a publish answered 200 promises (README "Fan-out"):
//! - Every message a gateway publishes carries its publisher's id and a sequence number, and
//!   publishes leave each instance one at a time, in number order. Every instance announces
//!   itself once a second on `{prefix}!members` with the last number it sent.
//! - An instance that may have missed a message — its subscription connection ended or failed
//!   a ping, a number skipped, a heartbeat announced a number it never got, the NATS client
//!   reported a slow consumer — closes every local subscriber with 1013 at once and starts
//!   afresh. Until it is subscribed again it refuses new subscribers (503).
//! - Redis: PUBLISH answers how many connections received the message; fewer than the
//!   instances heard from within the last 3.5 s (this one included) means some instance is not
//!   listening now, and the publish is answered 503. NATS gives no count: a publish is 200 once
//!   the server has it (flushed) while this instance's connection is up, and an instance that
//!   misses it notices by number or heartbeat.
//! - A 503 does not mean nobody got it: some instances may have. The application decides
//!   whether to publish again (subscribers may then see it twice).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{Notify, watch};

use super::BusSpec;
use super::envelope::{self, Frame, PeerId};
use super::local::Local;
use super::peers::{Fit, HEARTBEAT_EVERY, Peers};
use scalegate_http::clock;

/// The control channel's name after the prefix (not a valid topic).
pub(super) const MEMBERS: &str = "!members";

/// Why a send did not happen as asked.
#[derive(Debug)]
pub(super) enum SendError {
    /// Nothing left this instance.
    NotSent(String),
    /// It may or may not have gone out.
    Unknown(String),
}

/// The bus as the admin API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusView {
    /// This instance's subscription is live.
    pub up: bool,
    /// Instances heard from within the last 3.5 s (this one included once it hears itself).
    pub members: usize,
}

/// A connected (or connecting) bus.
#[derive(Debug)]
pub(super) struct Bus {
    spec: BusSpec,
    /// This instance on the bus.
    pub(super) id: PeerId,
    local: Arc<Local>,
    /// The last sequence number sent; held across a send so numbers leave in order.
    sent: tokio::sync::Mutex<u64>,
    peers: Mutex<Peers>,
    up: AtomicBool,
    /// Wakes the heartbeat loop (the bus just came up).
    beat_now: Arc<Notify>,
    /// True once stopped; the loops watch it.
    stop: watch::Sender<bool>,
    /// The transport's sending half.
    pub(super) link: Link,
}

/// The sending half of the transport.
#[derive(Debug)]
pub(super) enum Link {
    /// A Redis command connection for PUBLISH.
    Redis(super::redis_bus::Sender),
    /// The NATS client.
    Nats(super::nats_bus::Sender),
}

impl Bus {
    /// Starts the subscription and heartbeat loops on the current runtime.
    pub(super) fn start(spec: BusSpec, local: Arc<Local>) -> Arc<Bus> {
        let bus = Arc::new(Bus {
            id: rand::random(),
            local,
            sent: tokio::sync::Mutex::new(0),
            peers: Mutex::default(),
            up: AtomicBool::new(false),
            beat_now: Arc::default(),
            stop: watch::channel(false).0,
            link: match &spec {
                BusSpec::Redis { .. } => Link::Redis(Default::default()),
                BusSpec::Nats { .. } => Link::Nats(Default::default()),
            },
            spec,
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let me = Arc::downgrade(&bus);
                match &bus.spec {
                    BusSpec::Redis { .. } => {
                        rt.spawn(super::redis_bus::run(me.clone(), bus.stop.subscribe()))
                    }
                    BusSpec::Nats { .. } => {
                        rt.spawn(super::nats_bus::run(me.clone(), bus.stop.subscribe()))
                    }
                };
                rt.spawn(heartbeats(me, bus.beat_now.clone(), bus.stop.subscribe()));
            }
            Err(_) => tracing::warn!("no runtime: the fan-out bus stays off"),
        }
        bus
    }

    pub(super) fn spec(&self) -> &BusSpec {
        &self.spec
    }

    /// The channel or subject prefix.
    pub(super) fn prefix(&self) -> &str {
        match &self.spec {
            BusSpec::Redis { channel_prefix, .. } => channel_prefix,
            BusSpec::Nats { subject_prefix, .. } => subject_prefix,
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub(super) fn view(&self) -> BusView {
        BusView {
            up: self.is_up(),
            members: self.members(),
        }
    }

    fn members(&self) -> usize {
        lock(&self.peers).members(clock::now())
    }

    /// Leaves the bus: a last heartbeat says so, then the loops end.
    pub(super) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The subscription is live (and registered with the server).
    pub(super) fn came_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::info!(prefix = self.prefix(), "fan-out bus subscribed");
        }
        self.beat_now.notify_one();
    }

    /// The subscription may have missed messages: every local subscriber is closed with 1013,
    /// and numbers start afresh.
    pub(super) fn lost(&self, why: &str) {
        if self.up.swap(false, Ordering::SeqCst) {
            tracing::warn!(why, "fan-out bus: subscription lost");
        }
        self.gap(why);
    }

    /// Messages may have been missed though the subscription stays: every local subscriber is
    /// closed with 1013, and numbers start afresh.
    pub(super) fn gap(&self, why: &str) {
        self.local.cut_all(why);
        lock(&self.peers).reset_numbers();
    }

    /// Something arrived on `name` (the channel or subject after the prefix).
    pub(super) fn arrived(&self, name: &str, payload: Bytes) {
        let now = clock::now();
        if name == MEMBERS {
            if let Frame::Heartbeat {
                from,
                last_seq,
                alive,
            } = envelope::parse(payload)
            {
                let fit = lock(&self.peers).heartbeat(from, last_seq, alive, now);
                if fit == Fit::Gap {
                    self.local
                        .cut_all("a heartbeat announced a message this instance did not receive");
                }
            }
            return;
        }
        if super::check_topic(name).is_err() {
            return;
        }
        match envelope::parse(payload) {
            Frame::Stamped { from, seq, payload } => {
                match lock(&self.peers).message(from, seq, now) {
                    Fit::Next => {}
                    Fit::Repeat => return,
                    Fit::Gap => self.local.cut_all(
                        "a sequence number showed a message this instance did not receive",
                    ),
                }
                self.local.deliver(name, payload);
            }
            Frame::Raw(payload) => {
                self.local.deliver(name, payload);
            }
            Frame::Heartbeat { .. } => {}
        }
    }

    /// Sends a message to every instance; Ok when delivery to all of them is assured.
    pub(super) async fn publish(&self, topic: &str, message: Bytes) -> Result<(), String> {
        if !self.is_up() {
            return Err("this instance is not connected to the bus".into());
        }
        let mut sent = self.sent.lock().await;
        let seq = *sent + 1;
        let receivers = match self
            .send(topic, envelope::message(self.id, seq, &message))
            .await
        {
            Ok(r) => r,
            Err(SendError::NotSent(why)) => return Err(why),
            Err(SendError::Unknown(why)) => {
                // It may have reached some instances: the number is spent, so those that did
                // not get it see the skip.
                *sent = seq;
                return Err(why);
            }
        };
        *sent = seq;
        drop(sent);
        if let Some(n) = receivers {
            let expected = self.members().max(1);
            if n < expected {
                return Err(format!(
                    "{n} of the {expected} instances on the bus are listening now; delivery to every subscriber is not assured"
                ));
            }
        }
        Ok(())
    }

    /// A heartbeat with the last number sent.
    async fn beat(&self, alive: bool) {
        let sent = self.sent.lock().await;
        let frame = envelope::heartbeat(self.id, *sent, alive);
        if let Err(e) = self.send(MEMBERS, frame).await {
            tracing::debug!(error = ?e, "fan-out heartbeat not sent");
        }
    }

    /// Sends a frame on `name`; Ok(Some(n)) when the bus says how many received it.
    async fn send(&self, name: &str, frame: Bytes) -> Result<Option<usize>, SendError> {
        let subject = format!("{}{name}", self.prefix());
        match &self.link {
            Link::Redis(r) => r.publish(subject, frame).await.map(Some),
            Link::Nats(n) => n.publish(subject, frame).await.map(|()| None),
        }
    }
}

/// Announces this instance every second while it is subscribed, and once more when it leaves.
async fn heartbeats(
    bus: std::sync::Weak<Bus>,
    beat_now: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        let leaving = tokio::select! {
            _ = tick.tick() => false,
            () = beat_now.notified() => false,
            _ = stop.changed() => true,
        };
        let Some(me) = bus.upgrade() else { return };
        if leaving {
            me.beat(false).await;
            return;
        }
        if me.is_up() {
            me.beat(true).await;
        }
        lock(&me.peers).prune(clock::now());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
