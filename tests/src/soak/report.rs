//! The soak's figures, from what [`super::run`] recorded, against the spec's targets: per
//! monitor availability, stream creation, violations seen by the endpoint processes, messages
//! lost and duplicated, recovery after each fault, critical insights raised outside faults, and
//! memory. Printing and the JSON document are here too.
//!
//! Availability counts a monitor as down from an error until its stream is open again or a
//! message arrives, and for any pause between messages longer than three periods and a second
//! (so a quiet upstream is not down, and a stalled one is). The same downtime, within each
//! fault and 30 s after it, is charged to that fault.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_analytics::records::Severity;

use super::SoakRun;
use super::monitors::{MonitorLog, MonitorSpec};
use crate::measure::percentile;

/// How long after a fault ends its effects may still show (left out of creation times).
const SETTLE: Duration = Duration::from_secs(2);
/// How long after a fault ends the downtime it caused is still counted as its own.
const SETTLE_DOWN: Duration = Duration::from_secs(30);
/// How long after a fault ends an insight about it is still not a false positive (the
/// analytics loops look at minutes of history).
const INSIGHT_SETTLE: Duration = Duration::from_secs(120);

/// One monitor's availability.
#[derive(Debug, Clone)]
pub struct Availability {
    /// The monitor.
    pub id: String,
    /// Whether it calls the resumable method.
    pub resumable: bool,
    /// Share of the measured time it was delivering or quiet because its upstream was.
    pub share: f64,
    /// Errors it saw.
    pub errors: usize,
    /// Messages it got.
    pub messages: usize,
}

/// Recovery after one fault.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The fault.
    pub fault: &'static str,
    /// From the fault's end until every monitor (quiet ones aside) delivered again; `None`
    /// when one never did before the soak ended.
    pub mttr: Option<Duration>,
    /// The monitor that took longest.
    pub slowest: String,
    /// Time monitors were down from the fault's start to [`SETTLE_DOWN`] after its end, summed
    /// over monitors, in seconds.
    pub down_seconds: f64,
    /// Monitors down at some point in that time.
    pub monitors_down: usize,
}

/// A critical insight raised outside every fault's window.
#[derive(Debug, Clone)]
pub struct FalsePositive {
    /// Its title.
    pub title: String,
    /// Seconds into the soak.
    pub at_s: f64,
    /// The value that triggered it.
    pub value: f64,
    /// How unusual it was (e.g. the z-score).
    pub score: f64,
    /// What it says.
    pub description: String,
}

/// Every figure of one soak.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Per monitor.
    pub availability: Vec<Availability>,
    /// Stream creation outside faults: p50, p99 and the number of samples.
    pub creation: (Duration, Duration, usize),
    /// Connections accepted over an endpoint process's cap, over all processes.
    pub connection_violations: u64,
    /// Streams started over an endpoint process's rate, over all processes.
    pub rate_violations: u64,
    /// The most connections any endpoint process had open at once.
    pub connections_peak: u64,
    /// Sequence numbers lost by resumable monitors.
    pub lost: u64,
    /// Sequence numbers delivered twice to resumable monitors.
    pub duplicated: u64,
    /// Messages resumable monitors got.
    pub resumable_messages: u64,
    /// Per fault.
    pub recovery: Vec<Recovery>,
    /// Critical insights raised outside fault windows.
    pub false_positives: Vec<FalsePositive>,
    /// Critical insights raised in all.
    pub critical_insights: usize,
    /// RSS in MiB at minute 1, minute 5, half-time and the end (when sampled).
    pub rss_mib: [Option<f64>; 4],
}

