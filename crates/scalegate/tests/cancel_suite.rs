//! The cancellation suite (issue 14): thousands of requests over real sockets, HTTP/1.1 and
//! HTTP/2, each cut at a phase drawn from a seeded generator — before its head is complete,
//! while its body arrives (Content-Length and chunked), while a slow upstream has not answered,
//! mid-response, or by the upstream breaking its response — over routes with the global cap,
//! route and upstream bulkheads, retries past a dead endpoint and its breaker, the cache
//! (coalesced misses) and a queued route. Afterwards every count is back to zero and every
//! route answers normally.
//!
//! `SG_CANCEL_REQUESTS` sets how many requests (default 6000), `SG_CANCEL_SEED` the seed; a
//! failure prints the seed that replays its draws.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Either, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The routes, chosen by an `x-route` header ("plain" matches none and takes the catch-all).
const ROUTES: &[&str] = &["plain", "bulk", "retry", "cache", "queue"];

/// Where a request is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Part of the head, then the client leaves (HTTP/1.1 only).
    Head,
    /// Part of a Content-Length body.
    BodyLength,
    /// Some chunks of a chunked body (HTTP/2: DATA frames, then a reset).
    BodyChunked,
    /// The whole request; the upstream delays its answer; the client leaves at a random time.
    AwaitHead,
    /// Part of a large, dripping or stalled response body.
    MidBody,
    /// The upstream breaks its response after some bytes; the client reads what comes.
    UpstreamReset,
    /// An ordinary request read whole (its status is checked).
    Complete,
    /// HTTP/2 only: the connection closes with several streams open.
    ConnectionLost,
}

const H1_PHASES: &[Phase] = &[
    Phase::Head,
    Phase::BodyLength,
    Phase::BodyChunked,
    Phase::AwaitHead,
    Phase::MidBody,
    Phase::UpstreamReset,
    Phase::Complete,
];

const H2_PHASES: &[Phase] = &[
    Phase::BodyLength,
    Phase::BodyChunked,
    Phase::AwaitHead,
    Phase::MidBody,
    Phase::UpstreamReset,
    Phase::Complete,
    Phase::ConnectionLost,
];

/// Outcomes by "protocol phase route: what happened", for the failure message and the log.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<BTreeMap<String, usize>>>);

impl Tally {
    fn add(&self, key: String) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(key).or_insert(0) += 1;
        }
    }

    fn snapshot(&self) -> BTreeMap<String, usize> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// One request's draws: route, phase, path and timings all come from its generator.
struct Draw {
    route: &'static str,
    phase: Phase,
    path: String,
    delay_ms: usize,
}

impl Draw {
    fn new(rng: &mut Rng, phases: &[Phase]) -> Draw {
        let route = ROUTES[rng.below(ROUTES.len())];
        let mut phase = phases[rng.below(phases.len())];
        // A queued route answers 202 as soon as it has stored the request: only the request
        // side can be cut, and what it stores must be deliverable (no stalled paths).
        if route == "queue" && matches!(phase, Phase::MidBody | Phase::UpstreamReset) {
            phase = Phase::Complete;
        }
        let path = match phase {
            Phase::MidBody => match rng.below(3) {
                0 => format!("/bytes/{}", 100_000 + rng.below(2_000_000)),
                1 => format!("/drip/{}/{}", 20 + rng.below(40), 2 + rng.below(8)),
                _ => "/stall".to_string(),
            },
            Phase::UpstreamReset => format!("/reset/{}", 1 + rng.below(100_000)),
            // Few keys, a short TTL: concurrent misses of one key coalesce, and keep coming.
            _ if route == "cache" => format!("/k{}", rng.below(16)),
            _ => format!("/r{}", rng.below(1000)),
        };
        let delay_ms = match phase {
            Phase::AwaitHead | Phase::ConnectionLost => 10 + rng.below(150),
            Phase::Complete if route != "queue" => rng.below(20),
            _ => 0,
        };
        Draw {
            route,
            phase,
            path,
            delay_ms,
        }
    }

    fn method(&self) -> &'static str {
        match self.phase {
            Phase::BodyLength | Phase::BodyChunked => "POST",
            _ if self.route == "queue" => "POST",
            _ => "GET",
        }
    }
}

