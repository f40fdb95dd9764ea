//! The plain records policies exchange with the host (generated from `wit/types.wit`), their
//! conversions from the data plane's routing and resume types, and the checks of each world's
//! answers.

pub use crate::bindings::router::sluice::policy::types::{
    BreakerState, Candidate, Decision, Endpoint, EndpointHealth, GroupMetrics, Insight,
    InsightKind, MetricWindow, MonitorProfile, PackMember, RequestKind, ResumeRequest,
    RouteRequest, Routing, ScaleAction, ScalePlan, Severity, TrafficClass, TrafficProfile,
    UpdateMark,
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

/// Messages a resumer may answer with (the WIT contract says "at most 64").
pub const MAX_RESUME_MESSAGES: usize = 64;

/// How much larger than all its inputs together (requests and last response) one message of a
/// resumer's answer may be: room for a rewritten field or a few added ones, while a plugin that
/// runs away cannot make the host send megabytes upstream.
pub const RESUME_GROWTH_BYTES: usize = 64 * 1024;

impl From<sluice_contract::health::Health> for EndpointHealth {
    fn from(health: sluice_contract::health::Health) -> Self {
        match health {
            sluice_contract::health::Health::Healthy => EndpointHealth::Healthy,
            sluice_contract::health::Health::Degraded => EndpointHealth::Degraded,
            sluice_contract::health::Health::Unhealthy => EndpointHealth::Unhealthy,
        }
    }
}

impl From<sluice_contract::breaker::BreakerState> for BreakerState {
    fn from(state: sluice_contract::breaker::BreakerState) -> Self {
        use sluice_contract::breaker::BreakerState as Data;
        match state {
            // A disabled breaker lets everything through, as a closed one does.
            Data::Closed | Data::Disabled => BreakerState::Closed,
            Data::HalfOpen => BreakerState::HalfOpen,
            Data::Open | Data::ForcedOpen => BreakerState::Open,
        }
    }
}

impl From<sluice_contract::traffic::TrafficProfile> for TrafficProfile {
    fn from(traffic: sluice_contract::traffic::TrafficProfile) -> Self {
        TrafficProfile {
            message_rate: traffic.message_rate,
            burstiness: traffic.burstiness,
            latency_sensitivity: traffic.latency_sensitivity,
            mean_message_bytes: traffic.mean_message_bytes,
        }
    }
}

impl From<&sluice_contract::route::MonitorProfile> for MonitorProfile {
    fn from(monitor: &sluice_contract::route::MonitorProfile) -> Self {
        MonitorProfile {
            id: monitor.id.to_string(),
            class: monitor.class.into(),
            critical: monitor.critical,
            region: monitor.region.as_deref().unwrap_or_default().to_owned(),
            traffic: monitor.traffic.profile().into(),
        }
    }
}

/// The WIT form of a data-plane resume question (the payloads are copied once; a resume is
/// rare next to routing decisions).
pub fn resume_request(request: &sluice_contract::resume::ResumeRequest<'_>) -> ResumeRequest {
    ResumeRequest {
        monitor: request.monitor.into(),
        method: request.method.to_owned(),
        requests: request.requests.iter().map(|m| m.to_vec()).collect(),
        last_response: request.last_response.map(|m| m.to_vec()),
        responses_delivered: request.responses_delivered,
        attempt: request.attempt,
    }
}

/// The largest message a resumer may answer `request` with: all its input messages together
/// plus [`RESUME_GROWTH_BYTES`].
pub fn max_resume_message(request: &ResumeRequest) -> usize {
    let inputs: usize = request.requests.iter().map(Vec::len).sum();
    let last = request.last_response.as_ref().map_or(0, Vec::len);
    inputs
        .saturating_add(last)
        .saturating_add(RESUME_GROWTH_BYTES)
}

/// Checks a resumer's answer against the question; the reason when it is unusable: no
/// message, more than [`MAX_RESUME_MESSAGES`], or one larger than [`max_resume_message`].
pub fn check_resume(messages: &[Vec<u8>], request: &ResumeRequest) -> Result<(), String> {
    if messages.is_empty() {
        return Err("no request message to replay (return the requests to keep them)".to_owned());
    }
    if messages.len() > MAX_RESUME_MESSAGES {
        return Err(format!(
            "{} messages; at most {MAX_RESUME_MESSAGES}",
            messages.len()
        ));
    }
    let max = max_resume_message(request);
    if let Some((index, message)) = messages.iter().enumerate().find(|(_, m)| m.len() > max) {
        return Err(format!(
            "message #{index} has {} bytes; at most {max} (the inputs' {} bytes + {} KiB)",
            message.len(),
            max - RESUME_GROWTH_BYTES,
            RESUME_GROWTH_BYTES / 1024
        ));
    }
    Ok(())
}

/// The WIT form of a data-plane routing question.
pub fn route_request(request: &sluice_contract::route::RouteRequest<'_>) -> RouteRequest {
    let mut question = RouteRequest {
        monitor: MonitorProfile {
            id: String::new(),
            class: TrafficClass::Event,
            critical: false,
            region: String::new(),
            traffic: sluice_contract::traffic::TrafficProfile::default().into(),
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
    request: &sluice_contract::route::RouteRequest<'_>,
) {
    let monitor = request.monitor;
    question.monitor.id.clear();
    question.monitor.id.push_str(&monitor.id);
    question.monitor.class = monitor.class.into();
    question.monitor.critical = monitor.critical;
    question.monitor.region.clear();
    if let Some(region) = &monitor.region {
        question.monitor.region.push_str(region);
    }
    question.monitor.traffic = monitor.traffic.profile().into();
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
                    slot.health = c.endpoint_health.into();
                    slot.breaker = c.endpoint_breaker.into();
                } else {
                    question.endpoints.push(Endpoint {
                        id: c.endpoint_id.to_string(),
                        region: c.region.to_string(),
                        priority: c.priority,
                        health: c.endpoint_health.into(),
                        breaker: c.endpoint_breaker.into(),
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

    use sluice_contract::route::{
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
            endpoint_health: sluice_contract::health::Health::Degraded,
            endpoint_breaker: sluice_contract::breaker::BreakerState::HalfOpen,
        }
    }

    #[test]
    fn endpoints_are_listed_once_and_reused_buffers_hold_no_stale_data() {
        let monitor = Monitor::new("m", sluice_config::TrafficClass::Realtime, true);
        let many = [
            offered(1, "a"),
            offered(2, "b"),
            offered(3, "a"),
            offered(4, "c"),
        ];
        let ask = Ask {
            monitor: &monitor,
            method: "/pkg.S/M",
            stream: 0,
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
            stream: 0,
            candidates: &few,
        };
        fill_route_request(&mut question, &ask);
        assert_eq!(question.monitor.id, "other");
        assert_eq!(question.method, "/x.Y/Z");
        assert_eq!(question.endpoints.len(), 1);
        assert_eq!(question.endpoints[0].id, "c");
        assert_eq!(question.endpoints[0].region, "c-region");
        assert_eq!(question.endpoints[0].health, EndpointHealth::Degraded);
        assert_eq!(question.endpoints[0].breaker, BreakerState::HalfOpen);
        assert_eq!(question.candidates.len(), 1);
        assert_eq!(question.candidates[0].endpoint, 0);
    }

    fn resume_question(requests: Vec<Vec<u8>>, last: Option<Vec<u8>>) -> ResumeRequest {
        ResumeRequest {
            monitor: MonitorProfile {
                id: "m".to_owned(),
                class: TrafficClass::Event,
                critical: false,
                region: String::new(),
                traffic: sluice_contract::traffic::TrafficProfile::default().into(),
            },
            method: "/pkg.S/M".to_owned(),
            requests,
            last_response: last,
            responses_delivered: 3,
            attempt: 1,
        }
    }

    #[test]
    fn resume_answers_are_bounded_in_count_and_size() {
        let question = resume_question(vec![vec![1; 10], vec![2; 20]], Some(vec![3; 5]));
        assert_eq!(max_resume_message(&question), 35 + RESUME_GROWTH_BYTES);
        assert!(check_resume(&question.requests, &question).is_ok());
        assert!(
            check_resume(&[Vec::new()], &question).is_ok(),
            "an empty message is valid"
        );
        assert!(check_resume(&[vec![0; 35 + RESUME_GROWTH_BYTES]], &question).is_ok());

        let empty = check_resume(&[], &question).unwrap_err();
        assert!(empty.contains("no request message"), "{empty}");
        let many = check_resume(&vec![vec![0]; MAX_RESUME_MESSAGES + 1], &question).unwrap_err();
        assert!(many.contains("65 messages; at most 64"), "{many}");
        let big =
            check_resume(&[vec![0], vec![0; 36 + RESUME_GROWTH_BYTES]], &question).unwrap_err();
        assert!(
            big.contains("message #1") && big.contains("the inputs' 35 bytes + 64 KiB"),
            "{big}"
        );
    }

    #[test]
    fn resume_questions_copy_the_data_plane_request() {
        let monitor = Monitor::new("tx-indexer", sluice_config::TrafficClass::Realtime, true);
        let requests = [bytes::Bytes::from_static(b"\x08\x01")];
        let last = bytes::Bytes::from_static(b"\x08\x29");
        let ask = sluice_contract::resume::ResumeRequest {
            monitor: &monitor,
            method: "/sluice.feed.v1.Feed/Subscribe",
            requests: &requests,
            last_response: Some(&last),
            responses_delivered: 41,
            attempt: 2,
        };
        let question = resume_request(&ask);
        assert_eq!(question.monitor.id, "tx-indexer");
        assert_eq!(question.monitor.class, TrafficClass::Realtime);
        assert!(question.monitor.critical);
        assert_eq!(question.method, "/sluice.feed.v1.Feed/Subscribe");
        assert_eq!(question.requests, vec![b"\x08\x01".to_vec()]);
        assert_eq!(question.last_response.as_deref(), Some(&b"\x08\x29"[..]));
        assert_eq!(question.responses_delivered, 41);
        assert_eq!(question.attempt, 2);
    }
}