impl Figures {
    /// The figures of `run`.
    pub fn of(run: &SoakRun) -> Self {
        let window = (ms(run.warmup), ms(run.elapsed));
        let availability = run
            .monitors
            .iter()
            .map(|(spec, log)| Availability {
                id: spec.id.clone(),
                resumable: spec.resumable,
                share: availability(spec, log, window),
                errors: log.errors.len(),
                messages: log.deliveries.len(),
            })
            .collect();
        let in_fault = |at: u32| run.faults.iter().any(|f| f.covers(at, SETTLE));
        let mut opens: Vec<Duration> = run
            .monitors
            .iter()
            .map(|(_, log)| log)
            .chain([&run.probe])
            .flat_map(|log| log.opens.iter())
            .filter(|(at, _)| *at >= window.0 && !in_fault(*at))
            .map(|(_, took)| *took)
            .collect();
        opens.sort_unstable();
        let resumable = run.monitors.iter().filter(|(spec, _)| spec.resumable);
        let false_positives = run
            .insights
            .iter()
            .filter(|i| i.severity == Severity::Critical)
            .filter_map(|i| {
                let at = u32::try_from(i.ts_ms - run.start_unix_ms).ok()?;
                let covered =
                    at < window.0 || run.faults.iter().any(|f| f.covers(at, INSIGHT_SETTLE));
                (!covered).then(|| FalsePositive {
                    title: i.title.clone(),
                    at_s: f64::from(at) / 1e3,
                    value: i.value,
                    score: i.score,
                    description: i.description.clone(),
                })
            })
            .collect();
        let sampled = |at: Duration| {
            let at = ms(at);
            run.rss_kb
                .iter()
                .min_by_key(|(t, _)| t.abs_diff(at))
                .filter(|(t, _)| t.abs_diff(at) <= 2_000)
                .map(|(_, kb)| *kb as f64 / 1024.0)
        };
        Figures {
            availability,
            creation: (
                percentile(&opens, 0.5),
                percentile(&opens, 0.99),
                opens.len(),
            ),
            connection_violations: run
                .feeds
                .iter()
                .map(|f| f.get("connection_violations"))
                .sum(),
            rate_violations: run.feeds.iter().map(|f| f.get("rate_violations")).sum(),
            connections_peak: run
                .feeds
                .iter()
                .map(|f| f.connections_peak)
                .max()
                .unwrap_or(0),
            lost: resumable.clone().map(|(_, log)| log.lost).sum(),
            duplicated: resumable.clone().map(|(_, log)| log.duplicated).sum(),
            resumable_messages: resumable.map(|(_, log)| log.deliveries.len() as u64).sum(),
            recovery: run
                .faults
                .iter()
                .map(|fault| {
                    let mut recovery = recovery(fault.kind.name(), fault.end_ms, &run.monitors);
                    let span = (fault.start_ms, fault.end_ms.saturating_add(ms(SETTLE_DOWN)));
                    for (spec, log) in &run.monitors {
                        let down = union_within(down_intervals(spec, log, window), span);
                        if down > 0 {
                            recovery.monitors_down += 1;
                            recovery.down_seconds += f64::from(down) / 1e3;
                        }
                    }
                    recovery
                })
                .collect(),
            false_positives,
            critical_insights: run
                .insights
                .iter()
                .filter(|i| i.severity == Severity::Critical)
                .count(),
            rss_mib: [
                sampled(Duration::from_secs(60)),
                sampled(Duration::from_secs(300)),
                sampled(run.elapsed / 2),
                run.rss_kb.last().map(|(_, kb)| *kb as f64 / 1024.0),
            ],
        }
    }

    /// The lowest availability among resumable (`true`) or other monitors.
    pub fn worst_availability(&self, resumable: bool) -> f64 {
        self.availability
            .iter()
            .filter(|a| a.resumable == resumable)
            .map(|a| a.share)
            .fold(1.0, f64::min)
    }

    /// RSS growth from minute 5 to the end, when the run lasted past minute 5.
    pub fn rss_growth(&self) -> Option<f64> {
        match self.rss_mib {
            [_, Some(at5), _, Some(end)] => Some((end - at5) / at5),
            _ => None,
        }
    }

    /// The longest recovery, `None` when some monitor was never served again.
    pub fn worst_mttr(&self) -> Option<Duration> {
        self.recovery
            .iter()
            .map(|r| r.mttr)
            .try_fold(Duration::ZERO, |worst, mttr| mttr.map(|m| worst.max(m)))
    }

