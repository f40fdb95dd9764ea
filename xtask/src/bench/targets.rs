//! Sluice's performance targets in `cargo xtask bench proxy`, and the verdicts printed at the
//! end of a run.
//!
//! A proxy's figure in one round is compared with `direct`'s figure in the same round. Direct,
//! Sluice and Envoy run alternated within each round, so pairing them by round keeps slow drift
//! on the machine (other work, thermal state) out of the comparison, and the spread over the
//! rounds shows how far the comparison itself moves. Memory limits are in decimal units (1 MB =
//! 10^6 bytes, 1 KB = 10^3 bytes), the stricter reading of the targets' figures.
//!
//! It owns the targets, how a figure is judged against one, and the targets table. It must not
//! assert a verdict (verdicts are printed and written to the JSON: the machine is shared and
//! noisy, and a benchmark is not a test), nor compute a statistic itself: spreads come from
//! [`super::measure`].

use serde_json::{Value, json};

use super::measure::Spread;
use super::proxy::Scenario;
use super::proxy_runs::{Idle, Run};

/// The proxy whose targets these are; other proxies are shown beside it for comparison.
const HELD_TO_TARGETS: &str = "sluice";

/// Peak RSS over every scenario, in MB.
const PEAK_RSS_MB: f64 = 40.0;

/// RSS that one idle stream adds, in KB.
const IDLE_STREAM_KB: f64 = 16.0;

/// `/proc` reports memory in KiB.
const BYTES_PER_KIB: f64 = 1024.0;

/// What a scenario holds a proxy to, measured against `direct` in the same round.
#[derive(Debug, Clone, Copy)]
pub(super) enum Goal {
    /// Messages (or calls) per second: at least this share of direct's.
    MinRatio(f64),
    /// Median one-way latency: at most this many microseconds above direct's.
    MaxAddedP50Us(f64),
}

impl Goal {
    /// What the goal is about, after the scenario's key in the table.
    fn figure_name(self) -> &'static str {
        match self {
            Goal::MinRatio(_) => "rate vs direct",
            Goal::MaxAddedP50Us(_) => "p50 over direct",
        }
    }

    /// The goal as the table's goal column shows it.
    fn describe(self) -> String {
        match self {
            Goal::MinRatio(min) => format!(">= {min:.2}x"),
            Goal::MaxAddedP50Us(max) => format!("<= +{max:.0} µs"),
        }
    }

    /// `target`'s figure in every round that also has a `direct` run.
    fn per_round(self, runs: &[Run], target: &str) -> Vec<f64> {
        runs.iter()
            .filter(|run| run.target == target)
            .filter_map(|run| {
                let direct = runs
                    .iter()
                    .find(|d| d.target == "direct" && d.round == run.round)?;
                let figure = match self {
                    Goal::MinRatio(_) => run.rate / direct.rate,
                    Goal::MaxAddedP50Us(_) => run.p50 - direct.p50,
                };
                figure.is_finite().then_some(figure)
            })
            .collect()
    }

    /// Whether `figure` meets the goal.
    fn is_met(self, figure: f64) -> bool {
        match self {
            Goal::MinRatio(min) => figure >= min,
            Goal::MaxAddedP50Us(max) => figure <= max,
        }
    }

    /// A figure with its unit, rounded away from the goal's side (ratios down, latencies up),
    /// so that a figure that misses its goal never prints as one that meets it.
    fn format(self, figure: f64) -> String {
        format!("{}{}", self.format_bare(figure), self.unit())
    }

    /// As [`Goal::format`], without the unit.
    fn format_bare(self, figure: f64) -> String {
        match self {
            Goal::MinRatio(_) => format!("{:.3}", (figure * 1000.0).floor() / 1000.0),
            Goal::MaxAddedP50Us(_) => format!("{:+.0}", figure.ceil()),
        }
    }

    /// The unit of the goal's figures.
    fn unit(self) -> &'static str {
        match self {
            Goal::MinRatio(_) => "x",
            Goal::MaxAddedP50Us(_) => " µs",
        }
    }
}

/// One proxy's figure for one target.
struct Verdict {
    /// As printed: the median, with the range over the rounds where there is one.
    shown: String,
    /// What the goal is judged on (the median over the rounds).
    value: f64,
    /// Whether `value` meets the goal.
    met: bool,
}

