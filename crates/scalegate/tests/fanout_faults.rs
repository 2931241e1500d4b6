//! Fan-out across three instances while the bus breaks for real: Redis drops its subscriber
//! connections (`CLIENT KILL TYPE pubsub`), Redis restarts, one instance's connection to Redis is
//! cut, nats-server restarts. The promise checked in every run: each subscriber's stream holds
//! every message answered 200 (published while it was subscribed) exactly once and in order, or
//! it ends with close 1013 before anything that comes after a message it missed. A 200 never
//! hides a gap. Subscribers closed with 1013 subscribe again, as clients do, and the new stream
//! is held to the same promise.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::Full;
use scalegate_testkit::{NatsServer, RedisServer, Relay};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const TOKEN: &str = "fanout-faults-token-0123";
const TOPIC: &str = "ticks";

/// A gateway whose `[fanout]` bus is `bus` (a TOML inline table).
async fn gateway_on(bus: &str, bs: &[Backend]) -> GatewayProcess {
    let rest = format!("[fanout]\n{bus}\n\n{}", app(bs, ""));
    GatewayProcess::start_custom(
        BIN,
        "[runtime]\nworker_threads = 1\n",
        &format!("token = \"{TOKEN}\""),
        "",
        &rest,
    )
    .await
}

/// Instances on one bus, each seeing all of them as members.
struct Fleet {
    gateways: Vec<GatewayProcess>,
    _backends: Vec<Backend>,
}

async fn fleet(buses: &[String]) -> Fleet {
    let bs = backends(1).await;
    let mut gateways = Vec::new();
    for bus in buses {
        gateways.push(gateway_on(bus, &bs).await);
    }
    let n = buses.len();
    for g in &gateways {
        assert!(
            eventually(Duration::from_secs(10), || async {
                let v = view(g).await;
                v["bus_up"] == true && v["bus_members"] == n
            })
            .await,
            "every instance sees {n} members: {}",
            view(g).await
        );
    }
    Fleet {
        gateways,
        _backends: bs,
    }
}

impl Fleet {
    /// Every instance is quiescent once the subscribers are gone.
    async fn quiescent(&self) {
        for g in &self.gateways {
            quiescent(g).await;
        }
    }
}

async fn view(g: &GatewayProcess) -> serde_json::Value {
    serde_json::from_str(&g.admin_get("/fanout").await).unwrap_or_default()
}

/// Publishes `body`; the status (0 when the admin API did not answer).
async fn publish(g: &GatewayProcess, body: String) -> u16 {
    let req = http::Request::post(format!("http://{}/fanout/{TOPIC}", g.admin))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    Client::http1()
        .send(req)
        .await
        .map_or(0, |r| r.status.as_u16())
}

/// How one subscription (one WebSocket) ended.
#[derive(Clone, Debug, PartialEq)]
enum End {
    /// Close 1013: it may have missed messages.
    Again,
    /// Still open when the test stopped it.
    Open,
    /// Anything else (a failure of the promise).
    Other(String),
}

/// One subscription's life: messages numbered from `owed_from` on were published after it was
/// in place; `got` is what it received, in order of arrival.
#[derive(Clone, Debug)]
struct Life {
    owed_from: usize,
    got: Vec<usize>,
    latencies_us: Vec<u64>,
    end: End,
}

