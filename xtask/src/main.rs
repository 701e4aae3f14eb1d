//! `cargo xtask`: the drivers behind `make bench`, `make soak`, `make chaos` and `make
//! contract-test`. They start private processes through the test kit (the integration
//! tests' own), drive them with the load generator, and judge what it reports with the
//! types that wrote the report (`roomcast_loadtest::report`). Exit status: 0 passed, 1
//! a verdict failed, 2 the run could not be made.

mod bench;
mod chaos;
mod contract;
mod kit;
mod report;
mod soak;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    about = "Roomcast's benchmark, soak and chaos drivers (make bench, make soak, make chaos)"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Benchmark scenarios (BENCHMARKS.md); results in bench/.
    Bench(bench::Args),
    /// A long run under churn, judged on growth, loss and leaks (BENCHMARKS.md, Reliability).
    Soak(soak::Args),
    /// Fault scenarios under load, judged on the acked-vs-delivered accounting.
    Chaos(chaos::Args),
    /// schemathesis against the served OpenAPI document (make contract-test).
    Contract(contract::Args),
    /// A benchmark summary or table rendered again from the results on disk.
    #[command(subcommand)]
    Report(bench::ReportCmd),
    /// Silent connections to a gateway (the silent scenario runs two of these).
    #[command(hide = true)]
    Flood(bench::FloodArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Cli::parse().task {
        Task::Bench(args) => bench::run(args).await,
        Task::Soak(args) => soak::run(args).await,
        Task::Chaos(args) => chaos::run(args).await,
        Task::Contract(args) => contract::run(args).await,
        Task::Flood(args) => bench::flood(args).await,
        Task::Report(cmd) => {
            return match bench::report(cmd) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("xtask: {e}");
                    ExitCode::from(2)
                }
            }
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::from(2)
        }
    }
}
