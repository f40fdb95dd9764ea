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
//! ([`targets`]); raw results and verdicts go to `<target>/bench/proxy.json`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::procs::{self, Guarded, TempDir};
use crate::setup::{self, Profile};
use crate::util::{self, cargo};

mod targets;

const USAGE: &str =
    "usage: cargo xtask bench proxy [--rounds N] [--duration 5s] [--envoy-concurrency N] [--quick]
       cargo xtask bench policy [--rounds N] [--quick]
       cargo xtask bench failover [--trials N] [--streams N]
       cargo xtask bench scaling [--quick]
       cargo xtask bench observability [--quick]
       cargo xtask bench scorer [--quick]
       cargo xtask bench routing [--rounds N] [--seconds N] [--model FILE] [--quick]";

/// Streams held open for the idle-memory measurement.
const IDLE_STREAMS: usize = 1000;

/// One load shape, run against every target.
struct Scenario {
    key: &'static str,
    title: &'static str,
    /// `sluice-load` arguments (subcommand first); target, warm-up and duration are added.
    args: &'static [&'static str],
    /// What the rate counts.
    unit: &'static str,
    /// What Sluice is held to in this scenario.
    goal: targets::Goal,
}

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

struct Options {
    rounds: usize,
    duration: Duration,
    warmup: Duration,
    /// Envoy's worker threads; Sluice runs with its own default.
    envoy_concurrency: usize,
    quick: bool,
}

fn parse_options(args: &[String]) -> Result<Options> {
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

/// `cargo xtask bench <name> ...`
pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("proxy") => proxy(parse_options(&args[1..])?),
        Some("policy") => policy(&args[1..]),
        Some("failover") => failover(&args[1..]),
        Some("scaling") => quick_only("scaling", &args[1..]),
        Some("observability") => quick_only("observability", &args[1..]),
        Some("scorer") => scorer(&args[1..]),
        Some("routing") => routing(&args[1..]),
        Some(other) => {
            bail!(
                "unknown benchmark {other:?}; available: proxy, policy, failover, scaling, observability, scorer, routing\n{USAGE}"
            )
        }
        None => bail!("{USAGE}"),
    }
}