/// Subscribes to `addr` again and again (after each 1013) until `stop`; the lives.
async fn follow(
    addr: std::net::SocketAddr,
    started: Arc<AtomicUsize>,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<Life> {
    let mut lives = Vec::new();
    'lives: loop {
        // Refused (503) while this instance is off the bus: retry as a client would.
        let mut ws = loop {
            if *stop.borrow() {
                return lives;
            }
            if let Ok(stream) = TcpStream::connect(addr).await
                && let Ok((ws, _)) =
                    tokio_tungstenite::client_async(format!("ws://{addr}/live/{TOPIC}"), stream)
                        .await
            {
                break ws;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut life = Life {
            owed_from: started.load(Ordering::SeqCst),
            got: Vec::new(),
            latencies_us: Vec::new(),
            end: End::Open,
        };
        loop {
            let next = tokio::select! {
                m = ws.next() => m,
                _ = stop.changed() => {
                    lives.push(life);
                    return lives;
                }
            };
            match next {
                Some(Ok(Message::Text(t))) => {
                    let mut parts = t.split(':');
                    let (Some(i), Some(sent)) = (
                        parts.next().and_then(|p| p.parse().ok()),
                        parts.next().and_then(|p| p.parse::<u64>().ok()),
                    ) else {
                        life.end = End::Other(format!("unexpected message {t:?}"));
                        break;
                    };
                    life.got.push(i);
                    let now = epoch.elapsed().as_micros() as u64;
                    life.latencies_us.push(now.saturating_sub(sent));
                }
                Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::Again => {
                    life.end = End::Again;
                    lives.push(life);
                    continue 'lives;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => {
                    life.end = End::Other(format!("{other:?}"));
                    break;
                }
            }
        }
        lives.push(life);
        return lives;
    }
}

/// What a run saw.
struct Run {
    statuses: Vec<u16>,
    lives: Vec<Vec<Life>>,
}

impl Run {
    /// The promise, for every life of every subscriber. Returns a summary line.
    fn check(&self) -> String {
        let ok = |i: usize| self.statuses.get(i) == Some(&200);
        let (mut cut, mut lives) = (0, 0);
        for (s, sub) in self.lives.iter().enumerate() {
            for (l, life) in sub.iter().enumerate() {
                lives += 1;
                let at = format!("subscriber {s}, life {l}: {life:?}");
                assert!(
                    !matches!(life.end, End::Other(_)),
                    "ended other than by 1013: {at}"
                );
                assert!(
                    life.got.windows(2).all(|w| w[0] < w[1]),
                    "out of order or twice: {at}"
                );
                let last = life.got.last().copied();
                for m in (life.owed_from..self.statuses.len()).filter(|&m| ok(m)) {
                    if life.got.contains(&m) {
                        continue;
                    }
                    // A missed 200: allowed only in a stream closed with 1013 that received
                    // nothing after it.
                    assert!(
                        life.end == End::Again && last.is_none_or(|x| x < m),
                        "message {m} was answered 200 but missed, and the stream went on: {at}"
                    );
                }
                if life.end == End::Again {
                    cut += 1;
                }
            }
        }
        let refused = self.statuses.iter().filter(|&&s| s != 200).count();
        format!(
            "{} published, {refused} answered 503, {lives} subscriptions, {cut} closed with 1013",
            self.statuses.len()
        )
    }

    fn latencies(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .lives
            .iter()
            .flatten()
            .flat_map(|l| l.latencies_us.iter().copied())
            .collect();
        all.sort_unstable();
        all
    }
}

/// Subscribes `per_instance` clients on each instance, publishes `count` messages through the
/// first instance every `every`, calls `fault` once `fault_at` have been published, waits for
/// the streams to settle, and returns what happened.
async fn run<F, Fut>(
    fleet: &Fleet,
    per_instance: usize,
    count: usize,
    every: Duration,
    fault_at: usize,
    fault: F,
) -> Run
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Arc::new(AtomicUsize::new(0));
    let epoch = Instant::now();
    let (stop_tx, stop) = watch::channel(false);
    let mut subscribers = Vec::new();
    for g in &fleet.gateways {
        for _ in 0..per_instance {
            subscribers.push(tokio::spawn(follow(
                g.http,
                started.clone(),
                epoch,
                stop.clone(),
            )));
        }
    }
    let want = per_instance * fleet.gateways.len();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let mut n = 0;
            for g in &fleet.gateways {
                n += view(g).await["topics"][0]["subscribers"]
                    .as_u64()
                    .unwrap_or(0);
            }
            n as usize == want
        })
        .await,
        "{want} subscribers in place"
    );
    let mut statuses = Vec::with_capacity(count);
    let mut fault = Some(fault);
    for i in 0..count {
        if i == fault_at
            && let Some(f) = fault.take()
        {
            f().await;
        }
        started.store(i + 1, Ordering::SeqCst);
        let sent = epoch.elapsed().as_micros();
        statuses.push(publish(&fleet.gateways[0], format!("{i}:{sent}")).await);
        tokio::time::sleep(every).await;
    }
    // Let the last messages arrive, then stop the subscribers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send_replace(true);
    let mut lives = Vec::new();
    for s in subscribers {
        lives.push(s.await.expect("subscriber task"));
    }
    Run { statuses, lives }
}

/// After a fault the fleet recovers: the last messages were answered 200 and reached every
/// subscriber's last stream.
fn recovered(r: &Run, tail: usize) {
    let n = r.statuses.len();
    assert!(
        r.statuses[n - tail..].iter().all(|&s| s == 200),
        "the last {tail} publishes were answered 200: {:?}",
        &r.statuses[n - tail..]
    );
    for (s, sub) in r.lives.iter().enumerate() {
        let last = sub.last().expect("a life");
        assert!(
            last.got.contains(&(n - 1)),
            "subscriber {s}'s last stream got the last message: {last:?}"
        );
    }
}

