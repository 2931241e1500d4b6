//! A connection in the clear or upgraded to TLS after SSLRequest: clients' (we accept TLS) and
//! servers' (we start it).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A socket in the clear or with TLS (`T` is the TLS stream type of our side).
#[derive(Debug)]
pub enum Stream<T> {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<T>),
    /// Between the two during an upgrade (or after a failed one).
    Closed,
}

/// A client's socket (we are the TLS server).
pub type ClientStream = Stream<tokio_rustls::server::TlsStream<TcpStream>>;

/// A server's socket (we are the TLS client).
pub type ServerStream = Stream<tokio_rustls::client::TlsStream<TcpStream>>;

impl<T> Stream<T> {
    /// Whether TLS is in use.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Writes all of `buf`. On plain TCP it is sent straight away while the socket takes it
    /// (the common case: a socket is writable unless the peer stopped reading), without a
    /// future's polling and budget bookkeeping; the rest, and TLS, go through `write_all`.
    pub async fn send_all(&mut self, buf: &[u8]) -> io::Result<()>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let mut sent = 0;
        if let Stream::Plain(tcp) = self {
            while sent < buf.len() {
                match tcp.try_write(&buf[sent..]) {
                    // Zero taken: left to write_all, which reports it.
                    Ok(0) => break,
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        if sent < buf.len() {
            tokio::io::AsyncWriteExt::write_all(self, &buf[sent..]).await?;
        }
        Ok(())
    }

    /// Reads what the socket has into `buf`, making room first when little is left. Cancel-safe:
    /// nothing is read unless the read completes.
    pub async fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<usize>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match self {
            Stream::Plain(tcp) => loop {
                tcp.readable().await?;
                match try_read_drained(tcp, buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            },
            // TLS may hold decrypted bytes of its own: no shortcut.
            _ => tokio::io::AsyncReadExt::read_buf(self, buf).await,
        }
    }
}

/// Reads what `tcp` has into `buf` without waiting (WouldBlock when it has nothing). A read
/// shorter than the room offered means the socket is drained, so its read readiness is cleared
/// on the spot: the next wait goes straight to the reactor instead of first spending a read
/// syscall on EAGAIN (tokio only learns "drained" from an EAGAIN). The readiness cleared is the
/// one seen before the read: bytes that arrive after it (even on another thread's reactor, before
/// the clearing) have raised it again, and the clearing then leaves it set, so no wake-up is lost.
pub fn try_read_drained(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut got = 0;
    let r = tcp.try_io(tokio::io::Interest::READABLE, || {
        got = tcp.try_read_buf(buf)?;
        if got > 0 && got < room {
            // Makes `try_io` clear the readiness it read before calling this.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        Err(e) => Err(e),
        Ok(()) => Ok(got),
    }
}

impl ServerStream {
    /// Starts TLS on a plain connection to `name`.
    pub async fn start_tls(
        &mut self,
        connector: &TlsConnector,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Closed) else {
            return Err(io::Error::other("TLS started twice"));
        };
        let tls = connector.connect(name, tcp).await?;
        *self = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(t) => Some(t.get_ref().0),
            Stream::Closed => None,
        }
    }
}

impl ClientStream {
    /// Resolves once the client has closed its connection (end of stream or a socket error),
    /// looking without consuming anything. Bytes waiting to be read (a pipelined message, a
    /// TLS record) mean the client is there, and then this never resolves: it is a watch to
    /// race against a wait, not a read.
    pub async fn closed(&self) {
        let tcp = match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.get_ref().0,
            Stream::Closed => return,
        };
        // Polled through the socket's single reader slot (nothing else reads the client while
        // this runs), which is cheaper than a queued waiter for every wait.
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match std::future::poll_fn(|cx| tcp.poll_peek(cx, &mut buf)).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }

    /// Performs the TLS handshake on a plain connection.
    pub async fn upgrade(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Closed) else {
            return Err(io::Error::other("TLS requested twice"));
        };
        let tls = acceptor.accept(tcp).await?;
        *self = Stream::Tls(Box::new(tls));
        Ok(())
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// Both ends of a loopback TCP connection: the accepted one, then the connecting one.
#[cfg(test)]
pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let peer = TcpStream::connect(listener.local_addr().expect("address"))
        .await
        .expect("connect");
    let (tcp, _) = listener.accept().await.expect("accept");
    (tcp, peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// Many small writes with pauses between them, read on a runtime with two workers (the
    /// reactor may run on the other one while a read is in progress): every byte arrives, and
    /// no read waits forever for bytes that are already there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_reads_clear_readiness_without_losing_a_wakeup() {
        let (tcp, mut peer) = tcp_pair().await;
        let mut stream = ClientStream::Plain(tcp);
        const CHUNKS: usize = 2000;
        let writer = tokio::spawn(async move {
            for i in 0..CHUNKS {
                peer.write_all(&[(i % 251) as u8; 7]).await.unwrap();
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            peer
        });
        let mut buf = BytesMut::new();
        while buf.len() < CHUNKS * 7 {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read_some(&mut buf))
                .await
                .expect("a read waited for bytes already sent")
                .unwrap();
            assert!(n > 0);
        }
        let _peer = writer.await.unwrap();
        for (i, chunk) in buf.chunks(7).enumerate() {
            assert_eq!(chunk, [(i % 251) as u8; 7]);
        }
    }
}
