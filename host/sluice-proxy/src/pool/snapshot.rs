//! What readers see of the pool: per-group sizes and load (for stats, the scaler and
//! analytics), and the connections, endpoints and breakers the admin API lists.
//!
//! Everything here is a point-in-time copy taken under each group's lock for as short as it
//! takes to count. It must not change the pool: [`Pool::breaker`] only finds the breaker an
//! operator override then acts on, and drains and resizes are `life`'s.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use sluice_config::{BreakerScope, TrafficClass};

use super::{LimitsSnapshot, Pool, UpstreamConnection};
use crate::breaker::{Breaker, BreakerSnapshot, BreakerState};
use crate::health::HealthSnapshot;

/// A point-in-time view of one group, for stats and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// The class.
    pub class: TrafficClass,
    /// Open connections.
    pub connections: usize,
    /// Streams over all its connections.
    pub streams: u32,
    /// The class's connection limit.
    pub limit: usize,
    /// Streams waiting for a slot.
    pub waiting: usize,
}

/// One group's size and load, as the scaler and analytics see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupLoad {
    /// The class.
    pub class: TrafficClass,
    /// Connections taking streams (neither draining nor closed).
    pub connections: usize,
    /// Connections open, draining ones included.
    pub held: usize,
    /// Connections taking streams that carry none.
    pub idle_connections: usize,
    /// The configured minimum.
    pub min_connections: usize,
    /// The group's limit (its configured max or its share of the global cap).
    pub max_connections: usize,
    /// Connections the scaler last asked for.
    pub target: usize,
    /// The configured streams per connection.
    pub max_streams_per_connection: u32,
    /// Streams on its connections.
    pub streams: u32,
    /// Streams its connections can carry.
    pub capacity: u32,
    /// Streams waiting for a slot.
    pub waiting: usize,
    /// Streams placed on the group since start.
    pub streams_started_total: u64,
    /// Streams that failed on the upstream side since start (kinds the breakers count).
    pub streams_failed_total: u64,
    /// 99th percentile of time to response headers over the requested window, in ms.
    pub latency_p99_ms: Option<f64>,
    /// Mean peak-EWMA latency of its connections, in ms.
    pub latency_ms: f64,
}

/// One upstream connection as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionSnapshot {
    /// Pool-unique id.
    pub id: u64,
    /// The endpoint it goes to.
    pub endpoint: Arc<str>,
    /// The endpoint's region.
    pub region: Arc<str>,
    /// The group that owns it.
    pub class: TrafficClass,
    /// Streams on it now.
    pub streams: u32,
    /// Streams it may carry (the configured limit, lowered by the peer's setting).
    pub max_streams: u32,
    /// Streams it has carried since it opened.
    pub streams_total: u64,
    /// Peak-EWMA latency, in ms.
    pub latency_ms: f64,
    /// Exponentially weighted share of recent streams that failed, 0..=1.
    pub error_rate: f64,
    /// Seconds since it opened.
    pub age_s: f64,
    /// It takes no new streams and its resumable streams move off.
    pub draining: bool,
    /// Its breaker's state.
    pub breaker: BreakerState,
}

/// One endpoint as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointSnapshot {
    /// Its id.
    pub id: Arc<str>,
    /// Its region.
    pub region: Arc<str>,
    /// Its priority.
    pub priority: u32,
    /// Health verdict and reason.
    pub health: HealthSnapshot,
    /// Its breaker.
    pub breaker: BreakerSnapshot,
    /// Connections to it.
    pub connections: usize,
    /// Use against its caps (`[endpoints.limits]`, `rate_limit`).
    pub limits: LimitsSnapshot,
}

impl Pool {
    /// Per-group views: the summary of [`Pool::group_loads`] that stats and tests use.
    pub fn snapshot(&self) -> Vec<GroupSnapshot> {
        self.group_loads(Duration::ZERO)
            .into_iter()
            .map(|group| GroupSnapshot {
                class: group.class,
                connections: group.connections,
                streams: group.streams,
                limit: group.max_connections,
                waiting: group.waiting,
            })
            .collect()
    }

