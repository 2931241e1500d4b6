//! A TCP relay between the gateway and a service (Redis, NATS) whose connections a test can cut
//! at once, as a network fault does, while the service itself stays up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay; stops on drop.
#[derive(Debug)]
pub struct Relay {
    /// Where clients connect instead of the service.
    pub addr: SocketAddr,
    /// Bumped by `cut`: every connection open then ends.
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
    open: Arc<Mutex<usize>>,
    /// How long a new connection waits before it is relayed, in milliseconds.
    delay_ms: Arc<AtomicU64>,
}

impl Relay {
    /// Relays connections on a free port to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("relay bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("relay addr: {e}"));
        let (cuts, _) = watch::channel(0u64);
        let open = Arc::new(Mutex::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (tx, counter, delay) = (cuts.clone(), open.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = tx.subscribe();
                let counter = counter.clone();
                let wait = Duration::from_millis(delay.load(Ordering::Relaxed));
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    *counter.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    let (mut c, mut s) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                        // Both sides are closed when dropped below.
                        _ = cut.changed() => {}
                    }
                    *counter.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                });
            }
        });
        Relay {
            addr,
            cuts,
            task,
            open,
            delay_ms,
        }
    }

    /// Makes every connection opened from now on wait `delay` before it is relayed (a slow
    /// network path for new connections; those open now are not slowed).
    pub fn delay_new(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Ends every connection open now (new ones are relayed again).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        *self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
