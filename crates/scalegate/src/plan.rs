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
    #[arg(long = "peak-rps", value_name = "N", value_parser = rate_arg)]
    pub peak_rps: f64,
    /// Typical upstream response time ("40ms", "1s").
    #[arg(long, default_value = "100ms", value_parser = duration_arg)]
    pub latency: Duration,
    /// Requests per second one instance serves at 100% (default: 20000 per worker thread).
    #[arg(long = "instance-rps", value_name = "N", value_parser = rate_arg)]
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

/// Most requests per second a plan is made for: beyond it the arithmetic (instances as u32)
/// would wrap and print nonsense.
const MAX_RPS: f64 = 1e9;

/// A rate in requests per second: a number above 0 and at most [`MAX_RPS`].
fn rate_arg(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= MAX_RPS => Ok(r),
        _ => Err(format!(
            "{s:?}: expected requests per second above 0 and at most {MAX_RPS:e}"
        )),
    }
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
    autoscaling(w, input, per_instance, &f);

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
        if let (true, Some(dns)) = (u.endpoints.is_empty(), &u.dns) {
            // How many endpoints DNS will give is not known here: say from how many it is enough.
            let pool = u.pool.max_per_endpoint.max(1) as f64;
            line(
                w,
                format!(
                    "upstream {:?}: endpoints from DNS ({}); if all traffic went here, pool.max_per_endpoint = {} holds ~{} per instance with {} endpoint(s) or more",
                    u.name,
                    dns.name,
                    u.pool.max_per_endpoint,
                    n(per.ceil()),
                    (per / pool).ceil().max(1.0) as u64
                ),
            );
            continue;
        }
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

    match (&c.postgres, input.db_cores) {
        (Some(pg), _) => {
            section(
                w,
                "PostgreSQL connections (every database, user pool and instance)",
            );
            postgres(w, pg, f.planned, input);
        }
        (None, Some(_)) => {
            section(w, "Warnings");
            line(
                w,
                "--db-cores is ignored: this config has no [postgres] section, so there are no pools to size".to_string(),
            );
        }
        (None, None) => {}
    }
    out
}

/// One database's pools on one server.
struct Share {
    database: String,
    pool_size: u32,
    /// User pools (configured users; passed-through users count as one).
    users: u32,
}

/// Connections per database (each of its servers gets that many), then per server across the
/// databases on it, and what a `--db-cores` server can take.
fn postgres(w: &mut String, pg: &scalegate_pg::PgSpec, instances: u32, input: &PlanInput) {
    let users = pg.users.len().max(1) as u32;
    let mut servers: Vec<(String, Vec<Share>)> = Vec::new();
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
        let pool_size = d.pool_size as u32;
        line(
            w,
            format!(
                "database {:?}: pool_size {pool_size} × {users} user pool{} × {instances} instance{} = {} connections to each of {}",
                d.name,
                plural(users),
                plural(instances),
                pool_size * users * instances,
                hosts.join(", ")
            ),
        );
        for h in hosts {
            let share = Share {
                database: d.name.clone(),
                pool_size,
                users,
            };
            match servers.iter_mut().find(|s| s.0 == h) {
                Some(s) => s.1.push(share),
                None => servers.push((h, vec![share])),
            }
        }
    }
    for (host, shares) in &servers {
        server_budget(w, host, shares, instances, input);
    }
}

