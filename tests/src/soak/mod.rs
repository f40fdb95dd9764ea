//! The spec's load test made real (`cargo xtask soak`, and a 2-minute version in
//! `cargo xtask test`): 20 monitors through a `sluice run` process over 3 endpoint processes,
//! each enforcing a provider's caps and counting every violation, under a schedule of faults.
//!
//! Set-up: `sluice-feed` processes `e0`, `e1` (behind the TCP fault proxy) and `e2`, all of
//! priority 0, each capped at [`PROVIDER_CONNECTIONS`] connections and [`PROVIDER_RATE`] new
//! streams a second; Sluice told slightly less ([`SLUICE_CONNECTIONS`], [`SLUICE_RATE`]), as an
//! operator keeps headroom for delivery jitter; the shipped router, scaler and anomaly plugins
//! and the feed's `from_seq` resumer; active health checks; the analytics loops running.
//! The monitors ([`monitors::the_twenty`]) stream for the whole run while [`faults::schedule`]
//! breaks things, a probe opens a stream every second, and Sluice's RSS is sampled. Sluice
//! runs as its own process, configured by a TOML file as a user's would be, so that its memory
//! is its own and what the soak reads of it (insights, counters, breakers) comes through the
//! admin API.
//!
//! This module runs the soak and hands back everything it recorded ([`SoakRun`]); the figures
//! and their targets are [`report`]'s.

pub mod faults;
pub mod monitors;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_analytics::records::Insight;
use tokio::sync::watch;

use crate::admin;
use crate::fault::{Fault, FaultProxy};
use crate::process::{FeedProcess, SluiceProcess};
use faults::{Control, FaultKind, Scheduled};
use monitors::{MonitorLog, MonitorSpec, SharedLog, ms_since};

/// Connections each endpoint process accepts at once; one more is a violation. Tight on
/// purpose: three classes and a health check per endpoint, and after a fault the surviving
/// endpoints take the others' connections.
pub const PROVIDER_CONNECTIONS: u64 = 5;
/// New streams a second each endpoint process accepts (burst [`PROVIDER_BURST`]): a resume
/// storm after a fault needs more.
pub const PROVIDER_RATE: f64 = 20.0;
/// The endpoint processes' stream-creation burst.
pub const PROVIDER_BURST: u32 = 15;
/// Sluice's `limits.max_connections` per endpoint (one of them the health check's).
pub const SLUICE_CONNECTIONS: u32 = 4;
/// Sluice's `rate_limit.streams_per_second` per endpoint (burst [`SLUICE_BURST`]).
pub const SLUICE_RATE: f64 = 15.0;
/// Sluice's `rate_limit.burst` per endpoint.
pub const SLUICE_BURST: u32 = 10;

/// How long the soak runs, and where the plugins are.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The whole run, warm-up and tail included.
    pub duration: Duration,
    /// The built plugins (`router.wasm`, `scaler.wasm`, `anomaly.wasm`, `feed-resumer.wasm`).
    pub plugins: PathBuf,
}

/// One endpoint process's counters, summed over its restarts.
#[derive(Debug, Clone, Default)]
pub struct FeedCounters {
    /// Its name.
    pub name: String,
    /// Counter name to value, each summed over every run of the process (gauges: the latest
    /// run's).
    pub counters: BTreeMap<String, u64>,
    /// The most connections open at once in any run.
    pub connections_peak: u64,
}

impl FeedCounters {
    fn add(&mut self, counters: &BTreeMap<String, u64>) {
        for (name, value) in counters {
            match name.as_str() {
                "connections_peak" => self.connections_peak = self.connections_peak.max(*value),
                // Gauges: the latest run's value, not a sum.
                "connections_open" | "subscribe_active" => {
                    self.counters.insert(name.clone(), *value);
                }
                _ => *self.counters.entry(name.clone()).or_default() += value,
            }
        }
    }

