//! Forwarding: the body limit, bulkheads, the request body, and the attempt loop (pick an
//! endpoint, rewrite the head, send, decide on a retry).

use http::Request;
use hyper::body::Incoming;

use crate::body::UpstreamBody;
use scalegate_core::retry::{AttemptOutcome, Decision, GiveUp, RequestFacts};

use crate::clock;
use crate::error::ProxyError;
use crate::gateway::Snapshot;
use crate::headers;
use crate::retry;
use crate::router::Route;
use crate::spec::UpstreamProtocol;
use crate::tunnel;

use super::respond::{
    content_length, copy_head, pick_request, record_outcome, respond, rewrite_request,
};
use super::send::{HeadWait, Outgoing, connect, send, send_upgrade};
use super::{Admitted, Completion, ConnCtx};

/// Sends the request to an endpoint of the route's upstream, retrying as the route allows;
/// the response head and body, or what went wrong.
///
/// Not an `async fn`, which would keep a copy of each argument beside the argument (see
/// [`send`]).
#[allow(clippy::manual_async_fn)] // on purpose: an async fn would hold each argument twice
pub(super) fn forward(
    ctx: &ConnCtx,
    snap: &Snapshot,
    route: &Route,
    mut parts: http::request::Parts,
    body: Option<Incoming>,
    admitted: Admitted,
    done: &mut Completion,
) -> impl Future<Output = Result<(http::response::Parts, UpstreamBody), ProxyError>> {
    async move {
        let limit = route.spec.max_body_bytes;
        if content_length(&parts.headers).is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge);
        }
        let (prio, client) = (admitted.prio, admitted.client);
        // A canary switch sends its share of the route's traffic to the second upstream.
        let canary_upstream = admitted
            .canary
            .filter(|(_, pct)| rand::random_range(0..100u8) < *pct)
            .and_then(|(name, _)| snap.upstream(&name).cloned());
        let upstream = match &canary_upstream {
            Some(u) => u,
            None => snap
                .upstreams
                .get(route.upstream)
                .ok_or(ProxyError::NoHealthyEndpoint)?,
        };
        let retry = route.spec.retry.as_ref();
        // Only a handled route's (a queue's deliveries) carry a stored body: others skip the lookup.
        let stored = match route.handler {
            Some(_) => parts.extensions.remove::<crate::body::StoredBody>(),
            None => None,
        };
        // One clock read for the body's deadline and, when the body is whole at once, the route's
        // and the first attempt's (clock reads were 1.5% of an HTTP/2 request's CPU).
        let mut at = tokio::time::Instant::now();
        // The client's body must arrive within the listener's body timeout from the request's
        // arrival; that time is the client's, never counted against the upstream.
        let body_deadline = retry::BodyDeadline {
            timeout: ctx.body_timeout,
            at: at
                + ctx
                    .body_timeout
                    .saturating_sub(clock::tick_at(at).since(done.started())),
        };
        let (mut body, facts) = match stored {
            // A queued job's body, kept whole by the queue: replayable like any kept body.
            Some(stored) => retry::stored_body(&parts.method, &parts.headers, stored.0, retry),
            None => {
                // A body may take time to arrive: the route's deadline starts when it has.
                let waits = body
                    .as_ref()
                    .is_some_and(|b| !http_body::Body::is_end_stream(b));
                let h = &parts.headers;
                let prepared =
                    retry::prepare_body(&parts.method, h, body, retry, limit, body_deadline)
                        .await?;
                if waits {
                    at = tokio::time::Instant::now();
                }
                prepared
            }
        };
        // Bulkheads: the route's own cap first, then the upstream's. Taken once a body that is
        // read whole has arrived: a client sending slowly holds no place of the upstream's.
        // A wait for a place is the gateway's, not the upstream's: the route's deadline starts
        // after it.
        for (slot, bulkhead) in [(0, &route.bulkhead), (1, &upstream.bulkhead)] {
            let Some(bulkhead) = bulkhead else { continue };
            let waited = tokio::time::Instant::now();
            let admitted = match bulkhead.is_full() {
                false => bulkhead.acquire(prio).await,
                // Places held by HTTP/2 streams whose clients stopped taking their responses,
                // on any worker (the bulkhead is shared), give way (h2_stall.rs).
                true => {
                    let streams = &ctx.gateway.h2_streams;
                    let wait = bulkhead.acquire(prio);
                    Box::pin(crate::h2_stall::reclaiming(streams, None, wait)).await
                }
            };
            let admitted_at = tokio::time::Instant::now();
            route
                .metrics
                .queue_time
                .observe((admitted_at - waited).as_secs_f64());
            match admitted {
                Ok(permit) => {
                    done.permits[slot] = Some(permit);
                    at = at.max(admitted_at);
                }
                Err(shed) => {
                    route.metrics.shed(shed.as_str(), prio.as_str());
                    return Err(ProxyError::Shed(shed.as_str()));
                }
            }
        }
        let streaming = body.streams();
        let deadline = at + route.spec.request_timeout;
        let deadline = parts
            .extensions
            .get::<super::WaitedSince>()
            .map_or(deadline, |w| deadline.min(w.0 + route.spec.request_timeout));
        if let Some(b) = &route.budget {
            b.deposit(clock::tick_at(at));
        }
        let upgrade = match upstream.spec.protocol {
            UpstreamProtocol::Http2 => None,
            _ => parts
                .extensions
                .get::<tunnel::Requested>()
                .map(|r| r.0.clone()),
        };
        let mut pick_req = pick_request(upstream, &parts, client);
        let mut template = Some(parts);
        let mut attempt = 1;
        loop {
            let now = clock::tick_at(at);
            let pick = upstream
                .set
                .pick(&pick_req, now, &mut rand::rng())
                .ok_or(ProxyError::NoHealthyEndpoint)?;
            let endpoint = upstream
                .endpoints
                .get(pick.index)
                .ok_or(ProxyError::NoHealthyEndpoint)?
                .clone();
            let load = endpoint.state.start_request();
            let try_timeout = retry
                .and_then(|r| r.per_try_timeout)
                .map_or(route.spec.request_timeout, |t| {
                    t.min(route.spec.request_timeout)
                });
            let try_deadline = deadline.min(at + try_timeout);
            log_attempt(done, upstream, &endpoint, attempt);
            // The connection first: until there is one nothing of the request has left, so when
            // none can be had the head and the body (even one that streams) can go elsewhere.
            let lease = match upgrade {
                Some(_) => None,
                None => Some(connect(ctx, route, &endpoint, now, false, streaming).await),
            };
            let untouched = matches!(lease, Some(Err(_)));
            let sent = match lease {
                Some(Err(e)) => Err(e),
                lease => {
                    let to = Attempt {
                        ctx,
                        route,
                        upstream,
                        endpoint: &endpoint,
                        client: client.ip(),
                        upgrade: upgrade.as_ref(),
                    };
                    // The last possible attempt takes the head itself; earlier ones take a copy.
                    let last = retry.is_none_or(|r| attempt >= r.policy.attempts);
                    let wait = (try_timeout, try_deadline, body_deadline.at + try_timeout);
                    // The request is built in the call: held in a local, it would keep its room in
                    // this future beside the copy `send` holds.
                    match lease {
                        Some(Ok(lease)) => {
                            let out = to.outgoing(&mut template, &mut body, last, wait, done)?;
                            send(ctx, route, &endpoint, lease, out, streaming).await
                        }
                        // Boxed: a rare path whose handshake future would otherwise size every
                        // request's.
                        _ => {
                            let req = to.outgoing(&mut template, &mut body, last, wait, done)?.req;
                            Box::pin(send_upgrade(ctx, route, &endpoint, req, try_deadline)).await
                        }
                    }
                }
            };

            let outcome = match &sent {
                Ok((resp, _)) => Some(AttemptOutcome::Status(
                    resp.status().as_u16(),
                    retry::retry_after(resp.headers()),
                )),
                Err(e) => retry::outcome_of_error(e),
            };
            let decision = match (retry, outcome) {
                (Some(r), Some(o)) if template.is_some() => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    // A body nothing was taken from can go again, whatever its kind.
                    let facts = RequestFacts {
                        replayable: facts.replayable || untouched,
                        ..facts
                    };
                    let d =
                        r.policy
                            .decide(attempt, o, facts, true, remaining, rand::random::<f64>());
                    match (d, &route.budget) {
                        (Decision::Retry(_), Some(b)) if !b.try_withdraw(clock::now()) => {
                            route.metrics.retries_denied.inc();
                            Decision::GiveUp(GiveUp::Budget)
                        }
                        _ => d,
                    }
                }
                _ => Decision::GiveUp(GiveUp::NotRetryable),
            };
            let Decision::Retry(wait) = decision else {
                done.hold_endpoint(load);
                return respond(upstream, &endpoint, pick, now, sent, done);
            };
            // Abandon this attempt: count its failure against the endpoint, then try another.
            let failed = match &sent {
                Ok(_) => true,
                Err(e) => e.blames_endpoint(),
            };
            if failed {
                record_outcome(upstream, pick.index, false, clock::now());
            }
            drop(sent);
            drop(load);
            route.metrics.retries.inc();
            tracing::debug!(route = %route.spec.name, endpoint = %endpoint.addr, attempt, ?outcome, "retrying");
            pick_req.tried.insert(pick.index);
            attempt += 1;
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            at = tokio::time::Instant::now();
        }
    }
}

