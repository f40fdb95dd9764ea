//! `sluice-load`: the load generator of the benchmarks.
//!
//! Drives the Feed service (directly or through a proxy) and prints one JSON object on stdout:
//! - `stream`: N Subscribe streams; counts events received after the warm-up and the one-way
//!   latency `now - sent_at_ns` (both ends on one machine share the wall clock);
//! - `unary`: closed-loop Echo calls at a fixed concurrency;
//! - `idle`: N nearly silent Subscribe streams held open, to measure what idle streams cost;
//!   prints `{"ready":N}` once all have their response headers, then holds them.
//!
//! Logs and errors go to stderr, so stdout holds nothing but the JSON.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;
use sluice_feed::MAX_MESSAGE_SIZE;
use sluice_feed::pb::feed_client::FeedClient;
use sluice_feed::pb::{EchoRequest, SubscribeRequest};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing_subscriber::EnvFilter;

/// Metadata key naming the monitor a call belongs to (read by the proxy).
const MONITOR_HEADER: &str = "x-sluice-monitor";
/// Highest latency the histograms track: one hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-load",
    version,
    about = "Load generator for the Feed service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Subscribe streams: throughput and one-way latency of events.
    Stream(StreamArgs),
    /// Closed-loop Echo calls: call rate and latency.
    Unary(UnaryArgs),
    /// Nearly silent Subscribe streams held open.
    Idle(IdleArgs),
}

/// Options shared by every subcommand.
#[derive(Debug, Args)]
struct Target {
    /// Server URL, e.g. http://127.0.0.1:50051 (https:// needs --ca-cert).
    #[arg(long)]
    target: String,
    /// Sets `x-sluice-monitor: <ID>` on every call.
    #[arg(long)]
    monitor: Option<String>,
    /// PEM CA certificate trusted for an https:// target.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// TLS server name to verify (default: the target's host).
    #[arg(long)]
    tls_domain: Option<String>,
}

#[derive(Debug, Args)]
struct StreamArgs {
    #[command(flatten)]
    target: Target,
    /// Number of Subscribe streams.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Number of connections; streams are spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 64)]
    payload: u32,
    /// Events per second per stream; 0 is unthrottled.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Measured time, after the warm-up.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time before measuring starts.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

#[derive(Debug, Args)]
struct UnaryArgs {
    #[command(flatten)]
    target: Target,
    /// Calls in flight at any time.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Payload bytes per request.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Measured time, after the warm-up.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time before measuring starts.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Number of streams to hold.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Number of connections; streams are spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long to hold the streams (ends earlier when stdin reaches EOF).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    hold: Duration,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Multi-threaded: the client must not be the bottleneck of what it measures.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let output = runtime.block_on(async {
        match cli.command {
            Command::Stream(args) => run_stream(args).await,
            Command::Unary(args) => run_unary(args).await,
            Command::Idle(args) => run_idle(args).await,
        }
    })?;
    // Streams still held by tasks are torn down with the runtime; don't wait for them.
    runtime.shutdown_background();
    if let Some(output) = output {
        print_line(&output)?;
    }
    Ok(())
}

fn print_line(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{value}")?;
    stdout.flush()?;
    Ok(())
}

/// Opens `connections` HTTP/2 connections (one tonic Channel each) to the target.
async fn connect(target: &Target, connections: usize) -> anyhow::Result<Vec<Channel>> {
    if connections == 0 {
        bail!("--connections must be at least 1");
    }
    let mut endpoint = Endpoint::from_shared(target.target.clone())
        .with_context(|| format!("bad target {:?}", target.target))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        // Generous windows so that flow control, not the client, limits large payloads.
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024);
    if let Some(ca) = &target.ca_cert {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let Some(domain) = &target.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
    }
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        // Each connect() is its own connection: tonic Channels do not share connections.
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("connecting to {}", target.target))?,
        );
    }
    Ok(channels)
}

