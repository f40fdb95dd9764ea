//! The scaler loop: every `scaling.period` it gives each group's metrics to the `scaler`
//! policy and applies the answer within the cooldowns, the group's min/max and the global cap.
//!
//! Growing opens connections at once; shrinking drains the least-loaded ones through the
//! pool (resumable streams move, the rest finish). Every action the policy asks for is
//! recorded with its reason and the metrics it saw, applied or not. This module decides how
//! to apply a plan; what the plan is belongs to the policy.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_config::{ScalingConfig, SlotKind, TrafficClass};
use sluice_policy::Policies;
use sluice_policy::types::{self as policy, GroupMetrics};
use sluice_proxy::ProxyView;
use sluice_proxy::pool::GroupLoad;
use tracing::Instrument as _;

use crate::history::History;
use crate::records::{ScalingRecord, unix_ms_now};
use crate::sampler::group_metric;
use crate::series::StoredHistory;
use crate::store::Store;

/// Scaling records kept in memory for the API.
const RECENT: usize = 256;

/// What the loop remembers between periods.
/// The scaler policy's latest answer, acted on or not.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LastPlan {
    /// When, Unix ms.
    pub ts_ms: i64,
    /// Who answered: the plugin's label or `builtin` (a fallback says so in `reasoning`).
    pub policy: String,
    /// The policy's confidence.
    pub confidence: f32,
    /// The policy's reasoning.
    pub reasoning: String,
    /// Actions it asked for.
    pub actions: usize,
}

#[derive(Default)]
struct State {
    last_scaled: [Option<Instant>; 3],
    last_plan: Option<LastPlan>,
    /// Streams started and failed per group at the previous run.
    totals: [(u64, u64); 3],
    recent: VecDeque<ScalingRecord>,
}

/// Applies scaler plans to the pool.
pub struct Scaler {
    config: ScalingConfig,
    proxy: ProxyView,
    policies: Arc<Policies>,
    history: Arc<History>,
    store: Arc<Store>,
    load_history: Arc<StoredHistory>,
    state: Mutex<State>,
    /// One run at a time (a test may run one while the loop does).
    running: tokio::sync::Mutex<()>,
}

