//! `scalegate plan`: capacity planning for a config at a given peak. How many instances, how
//! much concurrency, whether pools and limits fit, what must be shared once there are several
//! instances, and the PostgreSQL connection budget. The arithmetic is
//! `scalegate_core::capacity`; this file reads the config and explains.

use std::fmt::Write as _;
use std::time::Duration;

use scalegate_core::capacity::{Fleet, fleet, in_flight, pg_connections, pool_share};

use crate::config::Config;

/// The operator's numbers (the `scalegate plan` options).
#[derive(Clone, Debug, clap::Args)]
pub struct PlanInput {
    /// Peak requests per second across the whole fleet.
    #[arg(long = "peak-rps", value_name = "N")]
    pub peak_rps: f64,
    /// Typical upstream response time ("40ms", "1s").
    #[arg(long, default_value = "100ms", value_parser = duration_arg)]
    pub latency: Duration,
    /// Requests per second one instance serves at 100% (default: 20000 per worker thread).
    #[arg(long = "instance-rps", value_name = "N")]
    pub instance_rps: Option<f64>,
    /// Highest utilisation to plan for, in percent.
    #[arg(long = "target-utilization", default_value_t = 60, value_parser = clap::value_parser!(u32).range(5..=100))]
    pub target_utilization: u32,
    /// Availability zones the fleet spreads over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub zones: u32,
    /// Cores of the PostgreSQL server, for its connection budget.
    #[arg(long = "db-cores", value_name = "N")]
    pub db_cores: Option<u32>,
    /// Effective spindles of the PostgreSQL server (SSD: 1).
    #[arg(long = "db-spindles", default_value_t = 1)]
    pub db_spindles: u32,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
        .ok_or_else(|| format!("{s:?}: expected a duration such as \"40ms\" or \"1s\""))
}

/// Requests per second per worker thread assumed when `--instance-rps` is not given: about half
/// of what bench/http.sh measures for small bodies on loopback, as room for real payloads, TLS
/// and logging.
pub const RPS_PER_THREAD: f64 = 20_000.0;

/// The plan as text.
pub fn plan(c: &Config, input: &PlanInput) -> String {
    let threads = c.runtime.worker_threads.max(1);
    let per_instance = input
        .instance_rps
        .unwrap_or(RPS_PER_THREAD * threads as f64);
    let util = f64::from(input.target_utilization) / 100.0;
    let f = fleet(input.peak_rps, per_instance, util, input.zones);
    let mut out = String::new();
    let w = &mut out;

    section(w, "Gateway instances");
    let source = match input.instance_rps {
        Some(_) => "--instance-rps".to_string(),
        None => format!(
            "{} per worker thread × {threads} (runtime.worker_threads); measure yours and pass --instance-rps",
            n(RPS_PER_THREAD)
        ),
    };
    line(
        w,
        format!(
            "capacity per instance: {} req/s ({source})",
            n(per_instance)
        ),
    );
    line(
        w,
        format!(
            "peak {} req/s at ≤ {}% utilisation: {} instance(s) carry it",
            n(input.peak_rps),
            input.target_utilization,
            f.needed
        ),
    );
    line(w, fleet_reason(&f, input.zones));
    let hpa_max = fleet(input.peak_rps * 2.0, per_instance, util, input.zones).planned;
    line(
        w,
        format!(
            "autoscaling (deploy/k8s/hpa.yaml): minReplicas {}, maxReplicas {hpa_max} (twice the peak), target CPU {}%",
            input.zones.max(2),
            input.target_utilization
        ),
    );

    section(w, "Concurrency (Little's law: in flight = rate × latency)");
    let total = in_flight(input.peak_rps, input.latency);
    let per = total / f64::from(f.planned);
    line(
        w,
        format!(
            "{} req/s × {} ms = {} requests in flight across the fleet, ~{} per instance",
            n(input.peak_rps),
            input.latency.as_millis(),
            n(total),
            n(per.ceil())
        ),
    );
    if let Some(cap) = c.gateway.max_in_flight {
        let verdict = if (cap as f64) < per {
            "TOO LOW: the peak would be shed"
        } else {
            "ok"
        };
        line(
            w,
            format!("admission.max_in_flight = {cap} per instance: {verdict}"),
        );
    }
    for u in &c.gateway.upstreams {
        let eps = u.endpoints.len().max(1) as f64;
        let per_endpoint = (per / eps).ceil();
        let pool = u.pool.max_per_endpoint as f64;
        let verdict = if pool < per_endpoint {
            "TOO LOW if all traffic went here: raise pool.max_per_endpoint"
        } else {
            "ok"
        };
        line(
            w,
            format!(
                "upstream {:?}: {} endpoint(s); if all traffic went here each holds ~{} per instance, pool.max_per_endpoint = {}: {verdict}",
                u.name,
                u.endpoints.len(),
                n(per_endpoint),
                u.pool.max_per_endpoint
            ),
        );
        if let Some(b) = &u.bulkhead
            && (b.max_in_flight as f64) < per
        {
            line(
                w,
                format!(
                    "  its bulkhead (max_in_flight {}) sheds beyond that: fine if this upstream gets a share of the traffic, not all of it",
                    b.max_in_flight
                ),
            );
        }
    }

    section(w, "State shared between instances");
    shared_state(w, c, f.planned);

    if let Some(pg) = &c.postgres {
        section(
            w,
            "PostgreSQL connections (per server: every database and user pool on it)",
        );
        postgres(w, pg, f.planned, input);
    }
    out
}