    /// Each target of the spec's table: (figure, measured, target, met).
    pub fn targets(&self) -> Vec<(&'static str, String, &'static str, bool)> {
        let pct = |share: f64| format!("{:.4}%", share * 100.0);
        let resumable = self.worst_availability(true);
        let other = self.worst_availability(false);
        let mttr = self.worst_mttr();
        let growth = self.rss_growth();
        vec![
            (
                "availability, resumable monitors (worst)",
                pct(resumable),
                ">= 99.99%",
                resumable >= 0.9999,
            ),
            (
                "availability, other monitors (worst)",
                pct(other),
                ">= 99.9%",
                other >= 0.999,
            ),
            (
                "p99 stream creation outside faults",
                format!("{:.1} ms", ms_f(self.creation.1)),
                "<= 50 ms",
                self.creation.1 <= Duration::from_millis(50),
            ),
            (
                "connection and rate-limit violations",
                format!("{} + {}", self.connection_violations, self.rate_violations),
                "0",
                self.connection_violations + self.rate_violations == 0,
            ),
            (
                "messages lost or duplicated, resumable",
                format!(
                    "{} + {} of {}",
                    self.lost, self.duplicated, self.resumable_messages
                ),
                "0",
                self.lost + self.duplicated == 0,
            ),
            (
                "MTTR, every fault (worst)",
                mttr.map_or("never served again".to_owned(), |m| {
                    format!("{:.2} s", m.as_secs_f64())
                }),
                "<= 10 s",
                mttr.is_some_and(|m| m <= Duration::from_secs(10)),
            ),
            (
                "critical false positives",
                self.false_positives.len().to_string(),
                "0",
                self.false_positives.is_empty(),
            ),
            (
                "RSS growth, minute 5 to the end",
                growth.map_or("(run under 5 min)".to_owned(), |g| {
                    format!("{:+.1}%", g * 100.0)
                }),
                "<= 10%",
                growth.is_some_and(|g| g <= 0.10),
            ),
        ]
    }

