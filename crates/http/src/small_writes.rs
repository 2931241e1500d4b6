//! Small messages go out with one `send` instead of a `writev`.
//!
//! hyper keeps a message's head and each body chunk in separate buffers and hands them to the
//! socket as one vectored write. For a large body that saves a copy. For a small response (a
//! head and a few bytes of body, the common case behind an API gateway) the kernel's `writev`
//! path (importing the iovec array, going through the VFS) costs more than copying the few
//! hundred bytes into one buffer and sending that. hyper's own "flatten" strategy would copy
//! large bodies too, so the choice is made here, per write, by size.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Vectored writes whose buffers add up to at most this many bytes are copied into one.
pub const COALESCE_LIMIT: usize = 4096;

/// Writes `bufs` to `w`: as one plain write when there is one, or several that are small
/// together; as a vectored write otherwise.
pub fn poll_write_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    if let [one] = bufs {
        return Pin::new(w).poll_write(cx, one);
    }
    if bufs.len() > 1 {
        let total = bufs.iter().try_fold(0usize, |n, b| {
            n.checked_add(b.len()).filter(|&n| n <= COALESCE_LIMIT)
        });
        // The stack buffer is zeroed on every call: a small one for the common small response.
        match total {
            Some(total) if total <= SMALL => return write_joined::<SMALL, W>(w, cx, bufs, total),
            Some(total) => return write_joined::<COALESCE_LIMIT, W>(w, cx, bufs, total),
            None => {}
        }
    }
    Pin::new(w).poll_write_vectored(cx, bufs)
}

/// The buffer for writes of at most this many bytes (a short head and body).
const SMALL: usize = 512;

/// Copies `bufs` (`total` ≤ N bytes together) into one stack buffer and writes that.
fn write_joined<const N: usize, W: AsyncWrite + Unpin>(
    w: &mut W,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
    total: usize,
) -> Poll<io::Result<usize>> {
    let mut one = [0u8; N];
    let mut at = 0;
    for b in bufs {
        one[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    }
    Pin::new(w).poll_write(cx, &one[..total])
}

/// A TCP stream whose small vectored writes go out as one plain write (see the module doc).
#[derive(Debug)]
pub struct SmallWrites(pub TcpStream);

impl AsyncRead for SmallWrites {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SmallWrites {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_vectored(&mut self.get_mut().0, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small and large vectored writes both arrive whole and in order.
    #[tokio::test]
    async fn vectored_writes_arrive_in_order_whatever_their_size() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let big = vec![b'x'; 3 * COALESCE_LIMIT];
        let mid = vec![b'm'; 1000];
        let expected: Vec<u8> =
            [b"head:".as_slice(), b"ok\n", b"mid:", &mid, &big, b"tail"].concat();
        let writer = tokio::spawn({
            let big = big.clone();
            let mid = mid.clone();
            async move {
                let mut w = SmallWrites(TcpStream::connect(addr).await.expect("connect"));
                let small = [io::IoSlice::new(b"head:"), io::IoSlice::new(b"ok\n")];
                let n = w.write_vectored(&small).await.expect("small");
                assert_eq!(n, 8, "a small vectored write goes out whole, as one write");
                let medium = [io::IoSlice::new(b"mid:"), io::IoSlice::new(&mid)];
                let n = w.write_vectored(&medium).await.expect("medium");
                assert_eq!(n, 1004, "so does one above the small buffer's size");
                w.write_all(&big).await.expect("big");
                let mut tail = [io::IoSlice::new(b"ta"), io::IoSlice::new(b"il")];
                let mut bufs = &mut tail[..];
                while !bufs.is_empty() {
                    let n = w.write_vectored(bufs).await.expect("tail");
                    io::IoSlice::advance_slices(&mut bufs, n);
                }
                w.shutdown().await.expect("shutdown");
            }
        });
        let (mut r, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(got, expected);
    }
}
