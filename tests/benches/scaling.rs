//! `cargo xtask bench scaling`: what the analytics and scaler loops cost, how closely the
//! scaler follows a load schedule, and how fast the history store grows.
//!
//! 1. **CPU cost at 5,000 streams.** A feed and Sluice in this process (policy engine with the
//!    default `scaler.wasm` and `anomaly.wasm`), 5,000 `Subscribe` streams (1 event/s, 16 B) on
//!    20 client connections. The engine is opened without its loops and driven by hand:
//!    `sample_once` (every 50 ms), `scale_once` and `analyze_once` are timed call by call, and
//!    the medians are turned into a share of one core at the default periods. Then the
//!    process's CPU time (utime + stime, `/proc/self/stat`) is measured over windows without
//!    the loops, with `Analytics::spawn` at the default periods, and without them again.
//! 2. **Scaling accuracy.** Three Sluices with the realtime group at 20 streams per connection
//!    (1..=30 connections, global cap 40) follow the same offered-load schedule side by side:
//!    the default scaler with its default thresholds (cooldowns compressed 30x), the same plugin
//!    tuned for cost (`COST_KEYS`), and `[scaling] enabled = false` (on-demand opening only).
//!    Every 100 ms the connections the group holds are compared with those the open streams
//!    need.
//! 3. **Store growth.** Rows written per minute by part 1's engine, and one simulated day
//!    written into a fresh store with the store's own API at the engine's default cadence: its
//!    rows, its size, and 7 days (the default retention).
//!
//! It prints figures and asserts nothing; every loop is bounded in count and time.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_analytics::Analytics;
use sluice_analytics::records::{
    DecisionSample, Insight, InsightKind, ReportPeriod, Rollup, ScalingRecord, Severity,
    unix_ms_now,
};
use sluice_analytics::report::Report;
use sluice_analytics::store::Store;
use sluice_config::{MethodConfig, ResumeMode, TrafficClass};
use sluice_feed::pb::feed_client::FeedClient;
use sluice_tests::measure::{BenchArgs, cpu_share, percentile};
use sluice_tests::plugins::{plugins_config, sluice_with_policies};
use sluice_tests::*;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Part 1: streams, client connections, streams per client connection.
const STREAMS: usize = 5000;
const CLIENT_CONNECTIONS: usize = 20;
/// Part 1: timed calls of each loop.
const SAMPLE_CALLS: usize = 120;
const SCALE_CALLS: usize = 30;
const ANALYZE_CALLS: usize = 30;
/// Part 2: streams per connection of the realtime group.
const PER_CONNECTION: usize = 20;
/// Part 2: client connections the schedule's streams are spread over.
const SCHEDULE_CLIENTS: usize = 8;
/// Part 2: how often the driver adjusts the streams and records the group.
const TICK: Duration = Duration::from_millis(100);
/// Part 3: insights and scaling records in a simulated day.
const INSIGHTS_PER_DAY: usize = 300;
const SCALING_PER_DAY: usize = 200;
/// Longest wait for one stream's response headers.
const OPEN_LIMIT: Duration = Duration::from_secs(10);

// ---- small helpers ----------------------------------------------------------------------

/// Stream failures seen by the readers (a reader ended on purpose is not one).
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: parking_lot::Mutex<Option<String>>,
}

impl Errors {
    fn record(&self, what: String) {
        self.count.fetch_add(1, Relaxed);
        self.first.lock().get_or_insert(what);
    }

    fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn first(&self) -> Option<String> {
        self.first.lock().clone()
    }
}

/// Opens a Subscribe stream as the monitor `bench`, or says why not.
async fn open_stream(
    client: &mut FeedClient<Channel>,
    topic: &str,
) -> Result<tonic::Streaming<pb::Event>, String> {
    let call = client.subscribe(as_monitor(subscribe(topic, 1.0, 16, 0), "bench"));
    match tokio::time::timeout(OPEN_LIMIT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("open: {status}")),
        Err(_) => Err(format!("open: no response headers within {OPEN_LIMIT:?}")),
    }
}

/// Reads `stream` until it ends, `limit` passes, or the task is aborted; counts messages and
/// records an end or error as a failure.
fn drain(
    mut stream: tonic::Streaming<pb::Event>,
    received: Arc<AtomicU64>,
    errors: Arc<Errors>,
    limit: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let read = async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {
                        received.fetch_add(1, Relaxed);
                    }
                    Ok(None) => return Some("stream ended".to_owned()),
                    Err(status) => return Some(status.to_string()),
                }
            }
        };
        if let Ok(Some(error)) = tokio::time::timeout(limit, read).await {
            errors.record(error);
        }
    })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A small deterministic generator (xorshift64*), so both schedule runs close the same way.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in `[-1, 1)`.
    fn signed(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Bytes of the database file and its WAL on disk.
fn disk_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    file_size(db) + file_size(Path::new(&wal))
}

// ---- part 1 ---------------------------------------------------------------------------------

/// One timed loop of part 1.
struct CallTimes {
    name: &'static str,
    period: Duration,
    sorted: Vec<Duration>,
}

impl CallTimes {
    fn new(name: &'static str, period: Duration, mut times: Vec<Duration>) -> Self {
        times.sort_unstable();
        Self {
            name,
            period,
            sorted: times,
        }
    }

    /// The median call (the nearest-rank 50th percentile of the call times) as % of one core at
    /// the loop's period.
    fn core_share(&self) -> f64 {
        percentile(&self.sorted, 0.5).as_secs_f64() / self.period.as_secs_f64() * 100.0
    }

    fn to_json(&self) -> Value {
        json!({
            "calls": self.sorted.len(),
            "period_s": self.period.as_secs_f64(),
            "median_us": us(percentile(&self.sorted, 0.5)),
            "p90_us": us(percentile(&self.sorted, 0.9)),
            "max_us": us(self.sorted.last().copied().unwrap_or_default()),
            "core_percent_at_period": self.core_share(),
        })
    }
}

/// What part 1 leaves for part 3.
struct Part1 {
    json: Value,
    /// Metric names the sampler produced, with their latest values.
    metrics: Vec<(String, f64)>,
    rows_per_minute: f64,
    rows_window_s: f64,
    decision_templates: Vec<DecisionSample>,
    insight_templates: Vec<Insight>,
    summary: Vec<(String, String)>,
}

