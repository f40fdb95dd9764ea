//! Bench programs of other crates (`cargo bench --package P --bench B`, release profile): how
//! they are run, and the benches whose only option is `--quick`.
//!
//! It owns the arguments every bench program receives (`--plugins`, `--json`). It must not
//! read, summarize or judge what a program measures: the program prints its own tables and
//! writes its own JSON.

use anyhow::{Context, Result, bail};

use super::USAGE;
use crate::util::{self, cargo};

/// Builds the plugins and runs the bench program `bench` of `package` (release profile) with
/// `--plugins <dir> --json <target>/bench/<bench>.json` and the options in `passed`.
pub(super) fn run(package: &str, bench: &str, passed: &[String]) -> Result<()> {
    let plugins = crate::plugins::build_all()?;
    let out = util::target_dir()?.join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut command = cargo();
    command
        .args(["bench", "--package", package, "--bench", bench, "--"])
        .arg("--plugins")
        .arg(&plugins)
        .arg("--json")
        .arg(out.join(format!("{bench}.json")))
        .args(passed);
    println!("$ {}", util::display(&command));
    util::run(&mut command)
}

/// `cargo xtask bench scaling`, `observability`, `abuse` and `yellowstone`: build the plugins,
/// then run the bench program of that name in `sluice-tests` (release profile), which prints
/// its figures and writes `<target>/bench/<name>.json`. `scaling`: the loops' CPU cost at 5,000 streams, the
/// scaler's accuracy against an on-demand baseline, the store's growth. `observability`:
/// `/metrics` and `/ws` latency and size at 1,000 streams, and the CPU cost of dashboards and
/// scrapes. `abuse`: what each hostile client of the abuse suite costs a legitimate monitor,
/// and Sluice's peak memory and CPU under it. `yellowstone`: 200 Yellowstone monitors through
/// Sluice and direct (upstream subscriptions, delivery latency, CPU per update, resume after a
/// kill).
pub(super) fn quick_only(bench: &str, args: &[String]) -> Result<()> {
    let mut passed = Vec::new();
    for arg in args {
        match arg.as_str() {
            "--quick" => passed.push(arg.clone()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    run("sluice-tests", bench, &passed)
}
