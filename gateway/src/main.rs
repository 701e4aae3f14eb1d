//! The `roomcast` binary: parse config, set up logging, bind, run. Nothing else lives here.

use clap::Parser;
use gateway::auth::Authenticator;
use gateway::config::{Cli, Command, EXIT_CONFIG};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors; everything else is a bad configuration.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!(
                "roomcast: invalid configuration: {}",
                one_line(&e.to_string())
            );
            std::process::exit(EXIT_CONFIG);
        }
    };
    // Minting needs a secret and nothing else a server needs.
    let checked = match cli.command {
        Some(Command::Token(_)) => cli.config.validate_for_minting(),
        _ => gateway::check_config(&cli.config),
    };
    if let Err(e) = checked {
        eprintln!("roomcast: {e}");
        std::process::exit(EXIT_CONFIG);
    }
    match cli.command {
        Some(Command::Token(args)) => {
            let token = Authenticator::from_config(&cli.config).and_then(|auth| {
                auth.mint(&args)
                    .map_err(|e| gateway::config::ConfigError(e.to_string()))
            });
            match token {
                Ok(token) => println!("{token}"),
                Err(e) => {
                    eprintln!("roomcast: {e}");
                    std::process::exit(EXIT_CONFIG);
                }
            }
        }
        None | Some(Command::Serve) => serve(cli.config),
    }
}

fn serve(mut config: gateway::config::Config) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    // Resolved once so logs, traces and the Redis node registry agree on it.
    let node_id = config.resolve_node_id();
    config.node_id = Some(node_id.clone());
    // The gRPC trace exporter needs the runtime, so telemetry starts inside it.
    let telemetry = match runtime.block_on(async { gateway::telemetry::init(&config, &node_id) }) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("roomcast: invalid configuration: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        gateway::run(config, listener, shutdown_signal()).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    // Flush buffered spans; the exporter blocks, so off the async workers.
    runtime.block_on(async {
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    });
    if let Err(e) = result {
        tracing::error!(error = %e, "gateway failed");
        eprintln!("roomcast: {e}");
        let code = if e
            .downcast_ref::<gateway::StartError>()
            .is_some_and(|e| matches!(e, gateway::StartError::Config(_)))
        {
            EXIT_CONFIG
        } else {
            1
        };
        std::process::exit(code);
    }
}

/// clap's message up to its usage block, on one line: the first line alone can end in a
/// colon with the missing arguments on the lines below it.
fn one_line(text: &str) -> String {
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = message.join(" ");
    let joined = joined.trim_start_matches("error: ");
    if joined.is_empty() {
        "invalid arguments".to_string()
    } else {
        joined.to_string()
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
