//! The typed per-request context the phases share, and the one exit every request leaves by.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Response, Version};

use crate::access_log::AccessRecord;
use crate::admission::RateStatus;
use crate::body::RespBody;
use crate::clock;
use crate::error::{ProxyError, is_grpc};
use crate::fallback;
use crate::gateway::Snapshot;
use crate::headers;
use crate::router::{Route, RouteKey};

use super::{Completion, ConnCtx};

/// One request on its way through the phases: what they learn of it, kept in typed fields
/// rather than the request's extensions, and its [`Completion`] until the response body takes
/// it.
pub(crate) struct Exchange {
    /// The client connection.
    pub(crate) ctx: Arc<ConnCtx>,
    /// The config in force when the request arrived; used to its end.
    pub(crate) snap: Arc<Snapshot>,
    /// The client's address: the peer's, or the one trusted proxies forwarded (edge.rs).
    pub(crate) client: SocketAddr,
    grpc: bool,
    request_id: HeaderValue,
    route: Option<Arc<Route>>,
    rate: Option<RateStatus>,
    done: Option<Completion>,
}

impl Exchange {
    /// A request has arrived: its snapshot, its one X-Request-Id (every attempt, the access log
    /// and the client's copy carry it), and its bookkeeping, from now on.
    pub(crate) fn begin(ctx: Arc<ConnCtx>, parts: &mut http::request::Parts) -> Exchange {
        let started = clock::now();
        let snap = ctx.gateway.snapshot();
        let grpc = is_grpc(&parts.headers);
        let request_id = headers::ensure_request_id(&mut parts.headers);
        let client = SocketAddr::new(crate::edge::client_ip(&ctx, parts), ctx.peer.port());
        let log = snap
            .access_log
            .then(|| Box::new(AccessRecord::new(parts, client, "")));
        let mut done = Completion::start(&ctx, started, log);
        done.set_grpc(grpc && parts.version == Version::HTTP_2);
        Exchange {
            ctx,
            snap,
            client,
            grpc,
            request_id,
            route: None,
            rate: None,
            done: Some(done),
        }
    }

    /// The route serving the request (404 when none matches).
    pub(crate) fn route(&mut self, parts: &http::request::Parts) -> Result<Arc<Route>, ProxyError> {
        let route = self
            .snap
            .routes
            .find(&self.ctx.rules.load().name, &RouteKey::of(parts))
            .cloned()
            .ok_or(ProxyError::NoRoute)?;
        if let Some(done) = &mut self.done {
            done.set_route(&route);
        }
        self.route = Some(route.clone());
        Ok(route)
    }

    /// Names what serves a request that no route does (its access log line and metrics).
    pub(crate) fn log_as(&mut self, name: &str) {
        if let Some(done) = &mut self.done {
            done.log_route(name);
        }
    }

    /// Keeps the rate limit's verdict for the response's `RateLimit` headers.
    pub(crate) fn set_rate(&mut self, status: RateStatus) {
        self.rate = Some(status);
    }

    /// The bookkeeping, for the response body to carry.
    pub(crate) fn take_completion(&mut self) -> Completion {
        match self.done.take() {
            Some(done) => done,
            // Not reached: the phases take it once. A fresh one keeps the counts right anyway.
            None => Completion::start(&self.ctx, clock::now(), None),
        }
    }

    /// The bookkeeping back from a path that failed before a response could carry it.
    pub(crate) fn give_back(&mut self, done: Completion) {
        self.done = Some(done);
    }

    /// The one exit: the response, or the answer to what ended the request (the route's
    /// fallback where it applies), with the headers every answer carries. The bookkeeping still
    /// held here (every answer but an upstream's) is dropped with `self`, recording the request.
    pub(crate) fn respond(
        mut self,
        outcome: Result<Response<RespBody>, ProxyError>,
    ) -> Response<RespBody> {
        let mut resp = match outcome {
            Ok(resp) => resp,
            Err(e) => self.refusal(&e),
        };
        let h = resp.headers_mut();
        if let Some(rate) = &self.rate {
            rate.apply(h);
        }
        // The client gets the id to quote (an upstream's own id on the response is kept, and
        // like ours never indexed by HPACK: see `headers::ensure_request_id`).
        match h.entry(headers::X_REQUEST_ID.clone()) {
            http::header::Entry::Occupied(mut upstreams) => upstreams.get_mut().set_sensitive(true),
            http::header::Entry::Vacant(none) => {
                none.insert(self.request_id.clone());
            }
        }
        if let Some(route) = &self.route {
            route.spec.response_headers.apply(h);
        }
        resp
    }

    /// The gateway's answer to `e`, recorded with the status it means.
    fn refusal(&mut self, e: &ProxyError) -> Response<RespBody> {
        let fallback = self
            .route
            .as_ref()
            .filter(|_| fallback::applies(e))
            .and_then(|r| Some((r, r.spec.fallback.as_ref()?)));
        let (resp, status) = match fallback {
            Some((route, f)) => {
                route.metrics.fallbacks.inc();
                let resp = f.respond(e);
                let status = resp.status();
                (resp, status)
            }
            // A gRPC answer is a 200 with the status inside: count what happened.
            None => (local_reply(e, self.grpc), e.status()),
        };
        if let Some(done) = &mut self.done {
            done.set_status(status.as_u16());
            // The access log's bytes: the gateway's own answer is sent whole.
            done.count_bytes(resp.body().whole_len());
        }
        resp
    }
}

/// The gateway's own answer to a failure: a gRPC status for a gRPC call, an HTTP one otherwise.
pub(crate) fn local_reply(e: &ProxyError, grpc: bool) -> Response<RespBody> {
    if grpc {
        e.to_grpc_response()
    } else {
        e.to_response()
    }
}
