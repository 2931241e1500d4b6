//! WebSocket fan-out: subscribers on one or several gateway instances, messages published
//! through the admin API or straight onto a real Redis or NATS bus.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::Full;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const TOKEN: &str = "fanout-test-token-0123";

type Ws = WebSocketStream<TcpStream>;

/// A gateway with `[fanout]` settings and a token, in front of one backend (returned so it
/// lives as long as the gateway).
async fn start(fanout: &str) -> (GatewayProcess, Vec<Backend>) {
    let bs = backends(1).await;
    let rest = format!("[fanout]\n{fanout}\n\n{}", app(&bs, ""));
    let gw = GatewayProcess::start_custom(
        BIN,
        "[runtime]\nworker_threads = 2\n",
        &format!("token = \"{TOKEN}\""),
        "",
        &rest,
    )
    .await;
    (gw, bs)
}

/// Two instances on the bus `[fanout]` settings `cfg`, each with one subscriber to `topic`.
struct OnTheBus {
    gateways: [GatewayProcess; 2],
    subscribers: [Ws; 2],
    _backends: Vec<Backend>,
}

async fn on_the_bus(cfg: &str, topic: &str) -> OnTheBus {
    let ((g1, mut b1), (g2, b2)) = (start(cfg).await, start(cfg).await);
    b1.extend(b2);
    for g in [&g1, &g2] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                g.admin_get("/fanout").await.contains("\"bus_up\":true")
            })
            .await
        );
    }
    let subscribers = [subscribe(&g1, topic).await, subscribe(&g2, topic).await];
    OnTheBus {
        gateways: [g1, g2],
        subscribers,
        _backends: b1,
    }
}

impl OnTheBus {
    /// Both subscribers get `msg`, and nothing else arrives right after.
    async fn both_get_once(&mut self, msg: &str) {
        for ws in &mut self.subscribers {
            assert_eq!(next_text(ws).await.as_deref(), Some(msg));
        }
        assert!(
            quiet(&mut self.subscribers[0], Duration::from_millis(200)).await,
            "exactly once"
        );
    }

    /// Both instances are quiescent once the subscribers are gone.
    async fn quiescent(self) {
        drop(self.subscribers);
        for g in &self.gateways {
            quiescent(g).await;
        }
    }
}

