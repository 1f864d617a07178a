//! Freshet: CLI, config to plan, the threaded runtime, the HTTP API and
//! telemetry around the engine.
//!
//! This library exists so the `freshet` binary (`src/main.rs`, which only
//! sets the allocator and calls [`main`]) and the fuzz targets (`fuzz/` at
//! the repository root, through [`fuzzing`]) share one build of the code.
//! Its modules are private: the binary is the product, not this API.

use std::process::ExitCode;

use clap::Parser;

mod checkpoint;
mod cli;
mod client;
mod commands;
mod config;
mod eval;
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod http;
mod kafka_cli;
mod metrics;
mod telemetry;
mod topology;

/// Runs the command line: parses the arguments, runs the subcommand, and
/// returns the exit code (0 success, 1 error, 2 invalid config).
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Run(args) => commands::run(args, cli.log_format),
        cli::Command::Config(cli::ConfigCommand::Check { files }) => commands::check(&files),
        cli::Command::Gen(args) => commands::gen_events(args),
        cli::Command::Bench(args) => commands::bench(args, cli.log_format),
        cli::Command::Recommend(args) => client::recommend(&args),
        cli::Command::Similar(args) => client::similar(&args),
        cli::Command::Eval(args) => eval::run(args),
        cli::Command::Kafka(command) => kafka_cli::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<config::ConfigError>() {
                eprint!("{c}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
