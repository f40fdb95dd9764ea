//! Where the attacks play: a `sluice-feed` process, a `sluice run` process in front of it with
//! the config the abuse tests expect ([`config_toml`], the one place that config is written),
//! and the legitimate monitor streaming through it; and what is read from them: Sluice's memory
//! and CPU (`/proc`), its `/metrics` and its breakers (admin API).
//!
//! It owns the set-up and the readings. It must not judge them: the tests assert, the bench
//! prints.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Attack, CONFIGURED_MONITORS, LEGIT, Legit, NOISY, Observed};
use crate::admin;
use crate::process::{FeedProcess, SluiceProcess};

/// Messages a second the legitimate monitor asks for.
pub const LEGIT_RATE: f64 = 200.0;
/// Messages in each of its calls (half a second at [`LEGIT_RATE`]).
pub const LEGIT_PER_CALL: u64 = 100;
/// `server.max_connections` in the stage's config.
pub const MAX_CONNECTIONS: usize = 512;
/// `server.max_connections_per_peer` in the stage's config.
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// `server.max_streams_per_monitor` in the stage's config.
pub const MAX_STREAMS_PER_MONITOR: usize = 300;
/// `max_streams` of the monitor [`NOISY`] in the stage's config.
pub const NOISY_MAX_STREAMS: usize = 100;
/// `server.max_header_list_bytes` in the stage's config.
pub const MAX_HEADER_LIST_BYTES: usize = 16 * 1024;
/// `server.request_timeout` in the stage's config.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// `server.max_buffered_request_bytes` in the stage's config.
pub const MAX_BUFFERED_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// `server.idle_timeout` in the stage's config: a connection with no call open this long is
/// sent away (slow headers never open one).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// `pool.stream_window_bytes` (the default): the most request bytes one stream may have
/// buffered before admission.
pub const STREAM_WINDOW_BYTES: u64 = 128 * 1024;

/// The stage's config: one endpoint (the feed at `feed`), the monitors [`LEGIT`] (realtime) and
/// [`NOISY`] (event, its own stream limit), `Subscribe` shared and `Chat` resumable, the
/// defences set to the constants of this module, and history in memory.
pub fn config_toml(feed: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "200ms"
idle_timeout = "{idle_timeout}ms"
max_connections = {MAX_CONNECTIONS}
max_connections_per_peer = {MAX_CONNECTIONS_PER_PEER}
max_streams_per_monitor = {MAX_STREAMS_PER_MONITOR}
max_header_list_bytes = {MAX_HEADER_LIST_BYTES}
request_timeout = "{request_timeout}ms"
max_buffered_request_bytes = {MAX_BUFFERED_REQUEST_BYTES}

[admin]
listen = "127.0.0.1:0"

[store]
path = ":memory:"

[[endpoints]]
id = "feed"
url = "http://{feed}"

[[monitors]]
id = "{LEGIT}"
class = "realtime"

[[monitors]]
id = "{NOISY}"
class = "event"
max_streams = {NOISY_MAX_STREAMS}

[[methods]]
path = "{subscribe}"
share = true

[[methods]]
path = "{chat}"
resume = "replay-last"
"#,
        request_timeout = REQUEST_TIMEOUT.as_millis(),
        idle_timeout = IDLE_TIMEOUT.as_millis(),
        subscribe = crate::SUBSCRIBE,
        chat = super::CHAT,
    )
}

/// A process's memory, from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size now (VmRSS).
    pub rss_kb: u64,
    /// Peak resident set size since start or the last [`reset_peak`] (VmHWM).
    pub hwm_kb: u64,
}

/// `pid`'s memory; `None` when `/proc` cannot be read.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// Resets `pid`'s VmHWM to its current RSS (Linux 4.0+); whether the kernel let it.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The sum of every sample of the metric `name` in a Prometheus text exposition (0 when
/// absent).
pub fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The processes and the legitimate monitor.
pub struct Stage {
    /// The legitimate monitor, streaming as [`LEGIT`].
    pub legit: Legit,
    /// Sluice.
    pub sluice: SluiceProcess,
    /// Its admin listener.
    pub admin: SocketAddr,
    _feed: FeedProcess,
    _dir: tempfile::TempDir,
}

/// One round of an attack: the legitimate monitor's counts over a window before it and over a
/// window of the same length during it, and what Sluice spent.
#[derive(Debug, Clone)]
pub struct Round {
    /// The legitimate monitor's counts over the window before the attack.
    pub baseline: super::Count,
    /// Its counts over the window during the attack.
    pub during: super::Count,
    /// What the attack observed.
    pub observed: Observed,
    /// Sluice's CPU time over the attack window, as % of one core (NaN without `/proc`).
    pub cpu_percent: f64,
    /// This process's (the attacker's and the legitimate monitor's) CPU time over the attack
    /// window, as % of one core: on a small machine, what the attack itself takes from the
    /// others.
    pub attacker_cpu_percent: f64,
    /// Sluice's peak RSS over the attack (since start when `peak_reset` is false), KiB.
    pub peak_rss_kb: u64,
    /// Whether the peak could be reset before the attack.
    pub peak_reset: bool,
}

