//! The `[postgres]` table: the pooler's listener, databases, users and pool settings, with
//! every problem located at its key.

use std::collections::BTreeMap;

use scalegate_pg::{ClientAuth, DatabaseSpec, PgSpec, PoolMode, ServerSpec, UserSpec};
use serde::Deserialize;
use toml::Spanned;

use super::units::Dur;
use super::validate::Check;

/// `[postgres]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    pub listen: Spanned<String>,
    pub worker_threads: Option<Spanned<i64>>,
    pub wait_timeout: Option<Spanned<Dur>>,
    pub max_client_conn: Option<Spanned<i64>>,
    pub server_lifetime: Option<Spanned<Dur>>,
    pub idle_timeout: Option<Spanned<Dur>>,
    pub check_after_idle: Option<Spanned<Dur>>,
    pub idle_transaction_timeout: Option<Spanned<Dur>>,
    pub tls: Option<Spanned<super::raw::RawTls>>,
    pub tls_required: Option<bool>,
    pub max_prepared_statements: Option<Spanned<i64>>,
    pub admin_users: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub users: BTreeMap<String, Spanned<RawUser>>,
    #[serde(default)]
    pub databases: BTreeMap<Spanned<String>, Spanned<RawDatabase>>,
}

/// `[postgres.users.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub password: Spanned<String>,
    pub auth: Option<Spanned<String>>,
}

/// `[postgres.databases.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub primary: Option<Spanned<String>>,
    #[serde(default)]
    pub shards: Vec<Spanned<String>>,
    pub sharding: Option<Spanned<RawSharding>>,
    #[serde(default)]
    pub replicas: Vec<Spanned<String>>,
    pub pool_mode: Option<Spanned<String>>,
    pub pool_size: Option<Spanned<toml::Value>>,
    pub min_idle: Option<Spanned<i64>>,
    pub max_replica_lag: Option<Spanned<Dur>>,
    pub max_replica_lag_bytes: Option<Spanned<super::units::ByteSize>>,
    pub health_interval: Option<Spanned<Dur>>,
    pub on_session_state: Option<Spanned<String>>,
}

/// `sharding = { … }` of a database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSharding {
    pub function: Option<Spanned<String>>,
    pub virtual_shards: Option<Spanned<i64>>,
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
    pub param: Option<Spanned<i64>>,
    pub map: Option<Spanned<Vec<i64>>>,
}

/// Validates `[postgres]`.
pub(super) fn postgres(
    c: &mut Check,
    raw: &Spanned<RawPostgres>,
    base: &std::path::Path,
) -> Option<PgSpec> {
    let r = raw.get_ref();
    let listen = match r.listen.get_ref().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            c.err(
                r.listen.span(),
                format!(
                    "postgres.listen {:?}: expected an address like \"127.0.0.1:6432\"",
                    r.listen.get_ref()
                ),
            );
            None
        }
    };
    let mut databases = Vec::new();
    if r.databases.is_empty() {
        c.err(
            raw.span(),
            "postgres needs at least one [postgres.databases.NAME] table",
        );
    }
    for (name, db) in &r.databases {
        if scalegate_pg::console::is_console(name.get_ref()) {
            c.err(
                name.span(),
                format!(
                    "database name {:?} is taken by the admin console; choose another",
                    name.get_ref()
                ),
            );
        }
        if let Some(d) = database(c, name.get_ref(), db) {
            databases.push(d);
        }
    }
    let mut spec = PgSpec::new(listen?, databases);
    for (name, u) in &r.users {
        let u = u.get_ref();
        let auth = match u.auth.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("scram-sha-256") | Some("scram") => ClientAuth::Scram,
            Some("md5") => ClientAuth::Md5,
            Some("trust") => ClientAuth::Trust,
            Some(other) => {
                if let Some(a) = &u.auth {
                    c.err(
                        a.span(),
                        format!(r#"auth {other:?}: expected "scram-sha-256", "md5" or "trust""#),
                    );
                }
                ClientAuth::Scram
            }
        };
        spec.users.push(UserSpec {
            name: name.clone(),
            password: u.password.get_ref().clone(),
            auth,
        });
    }
    spec.admin_users = r
        .admin_users
        .as_ref()
        .map(|a| a.get_ref().clone())
        .unwrap_or_default();
    spec.tls = r.tls.as_ref().and_then(|t| tls(c, t, base));
    spec.tls_required = r.tls_required.unwrap_or(false);
    if spec.tls_required && spec.tls.is_none() {
        c.err(
            raw.span(),
            "postgres.tls_required needs postgres.tls = { cert = …, key = … }",
        );
    }
    spec.wait_timeout = c.dur(&r.wait_timeout, spec.wait_timeout, "postgres.wait_timeout");
    spec.server_lifetime = c.dur(
        &r.server_lifetime,
        spec.server_lifetime,
        "postgres.server_lifetime",
    );
    spec.idle_timeout = c.dur(&r.idle_timeout, spec.idle_timeout, "postgres.idle_timeout");
    spec.check_after_idle = c.dur(
        &r.check_after_idle,
        spec.check_after_idle,
        "postgres.check_after_idle",
    );
    spec.idle_transaction_timeout = r.idle_transaction_timeout.is_some().then(|| {
        c.dur(
            &r.idle_transaction_timeout,
            std::time::Duration::ZERO,
            "postgres.idle_transaction_timeout",
        )
    });
    spec.max_client_conn = c.opt_int(
        &r.max_client_conn,
        1..=1_000_000,
        10_000,
        "postgres.max_client_conn",
    ) as usize;
    spec.max_prepared_statements = c.opt_int(
        &r.max_prepared_statements,
        2..=1_000_000,
        1000,
        "postgres.max_prepared_statements",
    ) as usize;
    spec.worker_threads =
        c.opt_int(&r.worker_threads, 1..=256, 1, "postgres.worker_threads") as usize;
    Some(spec)
}