fn config(bs: &[Backend], dead: SocketAddr) -> String {
    let route = |name: &str, upstream: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/\", headers = {{ \"x-route\" = \"{name}\" }} }}\nupstream = \"{upstream}\"\n{extra}\n\n"
        )
    };
    let mut c = String::from(
        "[[routes]]\nname = \"plain\"\nmatch = { path_prefix = \"/\" }\nupstream = \"app\"\n\n",
    );
    c += &route(
        "bulk",
        "bulk",
        "concurrency = { max_in_flight = 3, queue = 6, queue_timeout = \"1s\" }",
    );
    c += &route(
        "retry",
        "flaky",
        "retry = { attempts = 3, backoff = \"1ms\", max_backoff = \"5ms\", budget_percent = 100, min_retries_per_second = 1000 }",
    );
    c += &route(
        "cache",
        "app",
        "cache = { rules = [{ path_prefix = \"/\", ttl = \"1s\" }] }",
    );
    c += &route(
        "queue",
        "app",
        "queue = { max_in_flight = 4, max_queued = 100000, attempts = 2, backoff = \"10ms\" }",
    );
    c += &format!(
        "[upstreams.app]\nendpoints = [\"{}\", \"{}\"]\npassive = {{ base_ejection = \"200ms\", max_ejection = \"1s\" }}\n\n",
        bs[0].addr, bs[1].addr
    );
    // HTTP/2 to the endpoint: client cuts become RST_STREAM upstream too.
    c += &format!(
        "[upstreams.bulk]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\nconcurrency = {{ max_in_flight = 2, queue = 6, queue_timeout = \"1s\" }}\n\n",
        bs[2].addr
    );
    // A dead endpoint beside a live one: connect failures, retries, ejections, half-open probes.
    c += &format!(
        "[upstreams.flaky]\nendpoints = [\"{dead}\", \"{}\"]\npassive = {{ consecutive_failures = 2, base_ejection = \"100ms\", max_ejection = \"300ms\", half_open_probes = 1 }}\n",
        bs[3].addr
    );
    c
}

/// An HTTP/1.1 request head for `d` (its body framing in `framing`).
fn h1_head(d: &Draw, framing: &str) -> String {
    format!(
        "{} {} HTTP/1.1\r\nhost: cancel.test\r\nx-route: {}\r\nx-delay-ms: {}\r\nconnection: close\r\n{framing}\r\n",
        d.method(),
        d.path,
        d.route,
        d.delay_ms
    )
}

/// Reads until `limit` bytes, the end of the stream, or `within`; returns what came and whether
/// the stream ended.
async fn read_up_to(s: &mut TcpStream, limit: usize, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < limit {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    (out, false)
}

fn status_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).to_string();
    match text.split(' ').nth(1) {
        Some(code) if text.starts_with("HTTP/1.1 ") => code.to_string(),
        _ if bytes.is_empty() => "nothing".to_string(),
        _ => "garbled".to_string(),
    }
}

