//! Message framing for the floor proxies (`floor_proxy`, `floor_proxy_uring`): the least parsing
//! an HTTP/1.1 relay needs to know where a message ends.

use std::io;

/// A request's total length once its head is complete (bodies by Content-Length only).
pub fn request_len(buf: &[u8]) -> io::Result<Option<usize>> {
    message_len(buf, true)
}

/// A response's total length once its head is complete (bodies by Content-Length only).
pub fn response_len(buf: &[u8]) -> io::Result<Option<usize>> {
    message_len(buf, false)
}

fn message_len(buf: &[u8], request: bool) -> io::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let (status, headers) = if request {
        let mut req = httparse::Request::new(&mut headers);
        (req.parse(buf), req.headers)
    } else {
        let mut resp = httparse::Response::new(&mut headers);
        (resp.parse(buf), resp.headers)
    };
    match status.map_err(io::Error::other)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(head) => Ok(Some(head + content_length(headers))),
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_whole_once_its_body_is_in() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(response_len(&resp[..10]).ok().flatten(), None);
        assert_eq!(response_len(resp).ok().flatten(), Some(resp.len()));
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(request_len(req).ok().flatten(), Some(req.len()));
    }
}