fn database(c: &mut Check, name: &str, raw: &Spanned<RawDatabase>) -> Option<DatabaseSpec> {
    let d = raw.get_ref();
    let shards: Vec<ServerSpec> = d.shards.iter().filter_map(|u| server_url(c, u)).collect();
    let primary = match (&d.primary, shards.first()) {
        (Some(p), None) => server_url(c, p),
        (None, Some(first)) => Some(first.clone()),
        (Some(p), Some(_)) => {
            c.err(
                p.span(),
                "a sharded database has shards instead of a primary; remove primary",
            );
            None
        }
        (None, None) => {
            c.err(
                raw.span(),
                format!("database {name}: expected primary = \"postgres://…\" or shards = [...]"),
            );
            None
        }
    };
    let sharding = sharding(c, d, raw, shards.len());
    let replicas: Vec<ServerSpec> = d.replicas.iter().filter_map(|u| server_url(c, u)).collect();
    servers_once(c, name, d);
    let pool_mode = match d.pool_mode.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("transaction") => PoolMode::Transaction,
        Some("session") => PoolMode::Session,
        Some(other) => {
            if let Some(m) = &d.pool_mode {
                c.err(
                    m.span(),
                    format!(r#"pool_mode {other:?}: expected "transaction" or "session""#),
                );
            }
            PoolMode::Transaction
        }
    };
    let pool_size = match d.pool_size.as_ref() {
        None => 20,
        Some(v) => match v.get_ref() {
            toml::Value::String(s) if s == "auto" => scalegate_pg::auto_pool_size(),
            toml::Value::Integer(n) if (1..=10_000).contains(n) => *n as usize,
            other => {
                c.err(
                    v.span(),
                    format!(
                        "pool_size {other}: expected a number of connections (1 to 10000) or \"auto\" (cores × 2 + 1)"
                    ),
                );
                20
            }
        },
    };
    let on_session_state = match d.on_session_state.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("pin") => scalegate_pg::OnSessionState::Pin,
        Some("refuse") => scalegate_pg::OnSessionState::Refuse,
        Some(other) => {
            if let Some(m) = &d.on_session_state {
                c.err(
                    m.span(),
                    format!(r#"on_session_state {other:?}: expected "pin" or "refuse""#),
                );
            }
            scalegate_pg::OnSessionState::Pin
        }
    };
    let min_idle = c.opt_int(&d.min_idle, 0..=10_000, 0, "min_idle") as usize;
    if min_idle > pool_size
        && let Some(m) = &d.min_idle
    {
        c.err(
            m.span(),
            format!("min_idle {min_idle} is larger than pool_size {pool_size}"),
        );
    }
    Some(DatabaseSpec {
        name: name.to_string(),
        primary: primary?,
        replicas,
        pool_mode,
        pool_size,
        min_idle,
        shards,
        sharding,
        on_session_state,
        max_lag: c.dur(
            &d.max_replica_lag,
            std::time::Duration::from_secs(5),
            "max_replica_lag",
        ),
        max_lag_bytes: d
            .max_replica_lag_bytes
            .as_ref()
            .map_or(16 << 20, |b| b.get_ref().0),
        health_interval: c.dur(
            &d.health_interval,
            std::time::Duration::from_secs(1),
            "health_interval",
        ),
    })
}

