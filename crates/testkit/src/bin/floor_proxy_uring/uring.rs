//! The io_uring event loop of `floor_proxy_uring`.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use scalegate_testkit::floor_framing::{request_len, response_len};

use crate::bufring::BufRing;

/// Bytes per provided buffer (the epoll floor reads 16 KiB at a time too).
const BUF_SIZE: usize = 16384;
/// Provided buffers shared by every socket (a power of two).
const BUFS: u16 = 1024;
/// The buffer group the receives pick from.
const GROUP: u16 = 0;

/// What a completion belongs to: the low bits of its user data; the slot is above them.
#[derive(Clone, Copy)]
enum Op {
    Accept = 0,
    RecvClient = 1,
    RecvServer = 2,
    SendClient = 3,
    SendServer = 4,
}

const OP_BITS: u64 = 3;

impl Op {
    fn of(user_data: u64) -> Option<Op> {
        Some(match user_data & ((1 << OP_BITS) - 1) {
            0 => Op::Accept,
            1 => Op::RecvClient,
            2 => Op::RecvServer,
            3 => Op::SendClient,
            4 => Op::SendServer,
            _ => return None,
        })
    }

    fn tag(self, slot: usize) -> u64 {
        ((slot as u64) << OP_BITS) | self as u64
    }
}

/// One direction of a connection pair: bytes gathered until a message is whole, then sent.
#[derive(Default)]
struct Direction {
    /// Bytes received and not yet part of a send.
    gathering: Vec<u8>,
    /// The message being sent (kept still while the kernel reads it).
    sending: Vec<u8>,
    /// How much of `sending` the kernel has taken.
    sent: usize,
    in_flight: bool,
}

impl Direction {
    /// Takes the next whole message into `sending` if no send is in flight; true if one was.
    fn take_message(&mut self, len: fn(&[u8]) -> io::Result<Option<usize>>) -> io::Result<bool> {
        if self.in_flight {
            return Ok(false);
        }
        let Some(total) = len(&self.gathering)? else {
            return Ok(false);
        };
        if self.gathering.len() < total {
            return Ok(false);
        }
        std::mem::swap(&mut self.gathering, &mut self.sending);
        self.gathering.clear();
        self.gathering.extend_from_slice(&self.sending[total..]);
        self.sending.truncate(total);
        self.sent = 0;
        self.in_flight = true;
        Ok(true)
    }
}

/// A client connection and its own upstream connection.
struct Pair {
    client: RawFd,
    server: RawFd,
    /// Client to server.
    up: Direction,
    /// Server to client.
    down: Direction,
    /// Operations the kernel still holds (armed receives and sends).
    pending: u32,
    closing: bool,
}

struct Proxy {
    ring: IoUring,
    bufs: BufRing,
    pairs: Vec<Option<Pair>>,
    free: Vec<usize>,
    listener: RawFd,
    upstreams: Vec<SocketAddr>,
    next: usize,
}

/// Runs the proxy until the process is killed.
pub fn serve(listen: &str, upstreams: Vec<SocketAddr>) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_cqsize(8192)
        .build(4096)?;
    let bufs = BufRing::register(&ring, GROUP, BUFS, BUF_SIZE)?;
    let mut proxy = Proxy {
        ring,
        bufs,
        pairs: Vec::new(),
        free: Vec::new(),
        listener: listener.as_raw_fd(),
        upstreams,
        next: 0,
    };
    proxy.arm_accept()?;
    let mut completions = Vec::with_capacity(8192);
    loop {
        proxy.ring.submit_and_wait(1)?;
        completions.clear();
        completions.extend(
            proxy
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(user_data, result, flags) in &completions {
            proxy.complete(user_data, result, flags)?;
        }
    }
}

