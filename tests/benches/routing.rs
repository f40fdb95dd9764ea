//! `cargo xtask bench routing`: placement policies on a heterogeneous pool, and the cost of a
//! learned routing decision. `cargo xtask train-router` runs the same pool in recording mode to
//! produce the training data of the shipped model.
//!
//! The pool (the demo's three kinds of endpoint, the slow one also failing): `fast` answers
//! after 2 ms, `steady` after 4 ms, `slow` after 10 ms (5x `fast`) and refuses 2% of calls with
//! `UNAVAILABLE`. One traffic class, 8 streams per connection, 6 connections kept open, so
//! connections differ in endpoint and fill. The workload: 8 long-lived streams, then 16
//! workers that each open a `Subscribe` (5 events of 64 B at 500/s) as one of four monitors
//! (one critical), read it to its end and start the next, for the measured time.
//!
//! **Compare** (default): one Sluice per policy, all on the same feeds, measured in turns
//! (A B C D, A B C D, ...):
//! - `round-robin` (a baseline written here), `least-loaded` (Sluice's fallback policy),
//!   `p2c` (the built-in power of two choices over peak-EWMA cost), and
//! - `onnx`: the default router plugin with the `--model` scorer (skipped without `--model`
//!   and `--library`).
//!
//! For each: time to first message (request to first event, at the client) p50 and p99, the
//! share of streams that failed, events/s, the share of streams per endpoint, and each as a
//! ratio to `p2c`'s median over the rounds. Then the scorer's latency for 16 candidates of 18
//! features, and a whole routing decision (plugin and scorer) for 16 candidates.
//!
//! **Record** (`--record STORE`): one Sluice with the default router plugin exploring 30% of
//! its decisions and the built-in scorer, recording every decision's features and outcome into
//! the history store `STORE` for `plugins/training/train_router.py`.
//!
//! It prints figures and asserts nothing; every loop is bounded in count and time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_config::{Config, MonitorConfig, ScorerConfig, TrafficClass};
use sluice_contract::route::{Candidate, MonitorProfile, RouteDecision, RouteRequest, Router};
use sluice_feed::FeedHandle;
use sluice_policy::{Policies, Scorer};
use sluice_proxy::{Proxy, ProxyHandle};
use sluice_scorer::OnnxScorer;
use sluice_tests::measure::{BenchArgs, median, ms, percentile};
use sluice_tests::plugins::plugins_config;
use sluice_tests::*;

/// The endpoints: name, latency added to each call, share of calls refused.
const ENDPOINTS: [(&str, u64, f64); 3] = [("fast", 2, 0.0), ("steady", 4, 0.0), ("slow", 10, 0.02)];
/// Monitors the workers take turns as; the first is critical.
const MONITORS: [&str; 4] = ["m-critical", "m-1", "m-2", "m-3"];
const WORKERS: usize = 16;
const LONG_LIVED: usize = 8;
/// Each worker's stream: events, their rate and size.
const EVENTS: u64 = 5;
const RATE: f64 = 500.0;
const PAYLOAD: u32 = 64;
/// Longest wait for one stream.
const STREAM_LIMIT: Duration = Duration::from_secs(10);
/// Timed calls of the decision benchmark, after the warm-up.
const DECISIONS: usize = 20_000;
const WARM_UP: usize = 2_000;

struct Args {
    /// `--plugins`, `--json`.
    common: BenchArgs,
    model: Option<PathBuf>,
    library: Option<PathBuf>,
    record: Option<PathBuf>,
    seconds: u64,
    rounds: usize,
}

fn parse_args() -> Args {
    let (mut model, mut library, mut record) = (None, None, None);
    let (mut seconds, mut rounds) = (5, 3);
    let common = BenchArgs::parse_with(|arg, value| {
        match arg {
            "--model" => model = Some(PathBuf::from(value())),
            "--library" => library = Some(PathBuf::from(value())),
            "--record" => record = Some(PathBuf::from(value())),
            "--seconds" => seconds = value().parse().expect("--seconds N"),
            "--rounds" => rounds = value().parse().expect("--rounds N"),
            "--quick" => {
                // Where it stands among the options matters: a later --seconds still wins.
                // The common options see it too.
                seconds = 2;
                rounds = 1;
                return false;
            }
            _ => return false,
        }
        true
    });
    Args {
        common,
        model,
        library,
        record,
        seconds,
        rounds,
    }
}

