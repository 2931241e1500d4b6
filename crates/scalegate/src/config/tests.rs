use super::*;

/// Runs `text` through parse + locate, returning "LINE:COL: message" lines.
fn problems(text: &str) -> Vec<String> {
    match Config::parse(text) {
        Ok(_) => Vec::new(),
        Err(ps) => ps
            .into_iter()
            .map(|p| {
                let (l, c, m) = locate(text, p);
                format!("{l}:{c}: {m}")
            })
            .collect(),
    }
}

const ISSUE_EXAMPLE: &str = r#"[runtime]
worker_threads = 1
[admin]
listen = "127.0.0.1:9901"
[[listeners]]
name = "public"
bind = "127.0.0.1:8080"
[[routes]]
listener = "public"
match = { path_prefix = "/" }
upstream = "app"
[upstreams.app]
balance = "round_robin"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]
"#;

#[test]
fn the_reference_config_is_accepted_as_written() {
    let c = Config::parse(ISSUE_EXAMPLE).expect("valid");
    assert_eq!(c.runtime.worker_threads, 1);
    assert_eq!(c.summary(), "1 listener, 1 route, 1 upstream, 2 endpoints");
    assert_eq!(c.gateway.routes[0].request_timeout, Duration::from_secs(5));
}

#[test]
fn unknown_key_is_reported_with_its_line() {
    let text = ISSUE_EXAMPLE.replace(
        "balance = \"round_robin\"",
        "balance = \"round_robin\"\nretries = 3",
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("14:1: unknown field `retries`"), "{p:?}");
}

#[test]
fn bad_enum_value_lists_what_was_expected() {
    let text = ISSUE_EXAMPLE.replace("round_robin", "fastest");
    let p = problems(&text);
    assert!(
        p[0].starts_with("13:11:") && p[0].contains("round_robin"),
        "{p:?}"
    );
}

#[test]
fn bad_duration_says_what_a_duration_looks_like() {
    let text = ISSUE_EXAMPLE.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\ntimeout = \"5 parsecs\"",
    );
    let p = problems(&text);
    assert!(
        p[0].starts_with("12:11:") && p[0].contains("250ms"),
        "{p:?}"
    );
}

#[test]
fn every_semantic_problem_is_reported() {
    let text = r#"
[[listeners]]
name = "public"
bind = "localhost"

[[routes]]
listener = "private"
match = { path_prefix = "api" }
upstream = "nope"

[upstreams.app]
endpoints = ["10.0.0.1", "10.0.0.2:80", "10.0.0.2:80"]
health = { path = "/h", unhealthy_after = 0 }
"#;
    let p = problems(text);
    let want = [
        "4:8: bind",
        "7:12: unknown listener \"private\"; defined: [\"public\"]",
        "8:25: path_prefix",
        "9:12: unknown upstream",
        "12:14: endpoint \"10.0.0.1\"",
        "12:41: duplicate endpoint",
        "13:10: health.unhealthy_after",
    ];
    assert_eq!(p.len(), want.len(), "{p:#?}");
    for (got, w) in p.iter().zip(want) {
        assert!(
            got.starts_with(w),
            "want {w:?}, got {got:?} (problems come in file order)"
        );
    }
}

