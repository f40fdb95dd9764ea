//! `cargo xtask bench scorer`: the latency of one `score` call on ONNX Runtime.
//!
//! Models from `tests/python/scorer_model.py` (a two-layer perceptron, 8 hidden units) with 5
//! features (the default router plugin's row) and 20; batches of 1 and 16 rows; one caller, and
//! two callers at once on the default two sessions. Beside each, the built-in neutral scorer
//! (which only checks the batch) as the floor of the call itself. Percentiles over 20,000 calls
//! after 2,000 of warm-up. It prints figures; it stops at a failed call, whose time would mean
//! nothing.

// A benchmark program, not the data path: a set-up that fails should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::ScorerConfig;
use sluice_policy::{NeutralScorer, Scorer};
use sluice_scorer::OnnxScorer;

const WARMUP: usize = 2_000;
const CALLS: usize = 20_000;

struct Args {
    models: Vec<(usize, PathBuf)>,
    library: PathBuf,
    quick: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        models: Vec::new(),
        library: PathBuf::new(),
        quick: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            // FEATURES=PATH
            "--model" => {
                let text = value();
                let (features, path) = text.split_once('=').expect("--model FEATURES=PATH");
                args.models.push((
                    features.parse().expect("a feature count"),
                    PathBuf::from(path),
                ));
            }
            "--library" => args.library = PathBuf::from(value()),
            "--quick" => args.quick = true,
            "--bench" => {}
            other => panic!("unknown option {other:?}"),
        }
    }
    args
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e6
}

/// Per-call latencies of `calls` calls on each of `threads` threads, sorted.
fn measure(
    scorer: &Arc<dyn Scorer>,
    columns: usize,
    rows: usize,
    threads: usize,
    calls: usize,
) -> Vec<Duration> {
    let values: Vec<f32> = (0..columns * rows).map(|i| (i % 7) as f32 / 7.0).collect();
    let values = Arc::new(values);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let scorer = Arc::clone(scorer);
            let values = Arc::clone(&values);
            std::thread::spawn(move || {
                let mut took = Vec::with_capacity(calls);
                for i in 0..WARMUP + calls {
                    let started = Instant::now();
                    let scores = scorer.score(columns as u32, &values);
                    let elapsed = started.elapsed();
                    assert_eq!(scores.map(|s| s.len()).unwrap_or(0), rows, "a failed call");
                    if i >= WARMUP {
                        took.push(elapsed);
                    }
                }
                took
            })
        })
        .collect();
    let mut all: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    all.sort();
    all
}

fn main() {
    let args = parse_args();
    let calls = if args.quick { CALLS / 10 } else { CALLS };
    println!(
        "scorer bench{}: {calls} calls per row after {WARMUP} warm-up ({} cores)",
        if args.quick { " (--quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "\n{:<34} {:>9} {:>9} {:>9}",
        "scorer, features x rows, callers", "p50 µs", "p99 µs", "p999 µs"
    );
    let neutral: Arc<dyn Scorer> = Arc::new(NeutralScorer);
    for (features, model) in &args.models {
        let config = ScorerConfig {
            model: Some(model.clone()),
            library: Some(args.library.clone()),
            // The bench measures the call, not the deadline.
            deadline: Duration::from_secs(1),
            ..ScorerConfig::default()
        };
        let onnx: Arc<dyn Scorer> = OnnxScorer::open(&config);
        if let Some(why) = onnx.unavailable() {
            panic!("the model did not load: {why}");
        }
        for (rows, threads) in [(1, 1), (16, 1), (16, 2)] {
            for (name, scorer) in [("onnx", &onnx), ("built-in neutral", &neutral)] {
                let took = measure(scorer, *features, rows, threads, calls);
                println!(
                    "{:<34} {:>9.2} {:>9.2} {:>9.2}",
                    format!("{name}, {features} x {rows}, {threads}"),
                    percentile(&took, 0.5),
                    percentile(&took, 0.99),
                    percentile(&took, 0.999)
                );
            }
        }
    }
}