/// One line of the verdict table: a figure, its goal, and each proxy's verdict.
struct Line {
    /// What is measured.
    figure: String,
    /// What it is held to.
    goal: String,
    /// Each proxy's verdict; `None` where the proxy has no such figure.
    verdicts: Vec<(&'static str, Option<Verdict>)>,
}

impl Line {
    /// The line as written to `proxy.json`'s `targets`.
    fn to_json(&self) -> Value {
        let values: serde_json::Map<String, Value> = self
            .verdicts
            .iter()
            .map(|(proxy, verdict)| {
                let value = match verdict {
                    Some(v) => json!({ "shown": v.shown, "value": v.value, "met": v.met }),
                    None => Value::Null,
                };
                ((*proxy).to_owned(), value)
            })
            .collect();
        json!({ "figure": self.figure, "goal": self.goal, "proxies": values })
    }
}

/// The line of `scenario`'s goal: each proxy's per-round figures, judged on their median.
fn scenario_line(scenario: &Scenario, runs: &[Run], proxies: &[&'static str]) -> Line {
    let goal = scenario.goal;
    Line {
        figure: format!("{} {}", scenario.key, goal.figure_name()),
        goal: goal.describe(),
        verdicts: proxies
            .iter()
            .map(|&proxy| {
                let verdict = Spread::of(&goal.per_round(runs, proxy)).map(|s| {
                    let shown = if s.min == s.max {
                        goal.format(s.median)
                    } else {
                        format!(
                            "{} ({}–{})",
                            goal.format(s.median),
                            goal.format_bare(s.min),
                            goal.format_bare(s.max)
                        )
                    };
                    Verdict {
                        shown,
                        value: s.median,
                        met: goal.is_met(s.median),
                    }
                });
                (proxy, verdict)
            })
            .collect(),
    }
}

/// A line of an upper limit on a figure that is one value per proxy (`value_of`), such as a
/// memory figure.
fn limit_line(
    figure: &str,
    unit: &str,
    limit: f64,
    proxies: &[&'static str],
    value_of: impl Fn(&str) -> Option<f64>,
) -> Line {
    Line {
        figure: figure.to_owned(),
        goal: format!("<= {limit:.0} {unit}"),
        verdicts: proxies
            .iter()
            .map(|&proxy| {
                let verdict = value_of(proxy).filter(|v| v.is_finite()).map(|v| Verdict {
                    // Rounded up, as in `Goal::format`: a miss never prints as a hit.
                    shown: format!("{:.1} {unit}", (v * 10.0).ceil() / 10.0),
                    value: v,
                    met: v <= limit,
                });
                (proxy, verdict)
            })
            .collect(),
    }
}

/// Prints every target with each proxy's figure and Sluice's verdict; returns the same for the
/// JSON report.
pub(super) fn report(results: &[(&Scenario, Vec<Run>)], idle: &[Idle]) -> Value {
    let mut proxies: Vec<&'static str> = Vec::new();
    for run in results.iter().flat_map(|(_, runs)| runs) {
        if run.target != "direct" && !proxies.contains(&run.target) {
            proxies.push(run.target);
        }
    }
    let mut lines: Vec<Line> = results
        .iter()
        .map(|(scenario, runs)| scenario_line(scenario, runs, &proxies))
        .collect();
    lines.push(limit_line(
        "peak RSS, every scenario",
        "MB",
        PEAK_RSS_MB,
        &proxies,
        |proxy| {
            results
                .iter()
                .flat_map(|(_, runs)| runs)
                .filter(|run| run.target == proxy)
                .filter_map(|run| run.proxy_memory.map(|m| m.hwm_kb))
                .max()
                .map(|kib| kib as f64 * BYTES_PER_KIB / 1e6)
        },
    ));
    lines.push(limit_line(
        "RSS per idle stream",
        "KB",
        IDLE_STREAM_KB,
        &proxies,
        |proxy| {
            idle.iter()
                .find(|i| i.target == proxy)
                .map(|i| i.per_stream_kib() * BYTES_PER_KIB / 1e3)
        },
    ));
    print(&lines, &proxies);
    Value::Array(lines.iter().map(Line::to_json).collect())
}

/// Prints the targets table: a line per target, a column per proxy, Sluice's with verdicts.
fn print(lines: &[Line], proxies: &[&'static str]) {
    println!(
        "\nTargets ({HELD_TO_TARGETS}'s; every ratio and added latency pairs a proxy's run with \
         direct's in the same round: median, min–max over the rounds)"
    );
    let mut header = format!("  {:<32} {:>11}", "figure", "goal");
    for proxy in proxies {
        header.push_str(&format!("  {proxy:<34}"));
    }
    println!("{}", header.trim_end());
    for line in lines {
        let mut row = format!("  {:<32} {:>11}", line.figure, line.goal);
        for (proxy, verdict) in &line.verdicts {
            let cell = match verdict {
                Some(v) if *proxy == HELD_TO_TARGETS => {
                    format!("{} {}", v.shown, if v.met { "met" } else { "MISSED" })
                }
                Some(v) => v.shown.clone(),
                None => "-".to_owned(),
            };
            row.push_str(&format!("  {cell:<34}"));
        }
        println!("{}", row.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `target` in `round` with only a rate and a p50.
    fn run(target: &'static str, round: usize, rate: f64, p50: f64) -> Run {
        Run {
            target,
            round,
            load: Value::Null,
            rate,
            p50,
            p99: f64::NAN,
            p999: f64::NAN,
            errors: 0,
            proxy_cpu_us_per_msg: None,
            feed_cpu_us_per_msg: None,
            load_cpu_us_per_msg: None,
            machine_idle_share: None,
            proxy_memory: None,
        }
    }

    /// Drift between rounds does not move a proxy's figure: it is paired with the same round.
    #[test]
    fn each_round_is_compared_with_direct_in_the_same_round() {
        // Direct drifts from 100 to 200 between rounds; Sluice stays at 0.9x of each.
        let runs = [
            run("direct", 1, 100.0, 30.0),
            run("sluice", 1, 90.0, 60.0),
            run("direct", 2, 200.0, 40.0),
            run("sluice", 2, 180.0, 100.0),
            run("direct", 3, 150.0, 35.0),
            run("sluice", 3, 135.0, 70.0),
        ];
        // Every round reads 0.9x; pairing across rounds would not (round 2's 180 against
        // round 1's 100 reads 1.8x).
        let ratios = Goal::MinRatio(0.9).per_round(&runs, "sluice");
        assert!(ratios.iter().all(|r| (r - 0.9).abs() < 1e-9), "{ratios:?}");
        let added = Goal::MaxAddedP50Us(40.0).per_round(&runs, "sluice");
        assert_eq!(added, vec![30.0, 60.0, 35.0]);
        let spread = Spread::of(&added).unwrap();
        assert_eq!(
            spread,
            Spread {
                median: 35.0,
                min: 30.0,
                max: 60.0
            }
        );
        assert!(Goal::MaxAddedP50Us(40.0).is_met(spread.median));
        assert!(!Goal::MaxAddedP50Us(34.0).is_met(spread.median));
    }

    /// A proxy's round with no direct run to pair with gives no figure.
    #[test]
    fn a_round_without_a_direct_run_is_left_out() {
        let runs = [
            run("direct", 1, 100.0, 30.0),
            run("sluice", 1, 45.0, 60.0),
            run("sluice", 2, 99.0, 60.0),
        ];
        let ratios = Goal::MinRatio(0.5).per_round(&runs, "sluice");
        assert_eq!(ratios, vec![0.45]);
        assert!(!Goal::MinRatio(0.5).is_met(ratios[0]));
        assert!(Goal::MinRatio(0.45).is_met(ratios[0]));
    }

    /// A figure that misses its goal never prints as one that meets it.
    #[test]
    fn printed_figures_round_against_the_goal() {
        assert_eq!(Goal::MinRatio(0.9).format(0.8996), "0.899x");
        assert_eq!(Goal::MinRatio(0.9).format(0.9), "0.900x");
        assert_eq!(Goal::MaxAddedP50Us(40.0).format(40.2), "+41 µs");
        assert_eq!(Goal::MaxAddedP50Us(40.0).format(-3.5), "-3 µs");
    }

    /// Each proxy's memory figure is judged against the limit on its own.
    #[test]
    fn memory_limits_judge_each_proxy_on_its_own_figure() {
        let line = limit_line("peak RSS", "MB", 40.0, &["sluice", "envoy"], |proxy| {
            Some(if proxy == "sluice" { 33.9 } else { 229.8 })
        });
        let verdicts: Vec<bool> = line
            .verdicts
            .iter()
            .map(|(_, v)| v.as_ref().unwrap().met)
            .collect();
        assert_eq!(verdicts, vec![true, false]);
        assert_eq!(line.verdicts[0].1.as_ref().unwrap().shown, "33.9 MB");
    }
}
