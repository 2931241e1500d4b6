//! Reloads and shutdown with real processes and signals.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn reload_under_load_loses_no_request() {
    let bs = backends(3).await;
    // Alternate between two and three endpoints.
    reload_twenty_times_under_load(|round| if round % 2 == 0 { &bs[..] } else { &bs[..2] }).await;
    assert!(
        bs[2].hits() > 0,
        "the endpoint added by reloads got traffic"
    );
}

/// Found by CI: a reload that removed every endpoint of an upstream marked them draining
/// before the new snapshot was published, so a request that had loaded the old snapshot
/// in between got `503 no healthy endpoint` although both backends were up.
#[tokio::test]
async fn reload_that_replaces_every_endpoint_loses_no_request() {
    let bs = backends(2).await;
    reload_twenty_times_under_load(|round| &bs[round % 2..round % 2 + 1]).await;
    assert!(
        bs[0].hits() > 0 && bs[1].hits() > 0,
        "both sets got traffic"
    );
}

/// Starts a gateway on `set(1)`, runs four request loops (HTTP/1.1 and h2c, kept-alive) and
/// reloads twenty times with `set(round)` as the upstream plus a changing extra route;
/// asserts that no request failed.
async fn reload_twenty_times_under_load<'a>(set: impl Fn(usize) -> &'a [Backend]) {
    let gw = gateway(set(1), "").await;
    let load = LoadLoop::start(
        gw.http,
        vec![
            Client::http1(),
            Client::h2c(),
            Client::http1(),
            Client::h2c(),
        ],
    );
    for round in 0..20 {
        let extra = format!(
            "\n[[routes]]\nname = \"r{round}\"\nmatch = {{ path_prefix = \"/r{round}\" }}\nupstream = \"app\"\n"
        );
        gw.write_config(&format!("{}{extra}", app(set(round), "")));
        gw.signal(libc::SIGHUP);
        let want = format!("route=\"r{round}\"");
        let applied = eventually(Duration::from_secs(10), || async {
            gw.admin_get("/metrics").await.contains(&want)
        })
        .await;
        assert!(applied, "reload {round} did not apply");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(ok > 100, "the load loop barely ran");
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("scalegate_config_reloads_total{result=\"ok\"}"),
        "{metrics}"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn reload_adds_routes_upstreams_and_listeners() {
    let bs = backends(2).await;
    let gw = gateway(&bs[..1], "").await;
    let port = free_port();
    gw.write_config(&format!(
        "{}\n[[listeners]]\nname = \"second\"\nbind = \"127.0.0.1:{port}\"\n\n[[routes]]\nname = \"new\"\nmatch = {{ path_prefix = \"/new\" }}\nupstream = \"other\"\n\n[upstreams.other]\nendpoints = [\"{}\"]\n",
        app(&bs[..1], ""),
        bs[1].addr
    ));
    gw.signal(libc::SIGHUP);
    let c = Client::http1();
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.get(gw.http, "/new").await.is_ok_and(|r| r.body == "b1")
        })
        .await
    );
    let second: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.get(second, "/").await.is_ok_and(|r| r.body == "b0")
        })
        .await
    );
    quiescent(&gw).await;
}

/// Two listeners, `names` on ports `ports` in that order, each routed to its own upstream:
/// the first listener's to backend `b0`, the second's to `b1`.
fn two_listeners(names: [&str; 2], ports: [u16; 2], bs: &[Backend]) -> String {
    let mut cfg = String::new();
    for (i, (name, port)) in names.iter().zip(ports).enumerate() {
        cfg.push_str(&format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\n\n\
             [[routes]]\nlistener = \"{name}\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"u{i}\"\n\n\
             [upstreams.u{i}]\nendpoints = [\"{}\"]\n\n",
            bs[i].addr
        ));
    }
    cfg
}