/// One HTTP/1.1 request on its own connection, cut as drawn; returns what happened.
async fn h1_request(addr: SocketAddr, rng: &mut Rng, d: &Draw) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return "connect failed".into();
    };
    let pause = |ms: usize| tokio::time::sleep(Duration::from_millis(ms as u64));
    let outcome = match d.phase {
        Phase::Head => {
            let head = h1_head(d, "content-length: 0\r\n");
            let cut = 1 + rng.below(head.len() - 2);
            let _ = s.write_all(&head.as_bytes()[..cut]).await;
            pause(rng.below(20)).await;
            "cut".to_string()
        }
        Phase::BodyLength => {
            // Small bodies are read whole before an upstream connection is taken; large ones
            // stream to the upstream as they arrive.
            let len = if rng.below(2) == 0 { 1000 } else { 200_000 };
            let sent = rng.below(len);
            let head = h1_head(d, &format!("content-length: {len}\r\n"));
            let _ = s.write_all(head.as_bytes()).await;
            let pieces = 1 + rng.below(4);
            for _ in 0..pieces {
                let _ = s.write_all(&vec![b'b'; sent / pieces]).await;
                pause(rng.below(15)).await;
            }
            "cut".to_string()
        }
        Phase::BodyChunked => {
            let _ = s
                .write_all(h1_head(d, "transfer-encoding: chunked\r\n").as_bytes())
                .await;
            for _ in 0..rng.below(6) {
                let _ = s.write_all(b"1000\r\n").await;
                let _ = s.write_all(&[b'c'; 4096]).await;
                let _ = s.write_all(b"\r\n").await;
                pause(rng.below(15)).await;
            }
            if rng.below(2) == 0 {
                // Cut inside a chunk.
                let _ = s.write_all(b"1000\r\nccc").await;
            }
            "cut".to_string()
        }
        Phase::AwaitHead => {
            let _ = s
                .write_all(h1_head(d, "content-length: 0\r\n").as_bytes())
                .await;
            let (got, _) =
                read_up_to(&mut s, 1, Duration::from_millis(rng.below(150) as u64)).await;
            if got.is_empty() {
                "cut".to_string()
            } else {
                format!("answered {}", status_of(&got))
            }
        }
        Phase::MidBody => {
            let _ = s
                .write_all(h1_head(d, "content-length: 0\r\n").as_bytes())
                .await;
            let want = 1 + rng.below(64 * 1024);
            // A stalled body never brings `want` bytes: the client gives up soon.
            let (got, ended) = read_up_to(&mut s, want, Duration::from_millis(500)).await;
            match (got.len() >= want, ended) {
                (true, _) => format!("cut after {}", status_of(&got)),
                (false, true) => format!("ended {}", status_of(&got)),
                (false, false) => format!("stalled {}", status_of(&got)),
            }
        }
        Phase::UpstreamReset => {
            let _ = s
                .write_all(h1_head(d, "content-length: 0\r\n").as_bytes())
                .await;
            let (got, ended) = read_up_to(&mut s, usize::MAX, Duration::from_secs(5)).await;
            format!(
                "{} {}",
                if ended { "ended" } else { "hung" },
                status_of(&got)
            )
        }
        Phase::Complete | Phase::ConnectionLost => {
            let body = "x".repeat(rng.below(2000));
            let head = h1_head(d, &format!("content-length: {}\r\n", body.len()));
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let (got, ended) = read_up_to(&mut s, usize::MAX, Duration::from_secs(10)).await;
            let status = status_of(&got);
            if ended {
                status
            } else {
                format!("no end {status}")
            }
        }
    };
    // Half the cuts are a reset (RST) rather than an orderly close (FIN).
    if rng.below(2) == 0 {
        let _ = s.set_zero_linger();
    }
    drop(s);
    outcome
}

type H2Body = Either<Empty<Bytes>, Channel<Bytes, std::io::Error>>;

/// An HTTP/2 (h2c, prior knowledge) connection and the task driving it.
struct H2 {
    tx: SendRequest<H2Body>,
    conn: tokio::task::JoinHandle<()>,
}

impl H2 {
    async fn connect(addr: SocketAddr) -> Option<H2> {
        let s = TcpStream::connect(addr).await.ok()?;
        let (tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .ok()?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(H2 { tx, conn })
    }

    /// A usable connection: this one, or a new one if it broke.
    async fn ready(this: &mut Option<H2>, addr: SocketAddr) -> Option<&mut H2> {
        let broken = match this.as_mut() {
            Some(h) => h.tx.ready().await.is_err(),
            None => true,
        };
        if broken {
            *this = H2::connect(addr).await;
        }
        this.as_mut()
    }
}

impl Drop for H2 {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn h2_request(addr: SocketAddr, d: &Draw, body: H2Body) -> http::Request<H2Body> {
    let mut b = http::Request::builder()
        .method(d.method())
        .uri(format!("http://{addr}{}", d.path))
        .header("x-route", d.route)
        .header("x-delay-ms", d.delay_ms.to_string());
    if let Either::Right(_) = &body
        && d.phase == Phase::BodyLength
    {
        b = b.header("content-length", "200000");
    }
    b.body(body).expect("request")
}

/// Reads up to `limit` body bytes of a response; returns how many came and whether the body
/// ended ("end") or failed ("reset").
async fn h2_read(
    body: &mut hyper::body::Incoming,
    limit: usize,
    within: Duration,
) -> (usize, &'static str) {
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + within;
    while got < limit {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => got += f.data_ref().map_or(0, |d| d.len()),
            Ok(Some(Err(_))) => return (got, "reset"),
            Ok(None) => return (got, "end"),
            Err(_) => return (got, "slow"),
        }
    }
    (got, "cut")
}

/// Sends some DATA frames of a body, then breaks it off (the stream is reset).
async fn h2_partial_body(mut tx: Sender<Bytes, std::io::Error>, rng: &mut Rng) {
    for _ in 0..rng.below(6) {
        let chunk = Bytes::from(vec![b'h'; 4096]);
        let sent = tokio::time::timeout(Duration::from_millis(200), tx.send_data(chunk)).await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(15) as u64)).await;
    }
    tx.abort(std::io::Error::other("client gave up on its upload"));
}

