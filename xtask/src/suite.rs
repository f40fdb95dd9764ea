//! `cargo xtask test`: the whole suite. Set-up, plugins, `cargo fmt --check`, a build of every
//! target with Clippy's lints denied (what `cargo clippy --all-targets -- -D warnings` checks),
//! then `cargo test --workspace` with every `SLUICE_*` variable set (and `SLUICE_REQUIRE_ALL=1`,
//! so that no test skips), the 2-minute soak test beside it, and the plugins' native unit
//! tests; a summary of step times at the end.
//!
//! It owns the order of the steps and the environment the tests see. It must not install
//! anything itself (that is [`crate::setup`], [`crate::browser`] and [`crate::plugins`]) nor
//! retry or skip a failed step: the first failure ends the run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::setup::{self, Profile};
use crate::util::{self, cargo};
use crate::{browser, plugins};

/// One step of the suite, as the summary shows it.
struct Step {
    /// `setup`, `plugins`, `fmt`, `build` or `test`.
    name: &'static str,
    /// Wall time the step took.
    took: Duration,
    /// Whether it succeeded; the suite stops at the first that did not.
    ok: bool,
}

/// setup test, plugins, fmt, build (with Clippy's lints), test: stops at the first failure and
/// prints step durations.
pub fn run() -> Result<ExitCode> {
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

/// Runs `work` as the step `name` under a `== name ==` heading, recording its time and outcome
/// in `steps`.
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

/// The suite's steps in order; each one's outcome lands in `steps` before the next starts.
fn run_steps(steps: &mut Vec<Step>) -> Result<()> {
    let mut installed = None;
    let mut chromium = None;
    let mut etcd = None;
    timed(steps, "setup", || {
        installed = Some(setup::setup(Profile::Test)?);
        chromium = Some(browser::ensure()?);
        etcd = Some(crate::etcd::ensure()?);
        Ok(())
    })?;
    let installed = installed.context("setup returned nothing")?;
    let chromium = chromium.context("browser setup returned nothing")?;
    let etcd = etcd.context("etcd setup returned nothing")?;
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
    // Clippy's lints come with the build the tests use, instead of a check build of their own:
    // on 2 cores that saves the two minutes a second pass over every dependency takes.
    let linted = Linted::find()?;
    timed(steps, "build", || {
        // Resilience, history and Yellowstone tests run the feed server, the mock Geyser and
        // Sluice as real processes (to SIGKILL them). Each is built on its own, exactly as the tests' `process::binary` asks
        // for it: built together, their dependencies' features would be unified differently,
        // and the tests would build every such dependency again.
        // `--bins`: the same dependencies, and every binary linted as built for use (as
        // `cargo clippy --all-targets` does; `cargo test` builds a binary of a package without
        // integration tests only in test mode). xtask too (it runs as a binary of its own).
        for name in ["sluice-feed", "sluice-geyser", "sluice", "xtask"] {
            util::run(linted.apply(cargo().args(["build", "-p", name, "--bins"])))?;
        }
        // Every target, benches included, as `cargo clippy --all-targets` would see them.
        util::run(linted.apply(cargo().args(["test", "--workspace", "--all-targets", "--no-run"])))
    })?;
    timed(steps, "test", || {
        let environment = [
            ("SLUICE_PYTHON", installed.python.clone()),
            ("SLUICE_PY_STUBS", installed.stubs.clone()),
            ("SLUICE_PLUGINS", plugins_dir.clone()),
            ("SLUICE_CHROMIUM", chromium.clone()),
            ("SLUICE_ETCD", etcd.clone()),
            ("SLUICE_ORT_LIB", installed.onnxruntime.clone()),
            ("SLUICE_REQUIRE_ALL", PathBuf::from("1")),
        ];
        // The 2-minute soak mostly waits on its faults: it runs beside the rest of the suite
        // (ignored there), with its output kept for the end.
        let soak = Soak::start(&linted, &environment)?;
        let mut command = cargo();
        linted
            .apply(&mut command)
            .args(["test", "--workspace"])
            .envs(environment.iter().map(|(k, v)| (k, v)));
        println!(
            "(SLUICE_PYTHON={} SLUICE_PY_STUBS={} SLUICE_PLUGINS={} SLUICE_CHROMIUM={} SLUICE_ETCD={} SLUICE_ORT_LIB={} SLUICE_REQUIRE_ALL=1)",
            setup::display_rel(&installed.python),
            setup::display_rel(&installed.stubs),
            setup::display_rel(&plugins_dir),
            chromium.display(),
            etcd.display(),
            setup::display_rel(&installed.onnxruntime)
        );
        let suite = util::run(&mut command);
        let soaked = soak.finish();
        suite?;
        soaked?;
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

/// The soak test (`tests/tests/soak.rs`, ignored by a plain `cargo test`), running beside the
/// rest of the suite with its output in a file.
struct Soak {
    child: std::process::Child,
    log: PathBuf,
}

impl Soak {
    fn start(linted: &Linted, environment: &[(&str, PathBuf)]) -> Result<Self> {
        let log = util::target_dir()?.join("soak-test.log");
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = cargo();
        linted
            .apply(&mut command)
            .args([
                "test",
                "-p",
                "sluice-tests",
                "--test",
                "soak",
                "--",
                "--ignored",
                // Its figures print whether it passes or not.
                "--nocapture",
            ])
            .envs(environment.iter().map(|(k, v)| (k, v)))
            .stdout(file.try_clone()?)
            .stderr(file);
        println!(
            "$ {} > {} (beside the suite)",
            util::display(&command),
            log.display()
        );
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", util::display(&command)))?;
        Ok(Self { child, log })
    }

    /// Waits for it, prints its output and says whether it passed.
    fn finish(mut self) -> Result<()> {
        let status = self.child.wait().context("waiting for the soak test")?;
        println!("\n--- soak test ({}) ---", self.log.display());
        print!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        if !status.success() {
            anyhow::bail!("the soak test failed ({status}); its output is above");
        }
        Ok(())
    }
}

/// Clippy's driver as the workspace's rustc wrapper, with its lints denied (`-D warnings`), as
/// `cargo clippy` runs it: it compiles as rustc does and lints on the way, so one build serves
/// both. Every cargo command of the suite goes through [`Linted::apply`]: a build without it
/// would not match the linted one's fingerprints and rebuild the workspace.
struct Linted {
    /// `clippy-driver` of the toolchain running the suite.
    driver: PathBuf,
}

impl Linted {
    /// The driver beside the cargo that runs `cargo xtask` (the toolchain's own folder).
    fn find() -> Result<Self> {
        let cargo =
            std::env::var_os("CARGO").context("CARGO is not set: run `cargo xtask test`")?;
        let driver = Path::new(&cargo).with_file_name("clippy-driver");
        anyhow::ensure!(
            driver.is_file(),
            "{} not found: install Clippy (`rustup component add clippy`)",
            driver.display()
        );
        Ok(Self { driver })
    }

    /// `command` with the wrapper set.
    fn apply<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        command
            .env("RUSTC_WORKSPACE_WRAPPER", &self.driver)
            // Clippy's driver reads its arguments from here, split on this marker.
            .env(
                "CLIPPY_ARGS",
                "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
            )
    }
}