/// Names the attempt in the access log (before its connection is made, so that an attempt
/// whose connect fails is named too): upstream, endpoint and attempt number.
fn log_attempt(
    done: &mut Completion,
    upstream: &crate::upstream::Upstream,
    endpoint: &crate::upstream::HttpEndpoint,
    attempt: u32,
) {
    if let Some(log) = done.log_mut() {
        log.upstream(&upstream.spec.name, &endpoint.addr);
        log.attempts(attempt);
    }
}

/// Where an attempt goes: what its request head is rewritten for.
struct Attempt<'a> {
    ctx: &'a ConnCtx,
    route: &'a Route,
    upstream: &'a crate::upstream::Upstream,
    endpoint: &'a crate::upstream::HttpEndpoint,
    client: std::net::IpAddr,
    upgrade: Option<&'a http::HeaderValue>,
}

impl Attempt<'_> {
    /// The attempt's request and the rule of its wait for the response head: the head (the
    /// template's copy, or the template itself on the last attempt or when the body cannot go
    /// twice) rewritten for the endpoint, its body framed (or the upgrade restored), and the
    /// request id it carries named in the access log.
    fn outgoing(
        &self,
        template: &mut Option<http::request::Parts>,
        body: &mut retry::BodySource,
        last: bool,
        (try_timeout, try_deadline, stalled): (
            std::time::Duration,
            tokio::time::Instant,
            tokio::time::Instant,
        ),
        done: &mut Completion,
    ) -> Result<Outgoing, ProxyError> {
        let Some((req_body, body_sent)) = body.for_attempt() else {
            return Err(ProxyError::UpstreamReset);
        };
        let mut head = match template {
            Some(t) if !last && body.replayable() => copy_head(t),
            _ => template.take().ok_or(ProxyError::UpstreamReset)?,
        };
        let protocol = self.upstream.spec.protocol;
        rewrite_request(
            &mut head,
            self.ctx,
            self.client,
            &self.route.spec,
            protocol,
            self.endpoint,
        );
        match self.upgrade {
            Some(upgrade) => tunnel::restore(&mut head.headers, upgrade.clone()),
            // A body on GET/HEAD is forwarded whatever its framing (headers.rs).
            None => headers::frame_body(&mut head, protocol, &req_body),
        }
        if let Some(log) = done.log_mut()
            && let Some(id) = head.headers.get(&headers::X_REQUEST_ID)
            && let Ok(id) = id.to_str()
        {
            log.request_id(id);
        }
        let wait = match body_sent {
            // The body is still arriving: the route timeout starts once it has passed whole, or
            // once the client's time for it is over (an upstream that stopped reading it).
            Some(sent) => HeadWait::AfterBody(Some(sent), try_timeout, stalled),
            None => HeadWait::Until(try_deadline),
        };
        Ok(Outgoing {
            req: Request::from_parts(head, req_body),
            wait,
        })
    }
}
