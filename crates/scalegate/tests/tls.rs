//! TLS: listeners (HTTP/2 and HTTP/1.1 chosen by ALPN, X-Forwarded-Proto https) and upstreams
//! over TLS (verified certificates, ALPN, config errors).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use scalegate_testkit::client::tls_get;

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

async fn tls_gateway(bs: &[Backend]) -> GatewayProcess {
    let listener = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        data("localhost.crt"),
        data("localhost.key")
    );
    GatewayProcess::start_full(BIN, "", &listener, &app(bs, "")).await
}

#[tokio::test]
async fn tls_client_gets_h2_by_alpn() {
    let bs = backends(1).await;
    let gw = tls_gateway(&bs).await;
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let (r, version) = tls_get(gw.http, "/", &ca, true).await.expect("h2 over TLS");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b0"));
    assert_eq!(version, http::Version::HTTP_2);
    let h = bs[0].last_headers().expect("headers");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["host"], "localhost", "the :authority becomes Host");
    quiescent(&gw).await;
}

#[tokio::test]
async fn tls_client_gets_http1_by_alpn() {
    let bs = backends(1).await;
    let gw = tls_gateway(&bs).await;
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let (r, version) = tls_get(gw.http, "/", &ca, false)
        .await
        .expect("http/1.1 over TLS");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b0"));
    assert_eq!(version, http::Version::HTTP_11);
    quiescent(&gw).await;
}

#[tokio::test]
async fn plain_http_to_a_tls_listener_does_not_reach_the_backend() {
    let bs = backends(1).await;
    let gw = tls_gateway(&bs).await;
    let (out, closed) = raw(gw.http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!out.contains("b0"), "{out:?}");
    assert!(closed, "the connection is closed after the answer");
    // A readable answer, as nginx gives, not a TLS alert (found from outside, session 19).
    assert!(out.starts_with("HTTP/1.1 400 "), "{out:?}");
    assert!(
        out.contains("plain HTTP request was sent to an HTTPS port"),
        "{out:?}"
    );
    // A TLS client on the same listener is still served.
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let (r, _) = tls_get(gw.http, "/", &ca, false).await.expect("tls");
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(bs[0].hits(), 1);
    quiescent(&gw).await;
}

/// A gateway whose upstream is `front` (a TLS listener), with `tls` settings for it.
async fn edge_gateway(front: &GatewayProcess, settings: &str) -> GatewayProcess {
    let upstream = routed(&format!("\"{}\"", front.http), "/", "", settings);
    GatewayProcess::start(BIN, &upstream).await
}

#[tokio::test]
async fn an_upstream_over_tls_is_verified_and_used() {
    let bs = backends(1).await;
    let front = tls_gateway(&bs).await;
    let ca = format!("tls = {{ ca = \"{}\" }}", data("ca.crt"));
    // HTTP/1.1, the certificate checked against the endpoint's IP (its SAN has 127.0.0.1).
    let edge = edge_gateway(&front, &ca).await;
    let r = Client::http1().get(edge.http, "/").await.expect("through");
    // (The front listener speaks only TLS: clear text would not reach the backend.)
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b0"));
    // HTTP/2 by ALPN, the certificate checked against a configured name; its health probes
    // speak HTTP/2 over TLS too.
    let h2_probed = "protocol = \"h2\"\nhealth = { path = \"/health\", interval = \"100ms\" }";
    let named = format!(
        "{h2_probed}\ntls = {{ ca = \"{}\", server_name = \"localhost\" }}",
        data("ca.crt")
    );
    let edge = edge_gateway(&front, &named).await;
    let r = Client::http1()
        .get(edge.http, "/")
        .await
        .expect("through h2");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b0"));
    wait_for_probe(&bs[0]).await;
    // HTTP/1.1 health probes over TLS, to a front of their own.
    let other = backends(1).await;
    let front = tls_gateway(&other).await;
    let probed = format!("{ca}\nhealth = {{ path = \"/health\", interval = \"100ms\" }}");
    let _edge = edge_gateway(&front, &probed).await;
    wait_for_probe(&other[0]).await;
    quiescent(&edge).await;
    quiescent(&front).await;
}

