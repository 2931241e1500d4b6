//! The optional JSON access log: one line per request on stdout, written when the response body
//! ends so that bytes and duration are final.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::headers::X_REQUEST_ID;

/// The fields of one access log line gathered along the request path.
#[derive(Debug, serde::Serialize)]
pub struct AccessRecord {
    method: String,
    path: String,
    client: String,
    route: String,
    request_id: String,
    upstream: String,
    endpoint: String,
    status: u16,
    attempts: u32,
    bytes: u64,
    duration_ms: f64,
    /// The body broke off after the head was sent (the upstream broke or went silent past
    /// `read_timeout`): the status alone would say the request succeeded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    incomplete: bool,
}

impl AccessRecord {
    /// Starts a record from the request head.
    pub fn new(parts: &http::request::Parts, peer: SocketAddr, route: &str) -> Self {
        AccessRecord {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            client: peer.ip().to_string(),
            route: route.to_string(),
            request_id: parts
                .headers
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            upstream: String::new(),
            endpoint: String::new(),
            status: 0,
            attempts: 0,
            bytes: 0,
            duration_ms: 0.0,
            incomplete: false,
        }
    }

    /// Notes that the response's body broke off after its head was sent.
    pub fn incomplete(&mut self) {
        self.incomplete = true;
    }

    /// Notes what serves the request (its route's name).
    pub fn route(&mut self, route: &str) {
        self.route = route.to_string();
    }

    /// Notes the upstream and endpoint chosen.
    pub fn upstream(&mut self, upstream: &str, endpoint: &str) {
        self.upstream = upstream.to_string();
        self.endpoint = endpoint.to_string();
    }

    /// Notes how many attempts the request has taken so far.
    pub fn attempts(&mut self, n: u32) {
        self.attempts = n;
    }

    /// Notes the request id once the gateway has assigned it.
    pub fn request_id(&mut self, id: &str) {
        self.request_id = id.to_string();
    }

    /// Completes and writes the line.
    pub fn write(mut self, status: u16, bytes: u64, elapsed: Duration) {
        self.status = status;
        self.bytes = bytes;
        self.duration_ms = elapsed.as_secs_f64() * 1000.0;
        if let Ok(mut line) = serde_json::to_vec(&self) {
            line.push(b'\n');
            let _ = std::io::stdout().lock().write_all(&line);
        }
    }
}
