//! `cargo xtask bench proxy`: the same load, direct to the feed service, through Sluice and
//! through Envoy, on loopback.
//!
//! Every target sees the same `sluice-load` runs, alternated target by target in each round so
//! that drift on the machine (thermal, other work) spreads evenly. For each run it records the
//! load generator's JSON, the proxy's CPU time (utime + stime from `/proc/PID/stat`) over the
//! measured window, and its peak and current RSS (`/proc/PID/status`). All processes share the
//! machine's cores, so it also records the feed's and the load generator's CPU time and the
//! machine's idle share (`/proc/stat`) over the same window: what a proxy costs the whole
//! machine per message, beyond its own CPU. It also measures the RSS that 1,000 idle streams
//! add to each proxy. Tables go to stdout, ending with Sluice's targets and a verdict for each
//! ([`super::targets`]); raw results and verdicts go to `<target>/bench/proxy.json`.
//!
//! This module owns the bench's options, its scenarios and the order of the whole run: build,
//! start the processes, sanity check, idle memory, the rounds, the tables, the JSON. A run
//! against one target is [`super::proxy_runs`], the tables are [`super::proxy_tables`], the
//! proxies' configs [`super::proxy_configs`]. It must not compute a statistic
//! ([`super::measure`]) nor judge a figure against a target ([`super::targets`]).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::proxy_configs::{ENVOY_CONFIG, SLUICE_CONFIG};
use super::proxy_runs::{Bench, ENVOY, FEED, IDLE_STREAMS, Idle, Run, SLUICE, Target};
use super::proxy_tables::{self, Summary, thousands};
use super::{USAGE, parse_positive, targets};
use crate::procs::{self, Guarded, TempDir};
use crate::setup::{self, Profile};
use crate::util::{self, cargo};

/// One load shape, run against every target.
pub(super) struct Scenario {
    /// Its name in `proxy.json` and the targets table.
    pub(super) key: &'static str,
    /// Its heading in the output.
    pub(super) title: &'static str,
    /// `sluice-load` arguments (subcommand first); target, warm-up and duration are added.
    pub(super) args: &'static [&'static str],
    /// What the rate counts.
    pub(super) unit: &'static str,
    /// What Sluice is held to in this scenario.
    pub(super) goal: targets::Goal,
}

/// The bench's scenarios, in the order they run and print.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: "stream-1",
        title: "(i) 1 Subscribe stream, 64 B events, unthrottled",
        args: &["stream", "--streams", "1", "--payload", "64", "--rate", "0"],
        unit: "msgs/s",
        goal: targets::Goal::MinRatio(0.9),
    },
    Scenario {
        key: "stream-100x1conn",
        title: "(ii) 100 Subscribe streams on 1 client connection, 256 B events, unthrottled",
        args: &[
            "stream",
            "--streams",
            "100",
            "--connections",
            "1",
            "--payload",
            "256",
            "--rate",
            "0",
        ],
        unit: "msgs/s",
        goal: targets::Goal::MinRatio(0.9),
    },
    Scenario {
        key: "stream-20-paced",
        title: "(iii) 20 Subscribe streams at 1,000 events/s each, 512 B (one-way latency)",
        args: &[
            "stream",
            "--streams",
            "20",
            "--rate",
            "1000",
            "--payload",
            "512",
        ],
        unit: "msgs/s",
        goal: targets::Goal::MaxAddedP50Us(40.0),
    },
    Scenario {
        key: "unary-32",
        title: "(iv) unary Echo, 32 calls in flight, 64 B (round-trip latency)",
        args: &["unary", "--concurrency", "32", "--payload", "64"],
        unit: "calls/s",
        goal: targets::Goal::MinRatio(0.5),
    },
];

