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
    /// Close connections beyond this many open at once, counting each as a violation (a
    /// provider account's connection cap).
    #[arg(long)]
    max_connections: Option<u64>,
    /// Refuse Feed calls beyond this many started per second with RESOURCE_EXHAUSTED,
    /// counting each as a violation (a provider account's stream-creation rate).
    #[arg(long)]
    max_stream_rate: Option<f64>,
    /// Calls that may start at once under --max-stream-rate (default one second's worth).
    #[arg(long, requires = "max_stream_rate")]
    max_stream_burst: Option<u32>,
    /// A file read every 100 ms that switches refusals while the server runs: `refuse CODE
    /// [PUSHBACK_MS]` answers every Feed call with that status (as --refuse-code), `accept` (or
    /// an empty or missing file) serves them again.
    #[arg(long)]
    control_file: Option<PathBuf>,
    /// Print a `sluice-feed stats ...` line with the counters on stdout this often.
    #[arg(long, value_parser = humantime::parse_duration)]
    stats_every: Option<Duration>,
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
        limits: sluice_feed::ProviderLimits {
            max_connections: args.max_connections,
            streams_per_second: args.max_stream_rate,
            stream_burst: args.max_stream_burst,
        },
    };
    let handle = sluice_feed::spawn(args.listen, config, tls)
        .await
        .context("starting the feed server")?;

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "sluice-feed listening on {}", handle.addr)?;
        stdout.flush()?;
    }

    if let Some(every) = args.stats_every {
        let stats = handle.stats.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                print_stats(&stats.snapshot());
            }
        });
    }

    if let Some(path) = args.control_file.clone() {
        let handle = handle.refusal_switch();
        tokio::spawn(async move {
            let mut current = None;
            loop {
                // A few bytes, read in a blink: no blocking pool needed.
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                match parse_control(&text) {
                    Ok(wanted) if wanted != current => {
                        tracing::info!(?wanted, "control file switched refusals");
                        handle(wanted);
                        current = wanted;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "control file ignored"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    wait_for_stop_signal().await?;
    tracing::info!("stopping");
    handle.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// The refusal a control file asks for (see `--control-file`).
fn parse_control(text: &str) -> anyhow::Result<Option<sluice_feed::Refusal>> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [] | ["accept"] => Ok(None),
        ["refuse", code, rest @ ..] => {
            let code: i32 = code.parse().context("refuse CODE: not a number")?;
            let pushback_ms = match rest {
                [] => None,
                [ms] => Some(
                    ms.parse()
                        .context("refuse CODE PUSHBACK_MS: not a number")?,
                ),
                _ => bail!("refuse CODE [PUSHBACK_MS]: too many words"),
            };
            Ok(Some(sluice_feed::Refusal {
                code: tonic::Code::from_i32(code),
                pushback_ms,
            }))
        }
        _ => bail!("expected `refuse CODE [PUSHBACK_MS]` or `accept`, got {text:?}"),
    }
}

/// One `sluice-feed stats name=value ...` line (scripts such as `cargo xtask soak` read it).
fn print_stats(s: &sluice_feed::FeedStatsSnapshot) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "sluice-feed stats connections_open={} connections_peak={} connection_violations={} \
         rate_violations={} calls_total={} calls_refused={} subscribe_active={} \
         subscribe_started={} events_sent={}",
        s.connections_open,
        s.connections_peak,
        s.connection_violations,
        s.rate_violations,
        s.calls_total,
        s.calls_refused,
        s.subscribe_active,
        s.subscribe_started,
        s.events_sent,
    );
    let _ = stdout.flush();
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