/// The standard fault run: 3 subscribers per instance, 200 messages 10 ms apart, the fault
/// after 75; checks the promise and the recovery, prints what happened.
async fn faulted<F, Fut>(fleet: &Fleet, what: &str, fault: F) -> Run
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let r = run(fleet, 3, 200, Duration::from_millis(10), 75, fault).await;
    println!("{what}: {}", r.check());
    recovered(&r, 20);
    r
}

fn redis_bus(url: &str) -> String {
    format!("redis = {{ url = \"{url}\" }}")
}

#[tokio::test]
async fn a_healthy_redis_bus_delivers_every_message_once_in_order_to_100_subscribers() {
    let redis = RedisServer::start().await;
    let bus = redis_bus(&redis.url());
    let fleet = fleet(&[bus.clone(), bus.clone(), bus]).await;
    // 34 per instance ≈ 100 subscribers on 3 instances.
    let r = run(
        &fleet,
        34,
        100,
        Duration::from_millis(20),
        usize::MAX,
        || async {},
    )
    .await;
    let summary = r.check();
    assert!(r.statuses.iter().all(|&s| s == 200), "{summary}");
    for (s, sub) in r.lives.iter().enumerate() {
        assert_eq!(sub.len(), 1, "subscriber {s} was never closed");
        assert_eq!(sub[0].got, (0..100).collect::<Vec<_>>(), "subscriber {s}");
    }
    let lat = r.latencies();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!(
        "{summary}; latency publish→subscriber µs: p50 {} p99 {} max {}",
        p(0.5),
        p(0.99),
        p(1.0)
    );
    fleet.quiescent().await;
}

#[tokio::test]
async fn redis_dropping_the_subscriber_connections_never_hides_a_gap() {
    let redis = RedisServer::start().await;
    let bus = redis_bus(&redis.url());
    let fleet = fleet(&[bus.clone(), bus.clone(), bus]).await;
    let r = faulted(&fleet, "CLIENT KILL TYPE pubsub", || async {
        let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        assert!(killed.is_some_and(|k| k.starts_with(':')), "killed");
    })
    .await;
    assert!(
        r.lives.iter().all(|l| l[0].end == End::Again),
        "every subscriber was told (1013)"
    );
    for g in &fleet.gateways {
        assert!(view(g).await["gaps"].as_u64() >= Some(1));
    }
    fleet.quiescent().await;
}

#[tokio::test]
async fn a_redis_restart_never_hides_a_gap() {
    let mut redis = RedisServer::start().await;
    let bus = redis_bus(&redis.url());
    let fleet = fleet(&[bus.clone(), bus.clone(), bus]).await;
    let redis_ref = &mut redis;
    faulted(&fleet, "redis restart", || async move {
        assert!(redis_ref.restart().await, "redis restarted");
    })
    .await;
    fleet.quiescent().await;
}

#[tokio::test]
async fn one_instance_losing_its_redis_connection_never_hides_a_gap() {
    let redis = RedisServer::start().await;
    let relay = Relay::start(([127, 0, 0, 1], redis.port).into()).await;
    let direct = redis_bus(&redis.url());
    let cut = redis_bus(&format!("redis://{}", relay.addr));
    let fleet = fleet(&[direct.clone(), cut, direct]).await;
    let r = faulted(&fleet, "one instance's connection cut", || async {
        relay.cut();
    })
    .await;
    // Instance 1's subscribers were closed; the others' streams went on untouched.
    for (s, sub) in r.lives.iter().enumerate() {
        let on_cut_instance = (3..6).contains(&s);
        assert_eq!(sub[0].end == End::Again, on_cut_instance, "subscriber {s}");
    }
    fleet.quiescent().await;
}

#[tokio::test]
async fn a_nats_server_restart_never_hides_a_gap() {
    let mut nats = NatsServer::start().await;
    let bus = format!("nats = {{ url = \"{}\" }}", nats.url());
    let fleet = fleet(&[bus.clone(), bus.clone(), bus]).await;
    let nats_ref = &mut nats;
    faulted(&fleet, "nats-server restart", || async move {
        assert!(nats_ref.restart().await, "nats-server restarted");
    })
    .await;
    fleet.quiescent().await;
}
