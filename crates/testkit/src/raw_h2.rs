//! HTTP/2 written by hand: a request's fields are HPACK literals of any bytes (CR, LF, NUL,
//! upper case, connection-specific names) and its DATA frames are whatever the test says, so a
//! test can send what no HTTP/2 library would. The answer is read just far enough to say what
//! the server did with stream 1.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(crate) const DATA: u8 = 0;
pub(crate) const HEADERS: u8 = 1;
pub(crate) const RST_STREAM: u8 = 3;
pub(crate) const SETTINGS: u8 = 4;
pub(crate) const GOAWAY: u8 = 7;
pub(crate) const END_STREAM: u8 = 1;
pub(crate) const END_HEADERS: u8 = 4;

/// What the server did with stream 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H2Answer {
    /// A response head with this status (0 if it could not be read).
    Status(u16),
    /// RST_STREAM with this error code (1: PROTOCOL_ERROR).
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The connection closed or went quiet first.
    Nothing,
}

/// One frame of a request after its HEADERS.
#[derive(Clone, Debug)]
pub enum Frame {
    /// DATA, with END_STREAM when `end`.
    Data(Vec<u8>, bool),
    /// Trailers: HEADERS with END_STREAM (name, value pairs).
    Trailers(Vec<(Vec<u8>, Vec<u8>)>),
}

/// One frame: its 9-byte header, then `payload`.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, new names, no Huffman coding.
pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// Sends one request on stream 1 of a fresh h2c connection: `fields` in order (pseudo-fields
/// included, as given), then `frames`; HEADERS carries END_STREAM when `frames` is empty.
pub async fn send(addr: SocketAddr, fields: &[(&[u8], &[u8])], frames: &[Frame]) -> H2Answer {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return H2Answer::Nothing;
    };
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let flags = END_HEADERS | if frames.is_empty() { END_STREAM } else { 0 };
    out.extend(frame(HEADERS, flags, 1, &block(fields)));
    for f in frames {
        match f {
            Frame::Data(d, end) => out.extend(frame(DATA, u8::from(*end), 1, d)),
            Frame::Trailers(fields) => {
                let fields: Vec<(&[u8], &[u8])> = fields
                    .iter()
                    .map(|(n, v)| (n.as_slice(), v.as_slice()))
                    .collect();
                out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(&fields)));
            }
        }
    }
    if s.write_all(&out).await.is_err() {
        return H2Answer::Nothing;
    }
    read_answer(&mut s).await
}

async fn read_answer(s: &mut TcpStream) -> H2Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                SETTINGS if flags & 1 == 0 => {
                    let _ = s.write_all(&frame(SETTINGS, 1, 0, &[])).await;
                }
                HEADERS if stream == 1 => return H2Answer::Status(status_of(&payload, flags)),
                RST_STREAM if stream == 1 && payload.len() >= 4 => {
                    return H2Answer::Reset(u32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]));
                }
                GOAWAY if payload.len() >= 8 => {
                    return H2Answer::GoAway(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return H2Answer::Nothing,
        }
    }
}

/// The `:status` of a response header block, which servers send first: an indexed static entry
/// (200, 204, 206, 304, 400, 404, 500) or a literal with name index 8 (Huffman-coded digits
/// decoded here).
fn status_of(payload: &[u8], flags: u8) -> u16 {
    // PADDED (0x8) and PRIORITY (0x20) prefixes.
    let mut p = payload;
    if flags & 0x8 != 0 && !p.is_empty() {
        p = &p[1..];
    }
    if flags & 0x20 != 0 && p.len() >= 5 {
        p = &p[5..];
    }
    let Some(&first) = p.first() else { return 0 };
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => 200,
            9 => 204,
            10 => 206,
            11 => 304,
            12 => 400,
            13 => 404,
            14 => 500,
            _ => 0,
        };
    }
    // Literal with name index 8: 0x48 (incremental), 0x08 (without), 0x18 (never indexed).
    if !matches!(first, 0x48 | 0x08 | 0x18) || p.len() < 2 {
        return 0;
    }
    let huffman = p[1] & 0x80 != 0;
    let len = usize::from(p[1] & 0x7f);
    let Some(value) = p.get(2..2 + len) else {
        return 0;
    };
    let text = if huffman {
        huffman_digits(value)
    } else {
        String::from_utf8_lossy(value).into_owned()
    };
    text.parse().unwrap_or(0)
}

/// Decodes Huffman-coded ASCII digits (RFC 7541 Appendix B: 0-2 are 5 bits, 3-9 six).
fn huffman_digits(bytes: &[u8]) -> String {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i + 5 <= bits.len() {
        let five = bits[i..i + 5].iter().fold(0u8, |a, b| (a << 1) | b);
        if five <= 2 {
            out.push(char::from(b'0' + five));
            i += 5;
            continue;
        }
        if i + 6 > bits.len() {
            break;
        }
        let six = bits[i..i + 6].iter().fold(0u8, |a, b| (a << 1) | b);
        if (0b011001..=0b011111).contains(&six) {
            out.push(char::from(b'3' + (six - 0b011001)));
            i += 6;
        } else {
            break;
        }
    }
    out
}
