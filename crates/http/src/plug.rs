//! How features plug into the data path without the data path knowing them. The crate graph
//! enforces the direction: `scalegate-features` (the cache, queued routes, fan-out, shared rate
//! limits) depends on this crate; this crate depends on no feature and no shared-state backend.
//!
//! - A route may have a [`RouteHandler`] that serves its admitted requests in place of sending
//!   them straight upstream (the cache, a queue); it goes upstream itself through
//!   [`crate::proxy::origin`].
//! - A snapshot may have a [`BeforeRouting`] handler that answers some requests before routing
//!   (fan-out subscriptions), and an [`UpgradeService`] serves what a 101 it sent leaves open.
//! - A route's rate limit may be counted across instances by a [`SharedCounter`].
//! - [`Plugins::build`] makes them for each config a [`crate::Gateway`] applies, from the old
//!   snapshot's so that what must survive a reload does.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use http::Response;
use http::request::Parts;
use hyper::body::Incoming;
use scalegate_core::admission::{Gcra, RateDecision};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::RespBody;
use crate::error::ProxyError;
use crate::gateway::{Gateway, Snapshot};
use crate::proxy::{Admitted, Completion, ConnCtx};
use crate::router::Route;
use crate::spec::GatewaySpec;

/// A boxed future that may be sent between threads.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What serving a routed request gives: the response (its body carries the completion), or the
/// outcome and the completion back, for the request path's one exit to answer.
pub type Served = Result<Response<RespBody>, (ProxyError, Completion)>;

/// A routed, admitted request handed to a [`RouteHandler`].
#[derive(Debug)]
pub struct Dispatch<'a> {
    /// The client connection.
    pub ctx: &'a Arc<ConnCtx>,
    /// The config in force for this request.
    pub snap: &'a Arc<Snapshot>,
    /// Its route.
    pub route: &'a Arc<Route>,
    /// What admission decided.
    pub admitted: Admitted,
}

/// Serves a route's admitted requests in place of sending them straight upstream.
pub trait RouteHandler: Send + Sync + Debug + 'static {
    /// Serves one request.
    fn serve<'a>(
        &'a self,
        d: Dispatch<'a>,
        parts: Parts,
        body: Incoming,
        done: Completion,
    ) -> BoxFut<'a, Served>;

    /// Whether protocol upgrades (WebSocket) go through it too; when not, they go straight
    /// upstream (an upgrade leaves HTTP: nothing to cache).
    fn takes_upgrades(&self) -> bool;
}

/// Answers some requests before routing (fan-out subscription handshakes).
pub trait BeforeRouting: Send + Sync + Debug + 'static {
    /// What it answers this request as (a topic), if it answers it at all.
    fn claims(&self, listener: &str, path: &str) -> Option<String>;

    /// Answers a request it claimed.
    fn answer<'a>(
        &'a self,
        ctx: &'a Arc<ConnCtx>,
        snap: &'a Snapshot,
        claim: String,
        parts: &'a mut Parts,
    ) -> BoxFut<'a, Response<RespBody>>;
}

/// A client connection's bytes, whatever carries them (plain TCP, TLS, hyper's upgrade).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serves what a client connection becomes after a 101 the gateway answered itself.
pub trait UpgradeService: Send + Debug + 'static {
    /// Serves `client` until it ends or `stop` resolves (the gateway shuts down).
    fn serve<'a>(self: Box<Self>, client: Box<dyn Io + 'a>, stop: BoxFut<'a, ()>)
    -> BoxFut<'a, ()>;
}

/// Counts a route's rate limit across gateway instances.
pub trait SharedCounter: Send + Sync + Debug + 'static {
    /// The decision for key `key` of route `route` under `gcra`; None when the shared store
    /// does not answer in time (the route's own limiter decides then).
    fn check<'a>(
        &'a self,
        route: &'a str,
        key: u64,
        gcra: &'a Gcra,
    ) -> BoxFut<'a, Option<RateDecision>>;
}

/// The features of one snapshot.
#[derive(Debug, Default)]
pub struct Built {
    /// Answers some requests before routing.
    pub before_routing: Option<Arc<dyn BeforeRouting>>,
    /// Route name → its handler.
    pub handlers: HashMap<String, Arc<dyn RouteHandler>>,
    /// Counts shared rate limits (given to routes whose limit is shared).
    pub shared: Option<Arc<dyn SharedCounter>>,
    /// The features' own state, kept in the snapshot for the next build and for the admin API.
    pub state: Option<Arc<dyn Any + Send + Sync>>,
}

/// Makes the features of each config the gateway applies.
pub trait Plugins: Send + Sync {
    /// The features for `spec`, reusing `old`'s where their settings stay. `gateway` is for
    /// background tasks that send requests (queued routes' deliveries).
    fn build(&self, gateway: &Weak<Gateway>, spec: &GatewaySpec, old: &Snapshot) -> Built;

    /// The snapshot built with them is in force (a replaced fan-out hub retires now).
    fn applied(&self, _old: &Snapshot, _new: &Snapshot) {}
}

/// No features: the data path alone (tests, and configs that use none).
#[derive(Debug, Default)]
pub struct NoPlugins;

impl Plugins for NoPlugins {
    fn build(&self, _: &Weak<Gateway>, _: &GatewaySpec, _: &Snapshot) -> Built {
        Built::default()
    }
}
