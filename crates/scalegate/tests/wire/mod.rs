//! Helpers of the edge tests: raw HTTP/1.1 exchanges, raw HTTP/2 requests, and exact checks of
//! what a recording backend received.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use scalegate_testkit::Recorder;
use scalegate_testkit::raw_h2::{self, Frame, H2Answer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The statuses of every response read after writing `bytes` on a fresh connection: responses
/// are read whole (by Content-Length or chunked), then the connection is given 100 ms to send
/// more before it is left (a smuggled second response would show here).
pub async fn h1(addr: SocketAddr, bytes: &[u8]) -> Vec<u16> {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return vec![];
    };
    if s.write_all(bytes).await.is_err() {
        return vec![];
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut statuses = Vec::new();
    let mut first = true;
    // A response to HEAD has no body whatever its Content-Length says.
    let mut head = bytes.starts_with(b"HEAD ");
    loop {
        // The first answer may take a round trip upstream; later ones are only looked for.
        let wait = if first {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(100)
        };
        match parse_response(&buf, head) {
            Some((status, used)) => {
                head = false;
                statuses.push(status);
                buf.drain(..used);
                first = false;
                continue;
            }
            None => {
                let mut chunk = [0u8; 8192];
                match tokio::time::timeout(wait, s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return statuses,
                }
            }
        }
    }
}

/// A complete response at the front of `buf`: (status, bytes used).
fn parse_response(buf: &[u8], to_head: bool) -> Option<(u16, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    if to_head {
        return Some((status, head_end));
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        let mut at = head_end;
        loop {
            let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[at..line_end])
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            at = line_end + 2 + size + 2;
            if buf.len() < at {
                return None;
            }
            if size == 0 {
                return Some((status, at));
            }
        }
    }
    let end = head_end + length.unwrap_or(0);
    (buf.len() >= end).then_some((status, end))
}

/// A request over raw HTTP/2: the four pseudo-fields, then `extra` fields, then `frames`.
pub async fn h2(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authority: &str,
    extra: &[(&str, &str)],
    frames: &[Frame],
) -> H2Answer {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", method.as_bytes()),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", authority.as_bytes()),
    ];
    fields.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    raw_h2::send(addr, &fields, frames).await
}

/// Routes of issue 15's report, one per matcher kind, each denying loopback clients, and a
/// catch-all, all to the recording backend `rec`.
pub fn deny_routes(rec: &Recorder) -> String {
    format!(
        r#"
[[routes]]
name = "admin"
match = {{ path_prefix = "/admin" }}
upstream = "app"
deny = ["127.0.0.0/8"]

[[routes]]
name = "admin-site"
match = {{ host = "admin.example" }}
upstream = "app"
deny = ["127.0.0.0/8"]

[[routes]]
name = "no-delete"
match = {{ path_prefix = "/items", method = "DELETE" }}
upstream = "app"
deny = ["127.0.0.0/8"]

[[routes]]
name = "internal"
match = {{ path_prefix = "/", headers = {{ x-internal = "1" }} }}
upstream = "app"
deny = ["127.0.0.0/8"]

[[routes]]
name = "rest"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
endpoints = ["{}"]
"#,
        rec.addr
    )
}

/// A request as the backend received it.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    /// The request line.
    pub line: String,
    /// Header lines, names lower-cased, sorted (the gateway's random X-Request-Id as `<id>`).
    pub headers: Vec<String>,
    /// The body exactly as framed on the wire.
    pub body: Vec<u8>,
}

/// Splits recorded bytes into request line, headers and body.
pub fn seen(raw: &[u8]) -> Seen {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let line = lines.next().unwrap_or("").to_string();
    let mut headers: Vec<String> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            let n = n.to_ascii_lowercase();
            let v = v.trim();
            if n == "x-request-id" && v.len() == 32 {
                format!("{n}: <id>")
            } else {
                format!("{n}: {v}")
            }
        })
        .collect();
    headers.sort();
    Seen {
        line,
        headers,
        body: raw[head_end..].to_vec(),
    }
}

/// What a plain GET from 127.0.0.1 looks like upstream: `line`, Host `host` plus the gateway's
/// own fields, then `extra` header lines.
pub fn plain(line: &str, host: &str, extra: &[&str], body: &[u8]) -> Seen {
    let mut headers: Vec<String> = vec![
        format!("host: {host}"),
        "x-request-id: <id>".into(),
        "x-forwarded-for: 127.0.0.1".into(),
        "x-forwarded-proto: http".into(),
        format!("x-forwarded-host: {host}"),
        "x-real-ip: 127.0.0.1".into(),
    ];
    headers.extend(extra.iter().map(|s| s.to_string()));
    headers.sort();
    Seen {
        line: line.to_string(),
        headers,
        body: body.to_vec(),
    }
}

/// Takes what the recorder received (waiting up to 1 s for `n` requests) and checks it is
/// exactly `want`, in order.
pub async fn expect(rec: &Recorder, want: &[Seen], case: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while rec.requests().len() < want.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got: Vec<Seen> = rec.requests().iter().map(|r| seen(r)).collect();
    rec.clear();
    assert_eq!(got, want, "{case}: what the backend received");
}