/// TLS for pooler clients: the listener certificate rules, with ALPN "postgresql".
fn tls(
    c: &mut Check,
    t: &Spanned<super::raw::RawTls>,
    base: &std::path::Path,
) -> Option<scalegate_pg::spec::PgTls> {
    use std::hash::{Hash, Hasher};
    let read = |p: &str| std::fs::read(base.join(p)).map_err(|e| format!("cannot read {p:?}: {e}"));
    let built = read(&t.get_ref().cert).and_then(|cert| {
        let key = read(&t.get_ref().key)?;
        let spec = scalegate_http::tls::TlsSpec::from_pem(&cert, &key)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&cert, &key).hash(&mut h);
        Ok((spec, h.finish()))
    });
    match built {
        Ok((spec, fingerprint)) => {
            let mut config = (*spec.config).clone();
            config.alpn_protocols = vec![b"postgresql".to_vec()];
            Some(scalegate_pg::spec::PgTls {
                config: std::sync::Arc::new(config),
                fingerprint,
            })
        }
        Err(e) => {
            c.err(t.span(), format!("postgres.tls: {e}"));
            None
        }
    }
}

/// The sharding rules of a database with `shards`.
fn sharding(
    c: &mut Check,
    d: &RawDatabase,
    raw: &Spanned<RawDatabase>,
    shards: usize,
) -> Option<std::sync::Arc<scalegate_pg::sharding::ShardingSpec>> {
    use scalegate_pg::shard::{ShardFn, default_map};
    use scalegate_pg::sharding::{ShardKey, ShardingSpec};
    let Some(rs) = &d.sharding else {
        if !d.shards.is_empty() {
            c.err(
                raw.span(),
                "shards need a sharding = { keys = [\"table.column\"], ... } table",
            );
        }
        return None;
    };
    if d.shards.is_empty() {
        c.err(rs.span(), "sharding needs shards = [\"postgres://…\", …]");
        return None;
    }
    if !d.replicas.is_empty() {
        c.err(rs.span(), "a sharded database cannot have replicas (yet)");
    }
    if let Some(m) = &d.pool_mode
        && m.get_ref() != "transaction"
    {
        c.err(
            m.span(),
            "a sharded database needs pool_mode = \"transaction\"",
        );
    }
    let r = rs.get_ref();
    let function = match r.function.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("hash") => ShardFn::Hash,
        Some("modulus") => ShardFn::Modulus,
        Some(other) => {
            if let Some(f) = &r.function {
                c.err(
                    f.span(),
                    format!(r#"function {other:?}: expected "hash" or "modulus""#),
                );
            }
            ShardFn::Hash
        }
    };
    // Default: the largest multiple of the shard count up to 256, so the default map agrees
    // with PostgreSQL's MODULUS N partitioning.
    let default_virtual = (256 / shards.max(1) * shards.max(1)).max(shards) as i64;
    let virtual_shards = c.opt_int(
        &r.virtual_shards,
        shards as i64..=65_536,
        default_virtual,
        "virtual_shards",
    ) as u32;
    let mut keys = Vec::new();
    for k in &r.keys {
        let (name, text) = match k.get_ref().split_once(':') {
            Some((n, "text")) => (n, true),
            Some((n, "int" | "bigint")) => (n, false),
            Some(_) => {
                c.err(
                    k.span(),
                    format!(
                        "key {:?}: the type after ':' must be text or int",
                        k.get_ref()
                    ),
                );
                continue;
            }
            None => (k.get_ref().as_str(), false),
        };
        if text && function == ShardFn::Modulus {
            c.err(
                k.span(),
                "a text key needs function = \"hash\" (modulus takes integers)",
            );
        }
        match name.split_once('.') {
            Some((t, col)) if !t.is_empty() && !col.is_empty() => keys.push(ShardKey {
                table: t.to_ascii_lowercase(),
                column: col.to_ascii_lowercase(),
                text,
            }),
            _ => c.err(
                k.span(),
                format!(
                    "key {:?}: expected \"table.column\" or \"table.column:text\"",
                    k.get_ref()
                ),
            ),
        }
    }
    if keys.is_empty() && r.param.is_none() {
        c.err(
            rs.span(),
            "sharding needs keys = [\"table.column\", …] or param = N",
        );
    }
    let map = match &r.map {
        None => default_map(virtual_shards, shards),
        Some(m) => {
            let v = m.get_ref();
            if v.len() != virtual_shards as usize
                || v.iter().any(|&s| s < 0 || s as usize >= shards)
            {
                c.err(
                    m.span(),
                    format!(
                        "map must list {virtual_shards} shard numbers from 0 to {}",
                        shards.saturating_sub(1)
                    ),
                );
                default_map(virtual_shards, shards)
            } else {
                v.iter().map(|&s| s as usize).collect()
            }
        }
    };
    let param = (r.param.is_some()).then(|| c.opt_int(&r.param, 1..=65_535, 1, "param") as usize);
    Some(std::sync::Arc::new(ShardingSpec {
        function,
        virtual_shards,
        map,
        keys,
        param,
    }))
}

