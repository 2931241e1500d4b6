//! A stored request: what is needed to send it again later, and its wire form in JetStream
//! (a length-prefixed JSON head, then the body as it came).

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};

/// Hop-by-hop and framing headers are not stored: the delivery sets its own.
const NOT_STORED: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// One queued request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id (the client's Idempotency-Key when it sent one, so a resent request is the
    /// same job).
    pub id: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// End-to-end request headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The client's address (X-Forwarded-For is built from it at delivery).
    pub peer: String,
    /// Body.
    #[serde(skip)]
    pub body: Bytes,
}

impl Job {
    /// A job for a request.
    pub fn new(parts: &http::request::Parts, peer: SocketAddr, body: Bytes) -> Job {
        let id = parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty() && k.len() <= 128)
            .map_or_else(new_id, |k| format!("ik-{k}"));
        let headers = parts
            .headers
            .iter()
            .filter(|(n, _)| !NOT_STORED.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        Job {
            id,
            method: parts.method.as_str().to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            headers,
            peer: peer.to_string(),
            body,
        }
    }

    /// The request head to deliver, for delivery number `attempt` (1-based).
    pub fn head(&self, attempt: u32) -> Option<http::request::Parts> {
        let mut req = http::Request::new(());
        *req.method_mut() = Method::from_bytes(self.method.as_bytes()).ok()?;
        *req.uri_mut() = self.uri.parse::<Uri>().ok()?;
        let h = req.headers_mut();
        for (n, v) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                h.append(n, v);
            }
        }
        h.insert(
            "x-scalegate-job-id",
            HeaderValue::try_from(self.id.as_str()).ok()?,
        );
        h.insert("x-scalegate-attempt", HeaderValue::from(attempt));
        h.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(self.body.len()),
        );
        Some(req.into_parts().0)
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Wire form: 4-byte big-endian head length, JSON head, body.
    pub fn encode(&self) -> Option<Bytes> {
        let head = serde_json::to_vec(self).ok()?;
        let mut b = BytesMut::with_capacity(4 + head.len() + self.body.len());
        b.put_u32(u32::try_from(head.len()).ok()?);
        b.put_slice(&head);
        b.put_slice(&self.body);
        Some(b.freeze())
    }

    /// Parses the wire form.
    pub fn decode(b: &Bytes) -> Option<Job> {
        let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let mut job: Job = serde_json::from_slice(b.get(4..4 + len)?).ok()?;
        job.body = b.slice(4 + len..);
        Some(job)
    }
}

/// 128 random bits in hex.
fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_survives_its_wire_form_and_rebuilds_the_request() {
        let req = http::Request::post("http://x/hooks/a?b=1")
            .header("content-type", "application/json")
            .header("connection", "keep-alive")
            .header("idempotency-key", "abc")
            .body(())
            .expect("request");
        let job = Job::new(
            &req.into_parts().0,
            "10.1.2.3:5555".parse().expect("addr"),
            Bytes::from_static(b"{\"a\":1}"),
        );
        assert_eq!(job.id, "ik-abc");
        let back = Job::decode(&job.encode().expect("encode")).expect("decode");
        assert_eq!(back, job);
        assert_eq!(back.body, job.body);
        let head = back.head(2).expect("head");
        assert_eq!(
            (head.method.as_str(), head.uri.to_string().as_str()),
            ("POST", "/hooks/a?b=1")
        );
        assert_eq!(head.headers["x-scalegate-attempt"], "2");
        assert_eq!(head.headers["content-length"], "7");
        assert!(head.headers.get("connection").is_none());
        assert_eq!(back.peer().to_string(), "10.1.2.3:5555");
    }
}