async fn part1(plugins: &Path, quick: bool) -> Part1 {
    // CPU windows without and with the loops; the one with them is longer so that the store
    // sees a whole minute's writes in the full run.
    let window = Duration::from_secs(if quick { 8 } else { 20 });
    let loops_window = Duration::from_secs(if quick { 20 } else { 60 });
    println!("== 1. CPU cost of the analytics and scaler loops at {STREAMS} streams ==");
    let feed = feed("feed").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(&[&feed]);
    config.pool.max_connections = 100;
    config.classes.realtime.share = 0.6;
    config.classes.event.share = 0.2;
    config.classes.state.share = 0.2;
    for class in [
        &mut config.classes.realtime,
        &mut config.classes.event,
        &mut config.classes.state,
    ] {
        class.max_streams_per_connection = 100;
    }
    config.monitors = vec![monitor("bench", TrafficClass::Realtime)];
    config.store.path = dir.path().join("part1.db");
    config.plugins = plugins_config();
    config.plugins.scaler.file = Some(plugins.join("scaler.wasm"));
    config.plugins.anomaly.file = Some(plugins.join("anomaly.wasm"));
    let config = Arc::new(config);
    let (proxy, policies) = sluice_with_policies((*config).clone()).await;

    // 5,000 streams: 20 client connections open 250 each, in parallel.
    let received = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let reader_limit = Duration::from_secs(600);
    let opening = Instant::now();
    let mut openers = Vec::new();
    for c in 0..CLIENT_CONNECTIONS {
        let (received, errors, addr) = (Arc::clone(&received), Arc::clone(&errors), proxy.addr());
        openers.push(tokio::spawn(async move {
            let mut client = client(addr).await;
            let mut readers = Vec::new();
            for i in 0..STREAMS / CLIENT_CONNECTIONS {
                match open_stream(&mut client, &format!("bench-{c}-{i}")).await {
                    Ok(stream) => readers.push(drain(
                        stream,
                        Arc::clone(&received),
                        Arc::clone(&errors),
                        reader_limit,
                    )),
                    Err(error) => errors.record(error),
                }
            }
            (client, readers)
        }));
    }
    let mut clients = Vec::new();
    let mut readers = Vec::new();
    for opener in openers {
        match tokio::time::timeout(Duration::from_secs(180), opener).await {
            Ok(Ok((client, r))) => {
                clients.push(client);
                readers.extend(r);
            }
            Ok(Err(error)) => errors.record(format!("opener: {error}")),
            Err(_) => errors.record("opener: did not finish within 180 s".to_owned()),
        }
    }
    let opened = readers.len();
    let all_up = eventually(Duration::from_secs(30), || {
        proxy.snapshot().stats.upstream_streams_active as usize >= opened
    })
    .await;
    let open_time = opening.elapsed();
    // Let every stream deliver a few events before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snapshot = proxy.snapshot();
    let realtime =
        proxy.view().group_loads(Duration::from_secs(10))[TrafficClass::Realtime.index()].clone();
    let upstream = snapshot.stats.upstream_streams_active;
    println!(
        "streams: {opened} of {STREAMS} opened in {:.1} s ({}); {upstream} upstream streams \
         open, {} downstream; {} upstream connections (realtime group: {} held, {} streams); \
         {} client connections; events received so far {}",
        open_time.as_secs_f64(),
        if all_up {
            "all placed upstream"
        } else {
            "NOT all placed upstream"
        },
        snapshot.stats.downstream_streams_active,
        snapshot.connections,
        realtime.held,
        realtime.streams,
        clients.len(),
        received.load(Relaxed),
    );

    // The engine without its loops: every call is driven from here, one at a time, from the
    // main thread (the runtime's workers carry only the streams' 5,000 events/s).
    let analytics = Analytics::open(Arc::clone(&config), proxy.view(), Arc::clone(&policies))
        .expect("analytics opens");
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let mut sample_times = Vec::with_capacity(SAMPLE_CALLS);
    for _ in 0..SAMPLE_CALLS {
        ticker.tick().await;
        let start = Instant::now();
        analytics.sample_once().await;
        sample_times.push(start.elapsed());
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut scale_times = Vec::with_capacity(SCALE_CALLS);
    let mut scaling_actions = 0;
    for _ in 0..SCALE_CALLS {
        ticker.tick().await;
        let start = Instant::now();
        scaling_actions += analytics.scale_once().await.len();
        scale_times.push(start.elapsed());
    }
    let mut analyze_times = Vec::with_capacity(ANALYZE_CALLS);
    let mut insights_found = 0;
    for _ in 0..ANALYZE_CALLS {
        ticker.tick().await;
        let start = Instant::now();
        insights_found += analytics.analyze_once().await.len();
        analyze_times.push(start.elapsed());
    }
    let calls = [
        CallTimes::new("sample_once", Duration::from_secs(1), sample_times),
        CallTimes::new("scale_once", config.scaling.period, scale_times),
        CallTimes::new("analyze_once", config.analytics.period, analyze_times),
    ];
    let metrics: Vec<(String, f64)> = analytics
        .history()
        .metrics()
        .into_iter()
        .map(|name| {
            let latest = analytics.history().latest(&name).unwrap_or(0.0);
            (name, latest)
        })
        .collect();
    let plan = analytics.last_plan();
    println!(
        "per call (wall time; the calls run one at a time from the main thread while the \
         workers carry only the streams' events, so wall time ~ CPU time of the call, plus \
         the store's spawn_blocking hand-off):"
    );
    println!(
        "  {:<13} {:>6} {:>11} {:>11} {:>11} {:>8} {:>13}",
        "loop", "calls", "median us", "p90 us", "max us", "period", "% of 1 core"
    );
    let mut loop_share = 0.0;
    for c in &calls {
        loop_share += c.core_share();
        println!(
            "  {:<13} {:>6} {:>11.1} {:>11.1} {:>11.1} {:>7.0}s {:>13.4}",
            c.name,
            c.sorted.len(),
            us(percentile(&c.sorted, 0.5)),
            us(percentile(&c.sorted, 0.9)),
            us(c.sorted.last().copied().unwrap_or_default()),
            c.period.as_secs_f64(),
            c.core_share(),
        );
    }
    println!(
        "  sum at the default periods (sampler 1 s, scaler {:?}, analytics {:?}): {loop_share:.4}% \
         of one core (housekeeping, every minute, not included)",
        config.scaling.period, config.analytics.period
    );
    println!(
        "  {} metrics sampled; scaler actions in the timed runs: {scaling_actions}; insights: \
         {insights_found}; last plan: {}",
        metrics.len(),
        plan.as_ref().map_or("none".to_owned(), |p| format!(
            "{} ({} actions, confidence {:.2})",
            p.policy, p.actions, p.confidence
        )),
    );

    // Process CPU over windows without the loops, with them, and without them again.
    let off_before = cpu_share(window).await;
    let rows_before = analytics.store().rows_written();
    let running = Instant::now();
    let handle = analytics.spawn();
    let on = cpu_share(loops_window).await;
    let rows_on = analytics.store().rows_written() - rows_before;
    let ran = running.elapsed();
    if tokio::time::timeout(Duration::from_secs(20), handle.shutdown())
        .await
        .is_err()
    {
        println!("  (the loops did not stop within 20 s)");
    }
    let off_after = cpu_share(window).await;
    let off = (off_before + off_after) / 2.0;
    let rows_per_minute = rows_on as f64 / ran.as_secs_f64() * 60.0;
    println!(
        "process CPU (utime+stime of the whole process: feed, Sluice, clients and loops): \
         without loops {off_before:.2}% / {off_after:.2}% ({} s before and after; mean \
         {off:.2}%), with Analytics::spawn at the default periods {on:.2}% ({} s); difference \
         {:+.2}% of one core (noisy: compare with the per-call sum {loop_share:.4}%)",
        window.as_secs(),
        loops_window.as_secs(),
        on - off,
    );
    let final_snapshot = proxy.snapshot();
    println!(
        "still open at the end: {} upstream streams, {} connections; events received {}; \
         stream errors {}{}",
        final_snapshot.stats.upstream_streams_active,
        final_snapshot.connections,
        received.load(Relaxed),
        errors.count(),
        errors
            .first()
            .map_or(String::new(), |e| format!(" (first: {e})")),
    );

    // Real strings for part 3.
    let decision_templates: Vec<DecisionSample> = policies
        .router()
        .recent(32)
        .into_iter()
        .map(DecisionSample::from)
        .collect();
    let insight_templates = analytics.insights(64);

    let json = json!({
        "streams_requested": STREAMS,
        "streams_opened": opened,
        "all_placed_upstream": all_up,
        "open_seconds": open_time.as_secs_f64(),
        "upstream_streams_active": upstream,
        "downstream_streams_active": snapshot.stats.downstream_streams_active,
        "upstream_connections": snapshot.connections,
        "realtime_held": realtime.held,
        "client_connections": clients.len(),
        "metrics": metrics.len(),
        "calls": {
            "sample_once": calls[0].to_json(),
            "scale_once": calls[1].to_json(),
            "analyze_once": calls[2].to_json(),
        },
        "loops_core_percent_at_default_periods": loop_share,
        "process_cpu": {
            "window_without_loops_s": window.as_secs_f64(),
            "window_with_loops_s": loops_window.as_secs_f64(),
            "without_loops_before_percent": off_before,
            "with_loops_percent": on,
            "without_loops_after_percent": off_after,
            "difference_percent": on - off,
        },
        "store_rows_written_with_loops": rows_on,
        "store_rows_window_s": ran.as_secs_f64(),
        "scaler_actions": scaling_actions,
        "insights": insights_found,
        "stream_errors": errors.count(),
        "first_error": errors.first(),
    });
    let summary = vec![
        (
            "1. streams / upstream connections".to_owned(),
            format!("{upstream} / {}", snapshot.connections),
        ),
        (
            "1. sample_once median (1 s)".to_owned(),
            format!(
                "{:.1} us = {:.4}% core",
                us(percentile(&calls[0].sorted, 0.5)),
                calls[0].core_share()
            ),
        ),
        (
            format!("1. scale_once median ({:?})", config.scaling.period),
            format!(
                "{:.1} us = {:.4}% core",
                us(percentile(&calls[1].sorted, 0.5)),
                calls[1].core_share()
            ),
        ),
        (
            format!("1. analyze_once median ({:?})", config.analytics.period),
            format!(
                "{:.1} us = {:.4}% core",
                us(percentile(&calls[2].sorted, 0.5)),
                calls[2].core_share()
            ),
        ),
        (
            "1. loops at default periods".to_owned(),
            format!("{loop_share:.4}% of one core"),
        ),
        (
            "1. process CPU off / on / diff".to_owned(),
            format!("{off:.2}% / {on:.2}% / {:+.2}%", on - off),
        ),
    ];

    for reader in &readers {
        reader.abort();
    }
    drop(clients);
    if tokio::time::timeout(Duration::from_secs(20), proxy.shutdown())
        .await
        .is_err()
    {
        println!("  (Sluice did not shut down within 20 s)");
    }
    drop(feed);
    Part1 {
        json,
        metrics,
        rows_per_minute,
        rows_window_s: ran.as_secs_f64(),
        decision_templates,
        insight_templates,
        summary,
    }
}

// ---- part 2 ---------------------------------------------------------------------------------

/// The offered load: (seconds, streams at the end) per segment, linear within it.
fn schedule(quick: bool) -> Vec<(f64, f64)> {
    let scale = if quick { 0.4 } else { 1.0 };
    [
        (30.0, 400.0),
        (30.0, 400.0),
        (15.0, 100.0),
        (45.0, 100.0),
        (10.0, 250.0),
        (20.0, 250.0),
    ]
    .into_iter()
    .map(|(seconds, streams)| (seconds * scale, streams))
    .collect()
}

const PHASES: [&str; 6] = [
    "ramp 0-400",
    "hold 400",
    "down to 100",
    "hold 100",
    "up to 250",
    "hold 250",
];

/// Streams wanted `t` seconds into the schedule, and the segment.
fn offered(segments: &[(f64, f64)], t: f64) -> (usize, usize) {
    let (mut start, mut from) = (0.0, 0.0);
    for (index, &(seconds, to)) in segments.iter().enumerate() {
        if t < start + seconds {
            let streams: f64 = from + (to - from) * (t - start) / seconds;
            return (streams.round() as usize, index);
        }
        start += seconds;
        from = to;
    }
    (from as usize, segments.len() - 1)
}

/// One 100 ms observation.
#[derive(Clone, Copy)]
struct Observation {
    t: f64,
    dt: f64,
    phase: usize,
    streams: usize,
    needed: usize,
    held: usize,
    live: usize,
}

/// Held over needed, time-weighted.
fn ratio(observations: &[Observation]) -> f64 {
    let held: f64 = observations.iter().map(|o| o.held as f64 * o.dt).sum();
    let needed: f64 = observations.iter().map(|o| o.needed as f64 * o.dt).sum();
    if needed > 0.0 {
        held / needed
    } else {
        f64::NAN
    }
}

struct RunResult {
    label: &'static str,
    observations: Vec<Observation>,
    ups: usize,
    downs: usize,
    refused: usize,
    records: Vec<ScalingRecord>,
    errors: u64,
    first_error: Option<String>,
    rows_written: u64,
    ran: Duration,
    migrations: u64,
}

impl RunResult {
    fn time_share(&self, pick: impl Fn(&Observation) -> bool) -> f64 {
        let total: f64 = self.observations.iter().map(|o| o.dt).sum();
        let picked: f64 = self
            .observations
            .iter()
            .filter(|o| pick(o))
            .map(|o| o.dt)
            .sum();
        // `+ 0.0`: an empty float sum is -0.0.
        if total > 0.0 {
            picked / total + 0.0
        } else {
            0.0
        }
    }

    fn under(&self) -> f64 {
        self.time_share(|o| o.held < o.needed)
    }

    fn over(&self) -> f64 {
        self.time_share(|o| o.held as f64 > o.needed as f64 * 1.1)
    }

    fn phase_ratio(&self, phase: usize) -> f64 {
        let picked: Vec<Observation> = self
            .observations
            .iter()
            .filter(|o| o.phase == phase)
            .copied()
            .collect();
        ratio(&picked)
    }

    fn to_json(&self) -> Value {
        // The timeline once a second.
        let mut timeline = Vec::new();
        let mut next = 0.0;
        for o in &self.observations {
            if o.t >= next {
                timeline.push(json!([
                    (o.t * 10.0).round() / 10.0,
                    o.streams,
                    o.needed,
                    o.held,
                    o.live
                ]));
                next += 1.0;
            }
        }
        json!({
            "held_over_needed": ratio(&self.observations),
            "under_provisioned_share": self.under(),
            "over_provisioned_10pct_share": self.over(),
            "phases": PHASES
                .iter()
                .enumerate()
                .map(|(i, name)| (name.to_string(), json!(self.phase_ratio(i))))
                .collect::<serde_json::Map<String, Value>>(),
            "scale_ups": self.ups,
            "scale_downs": self.downs,
            "scaling_records_not_applied": self.refused,
            "stream_errors": self.errors,
            "first_error": self.first_error,
            "migrations": self.migrations,
            "store_rows_written": self.rows_written,
            "store_rows_per_minute": self.rows_written as f64 / self.ran.as_secs_f64() * 60.0,
            "timeline_columns": ["t_s", "streams", "needed", "held", "taking_streams"],
            "timeline": timeline,
            "scaling_records": self.records.iter().rev().map(|r| json!({
                "ts_ms": r.ts_ms,
                "requested": r.requested,
                "applied": r.applied,
                "from": r.from,
                "to": r.to,
                "reason": r.reason,
            })).collect::<Vec<_>>(),
        })
    }
}

/// How a part 2 run sizes its group.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The default scaler with its default thresholds.
    Spec,
    /// The default scaler configured to hold what the streams need: grow only past 95%
    /// utilization by one, shrink below 90% straight to what the streams need.
    Cost,
    /// No scaler: on-demand opening only.
    Off,
}