#[test]
fn endpoint_tables_and_options_parse() {
    let text = r#"
[[listeners]]
name = "public"
bind = "0.0.0.0:0"
[[routes]]
match = { host = "API.example.com", path_prefix = "/api", method = "post", headers = { "X-Beta" = "1" } }
upstream = "app"
timeout = "250ms"
max_body_bytes = "1MiB"
[upstreams.app]
balance = "consistent_hash"
hash_on = "header:X-User"
endpoints = ["10.0.0.1:80", { addr = "10.0.0.2:80", weight = 3, zone = "b" }]
passive = { consecutive_failures = 3, base_ejection = "1s", max_ejection = "30s" }
slow_start = "30s"
panic_threshold = 0
pool = { max_per_endpoint = 64, idle_timeout = "30s" }
protocol = "h2c"
"#;
    let c = Config::parse(text).expect("valid");
    let u = &c.gateway.upstreams[0];
    assert_eq!(u.endpoints[1].weight, 3);
    assert_eq!(
        u.hash_on,
        Some(scalegate_http::spec::HashOn::Header("x-user".into()))
    );
    let r = &c.gateway.routes[0];
    assert_eq!(r.matcher.host.as_deref(), Some("api.example.com"));
    assert_eq!(r.matcher.method, Some(http::Method::POST));
    assert_eq!(
        r.matcher.headers,
        vec![("x-beta".to_string(), "1".to_string())]
    );
    assert_eq!(r.max_body_bytes, 1 << 20);
}

const PG_EXAMPLE: &str = r#"[postgres]
listen = "127.0.0.1:6432"
[postgres.databases.bench]
primary = "postgres://postgres@127.0.0.1:55432/bench"
replicas = []
pool_mode = "transaction"
pool_size = 20
"#;

#[test]
fn the_pooler_example_is_accepted_as_written() {
    let c = Config::parse(PG_EXAMPLE).expect("valid");
    let pg = c.postgres.expect("postgres");
    assert_eq!(pg.listen.port(), 6432);
    let db = &pg.databases[0];
    assert_eq!((db.name.as_str(), db.pool_size), ("bench", 20));
    assert_eq!(db.primary.port, 55432);
    assert_eq!(db.primary.user.as_deref(), Some("postgres"));
}

#[test]
fn pooler_mistakes_are_located() {
    let text = PG_EXAMPLE
        .replace("\"transaction\"", "\"statement\"")
        .replace("pool_size = 20", "pool_size = \"lots\"")
        .replace("postgres://postgres@", "mysql://");
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p[0].starts_with("4:11: \"mysql://"), "{p:?}");
    assert!(p[1].starts_with("6:13: pool_mode \"statement\""), "{p:?}");
    assert!(p[2].starts_with("7:13: pool_size \"lots\""), "{p:?}");
    let unknown = problems(&PG_EXAMPLE.replace("pool_size = 20", "pool_sise = 20"));
    assert!(
        unknown[0].starts_with("7:1: unknown field `pool_sise`"),
        "{unknown:?}"
    );
}

