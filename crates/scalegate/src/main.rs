//! `scalegate`: the scaling tier of a web stack in one binary.
//!
//! Subcommands: `run` (serve a config file), `check` (validate one), `demo` (a gateway in front
//! of built-in backends, no set-up needed).

mod admin;
mod admin_cache;
mod admin_fanout;
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
        Command::Plan { config, input } => match config::Config::load(&config) {
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

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scalegate: {e:#}");
            ExitCode::from(1)
        }
    }
}
