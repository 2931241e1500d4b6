//! A real nats-server on a free port in a temp dir, and a one-shot publisher speaking the NATS
//! text protocol (so tests need no client library).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::free_port;

/// A running nats-server; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    jetstream: bool,
}

impl NatsServer {
    /// Starts one and waits until it accepts connections. Panics if nats-server is missing.
    pub async fn start() -> NatsServer {
        Self::start_with(false).await
    }

    /// Like [`Self::start`], with JetStream on (its store in the temp dir).
    pub async fn start_jetstream() -> NatsServer {
        Self::start_with(true).await
    }

    async fn start_with(jetstream: bool) -> NatsServer {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
            let port = free_port();
            let child = spawn(port, dir.path(), jetstream);
            let mut server = NatsServer {
                child: Some(child),
                _dir: dir,
                port,
                jetstream,
            };
            if crate::started(&mut server.child, port, 100, || accepts(port)).await {
                return server;
            }
        }
        panic!("nats-server did not start")
    }

    /// Kills the server and starts it again on the same port (JetStream keeps its store);
    /// true once it accepts connections.
    pub async fn restart(&mut self) -> bool {
        self.kill();
        self.child = Some(spawn(self.port, self._dir.path(), self.jetstream));
        let port = self.port;
        crate::started(&mut self.child, port, 200, || accepts(port)).await
    }

    /// Kills the server and starts it again on the same port with its JetStream store wiped
    /// (a server whose storage was lost); true once it accepts connections.
    pub async fn restart_empty(&mut self) -> bool {
        self.kill();
        let store = self._dir.path().join("jetstream");
        let _ = std::fs::remove_dir_all(&store);
        self.child = Some(spawn(self.port, self._dir.path(), self.jetstream));
        let port = self.port;
        crate::started(&mut self.child, port, 200, || accepts(port)).await
    }

    /// Sends an empty request to `subject` (a JetStream API call such as
    /// `$JS.API.CONSUMER.DELETE.<stream>.<consumer>`) and returns the answer's payload.
    pub async fn request(&self, subject: &str) -> Option<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let msg = format!(
            "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nSUB _INBOX.testkit 1\r\nPUB {subject} _INBOX.testkit 0\r\n\r\nPING\r\n"
        );
        s.write_all(msg.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 8192];
        let mut seen = String::new();
        for _ in 0..20 {
            match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if let Some(at) = seen.find("MSG _INBOX.testkit")
                        && let Some(end) = seen[at..].find("\r\n")
                        && seen[at + end + 2..].contains("\r\n")
                    {
                        return Some(seen[at + end + 2..].trim_end().to_string());
                    }
                }
                _ => return None,
            }
        }
        None
    }

    /// Stops the server in its tracks (SIGSTOP): connections stay open, nothing is answered.
    /// Returns once every thread of the server has stopped: SIGSTOP stops the threads one by
    /// one, and on a busy machine one of them went on for long enough to answer a request
    /// sent after `kill` returned (a CI flake in `fanout`).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        if let Some(c) = &self.child {
            wait_until_stopped(c.id());
        }
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill on a pid we spawned.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Kills the server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Publishes one message and waits for the server to acknowledge it (PING/PONG).
    pub async fn publish(&self, subject: &str, payload: &str) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let msg = format!(
            "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n{payload}\r\nPING\r\n",
            payload.len()
        );
        if s.write_all(msg.as_bytes()).await.is_err() {
            return false;
        }
        let mut buf = vec![0u8; 4096];
        let mut seen = String::new();
        for _ in 0..20 {
            match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if seen.contains("PONG") {
                        return true;
                    }
                }
                _ => return false,
            }
        }
        false
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(port: u16, dir: &std::path::Path, jetstream: bool) -> Child {
    let mut args = vec![
        "-a".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    if jetstream {
        args.extend(["-js".into(), "-sd".into(), dir.display().to_string()]);
    }
    Command::new("nats-server")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir(dir)
        .spawn()
        .unwrap_or_else(|e| panic!("nats-server: {e} (apt-get install nats-server)"))
}

async fn accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Polls `/proc/{pid}/task/*/stat` until every thread is in state `T` (stopped), for up to
/// 5 s (then it gives up: the test's own assertion says what went wrong).
fn wait_until_stopped(pid: u32) {
    let all_stopped = || -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return true;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) S ...`: the state follows the last ')'.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().next().map(|s| s == "T" || s == "t")
                })
                .unwrap_or(true)
        })
    };
    for _ in 0..500 {
        if all_stopped() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
