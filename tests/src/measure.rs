//! Helpers of the bench programs: percentiles, medians, milliseconds, a process's CPU time, and
//! the options `cargo xtask bench` passes. The one place where a bench program of this crate
//! finds a statistic: a bench must not define its own median or percentile. They measure; they
//! assert nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// USER_HZ: the unit of utime and stime in `/proc/self/stat` (100 on every Linux port).
const CLOCK_TICKS_PER_S: u64 = 100;

/// Nearest-rank percentile of sorted durations (zero for none).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// The median of `values`, in any order: the middle value once sorted, and for an even count the
/// upper of the two middle ones, so that it is always a value that was measured. NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `d` in milliseconds, with the fraction.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The process's CPU time so far (utime + stime of every thread), from `/proc/self/stat`.
pub fn process_cpu() -> Option<Duration> {
    cpu_in("/proc/self/stat")
}

/// Another process's CPU time so far (utime + stime of every thread), from `/proc/PID/stat`.
pub fn pid_cpu(pid: u32) -> Option<Duration> {
    cpu_in(&format!("/proc/{pid}/stat"))
}

/// utime + stime from a `/proc/.../stat` file.
fn cpu_in(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / CLOCK_TICKS_PER_S,
    ))
}

/// CPU time of the whole process over `window` of wall time, as % of one core (NaN where
/// `/proc` cannot be read).
pub async fn cpu_share(window: Duration) -> f64 {
    let (cpu0, wall0) = (process_cpu(), Instant::now());
    tokio::time::sleep(window).await;
    let (cpu1, wall) = (process_cpu(), wall0.elapsed());
    match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b - a).as_secs_f64() / wall.as_secs_f64() * 100.0,
        _ => f64::NAN,
    }
}

/// The options `cargo xtask bench` passes to a bench program.
pub struct BenchArgs {
    /// The built plugins (`--plugins`; default `target/plugins`).
    pub plugins: PathBuf,
    /// Where to write the raw figures (`--json`).
    pub json: Option<PathBuf>,
    /// Shorter runs (`--quick`).
    pub quick: bool,
}

impl BenchArgs {
    /// Reads the process's arguments; panics on an unknown one.
    pub fn parse() -> Self {
        Self::parse_with(|_, _| false)
    }

    /// As [`BenchArgs::parse`], for a bench with options of its own: each option is offered to
    /// `extra` first, which returns `true` when it took the option (calling `value` for its
    /// argument) and `false` to leave it to the common ones.
    pub fn parse_with(mut extra: impl FnMut(&str, &mut dyn FnMut() -> String) -> bool) -> Self {
        let mut args = Self {
            plugins: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/plugins")),
            json: None,
            quick: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            if extra(&arg, &mut value) {
                continue;
            }
            match arg.as_str() {
                "--plugins" => args.plugins = PathBuf::from(value()),
                "--json" => args.json = Some(PathBuf::from(value())),
                "--quick" => args.quick = true,
                // Passed by `cargo bench`.
                "--bench" => {}
                other => panic!("unknown option {other:?}"),
            }
        }
        args
    }
}