/// A probe's finding (session 24): a reload that kept a port but gave it to another listener
/// (a renamed listener, two listeners swapping ports) was refused with "address already in
/// use" (the new socket was bound before the old one closed), although the same file started
/// fine: only a restart could apply it. A listener's socket is now kept by its address.
#[tokio::test]
async fn a_reload_may_rename_listeners_or_swap_their_ports() {
    let bs = backends(2).await;
    let gw = gateway(&bs[..1], "").await;
    let [p, q] = scalegate_testkit::free_ports();
    // A new connection each time: a kept-alive one stays its listener's (README, Reload).
    let answer = |port: u16| async move {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Client::http1().get(addr, "/").await.map(|r| r.body)
    };
    for (round, (names, ports)) in [
        (["x", "y"], [p, q]),
        (["x", "y"], [q, p]),
        (["renamed", "y"], [q, p]),
    ]
    .into_iter()
    .enumerate()
    {
        gw.write_config(&format!(
            "{}{}",
            two_listeners(names, ports, &bs),
            app(&bs[..1], "")
        ));
        gw.signal(libc::SIGHUP);
        let reloads = format!(
            "scalegate_config_reloads_total{{result=\"ok\"}} {}",
            round + 1
        );
        let none_rejected = "scalegate_config_reloads_total{result=\"error\"} 0\n";
        let done = eventually(Duration::from_secs(10), || async {
            let m = gw.admin_get("/metrics").await;
            m.contains(&reloads) || !m.contains(none_rejected)
        })
        .await;
        assert!(
            done && !gw.stderr().contains("reload rejected"),
            "{}",
            gw.stderr()
        );
        let applied = eventually(Duration::from_secs(10), || async {
            let first = answer(ports[0]).await.is_ok_and(|b| b == "b0");
            first && answer(ports[1]).await.is_ok_and(|b| b == "b1")
        })
        .await;
        assert!(applied, "{names:?} on {ports:?}: {}", gw.stderr());
    }
    quiescent(&gw).await;
}

/// Left alone in session 25: a keep-alive connection kept the name and edge rules its listener
/// had when the connection was accepted. After a reload that renamed the listener (its routes
/// now naming the new name) the client got 404 for as long as it kept the connection, and
/// after one that tightened the edge rules (fewer header lines, fewer trusted proxies) it was
/// still served by the old ones.
#[tokio::test]
async fn keep_alive_connections_follow_a_reload_of_their_listener() {
    let bs = backends(2).await;
    let gw = gateway(&bs[..1], "").await;
    let [p, q] = scalegate_testkit::free_ports();
    let config = |names: [&str; 2], limit: &str| {
        let listeners = two_listeners(names, [p, q], &bs).replacen(
            "\n\n[[routes]]",
            &format!("\n{limit}\n[[routes]]"),
            1,
        );
        // The catch-all route of the gateway's own listener answers b1.
        format!("{listeners}{}", app(&bs[1..], ""))
    };
    gw.write_config(&config(["x", "y"], ""));
    gw.signal(libc::SIGHUP);
    assert!(reloaded(&gw, 1).await, "{}", gw.stderr());
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", p))
        .await
        .expect("connect");
    let many: String = (0..20).map(|i| format!("x-h{i}: v\r\n")).collect();
    assert_eq!(ask(&mut conn, "").await, (200, "b0".to_string()));
    assert_eq!(ask(&mut conn, &many).await, (200, "b0".to_string()));
    gw.write_config(&config(["renamed", "y"], "max_headers = 10"));
    gw.signal(libc::SIGHUP);
    assert!(reloaded(&gw, 2).await, "{}", gw.stderr());
    let renamed = ask(&mut conn, "").await;
    assert_eq!(renamed, (200, "b0".to_string()), "the new name");
    assert_eq!(ask(&mut conn, &many).await.0, 431, "the new edge rules");
    drop(conn);
    quiescent(&gw).await;
}

/// Whether the gateway has applied `n` reloads.
async fn reloaded(gw: &GatewayProcess, n: usize) -> bool {
    let ok = format!("scalegate_config_reloads_total{{result=\"ok\"}} {n}");
    eventually(Duration::from_secs(10), || async {
        gw.admin_get("/metrics").await.contains(&ok)
    })
    .await
}

/// Sends a GET with header lines `extra` on `conn` and reads the response: status and body.
/// (Async: the backends run on the test's own runtime.)
async fn ask(conn: &mut tokio::net::TcpStream, extra: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET / HTTP/1.1\r\nhost: t\r\n{extra}\r\n");
    conn.write_all(req.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if got.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap_or(0);
                return (status, text[end + 4..end + 4 + len].to_string());
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf));
        let n = read.await.expect("a response in time").expect("read");
        assert!(n > 0, "closed after {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_changed_file_is_reloaded_without_a_signal() {
    let bs = backends(2).await;
    let gw = gateway(&bs[..1], "").await;
    gw.write_config(&app(&bs[1..], ""));
    assert!(
        answers_from(&gw, "b1").await,
        "the changed file was applied"
    );
    quiescent(&gw).await;
}