#[test]
fn the_console_name_is_reserved() {
    let p = problems(&PG_EXAMPLE.replace("databases.bench", "databases.pgbouncer"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("3:21: database name \"pgbouncer\" is taken"),
        "{p:?}"
    );
}

#[test]
fn path_rewrites_and_header_edits_are_checked_where_written() {
    let base = "[[routes]]\nupstream = \"app\"\n";
    let tail = "[upstreams.app]\nendpoints = [\"127.0.0.1:9001\"]\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n";
    let p = problems(&format!("{base}rewrite = {{ prefix = \"/v2\" }}\n{tail}"));
    assert_eq!(
        p,
        ["3:11: rewrite needs the route to match on path_prefix (the part it replaces)"]
    );
    let p = problems(&format!(
        "{base}match = {{ path_prefix = \"/api\" }}\nrewrite = {{ prefix = \"v2\" }}\n{tail}"
    ));
    assert_eq!(p, [r#"4:11: rewrite.prefix must start with "/""#]);
    let p = problems(&format!(
        "{base}request_headers = {{ set = {{ content-length = \"1\" }}, remove = [\"bad name\"] }}\n{tail}"
    ));
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].starts_with("3:19: request_headers: \"content-length\" frames"),
        "{p:?}"
    );
    assert!(p[1].contains("invalid header name \"bad name\""), "{p:?}");
    let ok = Config::parse(&format!(
        "{base}match = {{ path_prefix = \"/api\" }}\nrewrite = {{ prefix = \"/\" }}\nresponse_headers = {{ set = {{ x-frame-options = \"DENY\" }}, remove = [\"server\"] }}\n{tail}"
    ))
    .expect("valid");
    let r = &ok.gateway.routes[0];
    assert_eq!(r.rewrite.as_ref().map(|w| w.to.as_str()), Some("/"));
    assert_eq!(r.response_headers.set.len(), 1);
    assert_eq!(r.response_headers.remove.len(), 1);
}

#[test]
fn allow_and_deny_lists_take_addresses_and_blocks() {
    let base = "[[routes]]\nupstream = \"app\"\n";
    let tail = "[upstreams.app]\nendpoints = [\"127.0.0.1:9001\"]\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n";
    let p = problems(&format!(
        "{base}allow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n{tail}"
    ));
    assert_eq!(
        p,
        [r#"3:9: allow: "10.0.0.0/33" is not an address or block like "10.0.0.0/8""#]
    );
    let ok = Config::parse(&format!(
        "{base}allow = [\"10.0.0.0/8\", \"::1\"]\ndeny = [\"10.9.0.0/16\"]\n{tail}"
    ))
    .expect("valid");
    let a = &ok.gateway.routes[0].access;
    assert_eq!((a.allow.len(), a.deny.len()), (2, 1));
}

#[test]
fn zone_affinity_needs_a_gateway_zone_and_zoned_endpoints() {
    let with = |runtime: &str, upstream: &str| {
        ISSUE_EXAMPLE
            .replace(
                "worker_threads = 1",
                &format!("worker_threads = 1\n{runtime}"),
            )
            .replace("balance = \"round_robin\"", upstream)
    };
    let zoned = r#"endpoints = [{ addr = "127.0.0.1:9001", zone = "a" }, "127.0.0.1:9002"]"#;
    let text = with("zone = \"a\"", &format!("zone_affinity = true\n{zoned}"))
        .replace("endpoints = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]", "");
    let c = Config::parse(&text).expect("valid");
    let z = c.gateway.upstreams[0]
        .zone_affinity
        .clone()
        .expect("affinity");
    assert_eq!((z.zone.as_str(), z.min_available_percent), ("a", 70));

    let p = problems(&with("zone = \"a\"", "zone_affinity = true"));
    assert!(
        p.len() == 1 && p[0].starts_with("14:17:") && p[0].contains("endpoints with zones"),
        "{p:?}"
    );
    if std::env::var_os(zone::ZONE_ENV).is_none() {
        let p = problems(&with("", "zone_affinity = { min_available_percent = 50 }"));
        assert!(
            p.len() == 1 && p[0].contains("set runtime.zone or SCALEGATE_ZONE"),
            "{p:?}"
        );
    }
    let p = problems(&with("zone = \"a\"", "zone_affinity = \"yes\""));
    assert!(p[0].contains("min_available_percent = 70"), "{p:?}");
}

#[test]
fn a_shared_rate_limit_needs_a_cluster_redis() {
    let text = ISSUE_EXAMPLE.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\nrate_limit = { requests = 10, shared = true }",
    );
    let p = problems(&text);
    assert!(
        p.len() == 1 && p[0].starts_with("12:14:") && p[0].contains("[cluster] redis"),
        "{p:?}"
    );
    let clustered = format!("[cluster]\nredis = {{ url = \"redis://127.0.0.1:6379\" }}\n{text}");
    let c = Config::parse(&clustered).expect("valid");
    assert!(
        c.gateway.routes[0]
            .rate_limit
            .as_ref()
            .is_some_and(|l| l.shared)
    );
    assert_eq!(
        c.gateway.cluster.map(|k| k.key_prefix),
        Some("scalegate:".into())
    );
    let p = problems(&clustered.replace("redis://", "http://"));
    assert!(
        p[0].starts_with("2:17:") && p[0].contains("expected"),
        "{p:?}"
    );
}

#[test]
fn fanout_settings_are_checked_with_their_lines() {
    let with = |fanout: &str| format!("{ISSUE_EXAMPLE}[fanout]\n{fanout}\n");
    let c = Config::parse(&with("nats = { url = \"nats://127.0.0.1:4222\" }")).expect("valid");
    let f = c.features.fanout.expect("fanout");
    assert_eq!((f.path_prefix.as_str(), f.buffer), ("/live/", 256));
    assert!(matches!(
        f.bus,
        Some(scalegate_features::fanout::BusSpec::Nats { ref subject_prefix, .. }) if subject_prefix == "scalegate.fanout."
    ));
    let p = problems(&with("path_prefix = \"/live\"\nlistener = \"nope\""));
    assert!(
        p.len() == 2 && p[0].starts_with("16:15:") && p[0].contains("end with \"/\""),
        "{p:?}"
    );
    assert!(
        p[1].starts_with("17:12:") && p[1].contains("not a listener"),
        "{p:?}"
    );
    let p = problems(&with(
        "redis = { url = \"redis://h:1\" }\nnats = { url = \"nats://h:2\" }",
    ));
    assert!(p.len() == 1 && p[0].contains("choose one bus"), "{p:?}");
    let p = problems(&with(
        "authorize = { upstream = \"auth\", path = \"/ok?x=1\" }",
    ));
    assert!(
        p.len() == 2 && p[0].contains("not an upstream") && p[1].contains("no query"),
        "{p:?}"
    );
    let c = Config::parse(&with("authorize = { upstream = \"app\" }")).expect("valid");
    let a = c
        .features
        .fanout
        .and_then(|f| f.authorize)
        .expect("authorize");
    assert_eq!(
        (a.path.as_str(), a.timeout),
        ("/fanout/authorize", Duration::from_secs(2))
    );
}

/// A probe's finding: `check` passed each of these silently.
#[test]
fn settings_that_cancel_each_other_are_warnings() {
    let text = r#"[[listeners]]
name = "public"
bind = "127.0.0.1:8080"
[[routes]]
match = { path_prefix = "/" }
upstream = "app"
timeout = "1s"
retry = { attempts = 3, per_try_timeout = "10s" }
[upstreams.app]
endpoints = ["127.0.0.1:9001"]
health = { interval = "1s", timeout = "5s" }
pool = { max_per_endpoint = 4, max_idle_per_endpoint = 8 }
concurrency = { max_in_flight = 10, adaptive = true, min_limit = 20 }
"#;
    let c = Config::parse(text).expect("valid despite the warnings");
    let w: Vec<&str> = c.warnings.iter().map(|(_, _, m)| m.as_str()).collect();
    // One side left to its default (a second probe: no warning then).
    let defaults = r#"[[listeners]]
name = "public"
bind = "127.0.0.1:8080"
[[routes]]
match = { path_prefix = "/" }
upstream = "app"
[upstreams.app]
endpoints = ["127.0.0.1:9001"]
health = { timeout = "3s" }
pool = { max_idle_per_endpoint = 300 }
"#;
    let d = Config::parse(defaults).expect("valid despite the warnings");
    let dw: Vec<&str> = d.warnings.iter().map(|(_, _, m)| m.as_str()).collect();
    for want in [
        "health.timeout 3s is longer than health.interval 2s",
        "pool.max_idle_per_endpoint 300 is more than max_per_endpoint 256",
    ] {
        assert!(dw.iter().any(|m| m.contains(want)), "{want}: {dw:#?}");
    }
    for want in [
        "retry.per_try_timeout 10s is not shorter than the route's timeout 1s",
        "health.timeout 5s is longer than health.interval 1s",
        "pool.max_idle_per_endpoint 8 is more than max_per_endpoint 4",
        "concurrency.min_limit 20 is more than max_in_flight 10",
    ] {
        assert!(w.iter().any(|m| m.contains(want)), "{want}: {w:#?}");
    }
}

#[test]
fn surprising_settings_are_warnings_with_their_lines() {
    let text = format!(
        "{ISSUE_EXAMPLE}[[routes]]\nname = \"again\"\nlistener = \"public\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\
         [[routes]]\nname = \"live\"\nmatch = {{ path_prefix = \"/live/feed\" }}\nupstream = \"app\"\n[fanout]\n"
    );
    let c = Config::parse(&text).expect("valid despite the warnings");
    let w: Vec<String> = c
        .warnings
        .iter()
        .map(|(l, col, m)| format!("{l}:{col}: {m}"))
        .collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("15:1: warning: route \"again\" never matches: route \"route0\""),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("22:25: warning: route \"live\" never sees requests"),
        "{w:?}"
    );
    assert!(
        Config::parse(ISSUE_EXAMPLE)
            .expect("valid")
            .warnings
            .is_empty()
    );
}