/// The scaler config keys of the cost-tuned run (its host `[scaling] down_cooldown` is
/// `COST_DOWN_COOLDOWN` too: 1 minute, compressed 30x).
const COST_KEYS: [(&str, &str); 6] = [
    ("scale_up_utilization", "0.95"),
    ("scale_up_step", "1"),
    ("scale_down_utilization", "0.9"),
    ("scale_down_step", "1000"),
    ("scale_down_target_utilization", "1"),
    ("scale_down_cooldown_ms", "2000"),
];
const COST_DOWN_COOLDOWN: Duration = Duration::from_secs(2);

async fn run_schedule(plugins: &Path, quick: bool, mode: Mode, label: &'static str) -> RunResult {
    let feed = feed(label).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(&[&feed]);
    config.pool.max_connections = 40;
    let realtime = &mut config.classes.realtime;
    realtime.max_streams_per_connection = PER_CONNECTION;
    realtime.min_connections = 1;
    realtime.max_connections = Some(30);
    config.monitors = vec![monitor("bench", TrafficClass::Realtime)];
    // Resumable, so that the streams of a connection the scaler drains move to the others
    // and the drained connection closes.
    config.methods = vec![MethodConfig {
        resume: ResumeMode::ReplayLast,
        ..MethodConfig::new(SUBSCRIBE)
    }];
    config.store.path = dir.path().join(format!("{label}.db"));
    config.scaling.enabled = mode != Mode::Off;
    config.scaling.period = Duration::from_secs(1);
    config.scaling.up_cooldown = Duration::from_secs(2);
    config.scaling.down_cooldown = if mode == Mode::Cost {
        COST_DOWN_COOLDOWN
    } else {
        Duration::from_secs(10)
    };
    config.plugins = plugins_config();
    config.plugins.resumer.file = Some(plugins.join("feed-resumer.wasm"));
    config.plugins.scaler.file = Some(plugins.join("scaler.wasm"));
    for (key, value) in [
        ("scale_up_cooldown_ms", "2000"),
        ("predict", "off"),
        ("scale_down_cooldown_ms", "10000"),
    ]
    .into_iter()
    .chain(if mode == Mode::Cost {
        COST_KEYS.to_vec()
    } else {
        Vec::new()
    }) {
        config
            .plugins
            .scaler
            .config
            .insert(key.into(), value.into());
    }
    let config = Arc::new(config);
    let (proxy, policies) = sluice_with_policies((*config).clone()).await;
    let analytics =
        Analytics::open(Arc::clone(&config), proxy.view(), policies).expect("analytics opens");
    let handle = analytics.spawn();
    let started_ms = unix_ms_now();
    let rows_before = analytics.store().rows_written();

    let mut clients = Vec::new();
    for _ in 0..SCHEDULE_CLIENTS {
        clients.push(client(proxy.addr()).await);
    }
    let segments = schedule(quick);
    let total: f64 = segments.iter().map(|s| s.0).sum();
    let received = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let reader_limit = Duration::from_secs_f64(total + 60.0);
    let mut open: Vec<JoinHandle<()>> = Vec::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut observations = Vec::new();
    let mut opened_total = 0usize;
    let view = proxy.view();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0.0;
    // Bounded: one iteration per tick until the schedule's end (and a hard cap on ticks).
    let max_ticks = (total / TICK.as_secs_f64()) as usize + 100;
    for _ in 0..max_ticks {
        ticker.tick().await;
        let t = start.elapsed().as_secs_f64();
        if t >= total {
            break;
        }
        let (want, phase) = offered(&segments, t);
        // At most 100 opens per tick; each is bounded by OPEN_LIMIT.
        let mut opens = 0;
        while open.len() < want && opens < 100 {
            let client = &mut clients[opened_total % SCHEDULE_CLIENTS];
            match open_stream(client, &format!("{label}-{opened_total}")).await {
                Ok(stream) => open.push(drain(
                    stream,
                    Arc::clone(&received),
                    Arc::clone(&errors),
                    reader_limit,
                )),
                Err(error) => errors.record(error),
            }
            opened_total += 1;
            opens += 1;
        }
        while open.len() > want {
            let index = rng.below(open.len());
            open.swap_remove(index).abort();
        }
        let group =
            view.group_loads(Duration::from_secs(1))[TrafficClass::Realtime.index()].clone();
        let t = start.elapsed().as_secs_f64();
        observations.push(Observation {
            t,
            dt: t - last,
            phase,
            streams: open.len(),
            needed: open.len().div_ceil(PER_CONNECTION).max(1),
            held: group.held,
            live: group.connections,
        });
        last = t;
    }
    let ran = start.elapsed();
    let records: Vec<ScalingRecord> = analytics
        .store()
        .scaling(started_ms, 10_000)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.class == "realtime")
        .collect();
    let rows_written = analytics.store().rows_written() - rows_before;
    let migrations = proxy.snapshot().stats.migrations_total;
    for reader in &open {
        reader.abort();
    }
    drop(clients);
    if tokio::time::timeout(Duration::from_secs(20), handle.shutdown())
        .await
        .is_err()
    {
        println!("  ({label}: the loops did not stop within 20 s)");
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), proxy.shutdown()).await;
    drop(feed);
    RunResult {
        label,
        observations,
        ups: records.iter().filter(|r| r.applied > 0).count(),
        downs: records.iter().filter(|r| r.applied < 0).count(),
        refused: records.iter().filter(|r| r.applied == 0).count(),
        records,
        errors: errors.count(),
        first_error: errors.first(),
        rows_written,
        ran,
        migrations,
    }
}

