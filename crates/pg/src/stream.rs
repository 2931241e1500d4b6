//! A connection in the clear or upgraded to TLS after SSLRequest: clients' (we accept TLS) and
//! servers' (we start it).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

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

    /// After a read shorter than the room offered, tells tokio the socket is drained so the
    /// next wait skips a read that would only return EAGAIN (plain TCP only: TLS may hold
    /// decrypted bytes of its own).
    pub fn mark_drained(&self) {
        if let Stream::Plain(s) = self {
            mark_drained(s);
        }
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

/// Clears a TCP socket's read readiness without a syscall (see `ClientStream::mark_drained`).
pub fn mark_drained(s: &TcpStream) {
    let _ = s.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
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
