//! Real PostgreSQL servers for tests: a cluster made once per test process with initdb (as
//! the `postgres` user when running as root, since PostgreSQL refuses to run as root), copied
//! into a temp dir for each server, started on a free port, stopped on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::free_port;

/// A running postgres; fast shutdown on drop.
#[derive(Debug)]
pub struct PgServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// Directory of the PostgreSQL server binaries (the newest under /usr/lib/postgresql, else
/// whatever `pg_config --bindir` says, else PATH).
pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    if let Some(p) = versions.pop() {
        return p;
    }
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_default()
}

/// uid and gid of the `postgres` user when we are root (None otherwise).
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

fn command(bin: &str) -> Command {
    let mut c = Command::new(bin_dir().join(bin));
    if let Some((uid, gid)) = run_as() {
        c.uid(uid).gid(gid);
    }
    c
}

fn chown(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        let _ = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status();
    }
}

/// One initdb per test process; servers start from copies of it.
fn template() -> &'static Path {
    static T: OnceLock<tempfile::TempDir> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        chown(dir.path());
        let data = dir.path().join("data");
        let st = command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap_or_else(|e| panic!("initdb: {e} (apt-get install postgresql)"));
        assert!(st.success(), "initdb failed");
        let hba = data.join("pg_hba.conf");
        let mut conf = std::fs::read_to_string(&hba).unwrap_or_default();
        conf.push_str(
            "\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
        );
        let _ = std::fs::write(&hba, conf);
        dir
    })
    .path()
}

/// A temp dir holding a copy of the template cluster in `data/`.
fn fresh_cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let st = Command::new("cp")
        .arg("-a")
        .arg(template().join("data"))
        .arg(dir.path())
        .status()
        .unwrap_or_else(|e| panic!("cp: {e}"));
    assert!(st.success(), "copying the template cluster failed");
    dir
}

impl PgServer {
    /// Starts a fresh server (trust auth, user `postgres`) and waits until it accepts queries.
    pub async fn start() -> PgServer {
        Self::start_with(&[]).await
    }

    /// Like [`Self::start`] with extra `-c name=value` settings.
    pub async fn start_with(settings: &[&str]) -> PgServer {
        let dir = fresh_cluster();
        chown(dir.path());
        Self::start_in(dir, settings).await
    }

    /// A fresh server with TLS on (`ssl = on`) using `cert` and `key` (PEM files).
    pub async fn start_tls(cert: &Path, key: &Path) -> PgServer {
        let dir = fresh_cluster();
        let data = dir.path().join("data");
        std::fs::copy(cert, data.join("server.crt")).unwrap_or_else(|e| panic!("cert: {e}"));
        std::fs::copy(key, data.join("server.key")).unwrap_or_else(|e| panic!("key: {e}"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap_or_else(|e| panic!("chmod: {e}"));
        chown(dir.path());
        Self::start_in(dir, &["ssl=on"]).await
    }

    /// A streaming replica of `primary` (pg_basebackup -R), started and accepting reads.
    pub async fn replica_of(primary: &PgServer) -> PgServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        chown(dir.path());
        let st = command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"])
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("pg_basebackup: {e}"));
        assert!(st.success(), "pg_basebackup failed");
        Self::start_in(dir, &[]).await
    }

    /// Promotes a replica to primary (pg_ctl promote, waiting until it is done).
    pub fn promote(&self) {
        let st = command("pg_ctl")
            .arg("promote")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-w")
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("pg_ctl: {e}"));
        assert!(st.success(), "pg_ctl promote failed");
    }

    /// The postgres command for `dir/data` on `port`.
    fn postgres(dir: &Path, port: u16, settings: &[&str]) -> Command {
        let mut cmd = command("postgres");
        cmd.arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir)
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .args(["-c", "shared_buffers=32MB", "-c", "wal_level=replica"]);
        for s in settings {
            cmd.args(["-c", s]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    /// Restarts the server on the same port and data, like `pg_ctl restart -m fast`: a fast
    /// shutdown (sessions get FATAL 57P01), then a start; returns once it accepts queries again.
    pub async fn restart_fast(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill on a pid we spawned. SIGINT is a fast shutdown.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
        let port = self.port;
        let child = Self::postgres(self.dir.path(), port, &[])
            .spawn()
            .unwrap_or_else(|e| panic!("postgres: {e}"));
        self.child = Some(child);
        let up = crate::started(
            &mut self.child,
            port,
            200,
            || async move { pg_isready(port) },
        )
        .await;
        assert!(up, "postgres did not come back after a restart");
    }

    /// Starts postgres on a data directory `dir/data` that already exists.
    pub async fn start_in(mut dir: tempfile::TempDir, settings: &[&str]) -> PgServer {
        for _ in 0..5 {
            let port = free_port();
            let child = Self::postgres(dir.path(), port, settings)
                .spawn()
                .unwrap_or_else(|e| panic!("postgres: {e}"));
            let mut server = PgServer {
                child: Some(child),
                dir,
                port,
            };
            if crate::started(
                &mut server.child,
                port,
                200,
                || async move { pg_isready(port) },
            )
            .await
            {
                return server;
            }
            let _ = server.child.take();
            dir = std::mem::replace(
                &mut server.dir,
                tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            );
        }
        panic!("postgres did not start")
    }

    /// `host=127.0.0.1 port=PORT user=postgres dbname=DB` for tokio-postgres.
    pub fn conn_str(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Runs `sql` through psql as postgres on database `db`; returns stdout (unaligned,
    /// tuples only). Panics when psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql(self.port, "postgres", db, sql).unwrap_or_else(|e| panic!("psql: {e}"))
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops it at once (SIGQUIT: immediate shutdown, like a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill on a pid we spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGQUIT) };
            let _ = c.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill on a pid we spawned. SIGINT is a fast shutdown.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }
}

fn pg_isready(port: u16) -> bool {
    Command::new(bin_dir().join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs psql against 127.0.0.1:`port`; stdout (unaligned, tuples only) or stderr on failure.
pub fn psql(port: u16, user: &str, db: &str, sql: &str) -> Result<String, String> {
    psql_conn(
        &format!("host=127.0.0.1 port={port} user={user} dbname={db}"),
        sql,
    )
}

/// Runs psql with a libpq connection string (TLS options and all); stdout or stderr.
pub fn psql_conn(conn: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, conn])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
