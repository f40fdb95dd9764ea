//! Takes one sample of the pool's metrics a second, from [`ProxyView`], into the history.
//!
//! Counters become per-second rates here (the difference to the previous sample), so every
//! metric in the history is a level that windows and rollups can average. The sampler reads
//! only; it never changes the pool.

use std::sync::Arc;
use std::time::Duration;

use sluice_config::TrafficClass;
use sluice_proxy::ProxyView;
use sluice_proxy::pool::GroupLoad;

/// Connections open over all groups (draining ones included).
pub const CONNECTIONS: &str = "pool.connections";
/// Connections the offered load needs: per group, streams over streams per connection,
/// rounded up (at least the group's minimum).
pub const CONNECTIONS_NEEDED: &str = "pool.connections_needed";
/// Share of the global connection cap in use, 0..=1.
pub const CAP_USAGE: &str = "pool.cap_usage";
/// Streams on connections over the streams they can carry, 0..=1.
pub const UTILIZATION: &str = "pool.utilization";
/// Mean streams per connection taking streams.
pub const STREAMS_PER_CONNECTION: &str = "pool.streams_per_connection";
/// Share of connections taking streams that carry none, 0..=1.
pub const IDLE_RATIO: &str = "pool.idle_ratio";
/// Calls from monitors open now.
pub const DOWNSTREAM_STREAMS: &str = "streams.downstream";
/// Upstream streams open now.
pub const UPSTREAM_STREAMS: &str = "streams.upstream";
/// Upstream streams placed per second.
pub const STREAMS_STARTED: &str = "streams.started_per_s";
/// Streams waiting for a slot.
pub const QUEUE_WAITING: &str = "queue.waiting";
/// Upstream streams failing per second.
pub const ERRORS: &str = "upstream.errors_per_s";
/// Share of the streams placed in the last second that failed (0 with none placed).
pub const ERROR_RATE: &str = "upstream.error_rate";
/// Mean peak-EWMA latency of the connections, ms.
pub const LATENCY: &str = "upstream.latency_ms";
/// 99th percentile of time to response headers over the last 10 s, ms.
pub const LATENCY_P99: &str = "upstream.latency_p99_ms";
/// Upstream connections opened per minute to replace others (opened beyond the growth of the
/// pool), from the last second's rate.
pub const RECONNECTS: &str = "upstream.connections_opened_per_min";
/// Payload bytes to monitors per second.
pub const BYTES_TO_MONITORS: &str = "bytes.to_monitors_per_s";

/// The metrics the anomaly policy watches.
pub const WATCHED: [&str; 8] = [
    UTILIZATION,
    DOWNSTREAM_STREAMS,
    STREAMS_STARTED,
    ERRORS,
    ERROR_RATE,
    LATENCY,
    LATENCY_P99,
    RECONNECTS,
];

/// Window of the latency quantile in each sample.
const LATENCY_WINDOW: Duration = Duration::from_secs(10);

/// The per-group metric named `what` (`connections`, `streams`, ...).
pub fn group_metric(class: TrafficClass, what: &str) -> String {
    format!("group.{class}.{what}")
}

/// Counters seen at the previous sample.
#[derive(Debug, Clone, Copy, Default)]
struct Previous {
    at: Option<tokio::time::Instant>,
    started: u64,
    failed: u64,
    opened: u64,
    connections: usize,
    bytes_to_monitors: u64,
}

/// Connections a group needs for its streams.
pub fn connections_needed(group: &GroupLoad) -> usize {
    let per_connection = group.max_streams_per_connection.max(1) as usize;
    (group.streams as usize)
        .div_ceil(per_connection)
        .max(group.min_connections)
}

/// The pool's connections and streams, summed over its groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolTotals {
    /// Connections taking streams.
    pub connections: usize,
    /// Connections open, draining ones included.
    pub held: usize,
    /// Connections the streams need ([`connections_needed`] of each group).
    pub needed: usize,
    /// Streams on the connections.
    pub streams: u32,
    /// Streams the connections taking streams can carry.
    pub capacity: u32,
    /// Connections taking streams that carry none.
    pub idle: usize,
}

impl PoolTotals {
    /// The totals of `groups`.
    pub fn of(groups: &[GroupLoad]) -> Self {
        groups.iter().fold(Self::default(), |total, g| Self {
            connections: total.connections + g.connections,
            held: total.held + g.held,
            needed: total.needed + connections_needed(g),
            streams: total.streams + g.streams,
            capacity: total.capacity + g.capacity,
            idle: total.idle + g.idle_connections,
        })
    }
}