/// Builds the plugins and runs the bench program `bench` of `package` (release profile) with
/// `--plugins <dir> --json <target>/bench/<bench>.json` and the options in `passed`.
fn run_bench_program(package: &str, bench: &str, passed: &[String]) -> Result<()> {
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

/// `cargo xtask bench policy`: builds the plugins, then runs the `policy` bench program of
/// `sluice-policy` (release profile), which prints its tables and writes
/// `<target>/bench/policy.json`.
fn policy(args: &[String]) -> Result<()> {
    let mut passed = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => passed.push(arg.clone()),
            "--rounds" => passed.extend([arg.clone(), positive(arg, rest.next())?]),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    run_bench_program("sluice-policy", "policy", &passed)
}

/// `cargo xtask bench failover`: builds the plugins (the feed's resumer among them), then runs
/// the `failover` bench program of `sluice-tests` (release profile), which prints per-trial and
/// overall figures and writes `<target>/bench/failover.json`.
fn failover(args: &[String]) -> Result<()> {
    let mut passed = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--trials" | "--streams" => passed.extend([arg.clone(), positive(arg, rest.next())?]),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    util::run(cargo().args(["build", "--release", "-p", "sluice-feed"]))?;
    run_bench_program("sluice-tests", "failover", &passed)
}

/// `cargo xtask bench scaling` and `cargo xtask bench observability`: build the plugins, then
/// run the bench program of that name in `sluice-tests` (release profile), which prints its
/// figures and writes `<target>/bench/<name>.json`. `scaling`: the loops' CPU cost at 5,000
/// streams, the scaler's accuracy against an on-demand baseline, the store's growth.
/// `observability`: `/metrics` and `/ws` latency and size at 1,000 streams, and the CPU cost of
/// dashboards and scrapes.
fn quick_only(bench: &str, args: &[String]) -> Result<()> {
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
    run_bench_program("sluice-tests", bench, &passed)
}

/// `cargo xtask bench scorer`: writes the bench's models with `tests/python/scorer_model.py`
/// (the set-up's Python has onnx and onnxruntime), then runs the `scorer` bench program of
/// `sluice-scorer` (release profile) on the set-up's ONNX Runtime library.
fn scorer(args: &[String]) -> Result<()> {
    let mut passed = Vec::new();
    for arg in args {
        match arg.as_str() {
            "--quick" => passed.push(arg.clone()),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    let installed = setup::setup(Profile::Test)?;
    let out = util::target_dir()?.join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let script = util::repo_root().join("tests/python/scorer_model.py");
    let mut command = cargo();
    command.args([
        "bench",
        "--package",
        "sluice-scorer",
        "--bench",
        "scorer",
        "--",
    ]);
    for features in [5, 20] {
        let model = out.join(format!("scorer-{features}.onnx"));
        util::run(
            Command::new(&installed.python)
                .arg(&script)
                .arg(&model)
                .args(["--features", &features.to_string()]),
        )?;
        command
            .arg("--model")
            .arg(format!("{features}={}", model.display()));
    }
    command
        .arg("--library")
        .arg(&installed.onnxruntime)
        .args(&passed);
    println!("$ {}", util::display(&command));
    util::run(&mut command)
}

/// The model the default router ships with: written by `cargo xtask train-router`.
pub const SHIPPED_ROUTER_MODEL: &str = "plugins/models/router-v1.onnx";

/// `cargo xtask bench routing`: round-robin, least-loaded, the built-in P2C and the default
/// router plugin with the ONNX scorer (`--model`, default the shipped model) on a heterogeneous
/// pool, then the cost of one decision. Runs the `routing` bench program of `sluice-tests`.
fn routing(args: &[String]) -> Result<()> {
    let mut passed = Vec::new();
    let mut model = util::repo_root().join(SHIPPED_ROUTER_MODEL);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => passed.push(arg.clone()),
            "--rounds" | "--seconds" => passed.extend([arg.clone(), positive(arg, rest.next())?]),
            "--model" => {
                model = PathBuf::from(rest.next().context("--model needs a file")?);
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if !model.is_file() {
        bail!(
            "no model at {}; `cargo xtask train-router` writes the shipped one",
            model.display()
        );
    }
    let installed = setup::setup(Profile::Test)?;
    passed.push("--model".to_owned());
    passed.push(model.display().to_string());
    passed.push("--library".to_owned());
    passed.push(installed.onnxruntime.display().to_string());
    run_bench_program("sluice-tests", "routing", &passed)
}

/// `cargo xtask train-router [--seconds N] [--out FILE]`: the shipped router model, reproduced.
/// Runs the `routing` bench program in recording mode (the default router plugin exploring 30%
/// of its decisions on the bench's heterogeneous pool, every outcome stored), then
/// `plugins/training/train_router.py` with seed 7 on what it recorded.
pub fn train_router(args: &[String]) -> Result<()> {
    let mut seconds = "30".to_owned();
    let mut out = util::repo_root().join(SHIPPED_ROUTER_MODEL);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--seconds" => seconds = positive(arg, rest.next())?,
            "--out" => out = PathBuf::from(rest.next().context("--out needs a file")?),
            other => bail!(
                "unknown option {other:?}; usage: cargo xtask train-router [--seconds N] [--out FILE]"
            ),
        }
    }
    let installed = setup::setup(Profile::Test)?;
    let dir = util::target_dir()?.join("train-router");
    // A fresh store: the model learns from this simulation only.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = dir.join("outcomes.db");
    run_bench_program(
        "sluice-tests",
        "routing",
        &[
            "--record".to_owned(),
            store.display().to_string(),
            "--seconds".to_owned(),
            seconds,
        ],
    )?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    util::run(
        Command::new(&installed.python)
            .arg(util::repo_root().join("plugins/training/train_router.py"))
            .arg("--store")
            .arg(&store)
            .arg("--out")
            .arg(&out)
            .args(["--seed", "7"]),
    )?;
    println!("router model written to {}", out.display());
    Ok(())
}

/// A place the load generator connects to.
struct Target {
    name: &'static str,
    url: String,
    /// Index into `Bench::procs` of the proxy in the path, if any.
    proxy: Option<usize>,
}

/// CPU counters read at one instant of a load run, in clock ticks.
struct Sample {
    at: Instant,
    proxy: Option<u64>,
    feed: u64,
    /// `None` once the load generator is gone; its exit status then says why.
    load: Option<u64>,
    /// `(idle, total)` over all of the machine's CPUs.
    machine: (u64, u64),
}

/// What one load run measured.
struct Run {
    target: &'static str,
    round: usize,
    load: Value,
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
    proxy_cpu_us_per_msg: Option<f64>,
    feed_cpu_us_per_msg: Option<f64>,
    load_cpu_us_per_msg: Option<f64>,
    /// Share of the machine's CPU time that was idle during the measured window.
    machine_idle_share: Option<f64>,
    proxy_memory: Option<procs::Memory>,
}

impl Run {
    fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "round": self.round,
            "load": self.load,
            "proxy_cpu_us_per_msg": self.proxy_cpu_us_per_msg,
            "feed_cpu_us_per_msg": self.feed_cpu_us_per_msg,
            "load_cpu_us_per_msg": self.load_cpu_us_per_msg,
            "machine_idle_share": self.machine_idle_share,
            "proxy_vm_hwm_kb": self.proxy_memory.map(|m| m.hwm_kb),
            "proxy_vm_rss_kb": self.proxy_memory.map(|m| m.rss_kb),
        })
    }
}