/// Waits until the backend has seen a health probe.
async fn wait_for_probe(b: &Backend) {
    for _ in 0..100 {
        if b.health_hits() > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no probe reached the backend through TLS");
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let read = |n: &str| std::fs::read(data(n)).expect("test data");
    let backend = scalegate_testkit::tls_backend::MtlsBackend::start(
        &read("localhost.crt"),
        &read("localhost.key"),
        &read("client-ca.crt"),
    )
    .await;
    let upstream = |tls: String| routed(&format!("\"{}\"", backend.addr), "/", "", &tls);
    let with_cert = format!(
        "tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        data("ca.crt"),
        data("client.crt"),
        data("client.key")
    );
    let gw = GatewayProcess::start(BIN, &upstream(with_cert)).await;
    let r = Client::http1().get(gw.http, "/").await.expect("answer");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "mtls-ok"));
    // Without the client certificate the upstream refuses the handshake.
    let without = format!("tls = {{ ca = \"{}\" }}", data("ca.crt"));
    let gw = GatewayProcess::start(BIN, &upstream(without)).await;
    let r = Client::http1().get(gw.http, "/").await.expect("answer");
    assert_eq!(r.status.as_u16(), 502, "{r:?}");
    quiescent(&gw).await;
}

#[tokio::test]
async fn an_upstream_certificate_that_fails_verification_is_never_used() {
    let bs = backends(1).await;
    let front = tls_gateway(&bs).await;
    // The leaf itself as the only trusted "CA": not a CA, so the chain does not verify.
    let wrong = format!("tls = {{ ca = \"{}\" }}", data("localhost.crt"));
    let edge = edge_gateway(&front, &wrong).await;
    let r = Client::http1().get(edge.http, "/").await.expect("answer");
    assert_eq!(r.status.as_u16(), 502, "{r:?}");
    // A name the certificate does not carry.
    let other = format!(
        "tls = {{ ca = \"{}\", server_name = \"api.example\" }}",
        data("ca.crt")
    );
    let edge = edge_gateway(&front, &other).await;
    let r = Client::http1().get(edge.http, "/").await.expect("answer");
    assert_eq!(r.status.as_u16(), 502, "{r:?}");
    assert_eq!(bs[0].hits(), 0, "nothing reached the backend");
    // A probe's finding: the reason was logged at debug only, so a certificate that does not
    // verify read like a host that is down.
    let logged = eventually(std::time::Duration::from_secs(5), || async {
        edge.stderr().contains("upstream TLS handshake failed")
    })
    .await;
    assert!(logged, "{}", edge.stderr());
    quiescent(&edge).await;
    quiescent(&front).await;
}