    /// Each group's size, load and recent stream outcomes, for the scaler and analytics.
    /// `latency_window` bounds the samples behind the latency quantile.
    pub fn group_loads(&self, latency_window: Duration) -> Vec<GroupLoad> {
        self.groups
            .iter()
            .map(|group| {
                let state = group.state.lock();
                let live: Vec<&Arc<UpstreamConnection>> = state
                    .connections
                    .iter()
                    .filter(|c| !c.is_closed())
                    .collect();
                let streams = live.iter().map(|c| c.active_streams()).sum();
                let capacity = live.iter().map(|c| c.capacity()).sum();
                let idle = live.iter().filter(|c| c.active_streams() == 0).count();
                let latency_ms = if live.is_empty() {
                    0.0
                } else {
                    live.iter()
                        .map(|c| c.load.read().0.as_secs_f64() * 1e3)
                        .sum::<f64>()
                        / live.len() as f64
                };
                let connections = live.len();
                drop(state);
                let (streams_started_total, streams_failed_total) = group.counters.totals();
                GroupLoad {
                    class: group.class,
                    connections,
                    held: group.held.load(Relaxed),
                    idle_connections: idle,
                    min_connections: group.min_connections,
                    max_connections: group.limit,
                    target: group.target.load(Relaxed),
                    max_streams_per_connection: group.max_streams,
                    streams,
                    capacity,
                    waiting: group.waiting.load(Relaxed),
                    streams_started_total,
                    streams_failed_total,
                    latency_p99_ms: group.counters.latency_quantile(0.99, latency_window),
                    latency_ms,
                }
            })
            .collect()
    }

    /// Every endpoint's health and breaker.
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.endpoints
            .iter()
            .map(|e| EndpointSnapshot {
                id: Arc::clone(&e.id),
                region: Arc::clone(&e.region),
                priority: e.priority,
                health: e.health.snapshot(&e.breaker),
                breaker: e.breaker.snapshot(),
                connections: e.connection_count(),
                limits: e.limits_snapshot(),
            })
            .collect()
    }

    /// Every connection open now (draining ones included), by group then age.
    pub fn connections(&self) -> Vec<ConnectionSnapshot> {
        let now = Instant::now();
        let mut all = Vec::new();
        for group in &self.groups {
            let state = group.state.lock();
            all.extend(state.connections.iter().map(|c| {
                let (latency, error_rate) = c.load.read();
                ConnectionSnapshot {
                    id: c.id,
                    endpoint: Arc::clone(&c.endpoint.id),
                    region: Arc::clone(&c.endpoint.region),
                    class: c.class,
                    streams: c.active_streams(),
                    max_streams: c.capacity(),
                    streams_total: c.streams_total.load(Relaxed),
                    latency_ms: latency.as_secs_f64() * 1e3,
                    error_rate,
                    age_s: now.saturating_duration_since(c.opened_at).as_secs_f64(),
                    draining: c.is_draining(),
                    breaker: c.breaker.state(),
                }
            }));
        }
        all
    }

    /// Every breaker: endpoints, live connections, monitors.
    pub fn breakers(&self) -> Vec<BreakerSnapshot> {
        let mut all: Vec<BreakerSnapshot> = self
            .endpoints
            .iter()
            .map(|e| e.breaker.snapshot())
            .collect();
        for group in &self.groups {
            let state = group.state.lock();
            all.extend(state.connections.iter().map(|c| c.breaker.snapshot()));
        }
        all.extend(self.monitors.breakers().map(|b| b.snapshot()));
        all
    }

    /// Finds a breaker by scope and name (as listed by [`Pool::breakers`]).
    pub fn breaker(&self, scope: BreakerScope, name: &str) -> Option<Arc<Breaker>> {
        match scope {
            BreakerScope::Endpoint => self.endpoint(name).map(|e| Arc::clone(&e.breaker)),
            BreakerScope::Monitor => self.monitors.breaker(name).map(Arc::clone),
            BreakerScope::Connection => self.groups.iter().find_map(|group| {
                let state = group.state.lock();
                state
                    .connections
                    .iter()
                    .find(|c| &**c.breaker.name() == name)
                    .map(|c| Arc::clone(&c.breaker))
            }),
        }
    }
}