/// A probe's finding (session 20): `lifecycle.watch_config` changed by a reload was ignored
/// without a word: turned on, later file changes were never applied; turned off, they still
/// were. It now starts or stops the watch.
#[tokio::test]
async fn a_reload_that_turns_the_file_watch_on_starts_it() {
    let bs = backends(3).await;
    let mut gw = GatewayProcess::start_with(
        BIN,
        "[runtime]\nworker_threads = 2\n[lifecycle]\nwatch_config = false\n",
        &app(&bs[..1], ""),
    )
    .await;
    // On, by a signal: from then on a changed file is applied by itself.
    gw.edit_header("watch_config = false", "watch_config = true");
    gw.write_config(&app(&bs[1..2], ""));
    gw.signal(libc::SIGHUP);
    assert!(answers_from(&gw, "b1").await, "the signalled reload");
    gw.write_config(&app(&bs[2..], ""));
    assert!(answers_from(&gw, "b2").await, "the watch is on");
    quiescent(&gw).await;
}

/// Whether `gw` comes to answer from backend `name` within 10 s.
async fn answers_from(gw: &GatewayProcess, name: &str) -> bool {
    let c = Client::http1();
    eventually(Duration::from_secs(10), || async {
        c.get(gw.http, "/").await.is_ok_and(|r| r.body == name)
    })
    .await
}

/// Context switches of every thread of process `pid` so far.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Opening and reading another file in the config's directory does not wake the gateway: only
/// changes are watched for. (The watch used to ask for every open too, so a backend serving a
/// file from beside the config, or any process reading a file in `/etc`, woke the gateway once
/// per open: found by the 64 KiB benchmark, whose file sat beside the config.)
#[tokio::test]
async fn reading_other_files_beside_the_config_does_not_wake_the_gateway() {
    let bs = backends(2).await;
    let gw = gateway(&bs[..1], "").await;
    let other = gw.config.with_file_name("served.txt");
    std::fs::write(&other, b"x").expect("write");
    let pid = gw.pid().expect("running");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (before, opens) = (context_switches(pid), 300);
    for _ in 0..opens {
        let _ = std::fs::read(&other);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let woken = context_switches(pid) - before;
    eprintln!("{opens} opens beside the config: {woken} context switches of the gateway");
    assert!(
        woken < opens / 3,
        "{woken} context switches for {opens} opens"
    );
    // A change is still seen.
    gw.write_config(&app(&bs[1..], ""));
    assert!(
        answers_from(&gw, "b1").await,
        "the changed file was applied"
    );
    quiescent(&gw).await;
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_old_config() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    gw.write_config(
        "[[routes]]\nmatch = { path_prefix = \"/\" }\nupstream = \"missing\"\nbogus_key = 1\n",
    );
    gw.signal(libc::SIGHUP);
    assert!(metrics_show(&gw, "scalegate_config_reloads_total{result=\"error\"} ").await);
    let r = Client::http1()
        .get(gw.http, "/")
        .await
        .expect("still serving");
    assert_eq!(r.body, "b0");
    assert!(gw.admin_get("/ready").await.contains("true"));
    quiescent(&gw).await;
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_refuses_new_ones_and_exits_0() {
    let bs = backends(1).await;
    bs[0].set_delay(Duration::from_millis(1500));
    let mut gw =
        GatewayProcess::start_with(BIN, "[lifecycle]\ndrain_timeout = \"10s\"", &app(&bs, ""))
            .await;
    let addr = gw.http;
    let slow = tokio::spawn(async move { Client::http1().get(addr, "/slow").await });
    assert!(eventually(Duration::from_secs(5), || async { bs[0].hits() == 1 }).await);
    gw.signal(libc::SIGTERM);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.admin_get("/ready").await.contains("false")
        })
        .await,
        "/ready turns false while draining"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "new connections are refused while draining"
    );
    let r = slow
        .await
        .expect("join")
        .expect("in-flight request completed");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b0"));
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("exited");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_politely() {
    let bs = backends(1).await;
    let mut gw = gateway(&bs, "").await;
    let c = Client::http1();
    assert_eq!(c.get(gw.http, "/").await.expect("first").status, 200);
    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited without waiting for idle clients");
    assert_eq!(status.code(), Some(0));
}

