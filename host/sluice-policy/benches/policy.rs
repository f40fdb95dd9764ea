//! `cargo xtask bench policy`: the cost of a routing decision per policy language, and the time
//! from a plugin file being written to it answering calls.
//!
//! Decisions: the data path's entry point (`PolicyRouter::route`, which converts the candidates,
//! calls the plugin, validates the answer and records the decision) for the built-in native
//! router and for the Rust, C, Python and JavaScript router plugins, with 8, 16 and 32
//! candidates. Each round measures every policy in turn (alternating order) so machine drift
//! spreads evenly; figures are medians of the round medians, with their spread, and ratios to the
//! built-in measured in the same run.
//!
//! Reloads: a plugin is renamed into a watched folder; the clock stops when the slot's version
//! changes. "cold" has an empty compile cache, "cached" loads the compiled code from it.
//!
//! Usage: `policy --plugins DIR [--rounds N] [--quick] [--json FILE]`.

// A benchmark program, not the data path: a set-up that fails should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::{PluginsConfig, SlotKind, TrafficClass};
use sluice_contract::route::{Candidate, MonitorProfile, RouteRequest, Router};
use sluice_policy::{Policies, Watcher};

struct Options {
    plugins: PathBuf,
    rounds: usize,
    iterations: usize,
    reloads: usize,
    json: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        plugins: PathBuf::from("target/plugins"),
        rounds: 5,
        iterations: 20_000,
        reloads: 7,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--plugins" => options.plugins = PathBuf::from(args.next().expect("--plugins DIR")),
            "--rounds" => {
                options.rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--rounds N")
            }
            "--json" => options.json = Some(PathBuf::from(args.next().expect("--json FILE"))),
            "--quick" => {
                options.rounds = 2;
                options.iterations = 3_000;
                options.reloads = 3;
            }
            // `cargo bench` passes --bench to every bench program.
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    options
}

/// The policies compared, with their plugin file (`None`: built-in).
const POLICIES: [(&str, Option<&str>); 6] = [
    ("built-in p2c", None),
    ("rust", Some("router.wasm")),
    // The floor: a plugin that does nothing but answer "index 0".
    ("rust no-op", Some("test-pick-first.wasm")),
    ("c", Some("example-c-router.wasm")),
    ("python", Some("example-python-router.wasm")),
    ("javascript", Some("example-js-router.wasm")),
];

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            connection_id: i as u64 + 1,
            endpoint_id: Arc::from(["fast", "steady", "slow"][i % 3]),
            region: Arc::from(["local", "us-east"][i % 2]),
            priority: (i % 3 == 2) as u32,
            active_streams: (i * 7 % 61) as u32,
            max_streams: 100,
            latency: Duration::from_micros(500 + (i as u64 * 977) % 25_000),
            error_rate: if i % 5 == 0 { 0.02 } else { 0.0 },
            age: Duration::from_secs(60 + i as u64),
            endpoint_health: sluice_contract::health::Health::Healthy,
            endpoint_breaker: sluice_contract::breaker::BreakerState::Closed,
        })
        .collect()
}

