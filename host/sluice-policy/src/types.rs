//! The plain records policies exchange with the host (generated from `wit/types.wit`), and
//! their conversions from the data plane's routing types.

pub use crate::bindings::router::sluice::policy::types::{
    Candidate, Decision, Endpoint, GroupMetrics, Insight, InsightKind, MetricWindow,
    MonitorProfile, RouteRequest, ScaleAction, ScalePlan, Severity, TrafficClass,
};

use std::sync::Arc;

/// Candidates beyond this are not passed to a plugin (the WIT contract promises at most 256).
pub const MAX_CANDIDATES: usize = 256;

impl From<sluice_config::TrafficClass> for TrafficClass {
    fn from(class: sluice_config::TrafficClass) -> Self {
        match class {
            sluice_config::TrafficClass::Realtime => TrafficClass::Realtime,
            sluice_config::TrafficClass::Event => TrafficClass::Event,
            sluice_config::TrafficClass::State => TrafficClass::State,
        }
    }
}

/// The WIT form of a data-plane routing question.
pub fn route_request(request: &sluice_proxy::route::RouteRequest<'_>) -> RouteRequest {
    let monitor = request.monitor;
    // Candidates of one endpoint share its `Arc`s; endpoints are few, so a linear scan is fine.
    let mut sources: Vec<&sluice_proxy::route::Candidate> = Vec::new();
    let candidates = request
        .candidates
        .iter()
        .take(MAX_CANDIDATES)
        .map(|c| {
            let endpoint = match sources.iter().position(|s| {
                Arc::ptr_eq(&s.endpoint_id, &c.endpoint_id) || s.endpoint_id == c.endpoint_id
            }) {
                Some(index) => index,
                None => {
                    sources.push(c);
                    sources.len() - 1
                }
            };
            Candidate {
                connection_id: c.connection_id,
                endpoint: endpoint as u32,
                active_streams: c.active_streams,
                max_streams: c.max_streams.max(1),
                latency_ms: c.latency.as_secs_f64() * 1000.0,
                error_rate: c.error_rate,
                age_ms: u64::try_from(c.age.as_millis()).unwrap_or(u64::MAX),
            }
        })
        .collect();
    RouteRequest {
        monitor: MonitorProfile {
            id: monitor.id.to_string(),
            class: monitor.class.into(),
            critical: monitor.critical,
        },
        method: request.method.to_owned(),
        endpoints: sources
            .iter()
            .map(|c| Endpoint {
                id: c.endpoint_id.to_string(),
                region: c.region.to_string(),
                priority: c.priority,
            })
            .collect(),
        candidates,
    }
}

/// Checks a router's answer against the question; the reason when it is unusable.
pub fn check_decision(decision: &Decision, candidates: usize) -> Result<(), String> {
    let choice = decision.choice as usize;
    if choice >= candidates {
        return Err(format!(
            "choice {choice} is out of range for {candidates} candidates"
        ));
    }
    if !decision.confidence.is_finite() || !(0.0..=1.0).contains(&decision.confidence) {
        return Err(format!(
            "confidence {} is not between 0 and 1",
            decision.confidence
        ));
    }
    if let Some(bad) = decision
        .alternatives
        .iter()
        .find(|&&a| a as usize >= candidates)
    {
        return Err(format!(
            "alternative {bad} is out of range for {candidates} candidates"
        ));
    }
    Ok(())
}

/// Checks a scale plan; the reason when it is unusable.
pub fn check_plan(plan: &ScalePlan) -> Result<(), String> {
    if !plan.confidence.is_finite() || !(0.0..=1.0).contains(&plan.confidence) {
        return Err(format!(
            "confidence {} is not between 0 and 1",
            plan.confidence
        ));
    }
    for (i, action) in plan.actions.iter().enumerate() {
        if plan.actions[..i].iter().any(|a| a.class == action.class) {
            return Err(format!("two actions for the {:?} group", action.class));
        }
        if action.delta.unsigned_abs() > 1000 {
            return Err(format!("delta {} is not a plausible change", action.delta));
        }
    }
    Ok(())
}

/// Checks anomaly insights; the reason when they are unusable.
pub fn check_insights(insights: &[Insight]) -> Result<(), String> {
    if insights.len() > 1000 {
        return Err(format!("{} insights in one answer", insights.len()));
    }
    for insight in insights {
        if insight.title.trim().is_empty() {
            return Err("an insight has an empty title".to_owned());
        }
        if insight.value.is_nan() || insight.score.is_nan() {
            return Err(format!(
                "insight {:?} has a NaN value or score",
                insight.title
            ));
        }
    }
    Ok(())
}
