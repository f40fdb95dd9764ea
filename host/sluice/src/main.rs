//! The `sluice` command: run the stream pool from a config file, check a config, or run the
//! embedded demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_analytics::records::ReportPeriod;
use sluice_config::{Config, SlotKind};

mod cluster;
mod demo;
mod plugin_cli;
mod services;

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
    /// Async worker threads (default: `TOKIO_WORKER_THREADS`, else half the CPU cores, at least
    /// one).
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
        /// A plugins folder to load and watch (`router.wasm`, ...); built-in policies otherwise.
        #[arg(long)]
        plugins: Option<PathBuf>,
        /// Where the demo's admin API and dashboard listen.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// The history store (SQLite); default `sluice-demo/sluice.db` in the temp directory.
        #[arg(long)]
        store: Option<PathBuf>,
        /// Do not write a simulated past into an empty history store.
        #[arg(long)]
        no_history: bool,
    },
    /// Print a report of the last hour, day or week from the history store, as JSON or a
    /// self-contained HTML page.
    Report {
        /// hourly, daily or weekly.
        #[arg(value_parser = parse_period)]
        period: ReportPeriod,
        /// The config whose `[store] path` to read (read-only; the process may be running).
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Json)]
        format: ReportFormat,
    },
    /// Inspect policy plugins or load them into a running host.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Compile, type-check and self-test a component; print its world, exports and imports.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
    },
    /// Upload a component to a running host (its admin API) into a slot.
    Load {
        /// The `.wasm` component.
        file: PathBuf,
        /// The slot: router, scaler, anomaly or resumer.
        #[arg(long, value_parser = parse_slot)]
        slot: SlotKind,
        /// Load it as the slot's shadow instead of activating it.
        #[arg(long)]
        shadow: bool,
        /// The admin API's address: http://host:port, or https://host:port for one served
        /// with [admin.tls].
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// Bearer token (default: $SLUICE_ADMIN_TOKEN).
        #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// PEM CA certificate(s) to verify an https:// admin API with, e.g. the one that signed
        /// a self-signed [admin.tls] certificate (default: the public web roots).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Json,
    Html,
}

fn parse_period(text: &str) -> Result<ReportPeriod, String> {
    ReportPeriod::parse(text)
        .ok_or_else(|| format!("{text:?} is not a report period (hourly, daily, weekly)"))
}

fn parse_slot(text: &str) -> Result<SlotKind, String> {
    SlotKind::parse(text).ok_or_else(|| format!("{text:?} is not a slot ({})", SlotKind::names()))
}