fn cache_config(cache: &Path) -> PluginsConfig {
    PluginsConfig {
        cache_dir: Some(cache.to_owned()),
        ..PluginsConfig::default()
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Series {
    name: &'static str,
    round_p50: Vec<f64>,
    round_p99: Vec<f64>,
    /// The plugin call alone (request already converted; no validation or recording).
    round_call_p50: Vec<f64>,
}

fn measure_call(
    plugin: &sluice_policy::Plugin,
    request: &RouteRequest<'_>,
    iterations: usize,
) -> u64 {
    let question = sluice_policy::types::route_request(request);
    for _ in 0..iterations / 10 {
        std::hint::black_box(plugin.route(&question).ok());
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let decision = plugin.route(std::hint::black_box(&question));
        samples.push(started.elapsed().as_nanos() as u64);
        assert!(decision.is_ok());
    }
    samples.sort_unstable();
    percentile(&samples, 0.5)
}

fn measure(router: &dyn Router, request: &RouteRequest<'_>, iterations: usize) -> (u64, u64) {
    // Warm-up: instances, caches and branch predictors.
    for _ in 0..iterations / 10 {
        std::hint::black_box(router.route(request));
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let decision = router.route(std::hint::black_box(request));
        samples.push(started.elapsed().as_nanos() as u64);
        assert!(decision.is_some());
    }
    samples.sort_unstable();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn decisions(options: &Options, cache: &Path) -> serde_json::Value {
    let mut loaded = Vec::new();
    for (name, file) in POLICIES {
        let policies = Policies::new(&cache_config(cache)).expect("engine");
        if let Some(file) = file {
            let path = options.plugins.join(file);
            policies
                .load_file(&path, Some(SlotKind::Router), false)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        loaded.push((name, policies));
    }
    let monitor = MonitorProfile::new("bench-monitor", TrafficClass::Realtime, true);
    let mut report = serde_json::Map::new();
    println!(
        "\n== ns per routing decision (PolicyRouter::route: convert, call, validate, record) =="
    );
    println!(
        "{:>5}  {:<13} {:>10} {:>10} {:>12} {:>18} {:>14}",
        "cands", "policy", "p50 ns", "p99 ns", "p50 ratio", "p50 spread (ns)", "call-only p50"
    );
    for n in [8usize, 16, 32] {
        let candidates = candidates(n);
        let request = RouteRequest {
            monitor: &monitor,
            method: "/sluice.feed.v1.Feed/Subscribe",
            stream: 0,
            candidates: &candidates,
        };
        let mut series: Vec<Series> = loaded
            .iter()
            .map(|(name, _)| Series {
                name,
                round_p50: Vec::new(),
                round_p99: Vec::new(),
                round_call_p50: Vec::new(),
            })
            .collect();
        for round in 0..options.rounds {
            let mut order: Vec<usize> = (0..loaded.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let router = loaded[i].1.router();
                // Interpreted guests are ~10x slower: fewer iterations keep rounds comparable.
                let iterations = if loaded[i].0 == "python" || loaded[i].0 == "javascript" {
                    options.iterations / 5
                } else {
                    options.iterations
                };
                let (p50, p99) = measure(router.as_ref(), &request, iterations);
                series[i].round_p50.push(p50 as f64);
                series[i].round_p99.push(p99 as f64);
                if let Some(plugin) = loaded[i].1.slot(SlotKind::Router).active() {
                    let call = measure_call(&plugin, &request, iterations);
                    series[i].round_call_p50.push(call as f64);
                }
            }
        }
        let baseline = median(&mut series[0].round_p50.clone());
        let mut rows = Vec::new();
        for s in &series {
            let mut p50s = s.round_p50.clone();
            let p50 = median(&mut p50s);
            let p99 = median(&mut s.round_p99.clone());
            let (lo, hi) = (p50s[0], p50s[p50s.len() - 1]);
            let call = if s.round_call_p50.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", median(&mut s.round_call_p50.clone()))
            };
            println!(
                "{n:>5}  {:<13} {p50:>10.0} {p99:>10.0} {:>11.1}x {:>18} {call:>14}",
                s.name,
                p50 / baseline,
                format!("{lo:.0}..{hi:.0}")
            );
            rows.push(serde_json::json!({
                "policy": s.name, "p50_ns": p50, "p99_ns": p99,
                "ratio_to_builtin": p50 / baseline, "round_p50_ns": s.round_p50,
                "round_call_only_p50_ns": s.round_call_p50,
            }));
        }
        report.insert(format!("candidates_{n}"), serde_json::Value::Array(rows));
    }
    // A call that missed its deadline was answered by the built-in router and would flatter
    // (or disable) the plugin: say so next to the figures.
    for (name, policies) in &loaded {
        if let Some(plugin) = policies.slot(SlotKind::Router).active() {
            let failures = plugin
                .stats
                .failures
                .load(std::sync::atomic::Ordering::Relaxed);
            let calls = plugin
                .stats
                .calls
                .load(std::sync::atomic::Ordering::Relaxed);
            println!(
                "  {name}: {calls} plugin calls, {failures} failed{}",
                if plugin.is_disabled() {
                    " - DISABLED by its breaker: its figures above are the built-in's"
                } else {
                    ""
                }
            );
            report.insert(
                format!("{name}_failures"),
                serde_json::json!({ "calls": calls, "failures": failures, "disabled": plugin.is_disabled() }),
            );
        }
    }
    serde_json::Value::Object(report)
}

/// Writes `file` into the watched folder and returns the time until it is active.
fn swap_in(policies: &Policies, folder: &Path, file: &Path) -> Duration {
    let slot = policies.slot(SlotKind::Router);
    let before = slot.active().map(|p| p.info().version).unwrap_or(0);
    let staging = folder.join(".router.wasm.partial");
    std::fs::copy(file, &staging).expect("copy plugin");
    let started = Instant::now();
    std::fs::rename(&staging, folder.join("router.wasm")).expect("rename plugin");
    loop {
        if slot.active().is_some_and(|p| p.info().version > before) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{} never became active: {:?}",
            file.display(),
            policies.events().since(0).last()
        );
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn reloads(options: &Options) -> serde_json::Value {
    println!("\n== reload: file renamed into the watched folder -> active (self-test included) ==");
    println!(
        "{:<13} {:>12} {:>14} {:>20}",
        "plugin", "cold ms", "cached ms", "cached spread (ms)"
    );
    let mut rows = Vec::new();
    // Swapped in between two reloads of the measured plugin, so that each reload is a real change.
    let other = options.plugins.join("test-pick-last.wasm");
    let measured = POLICIES
        .iter()
        .filter(|(name, _)| *name != "rust no-op")
        .filter_map(|(name, file)| file.map(|f| (*name, f)));
    for (name, file) in measured {
        let folder = tempfile::tempdir().expect("temp folder");
        let cache = tempfile::tempdir().expect("temp cache");
        let mut config = cache_config(cache.path());
        config.dir = Some(folder.path().to_owned());
        let policies = Policies::new(&config).expect("engine");
        let _watcher = Watcher::start(&policies).expect("watch");
        let path = options.plugins.join(file);
        let cold = swap_in(&policies, folder.path(), &path);
        let mut cached = Vec::new();
        for _ in 0..options.reloads {
            swap_in(&policies, folder.path(), &other);
            cached.push(swap_in(&policies, folder.path(), &path).as_secs_f64() * 1000.0);
        }
        let median_cached = median(&mut cached);
        println!(
            "{name:<13} {:>12.1} {median_cached:>14.2} {:>20}",
            cold.as_secs_f64() * 1000.0,
            format!("{:.2}..{:.2}", cached[0], cached[cached.len() - 1])
        );
        rows.push(serde_json::json!({
            "plugin": name, "cold_ms": cold.as_secs_f64() * 1000.0,
            "cached_ms": median_cached, "cached_samples_ms": cached,
        }));
    }
    serde_json::Value::Array(rows)
}

fn main() {
    let options = options();
    assert!(
        options.plugins.join("router.wasm").is_file(),
        "no plugins in {} (run `cargo xtask plugins`)",
        options.plugins.display()
    );
    let cache = tempfile::tempdir().expect("temp cache");
    println!(
        "policy benchmark: {} rounds, {} iterations per native/compiled policy per round",
        options.rounds, options.iterations
    );
    let decisions = decisions(&options, cache.path());
    let reloads = reloads(&options);
    if let Some(path) = &options.json {
        let report = serde_json::json!({ "decisions": decisions, "reloads": reloads });
        std::fs::write(path, serde_json::to_vec_pretty(&report).expect("json"))
            .expect("write json");
        println!("\nraw results: {}", path.display());
    }
}