#[test]
fn queued_routes_are_checked() {
    let text = ISSUE_EXAMPLE.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\nname = \"hooks.v1\"\nqueue = { backoff = \"2s\", max_backoff = \"1s\" }",
    );
    let c = Config::parse(&text).expect_err("max_backoff below backoff");
    assert_eq!(c.len(), 1, "{c:?}");
    let ok = text.replace("max_backoff = \"1s\"", "max_backoff = \"9s\"");
    let q = Config::parse(&ok).expect("valid in memory").features.routes["hooks.v1"]
        .queue
        .clone()
        .expect("queue");
    assert_eq!(
        (q.attempts, q.max_in_flight, q.max_body_bytes),
        (5, 4, 1 << 20)
    );
    let durable = format!("[queue]\nnats = {{ url = \"nats://127.0.0.1:4222\" }}\n{ok}");
    let p = problems(&durable);
    assert!(p.len() == 1 && p[0].contains("its name must be"), "{p:?}");
}

#[test]
fn configs_that_serve_nothing_are_refused() {
    for text in [
        "",
        "\n# only a comment\n",
        "[runtime]\nworker_threads = 1\n",
    ] {
        let p = problems(text);
        assert_eq!(p.len(), 1, "{text:?}: {p:?}");
        assert!(p[0].starts_with("1:1: nothing to serve"), "{p:?}");
    }
    assert!(problems(PG_EXAMPLE).is_empty(), "a pooler alone serves");
}

