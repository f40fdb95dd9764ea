//! `sluice-feed`: runs the feed service until Ctrl-C or SIGTERM.
//!
//! Prints `sluice-feed listening on <addr>` on stdout once listening (scripts parse that line to
//! learn the port when `--listen` asks for port 0); logs go to stderr (`RUST_LOG`, default
//! `info`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sluice_feed::{FeedConfig, TlsIdentity};
use tracing_subscriber::EnvFilter;

/// The feed service: a gRPC upstream with injectable latency, errors and disconnects.
#[derive(Debug, Parser)]
#[command(name = "sluice-feed", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Latency added before every response, e.g. `0ms`, `25ms`, `1s`.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Fraction of calls (0..=1) failed with UNAVAILABLE, deterministically spread.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// End every Subscribe stream with UNAVAILABLE after this many events.
    #[arg(long)]
    disconnect_after: Option<u64>,
    /// Name reported in the `x-feed-name` response header.
    #[arg(long, default_value = "feed")]
    name: String,
    /// Answer every Feed call with this gRPC status code (8 RESOURCE_EXHAUSTED, 16
    /// UNAUTHENTICATED, ...), as a provider whose quota is spent or whose credentials are revoked.
    #[arg(long)]
    refuse_code: Option<i32>,
    /// `grpc-retry-pushback-ms` sent with --refuse-code.
    #[arg(long, requires = "refuse_code")]
    refuse_pushback_ms: Option<i64>,
    /// PEM certificate chain; serve TLS (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (needs --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::from_files(cert, key)?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let config = FeedConfig {
        latency: args.latency,
        error_rate: args.error_rate,
        disconnect_after: args.disconnect_after,
        name: args.name,
        refuse: args.refuse_code.map(|code| sluice_feed::Refusal {
            code: tonic::Code::from_i32(code),
            pushback_ms: args.refuse_pushback_ms,
        }),
    };
    let handle = sluice_feed::spawn(args.listen, config, tls)
        .await
        .context("starting the feed server")?;

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "sluice-feed listening on {}", handle.addr)?;
        stdout.flush()?;
    }

    wait_for_stop_signal().await?;
    tracing::info!("stopping");
    handle.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for Ctrl-C or, on Unix, SIGTERM (what process supervisors and test harnesses send).
async fn wait_for_stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
