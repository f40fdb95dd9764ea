//! The system summary behind `/api/v1/stats`, the `/ws` push and `/metrics`: uptime, the
//! health score with the reasons for every point it lost, endpoint cards, monitors and the
//! pool's efficiency.
//!
//! Everything here is computed from the proxy's, the policies' and the analytics engine's state
//! when asked; this module keeps no state of its own and never touches the data path.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sluice_analytics::records::{Severity, unix_ms_now};
use sluice_analytics::sampler::PoolTotals;
use sluice_config::BreakerScope;
use sluice_config::SlotKind;
use sluice_contract::breaker::BreakerState;
use sluice_contract::health::Health;
use sluice_proxy::Snapshot;
use sluice_proxy::breaker::BreakerSnapshot;
use sluice_proxy::pool::{ConnectionSnapshot, EndpointSnapshot, GroupLoad};
use sluice_proxy::stats::StatsSnapshot;

use crate::AdminState;

/// Insights newer than this count against the health score.
const RECENT_INSIGHTS_MS: i64 = 5 * 60 * 1000;

/// The pool's headline numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// When it was computed, Unix ms.
    pub ts_ms: i64,
    /// Seconds since the admin API (and the process's services) started.
    pub uptime_s: f64,
    /// 0-100 and what lowered it.
    pub health: HealthScore,
    /// The data plane's counters and gauges.
    pub stats: StatsSnapshot,
    /// Connections open, over all groups.
    pub connections: usize,
    /// The global connection cap.
    pub global_cap: usize,
    /// Upstream streams shared by several monitors now.
    pub shared_streams: usize,
    /// Packed upstream subscriptions now, and the distinct monitor subscriptions they carry.
    pub packs: usize,
    /// See `packs`.
    pub packed_subscriptions: usize,
    /// How well the held connections are used.
    pub efficiency: Efficiency,
}

/// The system health score: 100 less a deduction per problem found.
#[derive(Debug, Clone, Serialize)]
pub struct HealthScore {
    /// 0..=100.
    pub score: u32,
    /// `healthy` (90 and up), `degraded` (50 and up) or `critical`: one endpoint of three down
    /// (20 points) already makes the system degraded.
    pub status: &'static str,
    /// Why points were taken off, largest first.
    pub deductions: Vec<Deduction>,
}

/// One reason the health score is below 100.
#[derive(Debug, Clone, Serialize)]
pub struct Deduction {
    /// What is wrong, for people.
    pub reason: String,
    /// Points taken off.
    pub points: f64,
}

/// Resource efficiency of the pool.
#[derive(Debug, Clone, Serialize)]
pub struct Efficiency {
    /// Connections the streams need (per group: streams over streams per connection, rounded
    /// up, at least the group's minimum) over the connections held; 1 is ideal.
    pub connection_efficiency: Option<f64>,
    /// Connections the streams need.
    pub connections_needed: usize,
    /// Connections held, draining ones included.
    pub connections_held: usize,
    /// Mean streams per connection taking streams.
    pub streams_per_connection: Option<f64>,
    /// Share of connections taking streams that carry none, 0..=1.
    pub idle_ratio: Option<f64>,
}

/// One endpoint as its dashboard card shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointCard {
    /// Health, breaker, region, priority and connection count.
    #[serde(flatten)]
    pub endpoint: EndpointSnapshot,
    /// Streams on its connections.
    pub streams: u32,
    /// Streams its connections can carry.
    pub capacity: u32,
    /// Mean peak-EWMA latency of its connections, ms (none without connections).
    pub latency_ms: Option<f64>,
}

/// One monitor: configured, or seen calling.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorRow {
    /// Its id.
    pub id: String,
    /// Its traffic class (`None` for monitors that are not configured).
    pub class: Option<String>,
    /// Whether the config marks it critical.
    pub critical: bool,
    /// Whether the config names it.
    pub configured: bool,
    /// Calls it has open now.
    pub open_calls: u64,
    /// Its breaker's state, once it has called.
    pub breaker: Option<BreakerState>,
    /// Its measured traffic, as routers see it (configured monitors only).
    pub traffic: Option<sluice_contract::traffic::TrafficProfile>,
}

