//! `scalegate`: the scaling tier of a web stack in one binary.
//!
//! Subcommands: `run` (serve a config file), `check` (validate one), `demo` (a gateway in front
//! of built-in backends, no set-up needed).

mod admin;
mod admin_cache;
mod admin_fanout;
mod admin_places;
mod admin_queue;
mod alloc;
mod config;
mod demo;
mod discovery;
mod fleet_metrics;
mod pg;
mod plan;
mod run;
mod switches;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: alloc::Mimalloc = alloc::Mimalloc;

/// The scaling tier of a web stack in one binary: HTTP gateway with load balancing, health checks
/// and graceful reloads.
#[derive(Parser, Debug)]
#[command(name = "scalegate", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a config file: SIGHUP or a change of the file reloads it, SIGTERM drains and exits.
    Run {
        #[command(flatten)]
        config: ConfigPath,
    },
    /// Validate a config file: print every problem as FILE:LINE:COL: message, or a summary.
    Check {
        #[command(flatten)]
        config: ConfigPath,
    },
    /// Capacity plan for a config at a peak: instances, concurrency, pools, shared state.
    Plan {
        #[command(flatten)]
        config: ConfigPath,
        /// The peak and the machines to plan for.
        #[command(flatten)]
        input: plan::PlanInput,
    },
    /// PostgreSQL pooler tools.
    Pg {
        #[command(subcommand)]
        command: PgCommand,
    },
    /// Start a gateway in front of three built-in backends with different latencies.
    Demo {
        /// Gateway address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Admin address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
    },
}

/// The config file, named by `--config FILE` or by itself (`scalegate check FILE`).
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct ConfigPath {
    /// Path of the TOML config file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Path of the TOML config file (the same as --config).
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

impl ConfigPath {
    fn path(self) -> PathBuf {
        self.config.or(self.file).unwrap_or_default()
    }
}

#[derive(Subcommand, Debug)]
enum PgCommand {
    /// Print which virtual shards move, and where, when one shard is added to a database.
    ReshardPlan {
        /// Path of the TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The sharded database.
        #[arg(short, long)]
        database: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config.path()),
        Command::Run { config } => {
            let path = config.path();
            match config::Config::load(&path) {
                Ok(c) => exit(run::run(c, Some(path), None)),
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo { listen, admin } => exit(demo::run(listen, admin)),
        Command::Plan { config, input } => match config::Config::load(&config.path()) {
            Ok(c) => {
                print!("{}", plan::plan(&c, &input));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Pg {
            command: PgCommand::ReshardPlan { config, database },
        } => match config::Config::load(&config) {
            Ok(c) => match pg::reshard_plan(&c, &database) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("scalegate: {e}");
                    ExitCode::from(1)
                }
            },
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
    }
}

/// `scalegate check`: every problem as FILE:LINE:COL, or a summary.
fn check(config: &std::path::Path) -> ExitCode {
    match config::Config::load(config) {
        Ok(c) => {
            for w in c.warning_lines(config) {
                eprintln!("{w}");
            }
            println!("{}: ok: {}", config.display(), c.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: {} problem(s)", config.display(), e.problems.len());
            ExitCode::from(1)
        }
    }
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scalegate: {e:#}");
            ExitCode::from(1)
        }
    }
}
