//! The client libraries people use, through the pooler in transaction mode, each checking every
//! value it gets back: psycopg 3 with default settings (prepare threshold, pipeline, COPY,
//! rollbacks; two clients alternating on pool_size 1), SQLAlchemy ORM sessions (QueuePool,
//! pool_pre_ping, rollbacks), asyncpg (pool, prepare, executemany, COPY), node-postgres (named
//! queries) and pgbench in every -M mode. The Python packages are installed into a virtualenv
//! under target/ (`target/pyenv`, shared through `scalegate_testkit::python`) and node-postgres into `target/node` on first use.

mod common;
mod pg_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use pg_common::*;
use scalegate_testkit::{PgServer, python};

/// What the shared virtualenv must hold (`pip spec:module`; testkit's `python` installs what
/// does not import).
const PYTHON_PACKAGES: &[&str] = &[
    "psycopg[binary]>=3.2,<4:psycopg",
    "sqlalchemy>=2.0,<3:sqlalchemy",
    "asyncpg>=0.29,<1:asyncpg",
];
const NODE_PACKAGES: &[&str] = &["pg@8"];

/// The build directory (`target/`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/test installs what it needs)"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shared virtualenv's python with the client libraries installed.
fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| python::python_with(PYTHON_PACKAGES))
}

/// The npm folder's node_modules, filled on first use.
fn node_modules() -> &'static Path {
    static NODE: OnceLock<PathBuf> = OnceLock::new();
    NODE.get_or_init(|| {
        let dir = target_dir().join("node");
        let marker = dir.join(".scalegate-packages");
        let wanted = NODE_PACKAGES.join("\n");
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
            let _ = std::fs::create_dir_all(&dir);
            run(
                Command::new("npm")
                    .args(["install", "--prefix"])
                    .arg(&dir)
                    .args(["--no-audit", "--no-fund", "--silent"])
                    .args(NODE_PACKAGES),
                "npm install",
            );
            let _ = std::fs::write(&marker, &wanted);
        }
        dir.join("node_modules")
    })
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pg_clients")
        .join(name)
}

/// Runs a client script (off the async runtime); its output must end with a line starting "ok".
async fn client_script(mut cmd: Command, what: &str) -> String {
    let what = what.to_string();
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("script task")
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.lines().last().is_some_and(|l| l.starts_with("ok")),
        "{what} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn dsn(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=app")
}

async fn py(script_name: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(python());
    cmd.arg(script(script_name)).args(args);
    client_script(cmd, script_name).await
}

#[tokio::test]
async fn psycopg_defaults_with_two_clients_alternating_never_see_26000() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 1", "").await;
    let out = py("psycopg_alternate.py", &[&dsn(port), "30"]).await;
    assert!(out.contains("ok 60 turns"), "{out}");
    pooler_quiescent(&gw, port).await;
}

/// The regression hunt's finding: after RESET ALL a psycopg client that connected with
/// client_encoding LATIN1 was told UTF8 and wrote UTF-8 while the pooler had set LATIN1 back:
/// `length('é')` was 2. In both pool modes, with and without prepared statements.
#[tokio::test]
async fn psycopg_text_survives_a_reset_of_its_encoding() {
    let pg = PgServer::start().await;
    for mode in ["transaction", "session"] {
        let db = format!("pool_size = 1\npool_mode = \"{mode}\"");
        let (gw, port) = pooler(BIN, &pg, &db, "").await;
        for threshold in ["none", "0"] {
            let out = py("psycopg_encoding_reset.py", &[&dsn(port), threshold]).await;
            assert!(out.contains("ok 12 checks"), "{mode}, {threshold}: {out}");
        }
        pooler_quiescent(&gw, port).await;
    }
}

