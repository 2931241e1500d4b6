//! An h2c upstream that refuses streams unprocessed, as HTTP/2 servers do when they shed load or
//! shut down gracefully (RFC 9113 §8.7): RST_STREAM with REFUSED_STREAM, or a GOAWAY whose last
//! stream id is below the stream. Written by hand, so a test decides exactly which streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::raw_h2::{DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, SETTINGS, frame};

const PREFACE_LEN: usize = 24;
const PING: u8 = 6;
const REFUSED_STREAM: u32 = 7;

/// How the upstream refuses a stream.
#[derive(Clone, Copy, Debug)]
pub enum Refusal {
    /// RST_STREAM with REFUSED_STREAM on it.
    Reset,
    /// GOAWAY (NO_ERROR) letting through no stream, then the connection closed.
    GoAway,
    /// A response head (200), then RST_STREAM with REFUSED_STREAM: a server that lies, since
    /// it answered (processed) the request.
    AfterHead,
}

/// The upstream's address, and how many streams it answered (200, no body).
pub struct RefusingUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Streams answered so far (refused ones are not counted).
    pub answered: Arc<AtomicUsize>,
    /// Requests that reached it (HEADERS frames), refused or not.
    pub received: Arc<AtomicUsize>,
}

/// Starts an upstream that refuses the first `refusals` streams it gets, across connections,
/// and answers every later one 200 once its request has ended.
pub async fn start(how: Refusal, refusals: usize) -> RefusingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let left = Arc::new(AtomicUsize::new(refusals));
    let answered = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let counts = Counts {
        left,
        answered: answered.clone(),
        received: received.clone(),
    };
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, how, counts.clone()));
        }
    });
    RefusingUpstream {
        addr,
        answered,
        received,
    }
}

#[derive(Clone)]
struct Counts {
    left: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
}

async fn serve(mut s: TcpStream, how: Refusal, counts: Counts) {
    let mut preface = [0u8; PREFACE_LEN];
    if s.read_exact(&mut preface).await.is_err() {
        return;
    }
    if s.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
        return;
    }
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return;
        }
        if kind == HEADERS {
            counts.received.fetch_add(1, SeqCst);
        }
        let reply = match kind {
            SETTINGS if flags & 1 == 0 => frame(SETTINGS, 1, 0, &[]),
            PING if flags & 1 == 0 => frame(PING, 1, 0, &payload),
            HEADERS if take_one(&counts.left) => match how {
                Refusal::Reset => frame(RST_STREAM, 0, stream, &REFUSED_STREAM.to_be_bytes()),
                Refusal::GoAway => {
                    let _ = s.write_all(&frame(GOAWAY, 0, 0, &[0; 8])).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return;
                }
                Refusal::AfterHead => [
                    frame(HEADERS, END_HEADERS, stream, &[0x88]),
                    frame(RST_STREAM, 0, stream, &REFUSED_STREAM.to_be_bytes()),
                ]
                .concat(),
            },
            HEADERS | DATA if flags & END_STREAM != 0 => {
                counts.answered.fetch_add(1, SeqCst);
                // 0x88: `:status: 200`, the static table's entry 8.
                frame(HEADERS, END_HEADERS | END_STREAM, stream, &[0x88])
            }
            _ => continue,
        };
        if s.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn take_one(left: &AtomicUsize) -> bool {
    left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