    /// Prints the figures and the targets.
    pub fn print(&self, run: &SoakRun) {
        println!(
            "soak: {:.1} min, 20 monitors over 3 endpoint processes, {} faults",
            run.elapsed.as_secs_f64() / 60.0,
            run.faults.len()
        );
        println!("\nper monitor:");
        println!(
            "  {:<6} {:<10} {:>10} {:>7} {:>9}",
            "id", "method", "available", "errors", "messages"
        );
        for a in &self.availability {
            println!(
                "  {:<6} {:<10} {:>9.4}% {:>7} {:>9}",
                a.id,
                if a.resumable { "resumable" } else { "shared" },
                a.share * 100.0,
                a.errors,
                a.messages
            );
        }
        println!("\nfaults:");
        for (fault, recovery) in run.faults.iter().zip(&self.recovery) {
            println!(
                "  {:>6.1}-{:>6.1} s  {:<28} MTTR {} (slowest {}); down {:.1} monitor-s over {} monitors",
                f64::from(fault.start_ms) / 1e3,
                f64::from(fault.end_ms) / 1e3,
                recovery.fault,
                recovery
                    .mttr
                    .map_or("never".to_owned(), |m| format!("{:.2} s", m.as_secs_f64())),
                recovery.slowest,
                recovery.down_seconds,
                recovery.monitors_down
            );
        }
        println!(
            "\nstream creation outside faults: p50 {:.1} ms, p99 {:.1} ms ({} opens)",
            ms_f(self.creation.0),
            ms_f(self.creation.1),
            self.creation.2
        );
        let peaks: Vec<String> = run
            .feeds
            .iter()
            .map(|f| format!("{} {}", f.name, f.connections_peak))
            .collect();
        println!(
            "endpoint processes: peak connections {} (cap {}), {} connection and {} rate violations",
            peaks.join(", "),
            super::PROVIDER_CONNECTIONS,
            self.connection_violations,
            self.rate_violations
        );
        println!(
            "Sluice: {} resumes, {} resume failures; critical insights {} ({} outside faults)",
            run.sluice.resumes,
            run.sluice.resume_failures,
            self.critical_insights,
            self.false_positives.len()
        );
        for fp in &self.false_positives {
            println!(
                "  false positive at {:.0} s: {} (value {:.3}, score {:.1}): {}",
                fp.at_s, fp.title, fp.value, fp.score, fp.description
            );
        }
        if !run.open_breakers.is_empty() {
            println!(
                "breakers not closed at the end: {}",
                run.open_breakers.join(", ")
            );
        }
        let mib = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} MiB"));
        println!(
            "Sluice's RSS (its own process): minute 1 {}, minute 5 {}, half-time {}, end {}",
            mib(self.rss_mib[0]),
            mib(self.rss_mib[1]),
            mib(self.rss_mib[2]),
            mib(self.rss_mib[3])
        );
        println!(
            "\n  {:<42} {:>26}  {:<10} met",
            "target", "measured", "target"
        );
        for (figure, measured, target, met) in self.targets() {
            println!(
                "  {figure:<42} {measured:>26}  {target:<10} {}",
                if met { "yes" } else { "NO" }
            );
        }
    }

    /// The raw figures as JSON (`target/bench/soak.json`).
    pub fn to_json(&self, run: &SoakRun) -> Value {
        json!({
            "minutes": run.elapsed.as_secs_f64() / 60.0,
            "faults": run.faults.iter().zip(&self.recovery).map(|(f, r)| {
                let mut fault = f.to_json();
                fault["mttr_ms"] = json!(r.mttr.map(|m| m.as_millis() as u64));
                fault["slowest_monitor"] = json!(r.slowest);
                fault["down_monitor_seconds"] = json!(r.down_seconds);
                fault["monitors_down"] = json!(r.monitors_down);
                fault
            }).collect::<Vec<_>>(),
            "monitors": self.availability.iter().map(|a| json!({
                "id": a.id, "resumable": a.resumable, "availability": a.share,
                "errors": a.errors, "messages": a.messages,
            })).collect::<Vec<_>>(),
            "stream_creation_ms": { "p50": ms_f(self.creation.0), "p99": ms_f(self.creation.1), "samples": self.creation.2 },
            "violations": { "connections": self.connection_violations, "rate": self.rate_violations },
            "connections_peak": self.connections_peak,
            "resumable": { "lost": self.lost, "duplicated": self.duplicated, "messages": self.resumable_messages },
            "resumes": run.sluice.resumes,
            "resume_failures": run.sluice.resume_failures,
            "critical_insights": self.critical_insights,
            "false_positives": self.false_positives.iter().map(|fp| json!({
                "title": fp.title, "at_s": fp.at_s, "value": fp.value, "score": fp.score,
                "description": fp.description,
            })).collect::<Vec<_>>(),
            "rss_mib": { "minute_1": self.rss_mib[0], "minute_5": self.rss_mib[1], "half": self.rss_mib[2], "end": self.rss_mib[3] },
            "open_breakers": run.open_breakers,
            "feeds": run.feeds.iter().map(|f| json!({"name": f.name, "counters": f.counters, "connections_peak": f.connections_peak})).collect::<Vec<_>>(),
            "targets": self.targets().into_iter().map(|(figure, measured, target, met)| json!({
                "figure": figure, "measured": measured, "target": target, "met": met,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Share of `window` (ms) that `spec` was delivering, or quiet because its upstream was.
fn availability(spec: &MonitorSpec, log: &MonitorLog, window: (u32, u32)) -> f64 {
    let total = f64::from(window.1.saturating_sub(window.0)).max(1.0);
    1.0 - f64::from(union_within(down_intervals(spec, log, window), window)) / total
}

/// When `spec` was down within `window` (ms): pauses between messages (and at the window's
/// edges) longer than its allowance, and from each error until its stream was open again or a
/// message arrived. The intervals may overlap.
fn down_intervals(spec: &MonitorSpec, log: &MonitorLog, window: (u32, u32)) -> Vec<(u32, u32)> {
    let allowance = ms(spec.allowance());
    let mut down: Vec<(u32, u32)> = Vec::new();
    let mut last = window.0;
    for &at in log
        .deliveries
        .iter()
        .filter(|at| **at >= window.0 && **at <= window.1)
    {
        if at > last.saturating_add(allowance) {
            down.push((last + allowance, at));
        }
        last = at;
    }
    if window.1 > last.saturating_add(allowance) {
        down.push((last + allowance, window.1));
    }
    for &(at, _) in &log.errors {
        let reopened = log.opens.iter().map(|(t, _)| *t).find(|t| *t >= at);
        let delivered = log.deliveries.iter().copied().find(|t| *t >= at);
        let back = reopened
            .into_iter()
            .chain(delivered)
            .min()
            .unwrap_or(window.1);
        down.push((at, back));
    }
    down
}

/// Total length of the union of `intervals`, clipped to `window`.
fn union_within(mut intervals: Vec<(u32, u32)>, window: (u32, u32)) -> u32 {
    intervals.sort_unstable();
    let mut total = 0;
    let mut current: Option<(u32, u32)> = None;
    for (start, end) in intervals {
        let (start, end) = (start.max(window.0), end.min(window.1));
        if start >= end {
            continue;
        }
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                total += e - s;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    total + current.map_or(0, |(s, e)| e - s)
}

/// Recovery after a fault that ended at `end_ms`: until every monitor whose upstream is not
/// quiet delivered a message.
fn recovery(fault: &'static str, end_ms: u32, monitors: &[(MonitorSpec, MonitorLog)]) -> Recovery {
    let mut worst = Some(Duration::ZERO);
    let mut slowest = String::new();
    for (spec, log) in monitors.iter().filter(|(spec, _)| !spec.quiet()) {
        let next = log.deliveries.iter().find(|at| **at >= end_ms);
        let took = next.map(|at| Duration::from_millis(u64::from(at - end_ms)));
        let longer = match (took, worst) {
            (None, _) => true,
            (Some(t), Some(w)) => t > w,
            (Some(_), None) => false,
        };
        if longer {
            worst = took;
            slowest = spec.id.clone();
        }
    }
    Recovery {
        fault,
        mttr: worst,
        slowest,
        down_seconds: 0.0,
        monitors_down: 0,
    }
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn ms_f(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_down_intervals_count_once_within_the_window() {
        assert_eq!(union_within(vec![(0, 10), (5, 20), (30, 40)], (0, 100)), 30);
        assert_eq!(union_within(vec![(0, 10), (95, 200)], (5, 100)), 10);
        assert_eq!(union_within(Vec::new(), (0, 100)), 0);
    }

    fn spec(rate: f64) -> MonitorSpec {
        MonitorSpec {
            id: "m".to_owned(),
            class: sluice_config::TrafficClass::Event,
            resumable: true,
            rate,
            topic: "t".to_owned(),
        }
    }

    #[test]
    fn a_quiet_upstream_is_available_and_a_stall_or_an_error_is_not() {
        // One message a second for 100 s: fully available.
        let steady = MonitorLog {
            deliveries: (0..=100).map(|s| s * 1000).collect(),
            ..MonitorLog::default()
        };
        assert_eq!(availability(&spec(1.0), &steady, (0, 100_000)), 1.0);
        // A 20 s pause: 16 s over the 4 s allowance.
        let stalled = MonitorLog {
            deliveries: (0..=40).chain(60..=100).map(|s| s * 1000).collect(),
            ..MonitorLog::default()
        };
        let share = availability(&spec(1.0), &stalled, (0, 100_000));
        assert!((share - 0.84).abs() < 1e-9, "{share}");
        // A fault from 45 s to 50 s (and its settle time) is charged the stall within it.
        let down = down_intervals(&spec(1.0), &stalled, (0, 100_000));
        assert_eq!(union_within(down.clone(), (45_000, 50_000)), 5_000);
        assert_eq!(union_within(down, (0, 44_000)), 0);
        // An error, the stream open again 500 ms later.
        let broken = MonitorLog {
            errors: vec![(50_200, "UNAVAILABLE".to_owned())],
            opens: vec![(0, Duration::ZERO), (50_700, Duration::ZERO)],
            ..steady
        };
        let share = availability(&spec(1.0), &broken, (0, 100_000));
        assert!((share - 0.995).abs() < 1e-9, "{share}");
    }

    #[test]
    fn recovery_waits_for_the_slowest_monitor_and_never_for_a_quiet_one() {
        let log = |deliveries: Vec<u32>| MonitorLog {
            deliveries,
            ..MonitorLog::default()
        };
        let monitors = vec![
            (
                MonitorSpec {
                    id: "fast".to_owned(),
                    ..spec(10.0)
                },
                log(vec![9_000, 10_100]),
            ),
            (
                MonitorSpec {
                    id: "slow".to_owned(),
                    ..spec(10.0)
                },
                log(vec![9_000, 13_000]),
            ),
            (
                MonitorSpec {
                    id: "quiet".to_owned(),
                    ..spec(0.05)
                },
                log(vec![1_000]),
            ),
        ];
        let r = recovery("f", 10_000, &monitors);
        assert_eq!(r.mttr, Some(Duration::from_secs(3)));
        assert_eq!(r.slowest, "slow");
        let never = recovery("f", 20_000, &monitors);
        assert_eq!(never.mttr, None);
    }
}