/// What an overview, a live frame or a scrape reads of the pool, read once for all of them.
pub struct PoolRead {
    /// Counters, gauges, connection count.
    pub snapshot: Snapshot,
    /// Every group's load (the latency quantile over the window asked for).
    pub groups: Vec<GroupLoad>,
    /// Every endpoint's health and breaker.
    pub endpoints: Vec<EndpointSnapshot>,
    /// Every breaker.
    pub breakers: Vec<BreakerSnapshot>,
}

impl PoolRead {
    /// Reads the pool now; `latency_window` bounds the groups' latency quantile.
    pub fn now(state: &AdminState, latency_window: Duration) -> Self {
        Self {
            snapshot: state.proxy.snapshot(),
            groups: state.proxy.group_loads(latency_window),
            endpoints: state.proxy.endpoints(),
            breakers: state.proxy.breakers(),
        }
    }
}

/// The overview of what `pool` read.
pub fn gather(state: &AdminState, pool: &PoolRead) -> Overview {
    let snapshot = &pool.snapshot;
    Overview {
        ts_ms: unix_ms_now(),
        uptime_s: state.started.elapsed().as_secs_f64(),
        health: health_score(state, pool),
        stats: snapshot.stats.clone(),
        connections: snapshot.connections,
        global_cap: state.proxy.global_cap(),
        shared_streams: snapshot.shared_streams,
        packs: snapshot.packs,
        packed_subscriptions: snapshot.packed_subscriptions,
        efficiency: efficiency(&pool.groups),
    }
}

fn efficiency(groups: &[GroupLoad]) -> Efficiency {
    let total = PoolTotals::of(groups);
    let ratio = |part: f64, whole: usize| (whole > 0).then(|| part / whole as f64);
    Efficiency {
        connection_efficiency: ratio(total.needed as f64, total.held),
        connections_needed: total.needed,
        connections_held: total.held,
        streams_per_connection: ratio(f64::from(total.streams), total.connections),
        idle_ratio: ratio(total.idle as f64, total.connections),
    }
}

fn health_score(state: &AdminState, pool: &PoolRead) -> HealthScore {
    let endpoints = &pool.endpoints;
    let groups = &pool.groups;
    let connections = pool.snapshot.connections;
    let mut deductions = Vec::new();
    // Losing every endpoint costs 60 points; each one its share.
    let share = 60.0 / endpoints.len().max(1) as f64;
    for endpoint in endpoints {
        let (points, verdict) = match endpoint.health.health {
            Health::Healthy => continue,
            Health::Degraded => (share / 2.0, "degraded"),
            Health::Unhealthy => (share, "unhealthy"),
        };
        let why = endpoint
            .health
            .reason
            .as_deref()
            .unwrap_or("no reason given");
        deductions.push(Deduction {
            reason: format!("endpoint {} is {verdict}: {why}", endpoint.id),
            points,
        });
    }
    let open_monitors = pool
        .breakers
        .iter()
        .filter(|b| b.scope == BreakerScope::Monitor && is_open(b.state))
        .count();
    if open_monitors > 0 {
        deductions.push(Deduction {
            reason: format!("{open_monitors} monitor breaker(s) open"),
            points: (5.0 * open_monitors as f64).min(15.0),
        });
    }
    let waiting: usize = groups.iter().map(|g| g.waiting).sum();
    if waiting > 0 {
        deductions.push(Deduction {
            reason: format!("{waiting} stream(s) waiting for a connection slot"),
            points: 10.0,
        });
    }
    let cap = state.proxy.global_cap();
    if cap > 0 && connections * 10 >= cap * 9 {
        deductions.push(Deduction {
            reason: format!("{connections} of {cap} connections in use (the global cap)"),
            points: 10.0,
        });
    }
    let disabled: Vec<&str> = SlotKind::ALL
        .iter()
        .filter(|kind| {
            state
                .policies
                .slot(**kind)
                .active()
                .is_some_and(|p| p.is_disabled())
        })
        .map(|kind| kind.as_str())
        .collect();
    if !disabled.is_empty() {
        deductions.push(Deduction {
            reason: format!(
                "plugin(s) disabled after failures in slot(s) {}; the built-in policy answers",
                disabled.join(", ")
            ),
            points: 5.0 * disabled.len() as f64,
        });
    }
    if let Some(engine) = &state.analytics {
        let since = unix_ms_now() - RECENT_INSIGHTS_MS;
        let recent = engine.insights(100);
        let recent = recent.iter().filter(|i| i.last_seen_ms >= since);
        let (critical, warning) = recent.fold((0u32, 0u32), |(c, w), i| match i.severity {
            Severity::Critical => (c + 1, w),
            Severity::Warning => (c, w + 1),
            _ => (c, w),
        });
        if critical > 0 {
            deductions.push(Deduction {
                reason: format!("{critical} critical insight(s) in the last 5 minutes"),
                points: (15.0 * f64::from(critical)).min(30.0),
            });
        }
        if warning > 0 {
            deductions.push(Deduction {
                reason: format!("{warning} warning insight(s) in the last 5 minutes"),
                points: (5.0 * f64::from(warning)).min(15.0),
            });
        }
    }
    deductions.sort_by(|a, b| b.points.total_cmp(&a.points));
    let lost: f64 = deductions.iter().map(|d| d.points).sum();
    let score = (100.0 - lost).clamp(0.0, 100.0).round() as u32;
    let status = match score {
        90.. => "healthy",
        50.. => "degraded",
        _ => "critical",
    };
    HealthScore {
        score,
        status,
        deductions,
    }
}

