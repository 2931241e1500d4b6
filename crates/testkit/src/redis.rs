//! A real redis-server on a free port in a temp dir, for tests of the shared cache tier.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

/// A running redis-server; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl RedisServer {
    /// Starts one and waits until it answers PING. Panics if redis-server is missing.
    pub async fn start() -> RedisServer {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
            let port = free_port();
            let child = spawn(port, dir.path());
            let mut server = RedisServer {
                child: Some(child),
                _dir: dir,
                port,
            };
            if crate::started(&mut server.child, port, 100, || ping(port)).await {
                return server;
            }
        }
        panic!("redis-server did not start")
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers PING.
    pub async fn ping(&self) -> bool {
        ping(self.port).await
    }

    /// Sends one command (RESP array of bulk strings) and returns the first reply read.
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        command(self.port, args, Duration::from_secs(2)).await
    }

    /// Like [`RedisServer::command`], waiting up to `wait` for the reply: for a script that
    /// runs long (filling Redis), on a machine busy with other tests.
    pub async fn command_within(&self, args: &[&str], wait: Duration) -> Option<String> {
        command(self.port, args, wait).await
    }

    /// Kills the server and starts a new, empty one on the same port; true once it answers.
    pub async fn restart(&mut self) -> bool {
        self.kill();
        self.child = Some(spawn(self.port, self._dir.path()));
        let port = self.port;
        crate::started(&mut self.child, port, 200, || ping(port)).await
    }

    /// Kills the server (the tier goes down mid-test).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("redis-server: {e} (apt-get install redis-server)"))
}

async fn ping(port: u16) -> bool {
    command(port, &["PING"], Duration::from_secs(2))
        .await
        .is_some_and(|r| r.starts_with("+PONG"))
}

async fn command(port: u16, args: &[&str], wait: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut msg = format!("*{}\r\n", args.len());
    for a in args {
        msg.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(msg.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(wait, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}