impl Proxy {
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: every buffer an entry points at lives in a `Pair` (or the buffer ring) that is
        // neither freed nor moved until the entry's last completion arrives.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let accept = opcode::AcceptMulti::new(types::Fd(self.listener)).build();
        self.push(accept.user_data(Op::Accept.tag(0)))
    }

    fn arm_recv(&mut self, slot: usize, op: Op, fd: RawFd) -> io::Result<()> {
        let recv = opcode::RecvMulti::new(types::Fd(fd), GROUP).build();
        self.push(recv.user_data(op.tag(slot)))?;
        if let Some(pair) = self.pairs[slot].as_mut() {
            pair.pending += 1;
        }
        Ok(())
    }

    fn send_rest(&mut self, slot: usize, op: Op) -> io::Result<()> {
        let Some(pair) = self.pairs[slot].as_mut() else {
            return Ok(());
        };
        let (fd, dir) = match op {
            Op::SendServer => (pair.server, &pair.up),
            _ => (pair.client, &pair.down),
        };
        let rest = &dir.sending[dir.sent..];
        let send = opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32).build();
        pair.pending += 1;
        self.push(send.user_data(op.tag(slot)))
    }

    fn complete(&mut self, user_data: u64, result: i32, flags: u32) -> io::Result<()> {
        let slot = (user_data >> OP_BITS) as usize;
        match Op::of(user_data) {
            Some(Op::Accept) => self.accepted(result, flags),
            Some(op @ (Op::RecvClient | Op::RecvServer)) => self.received(slot, op, result, flags),
            Some(op @ (Op::SendClient | Op::SendServer)) => self.sent(slot, op, result),
            None => Ok(()),
        }
    }

    fn accepted(&mut self, result: i32, flags: u32) -> io::Result<()> {
        if !cqueue::more(flags) {
            self.arm_accept()?;
        }
        if result < 0 {
            return Ok(());
        }
        let upstream = self.upstreams[self.next % self.upstreams.len()];
        self.next = self.next.wrapping_add(1);
        let client = result;
        let Ok(server) = TcpStream::connect(upstream) else {
            // SAFETY: the kernel just gave us this descriptor and nothing else holds it.
            unsafe { libc::close(client) };
            return Ok(());
        };
        server.set_nodelay(true)?;
        set_nodelay(client);
        let pair = Pair {
            client,
            server: server.into_raw_fd(),
            up: Direction::default(),
            down: Direction::default(),
            pending: 0,
            closing: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.pairs.push(None);
                self.pairs.len() - 1
            }
        };
        let server = pair.server;
        self.pairs[slot] = Some(pair);
        self.arm_recv(slot, Op::RecvClient, client)?;
        self.arm_recv(slot, Op::RecvServer, server)
    }

    fn received(&mut self, slot: usize, op: Op, result: i32, flags: u32) -> io::Result<()> {
        let more = cqueue::more(flags);
        if let Some(bid) = cqueue::buffer_select(flags) {
            let data = self.bufs.get(bid, result.max(0) as usize);
            if let Some(pair) = self.pairs[slot].as_mut().filter(|p| !p.closing) {
                let dir = match op {
                    Op::RecvClient => &mut pair.up,
                    _ => &mut pair.down,
                };
                dir.gathering.extend_from_slice(data);
            }
            self.bufs.recycle(bid);
        }
        let Some(pair) = self.pairs[slot].as_mut() else {
            return Ok(());
        };
        if !more {
            pair.pending -= 1;
        }
        if pair.closing || (result <= 0 && result != -libc::ENOBUFS) {
            return self.close(slot);
        }
        if !more && !pair.closing {
            let fd = match op {
                Op::RecvClient => pair.client,
                _ => pair.server,
            };
            self.arm_recv(slot, op, fd)?;
        }
        self.forward(slot)
    }

    /// Starts the send of any direction's whole message.
    fn forward(&mut self, slot: usize) -> io::Result<()> {
        let Some(pair) = self.pairs[slot].as_mut().filter(|p| !p.closing) else {
            return Ok(());
        };
        let up = pair.up.take_message(request_len);
        let down = pair.down.take_message(response_len);
        match (up, down) {
            (Ok(up), Ok(down)) => {
                if up {
                    self.send_rest(slot, Op::SendServer)?;
                }
                if down {
                    self.send_rest(slot, Op::SendClient)?;
                }
                Ok(())
            }
            _ => self.close(slot),
        }
    }

    fn sent(&mut self, slot: usize, op: Op, result: i32) -> io::Result<()> {
        let Some(pair) = self.pairs[slot].as_mut() else {
            return Ok(());
        };
        pair.pending -= 1;
        if pair.closing || result <= 0 {
            return self.close(slot);
        }
        let dir = match op {
            Op::SendServer => &mut pair.up,
            _ => &mut pair.down,
        };
        dir.sent += result as usize;
        if dir.sent < dir.sending.len() {
            return self.send_rest(slot, op);
        }
        dir.in_flight = false;
        self.forward(slot)
    }

    /// Shuts both sockets (ending their receives); frees the pair once the kernel holds nothing.
    fn close(&mut self, slot: usize) -> io::Result<()> {
        let Some(pair) = self.pairs[slot].as_mut() else {
            return Ok(());
        };
        if !pair.closing {
            pair.closing = true;
            // SAFETY: both descriptors are this pair's own and still open.
            unsafe {
                libc::shutdown(pair.client, libc::SHUT_RDWR);
                libc::shutdown(pair.server, libc::SHUT_RDWR);
            }
        }
        if pair.pending == 0 {
            // SAFETY: as above; nothing in the kernel refers to them any more.
            unsafe {
                libc::close(pair.client);
                libc::close(pair.server);
            }
            self.pairs[slot] = None;
            self.free.push(slot);
        }
        Ok(())
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a pointer to a c_int of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
