//! The plain records policies exchange with the host (generated from `wit/types.wit`), and
//! their conversions from the data plane's routing types.

pub use crate::bindings::router::sluice::policy::types::{
    Candidate, Decision, Endpoint, GroupMetrics, Insight, InsightKind, MetricWindow,
    MonitorProfile, RouteRequest, ScaleAction, ScalePlan, Severity, TrafficClass,
};

/// Alternatives a decision may list (the WIT contract says "up to 3").
pub const MAX_ALTERNATIVES: usize = 3;

/// Longest reason kept from a plugin; longer ones are cut (every stream keeps its reason).
pub const MAX_REASON_BYTES: usize = 512;

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate_reason(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max.saturating_sub(3);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

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
    let mut question = RouteRequest {
        monitor: MonitorProfile {
            id: String::new(),
            class: TrafficClass::Event,
            critical: false,
        },
        method: String::new(),
        endpoints: Vec::new(),
        candidates: Vec::new(),
    };
    fill_route_request(&mut question, request);
    question
}

/// Overwrites `question` with `request`, reusing its buffers: the data path keeps one question
/// per thread, so a routing decision allocates nothing here once the buffers have grown.
pub fn fill_route_request(
    question: &mut RouteRequest,
    request: &sluice_proxy::route::RouteRequest<'_>,
) {
    let monitor = request.monitor;
    question.monitor.id.clear();
    question.monitor.id.push_str(&monitor.id);
    question.monitor.class = monitor.class.into();
    question.monitor.critical = monitor.critical;
    question.method.clear();
    question.method.push_str(request.method);
    question.candidates.clear();
    // Candidates of one endpoint share its `Arc`s; endpoints are few, so a linear scan is fine.
    let mut endpoints = 0;
    for c in request.candidates.iter().take(MAX_CANDIDATES) {
        let known = question.endpoints[..endpoints]
            .iter()
            .position(|e| e.id == *c.endpoint_id);
        let endpoint = match known {
            Some(index) => index,
            None => {
                if let Some(slot) = question.endpoints.get_mut(endpoints) {
                    slot.id.clear();
                    slot.id.push_str(&c.endpoint_id);
                    slot.region.clear();
                    slot.region.push_str(&c.region);
                    slot.priority = c.priority;
                } else {
                    question.endpoints.push(Endpoint {
                        id: c.endpoint_id.to_string(),
                        region: c.region.to_string(),
                        priority: c.priority,
                    });
                }
                endpoints += 1;
                endpoints - 1
            }
        };
        question.candidates.push(Candidate {
            connection_id: c.connection_id,
            endpoint: endpoint as u32,
            active_streams: c.active_streams,
            max_streams: c.max_streams.max(1),
            latency_ms: c.latency.as_secs_f64() * 1000.0,
            error_rate: c.error_rate,
            age_ms: u64::try_from(c.age.as_millis()).unwrap_or(u64::MAX),
        });
    }
    question.endpoints.truncate(endpoints);
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
    if decision.alternatives.len() > MAX_ALTERNATIVES {
        return Err(format!(
            "{} alternatives; at most {MAX_ALTERNATIVES}",
            decision.alternatives.len()
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use sluice_proxy::route::{
        Candidate as Offered, MonitorProfile as Monitor, RouteRequest as Ask,
    };

    use super::*;

    fn offered(id: u64, endpoint: &str) -> Offered {
        Offered {
            connection_id: id,
            endpoint_id: Arc::from(endpoint),
            region: Arc::from(format!("{endpoint}-region")),
            priority: u32::from(endpoint == "b"),
            active_streams: 1,
            max_streams: 0,
            latency: Duration::from_micros(1500),
            error_rate: 0.0,
            age: Duration::from_secs(2),
        }
    }

    #[test]
    fn endpoints_are_listed_once_and_reused_buffers_hold_no_stale_data() {
        let monitor = Monitor {
            id: Arc::from("m"),
            class: sluice_config::TrafficClass::Realtime,
            critical: true,
        };
        let many = [
            offered(1, "a"),
            offered(2, "b"),
            offered(3, "a"),
            offered(4, "c"),
        ];
        let ask = Ask {
            monitor: &monitor,
            method: "/pkg.S/M",
            candidates: &many,
        };
        let mut question = route_request(&ask);
        let endpoints: Vec<&str> = question.endpoints.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(endpoints, ["a", "b", "c"]);
        let indexes: Vec<u32> = question.candidates.iter().map(|c| c.endpoint).collect();
        assert_eq!(indexes, [0, 1, 0, 2]);
        assert_eq!(question.endpoints[1].region, "b-region");
        assert_eq!(question.endpoints[1].priority, 1);
        assert_eq!(question.candidates[0].max_streams, 1, "never 0");
        assert_eq!(question.candidates[0].latency_ms, 1.5);

        let few = [offered(9, "c")];
        let other = Monitor {
            id: Arc::from("other"),
            ..monitor
        };
        let ask = Ask {
            monitor: &other,
            method: "/x.Y/Z",
            candidates: &few,
        };
        fill_route_request(&mut question, &ask);
        assert_eq!(question.monitor.id, "other");
        assert_eq!(question.method, "/x.Y/Z");
        assert_eq!(question.endpoints.len(), 1);
        assert_eq!(question.endpoints[0].id, "c");
        assert_eq!(question.endpoints[0].region, "c-region");
        assert_eq!(question.candidates.len(), 1);
        assert_eq!(question.candidates[0].endpoint, 0);
    }
}