/// Runs `scalegate check` on `text` saved as `name`; expects exit 1 and returns stderr.
fn check_fails(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_client_certificate_without_its_key_is_reported_at_the_tls_line() {
    let stderr = check_fails(
        "up.toml",
        "[[routes]]\nupstream = \"app\"\n[upstreams.app]\nendpoints = [\"127.0.0.1:9\"]\ntls = { cert = \"c.pem\" }\n",
    );
    assert!(
        stderr.contains("up.toml:5:7: tls: cert and key go together"),
        "{stderr}"
    );
}

#[test]
fn a_missing_certificate_is_reported_at_the_tls_line() {
    let stderr = check_fails(
        "tls.toml",
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:8443\"\ntls = { cert = \"nope.crt\", key = \"nope.key\" }\n",
    );
    assert!(
        stderr.contains("tls.toml:4:7: tls: cannot read \"nope.crt\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_rewritten_certificate_file_reloads_the_config_without_a_signal() {
    let bs = backends(1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(data("localhost.crt"), &cert).expect("cert");
    std::fs::copy(data("localhost.key"), &key).expect("key");
    let listener = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    );
    let gw = GatewayProcess::start_full(BIN, "", &listener, &app(&bs, "")).await;
    let reloaded = || async {
        gw.admin_get("/metrics")
            .await
            .contains("scalegate_config_reloads_total{result=\"ok\"} 1")
    };
    assert!(!reloaded().await);
    // A certificate rotation (cert-manager, a renewed Let's Encrypt chain) rewrites the files.
    std::fs::write(&cert, std::fs::read(data("localhost.crt")).expect("read")).expect("write");
    assert!(
        eventually(std::time::Duration::from_secs(10), reloaded).await,
        "the change reloaded the config"
    );
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let (r, _) = tls_get(gw.http, "/", &ca, true)
        .await
        .expect("TLS still served");
    assert_eq!(r.status.as_u16(), 200);
    quiescent(&gw).await;
}

/// A TLS gateway in front of `bs` with the listener's `limits` (header and idle timeouts).
async fn tls_gateway_with(bs: &[Backend], limits: &str, upstream: &str) -> GatewayProcess {
    let listener = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\n{limits}",
        data("localhost.crt"),
        data("localhost.key")
    );
    GatewayProcess::start_full(BIN, "", &listener, &app(bs, upstream)).await
}

/// Whether the server closes `s` within 20 s (reading and dropping whatever comes first).
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// A probe's finding: over TLS, HTTP/1.1 connections ignored `header_read_timeout` and
/// `idle_timeout` (only the plain listener's tick enforced them): four connections sending
/// half a request head held every slot of `max_connections` for as long as they liked, and
/// idle keep-alive connections stayed for ever. TLS connections get the same limits now.
#[tokio::test]
async fn tls_http1_connections_keep_the_header_and_idle_timeouts() {
    use tokio::io::AsyncWriteExt;
    let bs = backends(1).await;
    let limits = "header_read_timeout = \"1s\"\nidle_timeout = \"2s\"";
    let gw = tls_gateway_with(&bs, limits, "").await;
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let mut slow = scalegate_testkit::client::tls_connect(gw.http, &ca, b"http/1.1")
        .await
        .expect("tls");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("half a head");
    assert!(
        closed_by_server(&mut slow).await,
        "a slowloris head held on"
    );
    let mut idle = scalegate_testkit::client::tls_connect(gw.http, &ca, b"http/1.1")
        .await
        .expect("tls");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    assert!(
        closed_by_server(&mut idle).await,
        "an idle connection stayed"
    );
    assert_eq!(bs[0].hits(), 1, "the whole request was served");
    quiescent(&gw).await;
}

/// A probe's finding: over TLS, a client that asked for a large body and stopped reading held
/// its request (and the upstream's bulkhead place and connection) for as long as it kept the
/// socket open; over plain HTTP it is closed after `idle_timeout` (nginx's send_timeout).
#[tokio::test]
async fn a_tls_client_that_stops_reading_frees_what_it_held() {
    use tokio::io::AsyncWriteExt;
    let big = bytes::Bytes::from(vec![b'x'; 16 << 20]);
    let origin = scalegate_testkit::Origin::start(move |_, _| {
        http::Response::builder()
            .status(200)
            .body(big.clone())
            .expect("response")
    })
    .await;
    let listener = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\nidle_timeout = \"3s\"",
        data("localhost.crt"),
        data("localhost.key")
    );
    let routes = format!(
        "[[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"o\"\n\n\
         [upstreams.o]\nendpoints = [\"{}\"]\nconcurrency = {{ max_in_flight = 1, queue = 0 }}\n",
        origin.addr
    );
    let gw = GatewayProcess::start_full(BIN, "", &listener, &routes).await;
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(gw.http).await.expect("connect");
    let mut stuck = scalegate_testkit::client::tls_over(tcp, &ca, b"http/1.1")
        .await
        .expect("tls");
    stuck
        .write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    // Probes start once /big holds the one place (one sent before could take it first).
    let admitted = eventually(Duration::from_secs(10), || async {
        origin.hits("/big") == 1
    })
    .await;
    assert!(admitted, "/big never reached the origin");
    let busy = || async {
        scalegate_testkit::client::tls_get(gw.http, "/small", &ca, false)
            .await
            .map(|(r, _)| r.status.as_u16())
    };
    let taken = eventually(Duration::from_secs(5), || async { busy().await == Ok(503) }).await;
    assert!(taken, "the stuck download never held the bulkhead");
    let freed = eventually(Duration::from_secs(20), || async {
        busy().await == Ok(200)
    })
    .await;
    assert!(freed, "the stuck download kept the bulkhead place");
    drop(stuck);
    quiescent(&gw).await;
}

/// A probe's finding: an HTTP/2 connection with no stream open stayed for ever (h2c and over
/// TLS), answering the gateway's keep-alive PINGs; idle HTTP/2 clients piled up without
/// bound. After `idle_timeout` with nothing in flight it gets a GOAWAY and is closed, as
/// nginx's keepalive_timeout does. A WebSocket over HTTP/2 counts as in flight.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let bs = backends(1).await;
    let gw = GatewayProcess::start_full(BIN, "", "idle_timeout = \"1s\"", &app(&bs, "")).await;
    let tcp = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", gw.http))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let r = tx.send_request(req).await.expect("response");
    assert_eq!(r.status(), 200);
    drop(r);
    let ended = tokio::time::timeout(Duration::from_secs(20), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was never closed");
    quiescent(&gw).await;
}

/// A regression probe's finding: over TLS, a WebSocket whose client stopped reading was found
/// stuck after `idle_timeout` and cut, but the cut then waited for ever on a TLS shutdown (its
/// close_notify could never be written), so the tunnel, its upstream connection and the
/// client's socket stayed. The shutdown of a cut tunnel is bounded now.
#[tokio::test]
async fn a_tls_websocket_whose_client_stops_reading_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                               Connection: Upgrade\r\n\r\n";
                if s.write_all(answer).await.is_err() {
                    return;
                }
                // Floods the client, which never reads.
                let chunk = vec![b'x'; 64 << 10];
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let listener = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\nidle_timeout = \"1s\"",
        data("localhost.crt"),
        data("localhost.key")
    );
    let routes = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"ws\"\n\n\
         [upstreams.ws]\nendpoints = [\"{upstream}\"]\n"
    );
    let gw = GatewayProcess::start_full(BIN, "", &listener, &routes).await;
    let ca = std::fs::read(data("ca.crt")).expect("ca");
    let mut c = scalegate_testkit::client::tls_connect(gw.http, &ca, b"http/1.1")
        .await
        .expect("tls");
    c.write_all(WS_UPGRADE).await.expect("upgrade");
    let mut head = vec![0u8; 256];
    let n = c.read(&mut head).await.expect("the 101");
    assert!(head[..n].starts_with(b"HTTP/1.1 101"), "{:?}", &head[..n]);
    let open = eventually(Duration::from_secs(5), || async {
        gw.admin_get("/metrics")
            .await
            .contains("scalegate_http_tunnels_open{route=\"route0\"} 1")
    })
    .await;
    assert!(open, "the tunnel never opened");
    // Now it never reads. Once the gateway gives up on it, the tunnel is gone.
    quiescent(&gw).await;
    drop(c);
}

/// A regression hunt's finding (session 20): a connection to a TLS port that sends nothing
/// held a shutdown for its whole header_read_timeout (twice over, once the wait for a first
/// byte was added): 200 such connections kept the process 19 s after SIGTERM. A shutdown now
/// ends the wait for a handshake at once.
#[tokio::test]
async fn sigterm_does_not_wait_for_connections_that_never_start_tls() {
    let bs = backends(1).await;
    let mut gw = tls_gateway_with(&bs, "header_read_timeout = \"60s\"", "").await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            tokio::net::TcpStream::connect(gw.http)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exited well before 60 s"
    );
    drop(idle);
}