    /// A summed counter (0 when never reported).
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// Everything one soak recorded.
pub struct SoakRun {
    /// How it was run.
    pub options: SoakOptions,
    /// The warm-up (and tail) left out of availability.
    pub warmup: Duration,
    /// The faults, as they ran.
    pub faults: Vec<Scheduled>,
    /// Each monitor and what it saw.
    pub monitors: Vec<(MonitorSpec, MonitorLog)>,
    /// The stream-creation probe's record.
    pub probe: MonitorLog,
    /// Each endpoint process's counters.
    pub feeds: Vec<FeedCounters>,
    /// Insights the analytics loops raised, with their times.
    pub insights: Vec<Insight>,
    /// When the soak began, Unix ms (insights carry Unix times).
    pub start_unix_ms: i64,
    /// Sluice's RSS (KiB) sampled once a second: (ms since start, KiB).
    pub rss_kb: Vec<(u32, u64)>,
    /// Sluice's counters at the end (`GET /api/v1/stats`).
    pub sluice: SluiceCounters,
    /// Endpoint and monitor breakers still open at the end.
    pub open_breakers: Vec<String>,
    /// Elapsed time of the whole run.
    pub elapsed: Duration,
}

/// The operator's token for the admin API (re-enabling an endpoint is a write).
const ADMIN_TOKEN: &str = "soak-operator";

/// What the soak reads of Sluice's counters at the end.
#[derive(Debug, Clone, Copy, Default)]
pub struct SluiceCounters {
    /// Streams resumed on another upstream stream.
    pub resumes: u64,
    /// Resumes that failed (the monitor got an error).
    pub resume_failures: u64,
}

/// The endpoint processes and their counters from runs that ended.
struct Endpoints {
    live: BTreeMap<&'static str, FeedProcess>,
    counters: BTreeMap<&'static str, FeedCounters>,
    args: BTreeMap<&'static str, Vec<String>>,
}

impl Endpoints {
    fn start(dir: &std::path::Path) -> (Self, BTreeMap<&'static str, Control>) {
        let mut endpoints = Endpoints {
            live: BTreeMap::new(),
            counters: BTreeMap::new(),
            args: BTreeMap::new(),
        };
        let mut controls = BTreeMap::new();
        for name in ["e0", "e1", "e2"] {
            let control = Control(dir.join(format!("{name}.control")));
            control.accept();
            let args = vec![
                "--max-connections".to_owned(),
                PROVIDER_CONNECTIONS.to_string(),
                "--max-stream-rate".to_owned(),
                PROVIDER_RATE.to_string(),
                "--max-stream-burst".to_owned(),
                PROVIDER_BURST.to_string(),
                "--stats-every".to_owned(),
                "200ms".to_owned(),
                "--control-file".to_owned(),
                control.0.display().to_string(),
            ];
            let process = FeedProcess::start_with(name, ([127, 0, 0, 1], 0).into(), &args);
            endpoints.live.insert(name, process);
            endpoints.args.insert(name, args);
            endpoints.counters.insert(
                name,
                FeedCounters {
                    name: name.to_owned(),
                    ..FeedCounters::default()
                },
            );
            controls.insert(name, control);
        }
        (endpoints, controls)
    }

    fn addr(&self, name: &str) -> std::net::SocketAddr {
        self.live[name].addr
    }

    /// SIGKILLs (or with `graceful`, SIGTERMs) `name`; returns its address.
    fn stop(&mut self, name: &'static str, graceful: bool) -> Option<std::net::SocketAddr> {
        let process = self.live.remove(name)?;
        let (addr, counters) = tokio::task::block_in_place(|| {
            if graceful {
                process.terminate()
            } else {
                let counters = process.stats();
                (process.kill(), counters)
            }
        });
        if let Some(summed) = self.counters.get_mut(name) {
            summed.add(&counters);
        }
        Some(addr)
    }

    fn restart(&mut self, name: &'static str, addr: std::net::SocketAddr) {
        let args = self.args[name].clone();
        let process = tokio::task::block_in_place(|| FeedProcess::start_with(name, addr, &args));
        self.live.insert(name, process);
    }

