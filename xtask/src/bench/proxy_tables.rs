//! The tables `cargo xtask bench proxy` prints after its runs: per scenario, each target's
//! figures over the rounds ([`Summary`]), and the idle-stream memory of each proxy.
//!
//! It owns which figures a table shows, how they are rounded and laid out, and their names in
//! `proxy.json`'s summaries. It must not compute a statistic itself (medians and spreads come
//! from [`super::measure`]) nor judge a figure against a target ([`super::targets`]).

use serde_json::{Value, json};

use super::measure::{Spread, median, median_if_any};
use super::proxy::Scenario;
use super::proxy_runs::{IDLE_STREAMS, Idle, Run, Target};

/// One target's figures for one scenario, over the rounds.
pub(super) struct Summary {
    /// The target's name.
    target: &'static str,
    /// Messages (or calls) per second over the rounds.
    rate: Spread,
    /// The median rate over direct's median rate.
    ratio_to_direct: f64,
    /// The median over the rounds of each round's p50 latency, in µs.
    p50: f64,
    /// As `p50`, for p99.
    p99: f64,
    /// As `p50`, for p999.
    p999: f64,
    /// CPU per message of the proxy.
    proxy_cpu_us_per_msg: Option<f64>,
    /// CPU per message of the feed, the load generator and the proxy together.
    all_cpu_us_per_msg: Option<f64>,
    /// Share of the machine's CPU time that was idle.
    machine_idle_share: Option<f64>,
    /// The proxy's highest peak RSS over the rounds, in MiB.
    proxy_peak_rss_mb: Option<f64>,
    /// Errors summed over the rounds.
    errors: u64,
}

impl Summary {
    /// The summary as written to `proxy.json`.
    pub(super) fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "rate_median": self.rate.median,
            "rate_min": self.rate.min,
            "rate_max": self.rate.max,
            "ratio_to_direct": self.ratio_to_direct,
            "lat_us_p50_median": self.p50,
            "lat_us_p99_median": self.p99,
            "lat_us_p999_median": self.p999,
            "proxy_cpu_us_per_msg_median": self.proxy_cpu_us_per_msg,
            "all_cpu_us_per_msg_median": self.all_cpu_us_per_msg,
            "machine_idle_share_median": self.machine_idle_share,
            "proxy_peak_rss_mb": self.proxy_peak_rss_mb,
            "errors": self.errors,
        })
    }
}

/// Each target's [`Summary`] of its `runs` in one scenario.
pub(super) fn summarize(targets: &[Target], runs: &[Run]) -> Vec<Summary> {
    let mut out: Vec<Summary> = targets
        .iter()
        .map(|target| {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.target == target.name).collect();
            let rates: Vec<f64> = mine.iter().map(|r| r.rate).collect();
            let cpu: Vec<f64> = mine.iter().filter_map(|r| r.proxy_cpu_us_per_msg).collect();
            let all_cpu: Vec<f64> = mine
                .iter()
                .filter_map(|r| {
                    let proxy = if target.proxy.is_some() {
                        r.proxy_cpu_us_per_msg?
                    } else {
                        0.0
                    };
                    Some(r.feed_cpu_us_per_msg? + r.load_cpu_us_per_msg? + proxy)
                })
                .collect();
            let idle: Vec<f64> = mine.iter().filter_map(|r| r.machine_idle_share).collect();
            let peak = mine
                .iter()
                .filter_map(|r| r.proxy_memory.map(|m| m.hwm_kb))
                .max();
            Summary {
                target: target.name,
                rate: Spread::of(&rates).unwrap_or(Spread::UNKNOWN),
                ratio_to_direct: f64::NAN,
                p50: median(&mine.iter().map(|r| r.p50).collect::<Vec<_>>()),
                p99: median(&mine.iter().map(|r| r.p99).collect::<Vec<_>>()),
                p999: median(&mine.iter().map(|r| r.p999).collect::<Vec<_>>()),
                proxy_cpu_us_per_msg: median_if_any(&cpu),
                all_cpu_us_per_msg: median_if_any(&all_cpu),
                machine_idle_share: median_if_any(&idle),
                proxy_peak_rss_mb: peak.map(|kb| kb as f64 / 1024.0),
                errors: mine.iter().map(|r| r.errors).sum(),
            }
        })
        .collect();
    let direct = out
        .iter()
        .find(|s| s.target == "direct")
        .map(|s| s.rate.median)
        .unwrap_or(f64::NAN);
    for summary in &mut out {
        summary.ratio_to_direct = summary.rate.median / direct;
    }
    out
}

/// Prints one scenario's table: a line per target.
pub(super) fn print_table(scenario: &Scenario, summary: &[Summary]) {
    println!("\n{}", scenario.title);
    println!(
        "  {:<7} {:>32} {:>9} {:>8} {:>8} {:>8} {:>11} {:>9} {:>7} {:>15} {:>7}",
        "target",
        format!("{} median (min–max)", scenario.unit),
        "vs direct",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "CPU µs/msg",
        "peak MB",
        "errors",
        "all CPU µs/msg",
        "idle %"
    );
    for s in summary {
        let rate = format!(
            "{} ({}–{})",
            thousands(s.rate.median),
            thousands(s.rate.min),
            thousands(s.rate.max)
        );
        println!(
            "  {:<7} {:>32} {:>9} {:>8} {:>8} {:>8} {:>11} {:>9} {:>7} {:>15} {:>7}",
            s.target,
            rate,
            format!("{:.2}x", s.ratio_to_direct),
            fmt_num(s.p50),
            fmt_num(s.p99),
            fmt_num(s.p999),
            s.proxy_cpu_us_per_msg
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
            s.proxy_peak_rss_mb
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.1}")),
            s.errors,
            s.all_cpu_us_per_msg
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
            s.machine_idle_share
                .map_or_else(|| "-".to_owned(), |i| format!("{:.0}", i * 100.0)),
        );
    }
}

/// Prints the idle-stream table: a line per proxy.
pub(super) fn print_idle(idle: &[Idle]) {
    println!(
        "\nIdle streams: RSS added by {IDLE_STREAMS} idle Subscribe streams (one client connection)"
    );
    println!(
        "  {:<7} {:>6} {:>15} {:>14} {:>22}",
        "target", "ready", "RSS before MB", "RSS after MB", "MB per 1,000 streams"
    );
    for result in idle {
        println!(
            "  {:<7} {:>6} {:>15.1} {:>14.1} {:>22.2}",
            result.target,
            result.ready,
            result.rss_before_kb as f64 / 1024.0,
            result.rss_after_kb as f64 / 1024.0,
            result.per_1000_mb()
        );
    }
}

/// A latency in whole µs; `-` for none.
fn fmt_num(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else {
        format!("{value:.0}")
    }
}

/// `1234567.8` -> `1,234,568`.
pub(super) fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_owned();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates print rounded, with a comma every three digits.
    #[test]
    fn formatting() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
    }
}
