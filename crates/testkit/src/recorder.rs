//! A recording backend: an HTTP/1.1 server that keeps the exact bytes of every request it
//! receives (head and body as framed on the wire) and answers each with `200 ok`. Tests assert
//! what crossed the gateway, byte for byte, not only the status the client saw.
//!
//! It reads framing itself (Content-Length, chunked with extensions and trailers) instead of
//! through an HTTP library, so it records what was sent, not what a parser made of it. A
//! request cut short (the connection closed mid-head or mid-body) is kept apart, in
//! [`Recorder::partial`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Debug, Default)]
struct Log {
    complete: Vec<Vec<u8>>,
    partial: Vec<Vec<u8>>,
}

/// A running recording backend; stops on drop.
#[derive(Debug)]
pub struct Recorder {
    /// Address it listens on.
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: AbortHandle,
}

impl Recorder {
    /// Starts a recorder on a free loopback port.
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let log = Arc::new(Mutex::new(Log::default()));
        let l2 = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, l2.clone()));
            }
        })
        .abort_handle();
        Recorder { addr, log, task }
    }

    /// Every complete request received so far, in order, as raw bytes.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.log
            .lock()
            .map(|l| l.complete.clone())
            .unwrap_or_default()
    }

    /// The complete requests as (lossy) text.
    pub fn texts(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    /// Requests whose connection closed before they were complete.
    pub fn partial(&self) -> Vec<Vec<u8>> {
        self.log
            .lock()
            .map(|l| l.partial.clone())
            .unwrap_or_default()
    }

    /// Forgets everything recorded.
    pub fn clear(&self) {
        if let Ok(mut l) = self.log.lock() {
            *l = Log::default();
        }
    }

    /// Takes the complete requests recorded so far (clearing both lists).
    pub fn take(&self) -> Vec<String> {
        let out = self.texts();
        self.clear();
        out
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bytes read from a connection, consumed from the front as requests are framed.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more; false at EOF or error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.s.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The index just past the first CRLF at or after `from`, reading as needed.
    async fn line_end(&mut self, from: usize) -> Option<usize> {
        loop {
            if let Some(i) = self.buf[from.min(self.buf.len())..]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                return Some(from + i + 2);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Makes sure `n` bytes are buffered.
    async fn have(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if !self.fill().await {
                return false;
            }
        }
        true
    }
}

async fn serve(s: TcpStream, log: Arc<Mutex<Log>>) {
    let mut c = Conn { s, buf: Vec::new() };
    loop {
        match one_request(&mut c).await {
            Ok(Some((len, head))) => {
                let bytes: Vec<u8> = c.buf.drain(..len).collect();
                if let Ok(mut l) = log.lock() {
                    l.complete.push(bytes);
                }
                let answer: &[u8] = if head.method == "HEAD" {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-recorder: 1\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-recorder: 1\r\n\r\nok"
                };
                if c.s.write_all(answer).await.is_err() || head.close {
                    return;
                }
            }
            Ok(None) => return,
            Err(()) => {
                if let Ok(mut l) = log.lock() {
                    l.partial.push(std::mem::take(&mut c.buf));
                }
                let _ = c
                    .s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return;
            }
        }
    }
}

/// What the recorder needs of a head.
struct Head {
    method: String,
    close: bool,
}

/// Frames one request at the front of the buffer: Ok(None) at a clean EOF between requests,
/// Ok((length, head)) for a complete one, Err for one cut short or unframeable.
async fn one_request(c: &mut Conn) -> Result<Option<(usize, Head)>, ()> {
    if c.buf.is_empty() && !c.fill().await {
        return Ok(None);
    }
    // The head ends at the first empty line.
    let mut at = 0;
    let head_end = loop {
        let end = c.line_end(at).await.ok_or(())?;
        if end - at == 2 {
            break end;
        }
        at = end;
    };
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(
        req.parse(&c.buf[..head_end]),
        Ok(httparse::Status::Complete(_))
    ) {
        return Err(());
    }
    let method = req.method.unwrap_or("").to_string();
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    for h in req.headers.iter() {
        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(v.trim().parse().map_err(|_| ())?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.trim().ends_with("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = v.contains("close");
        }
    }
    let head = Head { method, close };
    let end = if chunked {
        chunked_end(c, head_end).await?
    } else {
        let end = head_end + length.unwrap_or(0);
        if !c.have(end).await {
            return Err(());
        }
        end
    };
    Ok(Some((end, head)))
}

/// The end of a chunked body that starts at `at` (after its trailers).
async fn chunked_end(c: &mut Conn, mut at: usize) -> Result<usize, ()> {
    loop {
        let end = c.line_end(at).await.ok_or(())?;
        let line = String::from_utf8_lossy(&c.buf[at..end - 2]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| ())?;
        at = end;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = c.line_end(at).await.ok_or(())?;
                let empty = end - at == 2;
                at = end;
                if empty {
                    return Ok(at);
                }
            }
        }
        if !c.have(at + size + 2).await {
            return Err(());
        }
        at += size + 2;
    }
}
