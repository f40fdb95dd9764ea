//! `cargo xtask demo` and `cargo xtask test`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::setup::{self, Profile};
use crate::util::{self, cargo};

/// Runs `sluice demo` from a debug build (sharing the test build's cache).
pub fn demo(args: &[String]) -> Result<ExitCode> {
    let mut command = cargo();
    command
        .args(["run", "--package", "sluice", "--", "demo"])
        .args(args);
    println!("$ {}", util::display(&command));
    let status = command.status().context("cannot start cargo")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // Killed by a signal (Ctrl-C): the demo already said what happened.
        None => ExitCode::from(130),
    })
}

struct Step {
    name: &'static str,
    took: Duration,
    ok: bool,
}

/// setup test, fmt, clippy, test: stops at the first failure and prints step durations.
pub fn test() -> Result<ExitCode> {
    let mut steps: Vec<Step> = Vec::new();
    let result = run_steps(&mut steps);
    println!("\nxtask test summary:");
    for step in &steps {
        println!(
            "  {:<8} {:>8}  {}",
            step.name,
            util::human(step.took),
            if step.ok { "ok" } else { "FAILED" }
        );
    }
    let total: Duration = steps.iter().map(|s| s.took).sum();
    println!("  {:<8} {:>8}", "total", util::human(total));
    result.map(|()| ExitCode::SUCCESS)
}

fn timed(
    steps: &mut Vec<Step>,
    name: &'static str,
    work: impl FnOnce() -> Result<()>,
) -> Result<()> {
    println!("\n== {name} ==");
    let started = Instant::now();
    let result = work();
    steps.push(Step {
        name,
        took: started.elapsed(),
        ok: result.is_ok(),
    });
    result
}

fn run_steps(steps: &mut Vec<Step>) -> Result<()> {
    let mut installed = None;
    timed(steps, "setup", || {
        installed = Some(setup::setup(Profile::Test)?);
        Ok(())
    })?;
    let installed = installed.context("setup returned nothing")?;
    timed(steps, "fmt", || {
        util::run(cargo().args(["fmt", "--all", "--check"]))
    })?;
    timed(steps, "clippy", || {
        util::run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    timed(steps, "test", || {
        let mut command = cargo();
        command
            .args(["test", "--workspace"])
            .env("SLUICE_PYTHON", &installed.python)
            .env("SLUICE_PY_STUBS", &installed.stubs)
            .env("SLUICE_REQUIRE_ALL", "1");
        println!(
            "(SLUICE_PYTHON={} SLUICE_PY_STUBS={} SLUICE_REQUIRE_ALL=1)",
            setup::display_rel(&installed.python),
            setup::display_rel(&installed.stubs)
        );
        util::run(&mut command)
    })
}