/// A probe's finding: an HTTP/2 client that had gone quiet (suspended, or gone without a FIN)
/// never answered the shutdown's PING, and the gateway waited the whole drain timeout (30 s
/// by default, Kubernetes' grace period too) for it. A connection with nothing in flight is
/// closed a second after the GOAWAY.
#[tokio::test]
async fn sigterm_does_not_wait_for_an_http2_client_that_does_not_answer() {
    use tokio::io::AsyncWriteExt;
    let bs = backends(1).await;
    let mut gw =
        GatewayProcess::start_with(BIN, "[lifecycle]\ndrain_timeout = \"30s\"", &app(&bs, ""))
            .await;
    let mut quiet = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    // The preface and an empty SETTINGS frame, then nothing: never reads, never answers.
    quiet
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal(libc::SIGTERM);
    // Before: exited only when the 30 s drain timeout ran out.
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited without waiting for the quiet client");
    assert_eq!(status.code(), Some(0));
    drop(quiet);
}

/// A probe's findings: after a reload removed an endpoint, its `endpoint_available` series kept
/// its last value for ever (an alert on 0 never cleared), and a request in flight on it during
/// the reload left `connections{state="idle"}` at 1 for ever once it finished. A removed
/// endpoint's series now go with it, and its pool keeps no connection released after the
/// reload.
#[tokio::test]
async fn a_removed_endpoint_leaves_no_series_and_no_idle_connection() {
    let bs = backends(2).await;
    let gw = GatewayProcess::start(BIN, &app(&bs, "balance = \"round_robin\"")).await;
    let gone = bs[1].addr.to_string();
    let c = Client::http1();
    spread(&c, gw.http, "/", 4, &[]).await;
    bs[1].set_delay(Duration::from_millis(1500));
    // A request on the endpoint about to go: round robin sends one of two there.
    let addr = gw.http;
    let slow = tokio::spawn(async move {
        let c = Client::http1();
        for _ in 0..2 {
            c.get(addr, "/").await.expect("response");
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.write_config(&app(&bs[..1], "balance = \"round_robin\""));
    gw.signal(1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            !gw.admin_get("/upstreams").await.contains(&gone)
        })
        .await
    );
    slow.await.expect("requests");
    spread(&c, gw.http, "/", 4, &[]).await;
    let metrics = gw.admin_get("/metrics").await;
    // Before: scalegate_upstream_endpoint_available{...,endpoint="<gone>"} 1, and
    // scalegate_upstream_connections{...,endpoint="<gone>",state="idle"} 1.
    let left: Vec<&str> = metrics.lines().filter(|l| l.contains(&gone)).collect();
    assert!(left.is_empty(), "{left:#?}");
    quiescent(&gw).await;
}

/// A probe's finding: a response the drain timeout cut off (its client got a truncated body)
/// was logged as a whole 200 and not counted as incomplete, so responses lost to a shutdown
/// could not be found. A response body dropped before its end is now logged `incomplete`, as
/// one the upstream broke off is.
#[tokio::test]
async fn a_response_cut_by_the_drain_timeout_is_logged_incomplete() {
    let bs = backends(1).await;
    let mut gw = GatewayProcess::start_with(
        BIN,
        "[lifecycle]\ndrain_timeout = \"1s\"\n[log]\naccess_log = true",
        &app(&bs, ""),
    )
    .await;
    let addr = gw.http;
    // 200 chunks, one every 50 ms: 10 s, far past the drain timeout.
    let long = tokio::spawn(async move { Client::http1().get(addr, "/drip/200/50").await });
    assert!(eventually(Duration::from_secs(5), || async { bs[0].hits() == 1 }).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("exited");
    assert_eq!(status.code(), Some(0));
    let cut = long.await.expect("join");
    assert!(cut.is_err(), "the client saw the body cut: {cut:?}");
    let log = gw.stdout();
    let line = log
        .lines()
        .find(|l| l.contains("/drip/200/50"))
        .unwrap_or_else(|| panic!("no line for the cut response: {log}"));
    // Before: a plain 200 line.
    assert!(line.contains("\"incomplete\":true"), "{line}");
}