/// Turns pool state into samples.
pub struct Sampler {
    proxy: ProxyView,
    previous: parking_lot::Mutex<Previous>,
}

impl Sampler {
    /// A sampler of `proxy`.
    pub fn new(proxy: ProxyView) -> Arc<Self> {
        Arc::new(Self {
            proxy,
            previous: parking_lot::Mutex::new(Previous::default()),
        })
    }

    /// One sample of every metric. Rates are over the time since the previous sample (zero
    /// for the first).
    pub fn sample(&self) -> Vec<(String, f64)> {
        let now = tokio::time::Instant::now();
        let snapshot = self.proxy.snapshot();
        let groups = self.proxy.group_loads(LATENCY_WINDOW);
        let stats = &snapshot.stats;
        let started: u64 = groups.iter().map(|g| g.streams_started_total).sum();
        let failed: u64 = groups.iter().map(|g| g.streams_failed_total).sum();
        let mut previous = self.previous.lock();
        let elapsed = previous
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        let rate = |current: u64, before: u64| {
            if elapsed > 0.0 {
                current.saturating_sub(before) as f64 / elapsed
            } else {
                0.0
            }
        };
        let started_rate = rate(started, previous.started);
        let failed_rate = rate(failed, previous.failed);
        // Openings that grew the pool (scaling, demand) are not reconnects.
        let grown = snapshot.connections.saturating_sub(previous.connections) as u64;
        let reopened = stats
            .connections_opened_total
            .saturating_sub(previous.opened)
            .saturating_sub(grown);
        let opened_rate = rate(reopened, 0);
        let bytes_rate = rate(stats.bytes_to_monitors_total, previous.bytes_to_monitors);
        *previous = Previous {
            at: Some(now),
            started,
            failed,
            opened: stats.connections_opened_total,
            connections: snapshot.connections,
            bytes_to_monitors: stats.bytes_to_monitors_total,
        };
        drop(previous);

        let PoolTotals {
            connections: live,
            needed,
            streams,
            capacity,
            idle,
            ..
        } = PoolTotals::of(&groups);
        let latencies: Vec<f64> = groups
            .iter()
            .filter(|g| g.connections > 0)
            .map(|g| g.latency_ms)
            .collect();
        let p99 = groups
            .iter()
            .filter_map(|g| g.latency_p99_ms)
            .fold(None, |max: Option<f64>, v| {
                Some(max.map_or(v, |m| m.max(v)))
            });
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let mut samples = vec![
            (CONNECTIONS.to_owned(), snapshot.connections as f64),
            (CONNECTIONS_NEEDED.to_owned(), needed as f64),
            (
                CAP_USAGE.to_owned(),
                ratio(snapshot.connections as f64, self.proxy.global_cap() as f64),
            ),
            (
                UTILIZATION.to_owned(),
                ratio(f64::from(streams), f64::from(capacity)),
            ),
            (
                STREAMS_PER_CONNECTION.to_owned(),
                ratio(f64::from(streams), live as f64),
            ),
            (IDLE_RATIO.to_owned(), ratio(idle as f64, live as f64)),
            (
                DOWNSTREAM_STREAMS.to_owned(),
                stats.downstream_streams_active as f64,
            ),
            (
                UPSTREAM_STREAMS.to_owned(),
                stats.upstream_streams_active as f64,
            ),
            (STREAMS_STARTED.to_owned(), started_rate),
            (QUEUE_WAITING.to_owned(), stats.queue_waiting as f64),
            (ERRORS.to_owned(), failed_rate),
            (ERROR_RATE.to_owned(), ratio(failed_rate, started_rate)),
            (RECONNECTS.to_owned(), opened_rate * 60.0),
            (BYTES_TO_MONITORS.to_owned(), bytes_rate),
        ];
        if !latencies.is_empty() {
            let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
            samples.push((LATENCY.to_owned(), mean));
        }
        if let Some(p99) = p99 {
            samples.push((LATENCY_P99.to_owned(), p99));
        }
        for group in &groups {
            let class = group.class;
            samples.extend([
                (group_metric(class, "connections"), group.held as f64),
                (group_metric(class, "streams"), f64::from(group.streams)),
                (
                    group_metric(class, "utilization"),
                    ratio(f64::from(group.streams), f64::from(group.capacity)),
                ),
                (group_metric(class, "waiting"), group.waiting as f64),
                (group_metric(class, "target"), group.target as f64),
            ]);
        }
        samples
    }
}
