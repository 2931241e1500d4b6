//! A config that cannot serve is refused by `check`, `run` and reload alike, and an editor
//! that truncates the file before writing it never makes the gateway stop listening.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use common::*;

#[test]
fn check_and_run_refuse_an_empty_file_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.toml");
    std::fs::write(&path, "").expect("write");
    let want = format!("{}:1:1: nothing to serve", path.display());
    for cmd in ["check", "run"] {
        let out = Command::new(BIN)
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} accepted an empty file");
        assert!(stderr.contains(&want), "{cmd}: {stderr}");
    }
}

#[test]
fn check_refuses_an_open_admin_api_and_console_admins_without_a_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n";
    let cases = [
        (
            format!("[admin]\nlisten = \"0.0.0.0:9901\"\n{listener}"),
            "2:10: admin.listen 0.0.0.0:9901 is reachable from other hosts but admin.token is not set",
        ),
        (
            "[postgres]\nlisten = \"127.0.0.1:6432\"\nadmin_users = [\"admin\"]\n[postgres.databases.app]\nprimary = \"postgres://app@127.0.0.1:5432/app\"\n".to_string(),
            "3:15: postgres.admin_users: \"admin\" has no [postgres.users.admin] entry",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {stderr}");
        assert!(
            stderr.contains(&format!("{}:{want}", path.display())),
            "{stderr}"
        );
    }
    // With a token the admin API may listen there, with a warning that the token is in clear.
    let path = dir.path().join("token.toml");
    std::fs::write(
        &path,
        format!("[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"0123456789abcdef\"\n{listener}"),
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    assert!(out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("warning: admin.listen") && all.contains("clear text"),
        "{all}"
    );
}

#[tokio::test]
async fn a_reload_to_an_empty_file_keeps_the_running_config() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    std::fs::write(&gw.config, "").expect("truncate");
    refused_on_sighup(&gw).await;
}

#[tokio::test]
async fn an_editor_that_truncates_then_writes_never_stops_the_listener() {
    let bs = backends(2).await;
    let gw = gateway(&bs[..1], "").await;
    // Requests on fresh connections all along, so a listener that stopped would show.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, bad, addr) = (stop.clone(), ok.clone(), bad.clone(), gw.http);
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                match Client::http1().get(addr, "/").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Relaxed),
                    other => {
                        eprintln!("BAD: {other:?}");
                        bad.fetch_add(1, Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    std::fs::File::create(&gw.config).expect("truncate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.write_config(&app(&bs[1..], ""));
    let c = Client::http1();
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.get(gw.http, "/").await.is_ok_and(|r| r.body == "b1")
        })
        .await,
        "the written file is applied"
    );
    stop.store(true, Relaxed);
    load.await.expect("load loop");
    assert!(ok.load(Relaxed) > 3, "the load loop ran");
    assert_eq!(
        bad.load(Relaxed),
        0,
        "a request failed while the file was empty"
    );
    // The empty file was read (the write came 0.3 s later, past the settling delay) and refused.
    assert!(
        gw.admin_get("/metrics")
            .await
            .contains("scalegate_config_reloads_total{result=\"error\"}"),
        "the empty file was read and refused"
    );
    quiescent(&gw).await;
}

/// Found from outside: a duration past what `Duration` can hold (`"99999999999999999999h"`)
/// panicked in the parser, so `check` crashed and a reload took the running gateway down. It
/// is refused with its position like any bad value, and the running config stays in force.
#[tokio::test]
async fn an_absurd_duration_is_refused_by_check_and_by_reload() {
    let bs = backends(1).await;
    let gw = gateway(&bs, "").await;
    let good = std::fs::read_to_string(&gw.config).expect("read");
    let bad = format!("{good}\n[lifecycle]\ndrain_timeout = \"99999999999999999999h\"\n");
    std::fs::write(&gw.config, &bad).expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&gw.config)
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "check: {stderr}");
    assert!(
        stderr.contains(&format!("{}:", gw.config.display())),
        "{stderr}"
    );
    refused_on_sighup(&gw).await;
}

/// Sends SIGHUP and checks the reload was refused and the running config still serves.
async fn refused_on_sighup(gw: &GatewayProcess) {
    gw.signal(libc::SIGHUP);
    assert!(metrics_show(gw, "scalegate_config_reloads_total{result=\"error\"} ").await);
    let r = Client::http1()
        .get(gw.http, "/")
        .await
        .expect("still serving");
    assert_eq!(r.body, "b0");
    quiescent(gw).await;
}