impl Round {
    /// The legitimate monitor's message count during the attack over the one before it.
    pub fn ratio(&self) -> f64 {
        self.during.messages as f64 / self.baseline.messages.max(1) as f64
    }
}

impl Stage {
    /// Starts the feed and Sluice processes and the legitimate monitor, and waits (up to 10 s)
    /// until its messages flow. Panics when any of that fails.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let feed = FeedProcess::start("abused");
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, config_toml(feed.addr)).expect("writing the config");
        let sluice = SluiceProcess::start(&config);
        let admin = sluice
            .admin
            .trim_start_matches("http://")
            .parse()
            .expect("sluice prints its admin address");
        let legit = Legit::start(sluice.addr, LEGIT, LEGIT_RATE, LEGIT_PER_CALL);
        assert!(
            legit
                .flowing(2 * LEGIT_PER_CALL, Duration::from_secs(10))
                .await,
            "the legitimate monitor's messages do not flow: {:?}",
            legit.errors()
        );
        Self {
            legit,
            sluice,
            admin,
            _feed: feed,
            _dir: dir,
        }
    }

    /// Sluice's process id.
    pub fn pid(&self) -> u32 {
        self.sluice.pid()
    }

    /// Sluice's memory now.
    pub fn memory(&self) -> Memory {
        memory(self.pid()).unwrap_or_default()
    }

    /// Sluice's `/metrics` text.
    pub async fn metrics(&self) -> String {
        admin::request(self.admin, "GET", "/metrics", None, Vec::new())
            .await
            .text
    }

    /// `GET /api/v1/breakers`: every breaker's state.
    async fn breakers(&self) -> Vec<serde_json::Value> {
        let answer = admin::request(self.admin, "GET", "/api/v1/breakers", None, Vec::new()).await;
        answer.json["breakers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Breakers that Sluice keeps for monitors.
    pub async fn monitor_breakers(&self) -> usize {
        self.breakers()
            .await
            .iter()
            .filter(|b| b["scope"] == "monitor")
            .count()
    }

    /// Every endpoint breaker and configured monitor's breaker that opened since the start
    /// (from the breaker event log) or is not closed now, as `scope name: from -> to (cause)`.
    pub async fn breakers_opened(&self) -> Vec<String> {
        let guarded = |b: &serde_json::Value| {
            b["scope"] == "endpoint"
                || (b["scope"] == "monitor" && CONFIGURED_MONITORS.iter().any(|m| b["name"] == *m))
        };
        let path = "/api/v1/breakers/events?since=0";
        let events = admin::request(self.admin, "GET", path, None, Vec::new()).await;
        let mut opened: Vec<String> = events.json["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| guarded(e) && e["to"] != "closed" && e["to"] != "half-open")
            .map(|e| {
                format!(
                    "{} {}: {} -> {} ({})",
                    e["scope"], e["name"], e["from"], e["to"], e["cause"]
                )
            })
            .collect();
        for breaker in self.breakers().await {
            if guarded(&breaker) && breaker["state"] != "closed" {
                opened.push(format!(
                    "{} {} is {} now",
                    breaker["scope"], breaker["name"], breaker["state"]
                ));
            }
        }
        opened
    }

    /// One round: the legitimate monitor's counts over `window`, then `attack` for `window`
    /// while it counts again and Sluice's CPU time and peak memory are read. Without an attack
    /// the second window is measured the same way (the control: how much two quiet windows
    /// differ).
    pub async fn round(&self, attack: Option<Attack>, window: Duration) -> Round {
        let baseline = self.legit.over(window).await;
        let pid = self.pid();
        let peak_reset = reset_peak(pid);
        let (cpu_before, started) = (crate::measure::pid_cpu(pid), Instant::now());
        let own_before = crate::measure::process_cpu();
        let addr = self.sluice.addr;
        let running = attack.map(|attack| tokio::spawn(attack.run(addr, window)));
        let during = self.legit.over(window).await;
        let (cpu_after, wall) = (crate::measure::pid_cpu(pid), started.elapsed());
        let own_after = crate::measure::process_cpu();
        let observed = match (attack, running) {
            (Some(attack), Some(running)) => {
                let limit = window + Duration::from_secs(30);
                crate::bounded(limit, attack.name(), running)
                    .await
                    .expect("the attack task does not panic")
            }
            _ => Observed::default(),
        };
        let share = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
            (Some(before), Some(after)) => {
                (after - before).as_secs_f64() / wall.as_secs_f64() * 100.0
            }
            _ => f64::NAN,
        };
        Round {
            baseline,
            during,
            observed,
            cpu_percent: share(cpu_before, cpu_after),
            attacker_cpu_percent: share(own_before, own_after),
            peak_rss_kb: self.memory().hwm_kb,
            peak_reset,
        }
    }
}