/// Each server's connection count across databases, user pools and instances.
fn postgres(w: &mut String, pg: &scalegate_pg::PgSpec, instances: u32, input: &PlanInput) {
    // Pools are per (database, user); passed-through users are counted as one.
    let users = pg.users.len().max(1) as u32;
    let mut servers: Vec<(String, Vec<String>, u32, u32)> = Vec::new();
    for d in &pg.databases {
        let mut hosts: Vec<String> = Vec::new();
        for s in std::iter::once(&d.primary)
            .chain(&d.replicas)
            .chain(&d.shards)
        {
            let h = format!("{}:{}", s.host, s.port);
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        for h in hosts {
            let i = match servers.iter().position(|s| s.0 == h) {
                Some(i) => i,
                None => {
                    servers.push((h, Vec::new(), 0, 0));
                    servers.len() - 1
                }
            };
            let s = &mut servers[i];
            s.1.push(d.name.clone());
            s.2 += d.pool_size as u32 * users * instances;
            s.3 += users;
        }
    }
    for (host, dbs, total, pools) in servers {
        line(
            w,
            format!(
                "{host} ({}): pool_size × {users} user pool(s) × {instances} instances = {total} connections; its max_connections must exceed that plus superuser_reserved_connections",
                dbs.join(", ")
            ),
        );
        if let Some(cores) = input.db_cores {
            let budget = pg_connections(cores, input.db_spindles);
            let verdict = if total > budget {
                format!(
                    "over it: pool_size = {} per database and instance keeps within it (clients queue in the pooler instead of the server)",
                    pool_share(budget, instances, pools)
                )
            } else {
                "within it".to_string()
            };
            line(
                w,
                format!(
                    "  a {cores}-core server works best with ~{budget} active connections (cores × 2 + spindles): {verdict}"
                ),
            );
        }
    }
}

fn fleet_reason(f: &Fleet, zones: u32) -> String {
    let why = if zones > 1 {
        format!(
            "one spare, survive losing 1 of {zones} zones, {} per zone",
            f.planned / zones
        )
    } else {
        "one spare for a crash or a rolling update".to_string()
    };
    format!("run {} instance(s) at the peak ({why})", f.planned)
}

fn shared_state(w: &mut String, c: &Config, instances: u32) {
    if instances < 2 {
        line(w, "one instance: everything stays in memory".to_string());
        return;
    }
    let g = &c.gateway;
    let mut any = false;
    for r in &g.routes {
        if let Some(rl) = &r.rate_limit
            && !rl.shared
        {
            any = true;
            line(
                w,
                format!(
                    "route {:?}: its rate limit is per instance, so {instances} instances allow {instances}× the rate: set rate_limit.shared = true with [cluster] redis",
                    r.name
                ),
            );
        }
    }
    if g.routes.iter().any(|r| r.cache.is_some()) && g.cache.redis.is_none() {
        any = true;
        line(
            w,
            format!(
                "caching routes fill {instances} separate memory caches (up to {instances}× the origin's misses, purges per instance): add [cache] redis for a shared tier and invalidations"
            ),
        );
    }
    if !any {
        line(
            w,
            "nothing per instance that should be shared: rate limits and caches are shared or absent"
                .to_string(),
        );
    }
}

fn section(w: &mut String, title: &str) {
    if !w.is_empty() {
        w.push('\n');
    }
    let _ = writeln!(w, "{title}");
}

fn line(w: &mut String, text: String) {
    let _ = writeln!(w, "  {text}");
}

/// A count with thousands separators.
fn n(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[runtime]
worker_threads = 2
[[routes]]
match = { path_prefix = "/" }
upstream = "app"
rate_limit = { requests = 100 }
cache = {}
[upstreams.app]
endpoints = ["10.0.0.1:80", "10.0.0.2:80"]
pool = { max_per_endpoint = 16 }
[postgres]
listen = "127.0.0.1:6432"
[postgres.databases.app]
primary = "postgres://app@10.0.1.1:5432/app"
pool_size = 20
"#;

    fn input() -> PlanInput {
        PlanInput {
            peak_rps: 50_000.0,
            latency: Duration::from_millis(40),
            instance_rps: None,
            target_utilization: 60,
            zones: 3,
            db_cores: Some(8),
            db_spindles: 1,
        }
    }

    #[test]
    fn a_plan_sizes_the_fleet_and_flags_what_does_not_fit() {
        let c = Config::parse(CONFIG).expect("valid");
        let text = plan(&c, &input());
        // 40k per instance at 60%: 24k usable → 3 needed; spare → 4; zone loss 50k·3/(2·40k)
        // → 2; a multiple of 3 → 6.
        assert!(
            text.contains("capacity per instance: 40,000 req/s"),
            "{text}"
        );
        assert!(text.contains("run 6 instance(s) at the peak"), "{text}");
        assert!(text.contains("2,000 requests in flight"), "{text}");
        assert!(
            text.contains("pool.max_per_endpoint = 16: TOO LOW"),
            "{text}"
        );
        assert!(text.contains("allow 6× the rate"), "{text}");
        assert!(text.contains("add [cache] redis"), "{text}");
        // 20 × 1 × 6 = 120 connections against 17 for 8 cores: 17 / 6 → 2 each.
        assert!(
            text.contains(
                "10.0.1.1:5432 (app): pool_size × 1 user pool(s) × 6 instances = 120 connections"
            ),
            "{text}"
        );
        assert!(
            text.contains("pool_size = 2 per database and instance"),
            "{text}"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(n(1234567.0), "1,234,567");
        assert_eq!(n(999.0), "999");
        assert_eq!(n(0.4), "0");
    }
}