fn client(channel: Channel) -> FeedClient<Channel> {
    FeedClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Wraps a message in a request carrying the monitor header, if any.
fn request<T>(
    message: T,
    monitor: &Option<MetadataValue<tonic::metadata::Ascii>>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(monitor) = monitor {
        request
            .metadata_mut()
            .insert(MONITOR_HEADER, monitor.clone());
    }
    request
}

fn monitor_value(target: &Target) -> anyhow::Result<Option<MetadataValue<tonic::metadata::Ascii>>> {
    target
        .monitor
        .as_deref()
        .map(|id| id.parse().context("--monitor is not a valid header value"))
        .transpose()
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("creating histogram")
}

fn latency_json(histogram: &Histogram<u64>) -> serde_json::Value {
    json!({
        "p50": histogram.value_at_quantile(0.50),
        "p99": histogram.value_at_quantile(0.99),
        "p999": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
    })
}

/// What one stream task measured inside the window.
struct StreamTally {
    msgs: u64,
    bytes: u64,
    errors: u64,
    latency: Histogram<u64>,
}

async fn run_stream(args: StreamArgs) -> anyhow::Result<Option<serde_json::Value>> {
    if args.rate < 0.0 || !args.rate.is_finite() {
        bail!("--rate must be a finite number >= 0");
    }
    let monitor = monitor_value(&args.target)?;
    let channels = connect(&args.target, args.connections).await?;

    // The window is defined on the wall clock, the same clock as `sent_at_ns`, so one clock read
    // per event decides both whether it counts and its latency.
    let start_ns = now_ns();
    let window_start_ns = start_ns + args.warmup.as_nanos() as i64;
    let window_end_ns = window_start_ns + args.duration.as_nanos() as i64;
    let deadline = Instant::now() + args.warmup + args.duration;

    let mut tasks = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let mut client = client(channels[i % channels.len()].clone());
        let monitor = monitor.clone();
        let subscribe = SubscribeRequest {
            from_seq: 0,
            rate: args.rate,
            payload_bytes: args.payload,
            count: 0,
            topic: format!("load-{i}"),
        };
        let mut tally = StreamTally {
            msgs: 0,
            bytes: 0,
            errors: 0,
            latency: new_histogram()?,
        };
        tasks.push(tokio::spawn(async move {
            let work = async {
                let mut next_seq = 0;
                loop {
                    let mut subscribe = subscribe.clone();
                    subscribe.from_seq = next_seq;
                    let mut stream = match client.subscribe(request(subscribe, &monitor)).await {
                        Ok(response) => response.into_inner(),
                        Err(status) => {
                            tracing::warn!(%status, "subscribe failed");
                            tally.errors += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    loop {
                        match stream.message().await {
                            Ok(Some(event)) => {
                                next_seq = event.seq + 1;
                                let now = now_ns();
                                if now >= window_start_ns && now < window_end_ns {
                                    tally.msgs += 1;
                                    tally.bytes += event.payload.len() as u64;
                                    let us = (now - event.sent_at_ns).max(0) as u64 / 1000;
                                    tally.latency.saturating_record(us.max(1));
                                }
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::warn!(%status, "stream failed; resubscribing");
                                tally.errors += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                break;
                            }
                        }
                    }
                }
            };
            // The deadline cancels the loop wherever it waits; the tally, kept outside, survives.
            let _ = tokio::time::timeout_at(deadline, work).await;
            tally
        }));
    }

    let mut total = StreamTally {
        msgs: 0,
        bytes: 0,
        errors: 0,
        latency: new_histogram()?,
    };
    for task in tasks {
        let tally = task.await.context("stream task failed")?;
        total.msgs += tally.msgs;
        total.bytes += tally.bytes;
        total.errors += tally.errors;
        total
            .latency
            .add(&tally.latency)
            .context("merging histograms")?;
    }
    let secs = args.duration.as_secs_f64();
    Ok(Some(json!({
        "msgs": total.msgs,
        "secs": secs,
        "msgs_per_sec": total.msgs as f64 / secs,
        "bytes_per_sec": total.bytes as f64 / secs,
        "lat_us": latency_json(&total.latency),
        "errors": total.errors,
    })))
}

async fn run_unary(args: UnaryArgs) -> anyhow::Result<Option<serde_json::Value>> {
    let monitor = monitor_value(&args.target)?;
    let channel = connect(&args.target, 1).await?.remove(0);
    let payload = Bytes::from(vec![0x5a_u8; args.payload]);

    let start = Instant::now();
    let window_start = start + args.warmup;
    let window_end = window_start + args.duration;

    let mut tasks = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let mut client = client(channel.clone());
        let monitor = monitor.clone();
        let payload = payload.clone();
        let mut latency = new_histogram()?;
        tasks.push(tokio::spawn(async move {
            let mut calls = 0_u64;
            let mut errors = 0_u64;
            let work = async {
                loop {
                    let message = EchoRequest {
                        payload: payload.clone(),
                        text: String::new(),
                    };
                    let sent = Instant::now();
                    let result = client.echo(request(message, &monitor)).await;
                    let done = Instant::now();
                    // Only calls that started and ended inside the window count.
                    let counted = sent >= window_start && done < window_end;
                    match result {
                        Ok(_) if counted => {
                            calls += 1;
                            let us = (done - sent).as_micros() as u64;
                            latency.saturating_record(us.max(1));
                        }
                        Ok(_) => {}
                        Err(status) => {
                            if counted {
                                errors += 1;
                            }
                            tracing::debug!(%status, "echo failed");
                            // Avoid spinning on a target that refuses everything.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout_at(window_end, work).await;
            (calls, errors, latency)
        }));
    }

    let mut calls = 0;
    let mut errors = 0;
    let mut latency = new_histogram()?;
    for task in tasks {
        let (c, e, h) = task.await.context("unary task failed")?;
        calls += c;
        errors += e;
        latency.add(&h).context("merging histograms")?;
    }
    let secs = args.duration.as_secs_f64();
    Ok(Some(json!({
        "calls": calls,
        "secs": secs,
        "calls_per_sec": calls as f64 / secs,
        "lat_us": latency_json(&latency),
        "errors": errors,
    })))
}

async fn run_idle(args: IdleArgs) -> anyhow::Result<Option<serde_json::Value>> {
    let monitor = monitor_value(&args.target)?;
    let channels = connect(&args.target, args.connections).await?;
    let events = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));

    // Open every stream concurrently and wait for their response headers.
    let mut opening = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let mut client = client(channels[i % channels.len()].clone());
        let subscribe = SubscribeRequest {
            from_seq: 0,
            // One event now (the first tick), then the next one in ~3 hours.
            rate: 0.0001,
            payload_bytes: 0,
            count: 0,
            topic: format!("idle-{i}"),
        };
        let request = request(subscribe, &monitor);
        opening.push(tokio::spawn(async move { client.subscribe(request).await }));
    }
    let mut held = Vec::with_capacity(args.streams);
    let mut failed = 0_u64;
    for task in opening {
        match task.await.context("subscribe task failed")? {
            Ok(response) => held.push(response.into_inner()),
            Err(status) => {
                failed += 1;
                tracing::warn!(%status, "idle subscribe failed");
            }
        }
    }
    let ready = held.len();
    print_line(&json!({ "ready": ready }))?;

    // Keep reading so the streams stay healthy and their ends are noticed.
    for mut stream in held {
        let events = events.clone();
        let ended = ended.clone();
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {
                        events.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) | Err(_) => {
                        ended.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
    }

    // stdin is read on a plain thread: blocking reads have no place on the runtime, and EOF is
    // how a parent process says "enough".
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0_u8; 1024];
        let mut stdin = std::io::stdin().lock();
        loop {
            match std::io::Read::read(&mut stdin, &mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = eof_tx.send(());
    });
    let started = Instant::now();
    tokio::select! {
        _ = tokio::time::sleep(args.hold) => {}
        _ = eof_rx => {}
    }
    // The summary goes to stderr: stdout carries exactly the one `ready` line.
    eprintln!(
        "{}",
        json!({
            "ready": ready,
            "failed": failed,
            "held_secs": started.elapsed().as_secs_f64(),
            "events": events.load(Ordering::Relaxed),
            "ended_early": ended.load(Ordering::Relaxed),
        })
    );
    Ok(None)
}