/// Whether a breaker refuses calls now.
fn is_open(state: BreakerState) -> bool {
    matches!(state, BreakerState::Open | BreakerState::ForcedOpen)
}

/// Every endpoint with the streams, capacity and latency of its connections.
pub fn endpoint_cards(
    endpoints: &[EndpointSnapshot],
    connections: &[ConnectionSnapshot],
) -> Vec<EndpointCard> {
    endpoints
        .iter()
        .map(|endpoint| {
            let mine: Vec<&ConnectionSnapshot> = connections
                .iter()
                .filter(|c| c.endpoint == endpoint.id && !c.draining)
                .collect();
            let latency_ms = (!mine.is_empty())
                .then(|| mine.iter().map(|c| c.latency_ms).sum::<f64>() / mine.len() as f64);
            EndpointCard {
                streams: mine.iter().map(|c| c.streams).sum(),
                capacity: mine.iter().map(|c| c.max_streams).sum(),
                latency_ms,
                endpoint: endpoint.clone(),
            }
        })
        .collect()
}

/// Configured monitors and any other monitor that called, with their open calls and breakers.
pub fn monitors(state: &AdminState) -> Vec<MonitorRow> {
    let mut rows: BTreeMap<String, MonitorRow> = state
        .proxy
        .config()
        .monitors
        .iter()
        .map(|m| {
            let row = MonitorRow {
                id: m.id.clone(),
                class: Some(m.class.to_string()),
                critical: m.critical,
                configured: true,
                open_calls: 0,
                breaker: None,
                traffic: None,
            };
            (m.id.clone(), row)
        })
        .collect();
    for (id, open) in state.proxy.monitor_calls() {
        row_for(&mut rows, &id).open_calls = open;
    }
    for (id, traffic) in state.proxy.monitor_traffic() {
        row_for(&mut rows, &id).traffic = Some(traffic);
    }
    for breaker in state.proxy.breakers() {
        if breaker.scope == BreakerScope::Monitor {
            row_for(&mut rows, &breaker.name).breaker = Some(breaker.state);
        }
    }
    rows.into_values().collect()
}

fn row_for<'a>(rows: &'a mut BTreeMap<String, MonitorRow>, id: &str) -> &'a mut MonitorRow {
    rows.entry(id.to_owned()).or_insert_with(|| MonitorRow {
        id: id.to_owned(),
        class: None,
        critical: false,
        configured: false,
        open_calls: 0,
        breaker: None,
        traffic: None,
    })
}