#[test]
fn an_admin_api_open_to_other_hosts_needs_a_token() {
    let listener = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n";
    let p = problems(&format!("[admin]\nlisten = \"0.0.0.0:9901\"\n{listener}"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("2:10: admin.listen 0.0.0.0:9901 is reachable"),
        "{p:?}"
    );
    assert!(problems(&format!("[admin]\nlisten = \"[::1]:9901\"\n{listener}")).is_empty());
    let said_so =
        format!("[admin]\nlisten = \"0.0.0.0:9901\"\nexpose_without_token = true\n{listener}");
    assert!(problems(&said_so).is_empty());
    let token =
        format!("[admin]\nlisten = \"10.1.2.3:9901\"\ntoken = \"0123456789abcdef\"\n{listener}");
    let c = Config::parse(&token).expect("valid with a token");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].2.contains("clear text"), "{:?}", c.warnings);
}

#[test]
fn console_admins_need_a_password() {
    let pg = |extra: &str| {
        format!(
            "[postgres]\nlisten = \"127.0.0.1:0\"\nadmin_users = [\"admin\"]\n{extra}\n[postgres.databases.app]\nprimary = \"postgres://u@127.0.0.1:5432/app\"\n"
        )
    };
    let p = problems(&pg(""));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("3:15: postgres.admin_users: \"admin\" has no [postgres.users.admin]")
            && p[0].contains("without a password"),
        "{p:?}"
    );
    let p = problems(&pg("[postgres.users.app]\npassword = \"x\"\n"));
    assert!(p.len() == 1 && p[0].contains("never log in"), "{p:?}");
    assert!(problems(&pg("[postgres.users.admin]\npassword = \"x\"\n")).is_empty());
}

