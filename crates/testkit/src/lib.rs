//! Test-only helpers for scalegate's integration tests: real sockets, no mocks.
//!
//! - [`Backend`]: an HTTP server that answers with its name and misbehaves on command (status,
//!   delay, failing health check, refusing connections);
//! - [`GatewayProcess`]: the real `scalegate` binary run on a config in a temp dir, with
//!   reload and signal helpers;
//! - [`client`]: plain HTTP/1.1 and HTTP/2 requests, and raw TCP for malformed input;
//! - [`Recorder`]: a backend that keeps the raw bytes of every request it receives;
//! - [`raw_h2`]: HTTP/2 frames written by hand (fields no HTTP/2 library would send);
//! - [`refusing_h2`]: an h2c upstream that refuses streams unprocessed;
//! - [`tls_backend::MtlsBackend`]: an HTTPS server that requires a client certificate.

pub mod backend;
pub mod client;
pub mod floor_framing;
pub mod nats;
pub mod origin;
pub mod postgres;
pub mod process;
pub mod python;
pub mod rapid_reset;
pub mod raw_h2;
pub mod recorder;
pub mod redis;
pub mod refusing_h2;
pub mod relay;
pub mod tls_backend;

pub use backend::Backend;
pub use nats::NatsServer;
pub use origin::Origin;
pub use postgres::PgServer;
pub use process::GatewayProcess;
pub use recorder::Recorder;
pub use redis::RedisServer;
pub use relay::Relay;

use std::time::Duration;

/// A port where every connection is refused, for as long as this value lives: bound but never
/// listening. A port from [`free_port`] that is meant to stay dead can be handed by the OS to
/// another test's gateway or backend meanwhile, and then it answers.
#[derive(Debug)]
pub struct DeadPort {
    _held: tokio::net::TcpSocket,
    /// The port.
    pub port: u16,
}

impl DeadPort {
    /// Binds a port on 127.0.0.1 and never listens on it.
    pub fn new() -> DeadPort {
        let bound = tokio::net::TcpSocket::new_v4().and_then(|s| {
            s.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let port = s.local_addr()?.port();
            Ok(DeadPort { _held: s, port })
        });
        bound.unwrap_or_else(|e| panic!("no port to hold: {e}"))
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        DeadPort::new()
    }
}

/// A port the OS says is free right now (bind to 0, read, release).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct ports the OS says are free right now. All are held until every one is read:
/// ports taken one after another can be the same (the OS may hand out a port just released),
/// and a gateway given one port for two listeners answers on it with the wrong one.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: [std::net::TcpListener; N] = std::array::from_fn(|_| {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("no free port: {e}"))
    });
    held.each_ref().map(|l| {
        l.local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"))
    })
}

/// Polls `ready` every 50 ms (up to `attempts` times) until it holds and the process in `child`
/// is the one listening on `port`; false as soon as that process has exited (its port was taken,
/// say) or the attempts run out. A port from [`free_port`] can be taken by another test's server
/// before ours binds it; then `ready` would be answered by that one while ours has failed, and
/// the test would lose its server when the other test ends.
pub async fn started<F, Fut>(
    child: &mut Option<std::process::Child>,
    port: u16,
    attempts: usize,
    mut ready: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..attempts {
        let Some(c) = child.as_mut() else {
            return false;
        };
        if matches!(c.try_wait(), Ok(Some(_))) {
            return false;
        }
        let pid = c.id();
        if ready().await && listens_on(pid, port) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Whether process `pid` holds a TCP socket listening on `port` (Linux: `/proc/net/tcp*` for
/// the listening sockets' inodes, `/proc/PID/fd` for the process's).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
    })
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flake this guards against: another test's server holds the port ours was given, ours
    /// fails to bind, and the readiness probe is answered by the other one.
    #[tokio::test]
    async fn a_port_answered_by_another_process_is_not_our_server_started() {
        let other = std::net::TcpListener::bind("127.0.0.1:0");
        let other = other.unwrap_or_else(|e| panic!("bind: {e}"));
        let port = other.local_addr().map_or(0, |a| a.port());
        let sleep = std::process::Command::new("sleep").arg("5").spawn();
        let mut child = Some(sleep.unwrap_or_else(|e| panic!("sleep: {e}")));
        let answered = || async { true };
        assert!(!started(&mut child, port, 3, answered).await);
        assert!(listens_on(std::process::id(), port));
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
