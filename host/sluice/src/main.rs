//! The `sluice` command: run the stream pool from a config file, check a config, or run the
//! embedded demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_config::Config;

mod demo;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A gRPC stream pool with pluggable policies"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Async worker threads (default: one per CPU core).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the stream pool with a config file.
    Run {
        /// The TOML config (see examples/).
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective settings.
    CheckConfig {
        /// The TOML config.
        config: PathBuf,
    },
    /// Run a self-contained demo: 3 simulated endpoints, 20 monitors and the pool.
    Demo {
        /// Stop after this long (e.g. `30s`); runs until Ctrl-C when omitted.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Where the demo's Sluice listens for monitors.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
        /// Seconds between status lines.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        report_every: Duration,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.worker_threads {
        builder.worker_threads(usize::from(threads));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::CheckConfig { config } => check_config(config),
            Command::Demo {
                duration,
                listen,
                report_every,
            } => {
                demo::run(demo::DemoOptions {
                    duration,
                    listen,
                    report_every,
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::from_file(&path)?;
    println!("{} is valid", path.display());
    for class in sluice_config::TrafficClass::ALL {
        let c = config.classes.get(class);
        println!(
            "  class {class}: up to {} connections, {} streams each, lag policy {:?}",
            c.connection_limit(config.pool.max_connections),
            c.max_streams_per_connection,
            c.lag_policy
        );
    }
    for e in &config.endpoints {
        println!(
            "  endpoint {}: {} (region {}, priority {}, tls {})",
            e.id,
            e.url,
            e.region,
            e.priority,
            e.uses_tls()
        );
    }
    println!(
        "  {} monitors, {} method rules",
        config.monitors.len(),
        config.methods.len()
    );
    Ok(())
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Arc::new(Config::from_file(&path)?);
    let proxy = sluice_proxy::Proxy::bind(config).await?;
    let handle = proxy.spawn();
    println!("sluice listening on {}", handle.addr());
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
