//! Buffers shared by the clients that run on one thread.
//!
//! A client between transactions holds no buffer: it waits for its socket to turn readable with
//! nothing allocated, then reads into the thread's most recently freed buffer, and gives the
//! buffer back once everything in it was handled and sent. A few buffers then serve every
//! client and stay in the CPU's cache. With a buffer per client, each of hundreds of clients
//! reads into memory that went cold while the others ran. PgBouncer frees its socket buffers
//! when they are empty for the same reason; idle clients also cost less memory this way.

use std::cell::RefCell;
use std::io;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// The room a buffer taken from the spares has.
pub const SIZE: usize = 16 * 1024;
/// Most spares kept per thread.
const KEEP: usize = 64;
/// Buffers that grew beyond this (for a large message) are freed rather than kept.
const LARGEST: usize = 4 * SIZE;

thread_local! {
    static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for `SIZE` bytes or more: the one this thread freed last.
pub fn take() -> BytesMut {
    SPARES
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Gives `buf` back to the spares when it is empty, leaving it without capacity; a buffer that
/// holds bytes is left as it is.
pub fn give(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let mut b = std::mem::take(buf);
    // Reclaiming moves the start back over bytes already consumed, up to the whole allocation:
    // one that reaches past `LARGEST` (it grew for a large message) is freed, and so is one
    // with less than `SIZE` of room that cannot be moved back (still shared with bytes handed
    // out elsewhere).
    if b.try_reclaim(LARGEST + 1) || !b.try_reclaim(SIZE) {
        return;
    }
    SPARES.with_borrow_mut(|spares| {
        if spares.len() < KEEP {
            spares.push(b);
        }
    });
}

/// Reads what `tcp` has into `buf`, which is empty: `buf` goes back to the spares while the
/// socket has nothing, and a spare is taken only when bytes are there. Cancel-safe: nothing is
/// read unless the read completes.
pub async fn read(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    debug_assert!(buf.is_empty(), "bytes a client sent would be overwritten");
    give(buf);
    loop {
        tcp.readable().await?;
        let mut b = take();
        match crate::stream::try_read_drained(tcp, &mut b) {
            Ok(0) => {
                give(&mut b);
                return Ok(0);
            }
            Ok(n) => {
                *buf = b;
                return Ok(n);
            }
            // Readiness was stale; the failed read cleared it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => give(&mut b),
            Err(e) => {
                give(&mut b);
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut};
    use tokio::io::AsyncWriteExt;

    #[test]
    fn an_emptied_buffer_is_reused_whole_and_a_full_one_is_kept() {
        let mut buf = take();
        let at = buf.as_ptr();
        buf.put_slice(b"hello");
        give(&mut buf);
        assert_eq!(
            &buf[..],
            b"hello",
            "a buffer with bytes in it is not given back"
        );
        buf.advance(5);
        give(&mut buf);
        assert_eq!(buf.capacity(), 0);
        let again = take();
        assert_eq!(again.as_ptr(), at, "the same memory, from its start");
        assert!(again.capacity() >= SIZE && again.is_empty());
    }

    #[test]
    fn a_buffer_still_shared_is_not_kept() {
        let mut buf = take();
        buf.put_slice(b"abc");
        let shared = buf.split_to(3).freeze();
        give(&mut buf);
        let other = take();
        assert_ne!(other.as_ptr(), shared.as_ptr());
    }

    #[test]
    fn a_buffer_that_grew_for_a_large_message_is_freed_even_when_mostly_consumed() {
        let mut buf = take();
        buf.put_slice(&vec![b'x'; 1 << 20]);
        buf.advance((1 << 20) - 1);
        let left = buf.capacity() - buf.len();
        assert!(
            left <= LARGEST,
            "a large allocation with little room left: {left}"
        );
        buf.advance(1);
        give(&mut buf);
        assert!(take().capacity() <= LARGEST);
        assert!(SPARES.with_borrow(Vec::is_empty));
    }

    #[tokio::test]
    async fn reads_wait_without_a_buffer_and_take_one_for_the_bytes() {
        let (tcp, mut peer) = crate::stream::tcp_pair().await;
        let mut buf = BytesMut::new();
        // Cancelled while waiting: nothing held, nothing lost.
        let wait = tokio::time::timeout(std::time::Duration::from_millis(20), read(&tcp, &mut buf));
        assert!(wait.await.is_err());
        assert_eq!(buf.capacity(), 0);
        peer.write_all(b"Q\0\0\0\x05x").await.unwrap();
        assert_eq!(read(&tcp, &mut buf).await.unwrap(), 6);
        assert_eq!(&buf[..], b"Q\0\0\0\x05x");
        drop(peer);
        buf.clear();
        assert_eq!(read(&tcp, &mut buf).await.unwrap(), 0);
    }
}
