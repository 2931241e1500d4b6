//! Loading the config file: parse (serde, unknown keys rejected), validate into plain runtime
//! specs, and report every problem as `FILE:LINE:COL: message`.
//!
//! Which settings a reload can change: everything under `listeners`, `routes`, `upstreams`,
//! `[cluster]`, `[cache]`, `runtime.zone` and `log.access_log` applies on reload, and under
//! `[postgres]` everything but `listen` and `worker_threads`; `runtime.worker_threads`,
//! `runtime.mode`, `admin.listen`, `log.format` and adding or removing `[postgres]` need a
//! restart (a reload that changes them logs a warning and keeps the running
//! values).

mod binds;
mod cache;
mod cluster;
mod dns;
mod edge;
mod edits;
mod fanout;
mod files;
mod lint;
mod nats;
mod pg;
mod queue;
mod raw;
mod refuse;
mod units;
mod validate;
mod zone;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scalegate_http::GatewaySpec;

pub use raw::{LogFormat, RuntimeMode};
pub use units::parse_duration;

/// A validated config.
#[derive(Clone, Debug)]
pub struct Config {
    /// Threads and runtime shape (restart to change).
    pub runtime: RuntimeConfig,
    /// Admin listener address (restart to change).
    pub admin_listen: SocketAddr,
    /// Bearer token for the admin API's runtime switches (None: switches disabled).
    pub admin_token: Option<String>,
    /// Longest wait for in-flight requests at shutdown (default 30 s).
    pub drain_timeout: Duration,
    /// Reload when the file changes (default true).
    pub watch_config: bool,
    /// Process log format (restart to change).
    pub log_format: LogFormat,
    /// The data path.
    pub gateway: GatewaySpec,
    /// The features on top of it (cache, queued routes, fan-out), per route and gateway-wide.
    pub features: scalegate_features::FeatureSpec,
    /// The PostgreSQL pooler, when `[postgres]` is present (restart to change).
    pub postgres: Option<scalegate_pg::PgSpec>,
    /// Valid but surprising settings, as (line, column, "warning: ...").
    pub warnings: Vec<(usize, usize, String)>,
    /// The TLS files it read; a change to one reloads like a change to the config file.
    pub files: Vec<std::path::PathBuf>,
}

/// Threads and runtime shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Cores used for the data path (default: all).
    pub worker_threads: usize,
    /// Thread per core or work stealing.
    pub mode: RuntimeMode,
    /// The gateway's availability zone (`runtime.zone` or `SCALEGATE_ZONE`).
    pub zone: Option<String>,
}

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Byte range in the file (None when the error has no position).
    pub span: Option<Range<usize>>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem of one file, printable as `FILE:LINE:COL: message` lines.
#[derive(Clone, Debug)]
pub struct ConfigErrors {
    /// The file.
    pub path: PathBuf,
    /// The problems, each located.
    pub problems: Vec<(usize, usize, String)>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (line, col, msg)) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{line}:{col}: {msg}", self.path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            path: path.to_path_buf(),
            problems: vec![(1, 1, format!("cannot read config file: {e}"))],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse_in(&text, base).map_err(|problems| ConfigErrors {
            path: path.to_path_buf(),
            problems: problems.into_iter().map(|p| locate(&text, p)).collect(),
        })
    }

    /// Validates config text, with relative paths (TLS files) taken from the current directory.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        Config::parse_in(text, Path::new("."))
    }

    /// Validates config text whose relative paths are relative to `base`; every problem found is
    /// returned.
    pub fn parse_in(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            vec![Problem {
                span: e.span(),
                message: e.message().trim_end().replace('\n', " "),
            }]
        })?;
        let warnings = lint::lint(&raw);
        let files = files::referenced(&raw, base);
        let mut config = validate::validate(raw, base)?;
        config.warnings = warnings.into_iter().map(|p| locate(text, p)).collect();
        config.files = files;
        Ok(config)
    }

    /// The warnings as `FILE:LINE:COL: warning: ...` lines.
    pub fn warning_lines(&self, path: &Path) -> Vec<String> {
        self.warnings
            .iter()
            .map(|(l, c, m)| format!("{}:{l}:{c}: {m}", path.display()))
            .collect()
    }

    /// One line for `scalegate check`: what the file sets up.
    pub fn summary(&self) -> String {
        let g = &self.gateway;
        let endpoints: usize = g.upstreams.iter().map(|u| u.endpoints.len()).sum();
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        let mut s = format!(
            "{}, {}, {}, {}",
            plural(g.listeners.len(), "listener"),
            plural(g.routes.len(), "route"),
            plural(g.upstreams.len(), "upstream"),
            plural(endpoints, "endpoint"),
        );
        if let Some(pg) = &self.postgres {
            s.push_str(&format!(
                ", postgres on {} with {}",
                pg.listen,
                plural(pg.databases.len(), "database")
            ));
        }
        s
    }

    /// Settings that differ from `running` but only apply after a restart.
    pub fn restart_needed(&self, running: &Config) -> Vec<&'static str> {
        let mut v = Vec::new();
        // The zone is applied through the upstreams' specs, so it needs no restart.
        if self.runtime.worker_threads != running.runtime.worker_threads {
            v.push("runtime.worker_threads");
        }
        if self.runtime.mode != running.runtime.mode {
            v.push("runtime.mode");
        }
        if self.admin_listen != running.admin_listen {
            v.push("admin.listen");
        }
        if self.log_format != running.log_format {
            v.push("log.format");
        }
        // The pooler applies its own changes (see `scalegate_pg::Pooler::apply`); starting or
        // stopping it takes a restart.
        if self.postgres.is_some() != running.postgres.is_some() {
            v.push("postgres");
        }
        v
    }
}

/// Turns a byte span into a 1-based line and column (in characters).
fn locate(text: &str, p: Problem) -> (usize, usize, String) {
    let Some(span) = p.span else {
        return (1, 1, p.message);
    };
    let at = span.start.min(text.len());
    let before = &text[..text.floor_char_boundary(at)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col, p.message)
}

#[cfg(test)]
mod tests;