#[test]
fn listener_edge_keys_are_read_and_checked() {
    let text = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
trusted_proxies = ["10.0.0.0/8", "192.0.2.1"]
forwarded_header = true
max_headers = 50
merge_slashes = false
escaped_slashes = "decode"
upgrades = ["websocket", "foo"]

[[routes]]
match = { host = "Admin.Example." }
upstream = "app"

[upstreams.app]
endpoints = ["127.0.0.1:9001"]
"#;
    let c = Config::parse(text).expect("valid");
    let e = &c.gateway.listeners[0].edge;
    assert_eq!(e.trust.trusted_proxies.len(), 2);
    assert!(e.trust.forwarded_header);
    assert_eq!(e.max_headers, 50);
    assert!(!e.normalize.merge_slashes);
    assert_eq!(
        e.normalize.escaped_slashes,
        scalegate_http::normalize::EscapedSlashes::Decode
    );
    assert_eq!(e.upgrades, ["websocket", "foo"]);
    assert_eq!(
        c.gateway.routes[0].matcher.host.as_deref(),
        Some("admin.example")
    );
    let bad = text
        .replace("\"decode\"", "\"maybe\"")
        .replace("\"foo\"]", "\"h2c\"]")
        .replace("max_headers = 50", "max_headers = 0")
        .replace("\"192.0.2.1\"", "\"192.0.2.1/40\"")
        .replace("host = \"Admin.Example.\"", "path_prefix = \"/%61dmin\"");
    let p = problems(&bad);
    let want = [
        "5:19: trusted_proxies",
        "7:15: max_headers",
        "9:19: escaped_slashes",
        "10:12: upgrades: h2c",
        "13:25: path_prefix \"/%61dmin\" never matches",
    ];
    assert_eq!(p.len(), want.len(), "{p:#?}");
    for (got, w) in p.iter().zip(want) {
        assert!(got.starts_with(w), "want {w:?}, got {got:?}");
    }
}

/// Probe findings (session 20): `check` passed configs that `run` could not start (binds that
/// clash without being equal), and endpoints or hosts no request could ever use.
#[test]
fn binds_that_clash_and_hosts_that_never_work_are_errors() {
    let base = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\n";
    let clash = |extra: &str| problems(&format!("{base}{extra}"));
    let p = clash("[[listeners]]\nname = \"b\"\nbind = \"0.0.0.0:8080\"\n");
    assert!(
        p.iter()
            .any(|l| l.starts_with("6:8: listener \"b\" 0.0.0.0:8080 and listener \"a\"")),
        "{p:?}"
    );
    let p = problems(&format!("[admin]\nlisten = \"127.0.0.1:8080\"\n{base}"));
    assert!(
        p.iter().any(|l| l.contains("cannot both be bound")),
        "{p:?}"
    );
    let p = clash(
        "[postgres]\nlisten = \"[::]:8080\"\n[postgres.databases.app]\nprimary = \"postgres://a@127.0.0.1:5432/a\"\n",
    );
    assert!(
        p.iter()
            .any(|l| l.contains("postgres.listen [::]:8080 and listener \"a\"")),
        "{p:?}"
    );
    let route = "[[routes]]\nmatch = { path_prefix = \"/\" }\nupstream = \"app\"\n";
    for (endpoint, hint) in [
        ("http://127.0.0.1:9001", "no scheme"),
        ("a b:9001", "host:port"),
    ] {
        let p = clash(&format!(
            "{route}[upstreams.app]\nendpoints = [\"{endpoint}\"]\n"
        ));
        assert!(p.iter().any(|l| l.contains(hint)), "{endpoint}: {p:?}");
    }
    for host in ["example.com:8080", "bad host!/x"] {
        let p = clash(&format!(
            "[[routes]]\nmatch = {{ host = \"{host}\", path_prefix = \"/\" }}\nupstream = \"app\"\n[upstreams.app]\nendpoints = [\"127.0.0.1:9001\"]\n"
        ));
        assert!(
            p.iter().any(|l| l.contains("never matches")),
            "{host}: {p:?}"
        );
    }
    let p = clash(&format!(
        "{route}[upstreams.app]\nbalance = \"cookie\"\ncookie = \"bad cookie;\"\nendpoints = [\"127.0.0.1:9001\"]\n"
    ));
    assert!(
        p.iter().any(|l| l.contains("is not a cookie name")),
        "{p:?}"
    );
    let fine = format!(
        "{base}[[routes]]\nmatch = {{ host = \"Api.Example.com.\", path_prefix = \"/\" }}\nupstream = \"app\"\n[upstreams.app]\nendpoints = [\"[::1]:9001\", \"backend_1.svc:80\", \"[fe80::1%eth0]:80\"]\n"
    );
    assert_eq!(problems(&fine), Vec::<String>::new());
}

