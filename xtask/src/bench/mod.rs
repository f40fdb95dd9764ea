//! `cargo xtask bench <name> ...`: reads which benchmark to run and hands its options to the
//! module that runs it.
//!
//! - [`proxy`]: direct vs Sluice vs Envoy on loopback, run by xtask itself; with
//!   [`proxy_runs`] (the processes and one load run), [`proxy_tables`] (the summary tables),
//!   [`proxy_configs`] (Sluice's and Envoy's configs) and [`targets`] (Sluice's targets and
//!   their verdicts);
//! - [`policy`], [`failover`], [`scorer`], [`routing`] (and `cargo xtask train-router`), and
//!   `scaling`, `observability`, `abuse` and `yellowstone` through [`program::quick_only`]:
//!   bench programs of other crates, built and run by [`program`];
//! - [`soak`] (`cargo xtask soak`): the soak program of `sluice-tests`, through [`program`];
//! - [`measure`]: every statistic the benches above compute (medians, spreads, per-message CPU,
//!   shares).
//!
//! This module only picks the benchmark and checks option values; it must not run or measure
//! anything itself.

use anyhow::{Context, Result, bail};

mod failover;
mod measure;
mod policy;
mod program;
mod proxy;
mod proxy_configs;
mod proxy_runs;
mod proxy_tables;
pub mod routing;
mod scorer;
mod targets;

/// Every benchmark's options, shown on `--help` and after an unknown option.
const USAGE: &str =
    "usage: cargo xtask bench proxy [--rounds N] [--duration 5s] [--envoy-concurrency N] [--quick]
       cargo xtask bench policy [--rounds N] [--quick]
       cargo xtask bench failover [--trials N] [--streams N]
       cargo xtask bench scaling [--quick]
       cargo xtask bench observability [--quick]
       cargo xtask bench abuse [--quick]
       cargo xtask bench scorer [--quick]
       cargo xtask bench routing [--rounds N] [--seconds N] [--model FILE] [--quick]
       cargo xtask bench yellowstone [--quick]";

/// `cargo xtask bench <name> ...`
pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("proxy") => proxy::run(proxy::parse_options(&args[1..])?),
        Some("policy") => policy::run(&args[1..]),
        Some("failover") => failover::run(&args[1..]),
        Some("scaling") => program::quick_only("scaling", &args[1..]),
        Some("observability") => program::quick_only("observability", &args[1..]),
        Some("abuse") => program::quick_only("abuse", &args[1..]),
        Some("scorer") => scorer::run(&args[1..]),
        Some("routing") => routing::run(&args[1..]),
        Some("yellowstone") => program::quick_only("yellowstone", &args[1..]),
        Some(other) => {
            bail!(
                "unknown benchmark {other:?}; available: proxy, policy, failover, scaling, observability, abuse, scorer, routing, yellowstone\n{USAGE}"
            )
        }
        None => bail!("{USAGE}"),
    }
}

/// `cargo xtask soak [--minutes N]`: the soak program of `sluice-tests` (release profile), which
/// prints its figures against the spec's targets and writes `<target>/bench/soak.json`.
pub fn soak(args: &[String]) -> Result<()> {
    let mut passed = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--minutes" => {
                passed.push(arg.clone());
                passed.push(positive("--minutes", it.next())?);
            }
            "-h" | "--help" => {
                println!("usage: cargo xtask soak [--minutes N]");
                return Ok(());
            }
            other => bail!("unknown option {other:?}\nusage: cargo xtask soak [--minutes N]"),
        }
    }
    program::run("sluice-tests", "soak", &passed)
}

/// The value after the option `flag`, checked to be a positive whole number.
fn positive(flag: &str, value: Option<&String>) -> Result<String> {
    let value = value.with_context(|| format!("{flag} needs a number"))?;
    parse_positive(flag, value)?;
    Ok(value.clone())
}

/// `value` as a number of at least 1, or an error naming `flag`.
fn parse_positive(flag: &str, value: &str) -> Result<usize> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("{flag} {value:?} is not a positive number"))
}
