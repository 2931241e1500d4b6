//! Plain HTTP sent to a TLS listener: answered with a readable 400, as nginx does, instead of a
//! TLS alert that a person with `curl http://` or a misconfigured health check cannot read.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain\r\n\
content-length: 48\r\n\
connection: close\r\n\
\r\n\
A plain HTTP request was sent to an HTTPS port.\n";

/// How long the refused connection's request is read and thrown away after the answer, so the
/// close is a FIN the client reads the answer before, not a reset that may discard it.
const DRAIN: Duration = Duration::from_secs(1);

/// Whether the connection's first byte is where a TLS ClientHello's record type (22) should
/// be but an HTTP method's first letter is; such a connection has been answered and closed.
/// Waits until `deadline` for the byte; a connection that sends nothing by then is left to
/// the handshake (which ends with the same deadline).
pub async fn refused(stream: &mut TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut first = [0u8; 1];
    let plain = matches!(
        tokio::time::timeout_at(deadline, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0].is_ascii_uppercase()
    );
    if plain {
        answer(stream).await;
    }
    plain
}

async fn answer(stream: &mut TcpStream) {
    if stream.write_all(ANSWER).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(DRAIN, async {
        while matches!(stream.read(&mut sink).await, Ok(1..)) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::ANSWER;

    #[test]
    fn the_answer_s_length_is_its_body_s() {
        let text = std::str::from_utf8(ANSWER).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