/// A probe's finding (session 20): empty NATS subjects, and a queue prefix without its final
/// dot (the stream's subjects are `{prefix}>`), passed `check`; the feature then answered 503
/// for good ("invalid subject", "cannot reach JetStream").
#[test]
fn nats_subjects_nats_refuses_are_errors() {
    let base = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\n";
    for (table, want) in [
        (
            "[queue]\nnats = { url = \"nats://h:4222\", prefix = \"x\" }",
            "queue.nats.prefix \"x\"",
        ),
        (
            "[cache]\nnats = { url = \"nats://h:4222\", subject = \"\" }",
            "cache.nats.subject \"\"",
        ),
        (
            "[fanout]\nnats = { url = \"nats://h:4222\", prefix = \"\" }",
            "fanout.nats.prefix \"\"",
        ),
    ] {
        let p = problems(&format!("{table}\n{base}"));
        assert!(p.iter().any(|l| l.contains(want)), "{table}: {p:?}");
    }
    let fine =
        format!("[queue]\nnats = {{ url = \"nats://h:4222\", prefix = \"app.jobs.\" }}\n{base}");
    assert_eq!(problems(&fine), Vec::<String>::new());
}

/// A probe's finding (session 20): a duration over the limit was reported as malformed
/// ("expected a number with a unit"), though its unit was valid.
#[test]
fn a_duration_over_the_limit_is_told_as_such() {
    let text = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n[lifecycle]\ndrain_timeout = \"99999999999d\"\n";
    let p = problems(text);
    assert!(
        p.iter().any(|l| l.contains("over the longest allowed")),
        "{p:?}"
    );
    let p = problems(&text.replace("99999999999d", "5x"));
    assert!(
        p.iter()
            .any(|l| l.contains("expected a number with a unit")),
        "{p:?}"
    );
}

/// A probe's finding (session 24): the same server as primary and replica (or as two shards)
/// was accepted; its role and health were tracked twice and its metrics series doubled.
#[test]
fn a_server_is_listed_once_per_database() {
    let db = |servers: &str| {
        format!("[postgres]\nlisten = \"127.0.0.1:0\"\n[postgres.databases.app]\n{servers}\n")
    };
    let twice =
        db("primary = \"postgres://u@db1:5432/app\"\nreplicas = [\"postgres://u@DB1:5432/app\"]");
    let p = problems(&twice);
    assert!(
        p.iter()
            .any(|m| m.starts_with("5:") && m.contains("DB1:5432 is listed twice")),
        "{p:?}"
    );
    // Two databases of one server are two shards.
    let shards = db(
        "shards = [\"postgres://u@db1:5432/s0\", \"postgres://u@db1:5432/s1\"]\nsharding = { keys = [\"t.id\"] }",
    );
    assert!(problems(&shards).is_empty(), "{:?}", problems(&shards));
}