/// `cargo xtask bench proxy`'s options.
pub(super) struct Options {
    /// Rounds per scenario (`--rounds`; 3, or 1 with `--quick`).
    rounds: usize,
    /// The measured window of each run (`--duration`; 5 s, or 2 s with `--quick`).
    duration: Duration,
    /// Load before the measured window (1 s, or 500 ms with `--quick`).
    warmup: Duration,
    /// Envoy's worker threads; Sluice runs with its own default.
    envoy_concurrency: usize,
    /// `--quick`.
    quick: bool,
}

/// Reads `--rounds N`, `--duration D`, `--envoy-concurrency N` and `--quick` (each as
/// `--flag value` or `--flag=value`); `--help` prints the usage and exits.
pub(super) fn parse_options(args: &[String]) -> Result<Options> {
    let mut rounds = None;
    let mut duration = None;
    let mut quick = false;
    let mut envoy_concurrency = None;
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (args[i].as_str(), None),
        };
        let mut value = || -> Result<String> {
            if let Some(value) = inline.clone() {
                return Ok(value);
            }
            i += 1;
            args.get(i)
                .cloned()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag {
            "--rounds" => rounds = Some(parse_positive(flag, &value()?)?),
            "--duration" => duration = Some(util::parse_duration(&value()?)?),
            "--envoy-concurrency" => envoy_concurrency = Some(parse_positive(flag, &value()?)?),
            "--quick" => quick = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
        i += 1;
    }
    Ok(Options {
        rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
        duration: duration.unwrap_or(Duration::from_secs(if quick { 2 } else { 5 })),
        warmup: if quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        },
        // Envoy's own default: one worker per hardware thread.
        envoy_concurrency: envoy_concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        }),
        quick,
    })
}

