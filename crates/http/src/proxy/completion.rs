//! A request's bookkeeping: what it holds and the outcome to record, ended exactly once by
//! `Drop` on every path (response body ended, the gateway's own answer, a client that left).

use std::sync::Arc;
use std::time::Duration;

use scalegate_core::Tick;
use scalegate_core::endpoint::EndpointLoad;

use crate::access_log::AccessRecord;
use crate::clock;
use crate::gateway::GlobalSlot;
use crate::metrics::RouteMetrics;
use crate::pool::Lease;
use crate::router::Route;

use super::ConnCtx;

/// Bookkeeping of one request: everything it holds (the global slot, bulkhead permits, the
/// upstream connection, the endpoint's load) and the outcome to record. Dropping it ends the
/// request exactly once, whatever the path: the response body ended, the gateway answered by
/// itself, or the client went away and hyper dropped the request's future.
#[derive(Debug)]
pub struct Completion {
    conn: Arc<ConnCtx>,
    pub(super) global: GlobalSlot,
    pub(super) permits: [Option<crate::bulkhead::Permit>; 2],
    /// The route, once the request has one (refusals before routing have none).
    route: Option<Arc<Route>>,
    started: Tick,
    status: u16,
    /// Whether the upstream body was read to its end (the connection may carry another request).
    complete: bool,
    /// A gRPC call from an HTTP/2 client: a response that breaks off ends with grpc-status
    /// trailers instead of a stream reset.
    grpc: bool,
    bytes: u64,
    /// The response body broke off after the head was sent (see [`Self::cut_short`]).
    cut: bool,
    lease: Option<Lease>,
    endpoint: Option<EndpointLoad>,
    log: Option<Box<AccessRecord>>,
    /// Counted in its route's request metrics (requests, in flight, duration, incomplete): all
    /// but a cache's own refresh, which no client waits for.
    counted: bool,
}

impl Completion {
    /// Starts the bookkeeping of a request that has just arrived: counts it on the client
    /// connection until the completion drops; [`Self::set_route`] counts it on its route.
    pub(crate) fn start(
        conn: &Arc<ConnCtx>,
        started: Tick,
        log: Option<Box<AccessRecord>>,
    ) -> Completion {
        conn.activity.begin();
        Completion {
            conn: conn.clone(),
            global: GlobalSlot::default(),
            permits: [None, None],
            route: None,
            started,
            status: 0,
            complete: false,
            grpc: false,
            bytes: 0,
            cut: false,
            lease: None,
            endpoint: None,
            log,
            counted: true,
        }
    }

    /// Bookkeeping for a request the gateway makes on its own (a background cache refresh, a
    /// queued job's delivery): metrics count it, no access log line.
    pub fn background(conn: &Arc<ConnCtx>, route: &Arc<Route>) -> Completion {
        let mut done = Completion::start(conn, clock::now(), None);
        done.set_route(route);
        done
    }

    /// Bookkeeping for a cache's own trip to the origin (a background refresh, a whole-object
    /// fill behind a range request): no client waits for its answer, so the route's request
    /// metrics do not count it (a probe's finding: refreshes showed as 5xx and `aborted`
    /// requests no client made); the cache's own metrics do.
    pub fn cache_refresh(conn: &Arc<ConnCtx>, route: &Arc<Route>) -> Completion {
        let mut done = Completion::start(conn, clock::now(), None);
        done.counted = false;
        done.route = Some(route.clone());
        done
    }

    /// The request has a route: counted in flight on it from now on, and recorded under it.
    pub(crate) fn set_route(&mut self, route: &Arc<Route>) {
        route.metrics.in_flight.inc();
        self.log_route(&route.spec.name);
        self.route = Some(route.clone());
    }

    /// Names what served the request in its access log line.
    pub(crate) fn log_route(&mut self, name: &str) {
        if let Some(log) = self.log.as_mut() {
            log.route(name);
        }
    }

    /// Marks a gRPC call from an HTTP/2 client (see [`Self::grpc`]).
    pub(crate) fn set_grpc(&mut self, grpc: bool) {
        self.grpc = grpc;
    }

    /// The access log record, while the request has one.
    pub(super) fn log_mut(&mut self) -> Option<&mut AccessRecord> {
        self.log.as_deref_mut()
    }

    /// Holds the request's connection until it ends.
    pub(super) fn hold_lease(&mut self, lease: Lease) {
        self.lease = Some(lease);
    }

    /// Holds the endpoint's load count until the request ends.
    pub(super) fn hold_endpoint(&mut self, load: EndpointLoad) {
        self.endpoint = Some(load);
    }

    /// When the request arrived.
    pub(super) fn started(&self) -> Tick {
        self.started
    }

    /// The metrics the request is recorded in: its route's, or those of requests refused
    /// before routing.
    fn metrics(&self) -> &RouteMetrics {
        match &self.route {
            Some(r) => &r.metrics,
            None => &self.conn.gateway.unrouted,
        }
    }

    /// Sets the status recorded when the request ends.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// The longest wait between two reads of the upstream body (the route's `read_timeout`).
    pub fn read_timeout(&self) -> Duration {
        self.route
            .as_ref()
            .map_or(Duration::from_secs(60), |r| r.spec.read_timeout)
    }

    /// Whether a response that breaks off should end with grpc-status trailers (a gRPC call
    /// from an HTTP/2 client) instead of a stream reset.
    pub fn grpc(&self) -> bool {
        self.grpc
    }

    /// Counts body bytes sent to the client.
    pub fn count_bytes(&mut self, n: u64) {
        self.bytes += n;
    }

    /// Ends the request's exchange with its upstream, not the request: the connection goes back
    /// to the pool when `complete` (its response was read to its end), else closes, and the
    /// endpoint's load count ends. The request can then be sent again.
    pub fn end_exchange(&mut self, complete: bool) {
        if let Some(lease) = self.lease.take()
            && complete
        {
            lease.release(clock::now());
        }
        self.endpoint = None;
    }

    /// Ends the request; `complete` says whether the upstream body was read to its end, so the
    /// connection can carry another request. Dropping the completion without calling this
    /// records an abandoned request (the connection is closed).
    pub fn finish(mut self, complete: bool) {
        self.complete = complete;
    }

    /// Ends a request whose response body broke off after its head was sent (the upstream
    /// broke or went silent past `read_timeout`): its status still says success, so the access
    /// log marks it `incomplete` and the route counts it (found from outside: a gRPC stream
    /// cut mid-body was logged and counted as a plain 200).
    pub fn cut_short(mut self) {
        self.cut = true;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let now = clock::now();
        if let Some(lease) = self.lease.take()
            && self.complete
        {
            lease.release(now);
        }
        self.endpoint = None;
        self.permits = [None, None];
        self.global = GlobalSlot::default();
        self.conn.activity.end();
        let elapsed = now.since(self.started);
        if self.counted {
            self.conn.h2_cancels.ended(self.status != 0);
            let m = self.metrics();
            if self.route.is_some() {
                m.in_flight.dec();
            }
            m.count(self.status);
            if self.cut {
                m.incomplete.inc();
            }
            m.duration.observe(elapsed.as_secs_f64());
        }
        if let Some(mut log) = self.log.take() {
            if self.cut {
                log.incomplete();
            }
            log.write(self.status, self.bytes, elapsed);
        }
    }
}
