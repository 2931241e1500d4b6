//! DNS discovery, on the control plane: upstreams with `dns = { name = "host:port" }` get one
//! endpoint per address the name resolves to (a headless Kubernetes Service, a round-robin DNS
//! name), re-resolved every `interval`. A change is applied like a reload: a new snapshot with
//! the discovered endpoints added to the listed ones, health and pools carried over for the
//! addresses that stay. A failed or empty resolution keeps the last answer, so a DNS blip never
//! empties an upstream.

use std::collections::HashMap;

use scalegate_http::GatewaySpec;
use scalegate_http::spec::{DnsSpec, EndpointSpec};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A resolver's news: (upstream, its addresses, sorted).
pub type Answer = (String, Vec<String>);

/// Resolver loops and their latest answers.
#[derive(Debug)]
pub struct Discovery {
    resolved: HashMap<String, Vec<String>>,
    loops: HashMap<String, (DnsSpec, JoinHandle<()>)>,
    tx: mpsc::UnboundedSender<Answer>,
}

impl Discovery {
    /// No loops yet; answers arrive on the returned receiver.
    pub fn new() -> (Discovery, mpsc::UnboundedReceiver<Answer>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let d = Discovery {
            resolved: HashMap::new(),
            loops: HashMap::new(),
            tx,
        };
        (d, rx)
    }

    /// Resolves every DNS upstream once (a few seconds at most), so the first snapshot starts
    /// with its endpoints.
    pub async fn prime(&mut self, spec: &GatewaySpec) {
        for u in &spec.upstreams {
            if let Some(d) = &u.dns
                && let Ok(Some(addrs)) =
                    tokio::time::timeout(std::time::Duration::from_secs(3), resolve(&d.name)).await
            {
                self.resolved.insert(u.name.clone(), addrs);
            }
        }
    }

    /// Starts, restarts or stops resolver loops to match `spec`.
    pub fn reconcile(&mut self, spec: &GatewaySpec) {
        let wanted: HashMap<&str, &DnsSpec> = spec
            .upstreams
            .iter()
            .filter_map(|u| u.dns.as_ref().map(|d| (u.name.as_str(), d)))
            .collect();
        self.loops.retain(|name, (d, task)| {
            let keep = wanted.get(name.as_str()).is_some_and(|w| *w == d);
            if !keep {
                task.abort();
            }
            keep
        });
        self.resolved
            .retain(|name, _| wanted.contains_key(name.as_str()));
        for (name, d) in wanted {
            if !self.loops.contains_key(name) {
                let task = tokio::spawn(resolver(
                    name.to_string(),
                    d.clone(),
                    self.resolved.get(name).cloned(),
                    self.tx.clone(),
                ));
                self.loops.insert(name.to_string(), (d.clone(), task));
            }
        }
    }

    /// Records an answer; true when the upstream's addresses changed.
    pub fn update(&mut self, (upstream, addrs): Answer) -> bool {
        if self.resolved.get(&upstream) == Some(&addrs) || !self.loops.contains_key(&upstream) {
            return false;
        }
        tracing::info!(upstream, endpoints = ?addrs, "endpoints from DNS changed");
        self.resolved.insert(upstream, addrs);
        true
    }

    /// `spec` with every discovered address added to its upstream's endpoints.
    pub fn effective(&self, spec: &GatewaySpec) -> GatewaySpec {
        let mut out = spec.clone();
        for u in &mut out.upstreams {
            let (Some(d), Some(addrs)) = (&u.dns, self.resolved.get(&u.name)) else {
                continue;
            };
            for a in addrs {
                if !u.endpoints.iter().any(|e| &e.addr == a) {
                    u.endpoints.push(EndpointSpec {
                        addr: a.clone(),
                        weight: d.weight,
                        zone: d.zone.clone(),
                    });
                }
            }
        }
        out
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for (_, (_, task)) in self.loops.drain() {
            task.abort();
        }
    }
}

/// The addresses `name` resolves to, sorted; None when resolution fails or finds nothing.
async fn resolve(name: &str) -> Option<Vec<String>> {
    let mut addrs: Vec<String> = tokio::net::lookup_host(name)
        .await
        .ok()?
        .map(|a| a.to_string())
        .collect();
    addrs.sort();
    addrs.dedup();
    (!addrs.is_empty()).then_some(addrs)
}

async fn resolver(
    upstream: String,
    spec: DnsSpec,
    mut last: Option<Vec<String>>,
    tx: mpsc::UnboundedSender<Answer>,
) {
    let mut failing = false;
    loop {
        match resolve(&spec.name).await {
            Some(addrs) => {
                failing = false;
                if last.as_ref() != Some(&addrs) {
                    last = Some(addrs.clone());
                    if tx.send((upstream.clone(), addrs)).is_err() {
                        return;
                    }
                }
            }
            None if !failing => {
                failing = true;
                tracing::warn!(upstream, name = %spec.name, "DNS resolution failed; keeping the last endpoints");
            }
            None => {}
        }
        tokio::time::sleep(spec.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GatewaySpec {
        let text = r#"
[[routes]]
match = { path_prefix = "/" }
upstream = "app"
[upstreams.app]
endpoints = ["10.0.0.9:80"]
dns = { name = "localhost:8000", weight = 3, zone = "a" }
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
"#;
        crate::config::Config::parse(text).expect("valid").gateway
    }

    #[tokio::test]
    async fn answers_add_endpoints_and_only_changes_count() {
        let (mut d, _rx) = Discovery::new();
        let s = spec();
        d.reconcile(&s);
        let answer = || {
            (
                "app".to_string(),
                vec!["10.0.0.1:8000".to_string(), "10.0.0.2:8000".to_string()],
            )
        };
        assert!(d.update(answer()));
        assert!(!d.update(answer()), "the same answer again changes nothing");
        assert!(
            !d.update(("gone".into(), vec![])),
            "unknown upstreams are ignored"
        );
        let eff = d.effective(&s);
        let eps: Vec<(&str, u32)> = eff.upstreams[0]
            .endpoints
            .iter()
            .map(|e| (e.addr.as_str(), e.weight))
            .collect();
        assert_eq!(
            eps,
            [
                ("10.0.0.9:80", 1),
                ("10.0.0.1:8000", 3),
                ("10.0.0.2:8000", 3)
            ]
        );
        // An upstream that drops its dns forgets what was found.
        let mut without = s.clone();
        without.upstreams[0].dns = None;
        d.reconcile(&without);
        assert_eq!(d.effective(&s).upstreams[0].endpoints.len(), 1);
    }

    #[tokio::test]
    async fn names_resolve_to_sorted_addresses() {
        let a = resolve("127.0.0.1:8080").await;
        assert_eq!(a, Some(vec!["127.0.0.1:8080".to_string()]));
        assert_eq!(resolve("nonexistent.invalid:80").await, None);
    }
}