/// The baseline that ignores everything: candidates in turn.
#[derive(Default)]
struct RoundRobin {
    next: AtomicUsize,
}

impl Router for RoundRobin {
    fn name(&self) -> &str {
        "round-robin"
    }

    fn route(&self, request: &RouteRequest<'_>) -> Option<RouteDecision> {
        let index = self.next.fetch_add(1, Relaxed) % request.candidates.len().max(1);
        Some(RouteDecision {
            index,
            confidence: 0.5,
            reason: "round-robin".into(),
            alternatives: Vec::new(),
            scored: None,
        })
    }
}

fn pool_config(feeds: &[FeedHandle]) -> Config {
    let refs: Vec<&FeedHandle> = feeds.iter().collect();
    let mut config = config_for(&refs);
    for (endpoint, (name, _, _)) in config.endpoints.iter_mut().zip(ENDPOINTS) {
        endpoint.id = name.to_owned();
    }
    let event = &mut config.classes.event;
    event.max_streams_per_connection = 8;
    event.min_connections = 6;
    // The pool as placed by the policy under test, nothing else resizing it.
    config.scaling.enabled = false;
    config.analytics.enabled = false;
    config.monitors = MONITORS
        .iter()
        .enumerate()
        .map(|(i, id)| MonitorConfig {
            critical: i == 0,
            ..MonitorConfig::new(*id, TrafficClass::Event)
        })
        .collect();
    config
}

/// What one measured run saw.
#[derive(Default)]
struct RunFigures {
    first_message: Vec<Duration>,
    streams: usize,
    failed: usize,
    events: u64,
    per_endpoint: BTreeMap<String, usize>,
    seconds: f64,
}

/// One worker stream: time to its first event, events read, the endpoint that served it.
async fn one_stream(
    client: &mut sluice_feed::pb::feed_client::FeedClient<tonic::transport::Channel>,
    monitor: &str,
    topic: String,
) -> Result<(Duration, u64, String), String> {
    let started = Instant::now();
    let request = as_monitor(subscribe(&topic, RATE, PAYLOAD, EVENTS), monitor);
    let response = client.subscribe(request).await.map_err(|s| s.to_string())?;
    let endpoint = response
        .metadata()
        .get("x-feed-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let mut stream = response.into_inner();
    let mut first = None;
    let mut events = 0;
    while let Some(_event) = stream.message().await.map_err(|s| s.to_string())? {
        first.get_or_insert_with(|| started.elapsed());
        events += 1;
    }
    Ok((first.ok_or("no event")?, events, endpoint))
}

/// Runs the workload against `addr` for `seconds`.
async fn run_workload(addr: std::net::SocketAddr, seconds: f64, tag: &str) -> RunFigures {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let tag = tag.to_owned();
        workers.push(tokio::spawn(async move {
            let mut client = client(addr).await;
            let monitor = MONITORS[worker % MONITORS.len()];
            let mut seen = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline && n < 100_000 {
                n += 1;
                let topic = format!("{tag}-{worker}-{n}");
                let outcome =
                    tokio::time::timeout(STREAM_LIMIT, one_stream(&mut client, monitor, topic))
                        .await
                        .unwrap_or_else(|_| Err("timed out".to_owned()));
                seen.push(outcome);
            }
            seen
        }));
    }
    let mut figures = RunFigures::default();
    for worker in workers {
        for outcome in worker.await.expect("worker") {
            figures.streams += 1;
            match outcome {
                Ok((first, events, endpoint)) => {
                    figures.first_message.push(first);
                    figures.events += events;
                    *figures.per_endpoint.entry(endpoint).or_default() += 1;
                }
                Err(_) => figures.failed += 1,
            }
        }
    }
    figures.seconds = started.elapsed().as_secs_f64();
    figures.first_message.sort_unstable();
    figures
}