    /// Every process's counters, the live ones' latest lines included.
    fn counters(&self) -> Vec<FeedCounters> {
        self.counters
            .iter()
            .map(|(name, summed)| {
                let mut summed = summed.clone();
                if let Some(process) = self.live.get(name) {
                    summed.add(&process.stats());
                }
                summed
            })
            .collect()
    }
}

/// Sluice's config file for the soak: the three endpoints with Sluice's share of the
/// provider's caps, the two methods, the monitors, the plugins and the store. Everything not
/// named keeps its default, except the keepalive timeout: on loopback a PING that takes a
/// second is lost, and the default 5 s suits providers across the internet.
fn sluice_toml(
    urls: &[(&str, String)],
    monitors: &[MonitorSpec],
    options: &SoakOptions,
    store: &std::path::Path,
) -> String {
    use std::fmt::Write as _;
    let dir = &options.plugins;
    let mut toml = format!(
        r#"[server]
listen = "127.0.0.1:0"
shutdown_grace = "200ms"

[admin]
listen = "127.0.0.1:0"
token = "{ADMIN_TOKEN}"

[pool]
keepalive_timeout = "1s"

[health]
active = true
interval = "500ms"

[store]
path = "{store}"

[plugins]
cache_dir = "{cache}"

[plugins.router]
file = "{router}"

[plugins.scaler]
file = "{scaler}"

[plugins.anomaly]
file = "{anomaly}"

[plugins.resumer]
file = "{resumer}"

[[methods]]
path = "{resumable}"
resume = "replay-last"

[[methods]]
path = "{shared}"
share = true
"#,
        store = store.display(),
        cache = crate::plugins::plugins_config()
            .cache_dir
            .unwrap_or_default()
            .display(),
        router = dir.join("router.wasm").display(),
        scaler = dir.join("scaler.wasm").display(),
        anomaly = dir.join("anomaly.wasm").display(),
        resumer = dir.join("feed-resumer.wasm").display(),
        resumable = monitors::RESUMABLE,
        shared = monitors::SHARED,
    );
    for (id, url) in urls {
        let _ = write!(
            toml,
            r#"
[[endpoints]]
id = "{id}"
url = "{url}"

[endpoints.limits]
max_connections = {SLUICE_CONNECTIONS}
connections_per_second = 5.0

[endpoints.rate_limit]
streams_per_second = {SLUICE_RATE:.1}
burst = {SLUICE_BURST}
queue = 1024
"#
        );
    }
    let ids = monitors
        .iter()
        .map(|m| (m.id.as_str(), m.class.to_string()))
        .chain([
            ("probe", "event".to_owned()),
            ("laggard", "event".to_owned()),
        ]);
    for (id, class) in ids {
        let _ = write!(toml, "\n[[monitors]]\nid = \"{id}\"\nclass = \"{class}\"\n");
    }
    toml
}

/// Runs the soak.
pub async fn run(options: SoakOptions) -> SoakRun {
    let work = tempfile::tempdir().expect("soak work folder");
    let (mut endpoints, controls) = tokio::task::block_in_place(|| Endpoints::start(work.path()));
    let proxy_e1 = FaultProxy::start(endpoints.addr("e1"))
        .await
        .expect("fault proxy starts");
    let urls = [
        ("e0", format!("http://{}", endpoints.addr("e0"))),
        ("e1", proxy_e1.url()),
        ("e2", format!("http://{}", endpoints.addr("e2"))),
    ];
    let specs = monitors::the_twenty();
    let config = work.path().join("sluice.toml");
    let toml = sluice_toml(&urls, &specs, &options, &work.path().join("sluice.db"));
    std::fs::write(&config, toml).expect("writing Sluice's config");
    let sluice = tokio::task::block_in_place(|| SluiceProcess::start(&config));
    let admin: std::net::SocketAddr = sluice
        .admin
        .trim_start_matches("http://")
        .parse()
        .expect("sluice prints its admin address");

    let start = Instant::now();
    let start_unix_ms = unix_ms();
    let (stop, stopped) = watch::channel(false);
    let logs: Vec<SharedLog> = specs.iter().map(|_| SharedLog::default()).collect();
    let mut tasks = Vec::new();
    for (spec, log) in specs.iter().zip(&logs) {
        tasks.push(tokio::spawn(monitors::run(
            spec.clone(),
            sluice.addr,
            start,
            Arc::clone(log),
            stopped.clone(),
        )));
    }
    let probe = SharedLog::default();
    tasks.push(tokio::spawn(monitors::probe_creation(
        sluice.addr,
        Duration::from_secs(1),
        start,
        Arc::clone(&probe),
        stopped.clone(),
    )));
    let rss = Arc::new(Mutex::new(Vec::new()));
    tasks.push(tokio::spawn(sample_rss(
        sluice.pid(),
        start,
        Arc::clone(&rss),
        stopped.clone(),
    )));
    let insights = Arc::new(Mutex::new(BTreeMap::new()));
    tasks.push(tokio::spawn(collect_insights(
        admin,
        Arc::clone(&insights),
        stopped.clone(),
    )));

    let (warmup, schedule) = faults::schedule(options.duration);
    for fault in &schedule {
        sleep_until(start, fault.start_ms).await;
        eprintln!(
            "soak: {} at {:.0} s",
            fault.kind.name(),
            start.elapsed().as_secs_f64()
        );
        let length_ms = fault.end_ms - fault.start_ms;
        let stopped_at = begin(
            fault.kind,
            length_ms,
            &mut endpoints,
            &controls,
            &proxy_e1,
            &sluice,
        );
        sleep_until(start, fault.end_ms).await;
        end(
            fault.kind,
            &mut endpoints,
            &controls,
            &proxy_e1,
            admin,
            stopped_at,
        )
        .await;
    }
    sleep_until(
        start,
        u32::try_from(options.duration.as_millis()).unwrap_or(u32::MAX),
    )
    .await;
    let elapsed = start.elapsed();
    stop.send_replace(true);
    for task in tasks {
        let _ = task.await;
    }
    // The live processes' counter lines come every 200 ms: let one more arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open_breakers = open_breakers(admin).await;
    let counters = sluice_counters(admin).await;
    let run = SoakRun {
        options,
        warmup,
        faults: schedule,
        monitors: specs
            .into_iter()
            .zip(logs.iter().map(|log| log.lock().clone()))
            .collect(),
        probe: probe.lock().clone(),
        feeds: endpoints.counters(),
        insights: insights.lock().values().cloned().collect(),
        start_unix_ms,
        rss_kb: rss.lock().clone(),
        sluice: counters,
        open_breakers,
        elapsed,
    };
    tokio::task::block_in_place(|| sluice.kill());
    run
}

/// Starts `kind`, which lasts `length_ms`; returns the address of a process it stopped.
fn begin(
    kind: FaultKind,
    length_ms: u32,
    endpoints: &mut Endpoints,
    controls: &BTreeMap<&'static str, Control>,
    proxy_e1: &FaultProxy,
    sluice: &SluiceProcess,
) -> Option<std::net::SocketAddr> {
    match kind {
        FaultKind::KillRestart => endpoints.stop("e0", false),
        FaultKind::GoawayRestart => endpoints.stop("e0", true),
        FaultKind::BlackHole => {
            proxy_e1.set(Fault::BlackHole);
            None
        }
        FaultKind::Latency => {
            proxy_e1.set(Fault::Latency(Duration::from_millis(200)));
            None
        }
        FaultKind::Quota => {
            controls["e2"].refuse(tonic::Code::ResourceExhausted as i32, Some(5000));
            None
        }
        FaultKind::RevokedCredentials => {
            controls["e2"].refuse(tonic::Code::Unauthenticated as i32, None);
            None
        }
        FaultKind::StoppedReader => {
            let addr = sluice.addr;
            let hold = Duration::from_millis(u64::from(length_ms));
            tokio::spawn(async move {
                let _ = monitors::stop_reading(addr, hold).await;
            });
            None
        }
    }
}

/// Ends `kind`: restarts what it stopped, lifts what it set.
async fn end(
    kind: FaultKind,
    endpoints: &mut Endpoints,
    controls: &BTreeMap<&'static str, Control>,
    proxy_e1: &FaultProxy,
    admin: std::net::SocketAddr,
    stopped: Option<std::net::SocketAddr>,
) {
    match kind {
        FaultKind::KillRestart | FaultKind::GoawayRestart => {
            if let Some(addr) = stopped {
                endpoints.restart("e0", addr);
            }
        }
        FaultKind::BlackHole | FaultKind::Latency => proxy_e1.set(Fault::Pass),
        FaultKind::Quota => controls["e2"].accept(),
        FaultKind::RevokedCredentials => {
            controls["e2"].accept();
            // The operator fixed the credentials (the feed reads its control file every
            // 100 ms) and re-enables the endpoint.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let answer = admin::request(
                admin,
                "POST",
                "/api/v1/endpoints/e2/enable",
                Some(ADMIN_TOKEN),
                Vec::new(),
            )
            .await;
            assert_eq!(answer.status, 200, "re-enabling e2: {}", answer.text);
        }
        // The laggard lets its stream go by itself at the fault's end.
        FaultKind::StoppedReader => {}
    }
}

