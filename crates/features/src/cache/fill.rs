//! Copying a response body into the store as it streams to the client.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, StatusCode};

use super::flight::{self, FlightGuard};
use super::object::{Object, Timing};
use super::store::Store;
use http_body::Body as _;

use scalegate_http::body::{RespBody, Sink, Tee};

/// A fill in progress: what the object will be once its body has all passed.
pub struct Fill {
    /// The store it goes to.
    pub store: Arc<Store>,
    /// The response's Vary list.
    pub vary: Vec<HeaderName>,
    /// Status.
    pub status: StatusCode,
    /// Headers as stored.
    pub headers: HeaderMap,
    /// Its timing.
    pub timing: Timing,
    /// URL key.
    pub url: Arc<str>,
    /// Variant key.
    pub variant: String,
    /// The body so far.
    pub chunks: BytesMut,
    /// The most body bytes stored.
    pub limit: usize,
    /// When its request went to the origin (a purge after that wins over this fill).
    pub fetched: SystemTime,
    /// Released once the object is in (or abandoned), so followers look again.
    pub guard: FlightGuard,
}

impl Sink for Fill {
    fn data(&mut self, chunk: &Bytes) -> bool {
        if self.chunks.len() + chunk.len() > self.limit {
            // Too big: pass it through; the next request for the key goes forward alone.
            self.store.mark_pass(flight::key(&self.url, &self.variant));
            return false;
        }
        self.chunks.extend_from_slice(chunk);
        true
    }

    fn end(self: Box<Self>) {
        let me = *self;
        let obj = Arc::new(Object::new(
            me.status,
            me.headers,
            me.chunks.freeze(),
            me.timing,
            me.url,
            me.variant,
        ));
        me.store.insert(me.vary, obj, me.fetched);
        // The guard drops here, after the object is in: followers find it.
        drop(me.guard);
    }
}

/// Tees `body` into `sink`; an empty body is stored at once (it will never be polled).
pub fn tee(body: RespBody, sink: Box<dyn Sink>) -> RespBody {
    if body.is_end_stream() {
        sink.end();
        return body;
    }
    RespBody::Tee(Box::new(Tee {
        inner: body,
        sink: Some(sink),
    }))
}