/// Runs the whole bench with `options`: prints the tables and writes `proxy.json`.
pub(super) fn run(options: Options) -> Result<()> {
    let started = Instant::now();
    println!(
        "== bench proxy: {} round(s) of {} per scenario and target{} ==",
        options.rounds,
        util::human(options.duration),
        if options.quick { " (quick)" } else { "" }
    );

    println!("\n== building release binaries ==");
    util::run(cargo().args(["build", "--release", "-p", "sluice", "-p", "sluice-feed"]))?;
    let target_dir = util::target_dir()?;
    let bin = target_dir.join("release");
    let [sluice_bin, feed_bin, load_bin] = ["sluice", "sluice-feed", "sluice-load"].map(|name| {
        let path = bin.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(anyhow::anyhow!("{} was not built", path.display()))
        }
    });
    let (sluice_bin, feed_bin, load_bin) = (sluice_bin?, feed_bin?, load_bin?);

    println!("\n== setup bench ==");
    let installed = setup::setup(Profile::Bench)?;
    let envoy_bin = installed
        .envoy
        .context("setup bench did not provide an envoy binary")?;
    let envoy_version = util::output(Command::new(&envoy_bin).arg("--version"))
        .map(|v| v.split("version:").nth(1).unwrap_or(&v).trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));

    let out_dir = target_dir.join("bench");
    let logs = out_dir.join("logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs)?;
    }
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let work = TempDir::new("sluice-bench")?;

    println!(
        "\n== starting feed, sluice and envoy (logs in {}) ==",
        logs.display()
    );
    let (feed, feed_addr) = start_listening(
        "sluice-feed",
        "the feed's",
        Command::new(&feed_bin).args(["--listen", "127.0.0.1:0", "--name", "bench-feed"]),
        &logs.join("feed.log"),
    )?;

    let sluice_config = SLUICE_CONFIG.replace("{FEED_ADDR}", &feed_addr.to_string());
    let sluice_config_path = work.path().join("sluice.toml");
    std::fs::write(&sluice_config_path, &sluice_config)?;
    let (sluice, sluice_addr) = start_listening(
        "sluice",
        "sluice's",
        Command::new(&sluice_bin)
            .arg("run")
            .arg("--config")
            .arg(&sluice_config_path),
        &logs.join("sluice.log"),
    )?;

    let envoy_addr = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
    let envoy_config = ENVOY_CONFIG
        .replace("{LISTEN_PORT}", &envoy_addr.port().to_string())
        .replace("{FEED_PORT}", &feed_addr.port().to_string());
    let envoy_config_path = work.path().join("envoy.yaml");
    std::fs::write(&envoy_config_path, &envoy_config)?;
    // Spawned directly (not through a shell or the Python wrapper): xtask is Envoy's parent for
    // its whole life, and the PID whose CPU and memory are read is Envoy itself.
    let mut envoy = Guarded::spawn(
        "envoy",
        Command::new(&envoy_bin)
            .arg("-c")
            .arg(&envoy_config_path)
            .arg("--concurrency")
            .arg(options.envoy_concurrency.to_string())
            .args(["--log-level", "error"])
            .arg("--disable-hot-restart")
            .stdin(Stdio::null()),
        Some(&logs.join("envoy.log")),
    )?;
    envoy.wait_for_port(envoy_addr, Duration::from_secs(30))?;
    println!(
        "envoy        pid {:>7}  {envoy_addr}  ({envoy_version}, --concurrency {})",
        envoy.pid(),
        options.envoy_concurrency
    );

    let targets = [
        Target {
            name: "direct",
            url: format!("http://{feed_addr}"),
            proxy: None,
        },
        Target {
            name: "sluice",
            url: format!("http://{sluice_addr}"),
            proxy: Some(SLUICE),
        },
        Target {
            name: "envoy",
            url: format!("http://{envoy_addr}"),
            proxy: Some(ENVOY),
        },
    ];
    let mut bench = Bench {
        load_bin,
        load_log: logs.join("load.log"),
        procs: vec![feed, sluice, envoy],
        clk_tck: procs::clock_ticks(),
        peak_reset_works: false,
    };
    bench.peak_reset_works = procs::reset_peak(bench.procs[SLUICE].pid());

    println!("\n== sanity check: one unary call stream per target ==");
    for target in &targets {
        let probe = ["unary", "--concurrency", "1", "--payload", "16"].map(String::from);
        let run = bench.run_load(
            target,
            0,
            &probe,
            Duration::from_millis(100),
            Duration::from_millis(300),
        )?;
        if run.rate <= 0.0 || run.errors > 0 {
            bail!(
                "{} does not serve Echo correctly: {}{}",
                target.name,
                run.load,
                bench.procs[target.proxy.unwrap_or(FEED)].log_tail()
            );
        }
        println!("  {:<7} ok ({:.0} calls/s)", target.name, run.rate);
    }

    // Idle memory first, while both proxies are fresh: after the throughput runs their
    // allocators hold freed memory that new streams would reuse, hiding the real cost.
    println!("\n== idle streams: RSS added by {IDLE_STREAMS} idle Subscribe streams ==");
    let mut idle = Vec::new();
    for target in targets.iter().filter(|t| t.proxy.is_some()) {
        let result = bench.idle(target)?;
        println!(
            "  {:<7} {} ready: RSS {:.1} MB -> {:.1} MB",
            target.name,
            result.ready,
            result.rss_before_kb as f64 / 1024.0,
            result.rss_after_kb as f64 / 1024.0
        );
        idle.push(result);
    }

    let mut results: Vec<(&Scenario, Vec<Run>)> = Vec::new();
    for scenario in SCENARIOS {
        println!("\n== {} ==", scenario.title);
        let args: Vec<String> = scenario.args.iter().map(|a| a.to_string()).collect();
        let mut runs = Vec::new();
        for round in 1..=options.rounds {
            for target in &targets {
                let run = bench.run_load(target, round, &args, options.warmup, options.duration)?;
                println!(
                    "  round {round} {:<7} {:>11} {}  p50 {:>6} µs  p99 {:>6} µs  p999 {:>6} µs  errors {}{}",
                    target.name,
                    thousands(run.rate),
                    scenario.unit,
                    run.p50,
                    run.p99,
                    run.p999,
                    run.errors,
                    run.proxy_cpu_us_per_msg
                        .map(|c| format!("  proxy CPU {c:.2} µs/msg"))
                        .unwrap_or_default(),
                );
                runs.push(run);
            }
        }
        results.push((scenario, runs));
    }

    // Tables.
    println!(
        "\n== results: median over {} round(s) of {} (min–max in brackets); \
         latencies in µs are medians of each round's percentile ==",
        options.rounds,
        util::human(options.duration),
    );
    let mut scenario_json = Vec::new();
    for (scenario, runs) in &results {
        let summary = proxy_tables::summarize(&targets, runs);
        proxy_tables::print_table(scenario, &summary);
        scenario_json.push(json!({
            "key": scenario.key,
            "title": scenario.title,
            "load_args": scenario.args,
            "unit": scenario.unit,
            "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
            "summary": summary.iter().map(Summary::to_json).collect::<Vec<_>>(),
        }));
    }
    proxy_tables::print_idle(&idle);
    let verdicts = targets::report(&results, &idle);
    if !bench.peak_reset_works {
        println!(
            "\nnote: /proc/PID/clear_refs refused to reset VmHWM, so peak RSS is since process start"
        );
    }

    let report = json!({
        "benchmark": "proxy",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "options": {
            "rounds": options.rounds,
            "duration_secs": options.duration.as_secs_f64(),
            "warmup_secs": options.warmup.as_secs_f64(),
            "envoy_concurrency": options.envoy_concurrency,
            "quick": options.quick,
        },
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "clk_tck": bench.clk_tck,
        },
        "envoy_version": envoy_version,
        "peak_rss_reset_per_run": bench.peak_reset_works,
        "sluice_config": sluice_config,
        "envoy_config": envoy_config,
        "scenarios": scenario_json,
        "idle": idle.iter().map(Idle::to_json).collect::<Vec<_>>(),
        "targets": verdicts,
    });
    let json_path = out_dir.join("proxy.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!(
        "\nraw results: {}\nbench took {}",
        json_path.display(),
        util::human(started.elapsed())
    );
    drop(bench);
    drop(work);
    Ok(())
}

