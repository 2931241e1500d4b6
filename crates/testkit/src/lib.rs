//! Test-only helpers for scalegate's integration tests: real sockets, no mocks.
//!
//! - [`Backend`]: an HTTP server that answers with its name and misbehaves on command (status,
//!   delay, failing health check, refusing connections);
//! - [`GatewayProcess`]: the real `scalegate` binary run on a config in a temp dir, with
//!   reload and signal helpers;
//! - [`client`]: plain HTTP/1.1 and HTTP/2 requests, and raw TCP for malformed input;
//! - [`Recorder`]: a backend that keeps the raw bytes of every request it receives;
//! - [`raw_h2`]: HTTP/2 frames written by hand (fields no HTTP/2 library would send);
//! - [`tls_backend::MtlsBackend`]: an HTTPS server that requires a client certificate.

pub mod backend;
pub mod client;
pub mod floor_framing;
pub mod nats;
pub mod origin;
pub mod postgres;
pub mod process;
pub mod python;
pub mod raw_h2;
pub mod recorder;
pub mod redis;
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

/// Polls `ready` every 50 ms (up to `attempts` times) until it holds; false as soon as the
/// process in `child` has exited (its port was taken, say) or the attempts run out.
pub async fn started<F, Fut>(
    child: &mut Option<std::process::Child>,
    attempts: usize,
    mut ready: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..attempts {
        if ready().await {
            return true;
        }
        if let Some(c) = child.as_mut()
            && matches!(c.try_wait(), Ok(Some(_)))
        {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
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
