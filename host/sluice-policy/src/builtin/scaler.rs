//! The built-in scaler: several factors must agree before a group grows, and it shrinks
//! conservatively.
//!
//! Up (+2) when at least two of: utilization above 75%, streams waiting in the queue, utilization
//! rising faster than 5 points a minute, p99 time to first response above 250 ms - and not within
//! 60 s of the last change. Down (-1) only when utilization is under 30%, nothing waits, errors
//! are under 1%, the group is above its minimum and nothing changed for 5 minutes.

use crate::types::{GroupMetrics, ScaleAction, ScalePlan, TrafficClass};

/// The thresholds of the built-in scaler.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Utilization above which a group counts as busy.
    pub up_utilization: f64,
    /// Utilization trend (per minute) that counts as rising.
    pub up_trend: f64,
    /// p99 latency (ms) that counts as slow.
    pub up_p99_ms: f64,
    /// Utilization below which a group may shrink.
    pub down_utilization: f64,
    /// Minimum time since the last change before growing again (ms).
    pub up_cooldown_ms: u64,
    /// Minimum time since the last change before shrinking (ms).
    pub down_cooldown_ms: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            up_utilization: 0.75,
            up_trend: 0.05,
            up_p99_ms: 250.0,
            down_utilization: 0.30,
            up_cooldown_ms: 60_000,
            down_cooldown_ms: 300_000,
        }
    }
}

fn class_name(class: TrafficClass) -> &'static str {
    match class {
        TrafficClass::Realtime => "realtime",
        TrafficClass::Event => "event",
        TrafficClass::State => "state",
    }
}

impl Thresholds {
    /// Plans every group.
    pub fn plan(&self, groups: &[GroupMetrics]) -> ScalePlan {
        let mut actions = Vec::new();
        let mut notes = Vec::new();
        let mut agreement = 1.0f32;
        for group in groups {
            let factors = [
                (group.utilization > self.up_utilization, "utilization"),
                (group.queue_depth > 0, "queue"),
                (group.trend > self.up_trend, "trend"),
                (group.p99_latency_ms > self.up_p99_ms, "p99"),
            ];
            let agreeing: Vec<&str> = factors.iter().filter(|f| f.0).map(|f| f.1).collect();
            let name = class_name(group.class);
            if agreeing.len() >= 2
                && group.connections < group.max_connections
                && group.since_last_scale_ms >= self.up_cooldown_ms
            {
                let delta = (group.max_connections - group.connections).min(2) as i32;
                agreement = agreement.min(agreeing.len() as f32 / factors.len() as f32);
                actions.push(ScaleAction {
                    class: group.class,
                    delta,
                    reason: format!("{name}: +{delta}, {} agree", agreeing.join(", ")),
                });
            } else if group.utilization < self.down_utilization
                && group.queue_depth == 0
                && group.error_rate < 0.01
                && group.connections > group.min_connections
                && group.since_last_scale_ms >= self.down_cooldown_ms
            {
                actions.push(ScaleAction {
                    class: group.class,
                    delta: -1,
                    reason: format!(
                        "{name}: -1, utilization {:.0}% with nothing waiting",
                        group.utilization * 100.0
                    ),
                });
            } else {
                notes.push(format!("{name}: steady"));
            }
        }
        let mut reasoning: Vec<String> = actions.iter().map(|a| a.reason.clone()).collect();
        reasoning.extend(notes);
        ScalePlan {
            actions,
            confidence: agreement,
            reasoning: format!("built-in thresholds: {}", reasoning.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn group(
        utilization: f64,
        queue: u32,
        trend: f64,
        connections: u32,
    ) -> GroupMetrics {
        GroupMetrics {
            class: TrafficClass::Realtime,
            connections,
            min_connections: 1,
            max_connections: 10,
            active_streams: 0,
            stream_capacity: 100,
            utilization,
            queue_depth: queue,
            p99_latency_ms: 10.0,
            error_rate: 0.0,
            trend,
            since_last_scale_ms: u64::MAX,
        }
    }

    #[test]
    fn grows_only_when_two_factors_agree() {
        let plan = Thresholds::default().plan(&[group(0.9, 0, 0.0, 4)]);
        assert!(plan.actions.is_empty(), "{}", plan.reasoning);
        let plan = Thresholds::default().plan(&[group(0.9, 3, 0.0, 4)]);
        assert_eq!(plan.actions.len(), 1);
        assert_eq!(plan.actions[0].delta, 2);
        let plan = Thresholds::default().plan(&[group(0.9, 3, 0.0, 9)]);
        assert_eq!(plan.actions[0].delta, 1, "never above the maximum");
    }

    #[test]
    fn shrinks_conservatively() {
        let plan = Thresholds::default().plan(&[group(0.1, 0, 0.0, 4)]);
        assert_eq!(plan.actions[0].delta, -1);
        let plan = Thresholds::default().plan(&[group(0.1, 0, 0.0, 1)]);
        assert!(plan.actions.is_empty(), "not below the minimum");
        let mut recent = group(0.1, 0, 0.0, 4);
        recent.since_last_scale_ms = 1_000;
        assert!(Thresholds::default().plan(&[recent]).actions.is_empty());
    }
}