/// Refuses a server listed twice in one database (as primary and replica, or as two shards):
/// its health and role would be tracked twice, and its metrics series doubled.
fn servers_once(c: &mut Check, name: &str, d: &RawDatabase) {
    let mut seen = std::collections::HashSet::new();
    for raw in d.primary.iter().chain(&d.shards).chain(&d.replicas) {
        let Some(Ok(s)) = parse_url(raw.get_ref()) else {
            continue;
        };
        if !seen.insert((s.host.to_ascii_lowercase(), s.port, s.dbname)) {
            c.err(
                raw.span(),
                format!(
                    "database {name}: {}:{} is listed twice; each server (host, port and database) once",
                    s.host, s.port
                ),
            );
        }
    }
}

/// `postgres://[user[:password]@]host[:port][/dbname]`.
fn server_url(c: &mut Check, raw: &Spanned<String>) -> Option<ServerSpec> {
    let parsed = parse_url(raw.get_ref());
    match &parsed {
        None => c.err(
            raw.span(),
            format!(
                "{:?}: expected a URL like \"postgres://user[:password]@host[:port]/dbname[?sslmode=require]\"",
                raw.get_ref()
            ),
        ),
        Some(Err(e)) => c.err(raw.span(), format!("{:?}: {e}", raw.get_ref())),
        Some(Ok(_)) => {}
    }
    parsed.and_then(Result::ok)
}

/// The `?sslmode=…&sslrootcert=…` part of a server URL.
fn url_tls(spec: &mut ServerSpec, query: &str) -> Result<(), String> {
    use scalegate_pg::spec::SslMode;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v).ok_or("bad percent-encoding")?;
        match k {
            "sslmode" => {
                spec.sslmode = match v.as_str() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode {other:?}: expected disable, prefer, require or verify-full"
                        ));
                    }
                }
            }
            "sslrootcert" => {
                if !std::path::Path::new(&v).exists() {
                    return Err(format!("sslrootcert {v:?} does not exist"));
                }
                spec.sslrootcert = Some(v.into());
            }
            other => {
                return Err(format!(
                    "unknown URL parameter {other:?} (sslmode, sslrootcert)"
                ));
            }
        }
    }
    if spec.sslmode == SslMode::VerifyFull && spec.sslrootcert.is_none() {
        return Err("sslmode=verify-full needs sslrootcert=/path/to/ca.crt".into());
    }
    Ok(())
}

fn parse_url(url: &str) -> Option<Result<ServerSpec, String>> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (hostport, dbname) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 5432),
    };
    if host.is_empty() {
        return None;
    }
    let (user, password) = match auth {
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (Some(decode(u)?), Some(decode(p)?)),
            None => (Some(decode(a)?), None),
        },
        None => (None, None),
    };
    let mut spec = ServerSpec {
        host: host.trim_matches(['[', ']']).to_string(),
        port,
        dbname: decode(dbname)?,
        user,
        password,
        sslmode: Default::default(),
        sslrootcert: None,
    };
    Some(url_tls(&mut spec, query).map(|()| spec))
}

/// Percent-decoding for URL parts.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The database name a server spec falls back to when the URL names none: the virtual name.
pub(super) fn fill_dbnames(spec: &mut PgSpec) {
    for d in &mut spec.databases {
        if d.primary.dbname.is_empty() {
            d.primary.dbname.clone_from(&d.name);
        }
        for r in d.replicas.iter_mut().chain(d.shards.iter_mut()) {
            if r.dbname.is_empty() {
                r.dbname.clone_from(&d.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        let url = |u: &str| parse_url(u).and_then(Result::ok);
        let s = url("postgres://postgres@127.0.0.1:55432/bench").expect("url");
        assert_eq!(
            (s.host.as_str(), s.port, s.dbname.as_str()),
            ("127.0.0.1", 55432, "bench")
        );
        assert_eq!(s.user.as_deref(), Some("postgres"));
        let s = url("postgresql://app:p%40ss@db.internal/app?sslmode=require").expect("url");
        assert_eq!(s.sslmode, scalegate_pg::spec::SslMode::Require);
        assert_eq!((s.port, s.password.as_deref()), (5432, Some("p@ss")));
        assert!(parse_url("mysql://x").is_none());
        assert!(matches!(
            parse_url("postgres://h/db?sslmode=verify-full"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_url("postgres://h/db?sslmode=allow"),
            Some(Err(_))
        ));
        assert!(parse_url("postgres://u@:5432/x").is_none());
    }
}