async fn subscribe(gw: &GatewayProcess, topic: &str) -> Ws {
    let stream = TcpStream::connect(gw.http).await.expect("connect");
    let (ws, resp) =
        tokio_tungstenite::client_async(format!("ws://{}/live/{topic}", gw.http), stream)
            .await
            .expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

async fn publish(admin: SocketAddr, topic: &str, body: &str) -> Resp {
    let req = http::Request::post(format!("http://{admin}/fanout/{topic}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    Client::http1().send(req).await.expect("publish")
}

/// The next text message, or None within 5 s.
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// Nothing more arrives within `d`.
async fn quiet(ws: &mut Ws, d: Duration) -> bool {
    tokio::time::timeout(d, ws.next()).await.is_err()
}

#[tokio::test]
async fn subscribers_on_one_instance_get_each_message_once() {
    let (gw, _bs) = start("").await;
    let mut a = subscribe(&gw, "news").await;
    let mut b = subscribe(&gw, "news").await;
    let mut other = subscribe(&gw, "sport").await;
    let r = publish(gw.admin, "news", "hello").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"local_subscribers\":2"), "{}", r.body);
    assert_eq!(next_text(&mut a).await.as_deref(), Some("hello"));
    assert_eq!(next_text(&mut b).await.as_deref(), Some("hello"));
    assert!(
        quiet(&mut other, Duration::from_millis(200)).await,
        "other topics hear nothing"
    );
    assert!(
        quiet(&mut a, Duration::from_millis(100)).await,
        "exactly once"
    );

    // Not a WebSocket: told how; no token: refused; a bad topic: 400.
    let plain = Client::http1()
        .get(gw.http, "/live/news")
        .await
        .expect("response");
    assert_eq!(plain.status, 426);
    assert_eq!(plain.header("upgrade"), "websocket");
    let anonymous = Client::http1()
        .post_with(gw.admin, "/fanout/news", &[])
        .await
        .expect("response");
    assert_eq!(anonymous.status, 401);
    assert_eq!(publish(gw.admin, "no/slash", "x").await.status, 400);
    // Other paths still go to the routes.
    assert_eq!(
        Client::http1()
            .get(gw.http, "/x")
            .await
            .expect("response")
            .status,
        200
    );
    let view: serde_json::Value =
        serde_json::from_str(&gw.admin_get("/fanout").await).unwrap_or_default();
    assert_eq!(
        view["topics"][0],
        serde_json::json!({ "topic": "news", "subscribers": 2 })
    );
    drop((a, b, other));
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_gateway_shutting_down_closes_subscribers_with_going_away() {
    let (mut gw, _bs) = start("").await;
    let mut ws = subscribe(&gw, "t").await;
    gw.signal(15);
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    assert!(
        gw.wait_exit(Duration::from_secs(10))
            .await
            .is_some_and(|s| s.success())
    );
}

/// Found from outside: a subscriber that stops reading was never noticed. The gateway blocked
/// in a send to its full socket, so neither its lag, nor pings, nor a shutdown reached it: the
/// connection stayed open with megabytes queued and a drain waited its whole timeout. A send
/// that cannot proceed for a while now drops the subscriber, counted as too slow.
#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_as_too_slow() {
    let (gw, _bs) = start("buffer = 16").await;
    let stuck = subscribe(&gw, "t").await;
    let payload = "x".repeat(32 * 1024);
    for _ in 0..600 {
        assert_eq!(publish(gw.admin, "t", &payload).await.status, 200);
    }
    let dropped = eventually(Duration::from_secs(30), || async {
        let f = gw.admin_get("/fanout").await;
        f.contains("\"dropped_slow\":1") && f.contains("\"topics\":[]")
    })
    .await;
    assert!(dropped, "{}", gw.admin_get("/fanout").await);
    drop(stuck);
    quiescent(&gw).await;
}

#[tokio::test]
async fn a_redis_bus_reaches_every_instance_exactly_once() {
    let redis = scalegate_testkit::RedisServer::start().await;
    let mut bus = on_the_bus(
        &format!("redis = {{ url = \"{}\" }}", redis.url()),
        "orders.eu",
    )
    .await;
    let r = publish(bus.gateways[0].admin, "orders.eu", "o-1").await;
    assert!(
        r.status == 200 && r.body.contains("\"via_bus\":true"),
        "{}",
        r.body
    );
    bus.both_get_once("o-1").await;
    // The application may publish on the bus itself.
    redis
        .command(&["PUBLISH", "scalegate:fanout:orders.eu", "o-2"])
        .await
        .expect("publish");
    bus.both_get_once("o-2").await;
    bus.quiescent().await;
}

#[tokio::test]
async fn a_nats_bus_reaches_every_instance() {
    let nats = scalegate_testkit::NatsServer::start().await;
    let mut bus = on_the_bus(&format!("nats = {{ url = \"{}\" }}", nats.url()), "chat").await;
    let r = publish(bus.gateways[1].admin, "chat", "hi all").await;
    assert_eq!(r.status, 200, "{}", r.body);
    bus.both_get_once("hi all").await;
    bus.quiescent().await;
}

/// Found from outside: a publish over NATS was answered 200 once the frame was written to the
/// socket (async-nats's flush makes no round trip), so frames written while the server was
/// paused, or into a link that was silently down, were acknowledged and could be lost with
/// the connection. A 200 now needs the server's answer to a request sent after the frame.
#[tokio::test]
async fn a_nats_publish_is_acknowledged_only_by_the_server() {
    let nats = scalegate_testkit::NatsServer::start().await;
    let bus = on_the_bus(&format!("nats = {{ url = \"{}\" }}", nats.url()), "chat").await;
    nats.pause();
    let r = publish(bus.gateways[0].admin, "chat", "while paused").await;
    nats.resume();
    assert_eq!(
        r.status, 503,
        "a paused server acknowledged nothing: {}",
        r.body
    );
    // Once it answers again, publishing goes on (the paused frame may still arrive: a 503
    // says the outcome is unknown, not that it was lost).
    let ok = eventually(Duration::from_secs(10), || async {
        publish(bus.gateways[0].admin, "chat", "after").await.status == 200
    })
    .await;
    assert!(ok, "publishing never recovered");
    drop(bus.subscribers);
    for g in &bus.gateways {
        quiescent(g).await;
    }
}

#[tokio::test]
async fn http2_clients_subscribe_with_an_extended_connect() {
    use hyper_util::rt::TokioIo;
    use scalegate_testkit::client::{extended_connect, h2c};
    use tokio_tungstenite::tungstenite::protocol::Role;

    // A short idle timeout: the subscription's stream counts as in flight, so the connection
    // carrying it is not closed as idle (a probe's finding made idle HTTP/2 connections close).
    let bs = backends(1).await;
    let gw = GatewayProcess::start_custom(
        BIN,
        "[runtime]\nworker_threads = 2\n",
        &format!("token = \"{TOKEN}\""),
        "idle_timeout = \"1s\"",
        &format!("[fanout]\n\n{}", app(&bs, "")),
    )
    .await;
    let (mut tx, _) = h2c(gw.http, "/x").await;
    let resp = extended_connect(&mut tx, gw.http, "/live/h2news", "websocket").await;
    assert_eq!(resp.status(), 200);
    let io = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgraded"));
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.admin_get("/fanout").await.contains("h2news")
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(publish(gw.admin, "h2news", "via h2").await.status, 200);
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(&got, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "via h2"),
        "{got:?}"
    );
    drop((ws, tx));
    quiescent(&gw).await;
}

