//! `cargo xtask bench abuse`: what each hostile client of `sluice_tests::abuse` costs the
//! others, measured for longer than the end-to-end tests do.
//!
//! For each attack (and first a control with none): a fresh `sluice-feed` process and a fresh
//! `sluice run` process with the abuse suite's config (`abuse::stage::config_toml`), a
//! legitimate monitor subscribing through it at 200 msgs/s, and a few rounds of a window
//! without the attack followed by a window of the same length with it. Per attack it prints the
//! legitimate monitor's messages during the attack as a ratio to the window before (median and
//! min-max over the rounds), its errors, Sluice's peak RSS over the attack (VmHWM, reset before
//! each attack window) and Sluice's CPU time over the attack window as a share of one core, and
//! what the attack observed. It asserts nothing; the raw figures go to `--json`.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::abuse::stage::{LEGIT_PER_CALL, LEGIT_RATE};
use sluice_tests::abuse::{Attack, Observed, Round, Stage};
use sluice_tests::measure::{BenchArgs, median};

/// Pause between rounds, so that one round's aftermath is not the next one's baseline.
const SETTLE: Duration = Duration::from_secs(1);

/// Everything one attack's rounds measured.
struct Row {
    name: &'static str,
    rounds: Vec<Round>,
    errors: Vec<String>,
    error_count: u64,
}

/// `observed` in a line: attempts, then the outcomes, GOAWAYs and closes.
fn summary(observed: &Observed) -> String {
    let mut parts = vec![format!("{} attempts", observed.attempts)];
    parts.extend(observed.outcomes.iter().map(|(k, n)| format!("{k} {n}")));
    if !observed.goaways.is_empty() {
        let codes: Vec<String> = observed
            .goaways
            .iter()
            .map(|(code, n)| format!("{n} with code {code:#x}"))
            .collect();
        parts.push(format!("goaway {}", codes.join(",")));
    }
    if observed.closed > 0 {
        parts.push(format!("closed {}", observed.closed));
    }
    if observed.answered > 0 {
        parts.push(format!("answered {}", observed.answered));
    }
    if observed.peak > 0 {
        parts.push(format!("peak {}", observed.peak));
    }
    parts.join(", ")
}

fn observed_json(observed: &Observed) -> Value {
    json!({
        "attempts": observed.attempts,
        "outcomes": observed.outcomes,
        "messages": observed.messages,
        "goaways": observed.goaways.iter().map(|(code, n)| (code.to_string(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        "closed": observed.closed,
        "answered": observed.answered,
        "bytes_sent": observed.bytes_sent,
        "peak": observed.peak,
        "elapsed_ms": observed.elapsed.as_millis() as u64,
    })
}

fn row_json(row: &Row) -> Value {
    let ratios: Vec<f64> = row.rounds.iter().map(Round::ratio).collect();
    json!({
        "attack": row.name,
        "ratio_median": median(&ratios),
        "ratio_min": ratios.iter().copied().fold(f64::INFINITY, f64::min),
        "ratio_max": ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "legit_errors": row.error_count,
        "legit_error_texts": row.errors,
        "rounds": row.rounds.iter().map(|r| json!({
            "baseline_messages": r.baseline.messages,
            "baseline_errors": r.baseline.errors,
            "during_messages": r.during.messages,
            "during_errors": r.during.errors,
            "ratio": r.ratio(),
            "cpu_percent": r.cpu_percent,
            "peak_rss_kb": r.peak_rss_kb,
            "peak_reset": r.peak_reset,
            "observed": observed_json(&r.observed),
        })).collect::<Vec<_>>(),
    })
}

fn print_row(row: &Row) {
    let ratios: Vec<f64> = row.rounds.iter().map(Round::ratio).collect();
    let cpu: Vec<f64> = row.rounds.iter().map(|r| r.cpu_percent).collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let peak = row.rounds.iter().map(|r| r.peak_rss_kb).max().unwrap_or(0);
    println!(
        "{:<20} {:>5.2} ({:.2}-{:.2}) {:>7} {:>13.1} {:>11.0}",
        row.name,
        median(&ratios),
        min,
        max,
        row.error_count,
        peak as f64 / 1024.0,
        median(&cpu),
    );
    if let Some(last) = row.rounds.last() {
        println!("{:<20} last round: {}", "", summary(&last.observed));
    }
    for error in &row.errors {
        println!("{:<20} legitimate monitor: {error}", "");
    }
}

/// Runs `rounds` rounds of `attack` (none: the control) on a fresh stage.
async fn measure(attack: Option<Attack>, rounds: usize, window: Duration) -> Row {
    let stage = Stage::start().await;
    let mut measured = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        measured.push(stage.round(attack, window).await);
        tokio::time::sleep(SETTLE).await;
    }
    Row {
        name: attack.map_or("control (none)", Attack::name),
        rounds: measured,
        errors: stage.legit.errors(),
        error_count: stage.legit.count().errors,
    }
}

#[tokio::main]
async fn main() {
    let args = BenchArgs::parse();
    let (rounds, window) = if args.quick {
        (3, Duration::from_secs(2))
    } else {
        (5, Duration::from_secs(5))
    };
    println!(
        "abuse: each attack on a fresh `sluice run` in front of a `sluice-feed` process while a \
         legitimate monitor subscribes at {LEGIT_RATE} msgs/s ({LEGIT_PER_CALL} per call); \
         {rounds} rounds of {window:?} without, then {window:?} with the attack"
    );
    println!(
        "\n{:<20} {:>17} {:>7} {:>13} {:>11}",
        "attack", "kept (min-max)", "errors", "peak RSS MiB", "CPU % core"
    );
    let mut rows = Vec::new();
    for attack in std::iter::once(None).chain(Attack::ALL.into_iter().map(Some)) {
        let row = measure(attack, rounds, window).await;
        print_row(&row);
        rows.push(row);
    }
    println!(
        "\nkept: the legitimate monitor's messages during the attack over the window before it \
         (median over the rounds); errors: its failed calls over all rounds; peak RSS: Sluice's \
         VmHWM over the attack window (max over the rounds); CPU: Sluice's utime+stime over the \
         attack window (median)."
    );
    if let Some(path) = args.json {
        let all = json!({
            "rounds": rounds,
            "window_s": window.as_secs_f64(),
            "legit_rate": LEGIT_RATE,
            "legit_per_call": LEGIT_PER_CALL,
            "attacks": rows.iter().map(row_json).collect::<Vec<_>>(),
        });
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating the JSON's folder");
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&all).expect("json")).expect("write json");
        println!("raw figures: {}", path.display());
    }
}