/// Starts `command` as `name` (`RUST_LOG=warn`, no stdin, stderr to `log`), waits up to 20 s
/// for its `<name> listening on <address>` line and prints its pid and address; `whose` names
/// the address in a parse error.
fn start_listening(
    name: &str,
    whose: &str,
    command: &mut Command,
    log: &Path,
) -> Result<(Guarded, SocketAddr)> {
    let mut process = Guarded::spawn(
        name,
        command.env("RUST_LOG", "warn").stdin(Stdio::null()),
        Some(log),
    )?;
    let addr: SocketAddr = process
        .wait_for_line(&format!("{name} listening on "), Duration::from_secs(20))?
        .parse()
        .with_context(|| format!("parsing {whose} address"))?;
    println!("{name:<13}pid {:>7}  {addr}", process.pid());
    Ok((process, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults, `--quick`, both option spellings, and refusals.
    #[test]
    fn options() {
        let quick = parse_options(&["--quick".to_owned()]).unwrap();
        assert_eq!((quick.rounds, quick.duration), (1, Duration::from_secs(2)));
        let args = ["--rounds=5", "--duration", "1s"].map(String::from);
        let custom = parse_options(&args).unwrap();
        assert_eq!(
            (custom.rounds, custom.duration),
            (5, Duration::from_secs(1))
        );
        assert!(parse_options(&["--bogus".to_owned()]).is_err());
        let envoy = parse_options(&["--envoy-concurrency=1".to_owned()]).unwrap();
        assert_eq!(envoy.envoy_concurrency, 1);
        assert!(parse_options(&["--envoy-concurrency=0".to_owned()]).is_err());
    }
}