fn init_logging(format: LogFormat) {
    // `h2` warns once per connection it sends away for a rapid-reset flood: a hostile client
    // must not be able to flood the log, so its own lines start at `error` unless asked for.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Caps glibc's malloc arenas at one per two worker threads.
///
/// glibc gives each thread that meets lock contention an arena of its own, and freed memory
/// stays in the arena that served it. Buffers of a stream are allocated on one worker and
/// freed on another, so with an arena per thread the same bytes are held several times over:
/// measured under 100 saturated streams, the peak RSS went from 50 MB to 36 MB with no change
/// in throughput. Small allocations still come from each thread's lock-free cache.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas(workers: usize) {
    let arenas = libc::c_int::try_from((workers / 2).max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes allocator tuning; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas(_workers: usize) {}

/// Async worker threads: `--worker-threads`, else `TOKIO_WORKER_THREADS`, else half the CPU
/// cores (at least one).
///
/// Half, because Sluice shares its host with the monitors that connect to it, and each byte it
/// forwards costs them (and the kernel) as much work as it costs Sluice. A second worker pays
/// off only once the load needs more than a core: before that, waking a worker on another
/// thread costs more than the work it takes over. On a 2-core host running Sluice, a feed and
/// a load generator, one worker instead of two cut the CPU per paced event by about 27% and the
/// paced p50 latency by about 25%, and raised unary calls/s by about 6%; saturated streams were
/// no slower.
fn worker_threads(cli: Option<u16>) -> Result<usize, String> {
    if let Some(threads) = cli {
        return Ok(usize::from(threads));
    }
    let Some(value) = std::env::var_os("TOKIO_WORKER_THREADS") else {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        return Ok((cores / 2).max(1));
    };
    match value.to_str().and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(threads) if threads > 0 => Ok(threads),
        _ => Err(format!(
            "TOKIO_WORKER_THREADS must be a positive integer, not {value:?}"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match worker_threads(cli.worker_threads) {
        Ok(workers) => workers,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    // An explicit MALLOC_ARENA_MAX in the environment wins.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        limit_malloc_arenas(workers);
    }
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
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
            Command::Report {
                period,
                config,
                format,
            } => report(period, &config, format),
            Command::Demo {
                duration,
                listen,
                report_every,
                plugins,
                admin,
                store,
                no_history,
            } => {
                demo::run(demo::DemoOptions {
                    duration,
                    listen,
                    report_every,
                    plugins,
                    admin,
                    store,
                    seed_history: !no_history,
                })
                .await
            }
            Command::Plugin(PluginCommand::Check { file }) => plugin_cli::check(&file),
            Command::Plugin(PluginCommand::Load {
                file,
                slot,
                shadow,
                admin,
                token,
                ca,
            }) => {
                plugin_cli::load(plugin_cli::LoadOptions {
                    file,
                    slot,
                    shadow,
                    admin,
                    token,
                    ca,
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

fn report(
    period: ReportPeriod,
    config: &std::path::Path,
    format: ReportFormat,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = Config::from_file(config)?;
    if config.store.in_memory() {
        anyhow::bail!("store.path is :memory:; there is no history on disk to report on");
    }
    let store = sluice_analytics::store::Store::open_read_only(&config.store.path)
        .with_context(|| format!("opening the history store {}", config.store.path.display()))?;
    let now = sluice_analytics::records::unix_ms_now();
    let report = sluice_analytics::report::Report::build(&store, period, now)?;
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ReportFormat::Html => println!("{}", report.to_html()),
    }
    Ok(())
}

fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::from_file(&path)?;
    println!("{} is valid", path.display());
    for warning in config.warnings() {
        println!("  warning: {warning}");
    }
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
    for method in config.methods.iter().filter(|m| m.resume.resumes()) {
        println!(
            "  resume {}: {}, {} attempts within {:?}",
            method.path,
            method.resume.as_str(),
            method.resume_attempts,
            method.resume_timeout
        );
    }
    for method in config.methods.iter().filter(|m| m.share && m.bidi) {
        let cap = config
            .endpoints
            .iter()
            .filter_map(|e| e.limits.max_filters_per_subscription)
            .min();
        let sharing = match (method.pack, cap) {
            (true, Some(cap)) => format!("shared, and packed up to {cap} filters per upstream subscription"),
            (true, None) => "shared, and packed (no endpoint caps filters: one upstream subscription per packing group)".to_owned(),
            (false, _) => "shared when identical".to_owned(),
        };
        println!(
            "  subscription {}: {sharing}; pings answered by Sluice; resumed from the last \
             position by the resumer plugin within {} attempts and {:?}",
            method.path, method.resume_attempts, method.resume_timeout
        );
    }
    match &config.cluster {
        Some(cluster) => println!(
            "  cluster {}: etcd {}, instance {}, lease {:?}; endpoints' max_connections and \
             max_streams split between the live instances (alone without etcd for longer than \
             the lease: each limit / {})",
            cluster.name,
            cluster.etcd.join(", "),
            cluster.instance.as_deref().unwrap_or("<host>-<port>"),
            cluster.lease_ttl,
            cluster.max_instances
        ),
        None => println!("  cluster: none (this instance's limits are its own)"),
    }
    let health = &config.health;
    if health.active {
        println!(
            "  health checks: grpc.health.v1 every {:?} (unhealthy after {} failures)",
            health.interval, health.unhealthy_threshold
        );
    } else {
        println!("  health checks: passive only (set [health] active = true for grpc.health.v1)");
    }
    let breakers = &config.breakers;
    for scope in sluice_config::BreakerScope::ALL {
        let settings = breakers.settings(scope);
        if settings.enabled {
            println!(
                "  {scope} breakers: open after {} failures in a row or {:.0}% of {}+ calls, \
                 for {:?} at first",
                settings.failure_threshold,
                settings.failure_rate * 100.0,
                settings.minimum_volume,
                settings.open_duration
            );
        } else {
            println!("  {scope} breakers: off");
        }
    }
    let scaling = &config.scaling;
    if scaling.enabled {
        println!(
            "  scaler loop: every {:?}, cooldowns {:?} up / {:?} down",
            scaling.period, scaling.up_cooldown, scaling.down_cooldown
        );
    } else {
        println!("  scaler loop: off (groups open connections on demand only)");
    }
    let analytics = &config.analytics;
    if analytics.enabled {
        println!(
            "  analytics loop: every {:?} over {} s windows",
            analytics.period, analytics.window_samples
        );
    } else {
        println!("  analytics loop: off");
    }
    let store = &config.store;
    println!(
        "  history store: {} (kept {:?})",
        store.path.display(),
        store.retention
    );
    let alerts = &config.alerts;
    if alerts.enabled {
        println!("  alerts: log and {} webhook(s)", alerts.webhooks.len());
    } else {
        println!("  alerts: off");
    }
    let scorer = &config.scorer;
    match &scorer.model {
        Some(model) => println!(
            "  scorer: {} on {} ({} sessions, deadline {:?}, checked every {:?})",
            model.display(),
            scorer
                .library
                .as_ref()
                .map_or_else(|| "$ORT_DYLIB_PATH".to_owned(), |l| l.display().to_string()),
            scorer.sessions,
            scorer.deadline,
            scorer.reload_interval
        ),
        None => println!("  scorer: built-in neutral (no [scorer] model)"),
    }
    for slot in SlotKind::ALL {
        let table = config.plugins.slot(slot);
        let file = match (&table.file, &config.plugins.dir) {
            (Some(file), _) => file.display().to_string(),
            (None, Some(dir)) => format!("{}/{slot}.wasm if present, else built-in", dir.display()),
            (None, None) => "built-in".to_owned(),
        };
        println!(
            "  {slot} policy: {file} (deadline {:?}, memory {} MiB)",
            table.deadline_for(slot),
            table.memory_limit() / (1024 * 1024)
        );
    }
    if config.admin.enabled {
        let admin = &config.admin;
        println!(
            "  admin API on {}://{} ({})",
            if admin.tls.is_some() { "https" } else { "http" },
            admin.listen,
            match (&admin.token, admin.allow_unauthenticated_writes) {
                (Some(_), _) => "bearer token required",
                (None, true) => "no token; writes allowed without one",
                (None, false) => "no token: reads only, writes refused",
            }
        );
        if !admin.allowed_hosts.is_empty() {
            println!(
                "    also answers to Host {}",
                admin.allowed_hosts.join(", ")
            );
        }
    }
    Ok(())
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Arc::new(Config::from_file(&path)?);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let signal = shutdown_signal();
    let services = services::start(config).await?;
    println!("sluice listening on {}", services.proxy.addr());
    if let Some(admin) = &services.admin {
        println!("admin API on {}", admin.url());
        println!("dashboard on {}/", admin.url());
    }
    signal.await;
    tracing::info!("shutting down");
    services.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives while start-up output is printed is not lost.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}
