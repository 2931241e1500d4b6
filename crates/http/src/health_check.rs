//! Active health checks: one probe loop per endpoint of every upstream with `health` set, kept
//! in step with the snapshot by [`Supervisor::reconcile`]. Results feed the endpoint's
//! [`scalegate_core::HealthCounter`]; flips are logged and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use scalegate_core::{HealthPolicy, Transition};
use tokio::task::JoinHandle;

use crate::clock;
use crate::gateway::Snapshot;
use crate::upstream::HttpEndpoint;

/// A running probe loop: the policy and endpoint it probes.
type Probe = (HealthPolicy, Arc<HttpEndpoint>, JoinHandle<()>);

/// Probe loops by (upstream, endpoint address).
#[derive(Debug, Default)]
pub struct Supervisor {
    running: HashMap<(String, String), Probe>,
}

impl Supervisor {
    /// Starts probes for new endpoints or changed policies, stops those no longer wanted. An
    /// endpoint whose upstream dropped its checks is put back in rotation.
    pub fn reconcile(&mut self, snap: &Snapshot) {
        let mut wanted = HashMap::new();
        for u in &snap.upstreams {
            for ep in &u.endpoints {
                match &u.spec.health {
                    Some(policy) => {
                        wanted.insert(
                            (u.spec.name.clone(), ep.addr.clone()),
                            (policy.clone(), ep.clone()),
                        );
                    }
                    None => ep.state.reset_probe(),
                }
            }
        }
        self.running.retain(|key, (policy, ep, task)| {
            let keep = wanted
                .get(key)
                .is_some_and(|(p, e)| p == policy && Arc::ptr_eq(e, ep));
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, (policy, ep)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(probe_loop(key.0.clone(), ep.clone(), policy.clone()));
            self.running.insert(key, (policy, ep, task));
        }
    }

    /// Stops every probe.
    pub fn stop(&mut self) {
        for (_, (_, _, task)) in self.running.drain() {
            task.abort();
        }
    }
}

async fn probe_loop(upstream: String, ep: Arc<HttpEndpoint>, policy: HealthPolicy) {
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = clock::now();
        let ok = matches!(
            tokio::time::timeout(policy.timeout, probe(&ep, &policy.path, policy.timeout)).await,
            Ok(true)
        );
        if ok {
            let now = clock::now();
            let rtt = now.since(sent);
            ep.state
                .observe_probe_latency(rtt, now, scalegate_core::ewma::DECAY);
        }
        match ep.state.record_probe(ok, &policy, clock::now()) {
            Some(Transition::Healthy) => {
                ep.metrics.became_healthy.inc();
                tracing::info!(upstream = %upstream, endpoint = %ep.addr, "endpoint healthy");
            }
            Some(Transition::Unhealthy) => {
                ep.metrics.became_unhealthy.inc();
                tracing::warn!(upstream = %upstream, endpoint = %ep.addr, "endpoint unhealthy");
            }
            None => {}
        }
    }
}

/// One probe: GET `path` on a fresh connection (TLS and HTTP/2 when the upstream uses them);
/// any 2xx or 3xx is healthy.
async fn probe(ep: &HttpEndpoint, path: &str, timeout: Duration) -> bool {
    let req = Request::get(path)
        .header(header::USER_AGENT, "scalegate-health")
        .body(Empty::<Bytes>::new());
    let Ok(req) = req else { return false };
    crate::oneshot::status(ep, req, timeout)
        .await
        .is_some_and(|s| s.is_success() || s.is_redirection())
}
