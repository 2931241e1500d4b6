//! Listening sockets. A listener is bound once per worker with SO_REUSEPORT, so each worker
//! accepts on its own socket and the kernel spreads connections; binding happens when a config
//! is applied, so a port in use rejects the reload instead of failing later in a worker.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use socket2::{Domain, Protocol, Socket, Type};

use crate::spec::ListenerSpec;

/// A listener's sockets, one per worker, each taken by its worker once.
#[derive(Debug)]
pub struct BoundSockets {
    /// Actual address (the port filled in when the config said 0).
    pub local_addr: SocketAddr,
    slots: Mutex<Vec<Option<TcpListener>>>,
}

impl BoundSockets {
    /// Binds `workers` sockets to `addr`; with port 0 the first picks the port for the rest.
    ///
    /// With several workers the sockets share the port through SO_REUSEPORT, which would also
    /// let a second process (a second scalegate started by mistake) join the group and take a
    /// share of the connections without a word. So a fixed port is first probed with a plain
    /// bind: if anything already listens there, binding fails with "address in use".
    pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Arc<Self>> {
        if workers > 1 && addr.port() != 0 {
            drop(bind_one(addr, false)?);
        }
        let first = bind_one(addr, workers > 1)?;
        let local_addr = first.local_addr()?;
        let mut slots = vec![Some(first)];
        for _ in 1..workers {
            slots.push(Some(bind_one(local_addr, true)?));
        }
        Ok(Arc::new(BoundSockets {
            local_addr,
            slots: Mutex::new(slots),
        }))
    }

    /// Takes worker `i`'s socket (None if already taken).
    pub fn take(&self, i: usize) -> Option<TcpListener> {
        let mut slots = match self.slots.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        slots.get_mut(i).and_then(Option::take)
    }
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// A listener in a snapshot: its spec and its sockets (shared with the previous snapshot when the
/// name and address are unchanged).
#[derive(Debug, Clone)]
pub struct Listener {
    /// Validated spec.
    pub spec: ListenerSpec,
    /// The bound sockets.
    pub sockets: Arc<BoundSockets>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_is_refused_even_with_several_workers() {
        let first = BoundSockets::bind("127.0.0.1:0".parse().expect("addr"), 2).expect("bind");
        let addr = first.local_addr;
        for workers in [1, 2, 4] {
            let e = BoundSockets::bind(addr, workers).expect_err("the port is taken");
            assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{workers} workers");
        }
        // Our own sockets are unaffected, and the port binds again once they are gone.
        assert!(first.take(0).is_some() && first.take(1).is_some());
        drop(first);
        BoundSockets::bind(addr, 2).expect("free again");
    }
}