/// Opens the long-lived streams (kept until dropped).
async fn hold_streams(addr: std::net::SocketAddr) -> Vec<tonic::Streaming<pb::Event>> {
    let mut client = client(addr).await;
    let mut held = Vec::new();
    for i in 0..LONG_LIVED {
        let request = as_monitor(
            subscribe(&format!("hold-{i}"), 20.0, 16, 0),
            MONITORS[i % 4],
        );
        if let Ok(response) = client.subscribe(request).await {
            held.push(response.into_inner());
        }
    }
    held
}

async fn start(config: &Config, router: Arc<dyn Router>, policies: &Policies) -> ProxyHandle {
    let proxy = Proxy::bind_with_policies(Arc::new(config.clone()), router, policies.resumer())
        .await
        .expect("sluice binds")
        .spawn();
    let wanted = config.classes.event.min_connections;
    eventually(Duration::from_secs(10), || {
        proxy.snapshot().connections >= wanted
    })
    .await;
    proxy
}

async fn load_policies(
    plugins: sluice_config::PluginsConfig,
    scorer: Arc<dyn Scorer>,
) -> Arc<Policies> {
    tokio::task::spawn_blocking(move || Policies::with_scorer(&plugins, scorer))
        .await
        .expect("load task")
        .expect("policies load")
}

fn router_plugins(args: &Args, explore: Option<&str>) -> sluice_config::PluginsConfig {
    let mut plugins = plugins_config();
    plugins.router.file = Some(args.common.plugins.join("router.wasm"));
    if let Some(share) = explore {
        plugins.router.config.insert("explore".into(), share.into());
    }
    plugins
}

/// `--record`: the router plugin explores; every decision's outcome goes into the store.
async fn record(args: &Args, feeds: &[FeedHandle], store: &std::path::Path) {
    let mut config = pool_config(feeds);
    config.store.path = store.to_owned();
    config.learning.max_records_per_second = 10_000;
    config.learning.observe_for = Duration::from_secs(5);
    let policies = load_policies(
        router_plugins(args, Some("0.3")),
        Arc::new(sluice_policy::NeutralScorer),
    )
    .await;
    let proxy = start(&config, policies.router(), &policies).await;
    let analytics =
        sluice_analytics::Analytics::open(Arc::new(config), proxy.view(), Arc::clone(&policies))
            .expect("analytics opens");
    // Only the learning loop runs (scaling and analytics are off in `pool_config`).
    let loops = analytics.spawn();
    let held = hold_streams(proxy.addr()).await;
    let figures = run_workload(proxy.addr(), args.seconds as f64, "record").await;
    drop(held);
    // The last outcomes end with their streams; the loop stores them within its period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    loops.shutdown().await;
    analytics.learn_once().await;
    let stored = analytics
        .store()
        .outcomes(0, usize::MAX)
        .map_or(0, |rows| rows.len());
    println!(
        "recorded {stored} routing outcomes into {} ({} streams, {} failed, per endpoint {:?})",
        store.display(),
        figures.streams,
        figures.failed,
        figures.per_endpoint
    );
    proxy.shutdown().await;
}