#[tokio::test]
async fn the_application_authorizes_each_subscription() {
    // The app admits cookie "session=ok" to any topic but "secret".
    let app = scalegate_testkit::origin::Origin::start(|req, _| {
        let cookie = req
            .headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let topic = req.uri.query().unwrap_or("");
        let status = match (cookie, topic) {
            ("session=ok", "topic=secret") => 403,
            ("session=ok", _) => 204,
            _ => 401,
        };
        http::Response::builder()
            .status(status)
            .body(Bytes::new())
            .expect("response")
    })
    .await;
    let rest = format!(
        "[fanout]\nauthorize = {{ upstream = \"auth\", path = \"/can-subscribe\" }}\n\n\
         [[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"auth\"\n\
         [upstreams.auth]\nendpoints = [\"{}\"]\n",
        app.addr
    );
    let gw =
        GatewayProcess::start_custom(BIN, "", &format!("token = \"{TOKEN}\""), "", &rest).await;
    let handshake = |topic: &str, cookie: Option<&str>| {
        let mut req = format!("ws://{}/live/{topic}", gw.http)
            .into_client_request()
            .expect("request");
        if let Some(c) = cookie {
            req.headers_mut()
                .insert("cookie", http::HeaderValue::from_str(c).expect("cookie"));
        }
        req
    };
    let try_subscribe = |topic: &'static str, cookie: Option<&'static str>| {
        let req = handshake(topic, cookie);
        let addr = gw.http;
        async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            tokio_tungstenite::client_async(req, stream).await
        }
    };
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let refused = |r: Result<_, WsError>| match r {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Ok(_) => 101,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(refused(try_subscribe("news", None).await.map(|_| ())), 401);
    assert_eq!(
        refused(
            try_subscribe("secret", Some("session=ok"))
                .await
                .map(|_| ())
        ),
        403
    );
    let (mut ws, _) = try_subscribe("news", Some("session=ok"))
        .await
        .expect("admitted");
    assert_eq!(app.hits("/can-subscribe"), 3);
    assert_eq!(
        app.last("/can-subscribe")
            .and_then(|h| h.get("x-scalegate-topic").cloned())
            .as_ref()
            .and_then(|v| v.to_str().ok()),
        Some("news")
    );
    assert_eq!(publish(gw.admin, "news", "members only").await.status, 200);
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("members only"));

    // The application away: subscriptions are refused with 503, not let through.
    app.stop();
    assert_eq!(
        refused(try_subscribe("news", Some("session=ok")).await.map(|_| ())),
        503
    );
    drop(ws);
    quiescent(&gw).await;
}

/// Rewrites `gw`'s `[fanout]` settings to `fanout` and waits for the reload to be in force.
async fn reload_fanout(gw: &GatewayProcess, bs: &[Backend], fanout: &str) {
    gw.write_config(&format!("[fanout]\n{fanout}\n\n{}", app(bs, "")));
    gw.signal(libc::SIGHUP);
    assert!(
        metrics_show(gw, "scalegate_config_reloads_total{result=\"ok\"} 1").await,
        "reloaded"
    );
}

#[tokio::test]
async fn subscribers_keep_hearing_after_a_reload_changes_the_fanout_settings() {
    let (gw, bs) = start("buffer = 16").await;
    let mut ws = subscribe(&gw, "news").await;
    reload_fanout(&gw, &bs, "buffer = 32").await;
    let r = publish(gw.admin, "news", "after-reload").await;
    assert!(r.body.contains("\"local_subscribers\":1"), "{}", r.body);
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("after-reload"));
    assert!(quiet(&mut ws, Duration::from_millis(200)).await, "once");
    drop(ws);
    quiescent(&gw).await;
}

#[tokio::test]
async fn after_a_reload_a_bus_message_reaches_an_old_subscriber_once() {
    let redis = scalegate_testkit::RedisServer::start().await;
    let cfg = format!("redis = {{ url = \"{}\" }}", redis.url());
    let (gw, bs) = start(&cfg).await;
    let up = || async { gw.admin_get("/fanout").await.contains("\"bus_up\":true") };
    assert!(eventually(Duration::from_secs(5), up).await);
    let mut ws = subscribe(&gw, "news").await;
    reload_fanout(&gw, &bs, &format!("{cfg}\nbuffer = 32")).await;
    assert!(eventually(Duration::from_secs(5), up).await);
    let r = publish(gw.admin, "news", "via-bus").await;
    assert!(r.body.contains("\"via_bus\":true"), "{}", r.body);
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("via-bus"));
    assert!(
        quiet(&mut ws, Duration::from_millis(300)).await,
        "the replaced hub no longer delivers: exactly once"
    );
    drop(ws);
    quiescent(&gw).await;
}
