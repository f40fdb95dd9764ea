//! `cargo xtask demo` and `cargo xtask test`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::setup::{self, Profile};
use crate::util::{self, cargo};
use crate::{browser, plugins};

/// Builds the plugins, then runs `sluice demo` from a debug build (sharing the test build's
/// cache).
pub fn demo(args: &[String]) -> Result<ExitCode> {
    let built = plugins::build_all()?;
    let mut command = cargo();
    command
        .args(["run", "--package", "sluice", "--", "demo"])
        .args(args);
    if !args
        .iter()
        .any(|a| a == "--plugins" || a.starts_with("--plugins="))
    {
        command.arg("--plugins").arg(demo_plugins(&built)?);
    }
    println!("$ {}", util::display(&command));
    let status = command.status().context("cannot start cargo")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // Killed by a signal (Ctrl-C): the demo already said what happened.
        None => ExitCode::from(130),
    })
}

/// A watched folder for the demo with the default policies (`router.wasm`, `scaler.wasm`,
/// `anomaly.wasm`) and the feed resumer as `resumer.wasm` (the demo's endpoints are feed
/// servers), fresh each run, so that dropping a plugin into it swaps it in while the demo's
/// monitors stream. It is not the build output folder: rebuilding plugins must not reload the
/// demo's slots.
fn demo_plugins(built: &std::path::Path) -> Result<std::path::PathBuf> {
    let dir = util::target_dir()?.join("demo-plugins");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (built_name, name) in [
        ("router.wasm", "router.wasm"),
        ("scaler.wasm", "scaler.wasm"),
        ("anomaly.wasm", "anomaly.wasm"),
        ("feed-resumer.wasm", "resumer.wasm"),
    ] {
        std::fs::copy(built.join(built_name), dir.join(name))
            .with_context(|| format!("copying {built_name} into {}", dir.display()))?;
    }
    Ok(dir)
}

struct Step {
    name: &'static str,
    took: Duration,
    ok: bool,
}

/// setup test, plugins, fmt, clippy, test: stops at the first failure and prints step durations.
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
    let mut chromium = None;
    timed(steps, "setup", || {
        installed = Some(setup::setup(Profile::Test)?);
        chromium = Some(browser::ensure()?);
        Ok(())
    })?;
    let installed = installed.context("setup returned nothing")?;
    let chromium = chromium.context("browser setup returned nothing")?;
    let mut plugins_dir = None;
    timed(steps, "plugins", || {
        plugins_dir = Some(plugins::build_all()?);
        Ok(())
    })?;
    let plugins_dir = plugins_dir.context("building the plugins returned nothing")?;
    timed(steps, "fmt", || {
        util::run(cargo().args(["fmt", "--all", "--check"]))?;
        // The Rust plugins are a workspace of their own.
        util::run(
            cargo()
                .args(["fmt", "--all", "--check"])
                .current_dir(util::repo_root().join("plugins").join("rust")),
        )
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
        // Resilience and history tests run the feed server and Sluice as real processes (to
        // SIGKILL them).
        util::run(cargo().args([
            "build",
            "-p",
            "sluice-feed",
            "--bin",
            "sluice-feed",
            "-p",
            "sluice",
            "--bin",
            "sluice",
        ]))?;
        let mut command = cargo();
        command
            .args(["test", "--workspace"])
            .env("SLUICE_PYTHON", &installed.python)
            .env("SLUICE_PY_STUBS", &installed.stubs)
            .env("SLUICE_PLUGINS", &plugins_dir)
            .env("SLUICE_CHROMIUM", &chromium)
            .env("SLUICE_ORT_LIB", &installed.onnxruntime)
            .env("SLUICE_REQUIRE_ALL", "1");
        println!(
            "(SLUICE_PYTHON={} SLUICE_PY_STUBS={} SLUICE_PLUGINS={} SLUICE_CHROMIUM={} SLUICE_ORT_LIB={} SLUICE_REQUIRE_ALL=1)",
            setup::display_rel(&installed.python),
            setup::display_rel(&installed.stubs),
            setup::display_rel(&plugins_dir),
            chromium.display(),
            setup::display_rel(&installed.onnxruntime)
        );
        util::run(&mut command)?;
        // The plugins' decision logic is plain Rust: its unit tests run natively.
        let target_dir = util::target_dir()?.join("plugins-native");
        util::run(
            cargo()
                .args([
                    "test",
                    "-p",
                    "scaler",
                    "-p",
                    "anomaly",
                    "-p",
                    "router",
                    "-p",
                    "feed-resumer",
                    "-p",
                    "sluice-plugin",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                ])
                .current_dir(util::repo_root().join("plugins").join("rust"))
                .env("CARGO_TARGET_DIR", target_dir),
        )
    })
}