async fn sleep_until(start: Instant, at_ms: u32) {
    let at = start + Duration::from_millis(u64::from(at_ms));
    tokio::time::sleep_until(at.into()).await;
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Samples Sluice's RSS once a second.
async fn sample_rss(
    pid: u32,
    start: Instant,
    samples: Arc<Mutex<Vec<(u32, u64)>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        if let Some(memory) = crate::abuse::stage::memory(pid) {
            samples.lock().push((ms_since(start), memory.rss_kb));
        }
    }
}

/// Keeps every insight Sluice raises (`GET /api/v1/insights` lists the latest 256).
async fn collect_insights(
    admin: std::net::SocketAddr,
    seen: Arc<Mutex<BTreeMap<(i64, String), Insight>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(2));
    loop {
        let stopping = tokio::select! {
            _ = ticks.tick() => false,
            _ = stop.changed() => true,
        };
        let answer = admin::request(
            admin,
            "GET",
            "/api/v1/insights?limit=256",
            Some(ADMIN_TOKEN),
            Vec::new(),
        )
        .await;
        let insights: Vec<Insight> = serde_json::from_value(answer.json["insights"].clone())
            .unwrap_or_else(|error| panic!("GET /api/v1/insights: {error}: {}", answer.text));
        let mut seen = seen.lock();
        for insight in insights {
            seen.insert((insight.ts_ms, insight.title.clone()), insight);
        }
        if stopping {
            return;
        }
    }
}

/// Endpoint and monitor breakers not closed (`GET /api/v1/breakers`).
async fn open_breakers(admin: std::net::SocketAddr) -> Vec<String> {
    let answer = admin::request(
        admin,
        "GET",
        "/api/v1/breakers",
        Some(ADMIN_TOKEN),
        Vec::new(),
    )
    .await;
    let breakers = answer.json["breakers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    breakers
        .iter()
        .filter(|b| b["scope"] != "connection" && b["state"] != "closed")
        .map(|b| {
            let field = |name: &str| b[name].as_str().unwrap_or("?").to_owned();
            format!("{} {} ({})", field("scope"), field("name"), field("state"))
        })
        .collect()
}

/// Sluice's resume counters (`GET /api/v1/stats`).
async fn sluice_counters(admin: std::net::SocketAddr) -> SluiceCounters {
    let answer = admin::request(admin, "GET", "/api/v1/stats", Some(ADMIN_TOKEN), Vec::new()).await;
    let stats = &answer.json["stats"];
    let counter = |name: &str| {
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("GET /api/v1/stats has no {name}: {}", answer.text))
    };
    SluiceCounters {
        resumes: counter("resumes_total"),
        resume_failures: counter("resume_failures_total"),
    }
}
