//! A stream whose writes are watched: when a write is refused (the peer's socket is full: it
//! stopped reading) and since when. A tunnel whose side has refused writes for too long is
//! stuck, not busy: nothing else notices, because the copy waits on that write and polls
//! nothing else of the same direction (HAProxy's `timeout tunnel`, nginx's
//! `proxy_send_timeout`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::clock;
use crate::ws_frames::{Frames, going_away};

/// Since when writes have been refused (0: they are taken), and how many bytes the peer had
/// not taken yet at the last look ([`Stall::stuck`]).
#[derive(Debug)]
pub struct Stall(AtomicU64, AtomicU64);

impl Default for Stall {
    fn default() -> Stall {
        Stall(AtomicU64::new(0), AtomicU64::new(UNSEEN))
    }
}

/// No look at the peer's backlog yet.
const UNSEEN: u64 = u64::MAX;

/// Bytes written on socket `fd` that the peer has not acknowledged yet (Linux's `TIOCOUTQ`),
/// when the OS says.
#[cfg(target_os = "linux")]
pub fn unacked(fd: std::os::fd::RawFd) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int through the pointer, which is valid for the call; a
    // closed or non-socket fd makes it fail, which is reported as unknown.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (r == 0).then(|| u64::try_from(n).unwrap_or(0))
}

/// Bytes the peer has not taken yet: unknown on this OS.
#[cfg(not(target_os = "linux"))]
pub fn unacked(_fd: i32) -> Option<u64> {
    None
}

impl Stall {
    /// Records what a write did, and passes its outcome on.
    pub fn watch(&self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        self.wrote(&r);
        r
    }

    /// Records what a write did.
    pub fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Pending if self.0.load(Relaxed) == 0 => {
                self.0.store(clock::now().0.max(1), Relaxed);
            }
            Poll::Ready(Ok(n)) if *n > 0 && self.0.load(Relaxed) != 0 => {
                self.0.store(0, Relaxed);
                self.1.store(UNSEEN, Relaxed);
            }
            _ => {}
        }
    }

    /// Whether writes refused for `limit` mean the peer has stopped taking bytes. `backlog` tells
    /// what it has not taken yet ([`unacked`]), when known: a socket's buffer takes writes
    /// again only once a good part of it has drained, which a slow but steady reader (a
    /// mobile client on a large download) may take longer than `limit` to do. So while the
    /// backlog shrinks between two looks the wait starts again; the first look only records
    /// it. Without a backlog, refused writes alone decide.
    pub fn stuck(&self, limit: Duration, backlog: impl FnOnce() -> Option<u64>) -> bool {
        if self.stalled_for().is_none_or(|d| d < limit) {
            return false;
        }
        let Some(now) = backlog() else {
            return true;
        };
        let before = self.1.swap(now, Relaxed);
        if before != UNSEEN && now >= before {
            return true;
        }
        self.0.store(clock::now().0.max(1), Relaxed);
        false
    }

    /// How long writes have been refused, if they are.
    pub fn stalled_for(&self) -> Option<Duration> {
        match self.0.load(Relaxed) {
            0 => None,
            since => Some(clock::now().since(scalegate_core::Tick(since))),
        }
    }
}

/// `S`, with its writes recorded in a shared [`Stall`].
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    stall: Arc<Stall>,
    /// The WebSocket frames written to it when it carries one, and whether frames to it are
    /// masked (it is the upstream): see `ws_frames.rs`.
    frames: Option<(Frames, bool)>,
}

impl<S> Watched<S> {
    /// Wraps `inner`; its write stalls go to `stall`.
    pub fn new(inner: S, stall: Arc<Stall>) -> Watched<S> {
        Watched {
            inner,
            stall,
            frames: None,
        }
    }

    /// Follows the WebSocket frames written to it, when `websocket`; `masked`: it is the
    /// upstream side.
    pub fn following_frames(mut self, websocket: bool, masked: bool) -> Watched<S> {
        self.frames = websocket.then(|| (Frames::default(), masked));
        self
    }
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    /// Sends a close frame with 1001 ("going away") if it carries a WebSocket and is between
    /// frames; nothing is followed after it.
    pub async fn say_going_away(&mut self) {
        let Some((frames, masked)) = self.frames.take() else {
            return;
        };
        if frames.between_frames() {
            let _ = self.inner.write_all(&going_away(masked)).await;
            let _ = self.inner.flush().await;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = me.stall.watch(Pin::new(&mut me.inner).poll_write(cx, buf));
        if let (Poll::Ready(Ok(n)), Some((frames, _))) = (&r, me.frames.as_mut()) {
            frames.passed(&buf[..*n]);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
