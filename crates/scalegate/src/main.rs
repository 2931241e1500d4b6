//! `scalegate`: the scaling tier of a web stack in one binary.
//!
//! Subcommands: `run` (serve a config file), `check` (validate one), `demo` (a gateway in front
//! of built-in backends, no set-up needed).

mod admin;
mod admin_cache;
mod admin_fanout;
mod alloc;
mod config;
mod demo;
mod discovery;
mod pg;
mod plan;
mod run;
mod switches;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Path of the TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file: print every problem as FILE:LINE:COL: message, or a summary.
    Check {
        /// Path of the TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Capacity plan for a config at a peak: instances, concurrency, pools, shared state.
    Plan {
        /// Path of the TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Peak requests per second across the whole fleet.
        #[arg(long, value_name = "N")]
        peak_rps: f64,
        /// Typical upstream response time ("40ms", "1s").
        #[arg(long, default_value = "100ms", value_parser = duration_arg)]
        latency: std::time::Duration,
        /// Requests per second one instance serves at 100% (default: 20000 per worker thread).
        #[arg(long, value_name = "N")]
        instance_rps: Option<f64>,
        /// Highest utilisation to plan for, in percent.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(5..=100))]
        target_utilization: u32,
        /// Availability zones the fleet spreads over.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
        zones: u32,
        /// Cores of the PostgreSQL server, for its connection budget.
        #[arg(long, value_name = "N")]
        db_cores: Option<u32>,
        /// Effective spindles of the PostgreSQL server (SSD: 1).
        #[arg(long, default_value_t = 1)]
        db_spindles: u32,
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
        Command::Check { config } => match config::Config::load(&config) {
            Ok(c) => {
                for w in c.warning_lines(&config) {
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
        },
        Command::Run { config } => match config::Config::load(&config) {
            Ok(c) => exit(run::run(c, Some(config), None)),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Demo { listen, admin } => exit(demo::run(listen, admin)),
        Command::Plan {
            config,
            peak_rps,
            latency,
            instance_rps,
            target_utilization,
            zones,
            db_cores,
            db_spindles,
        } => match config::Config::load(&config) {
            Ok(c) => {
                let input = plan::PlanInput {
                    peak_rps,
                    latency,
                    instance_rps,
                    target_utilization,
                    zones,
                    db_cores,
                    db_spindles,
                };
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

fn duration_arg(s: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s)
        .ok_or_else(|| format!("{s:?}: expected a duration such as \"40ms\" or \"1s\""))
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