async fn part2(
    plugins: &Path,
    quick: bool,
) -> (
    Value,
    Vec<(String, String)>,
    Vec<ScalingRecord>,
    Vec<StoreRate>,
) {
    let segments = schedule(quick);
    let total: f64 = segments.iter().map(|s| s.0).sum();
    println!();
    println!("== 2. Scaling accuracy ==");
    println!(
        "realtime group: {PER_CONNECTION} streams/connection, 1..=30 connections, global cap \
         40; Subscribe streams (1 event/s, resumable with the feed resumer so drained \
         connections can close); default scaler.wasm, predict off; [scaling] period 1 s, \
         up_cooldown 2 s, down_cooldown 10 s (the default 60 s / 5 min compressed 30x; the \
         period 1 s instead of 10 s); schedule {} ({total:.0} s): {}",
        if quick { "x0.4 (--quick)" } else { "full" },
        segments
            .iter()
            .zip(PHASES)
            .map(|((s, _), name)| format!("{name} {s:.0}s"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    println!(
        "the three runs follow the same schedule at the same time (separate feeds, Sluices and \
         stores in this process), so they see the same machine; 'tuned for cost' is the default \
         scaler with {} and [scaling] down_cooldown 2 s",
        COST_KEYS
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (scaled, cost, baseline) = tokio::join!(
        run_schedule(plugins, quick, Mode::Spec, "scaler"),
        run_schedule(plugins, quick, Mode::Cost, "scaler-cost"),
        run_schedule(plugins, quick, Mode::Off, "on-demand"),
    );
    let runs = [&scaled, &cost, &baseline];
    let row = |name: &str, f: &dyn Fn(&RunResult) -> String| {
        println!(
            "  {:<34} {:>16} {:>16} {:>16}",
            name,
            f(runs[0]),
            f(runs[1]),
            f(runs[2])
        );
    };
    println!(
        "  {:<34} {:>16} {:>16} {:>16}",
        "", "default scaler", "tuned for cost", "baseline (off)"
    );
    row("held / needed (time-weighted)", &|r| {
        format!("{:.3}", ratio(&r.observations))
    });
    for (i, name) in PHASES.iter().enumerate() {
        row(&format!("  during {name}"), &|r| {
            format!("{:.3}", r.phase_ratio(i))
        });
    }
    row("time under-provisioned", &|r| {
        format!("{:.1}%", r.under() * 100.0)
    });
    row("time over-provisioned > 10%", &|r| {
        format!("{:.1}%", r.over() * 100.0)
    });
    row("scale-ups / scale-downs", &|r| {
        format!("{} / {}", r.ups, r.downs)
    });
    row("records not applied (held)", &|r| r.refused.to_string());
    row("streams migrated", &|r| r.migrations.to_string());
    row("stream errors", &|r| r.errors.to_string());
    row("observations", &|r| r.observations.len().to_string());
    let (a, b) = (ratio(&scaled.observations), ratio(&baseline.observations));
    let c = ratio(&cost.observations);
    println!(
        "  over baseline held-over-needed: default {:.3}, tuned for cost {:.3}; target: held \
         within 10% of needed (ratio <= 1.10, never under)",
        a / b,
        c / b
    );
    for r in runs {
        if let Some(error) = &r.first_error {
            println!("  {} first stream error: {error}", r.label);
        }
    }
    let json = json!({
        "schedule_s": total,
        "schedule": segments.iter().zip(PHASES).map(|((s, to), name)| json!({
            "phase": name, "seconds": s, "streams_at_end": to,
        })).collect::<Vec<_>>(),
        "tick_ms": TICK.as_millis() as u64,
        "streams_per_connection": PER_CONNECTION,
        "target_ratio_at_most": 1.10,
        "scaler": scaled.to_json(),
        "scaler_tuned_for_cost": cost.to_json(),
        "cost_keys": COST_KEYS.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect::<Vec<_>>(),
        "baseline_on_demand": baseline.to_json(),
        "scaler_over_baseline": a / b,
    });
    let summary = vec![
        (
            "2. held/needed default | cost | off".to_owned(),
            format!("{a:.3} | {c:.3} | {b:.3} (target <= 1.10)"),
        ),
        (
            "2. under / over>10% (cost)".to_owned(),
            format!("{:.1}% / {:.1}%", cost.under() * 100.0, cost.over() * 100.0),
        ),
        (
            "2. under / over>10% (scaler)".to_owned(),
            format!(
                "{:.1}% / {:.1}%",
                scaled.under() * 100.0,
                scaled.over() * 100.0
            ),
        ),
        (
            "2. under / over>10% (baseline)".to_owned(),
            format!(
                "{:.1}% / {:.1}%",
                baseline.under() * 100.0,
                baseline.over() * 100.0
            ),
        ),
        (
            "2. scale-ups / downs; errors".to_owned(),
            format!(
                "{} / {}; {} | {} | {}",
                scaled.ups, scaled.downs, scaled.errors, cost.errors, baseline.errors
            ),
        ),
    ];
    let rows = [&scaled, &cost, &baseline]
        .iter()
        .map(|r| {
            json!({
                "run": r.label,
                "rows": r.rows_written,
                "seconds": r.ran.as_secs_f64(),
            })
        })
        .collect::<Vec<_>>();
    let mut json = json;
    json["store_rows"] = json!(rows);
    let rates = [&scaled, &cost, &baseline]
        .iter()
        .map(|r| StoreRate {
            label: r.label,
            rows: r.rows_written,
            seconds: r.ran.as_secs_f64(),
        })
        .collect();
    (json, summary, scaled.records, rates)
}

/// Rows one engine wrote over some seconds.
struct StoreRate {
    label: &'static str,
    rows: u64,
    seconds: f64,
}

impl StoreRate {
    fn per_minute(&self) -> f64 {
        self.rows as f64 / self.seconds * 60.0
    }
}

// ---- part 3 ---------------------------------------------------------------------------------

/// Realistic insights: the real ones from part 1, else ones shaped like the engine's.
fn insight_templates(real: &[Insight]) -> Vec<Insight> {
    let mut templates: Vec<Insight> = real.to_vec();
    let made = |kind,
                severity,
                title: &str,
                description: &str,
                metric: &str,
                value,
                score,
                source: &str,
                data| Insight {
        id: 0,
        ts_ms: 0,
        last_seen_ms: 0,
        occurrences: 1,
        kind,
        severity,
        title: title.to_owned(),
        description: description.to_owned(),
        metric: Some(metric.to_owned()),
        value,
        score,
        source: source.to_owned(),
        data,
    };
    templates.extend([
        made(
            InsightKind::Anomaly,
            Severity::Warning,
            "upstream.latency_p99_ms unusually high",
            "upstream.latency_p99_ms is 184.20, 3.4 standard deviations above its mean of 21.70 \
             over the last 120 samples",
            "upstream.latency_p99_ms",
            184.2,
            3.4,
            "anomaly@v1",
            json!({ "mean": 21.7, "stddev": 47.8, "window": 120 }),
        ),
        made(
            InsightKind::Anomaly,
            Severity::Critical,
            "Connection pool near exhaustion",
            "93% of the global cap of 40 connections is in use (threshold 90%)",
            "pool.cap_usage",
            0.93,
            1.03,
            "rules",
            json!({ "threshold": 0.9 }),
        ),
        made(
            InsightKind::Recommendation,
            Severity::Info,
            "Many idle connections",
            "42% of connections carried no stream over the last minute; lower the groups' \
             min_connections",
            "pool.idle_ratio",
            0.42,
            0.0,
            "rules",
            Value::Null,
        ),
        made(
            InsightKind::Trend,
            Severity::Warning,
            "Load rising",
            "open calls changed by +1840 over the last 30 minutes (+61.3 a minute)",
            "streams.downstream",
            4920.0,
            0.62,
            "rules",
            json!({ "per_minute": 61.3 }),
        ),
        made(
            InsightKind::Prediction,
            Severity::Info,
            "Connections needed ahead",
            "next hour: up to 52.4 connections (95% band 47.1-57.9); next 6 hours: up to 61.0 \
             (49.8-72.3); holt-winters over 672 steps of 15 min",
            "pool.connections_needed",
            52.4,
            61.0,
            "forecast",
            json!({
                "next_hour": { "mean": 52.4, "lower": 47.1, "upper": 57.9 },
                "next_6h": { "mean": 61.0, "lower": 49.8, "upper": 72.3 },
            }),
        ),
    ]);
    templates
}

/// Realistic scaling records: the real ones from part 2, else one shaped like the engine's.
fn scaling_templates(real: &[ScalingRecord]) -> Vec<ScalingRecord> {
    let mut templates = real.to_vec();
    if templates.is_empty() {
        templates.push(ScalingRecord {
            id: 0,
            ts_ms: 0,
            class: "realtime".to_owned(),
            requested: 2,
            applied: 2,
            from: 12,
            to: 14,
            reason: "realtime: +2 - 2 of 4 up signals (need 2): utilization 0.81 > 0.75, queue 0, \
                     trend +0.07/min > 0.05, p99 38 ms <= 250 ms"
                .to_owned(),
            policy: "scaler@v1".to_owned(),
            metrics: json!({
                "connections": 12, "min_connections": 1, "max_connections": 30,
                "active_streams": 972, "stream_capacity": 1200, "utilization": 0.81,
                "queue_depth": 0, "p99_latency_ms": 38.0, "error_rate": 0.0, "trend": 0.07,
                "since_last_scale_ms": 74000,
            }),
        });
    }
    templates
}

async fn part3(
    part1: &Part1,
    scaling_records: &[ScalingRecord],
    rates: &[StoreRate],
) -> (Value, Vec<(String, String)>) {
    println!();
    println!("== 3. Store write rate and size per day ==");
    let metrics = part1.metrics.len();
    // The engine's cadence: a partial rollup of every metric every PARTIAL_EVERY (10) samples
    // and the finished minute at its end: 7 writes of each metric a minute.
    let writes_per_minute = 60 / sluice_analytics::engine::PARTIAL_EVERY as usize + 1;
    println!(
        "part 1's engine (Analytics::spawn at the default periods, 5,000 streams, none placed \
         meanwhile): {:.0} rows written a minute = {:.0} a day, over {:.0} s (the cadence: \
         {writes_per_minute} rollup writes of each of {metrics} metrics a minute = {} rows a \
         minute, {} a day, plus 2 decision samples per analytics period while streams are \
         placed)",
        part1.rows_per_minute,
        part1.rows_per_minute * 1440.0,
        part1.rows_window_s,
        writes_per_minute * metrics,
        writes_per_minute * metrics * 1440,
    );
    for rate in rates {
        println!(
            "part 2's {} engine (streams placed and closed all along): {:.0} rows a minute = \
             {:.0} a day, over {:.0} s",
            rate.label,
            rate.per_minute(),
            rate.per_minute() * 1440.0,
            rate.seconds,
        );
    }

    // One simulated day at the default cadence, written with the store's API off the runtime.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("day.db");
    let metric_list = part1.metrics.clone();
    let decisions = if part1.decision_templates.is_empty() {
        vec![DecisionSample {
            ts_ms: 0,
            monitor: "bench".to_owned(),
            method: SUBSCRIBE.to_owned(),
            stream: None,
            policy: "builtin".to_owned(),
            fallback: false,
            connection_id: 7,
            candidates: 50,
            confidence: 0.5,
            reason: "p2c: conn 7 (cost 41.0) over conn 23 (cost 57.5)".to_owned(),
        }]
    } else {
        part1.decision_templates.clone()
    };
    let insights = insight_templates(&part1.insight_templates);
    let scaling = scaling_templates(scaling_records);
    let simulated = tokio::task::spawn_blocking(move || {
        simulate_day(&path, &metric_list, &decisions, &insights, &scaling)
    });
    let day = match tokio::time::timeout(Duration::from_secs(240), simulated).await {
        Ok(Ok(Ok(day))) => day,
        Ok(Ok(Err(error))) => panic!("simulated day failed: {error}"),
        Ok(Err(error)) => panic!("simulated day failed: {error}"),
        Err(_) => panic!("the simulated day took more than 240 s"),
    };
    println!(
        "simulated day ({} minutes x {metrics} metrics, {} writes each a minute; {} decision \
         samples (2 per 5 s analytics period); {} insights; {} scaling records; {} hourly + 1 \
         daily reports), written in {:.1} s:",
        day.minutes,
        writes_per_minute,
        day.decisions,
        day.insights,
        day.scaling,
        day.hourly_reports,
        day.seconds,
    );
    println!(
        "  rows kept {} (rollups {}, decisions {}, insights {}, scaling {}, reports {}); rows \
         written {} (rollup partials replaced in place)",
        day.rows_kept(),
        day.rollups,
        day.decisions,
        day.insights,
        day.scaling,
        day.hourly_reports + 1,
        day.rows_written,
    );
    println!(
        "  size: {} B = {:.2} MiB a day (page_count x page_size; on disk with the WAL {:.2} \
         MiB; reports {:.2} MiB of JSON); x 7 days (default retention): {} rows, {:.1} MiB",
        day.size_bytes,
        mib(day.size_bytes),
        mib(day.disk_bytes),
        mib(day.report_bytes),
        day.rows_kept() * 7,
        mib(day.size_bytes) * 7.0,
    );
    let json = json!({
        "part1_rows_per_minute": part1.rows_per_minute,
        "part1_rows_per_day": part1.rows_per_minute * 1440.0,
        "part1_rows_window_s": part1.rows_window_s,
        "part2_rows_per_minute": rates
            .iter()
            .map(|r| (r.label.to_owned(), json!(r.per_minute())))
            .collect::<serde_json::Map<String, Value>>(),
        "metrics": metrics,
        "metric_names": part1.metrics.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        "rollup_writes_per_metric_per_minute": writes_per_minute,
        "simulated_day": {
            "minutes": day.minutes,
            "rollups": day.rollups,
            "decisions": day.decisions,
            "insights": day.insights,
            "scaling": day.scaling,
            "reports": day.hourly_reports + 1,
            "rows_kept": day.rows_kept(),
            "rows_written": day.rows_written,
            "size_bytes": day.size_bytes,
            "size_mib": mib(day.size_bytes),
            "disk_bytes_with_wal": day.disk_bytes,
            "report_json_bytes": day.report_bytes,
            "write_seconds": day.seconds,
            "rows_kept_7_days": day.rows_kept() * 7,
            "size_mib_7_days": mib(day.size_bytes) * 7.0,
        },
    });
    let summary = vec![
        (
            "3. rows/day (part 1 rate)".to_owned(),
            format!("{:.0}", part1.rows_per_minute * 1440.0),
        ),
        (
            "3. simulated day: kept / written".to_owned(),
            format!("{} / {}", day.rows_kept(), day.rows_written),
        ),
        (
            "3. size per day / 7 days".to_owned(),
            format!(
                "{:.2} MiB / {:.1} MiB",
                mib(day.size_bytes),
                mib(day.size_bytes) * 7.0
            ),
        ),
    ];
    (json, summary)
}

struct Day {
    minutes: usize,
    rollups: u64,
    decisions: u64,
    insights: u64,
    scaling: u64,
    hourly_reports: u64,
    rows_written: u64,
    size_bytes: u64,
    disk_bytes: u64,
    report_bytes: u64,
    seconds: f64,
}

impl Day {
    fn rows_kept(&self) -> u64 {
        self.rollups + self.decisions + self.insights + self.scaling + self.hourly_reports + 1
    }
}

fn simulate_day(
    path: &Path,
    metrics: &[(String, f64)],
    decisions: &[DecisionSample],
    insights: &[Insight],
    scaling: &[ScalingRecord],
) -> Result<Day, sluice_analytics::store::StoreError> {
    const MINUTES: usize = 1440;
    const MINUTE_MS: i64 = 60_000;
    let started = Instant::now();
    let store = Store::open(path, Duration::from_secs(7 * 24 * 3600))?;
    let now = unix_ms_now();
    let day_start = now - now.rem_euclid(MINUTE_MS) - MINUTES as i64 * MINUTE_MS;
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let partials = 60 / sluice_analytics::engine::PARTIAL_EVERY as usize;
    let mut counts = Day {
        minutes: MINUTES,
        rollups: 0,
        decisions: 0,
        insights: 0,
        scaling: 0,
        hourly_reports: 0,
        rows_written: 0,
        size_bytes: 0,
        disk_bytes: 0,
        report_bytes: 0,
        seconds: 0.0,
    };
    // Insights and scaling records are spread over the day.
    let insight_every = MINUTES as f64 / INSIGHTS_PER_DAY as f64;
    let scaling_every = MINUTES as f64 / SCALING_PER_DAY as f64;
    let (mut next_insight, mut next_scaling) = (0.0, 0.0);
    for minute in 0..MINUTES {
        let ts = day_start + minute as i64 * MINUTE_MS;
        // A daily wave with noise around part 1's levels.
        let wave = 1.0 + 0.3 * (minute as f64 / MINUTES as f64 * std::f64::consts::TAU).sin();
        let values: Vec<(f64, f64, f64)> = metrics
            .iter()
            .map(|(_, level)| {
                let avg = level * wave * (1.0 + 0.05 * rng.signed());
                let spread = avg.abs() * 0.1 * (1.0 + rng.signed()).abs();
                (avg, avg - spread, avg + spread)
            })
            .collect();
        // Partial rollups every 10 samples, then the finished minute.
        for k in 1..=partials + 1 {
            let samples = (k * 10).min(60) as u32;
            let rollups: Vec<Rollup> = metrics
                .iter()
                .zip(&values)
                .map(|((name, _), &(avg, min, max))| Rollup {
                    ts_ms: ts,
                    metric: name.clone(),
                    avg,
                    min,
                    max,
                    count: samples,
                })
                .collect();
            store.write_rollups(&rollups)?;
        }
        counts.rollups += metrics.len() as u64;
        // Decision samples: 2 per 5 s analytics period.
        for period in 0..12 {
            let samples: Vec<DecisionSample> = (0..2)
                .map(|i| {
                    let template = &decisions[rng.below(decisions.len())];
                    DecisionSample {
                        ts_ms: ts + period * 5000 + i * 2000 + rng.below(1000) as i64,
                        connection_id: template.connection_id + rng.below(8) as u64,
                        ..template.clone()
                    }
                })
                .collect();
            store.insert_decisions(&samples)?;
            counts.decisions += samples.len() as u64;
        }
        if minute as f64 >= next_insight {
            next_insight += insight_every;
            let template = &insights[rng.below(insights.len())];
            store.insert_insight(&Insight {
                ts_ms: ts + 5000,
                last_seen_ms: ts + 5000,
                ..template.clone()
            })?;
            counts.insights += 1;
        }
        if minute as f64 >= next_scaling {
            next_scaling += scaling_every;
            let template = &scaling[rng.below(scaling.len())];
            store.insert_scaling(&ScalingRecord {
                ts_ms: ts + 10_000,
                ..template.clone()
            })?;
            counts.scaling += 1;
        }
    }
    // The reports housekeeping would store: one per hour and one for the day.
    let mut report_bytes = 0usize;
    let day_end = day_start + MINUTES as i64 * MINUTE_MS;
    let mut periods: Vec<(ReportPeriod, i64)> = (1..=24)
        .map(|h| (ReportPeriod::Hourly, day_start + h * 3_600_000))
        .collect();
    periods.push((ReportPeriod::Daily, day_end));
    for (period, end) in periods {
        let report = Report::build(&store, period, end)?;
        let body = serde_json::to_value(&report).unwrap_or_default();
        report_bytes += body.to_string().len();
        store.insert_report(period, end - period.length_ms(), end, end, &body)?;
        if period == ReportPeriod::Hourly {
            counts.hourly_reports += 1;
        }
    }
    counts.rows_written = store.rows_written();
    counts.size_bytes = store.size_bytes();
    counts.disk_bytes = disk_bytes(path);
    counts.report_bytes = report_bytes as u64;
    counts.seconds = started.elapsed().as_secs_f64();
    Ok(counts)
}

// ---- main -----------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    let args = BenchArgs::parse();
    for file in ["scaler.wasm", "anomaly.wasm", "feed-resumer.wasm"] {
        let path = args.plugins.join(file);
        assert!(
            path.is_file(),
            "{} missing (run `cargo xtask plugins`)",
            path.display()
        );
    }
    let started = Instant::now();
    println!(
        "scaling bench{}: loopback, one process ({} cores)",
        if args.quick { " (--quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let part1 = part1(&args.plugins, args.quick).await;
    let (part2_json, part2_summary, records, rates) = part2(&args.plugins, args.quick).await;
    let (part3_json, part3_summary) = part3(&part1, &records, &rates).await;

    println!();
    println!("== summary ({:.0} s) ==", started.elapsed().as_secs_f64());
    let summary: Vec<&(String, String)> = part1
        .summary
        .iter()
        .chain(&part2_summary)
        .chain(&part3_summary)
        .collect();
    let width = summary.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in summary {
        println!("  {key:<width$}  {value}");
    }
    if let Some(path) = args.json {
        let all = json!({
            "quick": args.quick,
            "seconds": started.elapsed().as_secs_f64(),
            "cost": part1.json,
            "accuracy": part2_json,
            "store": part3_json,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&all).expect("json"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("raw figures: {}", path.display());
    }
}
