//! One load run of `cargo xtask bench proxy` against one target, and the idle-stream memory
//! measurement: the processes the bench drives ([`Bench`]), what it reads from `/proc` around a
//! run, and what a run measured ([`Run`], [`Idle`]).
//!
//! It owns how a run is driven and sampled: `sluice-load` against a target, CPU counters read
//! inside the measured window away from its edges, memory read after. It must not summarize
//! runs over the rounds ([`super::proxy_tables`]), judge them ([`super::targets`]), or compute
//! a statistic itself: per-message CPU and shares come from [`super::measure`].

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::measure;
use crate::procs::{self, Guarded};

/// Streams held open for the idle-memory measurement.
pub(super) const IDLE_STREAMS: usize = 1000;

/// Index into [`Bench::procs`] of the feed server.
pub(super) const FEED: usize = 0;
/// Index into [`Bench::procs`] of Sluice.
pub(super) const SLUICE: usize = 1;
/// Index into [`Bench::procs`] of Envoy.
pub(super) const ENVOY: usize = 2;

/// A place the load generator connects to.
pub(super) struct Target {
    /// `direct`, `sluice` or `envoy`.
    pub(super) name: &'static str,
    /// What `sluice-load --target` gets.
    pub(super) url: String,
    /// Index into `Bench::procs` of the proxy in the path, if any.
    pub(super) proxy: Option<usize>,
}

/// CPU counters read at one instant of a load run, in clock ticks.
struct Sample {
    /// When they were read.
    at: Instant,
    /// The proxy's CPU time, when the target has a proxy.
    proxy: Option<u64>,
    /// The feed server's CPU time.
    feed: u64,
    /// `None` once the load generator is gone; its exit status then says why.
    load: Option<u64>,
    /// `(idle, total)` over all of the machine's CPUs.
    machine: (u64, u64),
}

/// What one load run measured.
pub(super) struct Run {
    /// The target's name.
    pub(super) target: &'static str,
    /// 0 for the sanity check, then 1, 2, ...
    pub(super) round: usize,
    /// The load generator's JSON, as it printed it.
    pub(super) load: Value,
    /// Messages (or calls) per second.
    pub(super) rate: f64,
    /// Latency percentiles in µs, as the load generator measured them.
    pub(super) p50: f64,
    /// See `p50`.
    pub(super) p99: f64,
    /// See `p50`.
    pub(super) p999: f64,
    /// Failed calls or streams.
    pub(super) errors: u64,
    /// CPU µs per message of the proxy, of the feed and of the load generator.
    pub(super) proxy_cpu_us_per_msg: Option<f64>,
    /// See `proxy_cpu_us_per_msg`.
    pub(super) feed_cpu_us_per_msg: Option<f64>,
    /// See `proxy_cpu_us_per_msg`.
    pub(super) load_cpu_us_per_msg: Option<f64>,
    /// Share of the machine's CPU time that was idle during the measured window.
    pub(super) machine_idle_share: Option<f64>,
    /// The proxy's memory after the run (peak since the run started, where it can be reset).
    pub(super) proxy_memory: Option<procs::Memory>,
}

impl Run {
    /// The run as written to `proxy.json`.
    pub(super) fn to_json(&self) -> Value {
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
pub(super) struct Idle {
    /// The proxy's name.
    pub(super) target: &'static str,
    /// Idle streams that opened.
    pub(super) ready: u64,
    /// The proxy's VmRSS before the streams opened, in KiB.
    pub(super) rss_before_kb: u64,
    /// The proxy's VmRSS with them open, in KiB.
    pub(super) rss_after_kb: u64,
}

impl Idle {
    /// KiB of RSS that one idle stream adds.
    pub(super) fn per_stream_kib(&self) -> f64 {
        self.rss_after_kb.saturating_sub(self.rss_before_kb) as f64 / (self.ready.max(1) as f64)
    }

    /// MiB of RSS that 1,000 idle streams add.
    pub(super) fn per_1000_mb(&self) -> f64 {
        self.per_stream_kib() * 1000.0 / 1024.0
    }

    /// The figures as written to `proxy.json`.
    pub(super) fn to_json(&self) -> Value {
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
pub(super) struct Bench {
    /// The `sluice-load` binary.
    pub(super) load_bin: PathBuf,
    /// Where every `sluice-load` run appends its stderr.
    pub(super) load_log: PathBuf,
    /// feed, sluice, envoy; killed when dropped.
    pub(super) procs: Vec<Guarded>,
    /// Clock ticks per second, the unit of `/proc`'s CPU times.
    pub(super) clk_tck: u64,
    /// Whether the proxies' peak RSS can be reset before each run.
    pub(super) peak_reset_works: bool,
}

impl Bench {
    /// Fails when any of the bench's processes has exited.
    fn check_alive(&mut self) -> Result<()> {
        for proc in &mut self.procs {
            proc.ensure_running()?;
        }
        Ok(())
    }

    /// The CPU counters of the proxy (if any), the feed, the load generator and the machine.
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
    pub(super) fn run_load(
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
        let per_msg = |a: u64, b: u64| measure::cpu_us_per_message(a, b, clk_tck, seconds, rate);
        let proxy_cpu_us_per_msg = match (first.proxy, second.proxy) {
            (Some(a), Some(b)) => per_msg(a, b),
            _ => None,
        };
        let (idle, total) = (
            second.machine.0.saturating_sub(first.machine.0),
            second.machine.1.saturating_sub(first.machine.1),
        );
        let machine_idle_share = measure::share(idle, total);
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
    pub(super) fn idle(&mut self, target: &Target) -> Result<Idle> {
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

/// Sleeps until `deadline`, or not at all once it has passed.
fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}