/// One HTTP/2 request on the task's connection, cut as drawn (dropping the request's future or
/// its response body resets the stream); returns what happened.
async fn h2_stream(conn: &mut Option<H2>, addr: SocketAddr, rng: &mut Rng, d: &Draw) -> String {
    let Some(h2) = H2::ready(conn, addr).await else {
        return "connect failed".into();
    };
    match d.phase {
        Phase::BodyLength | Phase::BodyChunked => {
            let (tx, body) = Channel::new(1);
            let sending = h2.tx.send_request(h2_request(addr, d, Either::Right(body)));
            let cut_after = Duration::from_millis(rng.below(100) as u64);
            let uploading = h2_partial_body(tx, rng);
            // Either the upload breaks off (a reset from our side) or we stop waiting first.
            let (resp, ()) = tokio::join!(tokio::time::timeout(cut_after, sending), uploading);
            match resp {
                Ok(Ok(r)) => format!("answered {}", r.status().as_u16()),
                Ok(Err(_)) => "reset".into(),
                Err(_) => "cut".into(),
            }
        }
        Phase::AwaitHead => {
            let sending = h2
                .tx
                .send_request(h2_request(addr, d, Either::Left(Empty::new())));
            let cut_after = Duration::from_millis(rng.below(150) as u64);
            match tokio::time::timeout(cut_after, sending).await {
                Ok(Ok(r)) => format!("answered {}", r.status().as_u16()),
                Ok(Err(_)) => "error".into(),
                Err(_) => "cut".into(),
            }
        }
        Phase::MidBody | Phase::UpstreamReset | Phase::Complete | Phase::Head => {
            let sending = h2
                .tx
                .send_request(h2_request(addr, d, Either::Left(Empty::new())));
            let resp = match tokio::time::timeout(Duration::from_secs(10), sending).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => return "error".into(),
                Err(_) => return "no head".into(),
            };
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let limit = match d.phase {
                Phase::MidBody => 1 + rng.below(64 * 1024),
                _ => usize::MAX,
            };
            let within = match d.phase {
                Phase::MidBody => Duration::from_millis(500),
                _ => Duration::from_secs(5),
            };
            let (_, how) = h2_read(&mut body, limit, within).await;
            format!("{how} {status}")
        }
        Phase::ConnectionLost => {
            let mut streams = Vec::new();
            for _ in 0..3 {
                let req = h2_request(addr, d, Either::Left(Empty::new()));
                streams.push(h2.tx.send_request(req));
            }
            let wait = Duration::from_millis(rng.below(150) as u64);
            let _ = tokio::time::timeout(wait, futures_util::future::join_all(streams)).await;
            // Closing the connection with its streams open.
            *conn = None;
            "closed".into()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_at_every_phase_leave_nothing_held() {
    let seed = env_number("SG_CANCEL_SEED", 0x5ca1_e9a7);
    let _replay = Replay("SG_CANCEL_SEED", seed);
    let total = env_number("SG_CANCEL_REQUESTS", 6000) as usize;
    let bs = backends(4).await;
    let dead = DeadPort::new();
    let gw = GatewayProcess::start_full(
        BIN,
        "[runtime]\nworker_threads = 2\n[admission]\nmax_in_flight = 32\n",
        "body_timeout = \"2s\"",
        &config(&bs, dead.addr()),
    )
    .await;
    let tally = Tally::default();
    // 16 HTTP/1.1 clients, a connection per request, and 8 HTTP/2 clients on one connection
    // each; every client draws from its own generator, so a seed replays the same draws.
    let (h1_clients, h2_clients) = (16, 8);
    let per_client = total.div_ceil(h1_clients + h2_clients);
    let mut tasks = Vec::new();
    for client in 0..h1_clients + h2_clients {
        let tally = tally.clone();
        let addr = gw.http;
        let mut rng = Rng(seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            for _ in 0..per_client {
                let h2 = client >= h1_clients;
                let d = Draw::new(&mut rng, if h2 { H2_PHASES } else { H1_PHASES });
                let what = if h2 {
                    h2_stream(&mut conn, addr, &mut rng, &d).await
                } else {
                    h1_request(addr, &mut rng, &d).await
                };
                let proto = if h2 { "h2" } else { "h1" };
                tally.add(format!("{proto} {:?} {}: {what}", d.phase, d.route));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let seen = tally.snapshot();
    eprintln!(
        "{} requests (seed {seed}):\n{seen:#?}",
        seen.values().sum::<usize>()
    );
    quiescent(&gw).await;
    // Requests read whole got an answer: the upstream's, or shed by a cap (503).
    let odd: Vec<_> = seen
        .iter()
        .filter(|(k, _)| k.contains(" Complete "))
        .filter(|(k, _)| {
            !["200", "202", "503"]
                .iter()
                .any(|s| k.ends_with(&format!(": {s}")) || k.ends_with(&format!("end {s}")))
        })
        .collect();
    assert!(odd.is_empty(), "complete requests answered oddly: {odd:#?}");
    ordinary_requests_succeed(&gw).await;
    every_cache_key_answers(&gw).await;
    let accepted_202 = seen
        .iter()
        .filter(|(k, _)| k.contains(" queue: ") && k.ends_with("202"))
        .map(|(_, n)| n)
        .sum::<usize>();
    queued_jobs_all_delivered(&gw, accepted_202).await;
    quiescent(&gw).await;
    assert!(
        !gw.stderr().contains("panicked"),
        "the gateway panicked:\n{}",
        gw.stderr()
    );
}

/// No coalescing flight of the cache was left behind by a cut miss: every key the run used
/// answers (a leaked flight would keep its key's requests waiting).
async fn every_cache_key_answers(gw: &GatewayProcess) {
    let c = Client::http1();
    for k in 0..16 {
        let path = format!("/k{k}");
        let r = c
            .get_with(gw.http, &path, &[("x-route", "cache")])
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status, 200, "{path} after the cuts: {}", r.body);
    }
}

/// Every job the queued route accepted was delivered (none lost, none given up), and at least
/// as many were accepted as clients saw 202 for (a client cut after the store may not see it).
async fn queued_jobs_all_delivered(gw: &GatewayProcess, seen_202: usize) {
    let drained = eventually(Duration::from_secs(20), || async {
        let m = gw.admin_get("/metrics").await;
        metric_sum(&m, "scalegate_queue_depth") == 0.0
            && metric_sum(&m, "scalegate_queue_in_hand") == 0.0
            && metric_sum(&m, "scalegate_queue_jobs_accepted_total")
                == metric_sum(&m, "scalegate_queue_jobs_delivered_total")
    })
    .await;
    let m = gw.admin_get("/metrics").await;
    let accepted = metric_sum(&m, "scalegate_queue_jobs_accepted_total");
    let queue_rows: Vec<_> = m
        .lines()
        .filter(|l| l.starts_with("scalegate_queue"))
        .collect();
    assert!(drained, "queued jobs not all delivered: {queue_rows:#?}");
    assert!(
        accepted >= seen_202 as f64,
        "{accepted} accepted, clients saw {seen_202} 202s"
    );
    assert_eq!(
        metric_sum(&m, "scalegate_queue_jobs_dead_total"),
        0.0,
        "{queue_rows:#?}"
    );
}

/// Every route answers normally, over HTTP/1.1 and HTTP/2.
async fn ordinary_requests_succeed(gw: &GatewayProcess) {
    for c in [Client::http1(), Client::h2c()] {
        for route in ROUTES {
            let method = if *route == "queue" { "POST" } else { "GET" };
            let want = if *route == "queue" { 202 } else { 200 };
            let ok = eventually(Duration::from_secs(5), || async {
                c.request(method, gw.http, "/after", &[("x-route", route)])
                    .await
                    .is_ok_and(|r| r.status == want)
            })
            .await;
            assert!(ok, "route {route} answers {want} after the cuts");
        }
    }
}