/// One server's total, and whether a `--db-cores` server takes it.
fn server_budget(w: &mut String, host: &str, shares: &[Share], instances: u32, input: &PlanInput) {
    let per_instance: u32 = shares.iter().map(|s| s.pool_size * s.users).sum();
    let pools: u32 = shares.iter().map(|s| s.users).sum();
    let total = per_instance * instances;
    let terms: Vec<String> = shares
        .iter()
        .map(|s| format!("{} {} × {}", s.database, s.pool_size, s.users))
        .collect();
    line(
        w,
        format!(
            "server {host}: ({}) = {per_instance} per instance × {instances} = {total} connections; its max_connections must exceed that plus superuser_reserved_connections",
            terms.join(" + ")
        ),
    );
    let Some(cores) = input.db_cores else { return };
    let budget = pg_connections(cores, input.db_spindles);
    let verdict = if total <= budget {
        "within it".to_string()
    } else {
        let size = pool_share(budget, instances, pools);
        let fits = size * pools * instances;
        if fits <= budget {
            format!(
                "over it: pool_size = {size} for each database on it keeps within it ({size} × {pools} pools × {instances} = {fits}; clients queue in the pooler instead of the server)"
            )
        } else {
            format!(
                "over it even with pool_size = 1 ({pools} pools × {instances} instances = {fits}): run fewer instances with the pooler, fewer user pools, or a bigger server"
            )
        }
    };
    line(
        w,
        format!(
            "  a {cores}-core server works best with ~{budget} active connections (cores × 2 + spindles): {verdict}"
        ),
    );
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What deploy/k8s/hpa.yaml should say for this plan.
fn autoscaling(w: &mut String, input: &PlanInput, per_instance: f64, f: &Fleet) {
    let util = f64::from(input.target_utilization) / 100.0;
    let hpa_max = fleet(input.peak_rps * 2.0, per_instance, util, input.zones).planned;
    let per_pod = (input.peak_rps / f64::from(f.planned)).ceil();
    let cpu = ((per_pod / per_instance) * 100.0).ceil().clamp(1.0, 100.0);
    section(w, "Autoscaling (deploy/k8s/hpa.yaml)");
    line(
        w,
        format!(
            "minReplicas {}, maxReplicas {hpa_max} (the plan for twice the peak)",
            input.zones.max(2)
        ),
    );
    line(
        w,
        format!(
            "per-pod rate target (scalegate_http_requests_per_second averageValue): {} req/s = peak / {} instances, so the HPA runs {} at the peak",
            per_pod as u64, f.planned, f.planned
        ),
    );
    let in_flight_per_pod =
        (in_flight(input.peak_rps, input.latency) / f64::from(f.planned)).ceil();
    line(
        w,
        format!(
            "per-pod in-flight target (scalegate_http_in_flight averageValue): {} = peak × {} ms / {} instances (upstreams slower than --latency scale out before CPU rises)",
            in_flight_per_pod as u64,
            input.latency.as_millis(),
            f.planned
        ),
    );
    line(
        w,
        format!(
            "CPU target (averageUtilization): {cpu:.0}% — the same load as CPU; a target of {}% would settle near {} at the peak, without the spare{}",
            input.target_utilization,
            f.needed,
            if input.zones > 1 {
                " or the zone headroom"
            } else {
                ""
            }
        ),
    );
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
    let f = &c.features;
    if f.routes.values().any(|r| r.cache.is_some()) && f.cache.redis.is_none() {
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
        // 2 threads × 20,000 = 40,000 per instance; at 60%: 24,000 usable → ⌈50,000 / 24,000⌉
        // = 3 needed; one spare → 4; losing 1 of 3 zones: ⌈50,000·3 / (2·40,000)⌉ = 2; the
        // larger, rounded up to a multiple of 3 → 6.
        assert!(
            text.contains("capacity per instance: 40,000 req/s"),
            "{text}"
        );
        assert!(text.contains("3 instance(s) carry it"), "{text}");
        assert!(text.contains("run 6 instance(s) at the peak"), "{text}");
        // 50,000 × 0.040 s = 2,000 in flight; / 6 = 333.3 → ~334 per instance; / 2 endpoints
        // → 167 > 16.
        assert!(text.contains("2,000 requests in flight"), "{text}");
        assert!(text.contains("~334 per instance"), "{text}");
        assert!(
            text.contains("pool.max_per_endpoint = 16: TOO LOW"),
            "{text}"
        );
        assert!(text.contains("allow 6× the rate"), "{text}");
        assert!(text.contains("add [cache] redis"), "{text}");
        // The HPA: ⌈50,000 / 6⌉ = 8,334 per pod keeps 6 at the peak; 8,334 / 40,000 = 20.8%
        // → 21% CPU; 60% CPU would settle at the 3 needed. Twice the peak: ⌈100,000 / 24,000⌉
        // = 5, +1 = 6, zone loss ⌈100,000·3 / 80,000⌉ = 4 → 6.
        assert!(text.contains("minReplicas 3, maxReplicas 6"), "{text}");
        assert!(
            text.contains("averageValue): 8334 req/s = peak / 6 instances, so the HPA runs 6"),
            "{text}"
        );
        assert!(
            text.contains("CPU target (averageUtilization): 21%"),
            "{text}"
        );
        assert!(
            text.contains("a target of 60% would settle near 3"),
            "{text}"
        );
        // 20 × 1 (passed-through users) × 6 = 120 connections against 17 for 8 cores:
        // ⌊17 / (6 × 1)⌋ = 2 each → 2 × 1 × 6 = 12.
        assert!(
            text.contains(
                "database \"app\": pool_size 20 × 1 user pool × 6 instances = 120 connections to each of 10.0.1.1:5432"
            ),
            "{text}"
        );
        assert!(
            text.contains("server 10.0.1.1:5432: (app 20 × 1) = 20 per instance × 6 = 120"),
            "{text}"
        );
        assert!(
            text.contains(
                "pool_size = 2 for each database on it keeps within it (2 × 1 pools × 6 = 12"
            ),
            "{text}"
        );
    }

    const TWO_DATABASES: &str = r#"
[runtime]
worker_threads = 2
[postgres]
listen = "127.0.0.1:6432"
[postgres.users.app]
password = "a"
[postgres.users.admin]
password = "b"
[postgres.databases.app]
primary = "postgres://app@10.0.1.1:5432/app"
replicas = ["postgres://app@10.0.1.2:5432/app"]
pool_size = 5
[postgres.databases.reports]
primary = "postgres://app@10.0.1.1:5432/reports"
pool_size = 3
"#;

    #[test]
    fn connections_add_up_per_database_and_per_server_across_instances() {
        let c = Config::parse(TWO_DATABASES).expect("valid");
        // 6 instances (as above): the primary holds app 5 × 2 + reports 3 × 2 = 16 per
        // instance, 96 in all; 4 pools × 6 instances = 24 > 17 even at pool_size 1.
        let text = plan(&c, &input());
        assert!(
            text.contains("database \"app\": pool_size 5 × 2 user pools × 6 instances = 60 connections to each of 10.0.1.1:5432, 10.0.1.2:5432"),
            "{text}"
        );
        assert!(
            text.contains("server 10.0.1.1:5432: (app 5 × 2 + reports 3 × 2) = 16 per instance × 6 = 96 connections"),
            "{text}"
        );
        assert!(
            text.contains("over it even with pool_size = 1 (4 pools × 6 instances = 24)"),
            "{text}"
        );
        // The replica holds app alone: 5 × 2 × 6 = 60; ⌊17 / (6 × 2)⌋ = 1 → 12.
        assert!(
            text.contains("server 10.0.1.2:5432: (app 5 × 2) = 10 per instance × 6 = 60"),
            "{text}"
        );
        assert!(
            text.contains(
                "pool_size = 1 for each database on it keeps within it (1 × 2 pools × 6 = 12"
            ),
            "{text}"
        );
        // One zone, 20,000 req/s: 1 needed + 1 spare = 2 instances; the primary: 16 × 2 = 32
        // > 17; ⌊17 / (2 × 4)⌋ = 2 → 2 × 4 × 2 = 16.
        let small = PlanInput {
            peak_rps: 20_000.0,
            zones: 1,
            ..input()
        };
        let text = plan(&c, &small);
        assert!(text.contains("run 2 instance(s) at the peak"), "{text}");
        assert!(
            text.contains("= 16 per instance × 2 = 32 connections"),
            "{text}"
        );
        assert!(
            text.contains(
                "pool_size = 2 for each database on it keeps within it (2 × 4 pools × 2 = 16"
            ),
            "{text}"
        );
    }

    #[test]
    fn db_cores_without_postgres_is_called_out() {
        let c = Config::parse(
            "[runtime]\nworker_threads = 1\n[[listeners]]\nname = \"p\"\nbind = \"127.0.0.1:0\"\n",
        )
        .expect("valid");
        let text = plan(&c, &input());
        assert!(
            text.contains("--db-cores is ignored: this config has no [postgres] section"),
            "{text}"
        );
        let quiet = plan(
            &c,
            &PlanInput {
                db_cores: None,
                ..input()
            },
        );
        assert!(!quiet.contains("--db-cores"), "{quiet}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(n(1234567.0), "1,234,567");
        assert_eq!(n(999.0), "999");
        assert_eq!(n(0.4), "0");
    }
}