/// Time per call of `call`, sorted, after a warm-up.
fn time_calls(mut call: impl FnMut()) -> Vec<Duration> {
    for _ in 0..WARM_UP {
        call();
    }
    let mut times: Vec<Duration> = (0..DECISIONS)
        .map(|_| {
            let started = Instant::now();
            call();
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    times
}

fn decision_candidates() -> Vec<Candidate> {
    (0..16)
        .map(|i| Candidate {
            connection_id: i + 1,
            endpoint_id: Arc::from(ENDPOINTS[i as usize % 3].0),
            region: Arc::from("local"),
            priority: 0,
            active_streams: (i * 5 % 8) as u32,
            max_streams: 8,
            latency: Duration::from_micros(ENDPOINTS[i as usize % 3].1 * 1000 + i * 37),
            error_rate: ENDPOINTS[i as usize % 3].2,
            age: Duration::from_secs(30 + i),
            endpoint_health: sluice_contract::health::Health::Healthy,
            endpoint_breaker: sluice_contract::breaker::BreakerState::Closed,
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let mut feeds = Vec::new();
    for (name, latency, errors) in ENDPOINTS {
        feeds.push(
            feed_with(sluice_feed::FeedConfig {
                name: name.to_owned(),
                latency: Duration::from_millis(latency),
                error_rate: errors,
                ..Default::default()
            })
            .await,
        );
    }
    if let Some(store) = &args.record {
        record(&args, &feeds, store).await;
        return;
    }
    let config = pool_config(&feeds);
    let builtin = load_policies(plugins_config(), Arc::new(sluice_policy::NeutralScorer)).await;
    let mut policies: Vec<(&str, Arc<dyn Router>, Arc<Policies>)> = vec![
        (
            "round-robin",
            Arc::new(RoundRobin::default()),
            Arc::clone(&builtin),
        ),
        (
            "least-loaded",
            Arc::new(sluice_proxy::route::LeastLoaded),
            Arc::clone(&builtin),
        ),
        ("p2c", builtin.router(), Arc::clone(&builtin)),
    ];
    let onnx = match (&args.model, &args.library) {
        (Some(model), Some(library)) => {
            let scorer = OnnxScorer::open(&ScorerConfig {
                model: Some(model.clone()),
                library: Some(library.clone()),
                ..ScorerConfig::default()
            });
            if let Some(why) = scorer.unavailable() {
                println!("onnx router skipped: {why}");
                None
            } else {
                let loaded = load_policies(
                    router_plugins(&args, None),
                    Arc::clone(&scorer) as Arc<dyn Scorer>,
                )
                .await;
                policies.push(("onnx", loaded.router(), Arc::clone(&loaded)));
                Some((scorer, loaded))
            }
        }
        _ => {
            println!("onnx router skipped: no --model and --library");
            None
        }
    };
    let mut proxies = Vec::new();
    for (name, router, owner) in &policies {
        let proxy = start(&config, Arc::clone(router), owner).await;
        let held = hold_streams(proxy.addr()).await;
        proxies.push((*name, proxy, held));
    }
    println!(
        "\n== routing: {} s per run, {} rounds, {WORKERS} workers, {LONG_LIVED} long-lived streams; endpoints fast 2 ms, steady 4 ms, slow 10 ms + 2% refused ==",
        args.seconds, args.rounds
    );
    let mut runs: BTreeMap<&str, Vec<RunFigures>> = BTreeMap::new();
    for round in 0..args.rounds {
        for (name, proxy, _) in &proxies {
            let figures = run_workload(
                proxy.addr(),
                args.seconds as f64,
                &format!("{name}-{round}"),
            )
            .await;
            runs.entry(name).or_default().push(figures);
        }
    }
    let summary = |figures: &[RunFigures]| {
        let p50 = median(
            &figures
                .iter()
                .map(|f| ms(percentile(&f.first_message, 0.50)))
                .collect::<Vec<_>>(),
        );
        let p99 = median(
            &figures
                .iter()
                .map(|f| ms(percentile(&f.first_message, 0.99)))
                .collect::<Vec<_>>(),
        );
        let errors = median(
            &figures
                .iter()
                .map(|f| f.failed as f64 / f.streams.max(1) as f64)
                .collect::<Vec<_>>(),
        );
        let rate = median(
            &figures
                .iter()
                .map(|f| f.events as f64 / f.seconds)
                .collect::<Vec<_>>(),
        );
        let spread = figures
            .iter()
            .map(|f| ms(percentile(&f.first_message, 0.99)))
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        let mut endpoints: BTreeMap<String, usize> = BTreeMap::new();
        for f in figures {
            for (endpoint, n) in &f.per_endpoint {
                *endpoints.entry(endpoint.clone()).or_default() += n;
            }
        }
        (p50, p99, errors, rate, spread, endpoints)
    };
    let baseline = summary(&runs["p2c"]);
    println!(
        "{:<13} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}  streams per endpoint (p99 spread)",
        "policy",
        "ttfm p50",
        "ttfm p99",
        "errors",
        "events/s",
        "p50/p2c",
        "p99/p2c",
        "err/p2c",
        "rate/p2c",
    );
    let mut report = serde_json::Map::new();
    for (name, _, _) in &proxies {
        let (p50, p99, errors, rate, spread, endpoints) = summary(&runs[name]);
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let total: usize = endpoints.values().sum();
        let shares: Vec<String> = endpoints
            .iter()
            .map(|(e, n)| format!("{e} {:.0}%", 100.0 * *n as f64 / total.max(1) as f64))
            .collect();
        println!(
            "{name:<13} {p50:>7.2}ms {p99:>7.2}ms {:>7.2}% {rate:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {} ({:.1}-{:.1} ms)",
            errors * 100.0,
            ratio(p50, baseline.0),
            ratio(p99, baseline.1),
            ratio(errors, baseline.2),
            ratio(rate, baseline.3),
            shares.join(", "),
            spread.0,
            spread.1,
        );
        report.insert(
            (*name).to_owned(),
            json!({
                "ttfm_p50_ms": p50, "ttfm_p99_ms": p99, "error_rate": errors, "events_per_s": rate,
                "p99_spread_ms": [spread.0, spread.1], "streams_per_endpoint": endpoints,
                "p50_vs_p2c": ratio(p50, baseline.0), "p99_vs_p2c": ratio(p99, baseline.1),
                "errors_vs_p2c": ratio(errors, baseline.2), "rate_vs_p2c": ratio(rate, baseline.3),
            }),
        );
    }
    for (_, proxy, held) in proxies {
        drop(held);
        proxy.shutdown().await;
    }

    if let Some((scorer, loaded)) = onnx {
        println!("\n== one routing decision, 16 candidates ({DECISIONS} calls after {WARM_UP}) ==");
        let candidates = decision_candidates();
        let monitor = MonitorProfile::new("m-critical", TrafficClass::Event, true);
        let request = RouteRequest {
            monitor: &monitor,
            method: SUBSCRIBE,
            stream: 0,
            candidates: &candidates,
        };
        let router = loaded.router();
        let values: Vec<f32> = (0..16 * 18).map(|i| (i % 7) as f32 * 0.3).collect();
        let scorer_times = tokio::task::block_in_place(|| {
            time_calls(|| {
                let _ = scorer.score(18, &values);
            })
        });
        let decision_times = tokio::task::block_in_place(|| {
            time_calls(|| {
                let _ = router.route(&request);
            })
        });
        let row = |what: &str, times: &[Duration]| {
            let us = |p| percentile(times, p).as_secs_f64() * 1e6;
            println!(
                "{what:<38} p50 {:>6.1} us  p99 {:>6.1} us  p999 {:>6.1} us",
                us(0.50),
                us(0.99),
                us(0.999)
            );
            json!({ "p50_us": us(0.50), "p99_us": us(0.99), "p999_us": us(0.999) })
        };
        report.insert(
            "scorer_16x18".into(),
            row("scorer, 16 rows x 18 features", &scorer_times),
        );
        report.insert(
            "decision_16".into(),
            row("decision: router plugin + scorer", &decision_times),
        );
        let recent = router.recent(1);
        if let Some(last) = recent.last() {
            println!("last reason: {}", last.reason);
        }
    }
    if let Some(path) = &args.common.json {
        let text = serde_json::to_string_pretty(&Value::Object(report)).expect("json");
        std::fs::write(path, text).expect("write --json");
        println!("\nfigures written to {}", path.display());
    }
}