/// Change of `samples` per minute (least squares over 1 s samples).
pub fn slope_per_minute(samples: &[f64]) -> f64 {
    let n = samples.len();
    if n < 2 {
        return 0.0;
    }
    let mean_x = (n - 1) as f64 / 2.0;
    let mean_y = samples.iter().sum::<f64>() / n as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in samples.iter().enumerate() {
        let dx = i as f64 - mean_x;
        num += dx * (y - mean_y);
        den += dx * dx;
    }
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

fn policy_label(policies: &Policies, kind: SlotKind) -> String {
    policies
        .slot(kind)
        .callable()
        .map_or_else(|| "builtin".to_owned(), |p| p.label().to_string())
}

impl Scaler {
    /// A scaler for `proxy`'s groups.
    pub fn new(
        config: ScalingConfig,
        proxy: ProxyView,
        policies: Arc<Policies>,
        history: Arc<History>,
        store: Arc<Store>,
        load_history: Arc<StoredHistory>,
    ) -> Self {
        Self {
            config,
            proxy,
            policies,
            history,
            store,
            load_history,
            // Opening the groups' minimums at start counts as their first change, so that
            // cooldowns hold from start rather than allowing a change on the first run.
            state: Mutex::new(State {
                last_scaled: [Some(Instant::now()); 3],
                ..State::default()
            }),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The last `limit` scaling records, newest first.
    pub fn recent(&self, limit: usize) -> Vec<ScalingRecord> {
        self.state
            .lock()
            .recent
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// The policy's latest plan.
    pub fn last_plan(&self) -> Option<LastPlan> {
        self.state.lock().last_plan.clone()
    }

    /// The metrics the policy sees for each group.
    fn group_metrics(&self, loads: &[GroupLoad], now: Instant) -> Vec<GroupMetrics> {
        let trend_samples = (self.config.period.as_secs() as usize * 3).clamp(30, 300);
        let mut state = self.state.lock();
        loads
            .iter()
            .map(|load| {
                let index = load.class.index();
                let (started, failed) = (load.streams_started_total, load.streams_failed_total);
                let (before_started, before_failed) = state.totals[index];
                state.totals[index] = (started, failed);
                let new_streams = started.saturating_sub(before_started);
                let error_rate = if new_streams == 0 {
                    0.0
                } else {
                    (failed.saturating_sub(before_failed) as f64 / new_streams as f64).min(1.0)
                };
                let utilization_window = self
                    .history
                    .window(&group_metric(load.class, "utilization"), trend_samples);
                let utilization = if load.capacity == 0 {
                    0.0
                } else {
                    f64::from(load.streams) / f64::from(load.capacity)
                };
                GroupMetrics {
                    class: load.class.into(),
                    connections: u32::try_from(load.connections).unwrap_or(u32::MAX),
                    min_connections: u32::try_from(load.min_connections).unwrap_or(u32::MAX),
                    max_connections: u32::try_from(load.max_connections).unwrap_or(u32::MAX),
                    active_streams: load.streams,
                    stream_capacity: load.capacity,
                    utilization: utilization.min(1.0),
                    queue_depth: u32::try_from(load.waiting).unwrap_or(u32::MAX),
                    p99_latency_ms: load.latency_p99_ms.unwrap_or(0.0),
                    error_rate,
                    trend: slope_per_minute(&utilization_window),
                    since_last_scale_ms: state.last_scaled[index].map_or(u64::MAX, |at| {
                        u64::try_from(now.saturating_duration_since(at).as_millis())
                            .unwrap_or(u64::MAX)
                    }),
                }
            })
            .collect()
    }

    /// One run: asks the policy and applies its plan. Returns the records of this run.
    pub async fn run_once(&self) -> Vec<ScalingRecord> {
        let _running = self.running.lock().await;
        let loads = self.proxy.group_loads(self.config.period);
        let now = Instant::now();
        let metrics = self.group_metrics(&loads, now);
        let policies = Arc::clone(&self.policies);
        let load_history = Arc::clone(&self.load_history);
        let asked = metrics.clone();
        // The policy call is bounded by its deadline but may still take milliseconds of CPU;
        // the history it may ask for is read from the store before, outside its deadline.
        let plan = match tokio::task::spawn_blocking(move || {
            load_history.refresh();
            policies.plan(&asked)
        })
        .await
        {
            Ok(plan) => plan,
            Err(error) => {
                tracing::error!(%error, "the scaler policy call panicked outside the plugin sandbox");
                return Vec::new();
            }
        };
        let label = policy_label(&self.policies, SlotKind::Scaler);
        tracing::debug!(policy = %label, reasoning = %plan.reasoning, "scaler plan");
        self.state.lock().last_plan = Some(LastPlan {
            ts_ms: unix_ms_now(),
            policy: label.clone(),
            confidence: plan.confidence,
            reasoning: plan.reasoning.clone(),
            actions: plan.actions.len(),
        });
        let mut records = Vec::new();
        let mut seen = [false; 3];
        for action in &plan.actions {
            let class = from_policy_class(action.class);
            let index = class.index();
            if std::mem::replace(&mut seen[index], true) || action.delta == 0 {
                continue;
            }
            let (Some(load), Some(group)) = (
                loads.iter().find(|l| l.class == class),
                metrics.iter().find(|m| from_policy_class(m.class) == class),
            ) else {
                continue;
            };
            let record = self
                .apply(load, group, action, &label, now)
                .instrument(tracing::info_span!("scale", class = %class))
                .await;
            records.push(record);
        }
        if !records.is_empty() {
            let store = Arc::clone(&self.store);
            let mut stored = records.clone();
            let saved = tokio::task::spawn_blocking(move || {
                for record in &mut stored {
                    record.id = store.insert_scaling(record)?;
                }
                Ok::<_, crate::store::StoreError>(stored)
            })
            .await;
            match saved {
                Ok(Ok(saved)) => records = saved,
                Ok(Err(error)) => tracing::warn!(%error, "could not store scaling actions"),
                Err(error) => tracing::warn!(%error, "could not store scaling actions"),
            }
            let mut state = self.state.lock();
            for record in &records {
                if state.recent.len() == RECENT {
                    state.recent.pop_front();
                }
                state.recent.push_back(record.clone());
            }
        }
        records
    }

    async fn apply(
        &self,
        load: &GroupLoad,
        metrics: &GroupMetrics,
        action: &policy::ScaleAction,
        label: &str,
        now: Instant,
    ) -> ScalingRecord {
        let class = load.class;
        let index = class.index();
        let from = load.connections;
        let growing = action.delta > 0;
        let cooldown = if growing {
            self.config.up_cooldown
        } else {
            self.config.down_cooldown
        };
        let last = self.state.lock().last_scaled[index];
        let mut notes = Vec::new();
        let mut target = from;
        if let Some(since) = last.map(|at| now.saturating_duration_since(at))
            && since < cooldown
        {
            notes.push(format!(
                "held: cooldown ({:.0?} of {cooldown:?})",
                Duration::from_secs(since.as_secs())
            ));
        } else {
            let wanted = (from as i64 + i64::from(action.delta)).max(0) as usize;
            target = wanted.clamp(
                load.min_connections,
                load.max_connections.max(load.min_connections),
            );
            if target != wanted {
                notes.push(format!(
                    "clamped to the group's {}..={} connections",
                    load.min_connections, load.max_connections
                ));
            }
            if growing {
                let open = self.proxy.snapshot().connections;
                let headroom = self.proxy.global_cap().saturating_sub(open);
                if target > from + headroom {
                    target = from + headroom;
                    notes.push(format!(
                        "clamped by the global cap of {} connections",
                        self.proxy.global_cap()
                    ));
                }
            }
        }
        let mut applied = 0;
        let mut to = from;
        if target != from {
            let resized = self.proxy.resize(class, target).await;
            applied = if target > from {
                i32::try_from(resized.opened).unwrap_or(i32::MAX)
            } else {
                -i32::try_from(resized.drained).unwrap_or(i32::MAX)
            };
            to = if target > from {
                from + resized.opened
            } else {
                from - resized.drained
            };
            notes.extend(resized.errors);
            self.state.lock().last_scaled[index] = Some(now);
        }
        let mut reason = action.reason.clone();
        if !notes.is_empty() {
            reason = format!("{reason} [{}]", notes.join("; "));
        }
        let record = ScalingRecord {
            id: 0,
            ts_ms: unix_ms_now(),
            class: class.to_string(),
            requested: action.delta,
            applied,
            from: u32::try_from(from).unwrap_or(u32::MAX),
            to: u32::try_from(to).unwrap_or(u32::MAX),
            reason,
            policy: label.to_owned(),
            metrics: metrics_json(metrics),
        };
        tracing::info!(
            class = %class,
            requested = record.requested,
            applied = record.applied,
            from = record.from,
            to = record.to,
            policy = %record.policy,
            reason = %record.reason,
            "scaling decision"
        );
        record
    }
}

/// The config's class for a policy's class.
pub fn from_policy_class(class: policy::TrafficClass) -> TrafficClass {
    match class {
        policy::TrafficClass::Realtime => TrafficClass::Realtime,
        policy::TrafficClass::Event => TrafficClass::Event,
        policy::TrafficClass::State => TrafficClass::State,
    }
}

fn metrics_json(m: &GroupMetrics) -> serde_json::Value {
    serde_json::json!({
        "connections": m.connections,
        "min_connections": m.min_connections,
        "max_connections": m.max_connections,
        "active_streams": m.active_streams,
        "stream_capacity": m.stream_capacity,
        "utilization": m.utilization,
        "queue_depth": m.queue_depth,
        "p99_latency_ms": m.p99_latency_ms,
        "error_rate": m.error_rate,
        "trend": m.trend,
        "since_last_scale_ms": m.since_last_scale_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_per_minute() {
        let rising: Vec<f64> = (0..60).map(|i| f64::from(i) * 0.01).collect();
        assert!((slope_per_minute(&rising) - 0.6).abs() < 1e-9);
        assert_eq!(slope_per_minute(&[0.5; 30]), 0.0);
        assert_eq!(slope_per_minute(&[1.0]), 0.0);
    }
}