/// The idle-stream memory figures of one proxy.
struct Idle {
    target: &'static str,
    ready: u64,
    rss_before_kb: u64,
    rss_after_kb: u64,
}

impl Idle {
    /// KiB of RSS that one idle stream adds.
    fn per_stream_kib(&self) -> f64 {
        self.rss_after_kb.saturating_sub(self.rss_before_kb) as f64 / (self.ready.max(1) as f64)
    }

    fn per_1000_mb(&self) -> f64 {
        self.per_stream_kib() * 1000.0 / 1024.0
    }

    fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "streams_ready": self.ready,
            "rss_before_kb": self.rss_before_kb,
            "rss_after_kb": self.rss_after_kb,
            "rss_per_1000_streams_mb": self.per_1000_mb(),
        })
    }
}

/// The running processes and how to drive them.
struct Bench {
    load_bin: PathBuf,
    load_log: PathBuf,
    /// feed, sluice, envoy; killed when dropped.
    procs: Vec<Guarded>,
    clk_tck: u64,
    peak_reset_works: bool,
}

const FEED: usize = 0;
const SLUICE: usize = 1;
const ENVOY: usize = 2;

fn proxy(options: Options) -> Result<()> {
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
    let mut feed = Guarded::spawn(
        "sluice-feed",
        Command::new(&feed_bin)
            .args(["--listen", "127.0.0.1:0", "--name", "bench-feed"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null()),
        Some(&logs.join("feed.log")),
    )?;
    let feed_addr: SocketAddr = feed
        .wait_for_line("sluice-feed listening on ", Duration::from_secs(20))?
        .parse()
        .context("parsing the feed's address")?;
    println!("sluice-feed  pid {:>7}  {feed_addr}", feed.pid());

    let sluice_config = SLUICE_CONFIG.replace("{FEED_ADDR}", &feed_addr.to_string());
    let sluice_config_path = work.path().join("sluice.toml");
    std::fs::write(&sluice_config_path, &sluice_config)?;
    let mut sluice = Guarded::spawn(
        "sluice",
        Command::new(&sluice_bin)
            .arg("run")
            .arg("--config")
            .arg(&sluice_config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null()),
        Some(&logs.join("sluice.log")),
    )?;
    let sluice_addr: SocketAddr = sluice
        .wait_for_line("sluice listening on ", Duration::from_secs(20))?
        .parse()
        .context("parsing sluice's address")?;
    println!("sluice       pid {:>7}  {sluice_addr}", sluice.pid());

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
        let summary = summarize(&targets, runs);
        print_table(scenario, &summary);
        scenario_json.push(json!({
            "key": scenario.key,
            "title": scenario.title,
            "load_args": scenario.args,
            "unit": scenario.unit,
            "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
            "summary": summary.iter().map(Summary::to_json).collect::<Vec<_>>(),
        }));
    }
    println!(
        "\nIdle streams: RSS added by {IDLE_STREAMS} idle Subscribe streams (one client connection)"
    );
    println!(
        "  {:<7} {:>6} {:>15} {:>14} {:>22}",
        "target", "ready", "RSS before MB", "RSS after MB", "MB per 1,000 streams"
    );
    for result in &idle {
        println!(
            "  {:<7} {:>6} {:>15.1} {:>14.1} {:>22.2}",
            result.target,
            result.ready,
            result.rss_before_kb as f64 / 1024.0,
            result.rss_after_kb as f64 / 1024.0,
            result.per_1000_mb()
        );
    }
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

impl Bench {
    fn check_alive(&mut self) -> Result<()> {
        for proc in &mut self.procs {
            proc.ensure_running()?;
        }
        Ok(())
    }

    fn sample(&self, proxy: Option<usize>, load: &Guarded) -> Result<Sample> {
        Ok(Sample {
            at: Instant::now(),
            proxy: proxy
                .map(|i| procs::cpu_ticks(self.procs[i].pid()))
                .transpose()?,
            feed: procs::cpu_ticks(self.procs[FEED].pid())?,
            load: procs::cpu_ticks(load.pid()).ok(),
            machine: procs::machine_ticks()?,
        })
    }

    /// Runs `sluice-load <args> --target ...` and reads what the processes did meanwhile.
    fn run_load(
        &mut self,
        target: &Target,
        round: usize,
        args: &[String],
        warmup: Duration,
        duration: Duration,
    ) -> Result<Run> {
        self.check_alive()?;
        if let Some(i) = target.proxy {
            procs::reset_peak(self.procs[i].pid());
        }
        let mut command = Command::new(&self.load_bin);
        command
            .args(args)
            .arg("--target")
            .arg(&target.url)
            .arg("--warmup")
            .arg(format!("{}ms", warmup.as_millis()))
            .arg("--duration")
            .arg(format!("{}ms", duration.as_millis()))
            .stdin(Stdio::null());
        let shown = format!("sluice-load {} against {}", args.join(" "), target.name);
        let load = Guarded::spawn("sluice-load", &mut command, Some(&self.load_log))?;
        let spawned = Instant::now();
        // CPU is sampled inside the load generator's measured window, away from its edges.
        let margin = (duration / 10).min(Duration::from_millis(100));
        sleep_until(spawned + warmup + margin);
        let first = self.sample(target.proxy, &load)?;
        sleep_until(spawned + warmup + duration - margin);
        let second = self.sample(target.proxy, &load)?;
        let (status, stdout) = load.finish(warmup + duration + Duration::from_secs(30))?;
        if !status.success() {
            bail!("{shown} failed ({status}); see {}", self.load_log.display());
        }
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .with_context(|| format!("{shown} printed no JSON: {stdout:?}"))?;
        let load: Value =
            serde_json::from_str(line).with_context(|| format!("{shown} printed {line:?}"))?;
        let rate = load["msgs_per_sec"]
            .as_f64()
            .or_else(|| load["calls_per_sec"].as_f64())
            .with_context(|| format!("{shown}: no msgs_per_sec or calls_per_sec in {load}"))?;
        let seconds = second.at.duration_since(first.at).as_secs_f64();
        let clk_tck = self.clk_tck as f64;
        let per_msg = |a: u64, b: u64| -> Option<f64> {
            if rate <= 0.0 || seconds <= 0.0 {
                return None;
            }
            let cpu_seconds = b.saturating_sub(a) as f64 / clk_tck;
            Some(cpu_seconds / seconds / rate * 1e6)
        };
        let proxy_cpu_us_per_msg = match (first.proxy, second.proxy) {
            (Some(a), Some(b)) => per_msg(a, b),
            _ => None,
        };
        let (idle, total) = (
            second.machine.0.saturating_sub(first.machine.0),
            second.machine.1.saturating_sub(first.machine.1),
        );
        let machine_idle_share = (total > 0).then(|| idle as f64 / total as f64);
        let proxy_memory = target
            .proxy
            .map(|i| procs::memory(self.procs[i].pid()))
            .transpose()?;
        self.check_alive()?;
        let latency = |q: &str| load["lat_us"][q].as_f64().unwrap_or(f64::NAN);
        Ok(Run {
            target: target.name,
            round,
            rate,
            p50: latency("p50"),
            p99: latency("p99"),
            p999: latency("p999"),
            errors: load["errors"].as_u64().unwrap_or(0),
            proxy_cpu_us_per_msg,
            feed_cpu_us_per_msg: per_msg(first.feed, second.feed),
            load_cpu_us_per_msg: first.load.zip(second.load).and_then(|(a, b)| per_msg(a, b)),
            machine_idle_share,
            proxy_memory,
            load,
        })
    }

    /// VmRSS of the proxy before and after `sluice-load idle` holds its streams.
    fn idle(&mut self, target: &Target) -> Result<Idle> {
        self.check_alive()?;
        let proxy = target.proxy.context("idle needs a proxy")?;
        let pid = self.procs[proxy].pid();
        std::thread::sleep(Duration::from_millis(300));
        let before = procs::memory(pid)?.rss_kb;
        let mut command = Command::new(&self.load_bin);
        command
            .args(["idle", "--streams", &IDLE_STREAMS.to_string()])
            .args(["--hold", "120s", "--target", &target.url])
            .stdin(Stdio::piped());
        let mut load = Guarded::spawn("sluice-load idle", &mut command, Some(&self.load_log))?;
        let line = load.wait_for_line("{", Duration::from_secs(60))?;
        let ready: Value = serde_json::from_str(&format!("{{{line}"))
            .with_context(|| format!("sluice-load idle printed {line:?}"))?;
        let ready = ready["ready"]
            .as_u64()
            .with_context(|| format!("no `ready` in {ready}"))?;
        // Let the proxy finish the bookkeeping of the last streams.
        std::thread::sleep(Duration::from_secs(1));
        let after = procs::memory(pid)?.rss_kb;
        // EOF on stdin tells the load generator to let go.
        drop(load.stdin());
        let (status, _) = load.finish(Duration::from_secs(20))?;
        if !status.success() {
            bail!(
                "sluice-load idle against {} failed ({status}); see {}",
                target.name,
                self.load_log.display()
            );
        }
        if ready == 0 {
            bail!(
                "no idle stream could be opened through {}; see {}",
                target.name,
                self.load_log.display()
            );
        }
        if ready < IDLE_STREAMS as u64 {
            println!(
                "  warning: only {ready} of {IDLE_STREAMS} idle streams opened through {}",
                target.name
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        self.check_alive()?;
        Ok(Idle {
            target: target.name,
            ready,
            rss_before_kb: before,
            rss_after_kb: after,
        })
    }
}

/// One target's figures for one scenario.
struct Summary {
    target: &'static str,
    /// Messages (or calls) per second over the rounds.
    rate: Spread,
    ratio_to_direct: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    proxy_cpu_us_per_msg: Option<f64>,
    /// CPU per message of the feed, the load generator and the proxy together.
    all_cpu_us_per_msg: Option<f64>,
    machine_idle_share: Option<f64>,
    proxy_peak_rss_mb: Option<f64>,
    errors: u64,
}

impl Summary {
    fn to_json(&self) -> Value {
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

fn summarize(targets: &[Target], runs: &[Run]) -> Vec<Summary> {
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
                proxy_cpu_us_per_msg: (!cpu.is_empty()).then(|| median(&cpu)),
                all_cpu_us_per_msg: (!all_cpu.is_empty()).then(|| median(&all_cpu)),
                machine_idle_share: (!idle.is_empty()).then(|| median(&idle)),
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

fn print_table(scenario: &Scenario, summary: &[Summary]) {
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

/// Median and range of one figure over the rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// No figure at all: printed as `-`, written to the JSON as `null`.
    const UNKNOWN: Spread = Spread {
        median: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
    };

    fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        Some(Spread {
            median: median(values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn fmt_num(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else {
        format!("{value:.0}")
    }
}

/// `1234567.8` -> `1,234,568`.
fn thousands(value: f64) -> String {
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

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Sluice's config for the benchmark. `sluice-load` sends no `x-sluice-monitor`, so every call is
/// in `server.default_class` (event), whose group may use the whole pool.
const SLUICE_CONFIG: &str = r#"# Generated by `cargo xtask bench proxy`.
[server]
listen = "127.0.0.1:0"
max_concurrent_streams = 2000
shutdown_grace = "1s"

[admin]
# Any free port: a fixed one would clash with a Sluice already running on this machine.
listen = "127.0.0.1:0"

[pool]
max_connections = 4

[classes.event]
share = 0.30
max_connections = 4
# Enough for 100 streams (and the 1,000 idle ones) on one upstream connection.
max_streams_per_connection = 1000

[[endpoints]]
id = "feed"
url = "http://{FEED_ADDR}"
"#;

/// Envoy's config: a plain gRPC-capable HTTP/2 proxy with its limits out of the way.
const ENVOY_CONFIG: &str = r#"# Generated by `cargo xtask bench proxy`.
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: { address: 127.0.0.1, port_value: {LISTEN_PORT} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          stream_idle_timeout: 0s
          route_config:
            name: local
            virtual_hosts:
            - name: feed
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: feed
                  timeout: 0s
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: feed
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: feed
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {FEED_PORT} }
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
    circuit_breakers:
      thresholds:
      - priority: DEFAULT
        max_connections: 100000
        max_pending_requests: 100000
        max_requests: 100000
        max_retries: 100000
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

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

    #[test]
    fn generated_configs_have_no_placeholders_left() {
        let sluice = SLUICE_CONFIG.replace("{FEED_ADDR}", "127.0.0.1:1");
        assert!(!sluice.contains('{'));
        let envoy = ENVOY_CONFIG
            .replace("{LISTEN_PORT}", "1")
            .replace("{FEED_PORT}", "2");
        assert!(!envoy.contains("{LISTEN_PORT}") && !envoy.contains("{FEED_PORT}"));
    }
}