#[tokio::test]
async fn psycopg_cancels_over_tls_succeed() {
    let pg = PgServer::start().await;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        data.join("localhost.crt").display(),
        data.join("localhost.key").display()
    );
    let (gw, port) = pooler(BIN, &pg, "pool_size = 2", &tls).await;
    let out = py("psycopg_tls_cancel.py", &[&dsn(port)]).await;
    assert!(out.contains("ok 3 cancels"), "{out}");
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn sqlalchemy_orm_sessions_with_rollbacks_have_no_errors() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 1", "").await;
    // 10,000 by hand (SCALEGATE_SQLA_SESSIONS=10000); fewer in the suite.
    let n = std::env::var("SCALEGATE_SQLA_SESSIONS").unwrap_or_else(|_| "1000".into());
    let url = format!("postgresql+psycopg://postgres@127.0.0.1:{port}/app");
    let out = py("sqlalchemy_sessions.py", &[&url, &n]).await;
    assert!(out.contains(&format!("ok {n} sessions, 0 errors")), "{out}");
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn psycopg_pipeline_copy_and_prepared_statements_return_what_was_stored() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 2", "").await;
    py("psycopg_features.py", &[&dsn(port)]).await;
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn asyncpg_pool_prepare_executemany_and_copy_work() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 2", "").await;
    let url = format!("postgresql://postgres@127.0.0.1:{port}/app");
    py("asyncpg_features.py", &[&url]).await;
    pooler_quiescent(&gw, port).await;
}

/// A probe's finding (session 20): asyncpg's type lookup (`set_config('jit', $1, false)` on a
/// server with JIT) pinned every client that used an array type to its server connection, so
/// with more clients than servers the rest waited until 53300. The setting is tracked instead.
#[tokio::test]
async fn asyncpg_type_lookups_pin_no_client() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 2", "wait_timeout = \"3s\"").await;
    let url = format!("postgresql://postgres@127.0.0.1:{port}/app");
    let out = py("asyncpg_jit.py", &[&url, "5"]).await;
    assert!(out.contains("ok 5 clients"), "{out}");
    pooler_quiescent(&gw, port).await;
}

/// Found from outside (session 21): after a schema change that altered a statement's result
/// type, a client holding the statement got rows of the new type under its old description
/// (a `real` read as an `int`) or a ProtocolError for good (see the script).
#[tokio::test]
async fn asyncpg_clients_read_current_rows_after_a_schema_change() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 3", "").await;
    let url = format!("postgresql://postgres@127.0.0.1:{port}/app");
    let out = py("asyncpg_alter.py", &[&url, "3"]).await;
    assert!(out.contains("ok 3 clients"), "{out}");
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn node_postgres_named_queries_work_across_server_connections() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 2", "").await;
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", node_modules())
        .arg(script("node_named.js"))
        .arg(port.to_string());
    client_script(cmd, "node-postgres").await;
    pooler_quiescent(&gw, port).await;
}

#[tokio::test]
async fn pgbench_runs_tpcb_and_select_only_in_every_protocol_mode() {
    let pg = PgServer::start().await;
    let (gw, port) = pooler(BIN, &pg, "pool_size = 4", "").await;
    let bin = scalegate_testkit::postgres::bin_dir();
    let pgbench = move |args: Vec<String>| {
        let bin = bin.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(bin.join("pgbench"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                    .args(&args)
                    .arg("app")
                    .output()
                    .expect("pgbench")
            })
            .await
            .expect("pgbench task")
        }
    };
    let init = pgbench(vec!["-i".into(), "-q".into(), "-s".into(), "1".into()]).await;
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended", "prepared"] {
        for select_only in [false, true] {
            // One thread for eight clients: pgbench prepares each statement with a blocking
            // PQprepare, which stalled the clients holding the four server connections behind
            // one waiting for a fifth, until the pooler answered Parses of known statements
            // itself (session/local_parse.rs).
            let mut args: Vec<String> = ["-M", mode, "-c", "8", "-j", "1", "-t", "40", "-n"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if select_only {
                args.push("-S".into());
            }
            let run = pgbench(args).await;
            let text = String::from_utf8_lossy(&run.stdout);
            let what = format!("-M {mode}{}", if select_only { " -S" } else { "" });
            assert!(
                run.status.success(),
                "{what}: {text}{}",
                String::from_utf8_lossy(&run.stderr)
            );
            assert!(
                text.contains("number of transactions actually processed: 320/320"),
                "{what}: {text}"
            );
            assert!(
                text.contains("number of failed transactions: 0"),
                "{what}: {text}"
            );
        }
    }
    // TPC-B kept the books: the branch totals equal the history.
    let c = app_client(port).await;
    let (branches, history): (i64, i64) = (
        pg_one(&c, "SELECT sum(bbalance)::int8 FROM pgbench_branches").await,
        pg_one(
            &c,
            "SELECT coalesce(sum(delta), 0)::int8 FROM pgbench_history",
        )
        .await,
    );
    assert_eq!(branches, history);
    drop(c);
    pooler_quiescent(&gw, port).await;
}
