//! The wait for an attempt's response head, under the route timeout or, while the client's body
//! still streams, under the body's own timeout first.
//!
//! A hand-written future rather than an `async fn` over `select!` and `timeout`: it holds the
//! sending future and one timer once, where the `async fn` kept its argument and each branch's
//! copy side by side (1,824 bytes against about 450). Every request's future contains this one,
//! and is moved whole as each level of the request path starts (bench/RESULTS.md, session 14).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;
use crate::retry::BodySent;

/// How long an attempt waits for the response head.
pub(super) enum HeadWait {
    /// Until this instant (the body was whole before it was sent).
    Until(Instant),
    /// The body is still arriving from the client: until it has passed whole the client's body
    /// timeout runs (inside the body), then this long. `None` once it has passed. The instant
    /// bounds a body that never passes because the upstream stopped reading it (the client's
    /// own deadline is not watched while nobody reads): the body's deadline plus this long.
    AfterBody(Option<BodySent>, Duration, Instant),
}

impl HeadWait {
    /// Waits for `sending` (the response head) under this rule.
    pub(super) fn wait<F: Future>(&mut self, sending: F) -> Waiting<'_, F> {
        let deadline = match self {
            HeadWait::Until(deadline) => *deadline,
            // Reset when the body has passed.
            HeadWait::AfterBody(Some(_), _, stalled) => *stalled,
            HeadWait::AfterBody(None, timeout, _) => Instant::now() + *timeout,
        };
        Waiting {
            rule: self,
            sending,
            timer: tokio::time::sleep_until(deadline),
        }
    }
}

pin_project! {
    /// [`HeadWait::wait`]'s future: the head, or [`ProxyError::UpstreamTimeout`].
    pub(super) struct Waiting<'a, F> {
        rule: &'a mut HeadWait,
        #[pin]
        sending: F,
        #[pin]
        timer: Sleep,
    }
}

impl<F: Future> Future for Waiting<'_, F> {
    type Output = Result<F::Output, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The body first: one that failed is told here before the upstream's protocol reports
        // the break (over HTTP/2 as a reset, which would read as the endpoint's fault).
        if let HeadWait::AfterBody(body, timeout, _) = this.rule
            && let Some(sent) = body.as_mut()
        {
            match Pin::new(sent).poll(cx) {
                Poll::Ready(Ok(Err(fault))) => return Poll::Ready(Err(fault.into())),
                // Passed whole or given up on (the sender dropped): the route timeout starts.
                Poll::Ready(_) => {
                    *body = None;
                    this.timer.as_mut().reset(Instant::now() + *timeout);
                }
                Poll::Pending => {}
            }
        }
        if let Poll::Ready(head) = this.sending.poll(cx) {
            return Poll::Ready(Ok(head));
        }
        ready!(this.timer.poll(cx));
        Poll::Ready(Err(ProxyError::UpstreamTimeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_route_timeout_starts_when_the_body_has_passed() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        let stalled = started + Duration::from_secs(3600);
        let mut rule = HeadWait::AfterBody(Some(rx), Duration::from_secs(5), stalled);
        let body = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let _ = tx.send(Ok(()));
        });
        let out = rule.wait(std::future::pending::<()>()).await;
        assert!(matches!(out, Err(ProxyError::UpstreamTimeout)));
        assert_eq!(started.elapsed(), Duration::from_secs(65));
        assert!(matches!(rule, HeadWait::AfterBody(None, ..)));
        body.await.ok();
        // Waiting again (a stale connection replaced) does not wait for the body a second time.
        let again = Instant::now();
        let out = rule.wait(std::future::pending::<()>()).await;
        assert!(matches!(out, Err(ProxyError::UpstreamTimeout)));
        assert_eq!(again.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_failed_is_the_answer_even_when_the_send_failed_too() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stalled = Instant::now() + Duration::from_secs(3600);
        let mut rule = HeadWait::AfterBody(Some(rx), Duration::from_secs(5), stalled);
        let _ = tx.send(Err(crate::body::BodyFault::TooLarge));
        // The upstream's protocol reports the break as its own error at the same time.
        let out = rule.wait(async { "stream reset" }).await;
        assert!(matches!(out, Err(ProxyError::BodyTooLarge)));
    }

    /// Found from outside: an upstream that stopped reading a large body (and never answered)
    /// held the request until it closed, past every timeout: the client's body deadline is
    /// only watched while the body is read.
    #[tokio::test(start_paused = true)]
    async fn a_body_the_upstream_stopped_reading_times_out() {
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        let stalled = started + Duration::from_secs(65);
        let mut rule = HeadWait::AfterBody(Some(rx), Duration::from_secs(5), stalled);
        let out = rule.wait(std::future::pending::<()>()).await;
        assert!(matches!(out, Err(ProxyError::UpstreamTimeout)));
        assert_eq!(started.elapsed(), Duration::from_secs(65));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_before_the_deadline_is_returned() {
        let mut rule = HeadWait::Until(Instant::now() + Duration::from_secs(1));
        let out = rule.wait(async { 7 }).await;
        assert!(matches!(out, Ok(7)));
        let late = rule.wait(tokio::time::sleep(Duration::from_secs(2))).await;
        assert!(matches!(late, Err(ProxyError::UpstreamTimeout)));
    }
}
